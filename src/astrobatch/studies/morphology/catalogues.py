"""Galaxy Zoo catalogues, GZ DECaLS and GZ2 layouts, read through one schema.

A catalogue has one row per galaxy: an id, an image path and, per answer, vote counts
and/or vote fractions. Two column layouts are read (:data:`schema.LAYOUTS`):

- ``gz_decals`` (Walmsley et al. 2022): ``<question>_<answer>`` counts,
  ``<question>_total-votes``, ``<question>_<answer>_fraction``; ids ``iauname`` (or
  ``id_str``), images ``file_loc``;
- ``gz2`` (Hart et al. 2016): ``<task>_<answer>_count`` and ``<task>_<answer>_fraction``
  (``t01_smooth_or_features_a01_smooth_fraction``); ids ``dr7objid``.

Every answer is renamed to its GZ DECaLS name (GZ2 answers through
:data:`schema.GZ2_TO_DECALS`; the unshared ones are dropped). A catalogue may carry only
fractions (the real GZ DECaLS sample: three fractions, no counts): its rows then have no
counts and weigh 1 per present fraction. Files: CSV, FITS (astropy) or parquet.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from astrobatch.errors import InputError
from astrobatch.io.errors import reading
from astrobatch.studies.morphology.schema import DECALS, LAYOUTS

#: Id and image-path column names tried in order when a catalogue says ``auto``.
ID_COLUMNS = ("iauname", "id_str", "dr7objid", "objid", "galaxy_id", "id")
IMAGE_COLUMNS = ("file_loc", "image_path", "local_png_loc", "png_loc", "jpg_loc", "filename")
#: Rows named in an error message at most.
SHOW = 5


@dataclass
class Catalogue:
    """One catalogue read and mapped to GZ DECaLS answer names.

    Attributes
    ----------
    path : pathlib.Path
    layout : str
        ``gz_decals`` or ``gz2``.
    ids : numpy.ndarray of str, shape (N,)
    surveys : numpy.ndarray of str, shape (N,)
    images : list of pathlib.Path
        Resolved image paths (N).
    counts : dict of str to numpy.ndarray
        DECaLS answer -> float64 (N,) vote counts (absent: the catalogue has no counts).
    fractions : dict of str to numpy.ndarray
        DECaLS answer -> float64 (N,) vote fractions (NaN: not given).
    """

    path: Path
    layout: str
    ids: np.ndarray
    surveys: np.ndarray
    images: list[Path]
    counts: dict[str, np.ndarray]
    fractions: dict[str, np.ndarray]

    @property
    def n(self) -> int:
        """Rows."""
        return len(self.ids)

    @property
    def has_counts(self) -> bool:
        """Whether the catalogue gives vote counts."""
        return bool(self.counts)

    def answers(self) -> set[str]:
        """DECaLS answers the catalogue gives (counts or fractions)."""
        return set(self.counts) | set(self.fractions)


def read_table(path: str | Path) -> pd.DataFrame:
    """A CSV, FITS (HDU 1) or parquet table as a DataFrame (strings decoded).

    Raises
    ------
    InputError
        Missing file, unknown suffix, or a file that does not parse.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("catalogue not found", path)
    suffix = path.suffix.lower()
    with reading(path, "Galaxy Zoo catalogue"):
        if suffix == ".csv":
            return pd.read_csv(path, low_memory=False)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".fits", ".fit"):
            from astropy.table import Table

            t = Table.read(path, hdu=1)
            multi = [c for c in t.colnames if len(t[c].shape) > 1]
            t.remove_columns(multi)
            df = t.to_pandas()
            for c in df.columns:
                if df[c].dtype == object and len(df) and isinstance(df[c].iloc[0], bytes):
                    df[c] = df[c].str.decode("utf-8").str.strip()
            return df
    raise InputError("unknown catalogue type (expected .csv, .fits or .parquet)", path)


def detect_layout(columns, path: str | Path) -> str:
    """``gz2`` when the columns carry GZ2 task names, ``gz_decals`` for DECaLS names.

    Raises
    ------
    InputError
        Neither layout's answer columns are present.
    """
    cols = set(columns)
    for name, (_, mapping) in LAYOUTS.items():
        if any(f"{a}{s}" in cols for a in mapping for s in ("", "_count", "_fraction")):
            return name
    raise InputError(
        "no Galaxy Zoo answer columns: expected GZ DECaLS names such as "
        "'smooth-or-featured_smooth_fraction' or GZ2 names such as "
        "'t01_smooth_or_features_a01_smooth_fraction'",
        path,
    )


def _pick(df: pd.DataFrame, name: str, options: tuple[str, ...], path: Path, what: str) -> str:
    if name != "auto":
        if name not in df.columns:
            raise InputError(f"missing {what} column", path, name)
        return name
    for c in options:
        if c in df.columns:
            return c
    raise InputError(f"no {what} column (expected one of {list(options)})", path)


def _numbers(df: pd.DataFrame, col: str, path: Path) -> np.ndarray:
    v = pd.to_numeric(df[col], errors="coerce").to_numpy(np.float64)
    bad = np.flatnonzero(df[col].notna().to_numpy() & ~np.isfinite(v))
    if bad.size:
        raise InputError(f"{bad.size} non-numeric values (rows {bad[:SHOW].tolist()})", path, col)
    return v


def _count_columns(layout: str) -> dict[str, str]:
    """File column of the count of each DECaLS answer."""
    mapping = LAYOUTS[layout][1]
    suffix = "_count" if layout == "gz2" else ""
    return {decals: f"{src}{suffix}" for src, decals in mapping.items()}


def read_catalogue(
    path: str | Path,
    survey: str,
    layout: str = "auto",
    id_column: str = "auto",
    image_column: str = "auto",
    image_root: str | Path = "",
    require_votes: bool = True,
) -> Catalogue:
    """Read one Galaxy Zoo catalogue and map its answers to GZ DECaLS names.

    Parameters
    ----------
    path : str or pathlib.Path
        CSV, FITS or parquet catalogue.
    survey : str
        Survey of the rows when the table has no ``survey`` column.
    layout : {"auto", "gz_decals", "gz2"}
    id_column, image_column : str
        Column names, or ``auto`` (:data:`ID_COLUMNS`, :data:`IMAGE_COLUMNS`).
    image_root : str or pathlib.Path
        Folder the image paths are relative to (empty: the catalogue's folder).
    require_votes : bool
        If False, a table without any answer column is read as ids and images only (empty
        ``counts`` and ``fractions``, layout ``gz_decals``): galaxies to predict.

    Returns
    -------
    Catalogue

    Raises
    ------
    InputError
        A missing or unparsable file or column, duplicate ids, negative or non-integer
        counts, fractions outside [0, 1] (each naming the column and the first rows).
    """
    path = Path(path)
    df = read_table(path)
    if layout == "auto":
        try:
            layout = detect_layout(df.columns, path)
        except InputError:
            if require_votes:
                raise
            layout = "gz_decals"  # no answer columns: nothing is read through the layout
    elif layout not in LAYOUTS:
        raise InputError(f"unknown layout {layout!r}; known: {sorted(LAYOUTS)}", path)
    id_col = _pick(df, id_column, ID_COLUMNS, path, "galaxy id")
    img_col = _pick(df, image_column, IMAGE_COLUMNS, path, "image path")
    if df[id_col].isna().any():
        raise InputError("empty galaxy ids", path, id_col)
    ids = df[id_col].astype(str).str.strip().to_numpy()
    dup = pd.Series(ids).duplicated()
    if dup.any():
        first = pd.Series(ids)[dup].unique()[:SHOW].tolist()
        raise InputError(f"{int(dup.sum())} duplicate galaxy ids (first {first})", path, id_col)
    surveys = (
        df["survey"].astype(str).to_numpy() if "survey" in df.columns
        else np.full(len(df), survey, dtype=object)
    )  # fmt: skip
    root = Path(image_root) if str(image_root) else path.parent
    if df[img_col].isna().any():
        rows = np.flatnonzero(df[img_col].isna().to_numpy())[:SHOW].tolist()
        raise InputError(f"rows without an image path (rows {rows})", path, img_col)
    images = [p if p.is_absolute() else root / p for p in map(Path, df[img_col].astype(str))]

    counts: dict[str, np.ndarray] = {}
    for answer, col in _count_columns(layout).items():
        if col in df.columns:
            v = _numbers(df, col, path)
            bad = np.flatnonzero(np.isfinite(v) & ((v < 0) | (v != np.round(v))))
            if bad.size:
                raise InputError(
                    f"{bad.size} negative or non-integer vote counts (ids "
                    f"{ids[bad[:SHOW]].tolist()}; expected integers >= 0)", path, col,
                )  # fmt: skip
            counts[answer] = np.nan_to_num(v, nan=0.0)
    fractions: dict[str, np.ndarray] = {}
    for src, answer in LAYOUTS[layout][1].items():
        col = f"{src}_fraction"
        if col in df.columns:
            v = _numbers(df, col, path)
            bad = np.flatnonzero(np.isfinite(v) & ((v < 0) | (v > 1)))
            if bad.size:
                raise InputError(
                    f"{bad.size} vote fractions outside [0, 1] (ids {ids[bad[:SHOW]].tolist()})",
                    path, col,
                )  # fmt: skip
            fractions[answer] = v
    if not counts and not fractions and require_votes:
        raise InputError(f"no answer columns of the {layout} layout", path)
    return Catalogue(path, layout, ids, np.asarray(surveys, dtype=str), images, counts, fractions)


def vote_arrays(cat: Catalogue, answers: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fractions, counts and loss weights of ``answers`` (DECaLS names) for every row.

    With counts: fractions are recomputed as count / question total (the question's
    answers among ``answers``; all of a kept question's answers must be present), the
    weight of an answer is its question's total votes (0 where nobody was asked). Without
    counts (fractions only): counts 0, weight 1 where a fraction is given, else 0.

    Returns
    -------
    fractions, counts, weights : numpy.ndarray, shape (N, A), float32

    Raises
    ------
    InputError
        A catalogue with counts that lacks the counts of one of ``answers``.
    """
    n, a = cat.n, len(answers)
    if cat.has_counts:
        missing = [x for x in answers if x not in cat.counts]
        if missing:
            raise InputError(f"no vote counts for answers {missing[:SHOW]}", cat.path)
        counts = np.stack([cat.counts[x] for x in answers], axis=1)
        qs = list(dict.fromkeys(x.split("_", 1)[0] for x in answers))
        sub = DECALS.restrict(qs)
        if sub.answer_names != list(answers):
            raise ValueError("answers must be whole questions in schema order")
        totals = sub.total_votes(counts)[:, sub.question_index]
        fractions = sub.fractions(counts)
        weights = totals
    else:
        counts = np.zeros((n, a))
        fractions = np.stack([cat.fractions.get(x, np.full(n, np.nan)) for x in answers], axis=1)
        weights = np.isfinite(fractions).astype(np.float64)
        fractions = np.nan_to_num(fractions, nan=0.0)
    return fractions.astype(np.float32), counts.astype(np.float32), weights.astype(np.float32)
