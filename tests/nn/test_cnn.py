"""The convolutional encoder (vector and feature-map modes) and the cluster_age CNN."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from astrobatch.nn.cnn import AgeCNN, ConvEncoder
from astrobatch.nn.heads import MLPHead


@pytest.mark.parametrize(
    ("size", "channels", "side"),
    [(80, (16, 32, 64), 8), (112, (128, 256, 512), 12), (32, (4, 8), 6), (9, (3,), 3)],
)
def test_encoder_output_shapes(size, channels, side):
    enc = ConvEncoder(5, size, channels)
    assert (enc.out_channels, enc.map_size) == (channels[-1], side)
    assert enc.out_features == channels[-1] * side * side
    x = torch.randn(2, 5, size, size)
    z = enc(x)
    assert z.shape == (2, enc.out_features) and z.dtype == torch.float32
    fmap = enc.feature_map(x)
    assert fmap.shape == (2, channels[-1], side, side)
    assert torch.equal(z, fmap.flatten(1))


def test_feature_map_mode():
    enc = ConvEncoder(1, 32, (4, 8), return_feature_map=True)
    x = torch.randn(3, 1, 32, 32)
    assert enc(x).shape == (3, 8, 6, 6)
    # a map works for any image that survives the blocks (a detector on larger fields)
    assert enc(torch.randn(1, 1, 48, 40)).shape == (1, 8, 10, 8)
    with pytest.raises(ValueError, match="shape"):
        enc(torch.randn(3, 2, 32, 32))


def test_encoder_input_and_size_validation():
    enc = ConvEncoder(5, 32, (4, 8))
    with pytest.raises(ValueError, match=r"\(B, 5, 32, 32\)"):
        enc(torch.randn(2, 5, 30, 30))
    with pytest.raises(ValueError, match=r"\(B, 5, 32, 32\)"):
        enc(torch.randn(5, 32, 32))
    with pytest.raises(ValueError, match="too small"):
        ConvEncoder(5, 12, (4, 8, 16))
    with pytest.raises(ValueError, match="channels"):
        ConvEncoder(5, 32, ())


def test_age_cnn_is_encoder_plus_mlp_head():
    m = AgeCNN(5, 32, conv_channels=(4, 8), dense_units=(16,), dropout=0.1)
    assert isinstance(m.encoder, ConvEncoder) and isinstance(m.head, MLPHead)
    assert m.head.in_features == m.encoder.out_features == 8 * 6 * 6
    assert m(torch.zeros(2, 5, 32, 32)).shape == (2, 1)
    assert [type(layer) for layer in m.head.layers] == [nn.Dropout, nn.Linear, nn.ReLU, nn.Linear]


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_age_cnn_same_weights_and_outputs_as_the_single_sequential_cnn(dropout):
    """The split changes names only: same creation order, so same seeded weights and outputs."""
    torch.manual_seed(5)
    m = AgeCNN(5, 32, conv_channels=(4, 8), dense_units=(16, 8), dropout=dropout)
    torch.manual_seed(5)
    layers: list[nn.Module] = []
    c = 5
    for out in (4, 8):
        layers += [nn.Conv2d(c, out, 3), nn.ReLU(), nn.MaxPool2d(2)]
        c = out
    layers.append(nn.Flatten())
    width = 8 * 6 * 6
    for units in (16, 8):
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [nn.Linear(width, units), nn.ReLU()]
        width = units
    layers.append(nn.Linear(width, 1))
    ref = nn.Sequential(*layers)
    for a, b in zip(m.parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b)
    x = torch.randn(4, 5, 32, 32)
    assert torch.equal(m.eval()(x), ref.eval()(x))
    torch.manual_seed(1)
    y_m = m.train()(x)
    torch.manual_seed(1)
    assert torch.equal(y_m, ref.train()(x))
