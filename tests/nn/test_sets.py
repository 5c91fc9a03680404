"""Set models: shapes, permutation and padding invariance, empty sets, gradients, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from astrobatch.nn.sets import (
    SUMMARY_STATISTICS,
    DeepSets,
    SetTransformer,
    SummaryStats,
    build_set_model,
    count_parameters,
    masked_summary_statistics,
    mlp,
)

F = 3
CONFIGS = {
    "summary_stats": {"name": "summary_stats"},
    "deep_sets_mean": {"name": "deep_sets", "pooling": "mean"},
    "deep_sets_sum": {"name": "deep_sets", "pooling": "sum"},
    "set_transformer_sab": {"name": "set_transformer", "num_heads": 2, "num_inducing": 0},
    "set_transformer_isab": {"name": "set_transformer", "num_heads": 2, "num_inducing": 4},
}


def make_model(key: str, seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    kwargs = {"hidden_dim": 16, **CONFIGS[key], **overrides}
    return build_set_model(in_features=F, **kwargs).eval()


def make_batch(sizes, n_max: int, seed: int = 0, fill: float | None = None):
    """Padded batch with the given set sizes; padded slots hold garbage (or ``fill``)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(sizes), n_max, F, generator=g)
    mask = torch.arange(n_max).unsqueeze(0) < torch.tensor(sizes).unsqueeze(1)
    garbage = 100 * torch.randn(x.shape, generator=g) if fill is None else torch.full_like(x, fill)
    x = torch.where(mask.unsqueeze(-1), x, garbage)
    return x, mask


models = pytest.mark.parametrize("key", list(CONFIGS))


@models
def test_output_shape_and_out_features(key):
    x, mask = make_batch([5, 3, 8, 1], n_max=8)
    assert make_model(key)(x, mask).shape == (4, 1)
    torch.manual_seed(0)
    model = build_set_model(in_features=F, out_features=3, **{"hidden_dim": 16, **CONFIGS[key]})
    y = model(x, mask)
    assert y.shape == (4, 3) and y.dtype == torch.float32


@models
def test_permutation_invariance(key):
    model = make_model(key)
    sizes = [7, 4, 10]
    x, mask = make_batch(sizes, n_max=10)
    g = torch.Generator().manual_seed(1)
    x_perm = x.clone()
    for b, n in enumerate(sizes):  # shuffle the real elements of each set
        x_perm[b, :n] = x[b, torch.randperm(n, generator=g)]
    with torch.no_grad():
        torch.testing.assert_close(model(x_perm, mask), model(x, mask), atol=1e-5, rtol=1e-5)
    # real elements scattered among padded slots (mask permuted with them)
    perm = torch.randperm(10, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(
            model(x[:, perm], mask[:, perm]), model(x, mask), atol=1e-5, rtol=1e-5
        )


@models
def test_padding_invariance(key):
    model = make_model(key)
    sizes = [5, 2, 1, 0]
    x_short, m_short = make_batch(sizes, n_max=5, fill=0.0)
    with torch.no_grad():
        ref = model(x_short, m_short)
        for n_max, seed, fill in [(5, 1, None), (12, 2, None), (30, 3, float("nan"))]:
            x, mask = make_batch(sizes, n_max=n_max, seed=seed, fill=fill)
            x[:, :5] = torch.where(m_short.unsqueeze(-1), x_short, x[:, :5])
            torch.testing.assert_close(model(x, mask), ref, atol=1e-5, rtol=1e-5)
        x, mask = make_batch(sizes, n_max=8, fill=float("inf"))
        x[:, :5] = torch.where(m_short.unsqueeze(-1), x_short, x[:, :5])
        torch.testing.assert_close(model(x, mask), ref, atol=1e-5, rtol=1e-5)


@models
def test_empty_and_mixed_sets_finite_with_finite_gradients(key):
    model = make_model(key).train()
    for sizes in ([0, 0, 0], [0, 4, 0, 1]):
        x, mask = make_batch(sizes, n_max=6, fill=float("nan"))
        x.requires_grad_(True)
        model.zero_grad()
        y = model(x, mask)
        assert torch.isfinite(y).all()
        y.pow(2).sum().backward()
        for name, p in model.named_parameters():
            assert p.grad is None or torch.isfinite(p.grad).all(), name
        assert torch.isfinite(x.grad).all()
        assert (x.grad[~mask] == 0).all()  # padded slots get no gradient
    # every empty set gives the same answer, whatever its padded length (even N = 0)
    with torch.no_grad():
        e1 = model(*make_batch([0], n_max=3))
        e2 = model(*make_batch([0], n_max=9, seed=5))
        e0 = model(torch.zeros(1, 0, F), torch.zeros(1, 0, dtype=torch.bool))
    torch.testing.assert_close(e1, e2)
    torch.testing.assert_close(e0, e1)


@models
def test_single_element_set(key):
    model = make_model(key)
    x, mask = make_batch([1, 1], n_max=4)
    with torch.no_grad():
        y = model(x, mask)
        y1 = model(x[:, :1], mask[:, :1])
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, y1, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(y[0], y[1])  # it does look at the element


@models
def test_gradients_reach_all_parameters(key):
    model = make_model(key).train()
    x, mask = make_batch([6, 3, 8, 1], n_max=8)
    model(x, mask).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@models
def test_deterministic_in_eval(key):
    model = make_model(key)
    x, mask = make_batch([6, 3, 0, 1], n_max=8)
    with torch.no_grad():
        assert torch.equal(model(x, mask), model(x, mask))
    torch.testing.assert_close(make_model(key, seed=7)(x, mask), make_model(key, seed=7)(x, mask))


@models
def test_learns_masked_mean(key):
    """Regress the mean of feature 0 over the real elements: loss drops > 5x in 200 steps."""
    model = make_model(key).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)

    def batch():
        sizes = torch.randint(1, 17, (64,), generator=g).tolist()
        x, mask = make_batch(sizes, n_max=16, seed=int(torch.randint(0, 10**6, (1,), generator=g)))
        y = (torch.where(mask, x[..., 0], 0).sum(1) / mask.sum(1)).unsqueeze(1)
        return x, mask, 3 * y + 1  # offset/scale so that predicting 0 is not already good

    val = batch()

    def val_loss():
        with torch.no_grad():
            return torch.nn.functional.mse_loss(model(val[0], val[1]), val[2]).item()

    before = val_loss()
    for _ in range(200):
        x, mask, y = batch()
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x, mask), y).backward()
        opt.step()
    after = val_loss()
    assert after < before / 5, (before, after)


def test_masked_summary_statistics_matches_numpy():
    rng = np.random.default_rng(0)
    sizes = [7, 4, 1, 2, 10]
    n_max = 10
    x = rng.normal(size=(len(sizes), n_max, F)).astype(np.float32)
    mask = np.arange(n_max)[None, :] < np.array(sizes)[:, None]
    x_garbage = np.where(mask[..., None], x, np.float32(np.nan))
    x_garbage[0, -1, 0] = np.inf
    out = masked_summary_statistics(torch.from_numpy(x_garbage), torch.from_numpy(mask)).numpy()
    assert out.shape == (len(sizes), 1 + 7 * F)
    for b, n in enumerate(sizes):
        real = x[b, :n].astype(np.float64)
        expected = [np.log1p(n)]
        for f in range(F):
            v = real[:, f]
            stats = {
                "mean": np.mean(v),
                "median": np.median(v),
                "min": np.min(v),
                "max": np.max(v),
                "std": np.std(v, ddof=0),
                "q25": np.quantile(v, 0.25, method="linear"),
                "q75": np.quantile(v, 0.75, method="linear"),
            }
            expected += [stats[s] for s in SUMMARY_STATISTICS]
        np.testing.assert_allclose(out[b], expected, rtol=1e-5, atol=1e-6)


def test_masked_summary_statistics_hand_example_and_empty():
    x = torch.tensor([[[1.0], [2.0], [4.0], [10.0], [-7.0]], [[3.0], [0.0], [0.0], [0.0], [0.0]]])
    mask = torch.tensor([[True, True, True, True, False], [True, False, False, False, False]])
    out = masked_summary_statistics(x, mask)
    # set 0: {1, 2, 4, 10}; numpy: mean 4.25, median 3, std(ddof=0) 3.49106, q25 1.75, q75 5.5
    expected0 = [np.log1p(4), 4.25, 3.0, 1.0, 10.0, np.std([1, 2, 4, 10]), 1.75, 5.5]
    np.testing.assert_allclose(out[0].numpy(), expected0, rtol=1e-6)
    np.testing.assert_allclose(out[1].numpy(), [np.log1p(1), 3, 3, 3, 3, 0, 3, 3], rtol=1e-6)
    empty = masked_summary_statistics(torch.full((2, 4, 2), float("nan")), torch.zeros(2, 4).bool())
    assert torch.equal(empty, torch.zeros(2, 15))


def test_input_validation():
    model = DeepSets(in_features=F, hidden_dim=8)
    x, mask = make_batch([2, 3], n_max=4)
    with pytest.raises(ValueError, match=r"\(B, N, F\)"):
        model(x[0], mask)
    with pytest.raises(ValueError, match="bool"):
        model(x, mask.float())
    with pytest.raises(ValueError, match="mask must have shape"):
        model(x, mask[:, :3])
    with pytest.raises(ValueError, match="3 features"):
        model(x[..., :2], mask)
    with pytest.raises(ValueError, match="divisible"):
        SetTransformer(in_features=F, hidden_dim=10, num_heads=4)
    with pytest.raises(ValueError, match="pooling"):
        DeepSets(in_features=F, pooling="max")
    with pytest.raises(ValueError, match="n_layers"):
        mlp(3, 8, 1, n_layers=0)


def test_build_set_model_dispatch_and_unknown_name():
    m = build_set_model("set_transformer", in_features=F, hidden_dim=32, num_heads=8, num_blocks=3)
    assert isinstance(m, SetTransformer) and len(m.blocks) == 3
    assert m.blocks[0].mab.attn.num_heads == 8
    m = build_set_model("deep_sets", F, pooling="sum", phi_layers=3)
    assert isinstance(m, DeepSets) and m.pooling == "sum"
    assert sum(isinstance(layer, torch.nn.Linear) for layer in m.phi) == 3
    assert isinstance(build_set_model("summary_stats", F), SummaryStats)
    with pytest.raises(ValueError, match="unknown set model 'pointnet'"):
        build_set_model("pointnet", in_features=F)
    with pytest.raises(ValueError, match="in_features"):
        build_set_model("deep_sets", in_features=0)


def test_default_sizes_parameter_counts():
    """Default hidden_dim=64 models stay small (CPU-trainable); counts are reported in docs."""
    counts = {
        name: count_parameters(build_set_model(name, in_features=6))
        for name in ("summary_stats", "deep_sets", "set_transformer")
    }
    assert all(1_000 < c < 200_000 for c in counts.values()), counts
