"""Tabular shards (one row per object) and the datasets/datamodule that stream them.

Shards: the format of :mod:`astrobatch.io.shards` with the columns of
:func:`astrobatch.data.layouts.table_layout` (``/x``, ``/x_err`` (n, F), ``/y``,
``/y_err`` (n, L) float32, each with a ``names`` attr, ``/source_id`` int64);
:func:`table_info` validates one and :func:`read_table_shard` reads rows of it.

Reading
    :class:`TableShardDataset` (iterable, for data larger than memory) reads a
    shard in chunks of ``chunk_rows`` rows. Per epoch, the chunk order is a
    permutation drawn from ``numpy.random.default_rng((seed, epoch))`` (the
    same in every process); the permuted rows form one stream that is cut into
    equal contiguous segments, one per (rank, worker); each worker reads its
    segment ``buffer_chunks`` chunks at a time, shuffles the rows of that
    buffer with ``default_rng((seed, epoch, segment))`` and yields ready
    batches. One epoch therefore yields every row exactly once on one process
    (under DDP the stream is padded by wrapping around so that every rank gets
    the same number of batches). :class:`TableArrayDataset` holds a small shard
    in memory (map-style, indexed by lists of rows).

Batches (dicts of tensors): ``x`` (B, F) float32, ``x_err`` (B, F) float32,
``y`` and ``y_err`` (B, L) float32 for labelled shards, ``row`` (B,) int64 (the
row index in the shard). NaN are passed through: filling them is the model's
business.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, get_worker_info

from astrobatch.data.layouts import TABLE_REQUIRED
from astrobatch.data.sampling import ShardDataModule, chunk_permutation
from astrobatch.errors import InputError
from astrobatch.io.shards import open_shard, shard_info

# ----------------------------------------------------------------------------------------------
# shards
# ----------------------------------------------------------------------------------------------


def table_info(path: str | Path) -> dict:
    """Validate a table shard and return its metadata (no rows are read).

    Returns
    -------
    dict
        ``n_rows`` int, ``features`` list (F), ``labels`` list (L, empty when
        unlabelled), ``chunk_rows`` int, ``labelled`` bool, ``attrs`` dict (free
        root attrs: ``stage``, ``split``).

    Raises
    ------
    InputError
        Missing file, not a shard, missing column, wrong shapes (see
        :func:`astrobatch.io.shards.shard_info`).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from astrobatch.data.layouts import table_layout
    >>> from astrobatch.io.shards import ShardWriter
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "t.h5"
    >>> with ShardWriter(p, table_layout(["a", "b"]), chunk_rows=4) as w:
    ...     w.append({"x": np.zeros((5, 2)), "x_err": np.ones((5, 2)), "source_id": np.arange(5)})
    >>> info = table_info(p)
    >>> info["n_rows"], info["features"], info["labels"]
    (5, ['a', 'b'], [])
    """
    info = shard_info(path, require=TABLE_REQUIRED)
    cols = info["columns"]
    features = cols["x"]["names"] or []
    labels = (cols["y"]["names"] or []) if "y" in cols else []
    if labels and "y_err" not in cols:
        raise InputError("missing column of a labelled table shard", path, "y_err")
    n = info["n_rows"]
    want = {"x": (n, len(features)), "x_err": (n, len(features)), "source_id": (n,)}
    if labels:
        want.update(y=(n, len(labels)), y_err=(n, len(labels)))
    for k, shape in want.items():
        if cols[k]["shape"] != shape:
            raise InputError(f"expected shape {shape}, got {cols[k]['shape']}", path, k)
    return {
        "n_rows": n,
        "features": features,
        "labels": labels,
        "chunk_rows": info["chunk_rows"],
        "labelled": bool(labels),
        "attrs": info["attrs"],
    }


def read_table_shard(path: str | Path, start: int = 0, stop: int | None = None) -> dict:
    """Rows ``start:stop`` of a table shard as NumPy arrays (x, x_err, [y, y_err], source_id).

    Raises
    ------
    InputError
        See :func:`table_info`.
    """
    info = table_info(path)
    keys = ["x", "x_err", "source_id"] + (["y", "y_err"] if info["labelled"] else [])
    with open_shard(path) as r:
        return {k: r.read(k, start, stop) for k in keys}


# ----------------------------------------------------------------------------------------------
# datasets
# ----------------------------------------------------------------------------------------------


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _to_batch(arrays: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, torch.Tensor]:
    out = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    out["row"] = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64))
    return out


class TableShardDataset(IterableDataset):
    """Stream a table shard in shuffled batches with bounded memory (see the module docstring).

    Parameters
    ----------
    path : str or pathlib.Path
        Table shard.
    batch_size : int
        Rows per yielded batch (use ``DataLoader(ds, batch_size=None)``).
    shuffle : bool
        Shuffle chunk order and rows within buffers (training); False reads in
        file order.
    seed : int
        Seed of all shuffling (with the epoch).
    buffer_chunks : int
        Chunks read and shuffled together (memory: buffer_chunks x chunk_rows rows).
    drop_last : bool
        Drop each segment's last incomplete batch.
    chunk_rows : int, optional
        Read unit (default: the shard's chunk length).

    Notes
    -----
    The epoch lives in a shared-memory tensor, so :meth:`set_epoch` reaches
    DataLoader workers, persistent or not. Rank and world size are read when
    :meth:`set_epoch` or :meth:`set_distributed` runs in the main process (worker
    processes cannot query ``torch.distributed``).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from astrobatch.data.layouts import table_layout
    >>> from astrobatch.io.shards import ShardWriter
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "t.h5"
    >>> with ShardWriter(p, table_layout(["a"]), chunk_rows=4) as w:
    ...     w.append({"x": np.arange(10)[:, None], "x_err": np.zeros((10, 1)),
    ...               "source_id": np.arange(10)})
    >>> ds = TableShardDataset(p, batch_size=4, shuffle=True, seed=0)
    >>> sorted(torch.cat([b["row"] for b in ds]).tolist()) == list(range(10)), len(ds)
    (True, 3)
    """

    def __init__(
        self,
        path: str | Path,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        buffer_chunks: int = 4,
        drop_last: bool = False,
        chunk_rows: int | None = None,
    ):
        self.path = Path(path)
        self.info = table_info(self.path)
        self.batch_size = int(batch_size)
        self.shuffle, self.seed, self.drop_last = shuffle, int(seed), drop_last
        self.buffer_chunks = max(1, int(buffer_chunks))
        self.chunk_rows = int(chunk_rows or self.info["chunk_rows"])
        self.num_workers = 0  # set by the DataLoader owner, used by __len__
        self.rank, self.world = _rank_world()
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self.keys = ["x", "x_err"] + (["y", "y_err"] if self.info["labelled"] else [])

    @property
    def n_rows(self) -> int:
        """Rows in the shard."""
        return self.info["n_rows"]

    @property
    def epoch(self) -> int:
        """The epoch used for the next iteration."""
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch of the next iteration (visible to all workers).

        In the main process of an initialised ``torch.distributed`` run, the rank
        and world size are refreshed too.
        """
        self._epoch.fill_(int(epoch))
        dist = torch.distributed.is_available() and torch.distributed.is_initialized()
        if dist and get_worker_info() is None:
            self.rank, self.world = _rank_world()

    def set_distributed(self, rank: int, world: int) -> None:
        """Override the (rank, world size) used to split rows across processes."""
        self.rank, self.world = int(rank), int(world)

    # -- partition -------------------------------------------------------------------------

    def _n_segments(self, num_workers: int) -> int:
        return self.world * max(num_workers, 1)

    def _segment_bounds(self, g: int, n_seg: int) -> tuple[int, int]:
        """Stream positions [a, b) of segment g (padded equal lengths under DDP)."""
        n = self.n_rows
        if self.world > 1:
            per = -(-n // n_seg)
            return g * per, (g + 1) * per
        return g * n // n_seg, (g + 1) * n // n_seg

    def _chunk_order(self, epoch: int) -> np.ndarray:
        if self.shuffle:
            return chunk_permutation(self.n_rows, self.chunk_rows, self.seed, epoch)
        return np.arange(-(-self.n_rows // self.chunk_rows))

    def _pieces(self, order: np.ndarray, a: int, b: int) -> Iterator[tuple[int, int]]:
        """Shard row ranges [start, stop) covering stream positions [a, b) (wrapping)."""
        n, c = self.n_rows, self.chunk_rows
        sizes = np.minimum(c, n - order * c)
        ends = np.cumsum(sizes)
        pos = a
        while pos < b:
            p = pos % n
            i = int(np.searchsorted(ends, p, side="right"))
            off = p - (ends[i] - sizes[i])
            take = int(min(sizes[i] - off, b - pos))
            start = int(order[i]) * c + int(off)
            yield start, start + take
            pos += take

    def __len__(self) -> int:
        """Batches yielded per epoch by this process (all its workers together)."""
        n_seg = self._n_segments(self.num_workers)
        total = 0
        for w in range(max(self.num_workers, 1)):
            a, b = self._segment_bounds(self.rank * max(self.num_workers, 1) + w, n_seg)
            rows = b - a
            total += rows // self.batch_size if self.drop_last else -(-rows // self.batch_size)
        return total

    # -- iteration -------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        wi = get_worker_info()
        worker, num_workers = (0, 1) if wi is None else (wi.id, wi.num_workers)
        epoch = self.epoch
        n_seg = self._n_segments(num_workers)
        g = self.rank * num_workers + worker
        a, b = self._segment_bounds(g, n_seg)
        if self.n_rows == 0 or b <= a:
            return
        order = self._chunk_order(epoch)
        rng = np.random.default_rng((self.seed, epoch, g, 1))
        buffer_rows = self.buffer_chunks * self.chunk_rows
        carry: dict[str, np.ndarray] | None = None
        with open_shard(self.path) as f:
            ds = {k: f[k] for k in self.keys}
            pieces = list(self._pieces(order, a, b))
            i = 0
            while i < len(pieces):
                parts, rows_in = [], 0
                while i < len(pieces) and rows_in < buffer_rows:
                    s, e = pieces[i]
                    parts.append((s, e))
                    rows_in += e - s
                    i += 1
                buf = {k: np.concatenate([ds[k][s:e] for s, e in parts]) for k in self.keys}
                buf["row"] = np.concatenate([np.arange(s, e) for s, e in parts])
                if self.shuffle:
                    perm = rng.permutation(len(buf["row"]))
                    buf = {k: v[perm] for k, v in buf.items()}
                if carry is not None:
                    buf = {k: np.concatenate([carry[k], v]) for k, v in buf.items()}
                n = len(buf["row"])
                full = n - n % self.batch_size
                for s in range(0, full, self.batch_size):
                    sl = slice(s, s + self.batch_size)
                    yield _to_batch({k: buf[k][sl] for k in self.keys}, buf["row"][sl])
                carry = {k: v[full:] for k, v in buf.items()} if full < n else None
        if carry is not None and not self.drop_last:
            yield _to_batch({k: carry[k] for k in self.keys}, carry["row"])


class TableArrayDataset(Dataset):
    """A table shard held in memory; items are rows or lists of rows (map-style).

    ``ds[i]`` gives one row (tensors without the batch dimension); ``ds[[i, j, ...]]``
    a batch (use with a ``BatchSampler`` as the DataLoader's ``sampler`` and
    ``batch_size=None``, as :meth:`TableDataModule.loader` does).

    Parameters
    ----------
    path : str or pathlib.Path
        Table shard (small: it is read whole).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.info = table_info(self.path)
        self.arrays = read_table_shard(self.path)
        #: int64 (n,): the rows' ``source_id`` (kept out of the items)
        self.source_id = self.arrays.pop("source_id")

    def __len__(self) -> int:
        return self.info["n_rows"]

    def set_epoch(self, epoch: int) -> None:
        """No-op (kept for a uniform interface)."""

    def __getitem__(self, idx) -> dict[str, torch.Tensor]:
        if np.isscalar(idx):
            i = int(idx)
            out = {k: torch.from_numpy(v[i].copy()) for k, v in self.arrays.items()}
            out["row"] = torch.tensor(i, dtype=torch.int64)
            return out
        rows = np.asarray(idx, dtype=np.int64)
        return _to_batch({k: v[rows] for k, v in self.arrays.items()}, rows)


# ----------------------------------------------------------------------------------------------
# loaders and the datamodule
# ----------------------------------------------------------------------------------------------


class _EpochSignal(Sampler):
    """Infinite dummy sampler of an iterable-dataset loader that forwards ``set_epoch``.

    Lightning calls ``set_epoch`` on a DataLoader's sampler at the start of each
    epoch; iterable datasets have no sampler of their own, so this one relays
    the call to the dataset.
    """

    def __init__(self, dataset: TableShardDataset):
        self.dataset = dataset

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __iter__(self):
        while True:
            yield None


class EpochDataLoader(DataLoader):
    """DataLoader of a :class:`TableShardDataset` (``batch_size=None``) whose sampler relays
    ``set_epoch`` to the dataset (so Lightning reshuffles it every epoch)."""

    def __init__(self, dataset: TableShardDataset, **kwargs):
        super().__init__(dataset, batch_size=None, **kwargs)
        object.__setattr__(self, "sampler", _EpochSignal(dataset))  # DataLoader forbids setattr

    def set_epoch(self, epoch: int) -> None:
        """Set the dataset's epoch."""
        self.dataset.set_epoch(epoch)


#: Shard file of each (stage, split).
SHARDS = {
    "pretrain": {
        "train": "pretrain_train.h5",
        "val": "pretrain_val.h5",
        "val_real": "pretrain_val_real.h5",
    },
    "finetune": {
        "train": "finetune_train.h5",
        "val": "finetune_val.h5",
        "test": "finetune_test.h5",
    },
}


class TableDataModule(ShardDataModule):
    """DataLoaders over the prepared table shards of one stage of a study.

    Parameters
    ----------
    prepared_dir : str or pathlib.Path
        Folder written by prepare (shards, ``manifest.json``, ``scalers.json``).
    stage : {"pretrain", "finetune"}
        ``pretrain``: splits ``train``, ``val`` (simulated held-out keys, or real
        held-out sources when pretraining on real stars only) and ``val_real``
        (held-out real sources; possibly empty); ``finetune``: ``train``,
        ``val``, ``test`` with labels.
    batch_size : int
        Training batch size.
    seed : int
        Shuffling seed.
    num_workers : int
        DataLoader workers (each reads its own segment of the shard).
    eval_batch_size : int, optional
        Batch size of the other splits (default ``batch_size``).
    buffer_chunks : int
        See :class:`TableShardDataset`.
    in_memory_eval : bool
        Hold the evaluation splits in memory (:class:`TableArrayDataset`).

    Raises
    ------
    InputError
        Unknown stage or split, missing or invalid shard.
    """

    def __init__(
        self,
        prepared_dir: str | Path,
        stage: str = "pretrain",
        batch_size: int = 256,
        seed: int = 0,
        num_workers: int = 0,
        eval_batch_size: int | None = None,
        buffer_chunks: int = 4,
        in_memory_eval: bool = False,
    ):
        super().__init__()
        if stage not in SHARDS:
            raise InputError(f"unknown stage {stage!r}; expected one of {sorted(SHARDS)}")
        self.dir = Path(prepared_dir)
        self.stage = stage
        self.batch_size, self.seed, self.num_workers = int(batch_size), int(seed), num_workers
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.buffer_chunks, self.in_memory_eval = buffer_chunks, in_memory_eval

    @property
    def splits(self) -> list[str]:
        """Split names of this stage."""
        return list(SHARDS[self.stage])

    @property
    def manifest(self) -> dict:
        """The prepare manifest (feature and label names, counts, sources)."""
        p = self.dir / "manifest.json"
        if not p.is_file():
            raise InputError("manifest not found (run prepare first)", p)
        return json.loads(p.read_text())

    def path(self, split: str) -> Path:
        """Shard file of ``split``."""
        if split not in SHARDS[self.stage]:
            raise InputError(
                f"unknown split {split!r} for stage {self.stage!r}; expected {self.splits}"
            )
        return self.dir / SHARDS[self.stage][split]

    def build_dataset(self, split: str) -> Dataset:
        """A new dataset of ``split`` (in memory for evaluation splits if ``in_memory_eval``)."""
        path = self.path(split)
        if split != "train" and self.in_memory_eval:
            return TableArrayDataset(path)
        return TableShardDataset(
            path,
            batch_size=self.batch_size if split == "train" else self.eval_batch_size,
            shuffle=split == "train",
            seed=self.seed,
            buffer_chunks=self.buffer_chunks,
        )

    def n_rows(self, split: str) -> int:
        """Rows of ``split`` (from the shard header)."""
        return table_info(self.path(split))["n_rows"]

    def loader(self, split: str) -> DataLoader:
        """A DataLoader of ready batches over ``split`` (shuffled, epoch-seeded for train)."""
        ds = self.dataset(split)
        workers = self.num_workers
        if isinstance(ds, TableArrayDataset):
            from torch.utils.data import BatchSampler, SequentialSampler

            sampler = BatchSampler(SequentialSampler(ds), self.eval_batch_size, drop_last=False)
            return DataLoader(ds, sampler=sampler, batch_size=None, num_workers=workers)
        ds.num_workers = workers
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            ds.set_distributed(*_rank_world())
        return EpochDataLoader(ds, num_workers=workers, persistent_workers=workers > 0)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch of every dataset built so far (for loops outside Lightning)."""
        for ds in self._ds.values():
            ds.set_epoch(epoch)

    def test_dataloader(self):
        """``test`` for fine-tuning; the held-out real sources (``val_real``) for pretraining."""
        return self.loader("test" if self.stage == "finetune" else "val_real")
