"""Sets of elements sampled from prepared shards: padding + mask, epoch-seeded draws.

Sampling (star_sets spec): each item is one *sample* of one snapshot. With
probability ``drop_probability`` a fraction drawn uniformly from
``drop_ratio_range`` of the snapshot's stars is dropped (at least one star is
kept); then up to ``num_star_per_sample`` stars are drawn without replacement;
smaller sets are zero-padded, with a boolean mask (True = real star).

Randomness: every draw comes from ``numpy.random.default_rng((seed, epoch,
index))``. In training the epoch changes, so every epoch sees fresh draws;
in evaluation the epoch is fixed to 0, so val/test samples are one fixed,
seeded draw (upstream instead re-used one draw for training too). Because
draws depend only on (seed, epoch, index), a run resumed from a checkpoint
sees exactly the data an uninterrupted run would have seen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from astrobatch.data.layouts import SET_ELEMENTS, SET_FEATURES, SET_REQUIRED
from astrobatch.data.sampling import ChunkBatchSampler, ShardDataModule
from astrobatch.io.errors import check_finite
from astrobatch.io.shards import open_shard


class SetSampling(Protocol):
    """What the set samplers read: any object with these attributes.

    A study's validated params model provides them (star_sets:
    ``SamplingParams`` in ``studies/star_sets/params.py``); this layer imports
    no study.

    Attributes
    ----------
    num_star_per_sample : int
        Padded set size N (at most this many elements are drawn).
    num_sample_per_snapshot : int
        Samples drawn from each set per epoch.
    drop_probability : float
        Probability in [0, 1] that a sample drops a fraction of the set.
    drop_ratio_range : tuple of float
        ``(lo, hi)``, the dropped fraction is uniform in it.
    drop_at_eval : bool
        Also drop at val/test time (one fixed seeded draw).
    """

    num_star_per_sample: int
    num_sample_per_snapshot: int
    drop_probability: float
    drop_ratio_range: tuple[float, float]
    drop_at_eval: bool


def sample_set(
    n: int, rng: np.random.Generator, sampling: SetSampling, drop: bool = True
) -> np.ndarray:
    """Indices of the elements kept in one sample of a set of ``n`` elements.

    Parameters
    ----------
    n : int
        Set size (0 gives an empty sample).
    rng : numpy.random.Generator
    sampling : SetSampling
    drop : bool
        Apply random dropping (``drop_probability``, ``drop_ratio_range``).

    Returns
    -------
    numpy.ndarray, shape (k,), int64
        ``k <= min(n, num_star_per_sample)`` distinct indices in [0, n).

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> sampling = SimpleNamespace(num_star_per_sample=128, drop_probability=0.0)
    >>> idx = sample_set(1000, np.random.default_rng(0), sampling)
    >>> len(idx), len(set(idx.tolist()))
    (128, 128)
    """
    keep = n
    if drop and n > 1 and rng.random() < sampling.drop_probability:
        lo, hi = sampling.drop_ratio_range
        ratio = rng.uniform(lo, hi)
        keep = max(1, round(n * (1.0 - ratio)))
    k = min(keep, sampling.num_star_per_sample)
    return rng.choice(n, size=k, replace=False) if k else np.zeros(0, dtype=np.int64)


def padded_sample(
    rows: np.ndarray, rng: np.random.Generator, sampling: SetSampling, drop: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one sample of a set with :func:`sample_set` and zero-pad it.

    Parameters
    ----------
    rows : numpy.ndarray, shape (n, F)
        Scaled features of the set's elements.
    rng : numpy.random.Generator
    sampling : SetSampling
    drop : bool
        Apply random dropping.

    Returns
    -------
    x : numpy.ndarray, shape (num_star_per_sample, F), float32
        Drawn elements first (in their original order), zeros after.
    mask : numpy.ndarray, shape (num_star_per_sample,), bool
        True for drawn elements.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> sampling = SimpleNamespace(num_star_per_sample=128, drop_probability=0.6)
    >>> x, m = padded_sample(np.ones((3, 2)), np.random.default_rng(0), sampling, False)
    >>> x.shape, int(m.sum())
    ((128, 2), 3)
    """
    sel = np.sort(sample_set(len(rows), rng, sampling, drop=drop))
    N = sampling.num_star_per_sample
    x = np.zeros((N, rows.shape[1]), dtype=np.float32)
    mask = np.zeros(N, dtype=bool)
    x[: len(sel)] = rows[sel]
    mask[: len(sel)] = True
    return x, mask


class SetSampleDataset(Dataset):
    """Samples of sets from one prepared shard, padded to a fixed size.

    Parameters
    ----------
    shard : str or pathlib.Path
        Prepared set shard (:mod:`astrobatch.io.shards`, columns of
        :func:`astrobatch.data.layouts.set_layout`).
    sampling : SetSampling
    seed : int
        Seed of all draws.
    train : bool
        True: draws change with the epoch; False: one fixed draw (epoch 0),
        dropping only if ``sampling.drop_at_eval``.
    in_memory : bool
        Load all features in RAM (fast) or read each snapshot's rows from the
        HDF5 file on demand (bounded memory for data larger than RAM).

    Notes
    -----
    Items are indexed by ``(index, epoch)`` tuples (a
    :class:`~astrobatch.data.sampling.ChunkBatchSampler` with ``tag_epoch``);
    a plain integer means epoch 0. An item is a dict with ``x`` (N, F)
    float32, ``mask`` (N,) bool, ``y`` () float32 (scaled target),
    ``set_index`` and ``sample_index`` (int64), N = ``num_star_per_sample``.
    """

    def __init__(self, shard, sampling: SetSampling, seed: int, train: bool, in_memory=True):
        self.path = Path(shard)
        self.reader = open_shard(self.path, require=SET_REQUIRED)
        with self.reader as r:
            self.ptr = r.ptr(SET_ELEMENTS)
            self.sets = {k: r.read(k) for k in r.info["columns"] if "/" not in k}
            self.feature_keys = r.names(SET_FEATURES) or []
            self.features = r.read(SET_FEATURES) if in_memory else None
        self.y = check_finite(np.asarray(self.sets["target"], np.float32), self.path, "target")
        if self.features is not None:
            check_finite(self.features, self.path, SET_FEATURES, "star features")
        self.sampling, self.seed, self.train = sampling, int(seed), train

    @property
    def n_sets(self) -> int:
        """Number of sets (snapshots) in the shard."""
        return len(self.ptr) - 1

    @property
    def n_features(self) -> int:
        """Number of feature columns F."""
        return len(self.feature_keys)

    def __len__(self) -> int:
        return self.n_sets * self.sampling.num_sample_per_snapshot

    def _rows(self, i: int) -> np.ndarray:
        a, b = int(self.ptr[i]), int(self.ptr[i + 1])
        if self.features is not None:
            return self.features[a:b]
        # the file is opened lazily, once per DataLoader worker, and the handle kept
        return self.reader[SET_FEATURES][a:b]

    def __getitem__(self, key) -> dict[str, torch.Tensor]:
        index, epoch = (key, 0) if np.isscalar(key) else key
        epoch = epoch if self.train else 0
        set_index, sample_index = divmod(int(index), self.sampling.num_sample_per_snapshot)
        rng = np.random.default_rng((self.seed, int(epoch), int(index), 0 if self.train else 1))
        drop = self.train or self.sampling.drop_at_eval
        x, mask = padded_sample(self._rows(set_index), rng, self.sampling, drop)
        return {
            "x": torch.from_numpy(x),
            "mask": torch.from_numpy(mask),
            "y": torch.tensor(self.y[set_index]),
            "set_index": torch.tensor(set_index),
            "sample_index": torch.tensor(sample_index),
        }


class SetDataModule(ShardDataModule):
    """Train/val/test DataLoaders over the prepared shards of one study.

    Batches come from a :class:`~astrobatch.data.sampling.ChunkBatchSampler` with
    one chunk covering the whole split and salt 7: the training order of epoch e
    is ``numpy.random.default_rng((seed, e, 7)).permutation(n)`` cut into
    consecutive batches (the last partial batch kept); val/test are in order.
    Under ``torch.distributed`` each rank takes every ``world_size``-th item of
    that order, padded to equal lengths.

    Parameters
    ----------
    prepared_dir : str or pathlib.Path
        Folder holding ``train.h5``, ``val.h5``, ``test.h5``.
    sampling : SetSampling
    batch_size : int
    seed : int
    num_workers : int
    in_memory : bool
        See :class:`SetSampleDataset`.
    """

    splits = ("train", "val", "test")

    def __init__(
        self, prepared_dir, sampling: SetSampling, batch_size: int, seed: int,
        num_workers: int = 0, in_memory: bool = True,
    ):  # fmt: skip
        super().__init__()
        self.dir = Path(prepared_dir)
        self.sampling, self.batch_size, self.seed = sampling, batch_size, seed
        self.num_workers, self.in_memory = num_workers, in_memory

    def build_dataset(self, split: str) -> SetSampleDataset:
        """The dataset of ``split`` (``train``, ``val`` or ``test``)."""
        return SetSampleDataset(
            self.dir / f"{split}.h5", self.sampling, self.seed, split == "train", self.in_memory
        )

    def loader(self, split: str) -> DataLoader:
        """A DataLoader over ``split`` (shuffled, epoch-seeded for train)."""
        ds = self.dataset(split)
        sampler = ChunkBatchSampler(
            len(ds), self.batch_size, chunk=max(len(ds), 1), shuffle=split == "train",
            seed=self.seed, rank=None, num_replicas=None, salt=7, tag_epoch=True,
            distribute="items",
        )  # fmt: skip
        return DataLoader(
            ds,
            batch_sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )
