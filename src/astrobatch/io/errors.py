"""One place that turns low-level read errors into :class:`~astrobatch.errors.InputError`.

Libraries raise many exception types on a corrupt or unexpected file: h5py
``OSError`` (a corrupt gzip chunk, a truncated file), ``KeyError``,
``TypeError`` (a group where a dataset belongs), ``ValueError``; numpy
``ValueError`` (object arrays without pickle), ``zipfile.BadZipFile``,
``zlib.error``, ``EOFError``; astropy ``OSError`` / ``ValueError`` /
``IndexError`` on truncated FITS; ``UnicodeDecodeError`` on binary text.
Every reader of a user-supplied file runs inside :func:`reading` (a context
manager) or is decorated with :func:`guarded`: any of :data:`FOREIGN_ERRORS`
becomes one :class:`InputError` naming the file, the key being read (set with
``ctx.key = ...`` as the reader proceeds) and the expectation. An
:class:`InputError` raised inside passes through unchanged.

The module also holds the checks every format shares: :func:`check_finite`
(count and first index of NaN/inf), :func:`h5_dataset` (a dataset, not a
group, of the expected kind) and :func:`h5_read` (a whole dataset, refusing
sizes that a corrupted header invents).

Examples
--------
>>> with reading("x.h5", "star-set file") as ctx:  # doctest: +IGNORE_EXCEPTION_DETAIL
...     ctx.key = "ptr"
...     raise OSError("Can't synchronously read data (inflate() failed)")
Traceback (most recent call last):
astrobatch.errors.InputError: x.h5: key ptr: cannot read the star-set file ...
"""

from __future__ import annotations

import functools
import inspect
import struct
import zipfile
import zlib
from pathlib import Path

import h5py
import numpy as np

from astrobatch.errors import InputError

__all__ = [
    "FOREIGN_ERRORS",
    "ReadContext",
    "check_finite",
    "guarded",
    "h5_dataset",
    "h5_read",
    "reading",
]

#: Exception types that readers of corrupt files raise (h5py, numpy, zipfile, astropy,
#: pandas, decoding); :func:`reading` turns them into :class:`InputError`.
FOREIGN_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    EOFError,
    LookupError,  # KeyError, IndexError
    ValueError,  # UnicodeDecodeError, pandas ParserError, numpy casting
    TypeError,
    AttributeError,
    ArithmeticError,  # OverflowError, ZeroDivisionError
    RuntimeError,
    MemoryError,
    zipfile.BadZipFile,
    zlib.error,
    struct.error,
)

#: Largest whole-dataset read (bytes) allowed beyond 1000 x the file size: a corrupted
#: dataspace header can claim any shape, and allocating it would exhaust memory.
MAX_READ_BYTES = 2**31


class ReadContext:
    """Context manager that maps :data:`FOREIGN_ERRORS` to :class:`InputError`.

    Parameters
    ----------
    path : str or pathlib.Path
        The file being read (named in every message).
    what : str
        What the file is, for the message (``"cutout file"``).
    key : str, optional
        The key being read; update :attr:`key` as the reader moves on.
    also : tuple of exception types, or a callable returning one
        Format-specific foreign types to map too (e.g. astropy's ``VerifyError``); a
        callable is called only when an exception arrives (no import cost otherwise).

    Raises
    ------
    InputError
        On exit, in place of any of :data:`FOREIGN_ERRORS` raised in the block.
    """

    def __init__(self, path: str | Path, what: str = "file", key: str | None = None, also=()):
        self.path = path
        self.what = what
        self.key = key
        self.also = also

    def __enter__(self) -> ReadContext:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None or isinstance(exc, InputError):
            return False
        also = self.also() if callable(self.also) else self.also
        if not isinstance(exc, FOREIGN_ERRORS + tuple(also)):
            return False
        raise to_input_error(exc, self.path, self.what, self.key) from exc


def to_input_error(
    exc: BaseException, path: str | Path, what: str = "file", key: str | None = None
) -> InputError:
    """The :class:`InputError` that stands for a low-level read error ``exc``.

    Parameters
    ----------
    exc : BaseException
        The foreign exception.
    path : str or pathlib.Path
        The file.
    what : str
        What the file is expected to be.
    key : str, optional
        The key being read.

    Returns
    -------
    InputError
    """
    detail = " ".join(str(exc).split())[:300] or "no detail"
    return InputError(
        f"cannot read the {what} (corrupt, truncated or not the expected layout; expected a "
        f"valid {what}): {type(exc).__name__}: {detail}",
        path,
        key,
    )


def reading(path: str | Path, what: str = "file", key: str | None = None, also=()) -> ReadContext:
    """A :class:`ReadContext` for reading ``path``: foreign errors become InputError.

    Parameters
    ----------
    path : str or pathlib.Path
    what : str
        What the file is (``"star-set HDF5 file"``).
    key : str, optional
        The first key read.
    also : tuple of exception types
        Extra foreign types of the format.

    Returns
    -------
    ReadContext

    Raises
    ------
    InputError
        In place of any of :data:`FOREIGN_ERRORS` raised in the ``with`` block.
    """
    return ReadContext(path, what, key, also)


def guarded(what: str, path_arg: str = "path", also=()):
    """Decorator: run a reader (function or generator) inside :func:`reading`.

    Parameters
    ----------
    what : str
        What the file is, for messages.
    path_arg : str
        Name of the reader's parameter holding the file path.
    also : tuple of exception types
        Extra foreign types of the format.

    Returns
    -------
    callable
        The decorator.

    Raises
    ------
    InputError
        (From the decorated reader) in place of any of :data:`FOREIGN_ERRORS`.
    """

    def deco(fn):
        sig = inspect.signature(fn)

        def path_of(args, kwargs):
            try:
                return sig.bind(*args, **kwargs).arguments.get(path_arg, "<unknown file>")
            except TypeError:
                return "<unknown file>"

        if inspect.isgeneratorfunction(fn):

            @functools.wraps(fn)
            def gen_wrapper(*args, **kwargs):
                with reading(path_of(args, kwargs), what, also=also):
                    yield from fn(*args, **kwargs)

            return gen_wrapper

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with reading(path_of(args, kwargs), what, also=also):
                return fn(*args, **kwargs)

        return wrapper

    return deco


def check_finite(values, path: str | Path, key: str, what: str = "values") -> np.ndarray:
    """Raise unless every value is finite; return ``values`` as an array.

    Parameters
    ----------
    values : array_like, numeric
    path : str or pathlib.Path
        The file, for the message.
    key : str
        The key (column, dataset), for the message.
    what : str
        What the values are (``"pixels"``).

    Returns
    -------
    numpy.ndarray

    Raises
    ------
    InputError
        With the number of NaN/inf values and the index (along the first axis) of
        the first one.

    Examples
    --------
    >>> check_finite([1.0, float("nan")], "t.h5", "x")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    astrobatch.errors.InputError: t.h5: key x: expected finite values, got 1 NaN/inf ...
    """
    arr = np.asarray(values)
    if arr.dtype.kind not in "fc":
        return arr
    bad = ~np.isfinite(arr)
    if bad.any():
        rows = bad.reshape(len(arr), -1).any(axis=1) if arr.ndim > 1 else bad
        first = int(np.flatnonzero(rows)[0]) if arr.ndim else 0
        raise InputError(
            f"expected finite {what}, got {int(bad.sum())} NaN/inf (first at index {first})",
            path,
            key,
        )
    return arr


def h5_dataset(
    parent: h5py.Group, key: str, path: str | Path, kinds: str | None = None, name=None
) -> h5py.Dataset:
    """``parent[key]`` checked to be a dataset (not a group) of dtype kind in ``kinds``.

    Parameters
    ----------
    parent : h5py.Group or h5py.File
    key : str
        Name inside ``parent``.
    path : str or pathlib.Path
        The file, for the message.
    kinds : str, optional
        Accepted numpy dtype kinds, e.g. ``"iu"`` or ``"f"``; ``"T"`` accepts
        HDF5 strings. None: any.
    name : str, optional
        The key as named in messages (default ``key``).

    Returns
    -------
    h5py.Dataset

    Raises
    ------
    InputError
        Missing key, a group (or link) instead of a dataset, a wrong dtype.
    """
    name = key if name is None else name
    if key not in parent:
        raise InputError(f"missing dataset; present: {sorted(parent.keys())}", path, name)
    d = parent[key]
    if not isinstance(d, h5py.Dataset):
        raise InputError(f"expected a dataset, found a {type(d).__name__}", path, name)
    if d.shape is None:
        raise InputError("expected an array, found an empty (null) dataspace", path, name)
    if kinds is not None:
        is_str = h5py.check_string_dtype(d.dtype) is not None
        ok = (is_str and "T" in kinds) or (not is_str and d.dtype.kind in kinds)
        if not ok or d.dtype.names is not None:
            raise InputError(f"expected dtype kind in {kinds!r}, got {d.dtype}", path, name)
    return d


def h5_read(d: h5py.Dataset, path: str | Path, name: str | None = None) -> np.ndarray:
    """Read a whole dataset, refusing a size that no file of this size could hold.

    Parameters
    ----------
    d : h5py.Dataset
    path : str or pathlib.Path
        The file (its size bounds the read: at most ``max(2 GiB, 1000 x size)``).
    name : str, optional
        The key as named in messages (default the dataset's name).

    Returns
    -------
    numpy.ndarray
        Strings are returned as ``str`` arrays.

    Raises
    ------
    InputError
        A claimed size over the bound, or any read error (corrupt chunk ...).
    """
    name = d.name.lstrip("/") if name is None else name
    with reading(path, "HDF5 file", name):
        if d.shape is None:
            raise InputError("expected an array, found an empty (null) dataspace", path, name)
        size = Path(path).stat().st_size if Path(path).is_file() else 0
        nbytes = int(np.prod(d.shape, dtype=np.float64) * max(d.dtype.itemsize, 1))
        if nbytes > max(MAX_READ_BYTES, 1000 * size):
            raise InputError(
                f"dataset claims shape {d.shape} ({nbytes} bytes), impossible for a file of "
                f"{size} bytes; expected a consistent HDF5 file",
                path,
                name,
            )
        if h5py.check_string_dtype(d.dtype) is not None:
            return np.array(d.asstr()[()], dtype=str)
        return np.asarray(d[()])


# ------------------------------------------------------------------ HDF5 crash isolation
#: Seconds the metadata probe of an HDF5 file may take (``ASTROBATCH_HDF5_PROBE_TIMEOUT``).
PROBE_TIMEOUT_S = 60.0
_PROBE = r"""
import sys
import h5py

def visit(name, obj):
    for key in obj.attrs:
        obj.attrs[key]
    if isinstance(obj, h5py.Dataset):
        obj.shape, obj.dtype, obj.chunks, obj.compression

try:
    with h5py.File(sys.argv[1], "r") as f:
        visit("/", f)
        f.visititems(visit)
except Exception:
    pass  # a Python-level error: the reader itself reports it as InputError
"""
_probed: dict[tuple[str, int, int], None] = {}


def probe_hdf5(path: str | Path, what: str = "HDF5 file") -> None:
    """Walk an HDF5 file's metadata in a child process, so that a corrupt file cannot crash
    or hang this one.

    On some byte-corrupted files the HDF5 C library crashes the interpreter (segmentation
    fault) or loops forever while h5py reads attributes; no Python code can catch either.
    The child opens the file, reads every attribute and the header of every dataset; a
    child killed by a signal or running past the timeout marks the file as corrupt.
    Python-level errors are left to the reader (they become InputError there). A file
    is probed once per process (keyed by path, size and modification time).

    Raises
    ------
    InputError
        The HDF5 library crashed or hung on the file.
    """
    import os
    import subprocess
    import sys

    from astrobatch.errors import InputError

    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        return  # missing: the reader says so
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key in _probed or not p.is_file():
        return
    timeout = float(os.environ.get("ASTROBATCH_HDF5_PROBE_TIMEOUT", PROBE_TIMEOUT_S))
    try:
        r = subprocess.run([sys.executable, "-c", _PROBE, str(p)], capture_output=True,
                           timeout=timeout, check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise InputError(
            f"corrupt {what}: the HDF5 library hung reading its metadata (>{timeout:g} s)", p
        ) from None
    if r.returncode < 0 or r.returncode > 128:
        raise InputError(
            f"corrupt {what}: the HDF5 library crashed reading its metadata "
            f"(signal {abs(r.returncode) if r.returncode < 0 else r.returncode - 128})",
            p,
        )
    _probed[key] = None


def open_h5(path: str | Path, what: str = "HDF5 file", **kwargs) -> h5py.File:
    """``h5py.File(path, "r", **kwargs)`` after :func:`probe_hdf5`: the one way to open a
    user-supplied HDF5 file for reading."""
    probe_hdf5(path, what)
    return h5py.File(path, "r", **kwargs)
