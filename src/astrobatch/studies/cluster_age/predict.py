"""cluster_age predict: the trained CNN applied to raw cutout files that took no part in the splits.

``astrobatch cluster-age predict --model models/cluster_age --input <file.h5 or folder>
--out reports/real/cluster_age.ecsv`` reads raw cutout files in the PHANGS-HST layout
(``raw_phangs_dataset.h5``; a folder contributes its ``*.h5`` files, sorted), validated by
:func:`astrobatch.io.cutouts.open_cutouts` as ``prepare`` validates them, crops the central
``crop_size`` pixels as ``prepare`` does (the training crop, from the training manifest), applies
the training mask, stacking, stretch and normalisation
(:func:`~astrobatch.studies.cluster_age.train.base_transform` with the statistics saved by
train) and unscales the output with the training target min/max
(:func:`~astrobatch.studies.cluster_age.train.unscale_target`): the same path as
``evaluate`` takes through the prepared shards, so the prediction of a cutout is the same
whether it comes from a shard or from a raw file.

The model folder is what ``train`` wrote: ``best.ckpt`` (weights only, loaded by
:func:`astrobatch.train.load_model_weights`), ``normalisation.json`` and a copy of the
training ``manifest.json`` (target min/max, crop size, bands): the folder alone predicts.

:func:`astrobatch.studies.cluster_age.evaluate.cross_galaxy_metrics` turns such a table into
the ``cross_galaxy/...`` metrics of ``evaluate``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from astrobatch.errors import InputError
from astrobatch.studies.cluster_age.params import ClusterAgeParams

__all__ = [
    "REFERENCE",
    "AgePredictor",
    "cutout_files",
    "load_predictor",
    "predict",
]

log = logging.getLogger(__name__)

#: What ``log_age_reference`` is (``meta["reference"]`` of the table).
REFERENCE = (
    "cluster_log_ages of the input file: the SED-fit age of the LEGUS catalogue cluster the "
    "cutout was simulated from (jittered), or of the real catalogue for real PHANGS files"
)
#: Settings of ``normalisation.json`` that the params must repeat (the model's input path).
TRANSFORM_KEYS = {
    "input": "model.input",
    "normalisation": "training.normalisation",
    "stretch": "training.stretch",
    "asinh_scale": "training.asinh_scale",
    "mask": "mask",
}


def cutout_files(inputs: Iterable[str | Path]) -> list[Path]:
    """The raw cutout files of ``inputs``: files as given, folders' ``*.h5`` files sorted.

    Parameters
    ----------
    inputs : iterable of str or pathlib.Path
        Files or folders.

    Returns
    -------
    list of pathlib.Path

    Raises
    ------
    InputError
        A folder without ``*.h5`` files, or a path that does not exist.
    """
    files: list[Path] = []
    for path in map(Path, inputs):
        if path.is_dir():
            found = sorted(p for p in path.glob("*.h5") if p.is_file())
            if not found:
                raise InputError("expected raw cutout files (*.h5) in the folder", path, "*.h5")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise InputError("expected an existing file or folder", path, "--input")
    return files


@dataclass(frozen=True)
class AgePredictor:
    """A trained CNN with its input path: raw cutouts -> log10 age / yr.

    Attributes
    ----------
    model : astrobatch.nn.cnn.AgeCNN
        In eval mode, on the CPU.
    transform : astrobatch.data.images.CutoutTransform
        Mask, stacking, stretch and normalisation with the training statistics.
    manifest : dict
        The training manifest: ``target_min``, ``target_max`` (log10 yr), ``crop_size``
        (pixels), ``bands``.
    batch_size : int
        Cutouts per forward pass (the evaluate batch size).
    """

    model: object
    transform: object
    manifest: dict
    batch_size: int

    @property
    def crop_size(self) -> int:
        """Side of the model's input, pixels (the training crop)."""
        return int(self.manifest["crop_size"])

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Predict raw cutouts.

        Parameters
        ----------
        images : numpy.ndarray, shape (B, C, H, H), float32
            Raw cutouts (``image_cutouts`` units), H >= :attr:`crop_size`, C the training bands.

        Returns
        -------
        numpy.ndarray, shape (B,), float64
            log10 age / yr.
        """
        import torch

        from astrobatch.studies.cluster_age.prepare import _crop
        from astrobatch.studies.cluster_age.train import unscale_target
        from astrobatch.tasks.regression import predict as run_model

        x = self.transform(_crop(np.asarray(images, np.float32), self.crop_size))
        batch = {"x": torch.from_numpy(np.ascontiguousarray(x, np.float32)),
                 "y": torch.zeros(len(x)), "row": torch.arange(len(x))}  # fmt: skip
        out = run_model(self.model, [batch])
        return unscale_target(out["prediction"], self.manifest)


def _training_manifest(model_dir: Path) -> dict:
    from astrobatch.io.atomic import read_manifest

    if not (model_dir / "manifest.json").is_file():
        raise InputError("no training manifest in the model folder (re-run the train stage)",
                         model_dir / "manifest.json", "--model")  # fmt: skip
    return dict(read_manifest(model_dir, require=("target_min", "target_max", "crop_size",
                                                  "bands")))  # fmt: skip


def _check_transform(params: ClusterAgeParams, path: Path) -> None:
    """The params' input path must be the one the model was trained with."""
    from astrobatch.io.errors import reading

    with reading(path, "normalisation file written by train (JSON)", "stats"):
        saved = json.loads(path.read_text())
    for key, dotted in TRANSFORM_KEYS.items():
        if key not in saved:
            continue
        node = params
        for part in dotted.split("."):
            node = getattr(node, part)
        now = node.model_dump() if hasattr(node, "model_dump") else node
        if now != saved[key]:
            raise InputError(
                f"the model was trained with {key} = {saved[key]!r}, params say "
                f"cluster_age.{dotted} = {now!r} (use the params of the training run)",
                path, key,
            )  # fmt: skip


def load_predictor(params: ClusterAgeParams, model_dir: str | Path) -> AgePredictor:
    """Load the trained CNN of ``model_dir`` with the input path it was trained with.

    Parameters
    ----------
    params : ClusterAgeParams
        ``model`` (the architecture), ``mask`` and ``training`` (checked against
        ``normalisation.json``), ``training.batch_size``.
    model_dir : str or pathlib.Path
        ``best.ckpt``, ``normalisation.json`` and ``manifest.json`` (kept there by train).

    Returns
    -------
    AgePredictor

    Raises
    ------
    InputError
        Missing checkpoint, normalisation file or training manifest; params whose input
        settings differ from the model's; a checkpoint that does not match ``model``.
    """
    from astrobatch.nn.cnn import AgeCNN
    from astrobatch.studies.cluster_age.train import NORM_FILE, base_transform, load_norm_stats
    from astrobatch.train import load_model_weights

    model_dir = Path(model_dir)
    stats = load_norm_stats(model_dir)
    _check_transform(params, model_dir / NORM_FILE)
    manifest = _training_manifest(model_dir)
    m = params.model
    in_ch = 1 if m.input == "1im" else len(manifest["bands"])
    model = load_model_weights(
        AgeCNN(in_ch, int(manifest["crop_size"]), m.conv_channels, m.dense_units, m.dropout),
        model_dir / "best.ckpt",
    )  # fmt: skip
    return AgePredictor(model, base_transform(params, stats), manifest,
                        params.training.batch_size)  # fmt: skip


def _predict_file(predictor: AgePredictor, path: Path) -> dict[str, np.ndarray]:
    from astrobatch.io.cutouts import open_cutouts

    with open_cutouts(path) as raw:
        bands = list(predictor.manifest["bands"])
        if raw.n_channels != len(bands):
            raise InputError(
                f"expected {len(bands)} channels ({', '.join(bands)}: the model's training "
                f"bands), got {raw.n_channels}", path, "image_cutouts",
            )  # fmt: skip
        if raw.n < 1:
            raise InputError("too few cutouts: found 0, the model needs at least 1", path,
                             "image_cutouts")  # fmt: skip
        need = predictor.crop_size
        if raw.image_size < need:
            raise InputError(
                f"cutouts too small for the model: found {raw.image_size} x {raw.image_size} "
                f"pixels, it needs at least {need} x {need} (its training crop, "
                "cluster_age.data.crop_size)", path, "image_cutouts",
            )  # fmt: skip
        pred = np.concatenate([predictor(block) for _, _, block in
                               raw.iter_blocks(predictor.batch_size)])  # fmt: skip
        return {
            "cluster_id": raw.cluster_ids.astype(np.int64),
            "galaxy_id": np.asarray(raw.galaxy_ids, dtype=str),
            "log_age": pred,
            "log_age_reference": raw.log_ages.astype(np.float64),
        }


def predict(
    params: ClusterAgeParams,
    model_dir: str | Path,
    inputs: Sequence[str | Path],
):
    """Predict the log age of every cutout of ``inputs`` (module docstring).

    Parameters
    ----------
    params : ClusterAgeParams
        As trained: ``model``, ``mask``, ``training`` (see :func:`load_predictor`).
    model_dir : str or pathlib.Path
        The train stage's folder.
    inputs : sequence of str or pathlib.Path
        Raw cutout files (``raw_phangs_dataset.h5`` layout) or folders of them.

    Returns
    -------
    astropy.table.Table
        One row per cutout, in file order: ``file`` (name of the input file), ``galaxy_id``,
        ``cluster_id`` (ids); ``log_age`` (log10(age / yr), dimensionless), ``age`` (yr) and
        ``log_age_reference`` (the file's ``cluster_log_ages``, log10(age / yr)). No
        uncertainty: the model is one MSE regression. ``meta``: ``id_columns``,
        ``reference``, ``log_age``, ``training_log_age_range`` (the training targets' min and
        max, log10 yr: predictions outside it are extrapolations).

    Raises
    ------
    InputError
        A missing or malformed input file (naming the key), cutouts smaller than the
        training crop, other channels than the training bands, an empty folder; see
        :func:`load_predictor` for the model folder.
    """
    import astropy.units as u
    from astropy.table import Table

    files = cutout_files(inputs)
    predictor = load_predictor(params, model_dir)
    parts = [(f, _predict_file(predictor, f)) for f in files]
    cols = {k: np.concatenate([d[k] for _, d in parts]) for k in parts[0][1]}
    table = Table()
    table["file"] = np.concatenate([np.full(len(d["log_age"]), f.name) for f, d in parts])
    table["galaxy_id"] = cols["galaxy_id"]
    table["cluster_id"] = cols["cluster_id"]
    table["log_age"] = cols["log_age"] * u.dimensionless_unscaled
    table["age"] = 10.0 ** cols["log_age"] * u.yr
    table["log_age_reference"] = cols["log_age_reference"] * u.dimensionless_unscaled
    table["log_age"].description = "predicted log10(age / yr)"
    table["age"].description = "predicted age, 10**log_age"
    table["log_age_reference"].description = "log10(age / yr) of the input file"
    m = predictor.manifest
    table.meta.update({
        "id_columns": ["file", "galaxy_id", "cluster_id"],
        "reference": REFERENCE,
        "log_age": "log10(age / yr)",
        "training_log_age_range": [float(m["target_min"]), float(m["target_max"])],
    })  # fmt: skip
    return table
