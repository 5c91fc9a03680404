"""morphology predict: the fine-tuned ViT applied to real Galaxy Zoo catalogues and images.

``astrobatch morphology predict --model models/morphology/full --input <catalogue or folder>
--out <table.ecsv|.fits>`` reads each input as ``prepare`` reads a catalogue
(:func:`.catalogues.read_catalogue`: GZ DECaLS or GZ2 names, CSV/FITS/parquet, ids, image
paths, counts and fractions checked; :func:`.prepare.check_images`: every image present
before any is decoded), decodes and resizes the images exactly as the prepared shards store
them (:func:`.prepare.read_images`, the trained ``image_size`` and ``data.fits_stretch``),
normalises them as training did (:func:`.train.image_transform`) and runs the model
(:func:`predict_batches`, the one forward pass that ``evaluate`` uses too).

The model's answer schema (answers, questions, image size) is the prepared
``manifest.json`` it was trained on, which the train stages keep in the model folder
(``<model>/manifest.json``, :func:`model_schema`): the folder alone predicts. Checkpoints are loaded
weights-only (:func:`astrobatch.train.load_model_weights`); nothing is downloaded.

The table (:func:`predict`), one row per galaxy: ``catalogue`` and ``galaxy_id`` (the
ids), ``survey``, ``image``, ``ra``/``dec`` (deg) when the catalogue has them; per answer
``<question>_<answer>`` the predicted vote fraction, ``<...>_std`` the Dirichlet standard
deviation of that fraction (``loss: dirichlet`` only), ``<...>_reference`` the volunteers'
fraction when the catalogue gives counts or fractions; ``<question>_votes`` the volunteers'
votes on the question when it gives counts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from astrobatch.errors import InputError
from astrobatch.studies.morphology.catalogues import (
    SHOW,
    Catalogue,
    read_catalogue,
    read_table,
)
from astrobatch.studies.morphology.params import MorphologyParams
from astrobatch.studies.morphology.prepare import check_images, read_images
from astrobatch.studies.morphology.schema import DECALS
from astrobatch.tasks.votes import expected_fractions

log = logging.getLogger(__name__)

#: Catalogue suffixes looked for at the top of an input folder.
CATALOGUE_SUFFIXES = (".csv", ".parquet", ".pq", ".fits", ".fit")
#: Galaxies an input needs at least (one image is enough for the model).
MIN_GALAXIES = 1
REFERENCE = (
    "volunteers' vote fractions of the input catalogue: count / question total where it gives "
    "vote counts, else its <answer>_fraction columns"
)


# -- the forward pass (shared with evaluate) -------------------------------------------------


@torch.inference_mode()
def predict_batches(task, batches: Iterable[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Predicted vote fractions and raw model outputs for batches of normalised images.

    Parameters
    ----------
    task : astrobatch.studies.morphology.train.VoteTask
        Backbone + vote head; put in eval mode here.
    batches : iterable of torch.Tensor, shape (B, 3, S, S), float32
        Images normalised as in training (:func:`.train.image_transform`), or ``(B, D)``
        backbone embeddings.

    Returns
    -------
    fractions : numpy.ndarray, shape (n, A), float64
        Predicted fractions; with ``loss: dirichlet`` the Dirichlet mean
        ``alpha_a / alpha_0`` of each answer's question.
    raw : numpy.ndarray, shape (n, A), float64
        The head's outputs: the fractions (``mse``) or the concentrations ``alpha``.
    """
    task.eval()
    fr, raw = [], []
    for x in batches:
        out = task(x)  # one forward pass; Dirichlet fractions are its normalised mean
        raw.append(out.double().numpy())
        f = expected_fractions(out, task.qindex, task.n_questions) if task.kind == "dirichlet" \
            else out  # fmt: skip
        fr.append(f.double().numpy())
    n = task.qindex.numel()
    if not fr:
        return np.zeros((0, n)), np.zeros((0, n))
    return np.concatenate(fr), np.concatenate(raw)


def dirichlet_std(concentration: np.ndarray, question_index: Sequence[int]) -> np.ndarray:
    """Standard deviation of each answer's fraction under its question's Dirichlet.

    The marginal of answer ``a`` is Beta(``alpha_a``, ``alpha_0 - alpha_a``), so
    ``std = sqrt(alpha_a (alpha_0 - alpha_a) / (alpha_0**2 (alpha_0 + 1)))``, ``alpha_0``
    the sum of the question's concentrations (Walmsley et al. 2022, arXiv:2102.08414).

    Parameters
    ----------
    concentration : numpy.ndarray, shape (n, A), float, > 0
    question_index : sequence of int, shape (A,)

    Returns
    -------
    numpy.ndarray, shape (n, A), float64

    Examples
    --------
    >>> dirichlet_std(np.array([[1.0, 1.0]]), [0, 0]).round(4).tolist()
    [[0.2887, 0.2887]]
    """
    a = np.asarray(concentration, np.float64)
    q = np.asarray(question_index)
    a0 = np.zeros((len(a), int(q.max()) + 1))
    np.add.at(a0.T, q, a.T)
    a0 = a0[:, q]
    return np.sqrt(a * (a0 - a) / (a0**2 * (a0 + 1.0)))


# -- inputs ----------------------------------------------------------------------------------


def find_catalogue(path: str | Path) -> Path:
    """The catalogue of one ``--input``: the file itself, or the one table atop a folder.

    Raises
    ------
    InputError
        A folder with no catalogue or with several (its top level: ``.csv``, ``.parquet``,
        ``.fits``; images in sub-folders are not looked at).
    """
    path = Path(path)
    if not path.is_dir():
        return path
    found = sorted(p for p in path.iterdir()
                   if p.is_file() and p.suffix.lower() in CATALOGUE_SUFFIXES)  # fmt: skip
    if len(found) != 1:
        names = [p.name for p in found[:SHOW]]
        raise InputError(
            f"expected one Galaxy Zoo catalogue ({', '.join(CATALOGUE_SUFFIXES)}) at the top of "
            f"the folder, found {len(found)} {names}", path, "--input",
        )  # fmt: skip
    return found[0]


def _coordinates(df, path: Path) -> dict[str, np.ndarray]:
    import pandas as pd

    out = {}
    for name in ("ra", "dec"):
        col = next((c for c in df.columns if str(c).lower() == name), None)
        if col is None:
            continue
        v = pd.to_numeric(df[col], errors="coerce").to_numpy(np.float64)
        bad = np.flatnonzero(df[col].notna().to_numpy() & ~np.isfinite(v))
        if bad.size:
            raise InputError(f"{bad.size} non-numeric values (rows {bad[:SHOW].tolist()}; "
                             "expected degrees)", path, str(col))  # fmt: skip
        out[name] = v
    return out


def read_input(path: str | Path) -> tuple[Catalogue, dict[str, np.ndarray]]:
    """Read and validate one ``--input`` (catalogue file, or a folder holding one).

    Parameters
    ----------
    path : str or pathlib.Path
        A GZ DECaLS- or GZ2-layout catalogue (CSV, FITS, parquet; image paths relative to
        its folder), or a folder with one such catalogue at its top. Vote columns are
        optional here (they give the reference fractions).

    Returns
    -------
    catalogue : Catalogue
        As :func:`.catalogues.read_catalogue` reads it; survey: the table's ``survey``
        column, else the catalogue's folder name.
    coordinates : dict of str to numpy.ndarray
        ``ra``, ``dec`` (deg, float64 (N,)) when the table has them.

    Raises
    ------
    InputError
        Everything :func:`.catalogues.read_catalogue` refuses (missing file or column,
        duplicate ids, bad counts or fractions), missing images
        (:func:`.prepare.check_images`), non-numeric coordinates, fewer than
        :data:`MIN_GALAXIES` rows.
    """
    cat_path = find_catalogue(path)
    df = read_table(cat_path)
    survey = cat_path.parent.name or "real"
    cat = read_catalogue(cat_path, survey, require_votes=False)  # no votes: no references
    if cat.n < MIN_GALAXIES:
        raise InputError(f"{cat.n} galaxies found, at least {MIN_GALAXIES} needed to predict",
                         cat_path, "rows")  # fmt: skip
    check_images(cat)
    return cat, _coordinates(df, cat_path)


def reference_fractions(cat: Catalogue, answers: list[str]
                        ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:  # fmt: skip
    """The volunteers' fractions of ``answers`` and votes per question, where ``cat`` has them.

    A question whose answers all have counts: fraction = count / question total (NaN where
    nobody was asked) and its votes; otherwise the catalogue's ``_fraction`` column of each
    answer, where there is one.

    Returns
    -------
    fractions : dict of str to numpy.ndarray
        Answer -> float64 (N,) (NaN: not given).
    votes : dict of str to numpy.ndarray
        Question -> float64 (N,) volunteers' votes.
    """
    fractions, votes = {}, {}
    schema = DECALS.restrict(list(dict.fromkeys(a.split("_", 1)[0] for a in answers)))
    for q in schema.question_names:
        mine = [a for a in answers if a.split("_", 1)[0] == q]
        if cat.has_counts and all(a in cat.counts for a in mine):
            total = np.sum([cat.counts[a] for a in mine], axis=0)
            votes[q] = total
            with np.errstate(invalid="ignore", divide="ignore"):
                for a in mine:
                    fractions[a] = np.where(total > 0, cat.counts[a] / total, np.nan)
        else:
            fractions.update({a: cat.fractions[a] for a in mine if a in cat.fractions})
    return fractions, votes


# -- the model -------------------------------------------------------------------------------


def model_schema(model: str | Path) -> tuple[dict, Path]:
    """The prepared manifest a model was trained on, and where it was found.

    Reads ``manifest.json`` of the model folder (the checkpoint's folder when ``model`` is
    a file), a copy of the prepared one that train keeps there.

    Raises
    ------
    InputError
        It is missing, or lacks ``answers``, ``question_index`` or ``image_size``.
    """
    from astrobatch.io.atomic import read_manifest

    folder = Path(model) if Path(model).is_dir() else Path(model).parent
    path = folder / "manifest.json"
    if not path.is_file():
        raise InputError("no answer schema for the model: expected the training manifest in "
                         "the model folder (re-run the train stage)", path, "--model")  # fmt: skip
    m = read_manifest(folder, path.name, require=("answers", "question_index", "image_size"))
    return m, path


def load_model(params: MorphologyParams, model: str | Path):
    """The trained task of ``model`` (a stage folder with ``best.ckpt``, or a ``.ckpt``).

    Returns
    -------
    task : VoteTask
        In eval mode, weights loaded weights-only.
    manifest : dict
        Its schema (:func:`model_schema`).

    Raises
    ------
    InputError
        No schema, a schema whose ``image_size`` is not ``data.image_size`` (a manifest of
        another run), a missing checkpoint, or one that does not match params.
    """
    from astrobatch.studies.morphology.train import FULL, build_task
    from astrobatch.train import load_model_weights

    manifest, where = model_schema(model)
    if int(manifest["image_size"]) != params.data.image_size:
        raise InputError(
            f"the model's schema has image_size {manifest['image_size']} but params "
            f"data.image_size is {params.data.image_size} (a manifest of another run? put the "
            "manifest.json the model was trained on in the model folder)", where, "image_size",
        )  # fmt: skip
    ckpt = Path(model) / "best.ckpt" if Path(model).is_dir() else Path(model)
    task = build_task(params, manifest, FULL)
    log.info("model %s, schema %s (%d answers)", ckpt, where, len(manifest["answers"]))
    return load_model_weights(task, ckpt, prefix=""), manifest


def _image_batches(images, size: int, stretch: float, transform, batch_size: int):
    for a in range(0, len(images), batch_size):
        raw = read_images(images[a : a + batch_size], size, stretch)
        yield torch.from_numpy(transform(raw))


def predict(params: MorphologyParams, model: str | Path, inputs: Sequence[str | Path]):
    """Predict the vote fractions of the galaxies of real catalogues.

    Parameters
    ----------
    params : MorphologyParams
        ``model``, ``loss`` (must match the checkpoint), ``data.fits_stretch``,
        ``full.batch_size``.
    model : str or pathlib.Path
        The fine-tuned stage folder (``models/morphology/full``) or a checkpoint file.
    inputs : sequence of str or pathlib.Path
        Catalogue files or folders (:func:`read_input`); all inputs are read and checked
        before any image is decoded.

    Returns
    -------
    astropy.table.Table
        One row per galaxy, inputs in order (module docstring for the columns): strings
        ``catalogue``, ``galaxy_id`` (``meta["id_columns"]``), ``survey``, ``image``;
        float64 ``ra``, ``dec`` (deg); float64 dimensionless ``<answer>``,
        ``<answer>_std`` (Dirichlet), ``<answer>_reference`` (NaN: not given);
        ``<question>_votes`` (dimensionless counts). ``meta["reference"]`` says where the
        references come from.

    Raises
    ------
    InputError
        A bad input (:func:`read_input`), a catalogue given twice, a bad model
        (:func:`load_model`), an unreadable image.
    """
    from astropy import units as u
    from astropy.table import Table

    from astrobatch.studies.morphology.train import image_transform

    read = [read_input(p) for p in inputs]
    seen: dict[Path, str] = {}
    for (cat, _), given in zip(read, inputs, strict=True):
        key = cat.path.resolve()
        if key in seen:
            raise InputError(f"the same catalogue is given twice (also as {seen[key]})",
                             given, "--input")  # fmt: skip
        seen[key] = str(given)
    task, manifest = load_model(params, model)
    answers = list(manifest["answers"])
    qindex = list(manifest["question_index"])
    size = int(manifest["image_size"])
    transform = image_transform(task.model)
    bs = max(params.full.batch_size, 64)
    dimless = u.dimensionless_unscaled

    parts = []
    for cat, coords in read:
        frac, raw = predict_batches(
            task, _image_batches(cat.images, size, params.data.fits_stretch, transform, bs)
        )
        ref, votes = reference_fractions(cat, answers)
        cols: dict[str, object] = {
            "catalogue": np.full(cat.n, str(cat.path)),
            "galaxy_id": cat.ids.astype(str),
            "survey": cat.surveys.astype(str),
            "image": np.array([str(p) for p in cat.images]),
        }
        for name in ("ra", "dec"):
            if name in coords:
                cols[name] = coords[name] * u.deg
        std = dirichlet_std(raw, qindex) if params.loss == "dirichlet" else None
        for j, a in enumerate(answers):
            cols[a] = frac[:, j] * dimless
            if std is not None:
                cols[f"{a}_std"] = std[:, j] * dimless
            if a in ref:
                cols[f"{a}_reference"] = np.asarray(ref[a], np.float64) * dimless
        for q, v in votes.items():
            cols[f"{q}_votes"] = np.asarray(v, np.float64) * dimless
        parts.append(Table(cols))
        log.info("%s: %d galaxies, %d reference answers", cat.path, cat.n, len(ref))
    table = parts[0] if len(parts) == 1 else _stack(parts)
    table.meta["id_columns"] = ["catalogue", "galaxy_id"]
    if any(c.endswith("_reference") for c in table.colnames):
        table.meta["reference"] = REFERENCE
    table.meta["loss"] = params.loss
    return table


def _stack(parts):
    """Stack tables whose reference/vote columns differ (NaN where one has none)."""
    from astropy.table import vstack

    names = list(dict.fromkeys(c for t in parts for c in t.colnames))
    for t in parts:
        for c in names:
            if c not in t.colnames:
                ref = next(p[c] for p in parts if c in p.colnames)
                t[c] = np.full(len(t), np.nan) * ref.unit
    return vstack([t[names] for t in parts], join_type="exact")
