"""cluster_age train: the CNN on masked, normalised cutouts, through the shared driver.

Targets are min-max scaled with the training split's min and max of log age
(``manifest.json``) and unscaled before any metric. ``training.shuffle_targets``
permutes the training and validation targets (seeded): the control run, whose
model must fall to the baselines. Normalisation statistics (``filter``,
``dataset``) are taken over the masked training images only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from lightning.pytorch.callbacks import Callback

from astrobatch.data.images import (
    CutoutDataModule,
    CutoutShardDataset,
    CutoutTransform,
    NormStats,
    fit_norm_stats,
    open_shard,
)
from astrobatch.errors import InputError
from astrobatch.io.atomic import read_manifest, write_json
from astrobatch.io.errors import reading
from astrobatch.nn.cnn import AgeCNN
from astrobatch.studies.cluster_age.params import ClusterAgeParams
from astrobatch.study import StudyPaths
from astrobatch.tasks.regression import RegressionTask
from astrobatch.train import train_model

SPLITS = ("train", "val", "test")
NORM_FILE = "normalisation.json"


def read_log_age(prepared_dir: str | Path, split: str) -> np.ndarray:
    """log10 age (yr) of a split, float64 (n,)."""
    path = Path(prepared_dir) / f"{split}.h5"
    with open_shard(path) as f:
        if "log_age" not in f:
            raise InputError("missing dataset (expected (n,) float32, log10 yr)", path, "log_age")
        return f["log_age"][:].astype(np.float64)


def scale_target(log_age: np.ndarray, manifest: dict) -> np.ndarray:
    """Min-max scale log age with the training min/max: (a - min) / (max - min)."""
    lo, hi = manifest["target_min"], manifest["target_max"]
    return ((log_age - lo) / max(hi - lo, 1e-12)).astype(np.float32)


def unscale_target(y: np.ndarray, manifest: dict) -> np.ndarray:
    """Inverse of :func:`scale_target`: log10 age, yr."""
    lo, hi = manifest["target_min"], manifest["target_max"]
    return np.asarray(y, np.float64) * (hi - lo) + lo


def base_transform(params: ClusterAgeParams, stats: NormStats | None = None) -> CutoutTransform:
    """Mask, stacking, stretch and normalisation of params (statistics attached if given)."""
    t = params.training
    return CutoutTransform(
        params.mask.type, params.mask.radius, params.model.input, t.normalisation, stats,
        t.stretch, t.asinh_scale,
    )  # fmt: skip


def make_transform(params: ClusterAgeParams, prepared_dir: str | Path) -> CutoutTransform:
    """The transform with statistics of the masked training images (``filter``, ``dataset``)."""
    t = base_transform(params)
    if params.training.normalisation not in ("filter", "dataset"):
        return t
    with open_shard(Path(prepared_dir) / "train.h5") as f:
        images = f["images"]
        step = int((images.chunks or (256,))[0]) * 4
        stats = fit_norm_stats(
            t.masked(images[a : a + step]) for a in range(0, images.shape[0], step)
        )
    return t.with_stats(stats)


def make_datasets(
    params: ClusterAgeParams,
    prepared_dir: str | Path,
    transform: CutoutTransform,
    for_training: bool,
) -> dict[str, CutoutShardDataset]:
    """Datasets of the three splits.

    Parameters
    ----------
    for_training : bool
        True: augmentation on train (``training.augment``) and, for the
        control (``training.shuffle_targets``), permuted train/val targets.
        False: plain inputs and true targets (evaluation).
    """
    prepared_dir = Path(prepared_dir)
    manifest = read_manifest(prepared_dir)
    out = {}
    for i, split in enumerate(SPLITS):
        y = scale_target(read_log_age(prepared_dir, split), manifest)
        if for_training and params.training.shuffle_targets and split != "test":
            y = np.random.default_rng((params.seed, 7919, i)).permutation(y)
        out[split] = CutoutShardDataset(
            prepared_dir / f"{split}.h5", transform, y,
            augment=for_training and split == "train" and params.training.augment,
            seed=params.seed,
        )  # fmt: skip
    return out


def build_model(params: ClusterAgeParams, prepared_dir: str | Path) -> AgeCNN:
    """The CNN for the prepared cutout size and the chosen input (1im / 5im)."""
    path = Path(prepared_dir) / "train.h5"
    with open_shard(path) as f:
        _, c, s, _ = f["images"].shape
    in_ch = 1 if params.model.input == "1im" else c
    m = params.model
    return AgeCNN(in_ch, s, m.conv_channels, m.dense_units, m.dropout)


def load_norm_stats(model_dir: str | Path) -> NormStats | None:
    """Normalisation statistics saved by :func:`train` (None for per-instance ones)."""
    path = Path(model_dir) / NORM_FILE
    if not path.is_file():
        raise InputError("missing file (run train first)", path)
    with reading(path, "normalisation file written by train (JSON)", "stats"):
        d = json.loads(path.read_text())
        return NormStats.from_dict(d["stats"]) if d.get("stats") else None


def train(
    params: ClusterAgeParams, paths: StudyPaths, callbacks: list[Callback] | None = None
) -> dict:
    """Train the cluster_age CNN on masked, stretched and normalised cutouts.

    Parameters
    ----------
    params : ClusterAgeParams
        ``mask`` (blackout type and radius), ``model`` (1im/5im, widths), ``training``
        (normalisation, stretch, augmentation, control, optimiser) and ``seed``.
    paths : StudyPaths
        Reads ``prepared`` (the folder ``astrobatch cluster-age prepare`` wrote:
        ``{train,val,test}.h5`` with ``images`` and ``log_age``, ``manifest.json`` with the
        target's min and max); writes ``models`` (``best.ckpt``, ``last.ckpt``,
        ``train_state.json``, ``normalisation.json``, the statistics of the masked
        training images, and a copy of the training ``manifest.json``: the folder alone
        predicts) and ``live`` (DVCLive curves of the MSE on min-max scaled log age).
    callbacks : list of lightning Callback, optional

    Returns
    -------
    dict
        The finished run's state: best val loss, epochs trained, resumed or not.

    Raises
    ------
    InputError
        A missing manifest or shard, or a shard without ``images``/``log_age``.
    """
    prepared_dir, model_dir, live_dir = paths.need("prepared", "models", "live")
    read_manifest(prepared_dir)
    transform = make_transform(params, prepared_dir)
    datasets = make_datasets(params, prepared_dir, transform, for_training=True)
    t = params.training
    dm = CutoutDataModule(datasets, t.batch_size, params.seed, t.num_workers)

    def build_task() -> RegressionTask:
        model = build_model(params, prepared_dir)
        return RegressionTask(model, t.lr, t.weight_decay, t.huber_delta, t.max_epochs, loss=t.loss)

    state = train_model(
        build_task, dm, t, model_dir, live_dir, seed=params.seed,
        config=[params.mask.model_dump(), params.model.model_dump()],
        inputs=[prepared_dir / "manifest.json"], callbacks=callbacks,
        bundle=[prepared_dir / "manifest.json"],
    )  # fmt: skip
    write_json(
        Path(model_dir) / NORM_FILE,
        {
            "normalisation": t.normalisation,
            "stretch": t.stretch,
            "asinh_scale": t.asinh_scale,
            "input": params.model.input,
            "mask": params.mask.model_dump(),
            "stats": transform.stats.to_dict() if transform.stats else None,
        },
    )
    return state
