"""Votes on a decision tree: the vote head, the MSE and Dirichlet-multinomial losses, intervals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from astrobatch.nn.heads import VoteHead
from astrobatch.tasks.votes import (
    VoteLoss,
    dirichlet_multinomial_nll,
    expected_fractions,
    interval_coverage,
    predictive_interval,
)

# 3 questions of 3, 2 and 4 answers, answers of a question not contiguous
QI = [0, 1, 0, 2, 2, 1, 0, 2, 2]
Q = 3
A = len(QI)


def draw_votes(rng, alpha, low=20, high=60, p_unasked=0.2):
    """Counts and question totals ``(G, A)`` drawn from Dirichlet-multinomials of ``alpha``."""
    qi = np.asarray(QI)
    counts = np.zeros_like(alpha)
    totals = np.zeros_like(alpha)
    for q in range(Q):
        cols = np.flatnonzero(qi == q)
        g = rng.gamma(alpha[:, cols])
        n = rng.integers(low, high, size=len(alpha)) * (rng.random(len(alpha)) > p_unasked)
        counts[:, cols] = rng.multinomial(n, g / g.sum(1, keepdims=True))
        totals[:, cols] = n[:, None]
    return counts, totals


def make_target(counts: torch.Tensor) -> torch.Tensor:
    """(B, 3, A): fractions, counts and weights (= the question's votes) of ``counts``."""
    idx = torch.tensor(QI)
    totals = torch.zeros(counts.shape[0], Q, dtype=counts.dtype).index_add(1, idx, counts)[:, idx]
    fractions = torch.where(totals > 0, counts / totals.clamp_min(1), torch.zeros_like(counts))
    return torch.stack([fractions, counts, totals], dim=1)


@pytest.fixture
def batch():
    """Concentrations, counts of 5 galaxies: galaxy 1 never saw question 2, galaxy 4 nothing."""
    g = torch.Generator().manual_seed(0)
    alpha = 1 + 20 * torch.rand(5, A, generator=g, dtype=torch.float64)
    counts = torch.randint(0, 12, (5, A), generator=g).to(torch.float64)
    counts[1, [3, 4, 7, 8]] = 0
    counts[4] = 0
    return alpha, counts


# --------------------------------------------------------------------------- head
def test_vote_head_layers_and_ranges():
    torch.manual_seed(0)
    head = VoteHead(12, A, hidden=(8, 4))
    kinds = [type(m) for m in head.layers]
    block = [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout]
    assert kinds == [*block, *block, nn.Linear]
    assert (head.in_features, head.out_features, head.output) == (12, A, "fraction")
    z = 10 * torch.randn(6, 12)
    p = head(z)
    assert p.shape == (6, A) and bool(((p > 0) & (p < 1)).all())
    head.output = "concentration"
    alpha = head.eval()(z)
    assert bool(((alpha >= 1) & (alpha <= 100)).all())
    assert [type(m) for m in VoteHead(4, 2, hidden=(), dropout=0).layers] == [nn.Linear]
    assert nn.Dropout not in [type(m) for m in VoteHead(4, 2, hidden=(3,), dropout=0).layers]


def test_vote_head_default_is_the_sommelier_shape():
    head = VoteHead(768, 37)
    linears = [m for m in head.layers if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(768, 512), (512, 256), (256, 37)]
    assert {m.p for m in head.layers if isinstance(m, nn.Dropout)} == {0.2}


def test_vote_head_batch_of_one_raises_in_training_only():
    head = VoteHead(4, 3, hidden=(8,))
    with pytest.raises(ValueError, match="more than 1 value"):
        head(torch.randn(1, 4))
    assert head.eval()(torch.randn(1, 4)).shape == (1, 3)


@pytest.mark.parametrize(
    "kwargs", [dict(n_answers=0), dict(hidden=(0,)), dict(dropout=1.0), dict(output="logits")]
)
def test_vote_head_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        VoteHead(**{"in_features": 4, "n_answers": 3, **kwargs})


# --------------------------------------------------------------------------- NLL
def test_nll_matches_scipy(batch):
    alpha, counts = batch
    nll = dirichlet_multinomial_nll(alpha, counts, QI, Q)
    assert nll.shape == (5, Q) and nll.dtype == torch.float64
    qi = np.asarray(QI)
    for b in range(5):
        for q in range(Q):
            k = counts[b].numpy()[qi == q]
            if k.sum() == 0:
                assert nll[b, q].item() == 0.0
                continue
            a = alpha[b].numpy()[qi == q]
            ref = -stats.dirichlet_multinomial.logpmf(k, a, int(k.sum()))
            assert nll[b, q].item() == pytest.approx(ref, abs=1e-5)


def test_nll_float32_close_to_float64(batch):
    alpha, counts = batch
    n64 = dirichlet_multinomial_nll(alpha, counts, QI, Q)
    n32 = dirichlet_multinomial_nll(alpha.float(), counts.float(), torch.tensor(QI), Q)
    assert n32.dtype == torch.float32
    torch.testing.assert_close(n32.double(), n64, atol=1e-4, rtol=1e-5)


def test_nll_checks_shapes():
    with pytest.raises(ValueError, match="counts"):
        dirichlet_multinomial_nll(torch.ones(2, A), torch.ones(2, A - 1), QI, Q)
    with pytest.raises(ValueError, match="n_questions"):
        dirichlet_multinomial_nll(torch.ones(2, A), torch.ones(2, A), QI, Q - 1)
    with pytest.raises(ValueError, match="integers"):
        dirichlet_multinomial_nll(torch.ones(2, A), torch.ones(2, A), [0.0] * A, 1)


# --------------------------------------------------------------------------- losses
@pytest.mark.parametrize("kind", ["mse", "dirichlet"])
def test_unasked_question_contributes_nothing(batch, kind):
    alpha, counts = batch
    target = make_target(counts)
    loss = VoteLoss(QI, kind).double()
    pred = (alpha / 25 if kind == "mse" else alpha).clone().requires_grad_(True)
    value = loss(pred, target)
    value.backward()
    unasked = target[:, 1].new_zeros(5, A, dtype=torch.bool)
    unasked[1, [3, 4, 7, 8]] = True
    unasked[4] = True
    assert torch.isfinite(pred.grad).all()
    assert (pred.grad[unasked] == 0).all(), "exactly zero gradient on unasked answers"
    assert (pred.grad[~unasked] != 0).any()
    changed = pred.detach().clone()
    changed[unasked] = 0.5 if kind == "mse" else 77.0
    assert loss(changed, target).item() == value.item()


def test_mse_is_the_weighted_mean():
    pred = torch.tensor([[0.2, 0.9, 0.5], [0.4, 0.1, 0.3]])
    fractions = torch.tensor([[0.0, 1.0, 0.5], [0.5, 0.5, 1.0]])
    weights = torch.tensor([[4.0, 4.0, 1.0], [2.0, 2.0, 0.0]])
    target = torch.stack([fractions, torch.zeros(2, 3), weights], dim=1)
    hand = (4 * 0.04 + 4 * 0.01 + 1 * 0.0 + 2 * 0.01 + 2 * 0.16) / (4 + 4 + 1 + 2 + 2)
    assert VoteLoss([0, 0, 1], "mse")(pred, target).item() == pytest.approx(hand, rel=1e-6)
    zero = torch.stack([fractions, torch.zeros(2, 3), torch.zeros(2, 3)], dim=1)
    assert VoteLoss([0, 0, 1], "mse")(pred, zero).item() == 0.0


def test_dirichlet_loss_is_the_mean_over_galaxies_of_the_summed_nll(batch):
    alpha, counts = batch
    loss = VoteLoss(QI, "dirichlet")
    nll = dirichlet_multinomial_nll(alpha, counts, QI, Q)
    assert nll[4].abs().sum() == 0, "galaxy without votes"
    expected = nll.sum() / 5  # the galaxy without votes still counts in B
    assert loss(alpha, make_target(counts)).item() == pytest.approx(expected.item(), rel=1e-12)


def test_vote_loss_buffer_and_checks():
    loss = VoteLoss(QI, "dirichlet")
    assert "question_index" in dict(loss.named_buffers())
    assert loss.question_index.dtype == torch.int64
    assert (loss.n_answers, loss.n_questions) == (A, Q)
    with pytest.raises(ValueError, match="kind"):
        VoteLoss(QI, "huber")
    with pytest.raises(ValueError, match="target"):
        loss(torch.ones(2, A), torch.ones(2, 2, A))


def test_gradients_are_finite_at_extremes():
    """Concentrations at the head's bounds and many votes: float32 gradients stay finite."""
    torch.manual_seed(1)
    head = VoteHead(6, A, hidden=(8,), output="concentration")
    z = 50 * torch.randn(16, 6)
    counts = torch.randint(0, 400, (16, A)).float()
    counts[:4] = 0
    loss = VoteLoss(QI, "dirichlet")(head(z), make_target(counts))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in head.parameters())


# --------------------------------------------------------------------------- statistics
def test_expected_fractions_sum_to_one_per_question(batch):
    alpha, _ = batch
    f = expected_fractions(alpha, QI, Q)
    sums = torch.zeros(5, Q, dtype=f.dtype).index_add(1, torch.tensor(QI), f)
    torch.testing.assert_close(sums, torch.ones(5, Q, dtype=f.dtype))
    assert f[0, 0].item() == pytest.approx((alpha[0, 0] / alpha[0, [0, 2, 6]].sum()).item())


def test_predictive_interval_matches_scipy_betabinom():
    rng = np.random.default_rng(2)
    alpha = rng.uniform(0.5, 40, size=(30, A))
    _, totals = draw_votes(rng, alpha, low=1, high=80)
    lo, hi = predictive_interval(alpha, totals, QI, level=0.9)
    qi = np.asarray(QI)
    alpha0 = np.stack([alpha[:, qi == q].sum(1) for q in qi], axis=1)
    asked = totals > 0
    n = totals[asked]
    for end, q in ((lo, 0.05), (hi, 0.95)):
        ref = stats.betabinom.ppf(q, n, alpha[asked], alpha0[asked] - alpha[asked]) / n
        np.testing.assert_array_equal(end[asked], ref)
    assert np.isnan(lo[~asked]).all() and np.isnan(hi[~asked]).all()
    assert (lo[asked] <= hi[asked]).all()


def test_predictive_interval_single_answer_question():
    lo, hi = predictive_interval(np.array([[2.0, 3.0, 4.0]]), np.array([[5, 5, 7]]), [0, 0, 1])
    assert (lo[0, 2], hi[0, 2]) == (1.0, 1.0)


@pytest.mark.parametrize("level", [0.68, 0.9])
def test_predictive_interval_coverage_on_data_from_the_model(level):
    """Counts drawn from the predicted Dirichlet-multinomials are covered at about ``level``.

    For a discrete count the central interval [ppf((1-l)/2), ppf((1+l)/2)] holds
    the count with probability >= l (P(K < ppf(q1)) < q1 and P(K <= ppf(q2)) >=
    q2), so coverage falls short of ``level`` only by sampling noise: about
    14 000 asked answers, correlated within a question, give a standard error
    of ~0.005-0.01, hence the lower bound ``level - 0.03``. It exceeds
    ``level`` by the probability of the end counts, a few per cent with 20-60
    votes (0.743 for 0.68 and 0.926 for 0.9 with this seed): the upper bound ``level + 0.12``.
    """
    rng = np.random.default_rng(0)
    alpha = rng.uniform(1, 20, size=(2000, A))
    counts, totals = draw_votes(rng, alpha)
    asked = totals > 0
    fractions = np.where(asked, counts / np.where(asked, totals, 1), np.nan)
    lo, hi = predictive_interval(alpha, totals, QI, level=level)
    coverage = interval_coverage(lo, hi, fractions, asked)
    assert level - 0.03 <= coverage <= level + 0.12, coverage
    # a model far too confident (every concentration x 50) covers much less
    lo, hi = predictive_interval(alpha * 50, totals, QI, level=level)
    assert interval_coverage(lo, hi, fractions, asked) < coverage - 0.1


def test_interval_coverage_checks():
    one = np.array([[0.5]])
    assert interval_coverage(one, one, one, np.array([[True]])) == 1.0
    with pytest.raises(ValueError, match="no asked"):
        interval_coverage(one, one, one, np.array([[False]]))
    with pytest.raises(ValueError, match="NaN"):
        interval_coverage(one * np.nan, one, one, np.array([[True]]))
    with pytest.raises(ValueError, match="shapes"):
        interval_coverage(one, one, np.ones((1, 2)), np.array([[True]]))
