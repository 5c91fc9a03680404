"""Readers of LEGUS star-cluster catalogues (Adamo et al. 2017, ApJ 841, 131; arXiv:1705.01588).

Two layouts are read into one schema (:func:`read_legus_catalogue`), chosen by
content (:func:`legus_format`) or by ``format="csv" | "tab"``; either may be
gzip-compressed (detected by the gzip magic bytes, whatever the file name).

CSV export
----------
The public LEGUS cluster catalogues (e.g. ``ngc628_Catalog.csv``, described in
``ngc628_LEGUS_description.txt``) have 35 columns: id, position, 5-band Vega
photometry with errors, the concentration index, SED-fit age, mass and
E(B-V) with 68 % limits, per-band fit residuals, reduced chi2, Q probability,
number of filters and the visual classes (mode and mean). The CSV export adds
a leading empty column (``Column1``), so CSV ``Column2`` is description
column 1 (source id); both layouts are accepted. In
that export a ``#`` in the leading column marks a comment row: all-empty ``#``
rows separate the catalogues of successive HST pointings (``ngc628_Catalog.csv``
holds two: 3080 sources, then 593 whose ids restart at 1), and ``#`` rows with
values are sources the authors commented out (14 in NGC 628); both are dropped,
and the column ``pointing`` (0, 1, ...) counts the separators, so that
``(pointing, source_id)`` identifies a source.

MAST HLSP ``.tab``
------------------
The catalogues that MAST distributes (https://archive.stsci.edu/prepds/legus/,
``hlsp_legus_hst_<instruments>_<galaxy>_multiband_v1_padagb-mwext-avgapcor.tab``)
are whitespace-separated, without a header; the column descriptions are in the
companion ``.readme`` (the text of ``ngc628_LEGUS_description.txt``). Lines
starting with ``#`` and blank lines are skipped. MAST ships one file per
pointing (e.g. ``ngc628-c``, ``ngc628-e``), so a ``.tab`` has no pointing
structure: ``pointing`` is 0 throughout. Two layouts are known, told apart by
the number of columns (1-based ``.tab`` column numbers; errors name them
``col<k>``):

=========  =====================================================================
.tab col   standard name (both layouts)
=========  =====================================================================
1          ``source_id``
2, 3       ``x``, ``y``: pixels of the reference frame
4, 5       ``ra``, ``dec``: deg
6 - 15     ``mag_<band>``, ``err_<band>`` for F275W, F336W, F438W (ACS F435W where
           the catalogue has it, e.g. NGC 628), F555W, F814W: Vega mag
16         ``ci``: mag(1 px) - mag(3 px) in F555W, mag
17 - 19    ``age_yr``, ``age_max_yr``, ``age_min_yr``
20 - 22    ``mass``, ``mass_max``, ``mass_min``: Msun
23 - 25    ``ebv``, ``ebv_max``, ``ebv_min``: mag
26 - 30    ``residual_<band>``
31, 32     ``reduced_chi2``, ``q_prob``
33         ``n_filters``
=========  =====================================================================

* 35 columns (the classic layout, that of the CSV export without its leading
  column): 34 ``class_mode`` (mode of the visual classes), 35 ``class_mean``.
* 39 columns (hybrid human / machine-learning classification; NGC 1566):

  - 34 ``class_mode``: the final hybrid morphological class, which the readme
    names "the one that should be used to perform the cluster analysis" (so
    :func:`select_clusters` uses it, as Brown & Gnedin 2021 did for NGC 1566);
  - 35 ``class_method``: where that class comes from: 0 machine learning (ML)
    only, 1 ML verified by one human, 3 three humans and the ML, 4 three
    humans, the ML, then one human, 6 one human's post-reclassification of a
    source first given class 4;
  - 36 ``class_mode_human``: mode of the three humans' classes (0: not inspected);
  - 37 ``class_ml``: the ML class;
  - 38 ``class_ml_verified``: the class of the human who verified the ML one;
  - 39 ``class_reclassified``: the post-reclassification of former class-4 sources.

  ``class_mean`` does not exist in this layout and is NaN. Columns 35-39 are
  appended after ``log_age`` (:data:`TAB_HYBRID_EXTRA_COLUMNS`, int64); the
  reader checks that column 34 equals the class that column 35 designates
  (ML for 0, column 38 for 1, column 36 for 3 and 4, column 39 for 6), which
  tells this layout from other 39-column LEGUS files (e.g. those with
  Linden / Whitmore flags), and raises :class:`InputError` otherwise.

Source of the mapping: columns 1-35, the LEGUS readme
(``ngc628_LEGUS_description.txt``); columns 34-39 of the hybrid layout, the
MAST readme descriptions as quoted in ``pipeline/format_catalogs.py`` of
Brown & Gnedin (2021, MNRAS 508, 5935; github.com/gillenbrown/LEGUS-sizes),
which maps them to the names ``class_hybrid``, ``class_hybrid_method``,
``class_mode_human``, ``class_ml``, ``class_human_verify_ml`` and
``class_reclassify_4_human``, and confirmed on the NGC 1566 file (below).

Checked on ``hlsp_legus_hst_wfc3_ngc1566_multiband_v1_padagb-mwext-avgapcor.tab``
(vendored as ``data/external/cluster_age/...tab.gz``; a WFC3-only catalogue,
as its name says, so its F438W channel is WFC3/UVIS F438W): 2752 rows, all of 39
columns, ids 1-2752 strictly increasing (no pointing separators); RA
64.945-65.058 deg, Dec -54.968 to -54.907 deg; x 164-6050, y 326-5901 px;
the only photometric sentinel is 99.999 (F275W 72, F336W 35, F438W 10,
F555W 0, F814W 3 rows), real magnitudes 14.75-30.19; CI 1.35-72.7 (one
source, id 1129, undetected in F275W-F438W, has CI = 72.708; kept);
``n_filters`` 0 (300), 4 (192), 5 (2260); SED ages 1e6-1.4e10 yr, masses
552-5.6e8 Msun, E(B-V) 0-1.5 where ``n_filters >= 4`` (all 0 elsewhere); all
class columns integers in 0..4, ``class_method`` in {0, 1, 3, 4, 6}, and
column 34 equals the designated class in all 2752 rows; :func:`select_clusters`
keeps 1573 clusters (class 1: 477, 2: 404, 3: 692) of ages 1e6-3e8 yr.

Sentinels and fits
------------------
Sentinels in the photometry columns become NaN: 66.666 (not in the field of
view), 99.999 (not detected), 44.444 (CI-based aperture correction undefined).
SED-fit quantities (age, mass, E(B-V) and their limits) are NaN where no fit
was made (``n_filters < 4``). A residual of 200.0 marks the band left out of
a 4-band fit (each of the 192 ``n_filters = 4`` sources of NGC 1566 has
exactly one, in F275W or F336W; NGC 628 has them too); it is kept as is in
both layouts.

Band names follow the cutout channels (:data:`astrobatch.io.cutouts.PHANGS_BANDS`):
the ACS/WFC F435W column of NGC 628 is named ``mag_F438W`` (the B-band channel).
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from astrobatch.errors import InputError
from astrobatch.io.cutouts import PHANGS_BANDS
from astrobatch.io.errors import guarded

#: Photometry sentinels of the LEGUS catalogues (become NaN).
SENTINELS: tuple[float, ...] = (66.666, 99.999, 44.444)

#: Standard names of the 35 catalogue columns, in the order of the description file.
#: Bands are the channel names: F275W, F336W (WFC3/UVIS), F438W (= ACS F435W), F555W, F814W.
COLUMNS: tuple[str, ...] = (
    "source_id", "x", "y", "ra", "dec",
    *[f"{kind}_{band}" for band in PHANGS_BANDS for kind in ("mag", "err")],
    "ci",
    "age_yr", "age_max_yr", "age_min_yr",
    "mass", "mass_max", "mass_min",
    "ebv", "ebv_max", "ebv_min",
    *[f"residual_{band}" for band in PHANGS_BANDS],
    "reduced_chi2", "q_prob", "n_filters", "class_mode", "class_mean",
)  # fmt: skip

#: Columns holding photometry (where the sentinels are replaced by NaN).
PHOTOMETRY_COLUMNS: tuple[str, ...] = tuple(c for c in COLUMNS if c.startswith(("mag_", "err_")))
#: SED-fit columns (NaN where ``n_filters < 4``: no fit).
SED_COLUMNS: tuple[str, ...] = (
    "age_yr", "age_max_yr", "age_min_yr", "mass", "mass_max", "mass_min",
    "ebv", "ebv_max", "ebv_min",
    *[f"residual_{band}" for band in PHANGS_BANDS],
    "reduced_chi2", "q_prob",
)  # fmt: skip
#: Integer (int64) columns of the standard schema.
INTEGER_COLUMNS: tuple[str, ...] = ("source_id", "n_filters", "class_mode")

#: Columns 35-39 of the 39-column hybrid-classification ``.tab`` layout (NGC 1566), int64,
#: appended after ``log_age`` (see the module docstring).
TAB_HYBRID_EXTRA_COLUMNS: tuple[str, ...] = (
    "class_method", "class_mode_human", "class_ml", "class_ml_verified", "class_reclassified",
)  # fmt: skip
#: Column of the hybrid layout that ``class_mode`` (column 34) equals, per ``class_method``.
HYBRID_CLASS_SOURCE: dict[int, str] = {
    0: "class_ml",
    1: "class_ml_verified",
    3: "class_mode_human",
    4: "class_mode_human",
    6: "class_reclassified",
}
#: Morphological classes of LEGUS (0: not classified, 1-3 clusters, 4 spurious).
CLASSES: tuple[int, ...] = (0, 1, 2, 3, 4)
#: Column counts of the known ``.tab`` layouts: classic and hybrid classification.
TAB_CLASSIC_NCOL, TAB_HYBRID_NCOL = len(COLUMNS), len(COLUMNS) + 4

#: Visual classes kept as clusters: 1 compact symmetric, 2 asymmetric, 3 multi-peaked.
CLUSTER_CLASSES: tuple[int, ...] = (1, 2, 3)
#: Minimum number of filters with a detection for an SED fit (LEGUS: Nflt >= 4).
MIN_FILTERS_SED = 4

#: Layout names accepted by :func:`read_legus_catalogue` (``auto``: by content).
LegusFormat = Literal["auto", "csv", "tab"]
FORMATS: tuple[str, ...] = ("auto", "csv", "tab")
_GZIP_MAGIC = b"\x1f\x8b"


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def _open_text(path: Path):
    """The file as UTF-8 text (BOM dropped), gunzipped when it starts with the gzip magic."""
    if _is_gzip(path):
        return gzip.open(path, "rt", encoding="utf-8-sig")
    return open(path, encoding="utf-8-sig")


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise InputError(
            "LEGUS catalogue not found (expected a CSV export or a MAST HLSP .tab file, "
            "optionally gzip-compressed)",
            path=path,
        )


@guarded("LEGUS cluster catalogue")
def legus_format(path: str | Path) -> Literal["csv", "tab"]:
    """Which LEGUS layout a file holds, from its first non-blank line.

    Parameters
    ----------
    path : str or pathlib.Path
        LEGUS catalogue, plain or gzip-compressed (told by the gzip magic
        bytes, not by the name).

    Returns
    -------
    {"csv", "tab"}
        ``"csv"`` if the first non-blank line holds a comma (the header of the
        CSV export), ``"tab"`` if it holds several whitespace-separated fields
        and no comma (a MAST HLSP ``.tab`` row).

    Raises
    ------
    InputError
        If the file is missing, unreadable or empty, or its first line is a
        single field (neither layout).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "cat.txt"
    >>> _ = p.write_text("  1  3006.1  5901.0  65.0034  -54.907\\n")
    >>> legus_format(p)
    'tab'
    """
    path = Path(path)
    _check_file(path)
    with _open_text(path) as f:
        for line in f:
            text = line.strip()
            if not text:
                continue
            if "," in text:
                return "csv"
            if len(text.split()) > 1:
                return "tab"
            raise InputError(
                "expected a LEGUS catalogue: a CSV header (comma-separated) or whitespace-"
                f"separated .tab columns, got a single field {text[:40]!r} in the first line",
                path=path,
                key="format",
            )
    raise InputError("expected a LEGUS catalogue, got an empty file", path=path, key="format")


@guarded("LEGUS cluster catalogue")
def read_legus_catalogue(path: str | Path, format: LegusFormat = "auto") -> pd.DataFrame:
    """Read a LEGUS cluster catalogue (CSV export or MAST HLSP ``.tab``) into standard columns.

    Parameters
    ----------
    path : str or pathlib.Path
        The catalogue, plain or gzip-compressed. CSV export: 35 data columns,
        optionally preceded by an empty index column (36 columns, the layout
        of ``ngc628_Catalog.csv``); one header row; UTF-8 with or without BOM.
        HLSP ``.tab``: 35 (classic) or 39 (hybrid classification, NGC 1566)
        whitespace-separated columns, no header (module docstring).
    format : {"auto", "csv", "tab"}
        Layout; ``"auto"`` (default) decides by content (:func:`legus_format`).

    Returns
    -------
    pandas.DataFrame
        One row per source (comment rows dropped), columns ``pointing``
        (int64, 0 for the first pointing's block; always 0 for ``.tab``),
        :data:`COLUMNS` and ``log_age`` (log10 of ``age_yr``, dex), the same
        names and dtypes for both layouts; the 39-column ``.tab`` layout adds
        :data:`TAB_HYBRID_EXTRA_COLUMNS` (int64) after ``log_age`` and has
        ``class_mean`` NaN. Units: ``x, y`` pixels of the reference frame;
        ``ra, dec`` deg; ``mag_*`` Vega magnitudes (Galactic extinction and
        aperture corrections included), ``err_*`` mag; ``ci`` mag; ``age_*``
        yr; ``mass*`` Msun; ``ebv*`` mag (starburst law, Calzetti et al.
        2000). ``source_id``, ``n_filters`` and ``class_mode`` are int64;
        everything else float64. Sentinels (:data:`SENTINELS`) in photometry
        columns and SED quantities of sources without a fit
        (``n_filters < 4``) are NaN.

    Raises
    ------
    InputError
        If the file is missing or unreadable, ``format`` is unknown, the file
        has a wrong number of columns, a column is not numeric, or (39-column
        ``.tab``) a class column is outside 0..4 or disagrees with the
        hybrid method flag. The message names the file, the column (CSV: its
        header name; ``.tab``: ``col<k>``, 1-based) and the expectation.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "cat.csv"
    >>> row = [1, 10, 20, 24.1, 15.8] + [99.999, 99.999] + [22.0, 0.05] * 4 + [1.5]
    >>> row += [1e7, 2e7, 5e6, 1e4, 2e4, 5e3, 0.1, 0.2, 0.0] + [0.0] * 5 + [1.0, 0.9, 4, 1, 1.0]
    >>> _ = p.write_text(",".join(f"C{i}" for i in range(35)) + "\\n" + ",".join(map(str, row)))
    >>> df = read_legus_catalogue(p)
    >>> float(df["log_age"].iloc[0]), bool(np.isnan(df["mag_F275W"].iloc[0]))
    (7.0, True)
    >>> t = p.with_suffix(".tab")
    >>> _ = t.write_text(" ".join(map(str, row)) + "\\n")
    >>> read_legus_catalogue(t).equals(df)
    True
    """
    if format not in FORMATS:
        raise InputError(f"expected format 'auto', 'csv' or 'tab', got {format!r}",
                         path=path, key="format")  # fmt: skip
    path = Path(path)
    _check_file(path)
    layout = legus_format(path) if format == "auto" else format
    if layout == "csv":
        return _read_csv(path)
    return _read_tab(path)


def _read_csv(path: Path) -> pd.DataFrame:
    """The CSV export (35 columns, or 36 with the leading index / comment column)."""
    try:
        with _open_text(path) as f:
            raw = pd.read_csv(f, header=0)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise InputError(f"cannot read the catalogue as CSV: {e}", path=path) from e
    n_col = raw.shape[1]
    pointing = np.zeros(len(raw), dtype=np.int64)
    if n_col == len(COLUMNS) + 1:
        first = raw.iloc[:, 0]
        marker = first.astype("string").str.strip()
        bad = first.notna() & (marker != "#")
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(
                f"expected the first of {n_col} columns to be the empty index column of the "
                f"LEGUS CSV export (empty, or '#' for comment rows), got {first.iloc[i]!r} in "
                f"data row {i + 1}",
                path=path,
                key=str(raw.columns[0]),
            )
        comment = (marker == "#").fillna(False).to_numpy(dtype=bool)
        # a run of all-empty comment rows separates the catalogues of two pointings
        empty = comment & raw.iloc[:, 1:].isna().all(axis=1).to_numpy()
        pointing = np.cumsum(np.diff(np.concatenate([[0], empty.astype(np.int8)])) == 1)
        raw = raw.loc[~comment].iloc[:, 1:]
        pointing = pointing[~comment]
    elif n_col != len(COLUMNS):
        raise InputError(
            f"expected {len(COLUMNS)} catalogue columns (or {len(COLUMNS) + 1} with a leading "
            f"empty column), got {n_col}",
            path=path,
            key="columns",
        )
    raw = raw.reset_index(drop=True)
    columns = dict(zip(COLUMNS, raw.items(), strict=True))
    return _standardise(
        {name: (str(src), col) for name, (src, col) in columns.items()},
        pointing,
        path,
        lambda i: f"data row {i + 1} (comment rows not counted)",
    )


def _read_tab(path: Path) -> pd.DataFrame:
    """The MAST HLSP ``.tab`` (35 or 39 whitespace-separated columns, no header)."""
    rows: list[list[str]] = []
    line_no: list[int] = []
    with _open_text(path) as f:
        for k, line in enumerate(f, start=1):
            text = line.strip()
            if text and not text.startswith("#"):
                rows.append(text.split())
                line_no.append(k)
    if not rows:
        raise InputError("expected rows of a LEGUS .tab catalogue, got none", path=path,
                         key="columns")  # fmt: skip
    n_col = len(rows[0])
    if n_col not in (TAB_CLASSIC_NCOL, TAB_HYBRID_NCOL):
        raise InputError(
            f"expected {TAB_CLASSIC_NCOL} (classic) or {TAB_HYBRID_NCOL} (hybrid "
            f"classification) whitespace-separated columns in a LEGUS .tab catalogue, got "
            f"{n_col} in line {line_no[0]}",
            path=path,
            key="columns",
        )
    for cells, k in zip(rows, line_no, strict=True):
        if len(cells) != n_col:
            raise InputError(
                f"expected {n_col} whitespace-separated columns in every row (as in line "
                f"{line_no[0]}), got {len(cells)} in line {k}",
                path=path,
                key="columns",
            )
    table = pd.DataFrame(rows, dtype=object)
    hybrid = n_col == TAB_HYBRID_NCOL
    names = (*COLUMNS[:-1], *TAB_HYBRID_EXTRA_COLUMNS) if hybrid else COLUMNS
    columns = {name: (f"col{j + 1}", table[j]) for j, name in enumerate(names)}
    if hybrid:
        columns["class_mean"] = ("class_mean", None)  # not in the hybrid layout: NaN
    df = _standardise(
        columns,
        np.zeros(len(table), dtype=np.int64),
        path,
        lambda i: f"line {line_no[i]}",
        extra=TAB_HYBRID_EXTRA_COLUMNS if hybrid else (),
    )
    if hybrid:
        _check_hybrid_classes(df, path, line_no)
    return df


def _raise_at_first(bad: np.ndarray, path: Path, key: str, message) -> None:
    """InputError ``message(i)`` at the first True row ``i`` of ``bad`` (nothing if none)."""
    if bad.any():
        raise InputError(message(int(np.flatnonzero(bad)[0])), path=path, key=key)


def _check_hybrid_classes(df: pd.DataFrame, path: Path, line_no: list[int]) -> None:
    """Class columns in 0..4 and column 34 = the class the method flag (column 35) designates."""
    key_of = {"class_mode": "col34"} | {
        name: f"col{35 + j}" for j, name in enumerate(TAB_HYBRID_EXTRA_COLUMNS)
    }
    for name in ("class_mode", *TAB_HYBRID_EXTRA_COLUMNS[1:]):
        _raise_at_first(
            ~df[name].isin(CLASSES).to_numpy(), path, key_of[name],
            lambda i, name=name: f"expected a LEGUS class in {CLASSES} in column {name!r}, got "
            f"{int(df[name].iloc[i])} in line {line_no[i]}",
        )  # fmt: skip
    method = df["class_method"].to_numpy()
    _raise_at_first(
        ~np.isin(method, list(HYBRID_CLASS_SOURCE)), path, "col35",
        lambda i: f"expected a classification-method flag in {tuple(HYBRID_CLASS_SOURCE)} in "
        f"column 'class_method', got {int(method[i])} in line {line_no[i]}",
    )  # fmt: skip
    mode = df["class_mode"].to_numpy()
    for flag, source in HYBRID_CLASS_SOURCE.items():
        _raise_at_first(
            (method == flag) & (mode != df[source].to_numpy()), path, "col34",
            lambda i, flag=flag, source=source: (
                f"expected column 34 (class_mode, the hybrid class) to equal {source} "
                f"({key_of[source]}) where class_method is {flag}, got {int(mode[i])} and "
                f"{int(df[source].iloc[i])} in line {line_no[i]}: not the 39-column hybrid "
                "layout of the LEGUS NGC 1566 catalogue"
            ),
        )  # fmt: skip


def _standardise(
    columns: dict[str, tuple[str, pd.Series | None]],
    pointing: np.ndarray,
    path: Path,
    where: Callable[[int], str],
    extra: tuple[str, ...] = (),
) -> pd.DataFrame:
    """Numbers, sentinels -> NaN, integer columns, no-fit SED -> NaN, ``log_age``.

    ``columns`` maps each standard name (:data:`COLUMNS` and ``extra``) to its
    source key (for messages) and raw values (None: absent, all NaN);
    ``where(i)`` names data row ``i`` in messages.
    """
    df = pd.DataFrame(index=pd.RangeIndex(len(pointing)))
    df["pointing"] = np.asarray(pointing, dtype=np.int64)
    for name in (*COLUMNS, *extra):
        key, col = columns[name]
        if col is None:
            df[name] = np.full(len(df), np.nan)
            continue
        values = pd.to_numeric(col, errors="coerce")
        bad = values.isna() & col.notna()
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(
                f"expected numbers in column {name!r}, got {col.iloc[i]!r} in {where(i)}",
                path=path,
                key=key,
            )
        df[name] = values.to_numpy(dtype=np.float64)
    for name in PHOTOMETRY_COLUMNS:
        v = df[name].to_numpy()
        is_sentinel = np.zeros(len(v), dtype=bool)
        for s in SENTINELS:
            is_sentinel |= np.isclose(v, s, rtol=0.0, atol=5e-4)
        df.loc[is_sentinel, name] = np.nan
    for name in (*INTEGER_COLUMNS, *extra):
        col = df[name]
        if col.isna().any():
            i = int(np.flatnonzero(col.isna().to_numpy())[0])
            raise InputError(f"expected an integer in column {name!r}, got NaN in {where(i)}",
                             path=path, key=columns[name][0])  # fmt: skip
        df[name] = col.round().astype(np.int64)
    no_fit = df["n_filters"].to_numpy() < MIN_FILTERS_SED
    df.loc[no_fit, list(SED_COLUMNS)] = np.nan
    age = df["age_yr"].to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        df["log_age"] = np.where(age > 0, np.log10(age), np.nan)
    return df[["pointing", *COLUMNS, "log_age", *extra]]


def select_clusters(
    df: pd.DataFrame,
    classes: tuple[int, ...] = CLUSTER_CLASSES,
    min_filters: int = MIN_FILTERS_SED,
) -> pd.DataFrame:
    """Clusters with SED fits: visual class (mode) in ``classes`` and ``n_filters >= min_filters``.

    Parameters
    ----------
    df : pandas.DataFrame
        Output of :func:`read_legus_catalogue`.
    classes : tuple of int
        Accepted ``class_mode`` values (default 1, 2, 3: Adamo et al. 2017).
    min_filters : int
        Minimum number of filters with a detection (LEGUS fits SEDs for >= 4).

    Returns
    -------
    pandas.DataFrame
        The selected rows (index reset), all with finite ``log_age``, ``mass``
        and ``ebv``.

    Raises
    ------
    InputError
        If a required column is missing.
    """
    for key in ("class_mode", "n_filters", "log_age", "mass", "ebv"):
        if key not in df.columns:
            raise InputError("expected a column of read_legus_catalogue output", key=key)
    keep = df["class_mode"].isin(list(classes)) & (df["n_filters"] >= min_filters)
    keep &= np.isfinite(df["log_age"]) & np.isfinite(df["mass"]) & np.isfinite(df["ebv"])
    return df.loc[keep].reset_index(drop=True)
