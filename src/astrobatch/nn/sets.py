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
    "SetTransformer",
    "SummaryStats",
    "build_set_model",
    "count_parameters",
    "masked_summary_statistics",
    "mlp",
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
) -> nn.Module:
    """Build the set model called ``name`` with its hyper-parameters.

    The keyword arguments are the fields of a study's set-model params (e.g.
    ``build_set_model(in_features=6, **params.model.model_dump())``); those
    that do not apply to the chosen model are ignored.

    Parameters
    ----------
    name : {"summary_stats", "deep_sets", "set_transformer"}
        :class:`SummaryStats`, :class:`DeepSets` or :class:`SetTransformer`.
    in_features : int
        Features per element, F.
    out_features : int
        Outputs per set.
    hidden_dim : int
        Width of the hidden layers (all models).
    phi_layers : int
        Layers of the per-element MLP (``deep_sets``).
    rho_layers : int
        Layers of the MLP after pooling (all models).
    pooling : {"mean", "sum"}
        Masked pooling (``deep_sets``).
    num_heads, num_blocks, num_inducing : int
        Attention heads, SAB/ISAB blocks and inducing points (0 = SAB) of the
        ``set_transformer``.

    Returns
    -------
    torch.nn.Module
        A :class:`SummaryStats`, :class:`DeepSets` or :class:`SetTransformer`
        mapping ``(B, N, in_features)`` and a ``(B, N)`` bool mask to
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
    raise ValueError(
        f"unknown set model {name!r}; choose from 'summary_stats', 'deep_sets', 'set_transformer'"
    )


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters of ``module``.

    Examples
    --------
    >>> count_parameters(mlp(3, 8, 1, n_layers=2))
    41
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
