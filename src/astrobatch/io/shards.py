"""Prepared shards: chunked HDF5 files of scaled set elements, streamable by a DataLoader.

Layout (``format = "astrobatch.set_shard"``)::

    /features           float32 (n_elements, F)  chunked (chunk_rows, F), scaled
    /ptr                int64   (n_sets + 1,)     CSR pointer over rows of /features
    /sets/target        float32 (n_sets,)         target in model space (scaled)
    /sets/<col>         (n_sets,)                 ids and physical per-set columns
    attrs: feature_keys (F,), target_key, split

Written block by block with :class:`ShardWriter`, so memory stays bounded by
one block whatever the size of the data set.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from astrobatch.errors import InputError
from astrobatch.io.atomic import atomic_path

SHARD_FORMAT = "astrobatch.set_shard"


class ShardWriter:
    """Append sets block by block to a new shard; the file appears only on success.

    Parameters
    ----------
    path : str or pathlib.Path
        Final shard path (``.h5``).
    feature_keys : sequence of str
        Names of the F feature columns.
    chunk_rows : int
        HDF5 chunk length along rows.
    attrs : dict, optional
        Extra root attributes.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "s.h5"
    >>> with ShardWriter(p, ["x"], chunk_rows=4) as w:
    ...     w.append(np.ones((3, 1), np.float32), np.array([0, 3]), {"target": np.array([1.0])})
    >>> read_shard(p)["ptr"].tolist()
    [0, 3]
    """

    def __init__(self, path, feature_keys: Sequence[str], chunk_rows: int = 65536, attrs=None):
        self.path = Path(path)
        self.feature_keys = list(feature_keys)
        self.chunk_rows = int(chunk_rows)
        self.attrs = dict(attrs or {})
        self._ctx = None

    def __enter__(self) -> ShardWriter:
        self._ctx = atomic_path(self.path)
        tmp = self._ctx.__enter__()
        self._f = h5py.File(tmp, "w")
        F = len(self.feature_keys)
        self._feat = self._f.create_dataset(
            "features", shape=(0, F), maxshape=(None, F), dtype=np.float32,
            chunks=(max(1, self.chunk_rows // max(F, 1)), F),
        )  # fmt: skip
        self._ptr = [np.zeros(1, dtype=np.int64)]
        self._sets: dict[str, list[np.ndarray]] = {}
        self._rows = 0
        return self

    def append(self, features: np.ndarray, ptr: np.ndarray, sets: dict[str, np.ndarray]) -> None:
        """Append a block of sets.

        Parameters
        ----------
        features : numpy.ndarray, shape (n_rows, F), float32
        ptr : numpy.ndarray, shape (n_block_sets + 1,), int64
            Block-local CSR pointer (starts at 0, ends at n_rows).
        sets : dict of str to numpy.ndarray, each (n_block_sets,)
            Per-set columns; every block must carry the same keys.
        """
        n = len(features)
        if n:
            self._feat.resize(self._rows + n, axis=0)
            self._feat[self._rows :] = features
        self._ptr.append(np.asarray(ptr[1:], dtype=np.int64) + self._rows)
        self._rows += n
        for k, v in sets.items():
            self._sets.setdefault(k, []).append(np.asarray(v))

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                f = self._f
                f.attrs["format"] = SHARD_FORMAT
                f.attrs["feature_keys"] = np.array(self.feature_keys, dtype=h5py.string_dtype())
                for k, v in self.attrs.items():
                    f.attrs[k] = v
                f.create_dataset("ptr", data=np.concatenate(self._ptr))
                g = f.create_group("sets")
                for k, parts in self._sets.items():
                    v = np.concatenate(parts)
                    if v.dtype.kind in "UO":
                        v = v.astype(object).astype(h5py.string_dtype())
                    g.create_dataset(k, data=v)
            self._f.close()
        finally:
            self._ctx.__exit__(exc_type, exc, tb)
        return False


def _dec(v: np.ndarray) -> np.ndarray:
    if v.dtype.kind in "OS":
        return np.array([s.decode() if isinstance(s, bytes) else str(s) for s in v])
    return v


def read_shard(path: str | Path, load_features: bool = True) -> dict:
    """Read a shard's index (and optionally its features) into memory, validating it.

    Parameters
    ----------
    path : str or pathlib.Path
    load_features : bool
        When False, ``features`` is omitted (use :func:`open_features` to stream).

    Returns
    -------
    dict
        ``ptr`` (n_sets+1,) int64, ``sets`` dict of (n_sets,) arrays,
        ``feature_keys`` list of str, ``attrs`` dict, ``n_rows`` int, and
        ``features`` (n_rows, F) float32 when loaded.

    Raises
    ------
    InputError
        Missing file, unreadable or corrupted HDF5, missing key, inconsistent shapes.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("prepared shard not found (run prepare first)", path)
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != SHARD_FORMAT:
                raise InputError(f"not a prepared shard (format attr != {SHARD_FORMAT})", path)
            for k in ("features", "ptr", "sets/target"):
                if k not in f:
                    raise InputError("missing key in prepared shard", path, k)
            ptr = f["ptr"][()]
            n_rows, F = f["features"].shape
            keys = [s.decode() if isinstance(s, bytes) else str(s) for s in f.attrs["feature_keys"]]
            out = {
                "ptr": ptr,
                "sets": {k: _dec(f["sets"][k][()]) for k in f["sets"]},
                "feature_keys": keys,
                "attrs": {k: f.attrs[k] for k in f.attrs if k != "feature_keys"},
                "n_rows": int(n_rows),
            }
            if load_features:
                out["features"] = f["features"][()]
    except InputError:
        raise
    except (OSError, KeyError, ValueError) as err:
        raise InputError(f"corrupted or unreadable shard ({err})", path) from None
    if len(keys) != F:
        raise InputError(f"feature_keys has {len(keys)} names for {F} columns", path, "features")
    if ptr[0] != 0 or ptr[-1] != n_rows or np.any(np.diff(ptr) < 0):
        raise InputError(f"ptr must go from 0 to n_rows={n_rows}, non-decreasing", path, "ptr")
    for k, v in out["sets"].items():
        if len(v) != len(ptr) - 1:
            raise InputError(f"expected {len(ptr) - 1} values, got {len(v)}", path, f"sets/{k}")
    return out
