"""stellar_xp pretrain and finetune: the masked autoencoder, then the quantile head.

Pretraining (:func:`pretrain`) fits :class:`~astrobatch.tasks.masked.MaskedReconstructionTask`
on the streamed pretraining shards; fine-tuning (:func:`finetune`) starts from its best
checkpoint and fits :class:`~astrobatch.studies.stellar_xp.finetune.StellarXPFinetuneTask` on
the labelled shards (encoder and head with separate learning rates, two-pass leakage-free
parallax). The modules come from :mod:`astrobatch.nn` built from plain arguments (this
module passes the params' fields), the objectives from :mod:`astrobatch.tasks`.
Both go through the shared driver :func:`astrobatch.train.train_model` (best/last checkpoints, early
stopping, DVCLive curves, auto-resume).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback

from astrobatch.data.scalers import load_table_scalers
from astrobatch.data.tables import TableDataModule
from astrobatch.errors import InputError
from astrobatch.io.atomic import read_manifest
from astrobatch.nn.autoencoder import MaskedAutoencoder
from astrobatch.nn.heads import QuantileHead
from astrobatch.studies.stellar_xp.columns import indices
from astrobatch.studies.stellar_xp.finetune import StellarXPFinetuneTask
from astrobatch.studies.stellar_xp.params import StellarXPParams
from astrobatch.study import StudyPaths
from astrobatch.tasks.finetune import load_pretrained_encoder
from astrobatch.tasks.masked import MaskedReconstructionTask
from astrobatch.train import train_model


def _inputs(prepared_dir: Path) -> list[Path]:
    return [prepared_dir / "manifest.json", prepared_dir / "scalers.json"]


def build_model(params: StellarXPParams, manifest: dict) -> MaskedAutoencoder:
    """The masked autoencoder of ``stellar_xp.model`` for the prepared feature set.

    Parameters
    ----------
    params : StellarXPParams
        ``model`` (passed field by field) and ``masking.mask_indicators``.
    manifest : dict
        The prepared ``manifest.json``: ``features`` (column names) and
        ``n_recon`` (reconstructed prefix length).

    Returns
    -------
    MaskedAutoencoder
    """
    return MaskedAutoencoder(
        n_features=len(manifest["features"]), n_recon=manifest["n_recon"],
        mask_indicators=params.masking.mask_indicators, **params.model.model_dump(),
    )  # fmt: skip


def force_mask_indices(params: StellarXPParams, manifest: dict) -> list[int]:
    """Column indices of ``masking.force_mask_cols``.

    Raises
    ------
    InputError
        A forced column that is not a feature.
    """
    missing = [c for c in params.masking.force_mask_cols if c not in manifest["features"]]
    if missing:
        raise InputError(
            f"force_mask_cols {missing} are not features", key="stellar_xp.masking.force_mask_cols"
        )
    return indices(manifest["features"], params.masking.force_mask_cols)


def build_pretrain_task(params: StellarXPParams, manifest: dict) -> MaskedReconstructionTask:
    """The masked-reconstruction task of params (weights seeded by ``params.seed``)."""
    L.seed_everything(params.seed, workers=True, verbose=False)
    m, p = params.masking, params.pretrain
    return MaskedReconstructionTask(
        build_model(params, manifest),
        xp_idx=manifest["xp_indices"], recon_idx=list(range(manifest["n_recon"])),
        force_mask_idx=force_mask_indices(params, manifest),
        xp_masking_ratio=m.xp_masking_ratio, m_masking_ratio=m.m_masking_ratio,
        fill_value=m.fill_value, perturb_errors=m.perturb_errors,
        loss=p.loss, error_weighted=p.error_weighted,
        lr=p.training.lr, weight_decay=p.training.weight_decay,
        max_epochs=p.training.max_epochs, seed=params.seed,
    )  # fmt: skip


def pretrain_config(params: StellarXPParams) -> list[dict]:
    """The params besides training and seed that determine the pretrained weights."""
    return [
        params.model.model_dump(), params.masking.model_dump(),
        params.pretrain.model_dump(exclude={"training"}),
    ]  # fmt: skip


def pretrain(
    params: StellarXPParams, paths: StudyPaths, callbacks: list[Callback] | None = None
) -> dict:
    """Pretrain the masked autoencoder on the streamed pretraining shards.

    Parameters
    ----------
    params : StellarXPParams
        ``model`` (embedding, widths, latent size), ``masking`` (XP-row and element-wise
        ratios), ``pretrain`` (loss, error weighting, training) and ``seed``.
    paths : StudyPaths
        Reads ``prepared`` (the folder ``astrobatch stellar-xp prepare`` wrote:
        ``pretrain_*.h5`` shards read chunk by chunk, ``scalers.json``, ``manifest.json``);
        writes ``models`` (``best.ckpt`` of the lowest masked-reconstruction ``val/loss``,
        ``last.ckpt``) and ``live`` (DVCLive curves of the masked-reconstruction loss).
    callbacks : list of lightning Callback, optional

    Returns
    -------
    dict
        The finished run's state (:func:`astrobatch.train.train_model`).

    Raises
    ------
    InputError
        Missing prepared data, or ``force_mask_cols`` that are not features.
    """
    prepared_dir, model_dir, live_dir = paths.need("prepared", "models", "live")
    manifest = read_manifest(prepared_dir)
    t = params.pretrain.training
    dm = TableDataModule(prepared_dir, "pretrain", t.batch_size, params.seed, t.num_workers)
    return train_model(
        lambda: build_pretrain_task(params, manifest), dm, t, model_dir, live_dir,
        seed=params.seed, config=pretrain_config(params),
        inputs=_inputs(prepared_dir), callbacks=callbacks,
    )  # fmt: skip


def parallax_label_scale(prepared_dir: Path, manifest: dict) -> tuple[float, float] | None:
    """(mean, std) in mas of the parallax label's StandardScaler, or None without parallax."""
    idx = manifest.get("parallax_label_index")
    if idx is None:
        return None
    _, labels = load_table_scalers(prepared_dir / "scalers.json")
    return float(labels.mean[idx]), float(labels.std[idx])


def build_finetune_task(
    params: StellarXPParams, manifest: dict, prepared_dir: Path, pretrained: MaskedAutoencoder
) -> StellarXPFinetuneTask:
    """The quantile fine-tuning task around a (pretrained) autoencoder."""
    L.seed_everything(params.seed + 1, workers=True, verbose=False)  # head weights
    head = QuantileHead(
        params.model.latent_dim, len(manifest["labels"]), hidden=params.finetune.head_hidden
    )
    return StellarXPFinetuneTask.from_params(
        pretrained, head, params.finetune, params.masking,
        xp_idx=manifest["xp_indices"],
        parallax_feature_idx=manifest.get("parallax_index"),
        parallax_label_idx=manifest.get("parallax_label_index"),
        parallax_label_scale=parallax_label_scale(prepared_dir, manifest),
        label_names=manifest["labels"], seed=params.seed,
    )  # fmt: skip


def finetune(
    params: StellarXPParams, paths: StudyPaths, callbacks: list[Callback] | None = None
) -> dict:
    """Fine-tune encoder + quantile head on the labelled shards.

    Parameters
    ----------
    params : StellarXPParams
        ``finetune``, ``masking``, ``model``, ``seed``.
    paths : StudyPaths
        Reads ``prepared`` (output of prepare) and ``pretrained`` (output of
        :func:`pretrain`, ``best.ckpt``); writes ``models`` (checkpoints, and copies of
        the training ``manifest.json`` and ``scalers.json``, so that the folder alone
        predicts) and ``live`` (DVCLive curves).
    callbacks : list of lightning Callback, optional

    Returns
    -------
    dict
        Final training state.

    Raises
    ------
    InputError
        Missing prepared data or pretrained checkpoint, or a checkpoint that
        does not match the model in params.
    """
    prepared_dir, pretrained_dir, model_dir, live_dir = paths.need(
        "prepared", "pretrained", "models", "live"
    )
    manifest = read_manifest(prepared_dir)
    ckpt = pretrained_dir / "best.ckpt"
    model = load_pretrained_encoder(build_model(params, manifest), ckpt)
    t = params.finetune.training
    dm = TableDataModule(prepared_dir, "finetune", t.batch_size, params.seed, t.num_workers)
    return train_model(
        lambda: build_finetune_task(params, manifest, prepared_dir, model), dm, t,
        model_dir, live_dir, seed=params.seed,
        config=[params.finetune.model_dump(exclude={"training"}), params.masking.model_dump()],
        inputs=[*_inputs(prepared_dir), ckpt], callbacks=callbacks,
        bundle=_inputs(prepared_dir),
    )  # fmt: skip
