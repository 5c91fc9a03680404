"""Heads: the MLP head, the ordered quantile head and the encoder + head composition."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from astrobatch.nn.heads import EncoderHead, MLPHead, QuantileHead


# --------------------------------------------------------------------------- MLP head
def test_mlp_head_layers_and_shapes():
    head = MLPHead(10, 3, hidden=(8, 4), activation="elu")
    kinds = [type(m) for m in head.layers]
    assert kinds == [nn.Linear, nn.ELU, nn.Linear, nn.ELU, nn.Linear]
    assert head(torch.randn(6, 10)).shape == (6, 3)
    assert (head.in_features, head.out_features) == (10, 3)
    assert [type(m) for m in MLPHead(5, 1).layers] == [nn.Linear]


def test_mlp_head_dropout_before_each_hidden_layer_only():
    head = MLPHead(10, 1, hidden=(8, 4), dropout=0.5)
    kinds = [type(m) for m in head.layers]
    assert kinds == [nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.ReLU, nn.Linear]
    head.eval()
    x = torch.randn(3, 10)
    assert torch.equal(head(x), head(x)), "no dropout in eval mode"


def test_mlp_head_same_weights_as_a_hand_written_sequential():
    torch.manual_seed(3)
    head = MLPHead(12, 1, hidden=(8, 4))
    torch.manual_seed(3)
    ref = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 1))
    for a, b in zip(head.parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b)


def test_mlp_head_bad_arguments():
    with pytest.raises(ValueError, match="widths"):
        MLPHead(0, 1)
    with pytest.raises(ValueError, match="widths"):
        MLPHead(4, 1, hidden=(3, 0))
    with pytest.raises(ValueError, match="activation"):
        MLPHead(4, 1, activation="tanh")
    with pytest.raises(ValueError, match="dropout"):
        MLPHead(4, 1, dropout=1.0)


# --------------------------------------------------------------------------- quantile head
@pytest.mark.parametrize("scale", [1.0, 1e2, 1e4])
def test_quantiles_never_cross(scale):
    for seed in range(20):
        torch.manual_seed(seed)
        head = QuantileHead(8, n_labels=5, hidden=(16, 8))
        with torch.no_grad():
            for p in head.parameters():
                p.mul_(scale)
        q = head(torch.randn(64, 8) * scale)
        assert q.shape == (64, 5, 3)
        assert torch.isfinite(q).all()
        assert (q[..., 0] <= q[..., 1]).all() and (q[..., 1] <= q[..., 2]).all()


def test_quantiles_never_cross_with_extreme_offsets():
    head = QuantileHead(4, n_labels=3, hidden=())
    with torch.no_grad():
        head.out.weight.zero_()
        # (a, m, b) per label: offsets hugely negative/positive, medians large
        head.out.bias.copy_(torch.tensor([-1e4, 1e6, -1e4, 1e4, -3.0, 1e4, -50.0, 0.0, 80.0]))
    q = head(torch.zeros(2, 4))
    assert (q[..., 0] <= q[..., 1]).all() and (q[..., 1] <= q[..., 2]).all()
    assert torch.equal(q[0, 0, 1], torch.tensor(1e6))


def test_quantile_head_ordering_is_softplus_around_the_median():
    head = QuantileHead(2, n_labels=1, hidden=())
    with torch.no_grad():
        head.out.weight.zero_()
        head.out.bias.copy_(torch.tensor([0.0, 2.0, 1.0]))  # (a, m, b)
    q = head(torch.zeros(1, 2))[0, 0]
    sp = torch.nn.functional.softplus
    torch.testing.assert_close(
        q,
        torch.stack([2.0 - sp(torch.tensor(0.0)), torch.tensor(2.0), 2.0 + sp(torch.tensor(1.0))]),
    )
    assert head.in_features == head.latent_dim == 2


def test_quantile_head_ordering_holds_for_gradients_too():
    """Ordered after every optimiser step, not only at initialisation."""
    torch.manual_seed(0)
    head = QuantileHead(4, n_labels=2, hidden=(8,))
    opt = torch.optim.SGD(head.parameters(), lr=0.05)
    x, y = torch.randn(32, 4), torch.tensor([5.0, 0.0, -5.0]).expand(32, 2, 3)
    for _ in range(100):
        loss = (head(x) - y).square().mean()  # pulls towards crossed quantiles
        opt.zero_grad()
        loss.backward()
        opt.step()
        q = head(x)
        assert torch.isfinite(q).all()
        assert (q[..., 0] <= q[..., 1]).all() and (q[..., 1] <= q[..., 2]).all()
    assert (q[..., 2] - q[..., 0]).max() < 0.2, "the interval collapsed towards the median"


def test_quantile_head_bad_sizes():
    with pytest.raises(ValueError, match="sizes"):
        QuantileHead(0, 2)
    with pytest.raises(ValueError, match="sizes"):
        QuantileHead(4, 2, hidden=(0,))


# --------------------------------------------------------------------------- composition
def test_encoder_head_composes_and_checks_widths():
    enc = nn.Sequential(nn.Flatten(), nn.Linear(12, 6))
    enc.out_features = 6
    model = EncoderHead(enc, MLPHead(6, 2))
    assert model(torch.zeros(3, 3, 2, 2)).shape == (3, 2)
    assert [k.split(".")[0] for k in model.state_dict()] == ["encoder"] * 2 + ["head"] * 2
    with pytest.raises(ValueError, match="out_features"):
        EncoderHead(enc, MLPHead(5, 2))
