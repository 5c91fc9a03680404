"""The stellar pretraining file: an HDF5 file of compound datasets ``sslset<N>_part<k>``.

Layout (the upstream Masked Stellar Autoencoder layout, McKay & Fabbro 2025)::

    /sslset<N>_part<k>   compound (structured) dataset, shape (n_rows,), n_rows <= rows_per_part
                         one field per column: float32 (NaN = missing), except
                         ``source_id`` (int64) when present
    attrs (root, optional): format = "astrobatch.compound_h5", rows_per_part

``N`` numbers a set of rows (e.g. a query or a release) and ``k`` the parts of
that set; keys are ordered by ``(N, k)``. Every function here reads or writes
row blocks, so a file far larger than memory is handled with memory bounded
by one block.

Examples
--------
>>> import tempfile, pathlib, numpy as np
>>> p = pathlib.Path(tempfile.mkdtemp()) / "pre.h5"
>>> with CompoundH5Writer(p, ["source_id", "G"], rows_per_part=3) as w:
...     w.append({"source_id": np.arange(5), "G": np.linspace(10, 14, 5)})
>>> list_keys(p), [key_rows(p, k) for k in list_keys(p)]
(['sslset0_part0', 'sslset0_part1'], [3, 2])
>>> block = next(iter_blocks(p, "sslset0_part1", ["G"], block_rows=10))
>>> as_matrix(block, ["G"]).ravel().tolist()
[13.0, 14.0]
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np

from astrobatch.errors import InputError
from astrobatch.io.atomic import atomic_path
from astrobatch.io.errors import guarded, open_h5, reading

WHAT = "pretraining HDF5 file (sslset<N>_part<k> compound datasets)"

FORMAT_NAME = "astrobatch.compound_h5"
KEY_RE = re.compile(r"^sslset(\d+)_part(\d+)$")
#: Columns stored as int64 rather than float32.
INT_COLUMNS = frozenset({"source_id"})


def part_key(set_index: int, part: int) -> str:
    """Dataset name of part ``part`` of set ``set_index``: ``sslset<N>_part<k>``.

    Examples
    --------
    >>> part_key(2, 10)
    'sslset2_part10'
    """
    return f"sslset{int(set_index)}_part{int(part)}"


def _key_order(key: str) -> tuple[int, int]:
    m = KEY_RE.match(key)
    return (int(m.group(1)), int(m.group(2))) if m else (1 << 62, 0)


def compound_dtype(columns: Sequence[str]) -> np.dtype:
    """The structured dtype of ``columns``: float32 fields, int64 for ``source_id``."""
    return np.dtype([(c, np.int64 if c in INT_COLUMNS else np.float32) for c in columns])


def _open(path: str | Path) -> h5py.File:
    path = Path(path)
    if not path.is_file():
        raise InputError("pretraining HDF5 file not found", path)
    try:
        with reading(path, WHAT):
            return open_h5(path, WHAT)
    except InputError as err:
        raise InputError(f"not a readable HDF5 file ({err.detail})", path) from None


def _dataset(f: h5py.File, key: str) -> h5py.Dataset:
    if key not in f:
        keys = sorted((k for k in f if KEY_RE.match(k)), key=_key_order)
        raise InputError(f"missing dataset; expected one of {keys}", f.filename, key)
    d = f[key]
    if not isinstance(d, h5py.Dataset) or d.dtype.names is None or d.ndim != 1:
        raise InputError(
            "expected a 1-D compound (structured) dataset with one field per column, got "
            f"{getattr(d, 'shape', None)} {getattr(d, 'dtype', type(d).__name__)}",
            f.filename,
            key,
        )
    return d


@guarded(WHAT)
def list_keys(path: str | Path) -> list[str]:
    """The ``sslset<N>_part<k>`` datasets of a file, ordered by ``(N, k)``.

    Raises
    ------
    InputError
        Missing or unreadable file, or no ``sslset<N>_part<k>`` dataset in it.
    """
    with _open(path) as f:
        keys = sorted((k for k in f if KEY_RE.match(k)), key=_key_order)
        if not keys:
            raise InputError(
                f"no dataset named sslset<N>_part<k>; found {sorted(f)[:10]}", path, "/"
            )
    return keys


@guarded(WHAT)
def key_rows(path: str | Path, key: str) -> int:
    """Number of rows of dataset ``key``.

    Raises
    ------
    InputError
        Missing file or key, or not a compound dataset.
    """
    with _open(path) as f:
        return int(_dataset(f, key).shape[0])


@guarded(WHAT)
def key_columns(path: str | Path, key: str) -> list[str]:
    """Field names (columns) of dataset ``key``.

    Raises
    ------
    InputError
        Missing file or key, or not a compound dataset.
    """
    with _open(path) as f:
        return list(_dataset(f, key).dtype.names)


def _check_columns(d: h5py.Dataset, columns: Sequence[str] | None, key: str) -> list[str]:
    names = list(d.dtype.names)
    if columns is None:
        return names
    missing = [c for c in columns if c not in names]
    if missing:
        raise InputError(
            f"missing column(s) {missing[:8]}{' ...' if len(missing) > 8 else ''}; the dataset "
            f"has {len(names)} fields, expected all of the {len(columns)} requested",
            d.file.filename,
            key,
        )
    bad = [c for c in columns if d.dtype[c].shape != () or d.dtype[c].kind not in "fiu"]
    if bad:
        raise InputError(
            f"field(s) {bad[:8]} are not scalar numbers ({d.dtype[bad[0]]}); expected one "
            "float per row and column",
            d.file.filename,
            key,
        )
    return list(columns)


@guarded(WHAT)
def iter_blocks(
    path: str | Path,
    key: str,
    columns: Sequence[str] | None = None,
    block_rows: int = 65536,
    start: int = 0,
    stop: int | None = None,
) -> Iterator[np.ndarray]:
    """Read dataset ``key`` in consecutive row blocks (bounded memory).

    Parameters
    ----------
    path : str or pathlib.Path
    key : str
        Dataset name (``sslset<N>_part<k>``).
    columns : sequence of str, optional
        Fields to read (default all); only these are read from disk.
    block_rows : int
        Rows per yielded block.
    start, stop : int, optional
        Row range (default the whole dataset).

    Yields
    ------
    numpy.ndarray, shape (<= block_rows,), structured
        Rows with the requested fields.

    Raises
    ------
    InputError
        Missing file, key or column(s).
    """
    with _open(path) as f, reading(path, WHAT, key):
        d = _dataset(f, key)
        cols = _check_columns(d, columns, key)
        view = d.fields(cols) if columns is not None else d
        n = d.shape[0] if stop is None else min(int(stop), d.shape[0])
        for a in range(int(start), n, int(block_rows)):
            block = view[a : min(a + block_rows, n)]
            if block.dtype.names is None:  # a single field comes back as a plain array
                block = _as_structured({cols[0]: block}, cols)
            yield block


def _as_structured(cols: Mapping[str, np.ndarray], names: Sequence[str]) -> np.ndarray:
    n = len(next(iter(cols.values()))) if cols else 0
    out = np.empty(n, dtype=compound_dtype(names))
    for c in names:
        out[c] = cols[c]
    return out


def as_matrix(block: np.ndarray, columns: Sequence[str], dtype=np.float32) -> np.ndarray:
    """Stack fields of a structured block into a 2-D array.

    Parameters
    ----------
    block : numpy.ndarray, shape (n,), structured
    columns : sequence of str
        Fields, in output column order; a field absent from ``block`` gives NaN.
    dtype : numpy dtype
        Output dtype (float).

    Returns
    -------
    numpy.ndarray, shape (n, len(columns))
    """
    out = np.full((len(block), len(columns)), np.nan, dtype=dtype)
    names = set(block.dtype.names or ())
    for j, c in enumerate(columns):
        if c in names:
            out[:, j] = block[c]
    return out


def sample_positions(total: int, k: int, seed: int) -> np.ndarray:
    """``k`` distinct sorted positions drawn uniformly from ``range(total)``, memory O(k).

    Small pools use a permutation; large ones draw with replacement, drop
    duplicates and top up until ``k`` distinct values remain, then keep a
    seeded random ``k`` of them, so a billion-row pool needs no billion-entry array.

    Examples
    --------
    >>> p = sample_positions(10**12, 5, seed=0)
    >>> len(np.unique(p)), bool(np.all(np.diff(p) > 0))
    (5, True)
    """
    rng = np.random.default_rng(seed)
    total, k = int(total), min(int(k), int(total))
    if total <= 4 * k or total <= 1 << 20:
        return np.sort(rng.permutation(total)[:k])
    picks = np.unique(rng.integers(0, total, size=k + k // 8 + 16))
    while len(picks) < k:
        picks = np.unique(np.concatenate([picks, rng.integers(0, total, size=k)]))
    return np.sort(rng.choice(picks, size=k, replace=False))


@guarded(WHAT)
def sample_rows(
    path: str | Path,
    keys: Sequence[str],
    n: int,
    seed: int,
    columns: Sequence[str] | None = None,
    block_rows: int = 65536,
) -> np.ndarray:
    """A seeded uniform sample of at most ``n`` rows across ``keys``, without replacement.

    Row positions are drawn uniformly from the concatenation of ``keys`` with
    ``numpy.random.default_rng(seed)``; only the blocks of ``block_rows`` rows
    that contain a drawn row are read, one at a time, so memory is bounded by
    the sample plus one block whatever the file size.

    Parameters
    ----------
    path : str or pathlib.Path
    keys : sequence of str
        Datasets to sample from.
    n : int
        Maximum sample size (all rows when the datasets hold fewer).
    seed : int
        Seed of the draw: the same seed, file and keys give the same rows.
    columns : sequence of str, optional
        Fields to read (default all fields of the first key).
    block_rows : int
        Read granularity.

    Returns
    -------
    numpy.ndarray, shape (min(n, total),), structured
        The sampled rows, in file order.

    Raises
    ------
    InputError
        Missing file, key or column(s).
    """
    sizes = [key_rows(path, k) for k in keys]
    total = int(sum(sizes))
    if columns is None:
        columns = key_columns(path, keys[0]) if keys else []
    k = min(int(n), total)
    if k == 0:
        return np.empty(0, dtype=compound_dtype(columns))
    picks = sample_positions(total, k, seed)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    parts = []
    for key, lo, hi in zip(keys, offsets[:-1], offsets[1:], strict=True):
        sel = picks[(picks >= lo) & (picks < hi)] - lo
        if not len(sel):
            continue
        # one open per key: HDF5's metadata cache of an open file grows with every dataset
        # header it reads (wide compound types are large), up to ~32 MiB
        with _open(path) as f:
            d = _dataset(f, key)
            cols = _check_columns(d, columns, key)
            view = d.fields(cols)
            for b in np.unique(sel // block_rows):
                a = int(b) * block_rows
                block = view[a : min(a + block_rows, d.shape[0])]
                if block.dtype.names is None:
                    block = _as_structured({cols[0]: block}, cols)
                inside = sel[(sel >= a) & (sel < a + block_rows)] - a
                parts.append(block[inside])
    return np.concatenate(parts)


class CompoundH5Writer:
    """Write rows into ``sslset<N>_part<k>`` datasets of at most ``rows_per_part`` rows.

    The file appears at ``path`` only when the ``with`` block succeeds (written
    to a temporary file in the same folder, then renamed).

    Parameters
    ----------
    path : str or pathlib.Path
        Output HDF5 file.
    columns : sequence of str
        Field names, in order (``source_id`` is stored as int64, others float32).
    rows_per_part : int
        Maximum rows per dataset.
    set_index : int
        ``N`` of the dataset names.
    chunk_rows : int
        HDF5 chunk length (capped at ``rows_per_part``).
    compression : str, optional
        h5py compression filter (e.g. ``"gzip"``, ``"lzf"``); None = none.

    Raises
    ------
    InputError
        From :meth:`append`, if a block misses a column or its columns have
        different lengths.
    """

    def __init__(
        self,
        path: str | Path,
        columns: Sequence[str],
        rows_per_part: int = 2_000_000,
        set_index: int = 0,
        chunk_rows: int = 4096,
        compression: str | None = None,
    ):
        if rows_per_part < 1:
            raise InputError(f"rows_per_part must be >= 1, got {rows_per_part}", path)
        self.path = Path(path)
        self.columns = list(columns)
        self.dtype = compound_dtype(self.columns)
        self.rows_per_part = int(rows_per_part)
        self.set_index = int(set_index)
        self.chunk_rows = max(1, min(int(chunk_rows), self.rows_per_part))
        self.compression = compression
        self.keys: list[str] = []
        self._ds: h5py.Dataset | None = None

    def __enter__(self) -> CompoundH5Writer:
        self._ctx = atomic_path(self.path)
        self._f = h5py.File(self._ctx.__enter__(), "w")
        self._f.attrs["format"] = FORMAT_NAME
        self._f.attrs["rows_per_part"] = self.rows_per_part
        return self

    def _new_part(self) -> h5py.Dataset:
        key = part_key(self.set_index, len(self.keys))
        self.keys.append(key)
        return self._f.create_dataset(
            key,
            shape=(0,),
            maxshape=(self.rows_per_part,),
            dtype=self.dtype,
            chunks=(self.chunk_rows,),
            compression=self.compression,
        )

    def append(self, block: Mapping[str, np.ndarray] | np.ndarray) -> None:
        """Append rows, opening new parts as the current one fills.

        Parameters
        ----------
        block : dict of str to numpy.ndarray (each (n,)), or structured array (n,)
            Values of every column; NaN for missing floats.
        """
        names = block.dtype.names if isinstance(block, np.ndarray) else list(block)
        missing = [c for c in self.columns if c not in names]
        if missing:
            raise InputError(f"block misses column(s) {missing[:8]}", self.path)
        lengths = {len(block[c]) for c in self.columns}
        if len(lengths) > 1:
            raise InputError(f"columns of a block have different lengths {lengths}", self.path)
        n = lengths.pop() if lengths else 0
        rows = np.empty(n, dtype=self.dtype)
        for c in self.columns:
            rows[c] = block[c]
        done = 0
        while done < n:
            if self._ds is None or self._ds.shape[0] >= self.rows_per_part:
                self._ds = self._new_part()
            d = self._ds
            take = min(n - done, self.rows_per_part - d.shape[0])
            a = d.shape[0]
            d.resize(a + take, axis=0)
            d[a : a + take] = rows[done : done + take]
            done += take

    def __exit__(self, exc_type, exc, tb):
        try:
            self._f.close()
        finally:
            self._ctx.__exit__(exc_type, exc, tb)
        return False
