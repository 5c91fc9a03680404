"""Reading checkpoints without running code from them: the one weights-only loader.

Every checkpoint the package reads (``best.ckpt`` for evaluation, a pretrained encoder for
fine-tuning, ``last.ckpt`` before a resume) goes through :func:`load_checkpoint`:
``torch.load(weights_only=True)``, which builds tensors, containers, numbers and strings
(plus the path types of :data:`SAFE_CHECKPOINT_GLOBALS`) and refuses anything that would
need a full unpickle, so a poisoned file cannot execute code. There is no fallback to a
full load. Any failure (missing, truncated, random bytes, foreign pickle, not a dict)
becomes one :class:`~astrobatch.errors.InputError` naming the file.
"""

from __future__ import annotations

import pathlib
from pathlib import Path
from typing import Any

import torch

from astrobatch.errors import InputError

__all__ = ["SAFE_CHECKPOINT_GLOBALS", "load_checkpoint"]

#: Non-tensor types a checkpoint may hold and a weights-only load accepts besides the
#: defaults: paths (e.g. a datamodule's ``prepared_dir`` in its hyper-parameters); building
#: one runs no code of the file.
SAFE_CHECKPOINT_GLOBALS: list[type] = [
    pathlib.PosixPath,
    pathlib.PurePosixPath,
    pathlib.WindowsPath,
    pathlib.PureWindowsPath,
]


def load_checkpoint(path: str | Path, what: str = "checkpoint") -> dict[str, Any]:
    """Load a checkpoint file weights-only (never a full unpickle).

    Parameters
    ----------
    path : str or pathlib.Path
        A ``.ckpt`` written by Lightning (or a plain ``torch.save`` of a dict).
    what : str
        How the file is named in messages (``"pretraining checkpoint"``).

    Returns
    -------
    dict
        The checkpoint (``state_dict``, and for Lightning files ``loops``, ``epoch``, ...).

    Raises
    ------
    astrobatch.errors.InputError
        The file is missing, unreadable, truncated, needs a full unpickle (refused, never
        executed), or does not hold a dict.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.ckpt"
    >>> torch.save({"state_dict": {"w": torch.ones(2)}}, p)
    >>> load_checkpoint(p)["state_dict"]["w"].tolist()
    [1.0, 1.0]
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found", path=path)
    try:
        with torch.serialization.safe_globals(SAFE_CHECKPOINT_GLOBALS):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for bad bytes; all are the same to us
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "Unsupported global" in ln), lines[0] if lines else "")
        raise InputError(
            f"cannot read the {what} with a weights-only load (truncated or corrupt, or a file "
            f"that needs a full unpickle, which is refused): {type(err).__name__}: "
            f"{detail[:300]}",
            path=path,
        ) from None
    if not isinstance(ckpt, dict):
        raise InputError(f"expected a {what} holding a dict, got {type(ckpt).__name__}", path)
    return ckpt
