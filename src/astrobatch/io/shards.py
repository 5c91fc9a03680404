"""Prepared shards: one chunked HDF5 format for every study (torch-free).

A shard holds ``n_rows`` rows (sets, objects, images). Layout
(``format = "astrobatch.shard"``, ``version = 1``)::

    /<column>           (n_rows, *shape)        one dataset per named row column,
                                                chunked (chunk_rows, *shape)
    /<group>/ptr        int64 (n_rows + 1,)     CSR pointer of a ragged group: the
                                                elements of row i are ptr[i]:ptr[i+1]
    /<group>/<column>   (n_elements, *shape)    element columns of the group, chunked
    root attrs: format, version, n_rows, chunk_rows, plus free ones (split, stage, ...)
    column attrs: units (when known), names (labels of the last axis, e.g. features)

The schema (row columns and ragged groups, each a :class:`Column`) is declared
before any row is written, so an empty split still has every column with its
dtype and shape. Which columns a study stores is declared by the module that
reads them (:mod:`astrobatch.data.layouts`).

Write with :class:`ShardWriter` (block by block, memory bounded by one block,
the file appears only on success); read with :func:`open_shard`
(:class:`ShardReader`, lazy dataset access and an optional chunk cache);
:func:`shard_info` validates a file and returns its metadata without reading rows.
Every bad file raises :class:`~astrobatch.errors.InputError` naming the file,
the key and the expectation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from astrobatch.errors import InputError
from astrobatch.io.atomic import atomic_path
from astrobatch.io.errors import h5_dataset, h5_read, open_h5, reading

SHARD_FORMAT = "astrobatch.shard"
SHARD_VERSION = 1
WHAT = "prepared shard (astrobatch.shard HDF5)"
#: Chunk cache of readers that revisit hot chunks (image batches): 256 MiB, a prime
#: number of hash slots (HDF5 advises ~100 x the chunks that fit in the cache).
LARGE_CACHE = {"rdcc_nbytes": 256 * 2**20, "rdcc_nslots": 10007}
_STR = h5py.string_dtype()


@dataclass(frozen=True)
class Column:
    """Declared dtype, per-row shape, units and axis labels of one shard column.

    Parameters
    ----------
    dtype : numpy dtype-like or ``str``
        Stored dtype; ``str`` stores variable-length UTF-8 strings (read back as
        ``numpy.str_`` arrays).
    shape : tuple of int
        Shape of one row (``()`` for a scalar per row).
    units : str, optional
        Physical units, stored as the ``units`` attribute.
    names : sequence of str, optional
        Labels of the last axis (e.g. feature names), stored as the ``names``
        attribute; their number must equal ``shape[-1]``.
    attrs : dict, optional
        Extra attributes of the dataset (e.g. ``bands``).

    Examples
    --------
    >>> Column(np.float32, (2,), names=("a", "b")).storage_dtype
    dtype('float32')
    """

    dtype: Any
    shape: tuple[int, ...] = ()
    units: str | None = None
    names: tuple[str, ...] | None = None
    attrs: Mapping[str, Any] | None = None

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if self.names is not None:
            object.__setattr__(self, "names", tuple(str(n) for n in self.names))
            if not self.shape or len(self.names) != self.shape[-1]:
                raise ValueError(f"{len(self.names)} names for a last axis of shape {self.shape}")

    @property
    def is_string(self) -> bool:
        """True for a string column."""
        return self.dtype is str

    @property
    def storage_dtype(self):
        """The HDF5 dtype (h5py's string dtype for ``str``)."""
        return _STR if self.is_string else np.dtype(self.dtype)


def _create(parent: h5py.Group, key: str, col: Column, chunk: int, compression) -> h5py.Dataset:
    chunks = (max(1, int(chunk)), *(max(s, 1) for s in col.shape))
    d = parent.create_dataset(
        key, shape=(0, *col.shape), maxshape=(None, *col.shape), dtype=col.storage_dtype,
        chunks=chunks, compression=compression,
    )  # fmt: skip
    if col.units is not None:
        d.attrs["units"] = col.units
    if col.names is not None:
        d.attrs["names"] = np.array(col.names, dtype=_STR)
    for k, v in (col.attrs or {}).items():
        d.attrs[k] = v
    return d


def _as_block(col: Column, v, n: int, key: str) -> np.ndarray:
    v = np.asarray(v)
    if col.is_string:
        v = v.astype(str).astype(object)
    if v.shape != (n, *col.shape):
        raise ValueError(f"{key}: expected shape {(n, *col.shape)}, got {v.shape}")
    return v


class ShardWriter:
    """Append rows block by block to a new shard; the file appears only on success.

    Parameters
    ----------
    path : str or pathlib.Path
        Final shard path (``.h5``); written to a temporary file renamed on
        success (:func:`astrobatch.io.atomic.atomic_path`).
    columns : dict of str to Column
        Row columns (leading axis = rows).
    groups : dict of str to dict of str to Column, optional
        Ragged CSR groups: per group, its element columns.
    chunk_rows : int
        HDF5 chunk length of row columns (also stored as the ``chunk_rows`` attr,
        the streaming read unit of readers).
    element_chunk_rows : int, optional
        Chunk length of the element columns of groups (default ``chunk_rows``).
    compression : str, optional
        HDF5 filter of every dataset (``"lzf"``, ``"gzip"``; None: none).
    attrs : dict, optional
        Free root attributes (``split``, ``stage``, ...).

    Attributes
    ----------
    n_rows : int
        Rows appended so far.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "s.h5"
    >>> cols = {"y": Column(np.float32, units="dex"), "id": Column(str)}
    >>> groups = {"stars": {"x": Column(np.float32, (2,), names=("a", "b"))}}
    >>> with ShardWriter(p, cols, groups, chunk_rows=4) as w:
    ...     w.append({"y": [1.0, 2.0], "id": ["u", "v"]},
    ...              {"stars": ([0, 1, 3], {"x": np.ones((3, 2))})})
    >>> with open_shard(p, require=["y", "stars/x"]) as r:
    ...     r.n_rows, r.read("id").tolist(), r.ptr("stars").tolist(), r.names("stars/x")
    (2, ['u', 'v'], [0, 1, 3], ['a', 'b'])
    """

    def __init__(
        self,
        path: str | Path,
        columns: Mapping[str, Column],
        groups: Mapping[str, Mapping[str, Column]] | None = None,
        chunk_rows: int = 4096,
        element_chunk_rows: int | None = None,
        compression: str | None = None,
        attrs: Mapping[str, Any] | None = None,
    ):
        self.path = Path(path)
        self.columns = dict(columns)
        self.groups = {g: dict(c) for g, c in (groups or {}).items()}
        for g in self.groups:
            if g in self.columns:
                raise ValueError(f"{g!r} is both a row column and a group")
            if "ptr" in self.groups[g]:
                raise ValueError(f"group {g!r}: 'ptr' is reserved for the CSR pointer")
        self.chunk_rows = max(1, int(chunk_rows))
        self.element_chunk_rows = max(1, int(element_chunk_rows or self.chunk_rows))
        self.compression = compression
        self.attrs = dict(attrs or {})
        self.n_rows = 0
        self._n_elements = dict.fromkeys(self.groups, 0)

    def __enter__(self) -> ShardWriter:
        self._ctx = atomic_path(self.path)
        self._f = h5py.File(self._ctx.__enter__(), "w")
        self._ds = {
            k: _create(self._f, k, c, self.chunk_rows, self.compression)
            for k, c in self.columns.items()
        }
        for g, cols in self.groups.items():
            grp = self._f.create_group(g)
            ptr = grp.create_dataset(
                "ptr", shape=(1,), maxshape=(None,), dtype=np.int64,
                chunks=(self.chunk_rows,), compression=self.compression,
            )  # fmt: skip
            ptr[0] = 0
            for k, c in cols.items():
                self._ds[f"{g}/{k}"] = _create(grp, k, c, self.element_chunk_rows, self.compression)
            self._ds[f"{g}/ptr"] = ptr
        return self

    @staticmethod
    def _extend(d: h5py.Dataset, v: np.ndarray) -> None:
        if len(v):
            n = d.shape[0]
            d.resize(n + len(v), axis=0)
            d[n:] = v

    def append(
        self,
        rows: Mapping[str, Any],
        groups: Mapping[str, tuple[Any, Mapping[str, Any]]] | None = None,
    ) -> None:
        """Append a block of n rows.

        Parameters
        ----------
        rows : dict of str to array-like
            Every row column, each of shape (n, *shape); cast to the declared dtype.
        groups : dict of str to (ptr, dict of str to array-like), optional
            Every group: a block-local CSR pointer ``ptr`` (n + 1,) (starts at 0,
            non-decreasing, ends at the block's m elements) and every element
            column, each (m, *shape).

        Raises
        ------
        ValueError
            Missing or unknown column, inconsistent shapes or a bad block pointer
            (a programming error, not bad input).
        """
        groups = dict(groups or {})
        if set(rows) != set(self.columns) or set(groups) != set(self.groups):
            raise ValueError(
                f"expected columns {sorted(self.columns)} and groups {sorted(self.groups)}, "
                f"got {sorted(rows)} and {sorted(groups)}"
            )
        n = len(np.asarray(next(iter(rows.values())))) if rows else None
        blocks = {}
        for g, (ptr, cols) in groups.items():
            ptr = np.asarray(ptr, dtype=np.int64)
            n = len(ptr) - 1 if n is None else n
            if len(ptr) != n + 1 or ptr[0] != 0 or np.any(np.diff(ptr) < 0):
                raise ValueError(f"{g}/ptr: expected {n + 1} non-decreasing values from 0")
            if set(cols) != set(self.groups[g]):
                want = sorted(self.groups[g])
                raise ValueError(f"group {g}: expected columns {want}, got {sorted(cols)}")
            m = int(ptr[-1])
            for k, c in self.groups[g].items():
                blocks[f"{g}/{k}"] = _as_block(c, cols[k], m, f"{g}/{k}")
            blocks[f"{g}/ptr"] = ptr[1:] + self._n_elements[g]
            self._n_elements[g] += m
        if n is None:
            raise ValueError("a shard without columns or groups has no rows")
        for k, c in self.columns.items():
            blocks[k] = _as_block(c, rows[k], n, k)
        for k, v in blocks.items():
            self._extend(self._ds[k], v)
        self.n_rows += n

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                a = self._f.attrs
                a["format"] = SHARD_FORMAT
                a["version"] = SHARD_VERSION
                a["n_rows"] = self.n_rows
                a["chunk_rows"] = self.chunk_rows
                for k, v in self.attrs.items():
                    a[k] = v
            self._f.close()
        finally:
            self._ctx.__exit__(exc_type, exc, tb)
        return False


# ----------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------


def _strings(v) -> list[str]:
    return [s.decode() if isinstance(s, bytes) else str(s) for s in np.atleast_1d(v)]


def _attr(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray) and v.dtype.kind in "OS":
        return _strings(v)
    return v.item() if isinstance(v, np.generic) else v


def _dataset_info(d: h5py.Dataset) -> dict:
    return {
        "shape": tuple(d.shape),
        "dtype": str if h5py.check_string_dtype(d.dtype) else d.dtype,
        "units": _attr(d.attrs["units"]) if "units" in d.attrs else None,
        "names": _strings(d.attrs["names"]) if "names" in d.attrs else None,
        "chunks": d.chunks,
    }


def shard_info(path: str | Path, require: Iterable[str] = ()) -> dict:
    """Validate a shard and return its metadata (only the CSR pointers are read).

    Checks: the file exists and is HDF5; root attrs ``format`` ==
    ``"astrobatch.shard"`` and ``version`` == 1; ``n_rows`` and ``chunk_rows``
    present; every ``require``-d key present; every row column has ``n_rows``
    rows; every group has an int64 ``ptr`` of ``n_rows + 1`` values going from 0,
    non-decreasing, to the length of each of its element columns.

    Parameters
    ----------
    path : str or pathlib.Path
    require : iterable of str
        Keys that must exist: row columns (``"x"``), group columns
        (``"stars/features"``) or groups (``"stars"``).

    Returns
    -------
    dict
        ``path`` (pathlib.Path), ``n_rows`` int, ``chunk_rows`` int, ``version``
        int, ``attrs`` dict (free root attrs, strings decoded), ``columns`` dict
        of key -> {``shape``, ``dtype`` (numpy dtype or ``str``), ``units``,
        ``names``, ``chunks``} for row and group columns (group columns keyed
        ``"group/column"``), ``groups`` dict of group -> {``n_elements`` int,
        ``columns`` list of str}.

    Raises
    ------
    InputError
        Missing file, unreadable or corrupted HDF5, wrong format or version,
        missing key, wrong row count, invalid CSR pointer.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("prepared shard not found (run prepare first)", path)
    try:
        with open_h5(path, WHAT) as f, reading(path, WHAT) as ctx:
            fmt = _attr(f.attrs.get("format"))
            if fmt != SHARD_FORMAT:
                raise InputError(f"not a prepared shard: expected {SHARD_FORMAT!r}, got {fmt!r} "
                                 "(re-run prepare)", path, "format")  # fmt: skip
            version = _attr(f.attrs.get("version"))
            if version != SHARD_VERSION:
                raise InputError(f"unsupported shard version {version!r}, expected "
                                 f"{SHARD_VERSION} (re-run prepare)", path, "version")  # fmt: skip
            for k in ("n_rows", "chunk_rows"):
                if k not in f.attrs:
                    raise InputError("missing root attribute (expected an int)", path, k)
            n = int(f.attrs["n_rows"])
            chunk_rows = max(1, int(f.attrs["chunk_rows"]))
            for k in require:
                if k not in f:
                    raise InputError("missing key in prepared shard", path, k)
            columns, groups = {}, {}
            for k, obj in f.items():
                ctx.key = k
                if isinstance(obj, h5py.Dataset):
                    h5_dataset(f, k, path)
                    if obj.shape[:1] != (n,):
                        raise InputError(f"expected {n} rows (n_rows), got shape {obj.shape}",
                                         path, k)  # fmt: skip
                    columns[k] = _dataset_info(obj)
                    continue
                if "ptr" not in obj:
                    raise InputError("missing CSR pointer of a ragged group", path, f"{k}/ptr")
                ctx.key = f"{k}/ptr"
                ptr = h5_read(h5_dataset(obj, "ptr", path, "iu", ctx.key), path, ctx.key)
                if (not np.issubdtype(ptr.dtype, np.integer) or ptr.shape != (n + 1,)
                        or ptr[0] != 0 or np.any(np.diff(ptr) < 0)):  # fmt: skip
                    raise InputError(
                        f"expected int64 ({n + 1},) (n_rows + 1) going from 0, non-decreasing; "
                        f"got {ptr.dtype} {ptr.shape}", path, f"{k}/ptr",
                    )  # fmt: skip
                m = int(ptr[-1])
                for c in obj:
                    if c == "ptr":
                        continue
                    ctx.key = f"{k}/{c}"
                    d = h5_dataset(obj, c, path, name=ctx.key)
                    if d.shape[:1] != (m,):
                        raise InputError(f"expected {m} elements (ptr[-1]), got shape {d.shape}",
                                         path, f"{k}/{c}")  # fmt: skip
                    columns[f"{k}/{c}"] = _dataset_info(d)
                groups[k] = {"n_elements": m, "columns": [c for c in obj if c != "ptr"]}
            attrs = {
                k: _attr(v)
                for k, v in f.attrs.items()
                if k not in ("format", "version", "n_rows", "chunk_rows")
            }
    except InputError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as err:  # opening the file
        raise InputError(f"corrupted or unreadable shard ({err})", path) from None
    return {
        "path": path,
        "n_rows": n,
        "chunk_rows": chunk_rows,
        "version": version,
        "attrs": attrs,
        "columns": columns,
        "groups": groups,
    }


class ShardReader:
    """A validated shard, its datasets opened on first access (picklable).

    Parameters
    ----------
    path : str or pathlib.Path
    require : iterable of str
        Keys that must exist (see :func:`shard_info`).
    cache : dict, optional
        h5py chunk-cache options of the open file (``rdcc_nbytes``,
        ``rdcc_nslots``), e.g. :data:`LARGE_CACHE`; None: h5py's default (1 MiB).

    Attributes
    ----------
    info : dict
        :func:`shard_info` of the file.

    Raises
    ------
    InputError
        See :func:`shard_info`.

    Notes
    -----
    The HDF5 file is opened lazily and the handle kept (HDF5's chunk cache
    belongs to the open dataset); pickling (DataLoader workers) drops it, and
    the copy re-opens the file on first access.
    """

    def __init__(self, path: str | Path, require: Iterable[str] = (), cache: dict | None = None):
        self.path = Path(path)
        self.info = shard_info(self.path, require)
        self.cache = dict(cache or {})
        self._file: h5py.File | None = None
        self._ds: dict[str, h5py.Dataset] = {}

    @property
    def n_rows(self) -> int:
        """Rows in the shard."""
        return self.info["n_rows"]

    @property
    def chunk_rows(self) -> int:
        """Chunk length of the row columns (the streaming read unit)."""
        return self.info["chunk_rows"]

    @property
    def attrs(self) -> dict:
        """Free root attributes (``split``, ``stage``, ...)."""
        return self.info["attrs"]

    @property
    def file(self) -> h5py.File:
        """The open HDF5 file (opened on first use)."""
        if self._file is None:
            try:
                self._file = open_h5(self.path, WHAT, **self.cache)
            except (OSError, ValueError, RuntimeError) as err:
                raise InputError(f"unreadable shard ({err})", self.path) from None
        return self._file

    def __contains__(self, key: str) -> bool:
        return key in self.info["columns"] or key in self.info["groups"]

    def __getitem__(self, key: str) -> h5py.Dataset:
        """The (lazy) dataset ``key`` (``"x"``, ``"stars/features"``, ``"stars/ptr"``).

        Raises
        ------
        InputError
            Unknown key.
        """
        if key not in self.info["columns"] and not (
            key.endswith("/ptr") and key[:-4] in self.info["groups"]
        ):
            raise InputError("missing key in prepared shard", self.path, key)
        if key not in self._ds:  # keep the handle: the chunk cache belongs to the open dataset
            with reading(self.path, WHAT, key):
                self._ds[key] = h5_dataset(self.file, key, self.path)
        return self._ds[key]

    def read(self, key: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows (or elements) ``start:stop`` of ``key``; strings as a ``numpy.str_`` array.

        Raises
        ------
        InputError
            Unknown key, or the rows cannot be read (corrupt chunk, truncated file).
        """
        d = self[key]
        with reading(self.path, WHAT, key):
            if h5py.check_string_dtype(d.dtype):
                return np.array(d.asstr()[start:stop], dtype=str)
            return d[start:stop]

    def ptr(self, group: str) -> np.ndarray:
        """CSR pointer of ``group``, int64 (n_rows + 1,).

        Raises
        ------
        InputError
            Unknown group, or the pointer cannot be read.
        """
        if group not in self.info["groups"]:
            raise InputError("missing ragged group in prepared shard", self.path, group)
        return h5_read(self[f"{group}/ptr"], self.path, f"{group}/ptr")

    def names(self, key: str) -> list[str] | None:
        """Labels of the last axis of ``key`` (its ``names`` attr), or None."""
        self[key]
        return self.info["columns"][key]["names"]

    def units(self, key: str) -> str | None:
        """Units of ``key`` (its ``units`` attr), or None."""
        self[key]
        return self.info["columns"][key]["units"]

    def close(self) -> None:
        """Close the file (re-opened on next access)."""
        self._ds = {}
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_file"], state["_ds"] = None, {}
        return state


def open_shard(path: str | Path, require: Iterable[str] = (), cache: dict | None = None):
    """Validate and open a shard: a :class:`ShardReader` (usable as a context manager).

    Raises
    ------
    InputError
        See :func:`shard_info`.
    """
    return ShardReader(path, require, cache)
