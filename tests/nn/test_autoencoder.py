"""Tests of the masked autoencoder (its quantile head: tests/nn/test_heads.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from astrobatch.nn.autoencoder import MaskedAutoencoder, ResidualBlock

F, R = 12, 9


def tiny(**kw) -> MaskedAutoencoder:
    args = {"widths": (32, 16), "latent_dim": 8, "embedding_dim": 4, "n_frequencies": 4}
    args.update(kw)
    return MaskedAutoencoder(F, R, **args)


def test_shapes_and_forward():
    torch.manual_seed(0)
    ae = tiny()
    x = torch.randn(7, F)
    z = ae.encode(x)
    assert z.shape == (7, 8)
    assert ae.decode(z).shape == (7, R)
    recon, z2 = ae.eval()(x)
    assert recon.shape == (7, R) and torch.equal(z2, ae.encode(x))
    assert torch.isfinite(recon).all()


def test_architecture_mirrors_widths():
    ae = tiny(widths=(32, 16, 16))
    enc_blocks = [m for m in ae.encoder if isinstance(m, ResidualBlock)]
    dec_blocks = [m for m in ae.decoder if isinstance(m, ResidualBlock)]
    assert [b.linear1.out_features for b in enc_blocks] == [32, 16, 16]
    assert [b.linear1.out_features for b in dec_blocks] == [16, 16, 32]
    assert ae.encoder[-1].out_features == 8 and ae.decoder[-1].out_features == R
    # projection only where the width changes
    assert isinstance(enc_blocks[1].skip, nn.Linear) and isinstance(enc_blocks[2].skip, nn.Identity)
    # LayerNorm, ELU and dropout inside every block
    assert isinstance(enc_blocks[0].norm1, nn.LayerNorm) and enc_blocks[0].dropout.p == 0.1


def test_mask_indicators_double_the_input_width():
    plain, ind = tiny(), tiny(mask_indicators=True)
    assert plain.in_features == F and ind.in_features == 2 * F
    assert ind.encoder[0].in_features == plain.encoder[0].in_features + F
    x = torch.zeros(3, F)
    ind.eval()
    a = ind.encode(x, torch.zeros(3, F))
    b = ind.encode(x, torch.ones(3, F, dtype=torch.bool))
    assert not torch.allclose(a, b), "the indicators must reach the latent"
    with pytest.raises(ValueError, match="indicators"):
        ind.encode(x)
    with pytest.raises(ValueError, match="shape"):
        ind.encode(x, torch.zeros(3, F - 1))


def test_bad_arguments():
    with pytest.raises(ValueError, match="prefix"):
        MaskedAutoencoder(4, 5)
    with pytest.raises(ValueError, match="widths"):
        MaskedAutoencoder(4, 2, widths=())
    with pytest.raises(ValueError, match=r"\(B, 12\)"):
        tiny().encode(torch.zeros(2, 5))


def test_gradients_reach_every_parameter():
    ae = tiny(mask_indicators=True)
    recon, z = ae(torch.randn(5, F), torch.randint(0, 2, (5, F)).float())
    (recon.sum() + z.sum()).backward()
    missing = [n for n, p in ae.named_parameters() if p.grad is None]
    assert not missing
