"""morphology prepare: Galaxy Zoo catalogues + image files -> uint8 image shards per set.

Steps:

1. read every catalogue of ``data.catalogues`` (:mod:`.catalogues`: GZ DECaLS or GZ2
   names, mapped to DECaLS answers) and check its surveys are either trained on
   (``train_surveys``) or held out (``ood_surveys``);
2. the schema of the run: ``data.questions``, or the questions every catalogue's layout
   shares (:func:`.schema.shared_questions`), in DECaLS tree order;
3. every image path is checked before anything is decoded (a missing image: one message
   with the count and the first few);
4. sets: galaxies of the training surveys go to train/val/test by a salted hash of their
   id (fixed across experiments); the training split keeps, per survey, its share of
   ``n_train`` (``train_surveys`` proportions; the lowest hashes first, so a smaller
   ``n_train`` is a subset of a larger one; a share of 0 leaves a survey out); every
   held-out survey is one set
   ``ood_<survey>``; real galaxies take part in no set: ``astrobatch morphology predict``
   applies the trained model to them (:mod:`.predict`, through :func:`check_images` and
   :func:`read_images` here);
5. images decoded once (Pillow for JPEG/PNG, astropy for FITS) and resized to
   ``image_size``, written as ``uint8 (n, 3, S, S)`` chunked HDF5 shards with
   ``fractions``, ``counts``, ``weights`` ``(n, A)``, ``galaxy_id`` and ``survey``;
6. ``manifest.json``: the answers and questions, the sets and their sizes and surveys.

Nothing is half-written: the output folder is built aside and renamed into place.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from astrobatch.data.splits import hash_splits, hash_unit
from astrobatch.errors import InputError
from astrobatch.io.atomic import atomic_dir, write_json
from astrobatch.io.image_files import read_image
from astrobatch.io.shards import Column, ShardWriter
from astrobatch.studies.morphology.catalogues import SHOW, Catalogue, read_catalogue, vote_arrays
from astrobatch.studies.morphology.params import MorphologyData, SplitRatios
from astrobatch.studies.morphology.schema import DECALS, shared_questions

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


def assign_splits(ids, split: SplitRatios) -> np.ndarray:
    """0 train, 1 val, 2 test per id (:func:`astrobatch.data.splits.hash_splits`)."""
    return hash_splits(ids, split.train, split.val, split.salt)


def training_quota(available: dict[str, int], shares: dict[str, float], n_train: int
                   ) -> dict[str, int]:  # fmt: skip
    """Training galaxies per survey for the mixing proportions ``shares``.

    Parameters
    ----------
    available : dict of str to int
        Training-split galaxies of each survey.
    shares : dict of str to float
        Survey -> proportion (normalised here).
    n_train : int
        Total wanted; 0: the largest total the proportions allow.

    Raises
    ------
    InputError
        A survey without galaxies, or fewer than its share of ``n_train``.

    Examples
    --------
    >>> training_quota({"a": 100, "b": 30}, {"a": 0.5, "b": 0.5}, 0)
    {'a': 30, 'b': 30}
    >>> training_quota({"a": 100, "b": 30}, {"a": 0.8, "b": 0.2}, 50)
    {'a': 40, 'b': 10}
    """
    total = sum(shares.values())
    w = {s: v / total for s, v in shares.items()}
    for s in w:
        if available.get(s, 0) == 0:
            raise InputError(f"training survey {s!r} has no galaxies in the training split",
                             key="data.train_surveys")  # fmt: skip
    if n_train == 0:
        n_train = int(min(available[s] / w[s] for s in w))
    quota = {s: int(np.floor(w[s] * n_train + 1e-9)) for s in w}
    short = {s: (quota[s], available[s]) for s in w if quota[s] > available[s]}
    if short:
        raise InputError(
            f"n_train {n_train} needs more training galaxies than there are (survey: wanted, "
            f"available) {short}", key="data.n_train",
        )  # fmt: skip
    return quota


def check_images(cat: Catalogue) -> None:
    """Check that every image of ``cat`` exists, before anything is decoded.

    Raises
    ------
    InputError
        Missing images: one message with their count and the first few paths, naming
        the catalogue and ``images``.
    """
    missing = [p for p in cat.images if not p.is_file()]
    if missing:
        first = [str(p) for p in missing[:SHOW]]
        raise InputError(
            f"{len(missing)} of {cat.n} images not found (first: {first})", cat.path, "images"
        )


def read_images(paths, size: int, fits_stretch: float) -> np.ndarray:
    """Decode and resize image files as the prepared shards store them.

    Parameters
    ----------
    paths : sequence of pathlib.Path
        JPEG, PNG or FITS files (:func:`astrobatch.io.image_files.read_image`).
    size : int
        Side the images are resized to, pixels (``data.image_size``).
    fits_stretch : float
        FITS images: the asinh softening in sky MADs (``data.fits_stretch``).

    Returns
    -------
    numpy.ndarray, shape (n, 3, size, size), uint8

    Raises
    ------
    InputError
        A missing, truncated or corrupt image (naming the file).
    """
    if not len(paths):
        return np.zeros((0, 3, size, size), np.uint8)
    return np.stack([read_image(p, size, fits_stretch) for p in paths])


def _shard_columns(n_answers: int, size: int, answers: list[str]) -> dict[str, Column]:
    names = tuple(answers)
    return {
        "images": Column(np.uint8, (3, size, size), units="uint8 colour planes"),
        "fractions": Column(np.float32, (n_answers,), names=names),
        "counts": Column(np.float32, (n_answers,), names=names, units="votes"),
        "weights": Column(np.float32, (n_answers,), names=names),
        "galaxy_id": Column(str),
        "survey": Column(str),
    }


def _write_set(path: Path, rows: list[tuple[Catalogue, np.ndarray]], answers: list[str],
               data: MorphologyData, name: str, progress) -> int:  # fmt: skip
    size, n_ans = data.image_size, len(answers)
    n = sum(len(idx) for _, idx in rows)
    chunk = max(1, min(data.chunk_images, n))
    with ShardWriter(path, _shard_columns(n_ans, size, answers), chunk_rows=chunk,
                     attrs={"split": name}) as w:  # fmt: skip
        for cat, idx in rows:
            frac, cnt, wt = vote_arrays(cat, answers)
            for a in range(0, len(idx), chunk):
                sel = idx[a : a + chunk]
                imgs = read_images([cat.images[i] for i in sel], size, data.fits_stretch)
                w.append({
                    "images": imgs, "fractions": frac[sel], "counts": cnt[sel],
                    "weights": wt[sel], "galaxy_id": cat.ids[sel], "survey": cat.surveys[sel],
                })  # fmt: skip
                progress(len(sel))
    return n


def prepare(data: MorphologyData, out_dir: str | Path,
            progress: Callable[[int, int], None] | None = None) -> dict:  # fmt: skip
    """Read the catalogues and images of ``data`` and write the prepared sets.

    Parameters
    ----------
    data : MorphologyData
    out_dir : str or pathlib.Path
        Receives ``train.h5``, ``val.h5``, ``test.h5``, ``ood_<survey>.h5`` and
        ``manifest.json``.
    progress : callable, optional
        ``progress(done, total)``: images written so far, of all.

    Returns
    -------
    dict
        The manifest.

    Raises
    ------
    InputError
        Bad catalogues (see :func:`.catalogues.read_catalogue`), an unknown survey,
        missing or unreadable images, questions that a catalogue cannot give, empty sets.
    """
    cats = [
        read_catalogue(c.path, c.survey, c.layout, c.id_column, c.image_column, c.image_root)
        for c in data.catalogues
    ]
    known = set(data.train_surveys) | set(data.ood_surveys)
    for cat in cats:
        unknown = sorted(set(cat.surveys.tolist()) - known)
        if unknown:
            raise InputError(
                f"unknown survey(s) {unknown}: list each in data.train_surveys or "
                f"data.ood_surveys (now {sorted(known)})", cat.path, "survey",
            )  # fmt: skip
    found = {s for cat in cats for s in cat.surveys.tolist()}
    absent = sorted(known - found)
    if absent:
        raise InputError(f"surveys {absent} are in no catalogue of data.catalogues",
                         key="data.train_surveys")  # fmt: skip
    if data.questions:
        try:
            questions = DECALS.restrict(data.questions).question_names
        except KeyError as err:
            raise InputError(str(err).strip("'\""), key="data.questions") from None
    else:
        questions = shared_questions({cat.layout for cat in cats if cat.has_counts}
                                     or {cat.layout for cat in cats})  # fmt: skip
    schema = DECALS.restrict(questions)
    answers = schema.answer_names
    for cat in cats:
        check_images(cat)
        vote_arrays(cat, answers)  # every kept answer has counts: fail before writing

    # sets ---------------------------------------------------------------------------------
    sets: dict[str, list[tuple[Catalogue, np.ndarray]]] = {}
    for cat in cats:
        split = assign_splits(cat.ids, data.split)
        order = hash_unit(cat.ids, data.split.salt + ":train")
        for s in np.unique(cat.surveys):
            mine = cat.surveys == s
            if s in data.ood_surveys:
                sets.setdefault(f"ood_{s}", []).append((cat, np.flatnonzero(mine)))
                continue
            if data.train_surveys[s] == 0:  # left out of this run
                continue
            for k, name in enumerate(SPLITS):
                idx = np.flatnonzero(mine & (split == k))
                if name == "train":
                    idx = idx[np.argsort(order[idx], kind="stable")]
                sets.setdefault(f"_{name}_{s}", []).append((cat, idx))
    shares = {s: v for s, v in data.train_surveys.items() if v > 0}
    available = {s: sum(len(i) for _, i in sets.get(f"_train_{s}", [])) for s in shares}
    quota = training_quota(available, shares, data.n_train)
    for name in SPLITS:
        rows: list[tuple[Catalogue, np.ndarray]] = []
        for s in shares:
            left = quota[s] if name == "train" else None
            for cat, idx in sets.pop(f"_{name}_{s}", []):
                take = idx if left is None else idx[:left]
                if left is not None:
                    left -= len(take)
                rows.append((cat, np.sort(take)))
        sets[name] = rows
    counts = {k: int(sum(len(i) for _, i in v)) for k, v in sets.items()}
    empty = [k for k, v in counts.items() if v == 0 and k in ("train", "val")]
    if empty:
        raise InputError(f"empty sets {empty} (more galaxies or other split ratios)",
                         key="data.split")  # fmt: skip

    total = sum(counts.values())
    done = [0]

    def step(n: int) -> None:
        done[0] += n
        if progress:
            progress(done[0], total)

    log.info("writing %d galaxies in %d sets (%d answers)", total, len(sets), len(answers))
    with atomic_dir(out_dir) as tmp:
        for name, rows in sets.items():
            if counts[name]:
                _write_set(tmp / f"{name}.h5", rows, answers, data, name, step)
        manifest = {
            "answers": answers,
            "questions": schema.question_names,
            "question_index": schema.question_index.tolist(),
            "parent_answer": schema.parent_answer.tolist(),
            "sets": [k for k in sets if counts[k]],
            "counts": counts,
            "train_per_survey": quota,
            "train_surveys": dict(data.train_surveys),
            "ood_surveys": list(data.ood_surveys),
            "surveys": {
                k: sorted({s for c, i in v for s in c.surveys[i].tolist()}) for k, v in sets.items()
            },
            "catalogues": [{"path": str(c.path), "layout": c.layout, "rows": c.n} for c in cats],
            "image_size": data.image_size,
        }
        write_json(tmp / "manifest.json", manifest)
    return manifest
