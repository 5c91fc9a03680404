"""Janossy pooling: tuple sampling, eval invariances, empty sets, k = 1 limit, learning."""

from __future__ import annotations

import collections
import time

import pytest
import torch
from scipy import stats

from astrobatch.nn.sets import (
    DeepSets,
    JanossyPooling,
    SetTransformer,
    SummaryStats,
    _check_sets,
    build_set_model,
    sample_tuples,
)

F = 3
CONFIGS = {
    "k1": {"k": 1},
    "k2": {"k": 2},
    "k3_count": {"k": 3, "count_feature": True},
}
configs = pytest.mark.parametrize("cfg", list(CONFIGS))


def make_model(cfg: str, seed: int = 0, **overrides) -> JanossyPooling:
    torch.manual_seed(seed)
    kwargs = {"hidden_dim": 16, "n_tuples_train": 8, "n_tuples_eval": 32, **CONFIGS[cfg]}
    return JanossyPooling(in_features=F, **{**kwargs, **overrides}).eval()


def make_batch(sizes, n_max: int, seed: int = 0, fill: float | None = None):
    """Padded batch with the given set sizes; padded slots hold garbage (or ``fill``)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(sizes), n_max, F, generator=g)
    mask = torch.arange(n_max).unsqueeze(0) < torch.tensor(sizes).unsqueeze(1)
    garbage = 100 * torch.randn(x.shape, generator=g) if fill is None else torch.full_like(x, fill)
    return torch.where(mask.unsqueeze(-1), x, garbage), mask


@configs
def test_output_shape(cfg):
    x, mask = make_batch([5, 3, 8, 1], n_max=8)
    for train in (False, True):
        y = make_model(cfg, out_features=3).train(train)(x, mask)
        assert y.shape == (4, 3) and y.dtype == torch.float32 and y.isfinite().all()


@configs
def test_eval_exact_permutation_invariance(cfg):
    model = make_model(cfg)
    sizes = [7, 4, 10, 2]
    x, mask = make_batch(sizes, n_max=10)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        ref = model(x, mask)
        for _ in range(3):
            x_perm = x.clone()
            for b, n in enumerate(sizes):  # shuffle the real elements of each set
                x_perm[b, :n] = x[b, torch.randperm(n, generator=g)]
            torch.testing.assert_close(model(x_perm, mask), ref, atol=1e-6, rtol=1e-6)
            perm = torch.randperm(10, generator=g)  # real elements scattered among padding
            torch.testing.assert_close(model(x[:, perm], mask[:, perm]), ref, atol=1e-6, rtol=1e-6)


def test_eval_invariance_with_tied_projection_keys():
    """Distinct elements with equal projection keys (and duplicates) still sort canonically."""
    model = make_model("k2")
    w = model.sort_projection
    a = torch.tensor([1.0, 0.0, 0.0])
    b = a + torch.tensor([w[1], -w[0], 0.0])  # a @ w == b @ w (up to rounding), a != b
    b_key = (b * w).sum()
    assert torch.isclose(b_key, (a * w).sum())
    x = torch.stack([a, b, a, torch.tensor([0.5, -2.0, 1.0])]).unsqueeze(0)
    mask = torch.ones(1, 4, dtype=torch.bool)
    with torch.no_grad():
        ref = model(x, mask)
        for perm in ([1, 0, 2, 3], [3, 2, 1, 0], [2, 3, 0, 1]):
            torch.testing.assert_close(model(x[:, perm], mask), ref, atol=1e-6, rtol=1e-6)


def test_train_mode_is_invariant_in_distribution_not_exactly():
    model = make_model("k2", n_tuples_train=4).train()
    x, mask = make_batch([10], n_max=10)
    with torch.no_grad():
        torch.manual_seed(0)
        y1 = model(x, mask)
        y2 = model(x, mask)
        torch.manual_seed(0)
        y1_again = model(x, mask)
        long = JanossyPooling(F, 16, k=2, n_tuples_train=4000, n_tuples_eval=4000)
        long.train()
        perm = torch.randperm(10)
        y_long_eval = long.eval()(x, mask)
        long.train()
        y_long_train = long(x[:, perm], mask)
    assert not torch.equal(y1, y2)  # fresh tuples every forward
    torch.testing.assert_close(y1, y1_again)  # ... drawn from torch's global seed
    torch.testing.assert_close(y_long_train, y_long_eval, atol=2e-3, rtol=0)  # same expectation


@configs
def test_eval_padding_invariance(cfg):
    model = make_model(cfg)
    sizes = [5, 2, 1, 0]
    x_short, m_short = make_batch(sizes, n_max=5, fill=0.0)
    with torch.no_grad():
        ref = model(x_short, m_short)
        for n_max, seed, fill in [(5, 1, None), (12, 2, None), (30, 3, float("nan"))]:
            x, mask = make_batch(sizes, n_max=n_max, seed=seed, fill=fill)
            x[:, :5] = torch.where(m_short.unsqueeze(-1), x_short, x[:, :5])
            torch.testing.assert_close(model(x, mask), ref, atol=1e-6, rtol=1e-6)
        x, mask = make_batch(sizes, n_max=8, fill=float("inf"))
        x[:, :5] = torch.where(m_short.unsqueeze(-1), x_short, x[:, :5])
        torch.testing.assert_close(model(x, mask), ref, atol=1e-6, rtol=1e-6)


def test_eval_output_independent_of_batch_neighbours():
    model = make_model("k3_count")
    x, mask = make_batch([6, 3, 9, 1], n_max=9)
    with torch.no_grad():
        together = model(x, mask)
        alone = torch.cat(
            [
                model(x[b : b + 1, : int(mask[b].sum())], mask[b : b + 1, : int(mask[b].sum())])
                for b in range(4)
            ]
        )
    torch.testing.assert_close(alone, together, atol=1e-6, rtol=1e-6)
    with torch.no_grad():
        assert torch.equal(model(x, mask), together)  # deterministic


@configs
def test_empty_sets_finite_with_finite_gradients(cfg):
    model = make_model(cfg).train()
    for sizes in ([0, 0, 0], [0, 4, 0, 1]):
        x, mask = make_batch(sizes, n_max=6, fill=float("nan"))
        x.requires_grad_(True)
        model.zero_grad()
        y = model(x, mask)
        assert torch.isfinite(y).all()
        y.pow(2).sum().backward()
        for name, p in model.named_parameters():
            assert p.grad is None or torch.isfinite(p.grad).all(), name
        assert torch.isfinite(x.grad).all() and (x.grad[~mask] == 0).all()
    # every empty set gives the same "no data" answer, rho(0), in train and eval, even N = 0
    for train in (True, False):
        model.train(train)
        with torch.no_grad():
            e1 = model(*make_batch([0], n_max=3))
            e2 = model(*make_batch([0], n_max=9, seed=5))
            e0 = model(torch.zeros(1, 0, F), torch.zeros(1, 0, dtype=torch.bool))
            rho0 = model.rho(torch.zeros(1, model.rho[0].in_features))
        torch.testing.assert_close(e1, e2)
        torch.testing.assert_close(e0, e1)
        torch.testing.assert_close(e0, rho0)


@pytest.mark.parametrize("k", [4, 7])
def test_k_larger_than_the_set(k):
    model = make_model("k2", k=k)
    x, mask = make_batch([1, 2, 3, 5], n_max=5)
    for train in (True, False):
        y = model.train(train)(x, mask)
        assert y.shape == (4, 1) and y.isfinite().all()
    with torch.no_grad():  # N < k too, and padding still does not matter
        torch.testing.assert_close(model(x[:1, :1], mask[:1, :1]), model(x[:1], mask[:1]))
    # tuples of a set with n < k hold every element, cyclically repeated
    xv, mv = _check_sets(x, mask)
    for det in (True, False):
        idx, _ = sample_tuples(xv, mv, k, 6, deterministic=det, projection=torch.randn(F))
        for b, n in enumerate([1, 2, 3, 5]):
            if n >= k:
                continue
            for tup in idx[b].tolist():
                assert sorted(tup[:n]) == list(range(n))
                assert tup[n:] == [tup[s % n] for s in range(n, k)]


@pytest.mark.parametrize("n_tuples_eval", [8, 13, 40])
def test_k1_with_all_elements_equals_deep_sets_mean(n_tuples_eval):
    """k = 1, n_tuples_eval >= n: stratified eval weights give exactly the mean over elements."""
    torch.manual_seed(0)
    janossy = JanossyPooling(F, 16, k=1, n_tuples_eval=n_tuples_eval).eval()
    deep = DeepSets(F, 16, pooling="mean").eval()
    deep.phi.load_state_dict(janossy.phi.state_dict())
    deep.rho.load_state_dict(janossy.rho.state_dict())
    x, mask = make_batch([8, 5, 1, 0, 3], n_max=8, fill=float("nan"))
    with torch.no_grad():
        torch.testing.assert_close(janossy(x, mask), deep(x, mask), atol=1e-6, rtol=1e-5)


def test_eval_tuples_are_distinct_and_uniform():
    """Eval tuples: distinct real elements; the ordered pairs of 5 elements look uniform."""
    x, mask = _check_sets(*make_batch([5, 9], n_max=9))
    idx, w = sample_tuples(x, mask, 2, 2000, deterministic=True, projection=torch.randn(F))
    assert (idx[0] < 5).all() and (idx[..., 0] != idx[..., 1]).all()
    torch.testing.assert_close(w.sum(1), torch.ones(2, dtype=w.dtype))
    counts = collections.Counter(map(tuple, idx[0].tolist()))
    assert len(counts) == 20
    firsts = collections.Counter(idx[0, :, 0].tolist())
    assert set(firsts.values()) == {400}  # stratified first slot
    # second slot given the first: uniform over the 4 others
    table = [[counts[(a, b)] for b in range(5) if b != a] for a in range(5)]
    chi2 = sum(stats.chisquare(row).statistic for row in table)
    assert stats.chi2.sf(chi2, df=15) > 1e-3, table
    # T < n: the first slots are distinct and weights uniform
    idx, w = sample_tuples(x, mask, 3, 4, deterministic=True, projection=torch.randn(F))
    assert len(set(idx[1, :, 0].tolist())) == 4
    torch.testing.assert_close(w[1], torch.full((4,), 0.25))


def test_learns_mean_pairwise_distance():
    """Janossy k = 2 learns E|x_i - x_j| of a scalar feature far better than the mean predictor.

    The mean pairwise distance is exactly a 2-ary Janossy function (phi = |a - b|).
    One thread: on a shared CPU, thread contention makes tiny steps ~10x slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _train_pairwise_distance()
    finally:
        torch.set_num_threads(threads)


def _train_pairwise_distance():
    start = time.perf_counter()
    torch.manual_seed(0)
    model = JanossyPooling(1, 32, k=2, n_tuples_train=8, n_tuples_eval=64)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)

    def batch(n_sets=32, n_max=12):
        sizes = torch.randint(2, n_max + 1, (n_sets,), generator=g)
        mask = torch.arange(n_max).unsqueeze(0) < sizes.unsqueeze(1)
        scale = 0.5 + 1.5 * torch.rand(n_sets, 1, 1, generator=g)
        x = scale * torch.randn(n_sets, n_max, 1, generator=g)
        d = (x - x.transpose(1, 2)).abs()  # (n_sets, n_max, n_max)
        pair = mask.unsqueeze(1) & mask.unsqueeze(2)
        y = (d * pair).sum((1, 2)) / (sizes * (sizes - 1))
        return x, mask, y.unsqueeze(1)

    val = batch(256)
    baseline = ((val[2] - val[2].mean()) ** 2).mean().item()
    model.train()
    for _ in range(300):  # ~3 s on one CPU thread
        x, mask, y = batch()
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x, mask), y).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        mse = torch.nn.functional.mse_loss(model(val[0], val[1]), val[2]).item()
    assert mse < baseline / 5, (mse, baseline)
    assert time.perf_counter() - start < 30  # a guard; the test is sized for ~3 s


def test_build_set_model_janossy_and_existing_names():
    m = build_set_model(
        "janossy", in_features=F, hidden_dim=16, janossy_k=10, n_tuples_train=4, n_tuples_eval=9
    )
    assert isinstance(m, JanossyPooling)
    assert (m.k, m.n_tuples_train, m.n_tuples_eval, m.count_feature) == (10, 4, 9, False)
    assert m.phi[0].in_features == 10 * F
    m = build_set_model("janossy", F, out_features=2, phi_layers=3, janossy_count_feature=True)
    assert m.k == 2 and m.count_feature and m.rho[0].in_features == 64 + 1
    assert sum(isinstance(layer, torch.nn.Linear) for layer in m.phi) == 3
    x, mask = make_batch([3, 0], n_max=4)
    assert m.eval()(x, mask).shape == (2, 2)
    # the Janossy keywords leave the other models untouched
    assert isinstance(build_set_model("summary_stats", F, janossy_k=5), SummaryStats)
    assert isinstance(build_set_model("deep_sets", F, n_tuples_train=3), DeepSets)
    assert isinstance(build_set_model("set_transformer", F, n_tuples_eval=3), SetTransformer)
    with pytest.raises(ValueError, match="'janossy'"):
        build_set_model("pointnet", in_features=F)


def test_validation():
    for kwargs in ({"k": 0}, {"n_tuples_train": 0}, {"n_tuples_eval": 0}):
        name = next(iter(kwargs))
        with pytest.raises(ValueError, match=name):
            JanossyPooling(F, 8, **kwargs)
    model = JanossyPooling(F, 8)
    x, mask = make_batch([2, 3], n_max=4)
    with pytest.raises(ValueError, match="3 features"):
        model(x[..., :2], mask)
    with pytest.raises(ValueError, match="bool"):
        model(x, mask.float())
    with pytest.raises(ValueError, match="projection"):
        sample_tuples(*_check_sets(x, mask), 2, 4, deterministic=True)


def test_sort_projection_is_fixed_and_saved():
    a, b = JanossyPooling(F, 8), JanossyPooling(F, 8)
    assert torch.equal(a.sort_projection, b.sort_projection)
    assert "sort_projection" in a.state_dict()
