"""Tabular shards: chunked HDF5 files of scaled rows (one row per object), torch-free.

Layout (``format = "astrobatch.table_shard"``, version 1), written block by
block by :class:`TableShardWriter`::

    /x          float32 (n, F)  scaled features, NaN = missing      chunks (chunk_rows, F), lzf
    /x_err      float32 (n, F)  scaled feature errors, NaN = none   chunks (chunk_rows, F), lzf
    /y          float32 (n, L)  scaled labels, NaN = missing        (labelled shards only)
    /y_err      float32 (n, L)  scaled label errors, NaN = none     (labelled shards only)
    /source_id  int64   (n,)
    attrs: format, version, features (F,), labels (L,), chunk_rows, n_rows, plus free ones
           (e.g. split, stage)

Readers that stream these shards into batches live in :mod:`astrobatch.data.tables`;
this module does not import torch, so writing shards (prepare) stays light.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from astrobatch.errors import InputError
from astrobatch.io.atomic import atomic_path

TABLE_SHARD_FORMAT = "astrobatch.table_shard"
TABLE_SHARD_VERSION = 1


class TableShardWriter:
    """Append scaled rows to a new table shard; the file appears only on success.

    Parameters
    ----------
    path : str or pathlib.Path
        Output ``.h5`` file.
    features : sequence of str
        The F feature names.
    labels : sequence of str, optional
        The L label names; None for an unlabelled (pretraining) shard.
    chunk_rows : int
        HDF5 chunk length along rows (also the streaming read unit).
    attrs : dict, optional
        Extra root attributes (``split``, ``stage``, ...).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "t.h5"
    >>> with TableShardWriter(p, ["a", "b"], chunk_rows=4) as w:
    ...     w.append(np.zeros((5, 2), np.float32), np.ones((5, 2), np.float32), np.arange(5))
    >>> info = shard_info(p)
    >>> info["n_rows"], info["features"], info["labels"]
    (5, ['a', 'b'], [])
    """

    def __init__(
        self,
        path: str | Path,
        features: Sequence[str],
        labels: Sequence[str] | None = None,
        chunk_rows: int = 4096,
        attrs: dict | None = None,
    ):
        self.path = Path(path)
        self.features = list(features)
        self.labels = None if labels is None else list(labels)
        self.chunk_rows = int(chunk_rows)
        self.attrs = dict(attrs or {})
        self.n_rows = 0

    def __enter__(self) -> TableShardWriter:
        self._ctx = atomic_path(self.path)
        self._f = h5py.File(self._ctx.__enter__(), "w")
        self._ds: dict[str, h5py.Dataset] = {}
        shapes = {"x": len(self.features), "x_err": len(self.features)}
        if self.labels is not None:
            shapes.update(y=len(self.labels), y_err=len(self.labels))
        for k, width in shapes.items():
            self._ds[k] = self._f.create_dataset(
                k, shape=(0, width), maxshape=(None, width), dtype=np.float32,
                chunks=(self.chunk_rows, max(width, 1)), compression="lzf",
            )  # fmt: skip
        self._ds["source_id"] = self._f.create_dataset(
            "source_id", shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(self.chunk_rows,)
        )
        return self

    def append(
        self,
        x: np.ndarray,
        x_err: np.ndarray,
        source_id: np.ndarray,
        y: np.ndarray | None = None,
        y_err: np.ndarray | None = None,
    ) -> None:
        """Append a block of n rows.

        Parameters
        ----------
        x, x_err : numpy.ndarray, shape (n, F)
        source_id : numpy.ndarray, shape (n,), int64
        y, y_err : numpy.ndarray, shape (n, L), optional
            Required for a labelled shard, forbidden otherwise.

        Raises
        ------
        ValueError
            On inconsistent shapes (a programming error, not bad input).
        """
        blocks = {"x": x, "x_err": x_err, "source_id": source_id}
        if self.labels is not None:
            blocks.update(y=y, y_err=y_err)
        elif y is not None:
            raise ValueError("labels given to an unlabelled shard")
        n = len(source_id)
        for k, v in blocks.items():
            if v is None or len(v) != n or v.shape[1:] != self._ds[k].shape[1:]:
                raise ValueError(f"{k}: expected {n} rows of shape {self._ds[k].shape[1:]}")
        if not n:
            return
        for k, v in blocks.items():
            d = self._ds[k]
            d.resize(self.n_rows + n, axis=0)
            d[self.n_rows :] = v
        self.n_rows += n

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                a = self._f.attrs
                a["format"] = TABLE_SHARD_FORMAT
                a["version"] = TABLE_SHARD_VERSION
                a["features"] = np.array(self.features, dtype=h5py.string_dtype())
                a["labels"] = np.array(self.labels or [], dtype=h5py.string_dtype())
                a["chunk_rows"] = self.chunk_rows
                a["n_rows"] = self.n_rows
                for k, v in self.attrs.items():
                    a[k] = v
            self._f.close()
        finally:
            self._ctx.__exit__(exc_type, exc, tb)
        return False


def _strings(v) -> list[str]:
    return [s.decode() if isinstance(s, bytes) else str(s) for s in np.atleast_1d(v)]


def shard_info(path: str | Path) -> dict:
    """Validate a table shard and return its metadata (no rows are read).

    Returns
    -------
    dict
        ``n_rows`` int, ``features`` list (F), ``labels`` list (L, empty when
        unlabelled), ``chunk_rows`` int, ``labelled`` bool, ``attrs`` dict.

    Raises
    ------
    InputError
        Missing file, not a table shard, missing dataset or inconsistent shapes.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("prepared table shard not found (run prepare first)", path)
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != TABLE_SHARD_FORMAT:
                raise InputError(f"not a table shard (format attr != {TABLE_SHARD_FORMAT})", path)
            features = _strings(f.attrs["features"])
            labels = _strings(f.attrs["labels"]) if len(f.attrs["labels"]) else []
            labelled = "y" in f
            need = ["x", "x_err", "source_id"] + (["y", "y_err"] if labels else [])
            for k in need:
                if k not in f:
                    raise InputError("missing dataset in table shard", path, k)
            n = f["source_id"].shape[0]
            shapes = {"x": (n, len(features)), "x_err": (n, len(features))}
            if labels:
                shapes.update(y=(n, len(labels)), y_err=(n, len(labels)))
            for k, shape in shapes.items():
                if f[k].shape != shape:
                    raise InputError(f"expected shape {shape}, got {f[k].shape}", path, k)
            attrs = {
                k: (_strings(v) if isinstance(v, np.ndarray) and v.dtype.kind in "OS" else v)
                for k, v in f.attrs.items()
                if k not in ("features", "labels")
            }
            chunk = int(f.attrs.get("chunk_rows", f["x"].chunks[0] if f["x"].chunks else 4096))
    except InputError:
        raise
    except (OSError, KeyError, ValueError) as err:
        raise InputError(f"corrupted or unreadable table shard ({err})", path) from None
    return {
        "n_rows": int(n),
        "features": features,
        "labels": labels,
        "chunk_rows": max(chunk, 1),
        "labelled": bool(labels) and labelled,
        "attrs": attrs,
    }


def read_table_shard(path: str | Path, start: int = 0, stop: int | None = None) -> dict:
    """Rows ``start:stop`` of a table shard as NumPy arrays (x, x_err, [y, y_err], source_id).

    Raises
    ------
    InputError
        See :func:`shard_info`.
    """
    info = shard_info(path)
    keys = ["x", "x_err", "source_id"] + (["y", "y_err"] if info["labelled"] else [])
    with h5py.File(path, "r") as f:
        return {k: f[k][start:stop] for k in keys}
