"""Quantile fine-tuning of a pretrained masked autoencoder to stellar labels.

An encoder (:class:`~astrobatch.nn.autoencoder.MaskedAutoencoder`) and a
:class:`~astrobatch.nn.autoencoder.QuantileHead` predict the 16/50/84 %
quantiles of every standard-scaled label, trained with the pinball loss
(Koenker & Bassett 1978) over non-missing labels (McKay & Fabbro 2025).

Leakage-free parallax (two passes)
----------------------------------
Gaia parallax is both an input feature and a label. Pass A sees all inputs and
predicts every label; pass B sees the same row with the parallax feature
hidden (filled as if missing, its mask indicator set) and its parallax output
replaces pass A's. The parallax prediction therefore never depends on the
parallax input, while the other labels can use it. Both passes run as one
batch of ``2 B`` rows (LayerNorm is per row, so this equals two passes).

Parallax MLE regulariser
------------------------
``weight * mean((mu - pi)^2 / (sigma_gaia^2 + sigma_phot^2 + floor^2))`` with
``mu`` = q50 and ``sigma_phot = (q84 - q16) / 2`` of the (pass B) parallax,
``pi``, ``sigma_gaia`` the Gaia parallax label and its error. It is computed
**in mas**: scaled values are mapped back with ``parallax_label_scale = (mean,
std)`` of the label's StandardScaler (value = mean + std * scaled, error = std
* scaled error), so ``parallax_floor`` is in mas as in params. (The term is
invariant to the scaling except through the floor, so this equals the scaled
computation with ``floor / std``.)

Optimisation: AdamW with separate learning rates for the encoder (and
decoder) and the head, no weight decay on biases and norms, cosine warm
restarts (see :mod:`astrobatch.tasks.masked`).

Logged: ``train/loss``, ``train/pinball`` (per epoch), ``val/loss``,
``val/pinball``, ``val/pinball_<label>`` (if ``label_names``), ``val/recon``
and ``val/parallax_mle`` when those terms are on, ``lr/encoder``, ``lr/head``;
the same with ``test/``.

References
----------
- Koenker, R. & Bassett, G. 1978, "Regression Quantiles", Econometrica 46, 33.
- McKay, A. & Fabbro, S. 2025, the Masked Stellar Autoencoder (MSA).
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from astrobatch.errors import InputError
from astrobatch.nn.autoencoder import MaskedAutoencoder, QuantileHead
from astrobatch.studies.stellar_xp.params import FinetuneParams, MaskingParams
from astrobatch.tasks.masked import (
    _estimated_steps,
    _index,
    _recon_terms,
    cosine_warm_restarts,
    decay_param_groups,
    fill_masked,
    make_pretrain_mask,
    perturb_by_errors,
    seeded_generator,
)

__all__ = [
    "QUANTILES",
    "QuantileFinetuneTask",
    "load_pretrained_encoder",
    "parallax_mle_penalty",
    "pinball_loss",
]

#: Quantile levels of the head's three outputs (the +-1 sigma interval and the median).
QUANTILES: tuple[float, float, float] = (0.16, 0.5, 0.84)


def _pinball_terms(
    q: Tensor, y: Tensor, quantiles: Sequence[float]
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-label sums of pinball losses over present rows, and counts. Shapes (L,), (L,)."""
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
    total, count, _ = _pinball_terms(q, y, quantiles)
    n = count.sum() * len(quantiles)
    return total.sum() / n.clamp_min(1.0)


def parallax_mle_penalty(
    mu_phot: Tensor,
    sigma_phot: Tensor,
    pi_gaia: Tensor,
    sigma_gaia: Tensor,
    floor: float = 0.01,
) -> Tensor:
    """Parallax likelihood term ``mean((mu - pi)^2 / (sigma_gaia^2 + sigma_phot^2 + floor^2))``.

    The squared, normalised difference between the photometric parallax and
    the Gaia parallax (McKay & Fabbro 2025): a Gaussian negative log-likelihood
    without the log-variance term, so it pulls the median towards the Gaia
    value but never rewards wide intervals. All arguments in the same units
    (mas). Rows where ``pi_gaia`` or ``sigma_gaia`` is missing (NaN) are left
    out of the mean; no valid row gives 0.

    Parameters
    ----------
    mu_phot : torch.Tensor, shape (B,), float32
        Predicted parallax (q50), mas.
    sigma_phot : torch.Tensor, shape (B,), float32
        Predicted 1-sigma, ``(q84 - q16) / 2``, mas.
    pi_gaia : torch.Tensor, shape (B,), float32
        Gaia parallax, mas (NaN = missing).
    sigma_gaia : torch.Tensor, shape (B,), float32
        Its error, mas (NaN = missing).
    floor : float
        Floor added in quadrature, mas.

    Returns
    -------
    torch.Tensor, shape (), float32

    Examples
    --------
    >>> mu, s = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0])
    >>> pi, e = torch.tensor([2.0, float("nan")]), torch.tensor([1.0, 1.0])
    >>> parallax_mle_penalty(mu, s, pi, e, floor=0.0).item()
    1.0
    """
    ok = torch.isfinite(pi_gaia) & torch.isfinite(sigma_gaia)
    var = torch.nan_to_num(sigma_gaia).square() + sigma_phot.square() + floor**2
    var = torch.where(ok, var, torch.ones_like(var)).clamp_min(torch.finfo(var.dtype).tiny)
    term = torch.where(ok, (mu_phot - torch.nan_to_num(pi_gaia)).square() / var, 0.0)
    return term.sum() / ok.sum().clamp_min(1).to(term.dtype)


class QuantileFinetuneTask(L.LightningModule):
    """Fine-tune a MaskedAutoencoder's encoder and a QuantileHead to stellar labels.

    Batches are dicts with ``x`` (B, F) float32 scaled features (NaN =
    missing), ``x_err`` (B, F) scaled errors, ``y`` (B, L) float32
    standard-scaled labels (NaN = missing) and ``y_err`` (B, L) their scaled
    errors (used by the parallax MLE term only).

    Parameters
    ----------
    model : MaskedAutoencoder
        Encoder (+ decoder, trained only if ``recon_weight > 0``; otherwise
        frozen so that every trainable parameter gets a gradient, as DDP needs).
        Saved under ``model.*`` like a pretraining checkpoint.
    head : QuantileHead
        Latent -> (B, L, 3) quantiles of the scaled labels.
    parallax_feature_idx : int, optional
        Feature column of the Gaia parallax (PARALLAX).
    parallax_label_idx : int, optional
        Label index of the parallax. Two passes are used iff
        ``two_pass_parallax`` and this index is given.
    two_pass_parallax : bool
        Take the parallax output from a pass with the parallax feature hidden.
    force_mask_idx : sequence of int
        Feature columns hidden in every pass, at training and prediction.
    fill_value : float
        Value of hidden inputs (scaled units; as in pretraining).
    recon_weight : float
        Weight of a multitask masked-reconstruction loss, computed on a third
        pass with pretraining-style masks (``xp_idx``, ratios); 0 = off.
    xp_idx : sequence of int
        XP columns (for the multitask masks).
    xp_masking_ratio, m_masking_ratio : float
        Masking of the multitask reconstruction pass.
    recon_loss : {"mae", "mse"}
    perturb_errors : bool
        Gaussian perturbation of training inputs by ``x_err``.
    parallax_mle_weight : float
        Weight of :func:`parallax_mle_penalty` (0 = off).
    parallax_floor : float
        Its floor, mas.
    parallax_label_scale : (float, float), optional
        ``(mean, std)`` of the parallax label's StandardScaler, mas; required
        if ``parallax_mle_weight > 0``.
    lr_encoder, lr_head : float
        AdamW learning rates of the autoencoder and of the head.
    weight_decay : float
        Decoupled weight decay (none on biases and norms).
    max_epochs, restart_cycles, restart_mult : int
        Schedule (see :func:`astrobatch.tasks.masked.cosine_warm_restarts`).
    seed : int
        Seed of the masks and perturbations.
    label_names : sequence of str, optional
        Names of the L labels, to log ``val/pinball_<label>``.

    Raises
    ------
    ValueError
        On inconsistent sizes or indices, two passes without a parallax
        feature, or the MLE term without a parallax label or its scale.
    """

    def __init__(
        self,
        model: MaskedAutoencoder,
        head: QuantileHead,
        parallax_feature_idx: int | None = None,
        parallax_label_idx: int | None = None,
        two_pass_parallax: bool = True,
        force_mask_idx: Sequence[int] = (),
        fill_value: float = 0.0,
        recon_weight: float = 0.0,
        xp_idx: Sequence[int] = (),
        xp_masking_ratio: float = 0.9,
        m_masking_ratio: float = 0.6,
        recon_loss: Literal["mae", "mse"] = "mae",
        perturb_errors: bool = False,
        parallax_mle_weight: float = 0.0,
        parallax_floor: float = 0.01,
        parallax_label_scale: tuple[float, float] | None = None,
        lr_encoder: float = 3e-4,
        lr_head: float = 1e-3,
        weight_decay: float = 1e-5,
        max_epochs: int = 30,
        restart_cycles: int = 3,
        restart_mult: int = 2,
        seed: int = 0,
        label_names: Sequence[str] | None = None,
    ):
        super().__init__()
        nf, nl = model.n_features, head.n_labels
        if head.latent_dim != model.latent_dim:
            raise ValueError(
                f"head.latent_dim ({head.latent_dim}) != model.latent_dim ({model.latent_dim})"
            )
        _index(force_mask_idx, nf, "force_mask_idx")
        _index(xp_idx, nf, "xp_idx")
        if parallax_feature_idx is not None:
            _index([parallax_feature_idx], nf, "parallax_feature_idx")
        if parallax_label_idx is not None:
            _index([parallax_label_idx], nl, "parallax_label_idx")
        if two_pass_parallax and parallax_label_idx is not None and parallax_feature_idx is None:
            raise ValueError("two_pass_parallax needs parallax_feature_idx (the column to hide)")
        if parallax_mle_weight > 0 and (parallax_label_idx is None or parallax_label_scale is None):
            raise ValueError(
                "parallax_mle_weight > 0 needs parallax_label_idx and parallax_label_scale "
                "(mean, std) of the parallax label, mas"
            )
        if label_names is not None and len(label_names) != nl:
            raise ValueError(f"label_names must have {nl} names, got {list(label_names)}")
        if recon_loss not in ("mae", "mse"):
            raise ValueError(f"recon_loss must be 'mae' or 'mse', got {recon_loss!r}")
        self.model = model
        self.head = head
        if recon_weight <= 0:
            self.model.decoder.requires_grad_(False)
        self.save_hyperparameters(
            {
                "parallax_feature_idx": parallax_feature_idx,
                "parallax_label_idx": parallax_label_idx,
                "two_pass_parallax": bool(two_pass_parallax),
                "force_mask_idx": [int(i) for i in force_mask_idx],
                "fill_value": float(fill_value),
                "recon_weight": float(recon_weight),
                "xp_idx": [int(i) for i in xp_idx],
                "xp_masking_ratio": float(xp_masking_ratio),
                "m_masking_ratio": float(m_masking_ratio),
                "recon_loss": recon_loss,
                "perturb_errors": bool(perturb_errors),
                "parallax_mle_weight": float(parallax_mle_weight),
                "parallax_floor": float(parallax_floor),
                "parallax_label_scale": (
                    None
                    if parallax_label_scale is None
                    else [float(v) for v in parallax_label_scale]
                ),
                "lr_encoder": float(lr_encoder),
                "lr_head": float(lr_head),
                "weight_decay": float(weight_decay),
                "max_epochs": int(max_epochs),
                "restart_cycles": int(restart_cycles),
                "restart_mult": int(restart_mult),
                "seed": int(seed),
                "label_names": None if label_names is None else [str(n) for n in label_names],
            }
        )
        force = torch.zeros(nf, dtype=torch.bool)
        force[_index(force_mask_idx, nf, "force_mask_idx")] = True
        self.register_buffer("_force", force, persistent=False)
        names = ["loss", "pinball", "recon", "parallax_mle"]
        names += [f"pinball_{n}" for n in (label_names or [])]
        self._metrics = nn.ModuleDict(
            {
                f"{s}|{n}".replace("/", ":"): MeanMetric(nan_strategy="ignore")
                for s in ("val", "test")
                for n in names
            }
        )

    @classmethod
    def from_params(
        cls,
        model: MaskedAutoencoder,
        head: QuantileHead,
        finetune: FinetuneParams,
        masking: MaskingParams,
        *,
        xp_idx: Sequence[int],
        parallax_feature_idx: int | None,
        parallax_label_idx: int | None,
        parallax_label_scale: tuple[float, float] | None = None,
        force_mask_idx: Sequence[int] = (),
        label_names: Sequence[str] | None = None,
        seed: int = 0,
    ) -> QuantileFinetuneTask:
        """Build the task from ``stellar_xp.finetune`` and ``stellar_xp.masking`` params.

        ``force_mask_idx`` defaults to none: pretraining's ``force_mask_cols``
        (often PARALLAX) are not hidden at fine-tuning unless passed here.
        """
        t = finetune.training
        return cls(
            model,
            head,
            parallax_feature_idx=parallax_feature_idx,
            parallax_label_idx=parallax_label_idx,
            two_pass_parallax=finetune.two_pass_parallax,
            force_mask_idx=force_mask_idx,
            fill_value=masking.fill_value,
            recon_weight=finetune.recon_weight,
            xp_idx=xp_idx,
            xp_masking_ratio=masking.xp_masking_ratio,
            m_masking_ratio=masking.m_masking_ratio,
            perturb_errors=masking.perturb_errors,
            parallax_mle_weight=finetune.parallax_mle_weight,
            parallax_floor=finetune.parallax_floor,
            parallax_label_scale=parallax_label_scale,
            lr_encoder=finetune.lr_encoder,
            lr_head=finetune.lr_head,
            weight_decay=t.weight_decay,
            max_epochs=t.max_epochs,
            seed=seed,
            label_names=label_names,
        )

    # ------------------------------------------------------------------ passes
    @property
    def two_pass(self) -> bool:
        """Whether the parallax output comes from a pass without the parallax input."""
        h = self.hparams
        return bool(h.two_pass_parallax and h.parallax_label_idx is not None)

    def _encode(self, x: Tensor, hidden: Tensor) -> Tensor:
        ind = hidden.to(x.dtype) if self.model.mask_indicators else None
        return self.model.encode(fill_masked(x, hidden, self.hparams.fill_value), ind)

    def _quantiles(self, x: Tensor) -> Tensor:
        """Pass A (+ pass B): quantiles (B, L, 3) from inputs ``x`` (B, F), NaN = missing."""
        hidden = self._force.expand_as(x) | ~torch.isfinite(x)
        if not self.two_pass:
            return self.head(self._encode(x, hidden))
        p_feat, p_lab = self.hparams.parallax_feature_idx, self.hparams.parallax_label_idx
        hidden_b = hidden.clone()
        hidden_b[:, p_feat] = True
        B = x.shape[0]
        q = self.head(self._encode(torch.cat([x, x]), torch.cat([hidden, hidden_b])))
        q_a, q_b = q[:B], q[B:]
        is_p = torch.zeros(q.shape[1], 1, dtype=torch.bool, device=q.device)
        is_p[p_lab] = True
        return torch.where(is_p, q_b, q_a)

    def predict_quantiles(self, batch: dict[str, Tensor] | Tensor) -> Tensor:
        """Quantiles of every label with the two-pass parallax, in scaled label units.

        Runs in the module's current mode: call ``.eval()`` and wrap in
        ``torch.no_grad()`` for evaluation.

        Parameters
        ----------
        batch : dict or torch.Tensor
            A batch with ``x`` (B, F) float32 scaled features (NaN = missing),
            or ``x`` itself.

        Returns
        -------
        torch.Tensor, shape (B, L, 3), float32
            (q16, q50, q84) of the standard-scaled labels; the parallax label
            (if two-pass) comes from the pass with the parallax input hidden.
        """
        x = batch["x"] if isinstance(batch, dict) else batch
        return self._quantiles(x)

    def forward(self, x: Tensor) -> Tensor:
        """Same as :meth:`predict_quantiles` on features ``x`` (B, F)."""
        return self._quantiles(x)

    # ------------------------------------------------------------------ losses
    def _mle(self, q: Tensor, batch: dict[str, Tensor]) -> Tensor:
        h = self.hparams
        mean, std = h.parallax_label_scale
        p = h.parallax_label_idx
        qp = mean + std * q[:, p]  # (B, 3), mas
        y_err = batch.get("y_err")
        sigma_gaia = (
            std * y_err[:, p] if y_err is not None else torch.full_like(qp[:, 1], float("nan"))
        )
        return parallax_mle_penalty(
            qp[:, 1],
            (qp[:, 2] - qp[:, 0]) / 2,
            mean + std * batch["y"][:, p],
            sigma_gaia,
            h.parallax_floor,
        )

    def _losses(self, batch, batch_idx: int, stage: str) -> dict[str, Tensor]:
        h = self.hparams
        x, y = batch["x"], batch["y"]
        gen = None
        if stage == "train" and (h.perturb_errors or h.recon_weight > 0):
            gen = seeded_generator(
                h.seed, stage, self.current_epoch, batch_idx, self.global_rank, device=x.device
            )
        elif stage != "train" and h.recon_weight > 0:
            gen = seeded_generator(h.seed, stage, 0, batch_idx, self.global_rank, device=x.device)
        x_in = x
        if stage == "train" and h.perturb_errors:
            x_in = perturb_by_errors(x, batch.get("x_err"), gen)
        q = self._quantiles(x_in)
        total, count, _ = _pinball_terms(q, y, QUANTILES)
        pin = total.sum() / (3 * count.sum()).clamp_min(1.0)
        out = {"pinball": pin, "loss": pin, "_total": total, "_count": count}
        if h.recon_weight > 0:
            present = torch.isfinite(x)
            mask = make_pretrain_mask(
                present, h.xp_idx, h.xp_masking_ratio, h.m_masking_ratio, (), gen
            )
            hidden = mask | self._force.expand_as(x)
            R = self.model.n_recon
            recon = self.model.decode(self._encode(x_in, hidden | ~present))
            num, den = _recon_terms(recon, x[:, :R], mask[:, :R], None, h.recon_loss, None, 0.0)
            out["recon"] = num / den.clamp_min(torch.finfo(num.dtype).tiny)
            out["_recon_w"] = den
            out["loss"] = out["loss"] + h.recon_weight * out["recon"]
        if h.parallax_mle_weight > 0:
            out["parallax_mle"] = self._mle(q, batch)
            out["loss"] = out["loss"] + h.parallax_mle_weight * out["parallax_mle"]
        return out

    def training_step(self, batch, batch_idx):
        """Pinball (+ multitask reconstruction, + parallax MLE) loss of one batch."""
        out = self._losses(batch, batch_idx, "train")
        bs = len(batch["x"])
        for k in ("loss", "pinball"):
            self.log(f"train/{k}", out[k], on_step=False, on_epoch=True, batch_size=bs,
                     sync_dist=True)  # fmt: skip
        return out["loss"]

    def _eval_step(self, batch, batch_idx, stage: str) -> Tensor:
        out = self._losses(batch, batch_idx, stage)
        n_lab = out["_count"].sum() * 3
        updates = {
            "loss": (out["loss"], n_lab),
            "pinball": (out["pinball"], n_lab),
        }
        if "recon" in out:
            updates["recon"] = (out["recon"], out["_recon_w"])
        if "parallax_mle" in out:
            updates["parallax_mle"] = (out["parallax_mle"], torch.ones_like(n_lab))
        for i, name in enumerate(self.hparams.label_names or []):
            c = out["_count"][i] * 3
            updates[f"pinball_{name}"] = (out["_total"][i] / c.clamp_min(1.0), c)
        for name, (value, weight) in updates.items():
            metric = self._metrics[f"{stage}|{name}".replace("/", ":")]
            metric.update(value.detach(), weight=weight.detach())
            self.log(f"{stage}/{name}", metric, on_step=False, on_epoch=True)
        return out["loss"]

    def validation_step(self, batch, batch_idx):
        """``val/loss``, ``val/pinball`` (weighted by present labels) and per-label pinball."""
        return self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch, batch_idx):
        """``test/loss``, ``test/pinball`` and per-label pinball."""
        return self._eval_step(batch, batch_idx, "test")

    def predict_step(self, batch, batch_idx):
        """Quantiles (B, L, 3) of the scaled labels (see :meth:`predict_quantiles`)."""
        return self.predict_quantiles(batch)

    # ------------------------------------------------------------------ optimisation
    def on_train_epoch_start(self) -> None:
        """Log the learning rates of the epoch (``lr/encoder``, ``lr/head``)."""
        for g in self.optimizers().param_groups:
            if not g["name"].endswith("_no_decay"):
                self.log(f"lr/{g['name']}", g["lr"], on_epoch=True, sync_dist=False)

    def param_groups(self) -> list[dict[str, Any]]:
        """AdamW groups: encoder (and trainable decoder) at ``lr_encoder``, head at ``lr_head``.

        Each is split into a decayed group and one without weight decay
        (biases, norms); groups carry ``name`` = ``"encoder"`` or ``"head"``
        (the no-decay groups ``"encoder_no_decay"``, ``"head_no_decay"``).
        """
        h = self.hparams
        return decay_param_groups(
            self.model, h.weight_decay, lr=h.lr_encoder, name="encoder"
        ) + decay_param_groups(self.head, h.weight_decay, lr=h.lr_head, name="head")

    def configure_optimizers(self):
        """AdamW (two learning rates, no decay on biases/norms) with cosine warm restarts."""
        h = self.hparams
        opt = torch.optim.AdamW(self.param_groups(), lr=h.lr_head)
        sched = cosine_warm_restarts(
            opt, _estimated_steps(self), h.max_epochs, h.restart_cycles, h.restart_mult
        )
        return {"optimizer": opt, "lr_scheduler": sched}


def load_pretrained_encoder(
    task_or_module: QuantileFinetuneTask | L.LightningModule | MaskedAutoencoder,
    ckpt_path: str | Path,
) -> MaskedAutoencoder:
    """Load the ``model.*`` weights of a pretraining checkpoint into an autoencoder.

    Parameters
    ----------
    task_or_module : QuantileFinetuneTask, MaskedReconstructionTask or MaskedAutoencoder
        A task holding the autoencoder as ``.model``, or the autoencoder itself.
    ckpt_path : str or pathlib.Path
        A Lightning checkpoint of
        :class:`~astrobatch.tasks.masked.MaskedReconstructionTask` (or of a
        :class:`QuantileFinetuneTask`, which stores its autoencoder the same
        way). All encoder *and* decoder weights are loaded, strictly. Read with
        ``weights_only=True``, or as a full (trusted) pickle if it holds other
        objects, e.g. a datamodule's paths.

    Returns
    -------
    MaskedAutoencoder
        The module that received the weights (modified in place).

    Raises
    ------
    InputError
        If the file is missing or unreadable, holds no ``model.*`` weights, or
        its weights do not match the architecture (missing or unexpected keys,
        other shapes: e.g. other widths, feature count or mask indicators).
    """
    module = task_or_module.model if hasattr(task_or_module, "model") else task_or_module
    if not isinstance(module, MaskedAutoencoder):
        raise TypeError(f"expected a MaskedAutoencoder or a task with one, got {type(module)}")
    path = Path(ckpt_path)
    if not path.is_file():
        raise InputError("pretraining checkpoint not found (run the pretrain stage)", path=path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Lightning checkpoints may hold pickled hyper-parameters (e.g. a datamodule's
        # pathlib.Path); the file is the pipeline's own output, so a full load is trusted.
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:
            raise InputError(f"cannot read the checkpoint: {err}", path=path) from None
    except Exception as err:
        raise InputError(f"cannot read the checkpoint: {err}", path=path) from None
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise InputError("expected a Lightning checkpoint with a state_dict", path=path)
    weights = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    if not weights:
        raise InputError(
            "no model.* weights (expected a MaskedReconstructionTask checkpoint)",
            path=path,
            key="state_dict",
        )
    try:
        module.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        msg = " ".join(str(err).split())
        raise InputError(
            f"weights do not match the autoencoder (check widths, latent_dim, embedding, "
            f"features and mask_indicators against the pretraining run): {msg}",
            path=path,
            key="state_dict",
        ) from None
    return module
