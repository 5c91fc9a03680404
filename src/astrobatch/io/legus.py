"""Reader of LEGUS star-cluster catalogues (Adamo et al. 2017, ApJ 841, 131; arXiv:1705.01588).

The public LEGUS cluster catalogues (e.g. ``ngc628_Catalog.csv``, described in
``ngc628_LEGUS_description.txt``) have 35 columns: id, position, 5-band Vega
photometry with errors, the concentration index, SED-fit age, mass and
E(B-V) with 68 % limits, per-band fit residuals, reduced chi2, Q probability,
number of filters and the visual classes (mode and mean). The CSV export adds
a leading empty column (``Column1``), so CSV ``Column2`` is description
column 1 (source id); :func:`read_legus_catalogue` accepts both layouts. In
that export a ``#`` in the leading column marks a comment row: all-empty ``#``
rows separate the catalogues of successive HST pointings (``ngc628_Catalog.csv``
holds two: 3080 sources, then 593 whose ids restart at 1), and ``#`` rows with
values are sources the authors commented out (14 in NGC 628); both are dropped,
and the column ``pointing`` (0, 1, ...) counts the separators, so that
``(pointing, source_id)`` identifies a source.

Sentinels in the photometry columns become NaN: 66.666 (not in the field of
view), 99.999 (not detected), 44.444 (CI-based aperture correction undefined).
SED-fit quantities (age, mass, E(B-V) and their limits) are NaN where no fit
was made (``n_filters < 4``).

Band names follow the cutout channels (:data:`astrobatch.io.cutouts.PHANGS_BANDS`):
the ACS/WFC F435W column of NGC 628 is named ``mag_F438W`` (the B-band channel).
"""

from __future__ import annotations

from pathlib import Path

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

#: Visual classes kept as clusters: 1 compact symmetric, 2 asymmetric, 3 multi-peaked.
CLUSTER_CLASSES: tuple[int, ...] = (1, 2, 3)
#: Minimum number of filters with a detection for an SED fit (LEGUS: Nflt >= 4).
MIN_FILTERS_SED = 4


@guarded("LEGUS cluster catalogue CSV")
def read_legus_catalogue(path: str | Path) -> pd.DataFrame:
    """Read a LEGUS cluster catalogue CSV into standard column names.

    Parameters
    ----------
    path : str or pathlib.Path
        CSV export of a LEGUS catalogue: 35 data columns, optionally preceded
        by an empty index column (36 columns, the layout of
        ``ngc628_Catalog.csv``); one header row; UTF-8 with or without BOM.

    Returns
    -------
    pandas.DataFrame
        One row per source (comment rows dropped), columns ``pointing``
        (int64, 0 for the first pointing's block), :data:`COLUMNS` and
        ``log_age`` (log10 of ``age_yr``, dex). Units: ``x, y`` pixels of the reference
        frame; ``ra, dec`` deg; ``mag_*`` Vega magnitudes (Galactic extinction
        and aperture corrections included), ``err_*`` mag; ``ci`` mag;
        ``age_*`` yr; ``mass*`` Msun; ``ebv*`` mag (starburst law, Calzetti
        et al. 2000). ``source_id``, ``n_filters`` and ``class_mode`` are int64;
        everything else float64. Sentinels (:data:`SENTINELS`) in photometry
        columns and SED quantities of sources without a fit
        (``n_filters < 4``) are NaN.

    Raises
    ------
    InputError
        If the file is missing or unreadable, has a wrong number of columns,
        or a column is not numeric (the message names the file and the column).

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
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("LEGUS catalogue not found (expected a CSV file)", path=path)
    try:
        raw = pd.read_csv(path, encoding="utf-8-sig", header=0)
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
    df = pd.DataFrame(index=pd.RangeIndex(len(raw)))
    df["pointing"] = np.asarray(pointing, dtype=np.int64)
    for name, (src, col) in zip(COLUMNS, raw.items(), strict=True):
        values = pd.to_numeric(col, errors="coerce")
        bad = values.isna() & col.notna()
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(
                f"expected numbers in column {name!r}, got {col.iloc[i]!r} in data row {i + 1} "
                "(comment rows not counted)",
                path=path,
                key=str(src),
            )
        df[name] = values.to_numpy(dtype=np.float64)
    for name in PHOTOMETRY_COLUMNS:
        v = df[name].to_numpy()
        is_sentinel = np.zeros(len(v), dtype=bool)
        for s in SENTINELS:
            is_sentinel |= np.isclose(v, s, rtol=0.0, atol=5e-4)
        df.loc[is_sentinel, name] = np.nan
    for name in ("source_id", "n_filters", "class_mode"):
        col = df[name]
        if col.isna().any():
            i = int(np.flatnonzero(col.isna().to_numpy())[0])
            raise InputError(f"expected an integer in data row {i + 1}, got NaN", path=path,
                             key=name)  # fmt: skip
        df[name] = col.round().astype(np.int64)
    no_fit = df["n_filters"].to_numpy() < MIN_FILTERS_SED
    df.loc[no_fit, list(SED_COLUMNS)] = np.nan
    age = df["age_yr"].to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        df["log_age"] = np.where(age > 0, np.log10(age), np.nan)
    return df


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
