"""Atomic writes: nothing is ever left half-written.

Every output is first written to a temporary path in the same folder, then
renamed over the final path (``os.replace`` is atomic on POSIX within one file
system). If the writer raises, the temporary file is removed and the final
path is untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` on success.

    Parameters
    ----------
    path : str or pathlib.Path
        Final destination (a file). Parent folders are created.

    Yields
    ------
    pathlib.Path
        Temporary path in the same folder, to be written by the caller.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_path(d / "a.txt") as tmp:
    ...     _ = tmp.write_text("hi")
    >>> (d / "a.txt").read_text()
    'hi'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp creates 0600; give the usual umask-based mode
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _old(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def recover(path: str | Path, temporaries: bool = True) -> None:
    """Finish or undo a folder swap that was interrupted, and remove stale temporary folders.

    A swap (:func:`swap_in`) moves ``path`` to ``.<name>.old``, then the new folder to
    ``path``, then deletes the old one. Killed between the first two steps, ``path`` is
    missing and ``.<name>.old`` holds the previous output: it is moved back. Killed after
    the second, ``.<name>.old`` is a leftover: it is deleted. Temporary folders and files
    ``.<name>.*.tmp`` of :func:`atomic_dir` and :func:`atomic_path` left by killed writers
    are deleted too.

    Parameters
    ----------
    path : str or pathlib.Path
        The final output (folder or file).
    temporaries : bool
        Also delete the stale ``.<name>.*.tmp`` of killed writers (call this before a new
        writer starts, never while one is writing).
    """
    path = Path(path)
    old = _old(path)
    if old.exists():
        if path.exists():
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        else:
            os.replace(old, path)
    if temporaries and path.parent.is_dir():
        for tmp in path.parent.glob(f".{path.name}.*.tmp"):
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)


def swap_in(new: str | Path, path: str | Path) -> None:
    """Replace folder ``path`` by folder ``new`` (same file system); recoverable if killed.

    ``path`` goes to ``.<name>.old``, ``new`` to ``path``, then the old copy is deleted;
    :func:`recover` repairs an interrupted swap. A missing ``new`` leaves ``path`` as it is.
    """
    new, path = Path(new), Path(path)
    if not new.exists():
        return
    recover(path, temporaries=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        old = _old(path)
        os.replace(path, old)
        os.replace(new, path)
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    else:
        os.replace(new, path)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; it replaces ``path`` on success.

    Before the block runs, an interrupted earlier swap of ``path`` is repaired and stale
    temporary folders of killed runs are removed (:func:`recover`).

    Parameters
    ----------
    path : str or pathlib.Path
        Final folder. An existing folder at that path is replaced only when the
        block succeeds.

    Yields
    ------
    pathlib.Path
        Empty temporary folder to fill.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700
        swap_in(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_json(path: str | Path, obj: Any, sort_keys: bool = True) -> None:
    """Write ``obj`` as indented JSON, atomically.

    Parameters
    ----------
    path : str or pathlib.Path
        Destination file.
    obj : Any
        JSON-serialisable object (NumPy scalars are converted).
    sort_keys : bool
        Sort the keys (default); False keeps the mapping's order (headline metrics).
    """

    def default(o: Any) -> Any:
        if hasattr(o, "item"):
            return o.item()
        if hasattr(o, "tolist"):
            return o.tolist()
        raise TypeError(f"not JSON serialisable: {type(o)}")

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=sort_keys, default=default) + "\n")


class Manifest(dict):
    """A manifest read by :func:`read_manifest`: a dict whose missing keys raise InputError.

    ``manifest["bands"]`` on a manifest without ``bands`` raises
    :class:`~astrobatch.errors.InputError` naming the file and the key (not a bare
    ``KeyError``); ``get`` and ``in`` behave as for a dict.

    Parameters
    ----------
    data : dict
        The parsed JSON object.
    path : str or pathlib.Path
        The manifest file.
    """

    def __init__(self, data: dict, path: str | Path):
        super().__init__(data)
        self.path = Path(path)

    def __missing__(self, key):
        from astrobatch.errors import InputError

        raise InputError(
            f"missing manifest key; present: {sorted(self)} (re-run prepare)", self.path, str(key)
        )

    def __reduce__(self):
        return (Manifest, (dict(self), self.path))


def read_manifest(
    folder: str | Path, name: str = "manifest.json", require: tuple[str, ...] = ()
) -> Manifest:
    """The JSON manifest a ``prepare`` stage wrote in ``folder``.

    Parameters
    ----------
    folder : str or pathlib.Path
        The prepared folder.
    name : str
        File name of the manifest.
    require : tuple of str
        Keys that must be present (checked now).

    Returns
    -------
    Manifest
        A dict; indexing a missing key raises InputError naming the file and key.

    Raises
    ------
    astrobatch.errors.InputError
        Missing or unreadable file (prepare has not run), invalid JSON or UTF-8, a
        JSON value that is not an object, or a missing ``require``-d key.
    """
    from astrobatch.errors import InputError

    path = Path(folder) / name
    if not path.is_file():
        raise InputError("missing prepared file (run prepare first)", path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise InputError(f"not valid JSON ({err})", path) from None
    except OSError as err:
        raise InputError(f"cannot read the manifest ({err})", path) from None
    if not isinstance(data, dict):
        raise InputError(
            f"expected a JSON object (dict) of prepare outputs, got {type(data).__name__}", path
        )
    manifest = Manifest(data, path)
    for key in require:
        manifest[key]
    return manifest
