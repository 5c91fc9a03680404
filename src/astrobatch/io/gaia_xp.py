"""Readers of real Gaia DR3 XP continuous-basis coefficient files, in all common layouts.

Layouts recognised (by the columns present, in any of FITS, ECSV or CSV):

``flat``
    One column per coefficient: ``bp_coeff_0`` .. ``bp_coeff_54`` and
    ``e_bp_coeff_i``, ``rp_coeff_i``, ``e_rp_coeff_i`` (0-based), as in the
    GaiaXPy / Flatiron-style chunk tables (``gaia_dr3_xp_continuous_chunk0.fits``).
``archive``
    The Gaia archive table ``gaiadr3.xp_continuous_mean_spectrum``:
    ``bp_coefficients``, ``bp_coefficient_errors``, ``rp_coefficients``,
    ``rp_coefficient_errors`` hold 55 values per source: FITS variable- or
    fixed-length array columns, ECSV arrays, or CSV strings ``"(a, b, ...)"``
    or ``"[a,b,...]"``. An empty cell (a source without BP or RP) gives NaN.

Output columns (:func:`read_gaia_xp`): ``source_id`` (int64) then
``bp_1..bp_55, bpe_1..bpe_55, rp_1..rp_55, rpe_1..rpe_55`` (float64; 1-based,
``bp_coeff_0`` -> ``bp_1``), plus ``G, e_G, BP, e_BP, RP, e_RP`` (Vega mag)
when the file carries Gaia photometry (``phot_g_mean_mag`` ... with
``phot_*_mean_flux_over_error``, or ``G``/``e_G`` ...). None of the files
shipped in ``data/external/stellar_xp`` has photometry.

References
----------
Gaia Collaboration, De Angeli et al. 2023, A&A 674, A2 (XP processing);
Carrasco et al. 2021, A&A 652, A86 (the continuous representation);
GaiaXPy (https://github.com/gaia-dpci/GaiaXPy) for the archive formats.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from astrobatch.errors import InputError
from astrobatch.io.errors import guarded

N_COEFF = 55
BANDS = ("bp", "rp")
ARCHIVE_COLS = (
    "bp_coefficients",
    "bp_coefficient_errors",
    "rp_coefficients",
    "rp_coefficient_errors",
)
#: Gaia archive photometry columns -> output names (mag, flux_over_error).
PHOT_ARCHIVE = {
    "G": ("phot_g_mean_mag", "phot_g_mean_flux_over_error"),
    "BP": ("phot_bp_mean_mag", "phot_bp_mean_flux_over_error"),
    "RP": ("phot_rp_mean_mag", "phot_rp_mean_flux_over_error"),
}
#: 2.5 / ln(10): magnitude error of a relative flux error (first order).
MAG_PER_REL_FLUX = 2.5 / np.log(10.0)
EXPECTED = (
    "expected a Gaia XP table with either flat columns bp_coeff_0..bp_coeff_54, "
    "e_bp_coeff_i, rp_coeff_i, e_rp_coeff_i or archive columns " + ", ".join(ARCHIVE_COLS)
)


def xp_output_columns() -> list[str]:
    """Columns of :func:`read_gaia_xp` after ``source_id`` (photometry excluded)."""
    cols = []
    for b in BANDS:
        cols += [f"{b}_{i}" for i in range(1, N_COEFF + 1)]
        cols += [f"{b}e_{i}" for i in range(1, N_COEFF + 1)]
    return cols


def _read_table(path: Path) -> dict[str, object]:
    """Columns of a FITS/ECSV table (astropy) or CSV file (pandas), as arrays or lists."""
    name = path.name.lower()
    try:
        if name.endswith((".fits", ".fit", ".fits.gz", ".fit.gz", ".fz")):
            from astropy.io import fits

            with fits.open(path, memmap=False) as hdul:
                hdu = next((h for h in hdul if isinstance(h, fits.BinTableHDU)), None)
                if hdu is None:
                    raise InputError("no binary table HDU; expected a FITS table", path)
                data = hdu.data
                return {c: _native(data.field(c)) for c in hdu.columns.names}
        if name.endswith((".ecsv", ".ecsv.gz")):
            from astropy.table import Table

            t = Table.read(path, format="ascii.ecsv")
            return {c: t[c] for c in t.colnames}
        if name.endswith((".csv", ".csv.gz")):
            df = pd.read_csv(path, dtype={"source_id": "Int64"}, keep_default_na=True)
            return {c: df[c].to_numpy() for c in df.columns}
    except InputError:
        raise
    except Exception as err:  # astropy/pandas raise many types on corrupted files
        raise InputError(f"cannot read the table ({type(err).__name__}: {err})", path) from None
    raise InputError("unknown file type; expected .fits, .ecsv or .csv (optionally .gz)", path)


def _native(v: np.ndarray) -> np.ndarray:
    """A copy of a FITS column in native byte order (object arrays kept)."""
    v = np.array(v)
    if v.dtype.kind != "O" and v.dtype.byteorder not in ("=", "|"):
        v = v.astype(v.dtype.newbyteorder("="))
    return v


def _float_column(col, path: Path, name: str) -> np.ndarray:
    """A scalar column as float64 with masked / null entries as NaN."""
    try:
        if np.ma.isMaskedArray(col) or hasattr(col, "mask"):
            return np.ma.filled(np.ma.asarray(col, dtype=np.float64), np.nan)
        return np.asarray(col, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InputError(f"expected numbers ({err})", path, name) from None


def _parse_cell(cell, path: Path, name: str, row: int) -> np.ndarray:
    """One array cell (array, masked, None, '' or '(a, b, ...)' string) -> (55,) float64."""
    out = np.full(N_COEFF, np.nan)
    if cell is None or cell is np.ma.masked:
        return out
    if isinstance(cell, bytes):
        cell = cell.decode()
    if isinstance(cell, str):
        s = cell.strip().strip("()[]{}").strip()
        if not s or s.lower() in ("nan", "null", "none", "--"):
            return out
        try:
            vals = np.array(
                [np.nan if v.strip().lower() in ("", "nan", "null", "none", "--") else float(v)
                 for v in s.split(",")],
                dtype=np.float64,
            )  # fmt: skip
        except ValueError:
            raise InputError(
                f"row {row}: expected a list of numbers like '(a, b, ...)', got {cell[:40]!r}",
                path,
                name,
            ) from None
    else:
        if isinstance(cell, float) and np.isnan(cell):
            return out
        vals = np.ma.filled(np.ma.asarray(cell, dtype=np.float64), np.nan).ravel()
    if vals.size == 0:
        return out
    if vals.size != N_COEFF:
        raise InputError(f"row {row}: expected {N_COEFF} coefficients, got {vals.size}", path, name)
    return vals


def _array_column(col, n: int, path: Path, name: str) -> np.ndarray:
    """An array-valued column (fixed 2-D, variable-length objects or strings) -> (n, 55)."""
    arr = col
    if not isinstance(arr, np.ndarray) or arr.dtype == object or arr.dtype.kind in "US":
        arr = np.asarray(col, dtype=object) if not isinstance(col, np.ndarray) else col
    if arr.ndim == 2 and arr.dtype.kind in "fiu":
        if arr.shape != (n, N_COEFF):
            raise InputError(f"expected shape ({n}, {N_COEFF}), got {arr.shape}", path, name)
        return _float_column(arr, path, name)
    if arr.ndim != 1:
        raise InputError(f"expected one array of {N_COEFF} values per row", path, name)
    out = np.empty((n, N_COEFF))
    for i in range(n):
        out[i] = _parse_cell(arr[i], path, name, i)
    return out


def _source_ids(cols: dict, path: Path) -> np.ndarray:
    if "source_id" not in cols:
        raise InputError(f"missing column; {EXPECTED}", path, "source_id")
    sid = cols["source_id"]
    if hasattr(sid, "mask") and np.any(np.ma.getmaskarray(sid)):
        raise InputError("missing source_id values", path, "source_id")
    try:
        if isinstance(sid, pd.arrays.IntegerArray) or str(getattr(sid, "dtype", "")) == "Int64":
            return np.asarray(sid, dtype=np.int64)
        return np.asarray(sid).astype(np.int64)
    except (TypeError, ValueError) as err:
        raise InputError(f"expected integer source ids ({err})", path, "source_id") from None


def layout(colnames) -> str:
    """The XP layout of a table from its column names: ``"flat"``, ``"archive"`` or ``""``.

    Examples
    --------
    >>> layout(["source_id", "bp_coefficients", "bp_coefficient_errors",
    ...         "rp_coefficients", "rp_coefficient_errors"])
    'archive'
    >>> layout(["source_id", "x"])
    ''
    """
    names = set(colnames)
    if all(c in names for c in ARCHIVE_COLS):
        return "archive"
    flat = [f"{p}{b}_coeff_{i}" for b in BANDS for p in ("", "e_") for i in range(N_COEFF)]
    if all(c in names for c in flat):
        return "flat"
    return ""


@guarded("Gaia XP coefficient table")
def read_gaia_xp(path: str | Path) -> pd.DataFrame:
    """Read a real Gaia DR3 XP coefficient file (any layout of the module docstring).

    Parameters
    ----------
    path : str or pathlib.Path
        ``.fits``, ``.ecsv`` or ``.csv`` file (optionally gzipped).

    Returns
    -------
    pandas.DataFrame
        One row per source: ``source_id`` (int64), ``bp_1..bp_55``,
        ``bpe_1..bpe_55``, ``rp_1..rp_55``, ``rpe_1..rpe_55`` (float64,
        e-/s in the Gaia basis normalisation; NaN where the band is missing),
        then ``G, e_G, BP, e_BP, RP, e_RP`` (Vega mag) if the file has them.

    Raises
    ------
    InputError
        Missing or unreadable file, unknown file type, no ``source_id``,
        neither the flat nor the archive columns, a coefficient array whose
        length is not 55, or a cell that is not a list of numbers.

    Examples
    --------
    >>> import astrobatch
    >>> root = Path(astrobatch.__file__).parents[2]  # the repository (editable install)
    >>> df = read_gaia_xp(root / "data/external/stellar_xp/XP_CONTINUOUS_RAW_with_missing_BP.csv")
    >>> len(df), int(df["bp_1"].isna().sum()), int(df["rp_1"].isna().sum())
    (3, 1, 0)
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("Gaia XP file not found", path)
    cols = _read_table(path)
    sid = _source_ids(cols, path)
    n = len(sid)
    kind = layout(cols)
    out: dict[str, np.ndarray] = {"source_id": sid}
    if kind == "archive":
        for b in BANDS:
            c = _array_column(cols[f"{b}_coefficients"], n, path, f"{b}_coefficients")
            e = _array_column(cols[f"{b}_coefficient_errors"], n, path, f"{b}_coefficient_errors")
            for i in range(N_COEFF):
                out[f"{b}_{i + 1}"] = c[:, i]
            for i in range(N_COEFF):
                out[f"{b}e_{i + 1}"] = e[:, i]
    elif kind == "flat":
        for b in BANDS:
            for i in range(N_COEFF):
                out[f"{b}_{i + 1}"] = _float_column(cols[f"{b}_coeff_{i}"], path, f"{b}_coeff_{i}")
            for i in range(N_COEFF):
                name = f"e_{b}_coeff_{i}"
                out[f"{b}e_{i + 1}"] = _float_column(cols[name], path, name)
    else:
        raise InputError(f"{EXPECTED}; found {sorted(cols)[:12]}", path)
    for band, (mag, foe) in PHOT_ARCHIVE.items():
        if band in cols:
            out[band] = _float_column(cols[band], path, band)
            err = f"e_{band}"
            out[err] = _float_column(cols[err], path, err) if err in cols else np.full(n, np.nan)
        elif mag in cols:
            out[band] = _float_column(cols[mag], path, mag)
            if foe in cols:
                with np.errstate(divide="ignore", invalid="ignore"):
                    out[f"e_{band}"] = MAG_PER_REL_FLUX / _float_column(cols[foe], path, foe)
            else:
                out[f"e_{band}"] = np.full(n, np.nan)
    # a band whose every coefficient is 0 (some exports write zeros for "no spectrum")
    for b in BANDS:
        coeffs = np.stack([out[f"{b}_{i}"] for i in range(1, N_COEFF + 1)], axis=1)
        empty = np.all(coeffs == 0, axis=1)
        if empty.any():
            for i in range(1, N_COEFF + 1):
                out[f"{b}_{i}"] = np.where(empty, np.nan, out[f"{b}_{i}"])
                out[f"{b}e_{i}"] = np.where(empty, np.nan, out[f"{b}e_{i}"])
    return pd.DataFrame(out)
