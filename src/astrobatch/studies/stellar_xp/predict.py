"""stellar_xp predict: the fine-tuned model applied to real Gaia XP tables.

``astrobatch stellar-xp predict --model models/stellar_xp/finetune --input <file or folder>
--out <table.ecsv|table.fits>`` (:func:`predict`) reads every input as ``prepare`` reads
it, scales it with the scalers the model was trained with, and predicts the 16/50/84 %
quantiles of every label with the leakage-free two-pass parallax.

Inputs (files, or folders searched at any depth for ``.fits``, ``.fit``, ``.ecsv``,
``.csv``, optionally gzipped; other files are ignored)
    - Gaia DR3 XP coefficient tables in the flat or the archive layout, FITS, ECSV or CSV
      (:func:`astrobatch.io.gaia_xp.read_gaia_xp`, the reader of ``prepare``'s
      ``real_xp_paths``): the XP coefficients, and G, BP, RP where the file has them;
    - FITS tables in the fine-tuning layout (``source_id`` and any of the feature
      columns of :mod:`~astrobatch.studies.stellar_xp.columns`, by name); where such a
      table holds labels (``teff`` ... ``age``, and ``PARALLAX`` for the parallax) they
      are copied as ``<label>_reference``.

Missing features
    The model hides missing inputs exactly as in training (filled with
    ``masking.fill_value``, flagged when it has mask indicators), so a feature column
    that an input does not have is predicted from as missing (NaN), not an error. The
    feature groups absent from an input file are listed in ``meta["missing_feature_groups"]``
    (:data:`FEATURE_GROUPS`), and each row's count of present features is
    ``n_features``. The real XP chunk ``gaia_dr3_xp_continuous_chunk0.fits`` has the XP
    coefficients only: its labels come from the spectra alone, with the prior that the
    fine-tuning stars' photometry taught the model.

Scalers
    The feature order, the XP normalisation (``manifest.json``) and the fitted scalers
    (``scalers.json``) are read from the model folder, where the fine-tune stage keeps
    copies of the prepared ones (:func:`astrobatch.train.train_model` ``bundle``): the
    folder alone predicts. They are checked against the checkpoint (labels, XP columns,
    parallax column and the parallax label's scaler), so scalers of another preparation are
    refused instead of silently applied.

Output (:func:`predict`; an :class:`astropy.table.Table` the kit writes)
    ``source_id`` and ``file`` (ids), ``n_features``, then for every label ``q`` of the
    model: ``q`` (the median), ``q_p16``, ``q_p84`` and, where the input has it,
    ``q_reference``. Units: ``teff`` K, ``logg`` dimensionless (log10 of g in cm s^-2),
    ``fe_h`` and ``alpha`` dimensionless (dex), ``age`` Gyr, ``parallax`` mas.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from astrobatch.data.scalers import StandardScaler, load_table_scalers
from astrobatch.errors import InputError
from astrobatch.io.atomic import read_manifest
from astrobatch.io.fits_tables import fits_table_info, read_fits_table
from astrobatch.io.gaia_xp import layout as xp_layout
from astrobatch.io.gaia_xp import read_gaia_xp
from astrobatch.studies.stellar_xp.columns import (
    ASTROMETRY_COLS,
    BP_COLS,
    GAIA_BANDS,
    PS1_BANDS,
    RADEC_COLS,
    RP_COLS,
    SDSS_BANDS,
    SMSS_BANDS,
    SOURCE_ID,
    TMASS_BANDS,
    WISE_BANDS,
    label_source_column,
)
from astrobatch.studies.stellar_xp.params import StellarXPParams
from astrobatch.studies.stellar_xp.prepare import _check_finite_or_nan, _xe_from_block
from astrobatch.studies.stellar_xp.train import build_finetune_task, build_model

__all__ = [
    "FEATURE_GROUPS",
    "PREDICTION_UNITS",
    "absent_groups",
    "input_files",
    "load_finetuned",
    "physical_quantiles",
    "predict",
    "predict_quantiles",
    "read_input",
    "real_metrics",
    "scalers_folder",
]

log = logging.getLogger(__name__)

#: Feature groups named in ``meta["missing_feature_groups"]`` (short names: FITS cards).
FEATURE_GROUPS: dict[str, tuple[str, ...]] = {
    "wise": WISE_BANDS,
    "gaia_phot": GAIA_BANDS,
    "bp_xp": BP_COLS,
    "rp_xp": RP_COLS,
    "smss": SMSS_BANDS,
    "sdss": SDSS_BANDS,
    "ps1": PS1_BANDS,
    "2mass": TMASS_BANDS,
    "parallax": ("PARALLAX",),
    "ebv": ("EBV",),
    "pm": ASTROMETRY_COLS[2:],
    "radec": RADEC_COLS,
}
#: astropy unit strings of the predicted labels ("" = dimensionless: logg in log10 cgs,
#: fe_h and alpha in dex, written dex-free so that every format reads them back).
PREDICTION_UNITS: dict[str, str] = {
    "teff": "K", "logg": "", "fe_h": "", "alpha": "", "age": "Gyr", "parallax": "mas",
}  # fmt: skip
#: Input file suffixes a folder is searched for.
SUFFIXES = (".fits", ".fit", ".fits.gz", ".fit.gz", ".ecsv", ".ecsv.gz", ".csv", ".csv.gz")
_FITS = (".fits", ".fit", ".fits.gz", ".fit.gz")
#: Fewest rows an input file must have.
MIN_ROWS = 1


# ----------------------------------------------------------------------------------------------
# the model and its scalers
# ----------------------------------------------------------------------------------------------


def scalers_folder(model: Path) -> Path:
    """The model folder, after checking it holds ``manifest.json`` and ``scalers.json``.

    Parameters
    ----------
    model : pathlib.Path
        The model folder (or its checkpoint file).

    Returns
    -------
    pathlib.Path

    Raises
    ------
    InputError
        One of the two is missing (a model trained before the folder kept them).
    """
    folder = model if model.is_dir() else model.parent
    for name in ("manifest.json", "scalers.json"):
        if not (folder / name).is_file():
            raise InputError("expected the training manifest.json and scalers.json in the "
                             "model folder (re-run the finetune stage)", folder / name,
                             "--model")  # fmt: skip
    return folder


def load_finetuned(params: StellarXPParams, ckpt: str | Path, folder: str | Path, manifest=None):
    """The fine-tuned task with the weights of ``ckpt``, checked against its scalers.

    Parameters
    ----------
    params : StellarXPParams
        ``model``, ``masking`` and ``finetune`` rebuild the architecture (as training).
    ckpt : str or pathlib.Path
        ``best.ckpt`` of the fine-tune stage (loaded weights-only).
    folder : str or pathlib.Path
        Folder of the ``manifest.json`` and ``scalers.json`` the model was trained with
        (the prepared folder, or the model folder that bundles them).
    manifest : dict, optional
        Its manifest, when already read.

    Returns
    -------
    StellarXPFinetuneTask
        In eval mode, on the CPU.

    Raises
    ------
    InputError
        Missing or incompatible checkpoint, or a manifest / scalers pair that is not the
        one the checkpoint was trained with (labels, XP or parallax columns, the parallax
        label's scaler).
    """
    from astrobatch.tasks.checkpoints import load_checkpoint
    from astrobatch.train import load_model_weights

    folder = Path(folder)
    manifest = read_manifest(folder) if manifest is None else manifest
    task = build_finetune_task(params, manifest, folder, build_model(params, manifest))
    load_model_weights(task, ckpt, prefix="")
    saved = load_checkpoint(ckpt).get("hyper_parameters") or {}
    for key in ("label_names", "xp_idx", "parallax_feature_idx", "parallax_label_idx"):
        if key in saved and list(np.atleast_1d(saved[key])) != list(
            np.atleast_1d(task.hparams[key])
        ):
            raise InputError(
                f"the model was trained with {key}={saved[key]}, the manifest gives "
                f"{task.hparams[key]}: not the prepared data of this model",
                folder / "manifest.json", key,
            )  # fmt: skip
    mine, theirs = saved.get("parallax_label_scale"), task.hparams.parallax_label_scale
    if mine is not None and theirs is not None and not np.allclose(mine, theirs, rtol=1e-9):
        raise InputError(
            f"the parallax label scaler (mean, std) = {theirs} differs from the model's {mine}: "
            "these scalers are not the ones the model was trained with (prepare re-run?)",
            folder / "scalers.json", "labels",
        )  # fmt: skip
    return task.eval()


@torch.no_grad()
def predict_quantiles(task, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Quantiles of every label in scaled units, two-pass parallax included.

    Parameters
    ----------
    task : StellarXPFinetuneTask
    x : numpy.ndarray, shape (n, F), float32
        Scaled features in the manifest's order, NaN = missing.
    batch_size : int

    Returns
    -------
    numpy.ndarray, shape (n, L, 3), float64
        (q16, q50, q84) of the standard-scaled labels.
    """
    task.eval()
    out = []
    for a in range(0, len(x), batch_size):
        xb = torch.from_numpy(np.ascontiguousarray(x[a : a + batch_size], dtype=np.float32))
        out.append(task.predict_quantiles(xb).double().numpy())
    return np.concatenate(out)


def physical_quantiles(q: np.ndarray, labels: StandardScaler) -> np.ndarray:
    """Scaled quantiles (n, L, 3) -> physical units (label order of the scaler)."""
    mean, std = np.asarray(labels.mean), np.asarray(labels.std)
    return q * std[None, :, None] + mean[None, :, None]


# ----------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------


def input_files(inputs: Sequence[Path]) -> list[Path]:
    """The files of ``inputs``: files as given, folders searched for :data:`SUFFIXES`.

    Raises
    ------
    InputError
        A folder without any such file.
    """
    files: list[Path] = []
    for p in map(Path, inputs):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*")
                           if f.is_file() and f.name.lower().endswith(SUFFIXES))  # fmt: skip
            if not found:
                raise InputError(f"no Gaia XP table ({', '.join(SUFFIXES)}) in the folder", p,
                                 "--input")  # fmt: skip
            files += found
        else:
            files.append(p)
    return files


def read_input(path: Path, features: Sequence[str], labels: Sequence[str],
               xp_normalisation: str) -> dict:  # fmt: skip
    """One input file as the model's raw feature matrix, with ids and reference labels.

    Parameters
    ----------
    path : pathlib.Path
        A Gaia XP table (flat or archive layout; FITS, ECSV, CSV) or a FITS table in the
        fine-tuning layout.
    features : sequence of str
        The model's feature columns (manifest order).
    labels : sequence of str
        The model's labels (their columns are copied as references where present).
    xp_normalisation : {"none", "flux"}
        As in prepare (the manifest's).

    Returns
    -------
    dict
        ``source_id`` (n,) int64; ``x`` (n, F) float64, unscaled, XP normalised, NaN =
        missing; ``reference`` {label: (n,) float64} for the labels the file has;
        ``ra``, ``dec`` (n,) float64 deg or None; ``absent`` (feature columns the file
        does not have).

    Raises
    ------
    InputError
        Unreadable file; neither an XP layout nor any feature column; no ``source_id``;
        infinite feature values; fewer than :data:`MIN_ROWS` rows.
    """
    name = path.name.lower()
    if name.endswith(_FITS):
        _, names = fits_table_info(path)
        if not xp_layout(names):
            return _read_feature_table(path, names, features, labels, xp_normalisation)
    df = read_gaia_xp(path)  # the reader (and the checks) of prepare's real_xp_paths
    cols = {c: df[c].to_numpy() for c in df.columns}
    return _finish(path, cols, features, labels, xp_normalisation)


def _read_feature_table(path, names, features, labels, xp_normalisation) -> dict:
    have = [f for f in features if f in names]
    if not have:
        raise InputError(
            "expected a Gaia XP table (flat columns bp_coeff_0..bp_coeff_54, e_bp_coeff_i, "
            "rp_coeff_i, e_rp_coeff_i, or archive columns bp_coefficients, "
            "bp_coefficient_errors, rp_coefficients, rp_coefficient_errors) or a table in "
            f"the fine-tuning layout (feature columns such as {', '.join(features[:5])}, "
            f"bp_1 ..); found {sorted(names)[:12]}",
            path, "bp_coefficients",
        )  # fmt: skip
    if SOURCE_ID not in names:
        raise InputError("missing column; expected int64 source ids", path, SOURCE_ID)
    extra = [label_source_column(lab) for lab in labels] + ["RA", "DEC", "ra", "dec"]
    want = list(dict.fromkeys([SOURCE_ID, *have, *(c for c in extra if c in names)]))
    cols = read_fits_table(path, want)
    return _finish(path, cols, features, labels, xp_normalisation)


def _finish(path, cols: dict, features, labels, xp_normalisation) -> dict:
    n = len(cols[SOURCE_ID])
    if n < MIN_ROWS:
        raise InputError(f"{n} rows found; at least {MIN_ROWS} source (row) needed to predict",
                         path, SOURCE_ID)  # fmt: skip
    try:
        ids = np.asarray(cols[SOURCE_ID]).astype(np.int64)
    except (TypeError, ValueError) as err:
        raise InputError(f"expected integer source ids ({err})", path, SOURCE_ID) from None
    x, _ = _xe_from_block(cols, list(features), [], xp_normalisation)
    _check_finite_or_nan(x, list(features), path, None, "feature")
    ref = {}
    for lab in labels:
        c = label_source_column(lab)
        if c in cols:
            ref[lab] = np.asarray(cols[c], dtype=np.float64)
    ra = next((cols[c] for c in ("ra", "RA") if c in cols), None)
    dec = next((cols[c] for c in ("dec", "DEC") if c in cols), None)
    if ra is None or dec is None:
        ra = dec = None
    return {
        "source_id": ids,
        "x": x,
        "reference": ref,
        "ra": None if ra is None else np.asarray(ra, np.float64),
        "dec": None if dec is None else np.asarray(dec, np.float64),
        "absent": [f for f in features if f not in cols],
    }


def absent_groups(features: Sequence[str], absent: Sequence[str]) -> list[str]:
    """The :data:`FEATURE_GROUPS` among ``features`` whose every column is ``absent``.

    Examples
    --------
    >>> from astrobatch.studies.stellar_xp.columns import feature_names, XP_COLS
    >>> f = feature_names()
    >>> absent_groups(f, [c for c in f if c not in XP_COLS])[:3]
    ['wise', 'gaia_phot', 'smss']
    """
    gone = set(absent)
    out = []
    for g, cols in FEATURE_GROUPS.items():
        mine = [c for c in cols if c in features]
        if mine and all(c in gone for c in mine):
            out.append(g)
    return out


# ----------------------------------------------------------------------------------------------
# predict
# ----------------------------------------------------------------------------------------------


def predict(params: StellarXPParams, model: Path, inputs: Sequence[Path],
            batch_size: int = 1024):  # fmt: skip
    """Predict the stellar labels of real sources (see the module docstring).

    Parameters
    ----------
    params : StellarXPParams
        ``model``, ``masking``, ``finetune`` (the architecture, as in training).
    model : pathlib.Path
        The fine-tuned model folder (``best.ckpt``) or a checkpoint file.
    inputs : sequence of pathlib.Path
        Files or folders (module docstring).
    batch_size : int
        Rows per forward pass.

    Returns
    -------
    astropy.table.Table
        One row per input row, in input order: ``source_id`` (int64), ``file`` (str),
        ``ra``, ``dec`` (deg, when every input has them), ``n_features`` (present
        features, dimensionless), and per label ``q``, ``q_p16``, ``q_p84`` (float64,
        units of :data:`PREDICTION_UNITS`) and ``q_reference`` where an input has the label
        (NaN in rows of inputs that do not). ``meta``: ``id_columns``, ``labels``,
        ``quantiles``, ``missing_feature_groups``, ``scalers`` and, with references,
        ``reference``.

    Raises
    ------
    InputError
        Bad input (:func:`read_input`), missing or mismatched checkpoint or scalers.
    """
    from astropy import units as u
    from astropy.table import Column, Table

    model = Path(model)
    ckpt = model / "best.ckpt" if model.is_dir() else model
    folder = scalers_folder(model)
    manifest = read_manifest(folder)
    features, labels = list(manifest["features"]), list(manifest["labels"])
    fscaler, lscaler = load_table_scalers(folder / "scalers.json")
    if list(fscaler.features) != features:
        raise InputError("the feature scaler's columns differ from the manifest's features",
                         folder / "scalers.json", "features")  # fmt: skip
    if lscaler is None:
        raise InputError("no label scaler (expected one per label)", folder / "scalers.json",
                         "labels")  # fmt: skip
    xp_norm = manifest.get("xp_normalisation", "none")

    parts, missing_groups = [], set()
    for f in input_files(inputs):
        part = read_input(f, features, labels, xp_norm)
        part["file"] = f.name
        groups = absent_groups(features, part["absent"])
        missing_groups.update(groups)
        log.info("%s: %d sources; feature groups absent (predicted as missing): %s", f,
                 len(part["source_id"]), ", ".join(groups) or "none")  # fmt: skip
        parts.append(part)
    task = load_finetuned(params, ckpt, folder, manifest)

    x = np.concatenate([p["x"] for p in parts])
    q = physical_quantiles(predict_quantiles(task, fscaler.transform(x), batch_size), lscaler)

    t = Table()
    t["source_id"] = np.concatenate([p["source_id"] for p in parts])
    t["file"] = np.concatenate([np.full(len(p["source_id"]), p["file"]) for p in parts])
    if all(p["ra"] is not None for p in parts):
        t["ra"] = np.concatenate([p["ra"] for p in parts]) * u.deg
        t["dec"] = np.concatenate([p["dec"] for p in parts]) * u.deg
    t["n_features"] = Column(np.isfinite(x).sum(axis=1).astype(np.int16),
                             unit=u.dimensionless_unscaled)  # fmt: skip
    has_ref = set().union(*(p["reference"] for p in parts))
    for i, lab in enumerate(labels):
        unit = u.Unit(PREDICTION_UNITS.get(lab, ""))
        t[lab] = q[:, i, 1] * unit
        t[f"{lab}_p16"] = q[:, i, 0] * unit
        t[f"{lab}_p84"] = q[:, i, 2] * unit
        if lab in has_ref:
            t[f"{lab}_reference"] = np.concatenate([
                p["reference"].get(lab, np.full(len(p["source_id"]), np.nan)) for p in parts
            ]) * unit  # fmt: skip
    t.meta["id_columns"] = ["source_id", "file"]
    t.meta["labels"] = labels
    t.meta["quantiles"] = "q = 50 %, q_p16 = 16 %, q_p84 = 84 % (parallax: two-pass, input hidden)"
    t.meta["missing_feature_groups"] = [g for g in FEATURE_GROUPS if g in missing_groups]
    t.meta["scalers"] = str(folder / "scalers.json")
    if has_ref:
        t.meta["reference"] = ("the input table's label columns (parallax_reference: its "
                               "Gaia PARALLAX)")  # fmt: skip
    return t


def real_metrics(table, labels: Sequence[str]) -> dict[str, float]:
    """Summary ``real/`` metrics of a prediction table of real sources without labels.

    Parameters
    ----------
    table : astropy.table.Table
        Written by :func:`predict` (read back with
        :func:`astrobatch.io.predictions.read_predictions`).
    labels : sequence of str
        The model's labels; the first is summarised.

    Returns
    -------
    dict
        ``real/n_sources`` (rows) and ``real/<first label>/median`` (median of its
        predicted median over the rows, in the label's unit, e.g. K for teff).

    Raises
    ------
    InputError
        The table has no column of the first label (key: its name).

    Examples
    --------
    >>> from astropy.table import Table
    >>> real_metrics(Table({"teff": [5000.0, 6000.0, 7000.0]}), ["teff"])
    {'real/n_sources': 3, 'real/teff/median': 6000.0}
    """
    lab = next(iter(labels))
    if lab not in table.colnames:
        raise InputError(f"expected a column of predicted {lab}; found {table.colnames[:8]}",
                         key=lab)  # fmt: skip
    v = np.asarray(table[lab], dtype=np.float64)
    return {"real/n_sources": len(table), f"real/{lab}/median": float(np.nanmedian(v))}
