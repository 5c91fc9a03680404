"""Epoch-seeded, chunk-aware batch sampling and the DataModule shape shared by every study.

:class:`ChunkBatchSampler`
    Batches of row indices that touch few HDF5 chunks: chunks of ``chunk``
    consecutive rows are visited in the order :func:`chunk_permutation` draws,
    the rows of ``window`` consecutive chunks are shuffled together and cut
    into batches. Every draw comes from ``numpy.random.default_rng((seed,
    epoch[, salt]))``, so an epoch's order depends only on (seed, epoch), and a
    resumed run sees exactly the batches of an uninterrupted one. One chunk
    covering the whole split gives a plain per-epoch permutation
    (``default_rng((seed, epoch, salt)).permutation(n)``, batches of consecutive
    items, the last partial batch kept): the set samplers' order.
:func:`chunk_permutation`
    The chunk order of an epoch, shared with the streaming
    :class:`~astrobatch.data.tables.TableShardDataset`.
:class:`ShardDataModule`
    A LightningDataModule over named splits: ``splits``, cached
    ``dataset(split)``, ``loader(split)`` and the train/val/test loaders.
"""

from __future__ import annotations

from collections.abc import Iterator

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def chunk_permutation(n_rows: int, chunk_rows: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which the chunks of a shard are visited in one epoch.

    Parameters
    ----------
    n_rows : int
        Rows of the shard.
    chunk_rows : int
        Rows per chunk (the last chunk may be shorter).
    seed, epoch : int

    Returns
    -------
    numpy.ndarray, shape (ceil(n_rows / chunk_rows),), int64
        ``numpy.random.default_rng((seed, epoch)).permutation(n_chunks)``: chunk
        ``order[k]`` (rows ``order[k] * chunk_rows`` onwards) comes k-th. It is
        the chunk order :class:`ChunkBatchSampler` draws (without ``salt``).

    Examples
    --------
    >>> chunk_permutation(10, 4, seed=0, epoch=0).tolist()
    [2, 0, 1]
    """
    n_chunks = -(-int(n_rows) // max(1, int(chunk_rows)))
    return np.random.default_rng((int(seed), int(epoch))).permutation(n_chunks)


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class _EpochRelay:
    """``batch_sampler.sampler`` of a :class:`ChunkBatchSampler`: where Lightning looks."""

    def __init__(self, owner: ChunkBatchSampler):
        self.owner = owner

    def set_epoch(self, epoch: int) -> None:
        self.owner.set_epoch(epoch)


class ChunkBatchSampler(Sampler[list]):
    """Batches of indices that touch few HDF5 chunks, reshuffled every epoch (see module doc).

    With ``shuffle=False`` batches are consecutive indices. Rank-aware.

    Parameters
    ----------
    n : int
        Dataset length.
    batch_size : int
    chunk : int
        Rows per HDF5 chunk (``n`` or more: one chunk, a plain permutation).
    shuffle : bool
    seed : int
    window : int
        Chunks shuffled together.
    rank, num_replicas : int, optional
        This process's rank and the world size; None (both): read from an
        initialised ``torch.distributed`` at each iteration (else 0 and 1).
    dataset : object with ``set_epoch``, optional
        Told the epoch too (e.g. its augmentation draws depend on it).
    salt : int, optional
        Appended to the rng key: ``default_rng((seed, epoch, salt))``.
    tag_epoch : bool
        Yield ``(index, epoch)`` pairs instead of indices, for datasets whose
        draws take the epoch in their key (``SetSampleDataset``).
    distribute : {"batches", "items"}
        How ranks share an epoch: ``batches``: rank r takes every
        ``num_replicas``-th batch (the list padded with the epoch's first batches
        to a multiple of ``num_replicas``, so that every rank takes the same number
        of steps, as DDP needs); ``items``: rank r takes every
        ``num_replicas``-th index of the epoch's order (padded by wrapping
        around to equal lengths), then cuts its indices into batches.

    Attributes
    ----------
    sampler : object
        Relays ``set_epoch`` to this batch sampler. Lightning (2.x) calls
        ``set_epoch`` on a DataLoader's ``sampler`` and ``batch_sampler.sampler``
        at every training epoch, never on ``batch_sampler`` itself: without this
        relay every epoch would repeat epoch 0's order and draws.

    Examples
    --------
    >>> s = ChunkBatchSampler(5, 2, chunk=5, shuffle=True, seed=0, salt=7)
    >>> [i for b in s for i in b] == np.random.default_rng((0, 0, 7)).permutation(5).tolist()
    True
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        chunk: int,
        shuffle: bool,
        seed: int = 0,
        window: int = 8,
        rank: int | None = 0,
        num_replicas: int | None = 1,
        dataset=None,
        salt: int | None = None,
        tag_epoch: bool = False,
        distribute: str = "batches",
    ):
        if distribute not in ("batches", "items"):
            raise ValueError(f"distribute must be 'batches' or 'items', got {distribute!r}")
        self.n, self.batch_size, self.chunk = int(n), int(batch_size), max(1, int(chunk))
        self.shuffle, self.seed, self.window = shuffle, int(seed), max(1, int(window))
        self.rank, self.num_replicas = rank, num_replicas
        self.dataset = dataset
        self.salt, self.tag_epoch, self.distribute = salt, tag_epoch, distribute
        self.epoch = 0
        self.sampler = _EpochRelay(self)

    def set_epoch(self, epoch: int) -> None:
        """Epoch of the shuffle (and of the dataset's draws)."""
        self.epoch = int(epoch)
        if self.dataset is not None:
            self.dataset.set_epoch(epoch)

    def _rank(self) -> tuple[int, int]:
        if self.rank is None or self.num_replicas is None:
            return _rank_world()
        return int(self.rank), int(self.num_replicas)

    def order(self) -> np.ndarray:
        """All indices of this epoch, in visiting order, shape (n,), int64."""
        if not self.shuffle:
            return np.arange(self.n)
        key = (self.seed, self.epoch) if self.salt is None else (self.seed, self.epoch, self.salt)
        rng = np.random.default_rng(key)
        # == chunk_permutation(...) without salt; the same draws as shuffling the chunk starts
        starts = rng.permutation(-(-self.n // self.chunk)) * self.chunk
        parts = []
        for w in range(0, len(starts), self.window):
            idx = np.concatenate(
                [np.arange(s, min(s + self.chunk, self.n)) for s in starts[w : w + self.window]]
            )
            rng.shuffle(idx)
            parts.append(idx)
        return np.concatenate(parts) if parts else np.arange(0)

    def _batches(self) -> list[list]:
        order = self.order()
        rank, world = self._rank()
        bs = self.batch_size
        if self.distribute == "items":
            if world > 1:
                per = -(-self.n // world)
                order = np.resize(order, per * world)[rank::world]
            batches = [order[i : i + bs] for i in range(0, len(order), bs)]
        else:
            batches = [order[i : i + bs] for i in range(0, self.n, bs)]
            if world > 1 and batches:
                # every rank the same number of steps (DDP's collectives wait for all): the
                # epoch's first batches again, as DistributedSampler pads its indices
                pad = -len(batches) % world
                batches += [batches[i % len(batches)] for i in range(pad)]
            batches = batches[rank::world]
        if self.tag_epoch:
            return [[(int(i), self.epoch) for i in b] for b in batches]
        return [b.tolist() for b in batches]

    def __iter__(self) -> Iterator[list]:
        yield from self._batches()

    def __len__(self) -> int:
        _, world = self._rank()
        if self.distribute == "items":
            per = -(-self.n // world)
            return -(-per // self.batch_size)
        total = -(-self.n // self.batch_size)
        return -(-total // world) if total else 0


class ShardDataModule(L.LightningDataModule):
    """DataLoaders over the named splits of prepared shards (the shape every study uses).

    Subclasses set :attr:`splits`, build a split's dataset in :meth:`build_dataset`
    and its DataLoader in :meth:`loader`; :meth:`dataset` caches datasets, so each
    is built once.
    """

    #: Split names, in order.
    splits: tuple[str, ...] | list[str] = ("train", "val", "test")

    def __init__(self):
        super().__init__()
        self._ds: dict[str, Dataset] = {}

    def build_dataset(self, split: str) -> Dataset:
        """A new dataset of ``split`` (called once per split)."""
        raise NotImplementedError

    def dataset(self, split: str) -> Dataset:
        """The dataset of ``split`` (built once)."""
        if split not in self._ds:
            self._ds[split] = self.build_dataset(split)
        return self._ds[split]

    def loader(self, split: str) -> DataLoader:
        """A DataLoader over ``split``."""
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        return self.loader("train")

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")
