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
        hdul = fits.open(path, memmap=True)
    except (OSError, ValueError) as err:
        raise InputError(f"not a readable FITS file ({err})", path) from None
    if len(hdul) <= hdu or not isinstance(hdul[hdu], fits.BinTableHDU | fits.TableHDU):
        hdul.close()
        raise InputError(f"expected a binary table in HDU {hdu}", path, f"HDU {hdu}")
    return hdul


def fits_table_info(path: str | Path, hdu: int = 1) -> tuple[int, list[str]]:
    """Number of rows and column names of a FITS table, from its header only.

    Raises
    ------
    InputError
        Missing or unreadable file, or no table in HDU ``hdu``.
    """
    with _open_hdu(path, hdu) as hdul:
        h = hdul[hdu].header
        names = [h[f"TTYPE{i}"] for i in range(1, int(h["TFIELDS"]) + 1)]
        return int(h["NAXIS2"]), names


def _column(rows, name: str, path, hdu: int) -> np.ndarray:
    v = rows.field(name)
    v = np.asarray(v)
    if v.dtype.byteorder not in ("=", "|"):
        v = v.astype(v.dtype.newbyteorder("="))
    if v.ndim != 1:
        raise InputError(f"expected a scalar column, got shape {v.shape}", path, name)
    return v


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
        Missing file or column(s), non-scalar column.
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
    with _open_hdu(path, hdu) as hdul:
        data = hdul[hdu].data
        for a in range(int(start), stop, int(block_rows)):
            rows = data[a : min(a + block_rows, stop)]
            yield {c: _column(rows, c, path, hdu).copy() for c in cols}
            del rows


def read_fits_table(
    path: str | Path, columns: Sequence[str] | None = None, hdu: int = 1
) -> dict[str, np.ndarray]:
    """Read whole columns of a FITS table into memory (see :func:`iter_fits_blocks`).

    Returns
    -------
    dict of str to numpy.ndarray, each shape (n,)
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
