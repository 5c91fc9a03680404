"""Quantile regression: the pinball loss and quantile fine-tuning of an encoder.

An encoder and a :class:`~astrobatch.nn.heads.QuantileHead` predict the
16/50/84 % quantiles (:data:`QUANTILES`) of every (scaled) label, trained with
the pinball loss (Koenker & Bassett 1978) over non-missing labels (McKay &
Fabbro 2025). The head orders its outputs by construction, so the quantiles
never cross; the loss makes them the 16/50/84 % quantiles.

:class:`QuantileFinetuneTask` is the generic
:class:`~astrobatch.tasks.finetune.FinetuneTask` with this loss: an optional
head-only phase, then encoder and head with their own learning rates. A study
adds its own science by subclassing it (stellar_xp: the leakage-free two-pass
parallax and a parallax likelihood term, ``StellarXPFinetuneTask`` in
``studies/stellar_xp/finetune.py``); this module knows no study.

Logged: ``train/loss``, ``train/pinball`` (per epoch), ``val/loss``,
``val/pinball``, ``val/pinball_<label>`` (if ``label_names``), ``lr/encoder``,
``lr/head``; the same with ``test/``. Validation metrics are weighted means
over present labels (exact over the whole split, whatever the batch size).

References
----------
- Koenker, R. & Bassett, G. 1978, "Regression Quantiles", Econometrica 46, 33.
- McKay, A. & Fabbro, S. 2025, the Masked Stellar Autoencoder (MSA).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from astrobatch.tasks.finetune import FinetuneTask

__all__ = [
    "QUANTILES",
    "QuantileFinetuneTask",
    "pinball_loss",
    "pinball_terms",
]

#: Quantile levels of the head's three outputs (the +-1 sigma interval and the median).
QUANTILES: tuple[float, float, float] = (0.16, 0.5, 0.84)


def pinball_terms(
    q: Tensor, y: Tensor, quantiles: Sequence[float] = QUANTILES
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-label sums of pinball losses over present rows, their counts and the presence mask.

    The pieces of :func:`pinball_loss` (``total.sum() / (K * count.sum())``),
    kept apart for exact per-label and whole-split means. Computed in float32,
    also under mixed precision.

    Parameters
    ----------
    q : torch.Tensor, shape (B, L, K), float
        Predicted quantiles (K = len(quantiles)), in the units of ``y``.
    y : torch.Tensor, shape (B, L), float
        Labels, NaN = missing.
    quantiles : sequence of float
        Quantile levels of the last axis of ``q``.

    Returns
    -------
    total : torch.Tensor, shape (L,), float32
        Sum over present rows and the K levels of ``rho_tau(y - q_tau)``.
    count : torch.Tensor, shape (L,), float32
        Present rows per label.
    present : torch.Tensor, shape (B, L), bool

    Raises
    ------
    ValueError
        On mismatched shapes.

    Examples
    --------
    >>> q = torch.tensor([[[0.0, 1.0, 3.0], [9.0, 9.0, 9.0]]])
    >>> total, count, _ = pinball_terms(q, torch.tensor([[1.0, float("nan")]]))
    >>> [round(v, 4) for v in total.tolist()], count.tolist()
    ([0.48, 0.0], [1.0, 0.0])
    """
    if q.ndim != 3 or q.shape[:2] != y.shape or q.shape[2] != len(quantiles):
        raise ValueError(
            f"q must have shape (B, L, {len(quantiles)}) matching y (B, L), "
            f"got {tuple(q.shape)} and {tuple(y.shape)}"
        )
    q = q.float()  # the loss in float32, also under mixed precision
    tau = torch.as_tensor(quantiles, dtype=q.dtype, device=q.device)
    present = torch.isfinite(y)
    u = torch.nan_to_num(y).unsqueeze(-1) - q  # (B, L, K)
    rho = torch.maximum(tau * u, (tau - 1.0) * u)
    rho = torch.where(present.unsqueeze(-1), rho, torch.zeros_like(rho))
    return rho.sum(dim=(0, 2)), present.sum(0).to(q.dtype), present


def pinball_loss(q: Tensor, y: Tensor, quantiles: Sequence[float] = QUANTILES) -> Tensor:
    """Pinball (quantile) loss, averaged over non-missing labels and quantile levels.

    ``rho_tau(u) = max(tau u, (tau - 1) u)`` with ``u = y - q_tau`` (Koenker &
    Bassett 1978). Normalisation: the sum over present ``(row, label)`` pairs
    and the K quantile levels, divided by ``K * n_present`` (a missing label
    contributes nothing, neither to the sum nor to the count; every present
    label of the batch counts equally). No present label gives 0 (still
    differentiable).

    Parameters
    ----------
    q : torch.Tensor, shape (B, L, K), float32
        Predicted quantiles (K = len(quantiles)), in the units of ``y``.
    y : torch.Tensor, shape (B, L), float32
        Labels (scaled), NaN = missing.
    quantiles : sequence of float
        Quantile levels of the last axis of ``q``.

    Returns
    -------
    torch.Tensor, shape (), float32

    Raises
    ------
    ValueError
        On mismatched shapes.

    Examples
    --------
    One label of value 1 predicted as (0, 1, 3): terms 0.16 * 1, 0, 0.16 * 2;
    the NaN label is ignored:

    >>> q = torch.tensor([[[0.0, 1.0, 3.0], [9.0, 9.0, 9.0]]])
    >>> y = torch.tensor([[1.0, float("nan")]])
    >>> round(pinball_loss(q, y).item(), 6)  # (0.16 + 0 + 0.32) / 3
    0.16
    """
    total, count, _ = pinball_terms(q, y, quantiles)
    n = count.sum() * len(quantiles)
    return total.sum() / n.clamp_min(1.0)


class QuantileFinetuneTask(FinetuneTask):
    """Fine-tune an encoder and a quantile head with the pinball loss over present labels.

    Batches are dicts with ``x`` (the encoder's input) and ``y`` (B, L)
    float32 labels in the head's units (scaled), NaN = missing.

    Parameters
    ----------
    model : torch.nn.Module
        The encoder, ``x -> (B, D)``; saved under ``model.*``.
    head : torch.nn.Module
        ``(B, D) -> (B, L, 3)`` quantiles at :data:`QUANTILES`, e.g.
        :class:`~astrobatch.nn.heads.QuantileHead` (its ``n_labels`` is
        checked against ``label_names``).
    label_names : sequence of str, optional
        Names of the L labels, to log ``val/pinball_<label>``.
    **schedule
        ``lr_encoder``, ``lr_head``, ``weight_decay``, ``head_only_epochs``,
        ``max_epochs``, ``restart_cycles``, ``restart_mult``: see
        :class:`~astrobatch.tasks.finetune.FinetuneTask` (same defaults).

    Attributes
    ----------
    extra_terms : tuple of str
        Further loss terms of a subclass that get a weighted validation metric
        (with their weights from :meth:`eval_terms`).

    Raises
    ------
    ValueError
        On ``label_names`` of the wrong length, and as
        :class:`~astrobatch.tasks.finetune.FinetuneTask`.

    Examples
    --------
    >>> from astrobatch.nn.heads import QuantileHead
    >>> task = QuantileFinetuneTask(nn.Linear(4, 8), QuantileHead(8, 2, hidden=()))
    >>> task.predict_quantiles(torch.zeros(5, 4)).shape
    torch.Size([5, 2, 3])
    """

    train_log_terms = ("loss", "pinball")
    extra_terms: tuple[str, ...] = ()

    def __init__(
        self,
        model: nn.Module,
        head: nn.Module,
        *,
        label_names: Sequence[str] | None = None,
        **schedule: Any,
    ):
        nl = getattr(head, "n_labels", None)
        if label_names is not None and nl is not None and len(label_names) != nl:
            raise ValueError(f"label_names must have {nl} names, got {list(label_names)}")
        super().__init__(model, head, pinball_loss, **schedule)
        self.save_hyperparameters(
            {"label_names": None if label_names is None else [str(n) for n in label_names]}
        )
        names = ["loss", "pinball", *self.extra_terms]
        names += [f"pinball_{n}" for n in (label_names or [])]
        self._metrics = nn.ModuleDict(
            {
                f"{s}|{n}".replace("/", ":"): MeanMetric(nan_strategy="ignore")
                for s in ("val", "test")
                for n in names
            }
        )

    def predict_quantiles(self, batch: dict[str, Tensor] | Tensor) -> Tensor:
        """Quantiles of every label, in the labels' (scaled) units.

        Runs in the module's current mode: call ``.eval()`` and wrap in
        ``torch.no_grad()`` for evaluation.

        Parameters
        ----------
        batch : dict or torch.Tensor
            A batch with ``x`` (the encoder's input), or ``x`` itself.

        Returns
        -------
        torch.Tensor, shape (B, L, 3), float32
            (q16, q50, q84).
        """
        return self(batch["x"] if isinstance(batch, dict) else batch)

    def pinball_losses(self, q: Tensor, y: Tensor) -> dict[str, Tensor]:
        """The pinball terms of predicted quantiles ``q`` (B, L, 3) and labels ``y`` (B, L).

        Returns
        -------
        dict of torch.Tensor
            ``pinball`` and ``loss`` (both :func:`pinball_loss`, shape ()),
            ``_total``, ``_count`` (per label, shape (L,), see
            :func:`pinball_terms`).
        """
        total, count, _ = pinball_terms(q, y, QUANTILES)
        pin = total.sum() / (len(QUANTILES) * count.sum()).clamp_min(1.0)
        return {"pinball": pin, "loss": pin, "_total": total, "_count": count}

    def compute_losses(self, batch, batch_idx: int, stage: str) -> dict[str, Tensor]:
        """Pinball loss of one batch (see :meth:`pinball_losses`)."""
        return self.pinball_losses(self(batch["x"]), batch["y"])

    def eval_terms(self, out: dict[str, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
        """``{name: (value, weight)}`` of the validation metrics besides per-label pinball.

        ``loss`` and ``pinball`` are weighted by the number of present
        (label, quantile) pairs; a subclass adds its :attr:`extra_terms`.
        """
        n_lab = out["_count"].sum() * len(QUANTILES)
        return {"loss": (out["loss"], n_lab), "pinball": (out["pinball"], n_lab)}

    def _eval_step(self, batch, batch_idx, stage: str) -> Tensor:
        out = self.compute_losses(batch, batch_idx, stage)
        updates = self.eval_terms(out)
        for i, name in enumerate(self.hparams.label_names or []):
            c = out["_count"][i] * len(QUANTILES)
            updates[f"pinball_{name}"] = (out["_total"][i] / c.clamp_min(1.0), c)
        for name, (value, weight) in updates.items():
            metric = self._metrics[f"{stage}|{name}".replace("/", ":")]
            metric.update(value.detach(), weight=weight.detach())
            self.log(f"{stage}/{name}", metric, on_step=False, on_epoch=True)
        return out["loss"]

    def predict_step(self, batch, batch_idx) -> Any:
        """Quantiles (B, L, 3) of the labels (see :meth:`predict_quantiles`)."""
        return self.predict_quantiles(batch)
