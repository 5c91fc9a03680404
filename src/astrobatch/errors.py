"""The package's own exceptions.

Every problem with user input (a missing file, a wrong HDF5 key or shape, NaNs
where none are allowed, an invalid parameter) raises :class:`InputError` or one
of its subclasses. The CLI turns them into one readable message and exit
status 2 (see :func:`astrobatch.cli.main`).
"""

from __future__ import annotations

from pathlib import Path


class AstrobatchError(Exception):
    """Base class of all errors raised on purpose by astrobatch."""


class InputError(AstrobatchError):
    """Bad user input: the message names the file, the key and what was expected.

    Parameters
    ----------
    message : str
        What is wrong and what was expected.
    path : str or pathlib.Path, optional
        The offending file.
    key : str, optional
        The offending key (HDF5 dataset, column, parameter name).

    Examples
    --------
    >>> str(InputError("expected shape (N,)", path="raw.h5", key="stars/x"))
    'raw.h5: key stars/x: expected shape (N,)'
    """

    def __init__(self, message: str, path: str | Path | None = None, key: str | None = None):
        self.path = None if path is None else str(path)
        self.key = key
        self.detail = message
        parts = []
        if self.path is not None:
            parts.append(self.path)
        if key is not None:
            parts.append(f"key {key}")
        parts.append(message)
        super().__init__(": ".join(parts))

    def in_file(self, path: str | Path) -> InputError:
        """This error with ``path`` as its file, when it names none yet (for pure helpers).

        Examples
        --------
        >>> str(InputError("too few runs", key="run_id").in_file("raw.h5"))
        'raw.h5: key run_id: too few runs'
        """
        return self if self.path is not None else InputError(self.detail, path, self.key)


class ParamsError(InputError):
    """Invalid ``params.yaml`` content (unknown key, wrong type, impossible value)."""
