"""Masked-reconstruction pretraining of a :class:`~astrobatch.nn.autoencoder.MaskedAutoencoder`.

The objective of the Masked Stellar Autoencoder (MSA; McKay & Fabbro 2025):
hide part of each row of scaled features, feed the rest (hidden values replaced
by a fill value, optionally flagged by mask indicators) to the autoencoder and
score the reconstruction only where a value was hidden *and* really observed.

Masking scheme (:func:`make_pretrain_mask`)
-------------------------------------------
- the whole XP block (``bp_1 .. rp_55``) of a random ``xp_ratio`` of the rows;
- every other column element-wise with probability ``m_ratio``;
- the ``force_idx`` columns always (e.g. ``PARALLAX``, to learn it from photometry).

Randomness
----------
Masks (and the optional Gaussian perturbation of inputs by their errors) are
drawn from a ``torch.Generator`` seeded from ``(seed, stage, epoch, batch_idx,
rank)`` through :class:`numpy.random.SeedSequence` (:func:`seeded_generator`):
training masks change every epoch but a run is reproducible and resumable;
validation and test masks ignore the epoch, so ``val/loss`` is computed on the
same masks every epoch and curves are comparable.

Optimisation (helpers in :mod:`astrobatch.tasks.optim`)
-------------------------------------------------------
AdamW without weight decay on biases and normalisation weights
(:func:`~astrobatch.tasks.optim.decay_param_groups`); learning rate on cosine
warm restarts (``torch.optim.lr_scheduler.CosineAnnealingWarmRestarts``,
stepped every optimiser step) with ``restart_cycles`` cycles, each
``restart_mult`` times longer than the previous, fitted to the run's total
steps; the learning rate falls to ``0.01 lr`` at the end of each cycle
(:func:`~astrobatch.tasks.optim.cosine_warm_restarts`).

Shared with other objectives: the masks, fills and perturbations, the column
check :func:`column_indices` and the weighted loss terms
:func:`reconstruction_terms` (a fine-tuning task with a multitask
reconstruction loss reuses them).

Logged: ``train/loss`` (per epoch), ``val/loss``, ``val/recon_mae_xp`` (mean
absolute error over masked, present XP coefficients, scaled units), ``lr``;
the same with ``test/`` in ``test``. Validation metrics are weighted means over
scored positions (exact over the whole split, whatever the batch size).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from astrobatch.nn.autoencoder import MaskedAutoencoder
from astrobatch.tasks.optim import cosine_warm_restarts, decay_param_groups, estimated_steps

__all__ = [
    "MaskedReconstructionTask",
    "column_indices",
    "fill_masked",
    "hidden_indicators",
    "make_pretrain_mask",
    "masked_reconstruction_loss",
    "perturb_by_errors",
    "reconstruction_error",
    "reconstruction_terms",
    "seeded_generator",
]

_STAGES = {"train": 0, "val": 1, "test": 2, "predict": 3, "eval": 4}


# --------------------------------------------------------------------------- randomness
def seeded_generator(
    seed: int, *keys: int | str, device: str | torch.device = "cpu"
) -> torch.Generator:
    """A ``torch.Generator`` seeded from a run seed and integer/str keys.

    The keys (e.g. stage, epoch, batch index, rank) are mixed with
    :class:`numpy.random.SeedSequence`, so nearby keys give independent streams.

    Parameters
    ----------
    seed : int
        The run seed.
    *keys : int or str
        Further entropy; a str must be one of ``train, val, test, predict, eval``.
    device : str or torch.device
        Device of the generator (draws happen there; the same seed gives the
        same numbers on the same device type).

    Returns
    -------
    torch.Generator

    Examples
    --------
    >>> a = torch.rand(3, generator=seeded_generator(0, "val", 7))
    >>> b = torch.rand(3, generator=seeded_generator(0, "val", 7))
    >>> bool((a == b).all())
    True
    """
    entropy = [int(seed) % 2**63]
    for k in keys:
        entropy.append(_STAGES[k] if isinstance(k, str) else int(k) % 2**63)
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    g = torch.Generator(device=device)
    g.manual_seed(int(state[0]) << 31 ^ int(state[1]))
    return g


def column_indices(idx: Sequence[int] | Tensor, n: int, name: str) -> Tensor:
    """Validate column indices of a ``(B, n)`` feature table.

    Parameters
    ----------
    idx : sequence of int or torch.Tensor, shape (k,)
        Column indices (may be empty).
    n : int
        Number of columns.
    name : str
        Name of the argument, for the error message.

    Returns
    -------
    torch.Tensor, shape (k,), int64

    Raises
    ------
    ValueError
        If ``idx`` is not one-dimensional or an index is outside ``[0, n)``.

    Examples
    --------
    >>> column_indices([0, 2], 3, "xp_idx").tolist()
    [0, 2]
    >>> column_indices([3], 3, "xp_idx")
    Traceback (most recent call last):
    ...
    ValueError: xp_idx must be column indices in [0, 3), got [3]
    """
    t = torch.as_tensor(list(idx) if not isinstance(idx, Tensor) else idx, dtype=torch.long)
    if t.ndim != 1 or (t.numel() and (t.min() < 0 or t.max() >= n)):
        raise ValueError(f"{name} must be column indices in [0, {n}), got {t.tolist()}")
    return t


# --------------------------------------------------------------------------- masking
def make_pretrain_mask(
    present: Tensor,
    xp_idx: Sequence[int] | Tensor,
    xp_ratio: float,
    m_ratio: float,
    force_idx: Sequence[int] | Tensor = (),
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw the MSA pretraining mask (McKay & Fabbro 2025).

    Each row's XP block is masked as a whole with probability ``xp_ratio``;
    each other element with probability ``m_ratio``, independently; the
    ``force_idx`` columns always. The draw does not look at ``present``; the
    result is then restricted to present values, so ``mask`` means "a real
    value hidden from the encoder" and is exactly where the loss is scored.

    Parameters
    ----------
    present : torch.Tensor, shape (B, F), bool
        True where the feature was observed (not NaN).
    xp_idx : sequence of int
        Columns of the XP block (``bp_1 .. rp_55``).
    xp_ratio : float
        Probability that a row's whole XP block is masked, in [0, 1].
    m_ratio : float
        Element-wise masking probability of the other columns, in [0, 1].
    force_idx : sequence of int
        Columns masked in every row.
    generator : torch.Generator, optional
        Source of randomness (global RNG if None). Numbers are drawn on the
        generator's device and moved to ``present.device``.

    Returns
    -------
    torch.Tensor, shape (B, F), bool, on ``present.device``
        True = masked (hidden, present).

    Raises
    ------
    ValueError
        On a wrong shape or dtype, a ratio outside [0, 1] or an index out of range.

    Examples
    --------
    >>> present = torch.ones(4, 5, dtype=torch.bool)
    >>> m = make_pretrain_mask(present, xp_idx=[2, 3], xp_ratio=1.0, m_ratio=0.0, force_idx=[0])
    >>> m.int().tolist()[0]
    [1, 0, 1, 1, 0]
    """
    if present.ndim != 2 or present.dtype != torch.bool:
        raise ValueError(
            f"present must be a (B, F) bool tensor, got {tuple(present.shape)} {present.dtype}"
        )
    for name, r in (("xp_ratio", xp_ratio), ("m_ratio", m_ratio)):
        if not 0.0 <= r <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {r}")
    B, nf = present.shape
    xp = column_indices(xp_idx, nf, "xp_idx")
    force = column_indices(force_idx, nf, "force_idx")
    dev = generator.device if generator is not None else present.device
    row_u = torch.rand(B, 1, generator=generator, device=dev)
    elem_u = torch.rand(B, nf, generator=generator, device=dev)
    is_xp = torch.zeros(nf, dtype=torch.bool, device=dev)
    is_xp[xp.to(dev)] = True
    mask = torch.where(is_xp, (row_u < xp_ratio).expand(B, nf), elem_u < m_ratio)
    mask[:, force.to(dev)] = True
    return mask.to(present.device) & present


def fill_masked(x: Tensor, mask: Tensor, fill_value: float = 0.0) -> Tensor:
    """Replace masked and missing values by ``fill_value``.

    Parameters
    ----------
    x : torch.Tensor, shape (B, F), float32
        Scaled features, NaN (or inf) = missing.
    mask : torch.Tensor, shape (B, F), bool
        True = masked.
    fill_value : float
        Value given to masked or missing entries (scaled units; 0 = the
        feature's training median after robust scaling).

    Returns
    -------
    torch.Tensor, shape (B, F), float32
        Finite wherever ``x`` was finite or masked.

    Examples
    --------
    >>> x = torch.tensor([[1.0, float("nan"), 3.0]])
    >>> fill_masked(x, torch.tensor([[True, False, False]]), fill_value=-9.0).tolist()
    [[-9.0, -9.0, 3.0]]
    """
    hidden = mask | ~torch.isfinite(x)
    return torch.where(hidden, torch.full_like(x, fill_value), x)


def hidden_indicators(x: Tensor, mask: Tensor) -> Tensor:
    """Mask-indicator channel: 1 where a value is hidden (masked or missing), else 0.

    Parameters
    ----------
    x : torch.Tensor, shape (B, F), float
        Features before filling (NaN = missing).
    mask : torch.Tensor, shape (B, F), bool

    Returns
    -------
    torch.Tensor, shape (B, F), dtype of ``x``
    """
    return (mask | ~torch.isfinite(x)).to(x.dtype)


def perturb_by_errors(
    x: Tensor, err: Tensor | None, generator: torch.Generator | None = None, scale: float = 1.0
) -> Tensor:
    """Add Gaussian noise of standard deviation ``scale * err`` to the inputs.

    Entries with a missing (NaN) or negative error are left unchanged; missing
    values stay missing. Used on the encoder's *input* only: the reconstruction
    target stays the measured value.

    Parameters
    ----------
    x : torch.Tensor, shape (B, F), float32
        Scaled features (NaN = missing).
    err : torch.Tensor, shape (B, F), float32, or None
        1-sigma errors in the same scaled units (NaN = none). None: no noise.
    generator : torch.Generator, optional
    scale : float
        Multiplier of the errors.

    Returns
    -------
    torch.Tensor, shape (B, F), float32
    """
    if err is None:
        return x
    dev = generator.device if generator is not None else x.device
    noise = torch.randn(x.shape, generator=generator, device=dev).to(x.device, x.dtype)
    sigma = torch.where(torch.isfinite(err) & (err > 0), err, torch.zeros_like(err))
    return x + scale * sigma.to(x.dtype) * noise


# --------------------------------------------------------------------------- loss
def reconstruction_terms(
    pred: Tensor,
    target: Tensor,
    mask: Tensor,
    present: Tensor | None = None,
    kind: str = "mae",
    err: Tensor | None = None,
    err_floor: float = 0.1,
) -> tuple[Tensor, Tensor]:
    """Weighted sum of per-position reconstruction losses and the sum of the weights.

    The numerator and denominator of :func:`masked_reconstruction_loss` (which
    is ``num / den``), kept apart so that a metric can average exactly over a
    whole split (weighted by ``den``) and another objective can add the loss to
    its own. Arguments as in :func:`masked_reconstruction_loss`.

    Returns
    -------
    num : torch.Tensor, shape (), float32
        ``sum_i w_i l_i`` over scored positions (scaled units, or their square).
    den : torch.Tensor, shape (), float32
        ``sum_i w_i`` (the number of scored positions when unweighted).

    Raises
    ------
    ValueError
        On an unknown ``kind`` or mismatched shapes.

    Examples
    --------
    >>> pred, target = torch.tensor([[1.0, 5.0]]), torch.tensor([[0.0, 0.0]])
    >>> num, den = reconstruction_terms(pred, target, torch.tensor([[True, True]]))
    >>> num.item(), den.item()
    (6.0, 2.0)
    """
    if kind not in ("mae", "mse"):
        raise ValueError(f"kind must be 'mae' or 'mse', got {kind!r}")
    if not (pred.shape == target.shape == mask.shape):
        raise ValueError(
            f"pred, target and mask must have the same shape (B, R), got {tuple(pred.shape)}, "
            f"{tuple(target.shape)}, {tuple(mask.shape)}"
        )
    pred, target = pred.float(), target.float()  # the loss in float32, also under mixed precision
    sel = mask & torch.isfinite(target)
    if present is not None:
        sel = sel & present
    diff = torch.where(sel, pred - torch.nan_to_num(target), torch.zeros_like(pred))
    per = diff.abs() if kind == "mae" else diff.square()
    if err is None:
        w = sel.to(pred.dtype)
    else:
        e = torch.where(torch.isfinite(err), err, torch.zeros_like(err)).to(pred.dtype)
        w = torch.where(sel, 1.0 / (e.square() + err_floor**2), torch.zeros_like(pred))
    return (w * per).sum(), w.sum()


def masked_reconstruction_loss(
    pred: Tensor,
    target: Tensor,
    mask: Tensor,
    present: Tensor | None = None,
    kind: Literal["mae", "mse"] = "mae",
    err: Tensor | None = None,
    err_floor: float = 0.1,
) -> Tensor:
    """Reconstruction loss over positions that were masked AND originally present.

    ``loss = sum_i w_i l_i / sum_i w_i`` over scored positions ``i``, with
    ``l = |pred - target|`` (``"mae"``) or ``(pred - target)^2`` (``"mse"``).
    Unweighted, ``w_i = 1``: the mean over scored positions (all positions of
    the batch pooled, so a column masked rarely is not up-weighted). With
    errors, ``w_i = 1 / (err_i^2 + err_floor^2)`` (inverse variance with a
    floor, errors and floor in scaled units): the loss stays a weighted mean in
    scaled units; a position without an error (NaN) is weighted as ``err = 0``,
    i.e. ``1 / err_floor^2``, the largest weight. Positions not scored get
    exactly zero loss and zero gradient, whatever their prediction or target.
    No scored position gives 0 (still differentiable).

    Parameters
    ----------
    pred : torch.Tensor, shape (B, R), float32
        Reconstructed scaled features ``0 .. R-1``.
    target : torch.Tensor, shape (B, R), float32
        Measured scaled features (NaN = missing).
    mask : torch.Tensor, shape (B, R), bool
        True where the input was masked.
    present : torch.Tensor, shape (B, R), bool, optional
        True where the feature was observed; default: ``isfinite(target)``
        (which is always required too).
    kind : {"mae", "mse"}
    err : torch.Tensor, shape (B, R), float32, optional
        1-sigma errors of the targets, scaled units (NaN = none).
    err_floor : float
        Floor added in quadrature to the errors, scaled units.

    Returns
    -------
    torch.Tensor, shape (), float32

    Raises
    ------
    ValueError
        On an unknown ``kind`` or mismatched shapes.

    Examples
    --------
    >>> pred = torch.tensor([[1.0, 5.0, 0.0]])
    >>> target = torch.tensor([[0.0, 0.0, float("nan")]])
    >>> mask = torch.tensor([[True, False, True]])  # only position 0 is scored
    >>> masked_reconstruction_loss(pred, target, mask).item()
    1.0
    """
    num, den = reconstruction_terms(pred, target, mask, present, kind, err, err_floor)
    return num / den.clamp_min(torch.finfo(num.dtype).tiny)


# --------------------------------------------------------------------------- task
class MaskedReconstructionTask(L.LightningModule):
    """Masked-reconstruction pretraining (McKay & Fabbro 2025) of a MaskedAutoencoder.

    Batches are dicts with ``x`` (B, F) float32 scaled features (NaN = missing)
    and ``x_err`` (B, F) float32 scaled errors (NaN = none; only read with
    ``perturb_errors`` or ``error_weighted``).

    Parameters
    ----------
    model : MaskedAutoencoder
        Saved under ``model.*`` in checkpoints (what
        :func:`astrobatch.tasks.finetune.load_pretrained_encoder` loads).
    xp_idx : sequence of int
        Feature columns of the XP block.
    recon_idx : sequence of int, optional
        Reconstructed columns; must be ``0 .. model.n_recon - 1`` (default).
    force_mask_idx : sequence of int
        Columns masked in every row.
    xp_masking_ratio, m_masking_ratio : float
        See :func:`make_pretrain_mask`.
    fill_value : float
        Value of masked and missing inputs (scaled units).
    perturb_errors : bool
        Add Gaussian noise of ``x_err`` to the encoder's inputs (training only).
    loss : {"mae", "mse"}
    error_weighted : bool
        Inverse-variance weights (see :func:`masked_reconstruction_loss`).
    err_floor : float
        Error floor of the weights, scaled units.
    lr, weight_decay : float
        AdamW peak learning rate and decoupled weight decay (none on biases/norms).
    max_epochs : int
        Fallback length of the schedule when the step count is unknown.
    restart_cycles, restart_mult : int
        Cosine warm-restart cycles and their growth factor
        (:func:`~astrobatch.tasks.optim.cosine_warm_restarts`).
    seed : int
        Seed of the masks (with stage, epoch, batch index and rank).

    Raises
    ------
    ValueError
        On a ``recon_idx`` that is not the prefix ``0 .. n_recon-1`` or an
        index out of range.
    """

    def __init__(
        self,
        model: MaskedAutoencoder,
        xp_idx: Sequence[int],
        recon_idx: Sequence[int] | None = None,
        force_mask_idx: Sequence[int] = (),
        xp_masking_ratio: float = 0.9,
        m_masking_ratio: float = 0.6,
        fill_value: float = 0.0,
        perturb_errors: bool = False,
        loss: Literal["mae", "mse"] = "mae",
        error_weighted: bool = False,
        err_floor: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
        max_epochs: int = 15,
        restart_cycles: int = 3,
        restart_mult: int = 2,
        seed: int = 0,
    ):
        super().__init__()
        nf, nr = model.n_features, model.n_recon
        if recon_idx is not None and [int(i) for i in recon_idx] != list(range(nr)):
            raise ValueError(
                f"recon_idx must be the prefix 0..{nr - 1} of the features (model.n_recon={nr}), "
                f"got {list(recon_idx)}"
            )
        if loss not in ("mae", "mse"):
            raise ValueError(f"loss must be 'mae' or 'mse', got {loss!r}")
        xp = column_indices(xp_idx, nf, "xp_idx")
        column_indices(force_mask_idx, nf, "force_mask_idx")
        self.model = model
        self.save_hyperparameters(
            {
                "xp_idx": [int(i) for i in xp_idx],
                "recon_idx": list(range(nr)),
                "force_mask_idx": [int(i) for i in force_mask_idx],
                "xp_masking_ratio": float(xp_masking_ratio),
                "m_masking_ratio": float(m_masking_ratio),
                "fill_value": float(fill_value),
                "perturb_errors": bool(perturb_errors),
                "loss": loss,
                "error_weighted": bool(error_weighted),
                "err_floor": float(err_floor),
                "lr": float(lr),
                "weight_decay": float(weight_decay),
                "max_epochs": int(max_epochs),
                "restart_cycles": int(restart_cycles),
                "restart_mult": int(restart_mult),
                "seed": int(seed),
            }
        )
        xp_recon = torch.zeros(nr, dtype=torch.bool)
        xp_recon[xp[xp < nr]] = True
        self.register_buffer("_xp_recon", xp_recon, persistent=False)
        self._metrics = nn.ModuleDict(
            {
                f"{s}_{m}": MeanMetric(nan_strategy="ignore")
                for s in ("val", "test")
                for m in ("loss", "mae_xp")
            }
        )

    # ------------------------------------------------------------------ core
    def generator(self, stage: str, batch_idx: int, device: torch.device) -> torch.Generator:
        """Generator of one batch: keyed by (seed, stage, epoch [train only], batch, rank)."""
        epoch = self.current_epoch if stage == "train" else 0
        return seeded_generator(
            self.hparams.seed, stage, epoch, batch_idx, self.global_rank, device=device
        )

    def masked_forward(
        self, batch: dict[str, Tensor], generator: torch.Generator | None, perturb: bool = False
    ) -> dict[str, Tensor]:
        """Mask, fill and reconstruct one batch.

        Parameters
        ----------
        batch : dict
            ``x`` (B, F) float32, NaN = missing; ``x_err`` (B, F) if perturbing
            or error-weighting.
        generator : torch.Generator or None
        perturb : bool
            Add Gaussian noise of ``x_err`` to the inputs (before filling).

        Returns
        -------
        dict of torch.Tensor
            ``recon`` (B, R), ``target`` (B, R), ``mask`` (B, R) bool (masked
            and present), ``err`` (B, R) or absent, ``z`` (B, latent).
        """
        h = self.hparams
        x = batch["x"]
        present = torch.isfinite(x)
        mask = make_pretrain_mask(
            present, h.xp_idx, h.xp_masking_ratio, h.m_masking_ratio, h.force_mask_idx, generator
        )
        x_in = perturb_by_errors(x, batch.get("x_err"), generator) if perturb else x
        ind = hidden_indicators(x, mask) if self.model.mask_indicators else None
        recon, z = self.model(fill_masked(x_in, mask, h.fill_value), ind)
        R = self.model.n_recon
        out = {"recon": recon, "target": x[:, :R], "mask": mask[:, :R], "z": z}
        if h.error_weighted and batch.get("x_err") is not None:
            out["err"] = batch["x_err"][:, :R]
        return out

    def _loss_terms(self, out: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        return reconstruction_terms(
            out["recon"],
            out["target"],
            out["mask"],
            None,
            self.hparams.loss,
            out.get("err"),
            self.hparams.err_floor,
        )

    def _xp_terms(self, out: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        sel = out["mask"] & self._xp_recon
        return reconstruction_terms(out["recon"], out["target"], sel, None, "mae", None, 0.0)

    def training_step(self, batch, batch_idx):
        """Masked-reconstruction loss of one batch (``train/loss``, per epoch)."""
        gen = self.generator("train", batch_idx, batch["x"].device)
        out = self.masked_forward(batch, gen, perturb=self.hparams.perturb_errors)
        num, den = self._loss_terms(out)
        loss = num / den.clamp_min(torch.finfo(num.dtype).tiny)
        self.log(
            "train/loss", loss, on_step=False, on_epoch=True, batch_size=len(out["recon"]),
            sync_dist=True,
        )  # fmt: skip
        return loss

    def _eval_step(self, batch, batch_idx, stage: str) -> Tensor:
        gen = self.generator(stage, batch_idx, batch["x"].device)
        out = self.masked_forward(batch, gen, perturb=False)
        num, den = self._loss_terms(out)
        loss = num / den.clamp_min(torch.finfo(num.dtype).tiny)
        xnum, xden = self._xp_terms(out)
        m_loss, m_xp = self._metrics[f"{stage}_loss"], self._metrics[f"{stage}_mae_xp"]
        m_loss.update(loss.detach(), weight=den.detach())
        m_xp.update((xnum / xden.clamp_min(1.0)).detach(), weight=xden.detach())
        self.log(f"{stage}/loss", m_loss, on_step=False, on_epoch=True)
        self.log(f"{stage}/recon_mae_xp", m_xp, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        """Loss and XP MAE on fixed masks (``val/loss``, ``val/recon_mae_xp``)."""
        return self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch, batch_idx):
        """Loss and XP MAE on fixed masks (``test/loss``, ``test/recon_mae_xp``)."""
        return self._eval_step(batch, batch_idx, "test")

    def on_train_epoch_start(self) -> None:
        """Log the learning rate at the start of the epoch (``lr``)."""
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_epoch=True, sync_dist=False)

    def configure_optimizers(self):
        """AdamW (no decay on biases/norms) with cosine warm restarts, stepped per step."""
        h = self.hparams
        opt = torch.optim.AdamW(decay_param_groups(self.model, h.weight_decay), lr=h.lr)
        sched = cosine_warm_restarts(
            opt, estimated_steps(self), h.max_epochs, h.restart_cycles, h.restart_mult
        )
        return {"optimizer": opt, "lr_scheduler": sched}


@torch.no_grad()
def reconstruction_error(
    task: MaskedReconstructionTask,
    loader: Iterable[dict[str, Tensor]],
    seed: int = 0,
    xp_masking_ratio: float | None = None,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Reconstruction error of masked XP coefficients over a loader (fixed masks).

    Masks follow the task's scheme (its ratios and forced columns), drawn on the
    CPU from ``seeded_generator(seed, "eval", batch_index)``, so the same seed
    and loader give the same masks on any device; scored positions are XP
    coefficients that were masked and present. Use ``xp_masking_ratio=1.0`` to
    mask the XP block of every row (every source then counts).

    Parameters
    ----------
    task : MaskedReconstructionTask
        Trained task (its model is put in eval mode).
    loader : iterable of dict
        Batches with ``x`` (B, F) float32 scaled features (NaN = missing).
    seed : int
        Seed of the masks.
    xp_masking_ratio : float, optional
        Overrides the task's row ratio of XP masking.
    device : str or torch.device, optional
        Default: the task's device.

    Returns
    -------
    dict
        ``mae``, ``rmse`` (float, scaled units; NaN if nothing was scored),
        ``n_positions`` (int), ``n_rows`` (rows with at least one scored XP
        value), ``mae_per_coefficient`` (list of float, one per XP column of
        ``task.hparams.xp_idx`` inside the reconstructed prefix, in that order).
    """
    h = task.hparams
    device = torch.device(device) if device is not None else task.device
    model = task.model.to(device)
    was_training = model.training
    model.eval()
    R = model.n_recon
    xp_cols = [i for i in h.xp_idx if i < R]
    ratio = h.xp_masking_ratio if xp_masking_ratio is None else float(xp_masking_ratio)
    abs_sum = torch.zeros(len(xp_cols), dtype=torch.float64)
    sq_sum = torch.zeros((), dtype=torch.float64)
    count = torch.zeros(len(xp_cols), dtype=torch.float64)
    n_rows = 0
    for i, batch in enumerate(loader):
        x = batch["x"].to(device)
        present = torch.isfinite(x)
        gen = seeded_generator(seed, "eval", i)
        mask = make_pretrain_mask(
            present.cpu(), h.xp_idx, ratio, h.m_masking_ratio, h.force_mask_idx, gen
        ).to(device)
        ind = hidden_indicators(x, mask) if model.mask_indicators else None
        recon = model.decode(model.encode(fill_masked(x, mask, h.fill_value), ind))
        sel = mask[:, xp_cols]
        diff = torch.where(sel, recon[:, xp_cols] - torch.nan_to_num(x[:, xp_cols]), 0.0)
        diff = diff.double().cpu()
        abs_sum += diff.abs().sum(0)
        sq_sum += diff.square().sum()
        count += sel.sum(0).double().cpu()
        n_rows += int(sel.any(1).sum())
    model.train(was_training)
    n = float(count.sum())
    per_col = torch.where(count > 0, abs_sum / count.clamp_min(1), float("nan"))
    return {
        "mae": float(abs_sum.sum() / n) if n else float("nan"),
        "rmse": math.sqrt(float(sq_sum) / n) if n else float("nan"),
        "n_positions": int(n),
        "n_rows": n_rows,
        "mae_per_coefficient": per_col.tolist(),
    }
