"""stellar_xp fine-tuning: quantile labels with a leakage-free parallax.

:class:`StellarXPFinetuneTask` is the generic
:class:`~astrobatch.tasks.quantile.QuantileFinetuneTask` (a pretrained
:class:`~astrobatch.nn.autoencoder.MaskedAutoencoder` encoder, a
:class:`~astrobatch.nn.heads.QuantileHead`, the pinball loss, two learning
rates, an optional head-only phase) with this study's science on top.

Inputs
------
Rows of scaled features with NaN = missing: missing values (and the
``force_mask_idx`` columns) are hidden from the encoder as in pretraining,
filled with ``fill_value`` and, with mask indicators, flagged.

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

Multitask reconstruction
------------------------
With ``recon_weight > 0`` a third pass with pretraining-style masks adds the
masked-reconstruction loss (:mod:`astrobatch.tasks.masked`) and the decoder
trains too; otherwise the decoder is frozen (``requires_grad=False``, so that
every trainable parameter gets a gradient, as DDP needs).

Logged: as :class:`~astrobatch.tasks.quantile.QuantileFinetuneTask`, plus
``val/recon`` and ``val/parallax_mle`` when those terms are on.

References
----------
- McKay, A. & Fabbro, S. 2025, the Masked Stellar Autoencoder (MSA),
  https://github.com/aydanmckay/masked-stellar-autoencoder
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from astrobatch.nn.autoencoder import MaskedAutoencoder
from astrobatch.nn.heads import QuantileHead
from astrobatch.studies.stellar_xp.params import FinetuneParams, MaskingParams
from astrobatch.tasks.masked import (
    column_indices,
    fill_masked,
    make_pretrain_mask,
    perturb_by_errors,
    reconstruction_terms,
    seeded_generator,
)
from astrobatch.tasks.quantile import QuantileFinetuneTask

__all__ = ["StellarXPFinetuneTask", "parallax_mle_penalty"]


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


class StellarXPFinetuneTask(QuantileFinetuneTask):
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
    seed : int
        Seed of the masks and perturbations.
    label_names : sequence of str, optional
        Names of the L labels, to log ``val/pinball_<label>``.
    **schedule
        ``lr_encoder``, ``lr_head`` (AdamW learning rates of the autoencoder and of the
        head), ``weight_decay``, ``head_only_epochs`` (autoencoder frozen first),
        ``max_epochs``, ``restart_cycles``, ``restart_mult``: see
        :class:`~astrobatch.tasks.finetune.FinetuneTask` (same defaults).

    Raises
    ------
    ValueError
        On inconsistent sizes or indices, two passes without a parallax
        feature, or the MLE term without a parallax label or its scale.
    """

    extra_terms = ("recon", "parallax_mle")

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
        seed: int = 0,
        label_names: Sequence[str] | None = None,
        **schedule: Any,
    ):
        nf, nl = model.n_features, head.n_labels
        if head.latent_dim != model.latent_dim:
            raise ValueError(
                f"head.latent_dim ({head.latent_dim}) != model.latent_dim ({model.latent_dim})"
            )
        force = column_indices(force_mask_idx, nf, "force_mask_idx")
        column_indices(xp_idx, nf, "xp_idx")
        if parallax_feature_idx is not None:
            column_indices([parallax_feature_idx], nf, "parallax_feature_idx")
        if parallax_label_idx is not None:
            column_indices([parallax_label_idx], nl, "parallax_label_idx")
        if two_pass_parallax and parallax_label_idx is not None and parallax_feature_idx is None:
            raise ValueError("two_pass_parallax needs parallax_feature_idx (the column to hide)")
        if parallax_mle_weight > 0 and (parallax_label_idx is None or parallax_label_scale is None):
            raise ValueError(
                "parallax_mle_weight > 0 needs parallax_label_idx and parallax_label_scale "
                "(mean, std) of the parallax label, mas"
            )
        super().__init__(model, head, label_names=label_names, **schedule)
        if recon_loss not in ("mae", "mse"):
            raise ValueError(f"recon_loss must be 'mae' or 'mse', got {recon_loss!r}")
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
                "seed": int(seed),
            }
        )
        hidden = torch.zeros(nf, dtype=torch.bool)
        hidden[force] = True
        self.register_buffer("_force", hidden, persistent=False)

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
    ) -> StellarXPFinetuneTask:
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
            head_only_epochs=finetune.head_only_epochs,
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

    def _hidden(self, x: Tensor) -> Tensor:
        return self._force.expand_as(x) | ~torch.isfinite(x)

    def encode(self, x: Tensor) -> Tensor:
        """Latents (B, latent_dim) of feature rows ``x`` (B, F), NaN = missing (pass A)."""
        return self._encode(x, self._hidden(x))

    def _quantiles(self, x: Tensor) -> Tensor:
        """Pass A (+ pass B): quantiles (B, L, 3) from inputs ``x`` (B, F), NaN = missing."""
        hidden = self._hidden(x)
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

    def forward(self, x: Tensor) -> Tensor:
        """Quantiles (B, L, 3) of the scaled labels from features ``x`` (B, F), two-pass parallax.

        The parallax label (if two-pass) comes from the pass with the parallax
        input hidden; see :meth:`predict_quantiles` for batches.
        """
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

    def compute_losses(self, batch, batch_idx: int, stage: str) -> dict[str, Tensor]:
        """Pinball (+ multitask reconstruction, + parallax MLE) terms of one batch.

        Returns
        -------
        dict of torch.Tensor
            ``loss`` (the weighted sum), ``pinball``, and ``recon`` /
            ``parallax_mle`` when their weights are positive; private
            ``_total``, ``_count`` (per label), ``_recon_w`` (scored positions).
        """
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
        out = self.pinball_losses(q, y)
        if h.recon_weight > 0:
            present = torch.isfinite(x)
            mask = make_pretrain_mask(
                present, h.xp_idx, h.xp_masking_ratio, h.m_masking_ratio, (), gen
            )
            hidden = mask | self._force.expand_as(x)
            R = self.model.n_recon
            recon = self.model.decode(self._encode(x_in, hidden | ~present))
            num, den = reconstruction_terms(
                recon, x[:, :R], mask[:, :R], None, h.recon_loss, None, 0.0
            )
            out["recon"] = num / den.clamp_min(torch.finfo(num.dtype).tiny)
            out["_recon_w"] = den
            out["loss"] = out["loss"] + h.recon_weight * out["recon"]
        if h.parallax_mle_weight > 0:
            out["parallax_mle"] = self._mle(q, batch)
            out["loss"] = out["loss"] + h.parallax_mle_weight * out["parallax_mle"]
        return out

    def eval_terms(self, out: dict[str, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
        """Loss and pinball (weighted by present labels), recon (by scored positions), MLE."""
        updates = super().eval_terms(out)
        if "recon" in out:
            updates["recon"] = (out["recon"], out["_recon_w"])
        if "parallax_mle" in out:
            updates["parallax_mle"] = (out["parallax_mle"], torch.ones_like(updates["loss"][1]))
        return updates
