"""Mask-aware, permutation-invariant models of sets (padding + boolean mask).

Every model maps a padded batch of sets to one vector per set::

    forward(x, mask) -> y
    x    : (B, N, F) float   elements, padded to a common length N
    mask : (B, N)    bool    True = real element, False = padding
    y    : (B, out_features)

Guarantees shared by all models (and tested in ``tests/nn/test_sets.py``):

- *permutation invariance*: reordering the real elements of a set does not
  change its output (up to float rounding);
- *padding invariance*: padded slots never influence the output, whatever they
  contain (zeros, garbage, ``inf`` or ``NaN``) and however many there are;
- *empty sets* (no real element, or ``N == 0``) give finite outputs and finite
  gradients; they all map to the same output, the model's "no data" answer.

Models
------
:class:`SummaryStats`
    Per-feature masked statistics (mean, median, min, max, std, quartiles,
    plus the set size) followed by an MLP: a strong, cheap baseline.
:class:`DeepSets`
    phi MLP per element, masked mean or sum pooling, rho MLP
    (Zaheer et al. 2017, "Deep Sets", arXiv:1703.06114).
:class:`SetTransformer`
    Self-attention blocks (SAB, or ISAB with inducing points for large sets),
    pooling by multi-head attention (PMA, one seed) and an MLP
    (Lee et al. 2019, "Set Transformer", arXiv:1810.00825).
:class:`JanossyPooling`
    k-ary Janossy pooling: phi MLP on sampled k-tuples of elements
    (concatenated), mean over tuples, rho MLP (Murphy et al. 2019, "Janossy
    Pooling", arXiv:1811.01900). Sampled, so permutation invariant in
    distribution in training; deterministic and exactly permutation invariant
    in eval mode (tuples drawn in a canonical order, see the class).

:func:`build_set_model` builds one of them by name from plain keyword
arguments (a study passes its params' fields, ``**params.model.model_dump()``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ISAB",
    "MAB",
    "PMA",
    "SAB",
    "DeepSets",
    "JanossyPooling",
    "SetTransformer",
    "SummaryStats",
    "build_set_model",
    "count_parameters",
    "masked_summary_statistics",
    "mlp",
    "sample_tuples",
]

#: Names of the per-feature statistics of :func:`masked_summary_statistics`, in column order.
SUMMARY_STATISTICS: tuple[str, ...] = ("mean", "median", "min", "max", "std", "q25", "q75")
_QUANTILES: dict[str, float] = {"median": 0.5, "min": 0.0, "max": 1.0, "q25": 0.25, "q75": 0.75}


# --------------------------------------------------------------------------- helpers
def mlp(in_features: int, hidden_dim: int, out_features: int, n_layers: int) -> nn.Sequential:
    """A multi-layer perceptron: ``n_layers`` Linear layers with GELU in between.

    Parameters
    ----------
    in_features : int
        Width of the input (last dimension).
    hidden_dim : int
        Width of every hidden layer.
    out_features : int
        Width of the output.
    n_layers : int
        Number of ``nn.Linear`` layers (>= 1). ``1`` gives a single linear map;
        the last layer is never followed by an activation.

    Returns
    -------
    torch.nn.Sequential
        Maps ``(..., in_features)`` to ``(..., out_features)``.

    Raises
    ------
    ValueError
        If ``n_layers < 1`` or a width is not positive.

    Examples
    --------
    >>> net = mlp(3, 8, 1, n_layers=2)
    >>> net
    Sequential(
      (0): Linear(in_features=3, out_features=8, bias=True)
      (1): GELU(approximate='none')
      (2): Linear(in_features=8, out_features=1, bias=True)
    )
    >>> tuple(net(torch.zeros(5, 3)).shape)
    (5, 1)
    """
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    if min(in_features, hidden_dim, out_features) < 1:
        raise ValueError(
            "widths must be >= 1, got "
            f"in_features={in_features}, hidden_dim={hidden_dim}, out_features={out_features}"
        )
    widths = [in_features] + [hidden_dim] * (n_layers - 1) + [out_features]
    layers: list[nn.Module] = []
    for i in range(n_layers):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < n_layers - 1:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


def _check_sets(x: Tensor, mask: Tensor, in_features: int | None = None) -> tuple[Tensor, Tensor]:
    """Validate a padded batch once and make padded slots harmless.

    Returns ``x`` with padded slots set to 0 (so that ``inf``/``NaN`` garbage
    never reaches an arithmetic operation, not even one whose result is then
    masked out) and the mask. A batch with ``N == 0`` is given one padded slot,
    so that every model sees at least one (masked) element.
    """
    if not isinstance(x, Tensor) or not isinstance(mask, Tensor):
        raise ValueError(
            f"x and mask must be torch.Tensor, got {type(x).__name__} and {type(mask).__name__}"
        )
    if x.ndim != 3:
        raise ValueError(f"x must have shape (B, N, F), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if mask.dtype != torch.bool:
        raise ValueError(
            f"mask must be a bool tensor (True = real element), got dtype {mask.dtype}"
        )
    if mask.shape != x.shape[:2]:
        raise ValueError(
            f"mask must have shape (B, N) = {tuple(x.shape[:2])} to match x {tuple(x.shape)}, "
            f"got {tuple(mask.shape)}"
        )
    if in_features is not None and x.shape[-1] != in_features:
        raise ValueError(
            f"x must have {in_features} features (last dimension), got shape {tuple(x.shape)}"
        )
    if x.shape[1] == 0:
        x = x.new_zeros(x.shape[0], 1, x.shape[2])
        mask = mask.new_zeros(mask.shape[0], 1)
    x = torch.where(mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return x, mask


# --------------------------------------------------------------------------- summary statistics
def masked_summary_statistics(x: Tensor, mask: Tensor) -> Tensor:
    """Per-feature statistics over the real elements of each set, plus the set size.

    Conventions (chosen to equal numpy's defaults): ``std`` is the population
    standard deviation (``ddof=0``, as ``numpy.std``); the median and quartiles
    use linear interpolation between order statistics (``numpy.quantile``'s
    default ``method="linear"``), ``min``/``max`` are the 0 and 1 quantiles.
    Only the boolean mask decides what is real: padded values never matter,
    even ``inf`` or ``NaN``. A set with no real element gives all zeros; a set
    with one element gives ``std = 0`` and all quantiles equal to the element.
    Gradients are finite everywhere (``std`` has a zero gradient where the
    variance is 0, instead of the infinite gradient of ``sqrt`` at 0).

    Parameters
    ----------
    x : torch.Tensor, shape (B, N, F), float
        Elements of B sets padded to length N.
    mask : torch.Tensor, shape (B, N), bool
        True where the element is real.

    Returns
    -------
    torch.Tensor, shape (B, 1 + 7 F), dtype of ``x``
        Column 0 is ``log1p(count)`` (count = number of real elements); then,
        feature by feature, the 7 statistics of :data:`SUMMARY_STATISTICS`
        ``(mean, median, min, max, std, q25, q75)``: column ``1 + 7 f + k`` is
        statistic ``k`` of feature ``f``.

    Raises
    ------
    ValueError
        If the shapes or dtypes are not as above.

    Examples
    --------
    >>> x = torch.tensor([[[1.0], [2.0], [4.0], [float("nan")]]])
    >>> mask = torch.tensor([[True, True, True, False]])
    >>> s = masked_summary_statistics(x, mask)
    >>> s.shape
    torch.Size([1, 8])
    >>> [round(v, 4) for v in s[0].tolist()]  # log1p(3), mean, median, min, max, std, q25, q75
    [1.3863, 2.3333, 2.0, 1.0, 4.0, 1.2472, 1.5, 3.0]
    """
    x, mask = _check_sets(x, mask)
    B, N, nf = x.shape
    m = mask.unsqueeze(-1)  # (B, N, 1)
    count = mask.sum(dim=1)  # (B,) int64
    denom = count.clamp_min(1).to(x.dtype).view(B, 1)

    mean = x.sum(dim=1) / denom  # padded slots are 0 already
    dev = torch.where(m, x - mean.unsqueeze(1), torch.zeros((), dtype=x.dtype, device=x.device))
    var = (dev * dev).sum(dim=1) / denom
    tiny = torch.finfo(x.dtype).tiny
    std = torch.where(var > tiny, var.clamp_min(tiny).sqrt(), torch.zeros_like(var))

    # Order statistics: padded slots sort last (+inf), then are zeroed so that
    # nothing infinite enters the interpolation (finite values and gradients).
    inf = torch.full((), float("inf"), dtype=x.dtype, device=x.device)
    xs = torch.where(m, x, inf).sort(dim=1).values
    real_sorted = torch.arange(N, device=x.device).view(1, N) < count.view(B, 1)
    xs = torch.where(real_sorted.unsqueeze(-1), xs, torch.zeros((), dtype=x.dtype, device=x.device))
    last = (count - 1).clamp_min(0)  # index of the largest real element, (B,)

    def quantile(q: float) -> Tensor:
        pos = q * last.to(x.dtype)  # (B,)
        lo = pos.floor().long().clamp(max=N - 1)
        hi = torch.minimum(lo + 1, last)
        frac = (pos - lo.to(x.dtype)).view(B, 1)
        x_lo = xs.gather(1, lo.view(B, 1, 1).expand(B, 1, nf)).squeeze(1)
        x_hi = xs.gather(1, hi.view(B, 1, 1).expand(B, 1, nf)).squeeze(1)
        return x_lo + frac * (x_hi - x_lo)

    stats = {"mean": mean, "std": std}
    stats.update({name: quantile(q) for name, q in _QUANTILES.items()})
    per_feature = torch.stack([stats[name] for name in SUMMARY_STATISTICS], dim=-1)  # (B, F, 7)
    log_count = torch.log1p(count.to(x.dtype)).view(B, 1)
    return torch.cat([log_count, per_feature.reshape(B, nf * len(SUMMARY_STATISTICS))], dim=1)


class SummaryStats(nn.Module):
    """MLP on masked per-feature summary statistics of the set.

    ``y = MLP(masked_summary_statistics(x, mask))``: the statistics are
    ``log1p(count)`` and, per feature, mean, median, min, max, std (ddof=0),
    25% and 75% quantiles over the real elements (see
    :func:`masked_summary_statistics`). A baseline that is permutation
    invariant by construction.

    Parameters
    ----------
    in_features : int
        Features per element, F.
    hidden_dim : int
        Width of the MLP's hidden layers.
    rho_layers : int
        Linear layers of the MLP (>= 1).
    out_features : int
        Outputs per set.

    Shape
    -----
    - x: ``(B, N, in_features)``, float32
    - mask: ``(B, N)``, bool, True = real element
    - output: ``(B, out_features)``, float32

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> model = SummaryStats(in_features=3, hidden_dim=16)
    >>> x, mask = torch.randn(2, 5, 3), torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]]).bool()
    >>> model(x, mask).shape
    torch.Size([2, 1])
    """

    def __init__(
        self, in_features: int, hidden_dim: int = 64, rho_layers: int = 2, out_features: int = 1
    ):
        super().__init__()
        self.in_features = in_features
        self.rho = mlp(
            1 + len(SUMMARY_STATISTICS) * in_features, hidden_dim, out_features, rho_layers
        )

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """Predictions, ``(B, out_features)``; see the class docstring for shapes."""
        _check_sets(x, mask, self.in_features)
        return self.rho(masked_summary_statistics(x, mask))


# --------------------------------------------------------------------------- deep sets
class DeepSets(nn.Module):
    """Deep Sets: ``rho(pool_{i real} phi(x_i))`` (Zaheer et al. 2017, arXiv:1703.06114).

    phi is an MLP applied to every element, pooling is a masked mean (the
    average over real elements; 0 for an empty set) or a masked sum, rho is an
    MLP on the pooled vector. Mean pooling forgets the set size; sum pooling
    keeps it (and is the form of the paper's theorem).

    Parameters
    ----------
    in_features : int
        Features per element, F.
    hidden_dim : int
        Width of phi's and rho's hidden layers and of the pooled representation.
    phi_layers : int
        Linear layers of phi (>= 1).
    rho_layers : int
        Linear layers of rho (>= 1).
    pooling : {"mean", "sum"}
        Masked pooling over the real elements.
    out_features : int
        Outputs per set.

    Shape
    -----
    - x: ``(B, N, in_features)``, float32
    - mask: ``(B, N)``, bool, True = real element
    - output: ``(B, out_features)``, float32

    Raises
    ------
    ValueError
        On an unknown ``pooling``.

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> model = DeepSets(in_features=3, hidden_dim=16, pooling="sum")
    >>> x, mask = torch.randn(2, 5, 3), torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]]).bool()
    >>> y = model(x, mask)
    >>> y.shape, bool(y.isfinite().all())
    (torch.Size([2, 1]), True)
    """

    def __init__(
        self,
        in_features: int,
        hidden_dim: int = 64,
        phi_layers: int = 2,
        rho_layers: int = 2,
        pooling: str = "mean",
        out_features: int = 1,
    ):
        super().__init__()
        if pooling not in ("mean", "sum"):
            raise ValueError(f"pooling must be 'mean' or 'sum', got {pooling!r}")
        self.in_features = in_features
        self.pooling = pooling
        self.phi = mlp(in_features, hidden_dim, hidden_dim, phi_layers)
        self.rho = mlp(hidden_dim, hidden_dim, out_features, rho_layers)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """Predictions, ``(B, out_features)``; see the class docstring for shapes."""
        x, mask = _check_sets(x, mask, self.in_features)
        h = self.phi(x)  # (B, N, H)
        h = torch.where(mask.unsqueeze(-1), h, torch.zeros((), dtype=h.dtype, device=h.device))
        pooled = h.sum(dim=1)
        if self.pooling == "mean":
            pooled = pooled / mask.sum(dim=1, keepdim=True).clamp_min(1).to(h.dtype)
        return self.rho(pooled)


# --------------------------------------------------------------------------- set transformer
class _MultiheadAttention(nn.Module):
    """Multi-head scaled dot-product attention with a key padding mask, safe for empty sets.

    Queries whose set has no real key get an attention output of exactly 0
    (instead of the NaN of a softmax over nothing); to keep the softmax finite
    in that case (values and gradients) those sets attend to all (finite,
    zeroed-input) keys, and the result is then discarded.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def _split(self, t: Tensor) -> Tensor:
        B, L, D = t.shape
        return t.view(B, L, self.num_heads, D // self.num_heads).transpose(1, 2)

    def forward(self, q: Tensor, kv: Tensor, key_mask: Tensor | None = None) -> Tensor:
        B, Lq, D = q.shape
        qh, kh, vh = (
            self._split(self.q_proj(q)),
            self._split(self.k_proj(kv)),
            self._split(self.v_proj(kv)),
        )
        attn_mask = has_key = None
        if key_mask is not None:
            has_key = key_mask.any(dim=1)  # (B,)
            safe = key_mask | ~has_key.unsqueeze(1)  # empty sets: attend to all, result dropped
            attn_mask = safe.view(B, 1, 1, -1)
        o = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=attn_mask)
        o = self.out_proj(o.transpose(1, 2).reshape(B, Lq, D))
        if has_key is not None:
            o = torch.where(
                has_key.view(B, 1, 1), o, torch.zeros((), dtype=o.dtype, device=o.device)
            )
        return o


class MAB(nn.Module):
    """Multihead Attention Block ``MAB(X, Y)`` (Lee et al. 2019, Set Transformer, arXiv:1810.00825).

    Pre-LayerNorm form::

        H   = X + Multihead(LN(X), LN(Y), LN(Y))      # keys/values masked by key_mask
        out = H + rFF(LN(H))

    Divergences from the paper (eq. 6-7), marked on purpose: LayerNorm is applied
    *before* attention and rFF (pre-LN, more stable to train without warm-up)
    instead of after the residual sums; rFF is Linear-GELU-Linear of width
    ``dim``; multi-head attention uses the standard ``1/sqrt(dim / num_heads)``
    scaling and an output projection. Queries of a set with no real key
    receive an attention term of 0 (so ``out = X + rFF(LN(X))``), which keeps
    empty sets finite.

    Parameters
    ----------
    dim : int
        Width of queries, keys and values.
    num_heads : int
        Attention heads; must divide ``dim``.

    Shape
    -----
    - x (queries): ``(B, Nq, dim)``
    - y (keys/values): ``(B, Nk, dim)``
    - key_mask: ``(B, Nk)``, bool, True = real key; None = all real
    - output: ``(B, Nq, dim)``

    Examples
    --------
    >>> mab = MAB(dim=8, num_heads=2)
    >>> mab(torch.randn(2, 3, 8), torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool)).shape
    torch.Size([2, 3, 8])
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = _MultiheadAttention(dim, num_heads)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = mlp(dim, dim, dim, 2)

    def forward(self, x: Tensor, y: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """``MAB(x, y)``, ``(B, Nq, dim)``; see the class docstring for shapes."""
        h = x + self.attn(self.norm_q(x), self.norm_kv(y), key_mask)
        return h + self.ff(self.norm_ff(h))


class SAB(nn.Module):
    """Set Attention Block ``SAB(X) = MAB(X, X)`` (Lee et al. 2019, arXiv:1810.00825).

    Permutation equivariant; O(N^2) in the set size. Padded elements are masked
    as keys, so they never influence real elements; their own outputs are finite
    but meaningless.

    Parameters
    ----------
    dim : int
        Width of the elements.
    num_heads : int
        Attention heads; must divide ``dim``.

    Shape
    -----
    - x: ``(B, N, dim)``
    - mask: ``(B, N)``, bool, True = real element
    - output: ``(B, N, dim)``

    Examples
    --------
    >>> SAB(dim=8, num_heads=2)(torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool)).shape
    torch.Size([2, 5, 8])
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.mab = MAB(dim, num_heads)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """``SAB(x)``, ``(B, N, dim)``."""
        return self.mab(x, x, mask)


class ISAB(nn.Module):
    """Induced Set Attention Block (Lee et al. 2019, arXiv:1810.00825).

    ``ISAB_m(X) = MAB(X, H)`` with ``H = MAB(I, X)`` and ``I`` ``m`` learned
    inducing points: permutation equivariant and O(N m) instead of O(N^2).
    The set (with its mask) is only ever used as keys of the first MAB, so
    padded elements never influence real ones.

    Parameters
    ----------
    dim : int
        Width of the elements.
    num_heads : int
        Attention heads; must divide ``dim``.
    num_inducing : int
        Number of inducing points m (>= 1).

    Shape
    -----
    - x: ``(B, N, dim)``
    - mask: ``(B, N)``, bool, True = real element
    - output: ``(B, N, dim)``

    Examples
    --------
    >>> isab = ISAB(dim=8, num_heads=2, num_inducing=4)
    >>> isab(torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool)).shape
    torch.Size([2, 5, 8])
    """

    def __init__(self, dim: int, num_heads: int, num_inducing: int):
        super().__init__()
        if num_inducing < 1:
            raise ValueError(f"num_inducing must be >= 1, got {num_inducing}")
        self.inducing = nn.Parameter(torch.empty(1, num_inducing, dim))
        nn.init.xavier_uniform_(self.inducing)
        self.mab_in = MAB(dim, num_heads)
        self.mab_out = MAB(dim, num_heads)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """``ISAB(x)``, ``(B, N, dim)``."""
        h = self.mab_in(self.inducing.expand(x.shape[0], -1, -1), x, mask)  # (B, m, dim)
        return self.mab_out(x, h)


class PMA(nn.Module):
    """Pooling by Multihead Attention, PMA (Lee et al. 2019, arXiv:1810.00825).

    ``PMA_k(Z) = MAB(S, rFF(Z))``: ``k`` learned seed vectors ``S`` attend to
    the real elements of the set (padded elements are masked as keys).
    Permutation invariant. An empty set gives the constant ``S + rFF(LN(S))`` (see :class:`MAB`).

    Parameters
    ----------
    dim : int
        Width of the elements.
    num_heads : int
        Attention heads; must divide ``dim``.
    num_seeds : int
        Number of seed vectors k (outputs per set).

    Shape
    -----
    - z: ``(B, N, dim)``
    - mask: ``(B, N)``, bool, True = real element
    - output: ``(B, num_seeds, dim)``

    Examples
    --------
    >>> pma = PMA(dim=8, num_heads=2)
    >>> pma(torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool)).shape
    torch.Size([2, 1, 8])
    """

    def __init__(self, dim: int, num_heads: int, num_seeds: int = 1):
        super().__init__()
        self.seeds = nn.Parameter(torch.empty(1, num_seeds, dim))
        nn.init.xavier_uniform_(self.seeds)
        self.ff_in = mlp(dim, dim, dim, 2)
        self.mab = MAB(dim, num_heads)

    def forward(self, z: Tensor, mask: Tensor) -> Tensor:
        """``PMA(z)``, ``(B, num_seeds, dim)``."""
        return self.mab(self.seeds.expand(z.shape[0], -1, -1), self.ff_in(z), mask)


class SetTransformer(nn.Module):
    """Set Transformer (Lee et al. 2019, "Set Transformer", arXiv:1810.00825).

    ``Linear -> num_blocks x SAB (or ISAB_m if num_inducing = m > 0) -> PMA_1 ->
    LayerNorm -> MLP``. Padding is handled with key padding masks: padded
    elements are never keys, so they influence neither real elements nor the
    pooled output. Divergences from the paper: pre-LayerNorm blocks (see
    :class:`MAB`), a final LayerNorm after pooling (usual with pre-LN), a
    GELU MLP decoder instead of the paper's SAB + rFF decoder, and a defined,
    finite output for empty sets (attention to no key contributes 0).

    Parameters
    ----------
    in_features : int
        Features per element, F.
    hidden_dim : int
        Width of the attention blocks and of the MLP; divisible by ``num_heads``.
    num_heads : int
        Attention heads.
    num_blocks : int
        Number of SAB/ISAB blocks (>= 1).
    num_inducing : int
        0 for SAB blocks (O(N^2)); m > 0 for ISAB blocks with m inducing points.
    rho_layers : int
        Linear layers of the MLP after pooling (>= 1).
    out_features : int
        Outputs per set.

    Shape
    -----
    - x: ``(B, N, in_features)``, float32
    - mask: ``(B, N)``, bool, True = real element
    - output: ``(B, out_features)``, float32

    Raises
    ------
    ValueError
        If ``hidden_dim`` is not divisible by ``num_heads``, or a count is out of range.

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> model = SetTransformer(in_features=3, hidden_dim=16, num_heads=2, num_inducing=4)
    >>> x, mask = torch.randn(2, 5, 3), torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]]).bool()
    >>> y = model(x, mask)
    >>> y.shape, bool(y.isfinite().all())
    (torch.Size([2, 1]), True)
    """

    def __init__(
        self,
        in_features: int,
        hidden_dim: int = 64,
        num_heads: int = 4,
        num_blocks: int = 2,
        num_inducing: int = 0,
        rho_layers: int = 2,
        out_features: int = 1,
    ):
        super().__init__()
        if hidden_dim % num_heads:
            raise ValueError(
                f"hidden_dim ({hidden_dim}) must be divisible by num_heads ({num_heads})"
            )
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        if num_inducing < 0:
            raise ValueError(f"num_inducing must be >= 0, got {num_inducing}")
        self.in_features = in_features
        self.embed = nn.Linear(in_features, hidden_dim)
        self.blocks = nn.ModuleList(
            ISAB(hidden_dim, num_heads, num_inducing)
            if num_inducing
            else SAB(hidden_dim, num_heads)
            for _ in range(num_blocks)
        )
        self.pool = PMA(hidden_dim, num_heads, num_seeds=1)
        self.norm = nn.LayerNorm(hidden_dim)
        self.rho = mlp(hidden_dim, hidden_dim, out_features, rho_layers)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """Predictions, ``(B, out_features)``; see the class docstring for shapes."""
        x, mask = _check_sets(x, mask, self.in_features)
        h = self.embed(x)
        for block in self.blocks:
            h = block(h, mask)
        pooled = self.pool(h, mask).squeeze(1)  # (B, hidden_dim)
        return self.rho(self.norm(pooled))


# --------------------------------------------------------------------------- janossy pooling
_MASK32 = 0xFFFFFFFF


def _hash32(v: Tensor) -> Tensor:
    """A 32-bit integer mixing function on int64 tensors (values in ``[0, 2**32)``).

    The "lowbias" finaliser ``v ^= v >> 16; v *= 0x45d9f3b`` (twice) of Chris
    Wellons' hash-prospector. Every product stays below ``2**59``, so int64
    arithmetic never overflows and the result is the same on every device.
    """
    v = v & _MASK32
    v = (((v >> 16) ^ v) * 0x45D9F3B) & _MASK32
    v = (((v >> 16) ^ v) * 0x45D9F3B) & _MASK32
    return (v >> 16) ^ v


def _counter_keys(seed: int, stream: int, t: Tensor, j: Tensor) -> Tensor:
    """Pseudo-random 32-bit keys ``(len(t), len(j))``, a pure function of (seed, stream, t, j).

    A counter-based generator: unlike ``torch.rand`` with a generator, the key of
    (tuple ``t``, position ``j``) does not depend on the batch size or the padded
    length, which is what makes eval outputs padding and batch invariant.
    """
    base = _hash32(torch.full((), (seed & _MASK32) ^ (0x9E3779B9 * (stream + 1) & _MASK32)))
    base = base.to(t.device)
    ht = _hash32(base ^ _hash32(t + 0x632BE5AB))  # (T,)
    return _hash32(ht.view(-1, 1) ^ _hash32(j + 0x85EBCA6B).view(1, -1))


def _canonical_order(x: Tensor, mask: Tensor, projection: Tensor) -> Tensor:
    """Permutation-invariant order of each set: real elements first, in a canonical order.

    Elements are sorted lexicographically by ``(is padding, x @ projection,
    x[..., 0], ..., x[..., F-1])`` with stable sorts (least significant key
    first). Two elements tie on every key only if their features are equal,
    so the *sequence of features* in canonical order depends only on the set,
    not on how its elements are ordered or padded. The projection is evaluated
    as an explicit elementwise sum (not a matmul), so its value for a given
    row is bit-identical wherever the row sits in the batch.

    Returns
    -------
    torch.Tensor, shape (B, N), int64
        ``order[b, j]`` is the index (into ``x[b]``) of canonical position ``j``;
        positions ``j < n_b`` are the real elements.
    """
    B, N, nf = x.shape
    proj = torch.zeros(B, N, dtype=x.dtype, device=x.device)
    w = projection.to(x.dtype)
    for f in range(nf):  # a loop over features (not over sets): fixed summation order
        proj = proj + x[..., f] * w[f]
    keys = [(~mask).to(x.dtype), proj] + [x[..., f] for f in range(nf)]
    order = torch.arange(N, device=x.device).expand(B, N)
    for key in reversed(keys):
        step = key.gather(1, order).sort(dim=1, stable=True).indices
        order = order.gather(1, step)
    return order


def sample_tuples(
    x: Tensor,
    mask: Tensor,
    k: int,
    n_tuples: int,
    *,
    deterministic: bool,
    seed: int = 0,
    projection: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Indices of ``n_tuples`` sampled k-tuples of real elements per set, and their weights.

    The tuple sampler of :class:`JanossyPooling`, vectorised over the batch (no
    Python loop over sets). ``x`` and ``mask`` must already be validated
    (padded slots zeroed, ``N >= 1``), as :class:`JanossyPooling` does.

    *Random* (``deterministic=False``, training): every tuple is an
    independent, uniformly distributed ordered k-tuple of distinct real
    elements: the first k of the argsort of i.i.d. ``U(0, 1)`` keys (padded
    slots get the key 2, so they sort last), drawn from torch's global RNG.
    Weights are ``1 / n_tuples``.

    *Deterministic* (``deterministic=True``, evaluation): the elements are put
    in a canonical, permutation-invariant order (see :func:`_canonical_order`;
    needs ``projection``), then tuples are drawn in that order from a
    counter-based hash generator keyed by (seed, tuple index, canonical
    position), so the result depends only on the set's contents. The first
    slot is *stratified*: tuple ``t`` starts with element ``pi[t mod n]`` of a
    pseudo-random permutation ``pi`` of the n real elements, and the other
    ``k - 1`` slots are distinct elements drawn uniformly from the rest. Each
    tuple is weighted ``1 / (min(n, T) c)``, where ``c`` is how many tuples
    share its first element, so the weighted mean is an average over the
    first-slot elements of the per-element tuple means: an unbiased estimate
    of the k-ary Janossy average with lower variance than plain sampling, and
    for ``k = 1`` with ``n_tuples >= n`` exactly the mean over the elements.

    Sets with ``n < k`` real elements (n >= 1): a tuple holds all n elements
    in a random order, then repeats them cyclically (slot ``s`` holds the
    element of slot ``s mod n``), so multiplicities differ by at most one.
    Empty sets get tuples of (zeroed) padded slots; callers discard them.

    Parameters
    ----------
    x : torch.Tensor, shape (B, N, F), float
        Validated padded batch (padded slots are 0), ``N >= 1``.
    mask : torch.Tensor, shape (B, N), bool
        True = real element.
    k : int
        Tuple length (>= 1).
    n_tuples : int
        Tuples per set, T (>= 1).
    deterministic : bool
        Canonical, seeded draws (eval) instead of random ones (training).
    seed : int
        Seed of the deterministic draws.
    projection : torch.Tensor, shape (F,), optional
        Sort key of the canonical order; required if ``deterministic``.

    Returns
    -------
    index : torch.Tensor, shape (B, T, k), int64
        ``x[b, index[b, t, s]]`` is slot ``s`` of tuple ``t`` of set ``b``.
    weights : torch.Tensor, shape (B, T), dtype of ``x``
        Non-negative, summing to 1 over ``T`` for every set.

    Examples
    --------
    >>> x, mask = torch.randn(2, 4, 3), torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]]).bool()
    >>> index, weights = sample_tuples(x, mask, k=2, n_tuples=5, deterministic=False)
    >>> index.shape, bool((index[0] < 3).all()), bool((index[0, :, 0] != index[0, :, 1]).all())
    (torch.Size([2, 5, 2]), True, True)
    >>> index[1].unique().tolist()  # one real element: the tuple repeats it
    [0]
    """
    B, N, _ = x.shape
    dev = x.device
    n = mask.sum(dim=1)  # (B,)
    n1 = n.clamp_min(1)
    kk = min(k, N)
    if not deterministic:
        keys = torch.rand(B, n_tuples, N, device=dev)
        keys = keys.masked_fill(~mask.unsqueeze(1), 2.0)
        pos = keys.topk(kk, dim=2, largest=False, sorted=True).indices  # (B, T, kk), into x
        weights = torch.full((B, n_tuples), 1.0 / n_tuples, dtype=x.dtype, device=dev)
        order = None
    else:
        if projection is None:
            raise ValueError("deterministic sampling needs the canonical-order projection")
        order = _canonical_order(x, mask, projection)
        j = torch.arange(N, device=dev)
        t = torch.arange(n_tuples, device=dev)
        valid = j.view(1, N) < n.view(B, 1)  # canonical positions of real elements
        bits = max(1, (N - 1).bit_length())  # keys (hash << bits) | j are distinct per row
        big = 1 << 62
        # first slots: a pseudo-random permutation pi of the real positions, cycled
        key0 = (_counter_keys(seed, 0, t[:1], j)[0] << bits) | j  # (N,)
        pi = torch.where(valid, key0.view(1, N), big + j).argsort(dim=1)  # (B, N)
        i = t.view(1, -1) % n1.view(B, 1)  # (B, T)
        first = pi.gather(1, i)  # (B, T)
        # other slots: distinct uniformly drawn real positions, the first slot forced first
        key = (_counter_keys(seed, 1, t, j) << bits) | j  # (T, N)
        key = torch.where(valid.unsqueeze(1), key.unsqueeze(0), big + j)  # (B, T, N)
        key = key.scatter(2, first.unsqueeze(-1), -1)
        pos = key.topk(kk, dim=2, largest=False, sorted=True).indices  # canonical positions
        count = (n_tuples // n1).view(B, 1) + (i < (n_tuples % n1).view(B, 1)).long()
        m = n1.clamp_max(n_tuples).view(B, 1)
        weights = 1.0 / (m * count).to(x.dtype)
    slot = torch.arange(k, device=dev).view(1, 1, k) % n1.view(B, 1, 1)  # cyclic fill if n < k
    pos = pos.gather(2, slot.expand(B, n_tuples, k))
    if order is not None:
        pos = order.gather(1, pos.reshape(B, n_tuples * k)).view(B, n_tuples, k)
    return pos, weights


class JanossyPooling(nn.Module):
    """k-ary Janossy pooling with sampled tuples (Murphy et al. 2019, arXiv:1811.01900).

    ``y = rho( mean_{tuples t} phi(x_{t_1} || ... || x_{t_k}) )``: phi is an
    MLP on the concatenated features (``k F`` inputs) of an ordered k-tuple of
    distinct real elements, the mean runs over sampled tuples, rho is an MLP on
    the pooled vector. The exact k-ary Janossy average runs over *all*
    ordered k-tuples (eq. 5 of the paper with ``f`` reading the first k
    elements of each permutation); it is estimated by sampling:

    - training (``model.train()``): ``n_tuples_train`` independent uniform
      ordered k-tuples per set and per forward, from torch's global RNG (the
      paper's pi-SGD: an unbiased estimate of the Janossy average, fresh each
      step, so seeding torch seeds it);
    - evaluation (``model.eval()``): ``n_tuples_eval`` tuples drawn
      deterministically, in a canonical order of the elements, with a
      stratified first slot and weights (see :func:`sample_tuples`).

    Invariance, precisely. A sampled estimate is permutation invariant *in
    distribution* (hence its expectation is). In training that is all there
    is: two forwards differ even on the same input. In evaluation the output
    is *exactly* permutation invariant (up to float rounding, not up to
    sampling noise): before sampling, the elements are sorted by a
    permutation-invariant key (a fixed random projection of the features,
    ties broken by the features themselves; the projection is a buffer drawn
    once from a fixed seed and saved with the model), and the tuples are
    chosen by canonical position with a counter-based hash generator seeded by
    ``eval_seed``. Two orderings of a set therefore give the same tuples of
    feature vectors. Eval outputs are also independent of the padded length
    and of the other sets in the batch; the tuples chosen use integer and
    elementwise arithmetic only, so they should be the same on CPU and GPU
    (outputs then agree to float rounding; checked on CPU only so far).
    With ``k = 1`` and ``n_tuples_eval >= n`` the eval output equals a Deep
    Sets mean-pooling model with the same phi and rho.

    Sets smaller than k (``1 <= n < k``): each tuple holds all n elements in a
    random order and repeats them cyclically to length k (sampling with
    replacement would repeat some elements more than others). Empty sets give
    ``rho(0)`` (pooled vector 0, like :class:`DeepSets`), the shared "no data"
    output, with finite values and gradients.

    Divergences from the paper, on purpose: the deterministic, canonical
    eval sampling (the paper averages over freshly sampled permutations at
    test time); the cyclic fill for ``n < k`` (the paper assumes ``n >= k``);
    the defined output for empty sets; the optional set-size input of rho
    (``count_feature``: the mean over tuples forgets the set size, which a
    richness regression needs).

    Parameters
    ----------
    in_features : int
        Features per element, F.
    hidden_dim : int
        Width of phi's and rho's hidden layers and of the pooled representation.
    k : int
        Tuple length (>= 1); the paper's k. ``k = 1`` is Deep Sets with mean
        pooling; cost and expressiveness grow with k.
    n_tuples_train : int
        Tuples sampled per set and forward in training (>= 1).
    n_tuples_eval : int
        Tuples per set in evaluation (>= 1).
    phi_layers : int
        Linear layers of phi (>= 1).
    rho_layers : int
        Linear layers of rho (>= 1).
    out_features : int
        Outputs per set.
    count_feature : bool
        Also give rho ``log1p(n)``, n the number of real elements (default False:
        the paper's model).
    eval_seed : int
        Seed of the deterministic eval tuples.

    Shape
    -----
    - x: ``(B, N, in_features)``, float32
    - mask: ``(B, N)``, bool, True = real element
    - output: ``(B, out_features)``, float32

    Memory and time grow as ``B T k F`` for the tuples and ``B T N`` for the
    sampling keys (T the number of tuples).

    Raises
    ------
    ValueError
        If ``k``, ``n_tuples_train`` or ``n_tuples_eval`` is below 1 (and on
        malformed input, as every set model).

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> model = JanossyPooling(in_features=3, hidden_dim=16, k=2, n_tuples_eval=64).eval()
    >>> x, mask = torch.randn(2, 5, 3), torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]]).bool()
    >>> y = model(x, mask)
    >>> y.shape, bool(y.isfinite().all())
    (torch.Size([2, 1]), True)
    >>> perm = torch.tensor([2, 0, 1, 3, 4])  # reorder the real elements
    >>> torch.allclose(model(x[:, perm], mask[:, perm]), y)
    True
    """

    def __init__(
        self,
        in_features: int,
        hidden_dim: int = 64,
        k: int = 2,
        n_tuples_train: int = 32,
        n_tuples_eval: int = 256,
        phi_layers: int = 2,
        rho_layers: int = 2,
        out_features: int = 1,
        count_feature: bool = False,
        eval_seed: int = 0,
    ):
        super().__init__()
        for name, value in (
            ("k", k),
            ("n_tuples_train", n_tuples_train),
            ("n_tuples_eval", n_tuples_eval),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.in_features = in_features
        self.k = k
        self.n_tuples_train = n_tuples_train
        self.n_tuples_eval = n_tuples_eval
        self.count_feature = count_feature
        self.eval_seed = eval_seed
        self.phi = mlp(k * in_features, hidden_dim, hidden_dim, phi_layers)
        self.rho = mlp(hidden_dim + int(count_feature), hidden_dim, out_features, rho_layers)
        g = torch.Generator().manual_seed(0x1A05)  # fixed: the canonical order is not learned
        self.register_buffer("sort_projection", torch.randn(in_features, generator=g))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """Predictions, ``(B, out_features)``; see the class docstring for shapes."""
        x, mask = _check_sets(x, mask, self.in_features)
        B, _, nf = x.shape
        T = self.n_tuples_train if self.training else self.n_tuples_eval
        index, weights = sample_tuples(
            x,
            mask,
            self.k,
            T,
            deterministic=not self.training,
            seed=self.eval_seed,
            projection=self.sort_projection,
        )
        flat = index.reshape(B, T * self.k, 1).expand(B, T * self.k, nf)
        tuples = x.gather(1, flat).reshape(B, T, self.k * nf)
        h = self.phi(tuples)  # (B, T, H)
        pooled = (h * weights.unsqueeze(-1).to(h.dtype)).sum(dim=1)
        n = mask.sum(dim=1, keepdim=True)
        pooled = torch.where(n > 0, pooled, torch.zeros((), dtype=h.dtype, device=h.device))
        if self.count_feature:
            pooled = torch.cat([pooled, torch.log1p(n.to(pooled.dtype))], dim=1)
        return self.rho(pooled)


# --------------------------------------------------------------------------- factory
def build_set_model(
    name: str,
    in_features: int,
    out_features: int = 1,
    *,
    hidden_dim: int = 64,
    phi_layers: int = 2,
    rho_layers: int = 2,
    pooling: str = "mean",
    num_heads: int = 4,
    num_blocks: int = 2,
    num_inducing: int = 0,
    janossy_k: int = 2,
    n_tuples_train: int = 32,
    n_tuples_eval: int = 256,
    janossy_count_feature: bool = False,
) -> nn.Module:
    """Build the set model called ``name`` with its hyper-parameters.

    The keyword arguments are the fields of a study's set-model params (e.g.
    ``build_set_model(in_features=6, **params.model.model_dump())``); those
    that do not apply to the chosen model are ignored.

    Parameters
    ----------
    name : {"summary_stats", "deep_sets", "set_transformer", "janossy"}
        :class:`SummaryStats`, :class:`DeepSets`, :class:`SetTransformer` or
        :class:`JanossyPooling`.
    in_features : int
        Features per element, F.
    out_features : int
        Outputs per set.
    hidden_dim : int
        Width of the hidden layers (all models).
    phi_layers : int
        Layers of the per-element MLP (``deep_sets``) or per-tuple MLP (``janossy``).
    rho_layers : int
        Layers of the MLP after pooling (all models).
    pooling : {"mean", "sum"}
        Masked pooling (``deep_sets``).
    num_heads, num_blocks, num_inducing : int
        Attention heads, SAB/ISAB blocks and inducing points (0 = SAB) of the
        ``set_transformer``.
    janossy_k : int
        Tuple length k of ``janossy`` (2 for redshift, 10 for richness in
        ``cluster_finder``).
    n_tuples_train, n_tuples_eval : int
        Tuples sampled per set in training and in evaluation (``janossy``).
    janossy_count_feature : bool
        Give ``janossy``'s rho the set size ``log1p(n)`` too.

    Returns
    -------
    torch.nn.Module
        A :class:`SummaryStats`, :class:`DeepSets`, :class:`SetTransformer` or
        :class:`JanossyPooling` mapping ``(B, N, in_features)`` and a ``(B, N)`` bool mask to
        ``(B, out_features)``.

    Raises
    ------
    ValueError
        On an unknown ``name`` or ``in_features < 1`` (and the models' own
        checks, e.g. ``hidden_dim`` not divisible by ``num_heads``).

    Examples
    --------
    >>> model = build_set_model("deep_sets", in_features=6, hidden_dim=16)
    >>> x, mask = torch.zeros(4, 10, 6), torch.ones(4, 10, dtype=torch.bool)
    >>> type(model).__name__, model(x, mask).shape
    ('DeepSets', torch.Size([4, 1]))
    """
    if in_features < 1:
        raise ValueError(f"in_features must be >= 1, got {in_features}")
    if name == "summary_stats":
        return SummaryStats(in_features, hidden_dim, rho_layers, out_features)
    if name == "deep_sets":
        return DeepSets(in_features, hidden_dim, phi_layers, rho_layers, pooling, out_features)
    if name == "set_transformer":
        return SetTransformer(
            in_features, hidden_dim, num_heads, num_blocks, num_inducing, rho_layers, out_features
        )
    if name == "janossy":
        return JanossyPooling(
            in_features,
            hidden_dim,
            janossy_k,
            n_tuples_train,
            n_tuples_eval,
            phi_layers,
            rho_layers,
            out_features,
            count_feature=janossy_count_feature,
        )
    raise ValueError(
        f"unknown set model {name!r}; choose from "
        "'summary_stats', 'deep_sets', 'set_transformer', 'janossy'"
    )


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters of ``module``.

    Examples
    --------
    >>> count_parameters(mlp(3, 8, 1, n_layers=2))
    41
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
