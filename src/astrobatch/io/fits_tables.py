"""FITS binary tables of labelled stars: atomic writing, lazy block reading.

The stellar_xp fine-tuning file is one FITS binary table (HDU 1) with one
column per label, label error and feature (:mod:`astrobatch.studies.stellar_xp.columns`):
float32 values with NaN for missing, ``source_id`` int64. Units go into
``TUNITn`` and free-form metadata into the header (astropy ``Table.meta``).

Reading is lazy (``astropy.io.fits`` with ``memmap=True``): :func:`iter_fits_blocks`
converts only the rows of one block at a time, so a table larger than memory
is streamed.

Examples
--------
>>> import tempfile, pathlib, numpy as np
>>> p = pathlib.Path(tempfile.mkdtemp()) / "t.fits"
>>> write_fits_table(p, {"source_id": np.arange(3), "teff": np.array([5000., np.nan, 4000.])},
...                  units={"teff": "K"})
>>> fits_table_info(p)
(3, ['source_id', 'teff'])
>>> [b["teff"].tolist() for b in iter_fits_blocks(p, ["teff"], block_rows=2)]
[[5000.0, nan], [4000.0]]
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from astrobatch.errors import InputError
from astrobatch.io.atomic import atomic_path
from astrobatch.io.errors import guarded, reading

WHAT = "FITS binary table"


def _fits_errors() -> tuple:
    """astropy's own exception types (``VerifyError`` is a plain ``Exception``)."""
    from astropy.io.fits.verify import VerifyError

    return (VerifyError,)


def write_fits_table(
    path: str | Path,
    columns: Mapping[str, np.ndarray],
    units: Mapping[str, str] | None = None,
    meta: Mapping[str, object] | None = None,
    float_dtype=np.float32,
) -> None:
    """Write columns as a FITS binary table (HDU 1), atomically.

    Parameters
    ----------
    path : str or pathlib.Path
        Output ``.fits`` file; it appears only once complete.
    columns : mapping of str to numpy.ndarray, each shape (n,)
        Columns in order. Floating columns are cast to ``float_dtype`` (NaN =
        missing); integer columns (``source_id``) are kept.
    units : mapping of str to str, optional
        Units per column (FITS ``TUNITn``), e.g. ``{"teff": "K"}``.
    meta : mapping, optional
        Header keywords (keys of at most 8 characters, scalar values).
    float_dtype : numpy dtype
        Storage type of floating columns.

    Raises
    ------
    InputError
        Columns of different lengths.
    """
    from astropy.table import Table

    lengths = {k: len(v) for k, v in columns.items()}
    if len(set(lengths.values())) > 1:
        raise InputError(f"columns have different lengths {lengths}", path)
    t = Table()
    for k, v in columns.items():
        v = np.asarray(v)
        t[k] = v.astype(float_dtype) if v.dtype.kind == "f" else v
        if units and k in units:
            t[k].unit = units[k]
    for k, v in (meta or {}).items():
        t.meta[k] = v
    path = Path(path)
    with atomic_path(path) as tmp:
        t.write(tmp, format="fits", overwrite=True)


def _open_hdu(path: str | Path, hdu: int):
    from astropy.io import fits

    path = Path(path)
    if not path.is_file():
        raise InputError("FITS table not found", path)
    try:
        with reading(path, WHAT, also=_fits_errors):
            hdul = fits.open(path, memmap=True)
    except InputError as err:
        raise InputError(f"not a readable FITS file ({err.detail})", path) from None
    try:
        with reading(path, WHAT, f"HDU {hdu}", also=_fits_errors):
            if len(hdul) <= hdu or not isinstance(hdul[hdu], fits.BinTableHDU | fits.TableHDU):
                raise InputError(f"expected a binary table in HDU {hdu}", path, f"HDU {hdu}")
    except BaseException:
        hdul.close()
        raise
    return hdul


def fits_table_info(path: str | Path, hdu: int = 1) -> tuple[int, list[str]]:
    """Number of rows and column names of a FITS table, from its header only.

    Raises
    ------
    InputError
        Missing or unreadable file, or no table in HDU ``hdu``.
    """
    with _open_hdu(path, hdu) as hdul, reading(path, WHAT, f"HDU {hdu}", _fits_errors) as ctx:
        h = hdul[hdu].header
        ctx.key = "TFIELDS"
        nfields = int(h["TFIELDS"])
        names = []
        for i in range(1, nfields + 1):
            ctx.key = f"TTYPE{i}"
            names.append(str(h[f"TTYPE{i}"]))
        ctx.key = "NAXIS2"
        n = int(h["NAXIS2"])
        if n < 0 or nfields < 0:
            raise InputError(f"expected NAXIS2, TFIELDS >= 0, got {n}, {nfields}", path, "NAXIS2")
        size = int(hdul[hdu].size)
        info = hdul[hdu].fileinfo()
        if info and size:
            end = int(info["datLoc"]) + size
            if end > Path(path).stat().st_size:
                raise InputError(
                    f"file truncated: the table of {n} rows needs {end} bytes, the file has "
                    f"{Path(path).stat().st_size}",
                    path,
                    f"HDU {hdu}",
                )
        return n, names


def _column(rows, name: str, path, hdu: int) -> np.ndarray:
    v = rows.field(name)
    v = np.asarray(v)
    if v.dtype.byteorder not in ("=", "|"):
        v = v.astype(v.dtype.newbyteorder("="))
    if v.ndim != 1:
        raise InputError(f"expected a scalar column, got shape {v.shape}", path, name)
    return v


@guarded(WHAT, also=_fits_errors)
def iter_fits_blocks(
    path: str | Path,
    columns: Sequence[str] | None = None,
    block_rows: int = 65536,
    hdu: int = 1,
    start: int = 0,
    stop: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Read a FITS table in row blocks (memory-mapped, bounded memory).

    Parameters
    ----------
    path : str or pathlib.Path
    columns : sequence of str, optional
        Columns to read (default all).
    block_rows : int
        Rows per block.
    hdu : int
        HDU index of the table.
    start, stop : int, optional
        Row range.

    Yields
    ------
    dict of str to numpy.ndarray, each shape (<= block_rows,)
        Native-endian arrays; floats keep NaN, integers their values.

    Raises
    ------
    InputError
        Missing file or column(s), non-scalar column, truncated or corrupt file.
    """
    n, names = fits_table_info(path, hdu)
    cols = list(names if columns is None else columns)
    missing = [c for c in cols if c not in names]
    if missing:
        raise InputError(
            f"missing column(s) {missing[:8]}; the table has {len(names)} columns",
            path,
            missing[0],
        )
    stop = n if stop is None else min(int(stop), n)
    with _open_hdu(path, hdu) as hdul, reading(path, WHAT, f"HDU {hdu}", _fits_errors) as ctx:
        data = hdul[hdu].data
        if data is None and stop > 0:
            raise InputError(f"expected {stop} table rows, found no data", path, f"HDU {hdu}")
        for a in range(int(start), stop, int(block_rows)):
            rows = data[a : min(a + block_rows, stop)]
            block = {}
            for c in cols:
                ctx.key = c
                block[c] = _column(rows, c, path, hdu).copy()
            ctx.key = f"HDU {hdu}"
            yield block
            del rows


@guarded(WHAT, also=_fits_errors)
def read_fits_table(
    path: str | Path, columns: Sequence[str] | None = None, hdu: int = 1
) -> dict[str, np.ndarray]:
    """Read whole columns of a FITS table into memory (see :func:`iter_fits_blocks`).

    Returns
    -------
    dict of str to numpy.ndarray, each shape (n,)

    Raises
    ------
    InputError
        As :func:`iter_fits_blocks`.
    """
    parts: dict[str, list[np.ndarray]] = {}
    n, names = fits_table_info(path, hdu)
    cols = list(names if columns is None else columns)
    for block in iter_fits_blocks(path, cols, block_rows=max(n, 1), hdu=hdu):
        for k, v in block.items():
            parts.setdefault(k, []).append(v)
    if not parts:  # empty table: still check the columns
        return {c: np.empty(0) for c in cols}
    return {k: np.concatenate(v) for k, v in parts.items()}
