"""Train/val/test splits by a salted hash of object ids (torch-free).

A split decided by the id alone is stable: adding or removing other objects never moves an
object to another split, and the same id lands in the same split in every study that uses
the same salt.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np


def hash_unit(ids: Iterable, salt: str) -> np.ndarray:
    """A uniform number in [0, 1) per id, from SHA-256 of ``f"{salt}:{id}"``.

    Parameters
    ----------
    ids : iterable
        Ids of any type with a stable ``str`` (strings, integers), n of them.
    salt : str
        Changes every number (a different split for the same ids).

    Returns
    -------
    numpy.ndarray, shape (n,), float64
        The first 8 bytes of the digest over 2**64.

    Examples
    --------
    >>> u = hash_unit(["a", "b"], "s")
    >>> bool(((0 <= u) & (u < 1)).all()), bool((hash_unit(["a"], "s") == u[:1]).all())
    (True, True)
    """
    return np.array(
        [int.from_bytes(hashlib.sha256(f"{salt}:{i}".encode()).digest()[:8], "big") / 2**64
         for i in ids], np.float64,
    )  # fmt: skip


def hash_splits(ids: Iterable, train: float, val: float, salt: str) -> np.ndarray:
    """0 (train), 1 (val) or 2 (test) per id: :func:`hash_unit` cut at ``train``, ``train + val``.

    Parameters
    ----------
    ids : iterable, n of them
    train, val : float
        Fractions in [0, 1], ``train + val <= 1``; test takes the rest.
    salt : str

    Returns
    -------
    numpy.ndarray, shape (n,), int8

    Examples
    --------
    >>> hash_splits(range(10000), 0.7, 0.15, "s").tolist().count(0) / 10000
    0.7019
    """
    u = hash_unit(ids, salt)
    return np.where(u < train, 0, np.where(u < train + val, 1, 2)).astype(np.int8)
