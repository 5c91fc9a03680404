"""Image cutouts for CNNs: blackout masks, min-max normalisations, dihedral augmentation,
and a dataset that reads prepared HDF5 shards a batch at a time.

The order of operations follows the cluster_age study (spec ``studies/cluster_age.md``):
blackout mask on raw values -> optional white-light stack (``1im``, the per-pixel mean of
the filters) -> min-max normalisation -> dihedral augmentation (training only).

Shards read by :class:`CutoutShardDataset` (written by the cluster_age ``prepare``): the
format of :mod:`astrobatch.io.shards` with the columns of
:func:`astrobatch.data.layouts.cutout_layout`: ``images`` float32 (n, C, S, S) chunked
``(chunk, C, S, S)``, ``log_age`` float32 (n,), ``cluster_id`` int64 (n,), ``galaxy_id``
str (n,), ``photometry`` float32 (n, C), optionally ``catalogue_magnitudes``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from astrobatch.data.sampling import ChunkBatchSampler, ShardDataModule
from astrobatch.errors import InputError
from astrobatch.io.errors import check_finite
from astrobatch.io.shards import LARGE_CACHE, ShardReader
from astrobatch.io.shards import open_shard as _open

NORMALISATIONS = ("single-image", "five-images", "filter", "dataset")
_EPS = 1e-12


def disk(size: int, radius: float) -> np.ndarray:
    """Boolean disk of radius ``radius`` pixels centred on pixel (size // 2, size // 2).

    A pixel (i, j) is inside when ``(i - c)**2 + (j - c)**2 <= radius**2`` with
    ``c = size // 2`` (pixel (56, 56) of a 112-pixel cutout, as upstream).

    Parameters
    ----------
    size : int
        Cutout side, pixels.
    radius : float
        R, pixels; R <= 0 gives the empty disk.

    Returns
    -------
    numpy.ndarray, shape (size, size), bool

    Examples
    --------
    >>> disk(5, 1).astype(int)
    array([[0, 0, 0, 0, 0],
           [0, 0, 1, 0, 0],
           [0, 1, 1, 1, 0],
           [0, 0, 1, 0, 0],
           [0, 0, 0, 0, 0]])
    """
    c = size // 2
    i, j = np.ogrid[:size, :size]
    inside = (i - c) ** 2 + (j - c) ** 2 <= radius**2
    return inside if radius > 0 else np.zeros((size, size), bool)


def keep_mask(size: int, kind: str, radius: float) -> np.ndarray:
    """Pixels kept by a blackout mask (True = kept).

    Parameters
    ----------
    size : int
        Cutout side, pixels.
    kind : {"none", "inner", "outer"}
        ``inner`` zeroes the disk of radius R (hides the cluster, keeps its
        environment); ``outer`` zeroes everything outside it (keeps only the
        cluster); ``none`` keeps everything. R = 0 means no mask for both.
    radius : float
        R, pixels.

    Returns
    -------
    numpy.ndarray, shape (size, size), bool

    Raises
    ------
    ValueError
        Unknown ``kind``.
    """
    if kind not in ("none", "inner", "outer"):
        raise ValueError(f"mask kind must be none, inner or outer, got {kind!r}")
    if kind == "none" or radius <= 0:
        return np.ones((size, size), bool)
    d = disk(size, radius)
    return ~d if kind == "inner" else d


def apply_blackout(images: np.ndarray, kind: str, radius: float) -> np.ndarray:
    """Zero the masked pixels of every channel (raw values, before normalisation).

    Parameters
    ----------
    images : numpy.ndarray, shape (N, C, S, S), float32
    kind, radius
        See :func:`keep_mask`.

    Returns
    -------
    numpy.ndarray, shape (N, C, S, S), float32
        A new array (the input is not modified).
    """
    keep = keep_mask(images.shape[-1], kind, radius)
    return images * keep.astype(images.dtype)


def white_light(images: np.ndarray) -> np.ndarray:
    """The ``1im`` input: per-pixel mean of the filters, shape (N, 1, S, S)."""
    return images.mean(axis=1, keepdims=True, dtype=np.float64).astype(np.float32)


@dataclass(frozen=True)
class NormStats:
    """Training-set minima and maxima for the ``filter`` and ``dataset`` normalisations.

    Attributes
    ----------
    channel_min, channel_max : tuple of float
        Per channel over all training pixels (``filter``).
    global_min, global_max : float
        Over all training pixels and channels (``dataset``).
    """

    channel_min: tuple[float, ...]
    channel_max: tuple[float, ...]
    global_min: float
    global_max: float

    @classmethod
    def from_dict(cls, d: dict) -> NormStats:
        """Inverse of :meth:`to_dict` (``normalisation.json``)."""
        return cls(
            tuple(d["channel_min"]), tuple(d["channel_max"]), d["global_min"], d["global_max"]
        )

    def to_dict(self) -> dict:
        """JSON-ready mapping (lists of float)."""
        return {
            "channel_min": list(self.channel_min),
            "channel_max": list(self.channel_max),
            "global_min": self.global_min,
            "global_max": self.global_max,
        }


def fit_norm_stats(batches: Iterator[np.ndarray]) -> NormStats:
    """Minima and maxima over batches of (already masked) training images.

    Parameters
    ----------
    batches : iterable of numpy.ndarray, shape (n, C, S, S)

    Returns
    -------
    NormStats
    """
    cmin = cmax = None
    for b in batches:
        lo, hi = b.min(axis=(0, 2, 3)), b.max(axis=(0, 2, 3))
        cmin = lo if cmin is None else np.minimum(cmin, lo)
        cmax = hi if cmax is None else np.maximum(cmax, hi)
    if cmin is None:
        raise ValueError("no training images to fit the normalisation on")
    return NormStats(
        tuple(float(v) for v in cmin),
        tuple(float(v) for v in cmax),
        float(cmin.min()),
        float(cmax.max()),
    )


def normalise(images: np.ndarray, kind: str, stats: NormStats | None = None) -> np.ndarray:
    """Min-max scale images to [0, 1] (training-set statistics where the spec says so).

    Parameters
    ----------
    images : numpy.ndarray, shape (N, C, S, S), float32
    kind : {"single-image", "five-images", "filter", "dataset"}
        ``single-image``: min/max of each instance and channel; ``five-images``:
        of each instance over all its channels; ``filter``: of each channel over
        the training set; ``dataset``: one global min/max over the training set.
        Constant inputs map to 0.
    stats : NormStats, optional
        Required for ``filter`` and ``dataset``; its channel count must match.

    Returns
    -------
    numpy.ndarray, shape (N, C, S, S), float32

    Raises
    ------
    ValueError
        Unknown ``kind``, or missing/mismatched ``stats``.
    """
    if kind == "single-image":
        lo = images.min(axis=(2, 3), keepdims=True)
        hi = images.max(axis=(2, 3), keepdims=True)
    elif kind == "five-images":
        lo = images.min(axis=(1, 2, 3), keepdims=True)
        hi = images.max(axis=(1, 2, 3), keepdims=True)
    elif kind in ("filter", "dataset"):
        if stats is None:
            raise ValueError(f"normalisation {kind!r} needs training-set statistics")
        if kind == "filter":
            if len(stats.channel_min) != images.shape[1]:
                raise ValueError(
                    f"stats have {len(stats.channel_min)} channels, images {images.shape[1]}"
                )
            lo = np.asarray(stats.channel_min, np.float32)[None, :, None, None]
            hi = np.asarray(stats.channel_max, np.float32)[None, :, None, None]
        else:
            lo, hi = np.float32(stats.global_min), np.float32(stats.global_max)
    else:
        raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {kind!r}")
    span = np.maximum(hi - lo, _EPS)
    return ((images - lo) / span).astype(np.float32)


def dihedral(images: np.ndarray, k: np.ndarray | int) -> np.ndarray:
    """Apply one of the 8 dihedral transforms (D4) to each image.

    Transform ``k`` in 0..7 is ``k % 4`` quarter turns (counter-clockwise in
    array axes (-2, -1)), preceded by a left-right flip when ``k >= 4``.

    Parameters
    ----------
    images : numpy.ndarray, shape (N, C, S, S)
    k : int or numpy.ndarray of int, shape (N,)

    Returns
    -------
    numpy.ndarray, shape (N, C, S, S)

    Examples
    --------
    >>> a = np.arange(4.0).reshape(1, 1, 2, 2)
    >>> dihedral(a, 1)[0, 0].tolist(), dihedral(a, 4)[0, 0].tolist()
    ([[1.0, 3.0], [0.0, 2.0]], [[1.0, 0.0], [3.0, 2.0]])
    """
    k = np.broadcast_to(np.asarray(k, dtype=int), (len(images),))
    out = np.empty_like(images)
    for t in range(8):
        sel = np.flatnonzero(k == t)
        if sel.size == 0:
            continue
        x = images[sel]
        if t >= 4:
            x = x[..., ::-1]
        out[sel] = np.rot90(x, t % 4, axes=(-2, -1))
    return out


@dataclass(frozen=True)
class CutoutTransform:
    """Raw shard images -> model inputs (mask, white light, normalisation).

    Attributes
    ----------
    mask_kind : str
        ``none | inner | outer``.
    mask_radius : float
        R, pixels.
    input : str
        ``1im`` (mean of the filters) or ``5im``.
    normalisation : str
        See :func:`normalise`.
    stats : NormStats or None
        Training-set statistics of the *masked, stacked, stretched* images.
    stretch : str
        ``none`` (linear, upstream) or ``asinh``: ``arcsinh(x / asinh_scale)``
        (Lupton, Gunn & Szalay 1999, AJ 118, 1406), applied after the mask and
        before normalisation; masked pixels stay 0.
    asinh_scale : float
        Softening of the asinh stretch, image units.
    """

    mask_kind: str = "none"
    mask_radius: float = 0.0
    input: str = "5im"
    normalisation: str = "filter"
    stats: NormStats | None = None
    stretch: str = "none"
    asinh_scale: float = 1.0

    def masked(self, images: np.ndarray) -> np.ndarray:
        """Mask, (for ``1im``) stack, stretch: the images the statistics are taken over."""
        x = apply_blackout(images, self.mask_kind, self.mask_radius)
        x = white_light(x) if self.input == "1im" else x
        if self.stretch == "asinh":
            x = np.arcsinh(x / np.float32(self.asinh_scale)).astype(np.float32)
        elif self.stretch != "none":
            raise ValueError(f"stretch must be none or asinh, got {self.stretch!r}")
        return x

    def with_stats(self, stats: NormStats | None) -> CutoutTransform:
        """The same transform with training-set statistics attached."""
        return dataclasses.replace(self, stats=stats)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return normalise(self.masked(images), self.normalisation, self.stats)


def open_shard(path: str | Path, require: Iterable[str] = ()) -> ShardReader:
    """Open a prepared cutout shard with a chunk cache large enough to hold hot chunks.

    A :class:`~astrobatch.io.shards.ShardReader` with
    :data:`~astrobatch.io.shards.LARGE_CACHE` (256 MiB, 10007 slots); use it as a
    context manager; ``reader["images"]`` is the lazy dataset.

    Raises
    ------
    InputError
        Missing or invalid shard, missing ``require``-d column.
    """
    return _open(path, require=require, cache=LARGE_CACHE)


class CutoutShardDataset(Dataset):
    """Cutouts of one prepared split, read from HDF5 one *batch* at a time.

    Used with :class:`~astrobatch.data.sampling.ChunkBatchSampler` as ``batch_sampler``
    (or any sampler of index lists): ``__getitems__`` gets all images of a batch in one call (from
    memory when the split fits, else hyperslab reads through the HDF5 chunk
    cache, with few chunks per batch thanks to the sampler), then masks,
    stacks, normalises and augments the batch with vectorised NumPy.

    Parameters
    ----------
    path : str or pathlib.Path
        Shard written by prepare (``images``, ``log_age``).
    transform : CutoutTransform
    targets : numpy.ndarray, shape (n,), float32
        Model-space targets (scaled log age; possibly shuffled for the control).
    augment : bool
        Random dihedral transform per image (training only).
    seed : int
        Seeds the augmentation: transform of image i at epoch e depends only
        on (seed, e, i).
    max_memory_bytes : int
        A split whose images take at most this many bytes is read once, in one
        HDF5 read, and kept in memory (per DataLoader worker); larger splits are
        read batch by batch.

    Raises
    ------
    InputError
        Missing shard or ``images`` dataset; ``targets`` of the wrong length.
    """

    def __init__(
        self,
        path: str | Path,
        transform: CutoutTransform,
        targets: np.ndarray,
        augment: bool = False,
        seed: int = 0,
        max_memory_bytes: int = 2 * 2**30,
    ):
        self.path = Path(path)
        with open_shard(self.path) as f:
            if "images" not in f:
                raise InputError("missing dataset (expected (n, C, S, S) float32)", path, "images")
            self.n = int(f["images"].shape[0])
            self.chunk = int((f["images"].chunks or (self.n,))[0])
            self.in_memory = f["images"].nbytes <= max_memory_bytes
        self._reader = f
        self._cache: np.ndarray | None = None
        if len(targets) != self.n:
            raise InputError(f"expected {self.n} targets, got {len(targets)}", path, "log_age")
        self.transform = transform
        self.targets = check_finite(np.asarray(targets, np.float32), path, "log_age", "targets")
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self._dset: h5py.Dataset | None = None

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        """Epoch of the augmentation draws."""
        self.epoch = epoch

    def _images(self) -> h5py.Dataset:
        # Opened lazily, once per DataLoader worker, and kept: HDF5's chunk cache belongs to
        # the open dataset, so re-opening it per batch would re-read every chunk.
        if self._dset is None:
            self._dset = self._reader["images"]
        return self._dset

    def read(self, indices) -> np.ndarray:
        """Raw images at ``indices`` (any order, repeats allowed), shape (n, C, S, S).

        In memory: one array indexing. From HDF5: one hyperslab read per run of
        consecutive indices, through a 256 MiB chunk cache.
        """
        idx = np.asarray(indices, dtype=np.int64)
        if self.in_memory:
            if self._cache is None:
                self._cache = check_finite(self._images()[:], self.path, "images", "pixels")
            return self._cache[idx]
        uniq, inv = np.unique(idx, return_inverse=True)
        # Runs of consecutive indices are read as hyperslabs through the chunk cache: h5py's
        # point selection (dataset[list]) is ~60x slower (benchmarks/README.md, cluster_age).
        ds = self._images()
        raw = np.empty((len(uniq), *ds.shape[1:]), ds.dtype)
        breaks = np.flatnonzero(np.diff(uniq) != 1) + 1
        for run in np.split(np.arange(len(uniq)), breaks):
            a, b = int(uniq[run[0]]), int(uniq[run[-1]]) + 1
            raw[run[0] : run[-1] + 1] = ds[a:b]
        return raw[inv.reshape(-1)]

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        x = self.transform(self.read(idx))
        if self.augment:
            k = np.array(
                [np.random.default_rng((self.seed, self.epoch, int(i))).integers(8) for i in idx]
            )
            x = dihedral(x, k)
        return {
            "x": torch.from_numpy(np.ascontiguousarray(x)),
            "y": torch.from_numpy(self.targets[idx]),
            "row": torch.from_numpy(idx),
        }

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        b = self.__getitems__([i])
        return {k: v[0] for k, v in b.items()}

    def __getstate__(self):  # h5py handles do not pickle (DataLoader workers)
        state = self.__dict__.copy()
        state["_dset"] = None  # the reader drops its file handle when pickled
        state["_cache"] = None
        return state


def collate_batch(batch):
    """Identity collate for batches produced by ``__getitems__`` (already tensors)."""
    return batch


class CutoutDataModule(ShardDataModule):
    """Train/val/test cutout loaders over prepared shards (batch reads, chunk-aware shuffling).

    Parameters
    ----------
    datasets : dict of str to CutoutShardDataset
        ``train``, ``val`` and ``test`` (augmentation already set on ``train``).
    batch_size : int
    seed : int
        Seed of the shuffle (per epoch).
    num_workers : int
    """

    def __init__(self, datasets: dict, batch_size: int, seed: int, num_workers: int = 0):
        super().__init__()
        self.datasets, self.batch_size = datasets, batch_size
        self.seed, self.num_workers = seed, num_workers
        self.splits = tuple(datasets)

    def build_dataset(self, split: str) -> CutoutShardDataset:
        """The dataset of ``split``, as given."""
        return self.datasets[split]

    def loader(self, split: str, shuffle: bool = False) -> DataLoader:
        """DataLoader of one split (rank-aware when a trainer is attached)."""
        ds = self.dataset(split)
        rank, world = 0, 1
        if self.trainer is not None and shuffle:
            rank, world = self.trainer.global_rank, self.trainer.world_size
        sampler = ChunkBatchSampler(
            len(ds), self.batch_size, ds.chunk, shuffle, self.seed, rank=rank,
            num_replicas=world, dataset=ds if shuffle else None,
        )  # fmt: skip
        return DataLoader(
            ds, batch_sampler=sampler, collate_fn=collate_batch, num_workers=self.num_workers,
            persistent_workers=False,
        )  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        """Shuffled (chunk-aware, epoch-seeded), augmented training batches."""
        return self.loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in file order."""
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        """Test batches in file order."""
        return self.loader("test")


#: Dihedral transforms (:func:`dihedral` codes) allowed by each augmentation choice.
DIHEDRAL_CHOICES: dict[tuple[bool, bool], tuple[int, ...]] = {
    (True, True): tuple(range(8)),  # flips and quarter turns: all of D4
    (False, True): (0, 1, 2, 3),  # quarter turns only
    (True, False): (0, 4),  # left-right flip or not (with an up-down flip: k = 6)
    (False, False): (0,),
}


@dataclass(frozen=True)
class Uint8Normalise:
    """uint8 colour planes -> float32 ``(x / 255 - mean) / std`` per channel.

    Parameters
    ----------
    mean, std : tuple of float
        Per-channel statistics of images in [0, 1] (the backbone's: ImageNet for DINOv2).

    Examples
    --------
    >>> t = Uint8Normalise((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    >>> t(np.array([0, 255], np.uint8).reshape(1, 1, 1, 2).repeat(3, 1))[0, 0, 0].tolist()
    [-1.0, 1.0]
    """

    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = np.asarray(images, np.float32) / np.float32(255.0)
        m = np.asarray(self.mean, np.float32)[None, :, None, None]
        s = np.asarray(self.std, np.float32)[None, :, None, None]
        return (x - m) / s


class ImageShardDataset(CutoutShardDataset):
    """Colour images of a prepared shard with flips, quarter turns and colour jitter.

    A :class:`CutoutShardDataset` (batch reads, in memory when small) whose
    augmentation draws, per image ``i`` at epoch ``e`` from ``(seed, e, i)`` only:
    a dihedral transform among those allowed (:data:`DIHEDRAL_CHOICES`), and a colour
    jitter ``x -> x * (1 + g) + o`` with ``g, o ~ N(0, colour_jitter)`` per channel
    (in normalised units).

    Parameters
    ----------
    path : str or pathlib.Path
        Shard with ``images`` (n, C, S, S), any dtype ``transform`` takes (uint8).
    transform : callable
        Batch of raw images -> float32 (n, C, S, S) (e.g. :class:`Uint8Normalise`).
    targets : numpy.ndarray, shape (n, ...), float32
    augment : bool
    flips, rotations : bool
        Dihedral transforms allowed when augmenting.
    colour_jitter : float
        Standard deviation of the per-channel gain and offset (0: none).
    seed : int
    """

    def __init__(self, path, transform, targets, augment=False, seed=0, *, flips=True,
                 rotations=True, colour_jitter=0.0, max_memory_bytes: int = 2 * 2**30):  # fmt: skip
        super().__init__(path, transform, targets, augment=augment, seed=seed,
                         max_memory_bytes=max_memory_bytes)  # fmt: skip
        self.choices = np.asarray(DIHEDRAL_CHOICES[(bool(flips), bool(rotations))])
        self.colour_jitter = float(colour_jitter)

    def draws(self, indices) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Dihedral codes (n,), gains and offsets (n, C) of the images at ``indices``."""
        idx = np.asarray(indices, dtype=np.int64)
        c = 3
        k = np.empty(len(idx), np.int64)
        g = np.zeros((len(idx), c), np.float32)
        o = np.zeros((len(idx), c), np.float32)
        for j, i in enumerate(idx):
            rng = np.random.default_rng((self.seed, self.epoch, int(i)))
            k[j] = self.choices[rng.integers(len(self.choices))]
            if self.colour_jitter > 0:
                g[j], o[j] = rng.normal(0.0, self.colour_jitter, (2, c))
        return k, g, o

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        x = self.transform(self.read(idx))
        if self.augment:
            k, g, o = self.draws(idx)
            x = dihedral(x, k)
            if self.colour_jitter > 0:
                n_c = x.shape[1]
                x = x * (1 + g[:, :n_c, None, None]) + o[:, :n_c, None, None]
        return {
            "x": torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
            "y": torch.from_numpy(self.targets[idx]),
            "row": torch.from_numpy(idx),
        }


class ArrayDataset(Dataset):
    """In-memory inputs and targets (e.g. frozen-backbone embeddings), batch at a time.

    Works with :class:`CutoutDataModule` (``chunk`` = n: plain seeded permutations).

    Parameters
    ----------
    x : numpy.ndarray, shape (n, ...), float32
    y : numpy.ndarray, shape (n, ...), float32

    Raises
    ------
    ValueError
        Lengths differ.

    Examples
    --------
    >>> ds = ArrayDataset(np.zeros((4, 2), np.float32), np.ones(4, np.float32))
    >>> ds.__getitems__([0, 3])["x"].shape
    torch.Size([2, 2])
    """

    def __init__(self, x: np.ndarray, y: np.ndarray):
        if len(x) != len(y):
            raise ValueError(f"{len(x)} inputs but {len(y)} targets")
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        self.y = np.ascontiguousarray(y, dtype=np.float32)
        self.n = self.chunk = len(self.x)
        self.epoch = 0

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        """No draws depend on the epoch; kept for the samplers."""
        self.epoch = epoch

    def __getitems__(self, indices) -> dict[str, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        return {"x": torch.from_numpy(self.x[idx]), "y": torch.from_numpy(self.y[idx]),
                "row": torch.from_numpy(idx)}  # fmt: skip

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([i]).items()}
