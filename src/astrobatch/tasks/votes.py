"""Losses and statistics of votes on a decision tree of questions (Galaxy Zoo style).

Volunteers answer questions about an object; each question has a few
answers, and later questions are asked only after some answers of earlier
ones, so a question may have no votes for an object (it was never asked). The
tree is given generically by ``question_index``, an integer array ``(A,)``: the
question (0 .. Q-1) of each of the A answers, in any order. Per object the data
are

- ``counts`` ``(B, A)``: votes for each answer (>= 0; real numbers allowed);
- ``fraction`` ``(B, A)``: each answer's share of its question's votes;
- weights ``(B, A)``: how much each answer counts in the MSE loss (chosen by
  the caller: e.g. the question's total votes where it was asked, 1 for data
  with fractions only, 0 where unasked or missing).

Objectives (:class:`VoteLoss`, any ``loss(pred, target)`` of
:class:`~astrobatch.tasks.finetune.FinetuneTask`):

- ``"mse"``: the vote-weighted squared error of predicted fractions, as in the
  Galaxy Sommelier fine-tuning of DINOv2 on Galaxy Zoo, with one change: answers
  of questions an object was never asked weigh 0 instead of being trained
  toward a fraction of 0;
- ``"dirichlet"``: the negative log-likelihood of the raw counts under a
  Dirichlet-multinomial per question whose concentrations the model predicts
  (Zoobot; Walmsley et al. 2022, MNRAS 509, 3966, arXiv:2102.08414, sec. 3).
  Questions without votes contribute exactly 0, so no unasked question is
  trained at all; a question's weight grows with its votes through the
  likelihood itself.

Statistics of a Dirichlet prediction: :func:`expected_fractions` (the
Dirichlet mean), :func:`predictive_interval` (central interval of an observed
fraction under the Dirichlet-multinomial, beta-binomial marginals) and
:func:`interval_coverage`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import special
from torch import Tensor, nn

__all__ = [
    "VOTE_LOSSES",
    "VoteLoss",
    "dirichlet_multinomial_nll",
    "expected_fractions",
    "interval_coverage",
    "predictive_interval",
]

#: Kinds of :class:`VoteLoss`.
VOTE_LOSSES = ("mse", "dirichlet")


def _as_index(question_index: Sequence[int] | Tensor | np.ndarray) -> Tensor:
    """``question_index`` as an int64 tensor ``(A,)`` of values >= 0 (ValueError otherwise)."""
    idx = torch.as_tensor(question_index)
    if idx.ndim != 1 or idx.numel() == 0:
        raise ValueError(
            f"question_index must be a non-empty 1-D array, got shape {tuple(idx.shape)}"
        )
    if idx.dtype.is_floating_point or idx.dtype == torch.bool:
        raise ValueError(f"question_index must hold integers, got {idx.dtype}")
    idx = idx.to(torch.int64)
    if int(idx.min()) < 0:
        raise ValueError("question_index must be >= 0")
    return idx


def _check(values: Tensor, name: str, n_answers: int) -> None:
    if values.ndim != 2 or values.shape[1] != n_answers:
        raise ValueError(f"{name} must be (B, {n_answers}), got shape {tuple(values.shape)}")


def _question_sums(values: Tensor, question_index: Tensor, n_questions: int) -> Tensor:
    """Per-question sums ``(B, Q)`` of ``values`` ``(B, A)`` (differentiable)."""
    out = values.new_zeros(values.shape[0], n_questions)
    return out.index_add(1, question_index.to(values.device), values)


def _nll(concentration: Tensor, counts: Tensor, question_index: Tensor, n_questions: int) -> Tensor:
    """:func:`dirichlet_multinomial_nll` without checks (``question_index`` int64, valid)."""
    k, alpha = counts.to(concentration.dtype), concentration
    per_answer = torch.lgamma(k + alpha) - torch.lgamma(alpha) - torch.lgamma(k + 1.0)
    n = _question_sums(k, question_index, n_questions)
    alpha0 = _question_sums(alpha, question_index, n_questions)
    log_p = (
        torch.lgamma(n + 1.0)
        + torch.lgamma(alpha0)
        - torch.lgamma(n + alpha0)
        + _question_sums(per_answer, question_index, n_questions)
    )
    return torch.where(n > 0, -log_p, torch.zeros_like(log_p))


def dirichlet_multinomial_nll(
    concentration: Tensor,
    counts: Tensor,
    question_index: Sequence[int] | Tensor,
    n_questions: int,
) -> Tensor:
    r"""Negative log-likelihood of vote counts under a Dirichlet-multinomial per question.

    For question q with answers a, votes :math:`k_a`, :math:`N = \sum_a k_a`
    and concentrations :math:`\alpha_a`, :math:`\alpha_0 = \sum_a \alpha_a`:

    .. math::

        \log p(k \mid \alpha) = \log\Gamma(N+1) - \sum_a \log\Gamma(k_a+1)
            + \log\Gamma(\alpha_0) - \log\Gamma(N+\alpha_0)
            + \sum_a \left[\log\Gamma(k_a+\alpha_a) - \log\Gamma(\alpha_a)\right]

    (the loss of Zoobot: Walmsley et al. 2022, MNRAS 509, 3966,
    arXiv:2102.08414, sec. 3). A question without votes (N = 0) contributes
    exactly 0, with a gradient of exactly 0. Vectorised: per-question sums by
    ``index_add`` over the answers, no loop over objects or questions.

    Parameters
    ----------
    concentration : torch.Tensor, shape (B, A), float
        Dirichlet concentrations, > 0 (e.g. :class:`~astrobatch.nn.heads.VoteHead`
        with ``output="concentration"``).
    counts : torch.Tensor, shape (B, A), float or int
        Votes per answer, >= 0 (real values are allowed: the formula uses the
        gamma function).
    question_index : sequence of int or torch.Tensor, shape (A,)
        Question of each answer, in ``[0, n_questions)``.
    n_questions : int
        Q.

    Returns
    -------
    torch.Tensor, shape (B, Q), dtype of ``concentration``
        ``-log p``, nats; 0 for questions without votes.

    Raises
    ------
    ValueError
        On shapes that do not fit, or a question index outside ``[0, n_questions)``.

    Examples
    --------
    One question with two answers, one vote each, a flat Dirichlet: every split
    of 2 votes is equally likely, so p(1, 1) = 1/3; the second question has no
    votes.

    >>> nll = dirichlet_multinomial_nll(torch.ones(1, 3), torch.tensor([[1.0, 1.0, 0.0]]),
    ...                                 [0, 0, 1], n_questions=2)
    >>> round(float(nll[0, 0]), 4) == round(float(np.log(3)), 4), float(nll[0, 1])
    (True, 0.0)
    """
    idx = _as_index(question_index)
    n_answers = idx.numel()
    _check(concentration, "concentration", n_answers)
    _check(counts, "counts", n_answers)
    if counts.shape[0] != concentration.shape[0]:
        raise ValueError(
            f"counts has {counts.shape[0]} objects but concentration {concentration.shape[0]}"
        )
    if int(idx.max()) >= n_questions:
        raise ValueError(f"question_index has {int(idx.max())} >= n_questions ({n_questions})")
    return _nll(concentration, counts, idx, int(n_questions))


def expected_fractions(
    concentration: Tensor, question_index: Sequence[int] | Tensor, n_questions: int
) -> Tensor:
    """Expected vote fractions: the Dirichlet mean ``alpha_a / alpha_0`` of each answer's question.

    Parameters
    ----------
    concentration : torch.Tensor, shape (B, A), float, > 0
    question_index : sequence of int or torch.Tensor, shape (A,)
        Question of each answer, in ``[0, n_questions)``.
    n_questions : int

    Returns
    -------
    torch.Tensor, shape (B, A)
        Fractions in (0, 1]; those of one question sum to 1.

    Raises
    ------
    ValueError
        As :func:`dirichlet_multinomial_nll`.

    Examples
    --------
    >>> expected_fractions(torch.tensor([[1.0, 3.0, 2.0]]), [0, 0, 1], 2)
    tensor([[0.2500, 0.7500, 1.0000]])
    """
    idx = _as_index(question_index)
    _check(concentration, "concentration", idx.numel())
    if int(idx.max()) >= n_questions:
        raise ValueError(f"question_index has {int(idx.max())} >= n_questions ({n_questions})")
    idx = idx.to(concentration.device)
    alpha0 = _question_sums(concentration, idx, int(n_questions))
    return concentration / alpha0[:, idx]


class VoteLoss(nn.Module):
    """Loss of predicted votes: vote-weighted MSE of fractions, or Dirichlet-multinomial NLL.

    Parameters
    ----------
    question_index : sequence of int, shape (A,)
        Question of each answer (0 .. Q-1, Q = ``max + 1``); a buffer of the
        module (moves with it, saved in its state dict).
    kind : {"mse", "dirichlet"}
        ``"mse"``: ``pred`` are fractions and the loss is
        ``sum(w (pred - fraction)^2) / max(sum(w), eps)`` over the batch;
        ``"dirichlet"``: ``pred`` are concentrations and the loss is the
        :func:`dirichlet_multinomial_nll` of the counts summed over questions
        and averaged over the B objects (questions and objects without votes
        add 0 but still count in B; the weights are not used: the counts say
        which questions were asked).
    eps : float
        Floor of the total weight of ``"mse"`` (a batch of zero weight gives 0).

    Attributes
    ----------
    question_index : torch.Tensor, int64, shape (A,)
    n_questions, n_answers : int
    kind : str

    Shape
    -----
    - pred: ``(B, A)``, float
    - target: ``(B, 3, A)``, float: ``target[:, 0]`` vote fractions,
      ``target[:, 1]`` vote counts, ``target[:, 2]`` weights (>= 0)
    - output: ``()``, float

    Raises
    ------
    ValueError
        On an unknown kind, a bad ``question_index``, or (in :meth:`forward`)
        shapes that do not fit.

    Examples
    --------
    >>> target = torch.tensor([[[0.5, 0.5, 0.0], [1.0, 1.0, 0.0], [2.0, 2.0, 0.0]]])
    >>> VoteLoss([0, 0, 1], "mse")(torch.tensor([[0.7, 0.5, 0.9]]), target)
    tensor(0.0200)
    >>> round(float(VoteLoss([0, 0, 1], "dirichlet")(torch.ones(1, 3), target)), 4)
    1.0986
    """

    def __init__(self, question_index: Sequence[int], kind: str = "dirichlet", eps: float = 1e-12):
        super().__init__()
        if kind not in VOTE_LOSSES:
            raise ValueError(f"kind must be one of {list(VOTE_LOSSES)}, got {kind!r}")
        idx = _as_index(question_index)
        self.register_buffer("question_index", idx)
        self.n_answers = int(idx.numel())
        self.n_questions = int(idx.max()) + 1
        self.kind = kind
        self.eps = float(eps)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """The scalar loss of ``pred`` ``(B, A)`` against ``target`` ``(B, 3, A)``."""
        _check(pred, "pred", self.n_answers)
        if target.shape != (pred.shape[0], 3, self.n_answers):
            raise ValueError(
                f"target must be (B, 3, {self.n_answers}) with B = {pred.shape[0]}, "
                f"got shape {tuple(target.shape)}"
            )
        target = target.to(pred.dtype)
        if self.kind == "mse":
            w = target[:, 2]
            return (w * (pred - target[:, 0]) ** 2).sum() / w.sum().clamp_min(self.eps)
        nll = _nll(pred, target[:, 1], self.question_index, self.n_questions)
        return nll.sum(dim=1).mean()

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, n_answers={self.n_answers}, n_questions={self.n_questions}"


def _np_question_sums(
    values: np.ndarray, question_index: np.ndarray, n_questions: int
) -> np.ndarray:
    out = np.zeros((values.shape[0], n_questions), dtype=np.float64)
    np.add.at(out.T, question_index, values.T)
    return out


def _betabinom_ppf(
    q: np.ndarray, n: np.ndarray, a: np.ndarray, b: np.ndarray, max_cells: int = 2_000_000
) -> np.ndarray:
    """Quantiles ``(len(q), M)`` of beta-binomial(n, a, b) (``n``, ``a``, ``b`` of shape (M,)).

    The smallest count ``k`` with ``cdf(k) >= q``, as ``scipy.stats.betabinom.ppf``
    but from the cumulated pmf on ``k = 0 .. n`` (vectorised, in chunks of at
    most ``max_cells`` pmf values): scipy's generic discrete ``ppf`` searches the
    cdf one value at a time and takes seconds per ten thousand answers.
    """
    out = np.empty((q.size, n.size))
    order = np.argsort(n, kind="stable")  # chunks of similar n: small pmf grids
    chunk = max(1, max_cells // (int(n.max()) + 1))
    for start in range(0, n.size, chunk):
        rows = order[start : start + chunk]
        width = int(n[rows].max()) + 1
        nn_, aa, bb = n[rows, None], a[rows, None], b[rows, None]
        kk = np.arange(width, dtype=np.float64)[None, :]
        valid = kk <= nn_
        kv = np.where(valid, kk, 0.0)
        log_pmf = (
            special.gammaln(nn_ + 1)
            - special.gammaln(kv + 1)
            - special.gammaln(nn_ - kv + 1)
            + special.betaln(kv + aa, nn_ - kv + bb)
            - special.betaln(aa, bb)
        )
        cdf = np.cumsum(np.where(valid, np.exp(log_pmf), 0.0), axis=1)
        cdf /= cdf[np.arange(rows.size), nn_[:, 0].astype(np.int64)][:, None]  # exact 1 at n
        for i, qi in enumerate(q):
            # first k with cdf >= q (1e-12 relative slack: rounding of the cumulated sum)
            k = np.argmax(cdf >= qi * (1 - 1e-12), axis=1)
            out[i, rows] = np.minimum(k, nn_[:, 0])
    return out


def predictive_interval(
    concentration: np.ndarray,
    total_votes: np.ndarray,
    question_index: Sequence[int] | np.ndarray,
    level: float = 0.68,
) -> tuple[np.ndarray, np.ndarray]:
    """Central interval of each answer's vote fraction under the predicted Dirichlet-multinomial.

    With N votes on the question, the count of answer a is beta-binomial
    ``(N, alpha_a, alpha_0 - alpha_a)`` (the marginal of the
    Dirichlet-multinomial); the interval is its ``(1 - level) / 2`` and
    ``(1 + level) / 2`` quantiles (as ``scipy.stats.betabinom.ppf``, computed
    here from the cumulated pmf, vectorised) divided by N.
    The count is discrete, so the interval holds the observed fraction with
    probability at least ``level`` (more by up to the probability of the end
    counts, i.e. most for few votes). An answer that is its question's only one
    has the interval [1, 1].

    Parameters
    ----------
    concentration : numpy.ndarray, shape (N, A), float, > 0
        Predicted concentrations.
    total_votes : numpy.ndarray, shape (N, A), float or int, >= 0
        Votes of each answer's question (the same for all answers of a
        question); rounded to integers.
    question_index : sequence of int, shape (A,)
        Question of each answer.
    level : float
        Probability of the central interval, in (0, 1).

    Returns
    -------
    lo, hi : numpy.ndarray, shape (N, A), float64
        Fractions in [0, 1], ``lo <= hi``; NaN where the question has no votes.

    Raises
    ------
    ValueError
        On shapes that do not fit, a level outside (0, 1), negative votes or
        non-positive concentrations.

    Examples
    --------
    >>> lo, hi = predictive_interval(np.array([[5.0, 5.0, 1.0]]), np.array([[10, 10, 0]]),
    ...                              [0, 0, 1], level=0.68)
    >>> lo.round(2).tolist(), hi.round(2).tolist()
    ([[0.3, 0.3, nan]], [[0.7, 0.7, nan]])
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    idx = _as_index(np.asarray(question_index)).numpy()
    alpha = np.asarray(concentration, dtype=np.float64)
    n = np.rint(np.asarray(total_votes, dtype=np.float64))
    for name, arr in (("concentration", alpha), ("total_votes", n)):
        if arr.ndim != 2 or arr.shape[1] != idx.size:
            raise ValueError(f"{name} must be (N, {idx.size}), got shape {arr.shape}")
    if alpha.shape != n.shape:
        raise ValueError(f"concentration {alpha.shape} and total_votes {n.shape} differ")
    if not (alpha > 0).all():
        raise ValueError("concentrations must be > 0")
    if (n < 0).any():
        raise ValueError("total_votes must be >= 0")
    alpha0 = _np_question_sums(alpha, idx, int(idx.max()) + 1)[:, idx]
    rest = alpha0 - alpha
    alone = rest <= 0  # the only answer of its question: the fraction is 1
    asked = n > 0
    n_safe = np.where(asked, n, 1.0)
    q = np.array([(1.0 - level) / 2, (1.0 + level) / 2])
    k = _betabinom_ppf(q, n_safe.ravel(), alpha.ravel(), np.where(alone, 1.0, rest).ravel())
    lo, hi = (np.where(alone, 1.0, kk.reshape(alpha.shape) / n_safe) for kk in k)
    return np.where(asked, lo, np.nan), np.where(asked, hi, np.nan)


def interval_coverage(
    lo: np.ndarray, hi: np.ndarray, observed_fraction: np.ndarray, asked_mask: np.ndarray
) -> float:
    """Fraction of the asked answers whose observed fraction lies in ``[lo, hi]``.

    Parameters
    ----------
    lo, hi : numpy.ndarray, shape (N, A)
        Interval ends (:func:`predictive_interval`).
    observed_fraction : numpy.ndarray, shape (N, A)
        Observed vote fractions (counts over the question's votes).
    asked_mask : numpy.ndarray of bool, shape (N, A)
        Answers to count (questions with votes).

    Returns
    -------
    float
        In [0, 1]. The ends are widened by 1e-9 so that a fraction equal to an
        end counts despite rounding.

    Raises
    ------
    ValueError
        If the shapes differ, or no answer is asked, or an asked answer has a
        NaN interval.

    Examples
    --------
    >>> interval_coverage(np.array([[0.2, 0.4]]), np.array([[0.6, 0.8]]),
    ...                   np.array([[0.6, 0.1]]), np.array([[True, True]]))
    0.5
    """
    lo, hi, f = (np.asarray(a, dtype=np.float64) for a in (lo, hi, observed_fraction))
    mask = np.asarray(asked_mask, dtype=bool)
    if not lo.shape == hi.shape == f.shape == mask.shape:
        raise ValueError(
            f"shapes differ: lo {lo.shape}, hi {hi.shape}, observed {f.shape}, mask {mask.shape}"
        )
    if not mask.any():
        raise ValueError("no asked answer to compute a coverage on")
    if np.isnan(lo[mask]).any() or np.isnan(hi[mask]).any():
        raise ValueError("an asked answer has a NaN interval (no votes on its question?)")
    inside = (f >= lo - 1e-9) & (f <= hi + 1e-9)
    return float(inside[mask].mean())
