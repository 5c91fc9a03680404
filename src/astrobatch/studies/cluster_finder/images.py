"""Images with cluster boxes for the classifier and the detector of cluster_finder.

Prepared shards (``<prepared>/images_{train,val,test}.h5``, written by the study's
prepare; the format of :mod:`astrobatch.io.shards`):

- row columns: ``images`` float32 (n, 3, S, S) (g, r, i, stretched to O(1) values),
  ``label`` float32 (n,) (1 = cluster-centred image, 0 = empty field), ``image_id`` str,
  ``ra``, ``dec`` float64 (deg), ``n_boxes`` int64;
- ragged group ``boxes`` (``ptr`` over rows): ``boxes/xyxy`` float32 (m, 4) pixel boxes
  ``(x_min, y_min, x_max, y_max)`` of the prepared S x S image (``img[y, x]``, pixel
  centres at integers, :mod:`astrobatch.nn.detection` conventions), ``boxes/cluster_id``
  int64, ``boxes/z``, ``boxes/richness``, ``boxes/inside_fraction`` float32. Empty
  fields have no box.

:class:`BoxImageDataset` reads them a batch at a time (the reads of
:class:`~astrobatch.data.images.CutoutShardDataset`: in memory when small, else hyperslabs
through a 256 MiB chunk cache) and, in training, applies one of the 8 dihedral transforms
(flips and quarter turns, :func:`~astrobatch.data.images.dihedral`) to each image *and*
its boxes (:func:`dihedral_boxes`), drawn from ``numpy.random.default_rng((seed, epoch,
row))`` only, so a resumed run sees the draws of an uninterrupted one.
:func:`collate_boxes` stacks images, labels and rows and keeps the boxes as a list (their
number varies); :class:`BoxImageDataModule` gives the train/val/test loaders
(chunk-aware, epoch-seeded shuffling of
:class:`~astrobatch.data.sampling.ChunkBatchSampler`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from astrobatch.data.images import CutoutShardDataset, dihedral, open_shard
from astrobatch.data.sampling import ChunkBatchSampler, ShardDataModule
from astrobatch.errors import InputError
from astrobatch.io.errors import check_finite

__all__ = [
    "SPLITS",
    "BoxImageDataModule",
    "BoxImageDataset",
    "collate_boxes",
    "dihedral_boxes",
    "shard_path",
]

#: Prepared image splits.
SPLITS = ("train", "val", "test")
#: Keys every image shard must hold.
REQUIRED = ("images", "label", "n_boxes", "boxes/xyxy")


def shard_path(prepared_dir: str | Path, split: str) -> Path:
    """The image shard of ``split``: ``<prepared_dir>/images_<split>.h5``.

    Examples
    --------
    >>> shard_path("prep", "val").as_posix()
    'prep/images_val.h5'
    """
    return Path(prepared_dir) / f"images_{split}.h5"


def dihedral_boxes(boxes: np.ndarray, k: int, size: int) -> np.ndarray:
    """Boxes of an S x S image under the dihedral transform ``k`` of images (flips, quarter turns).

    Transform ``k`` in 0..7 of :func:`~astrobatch.data.images.dihedral` is a left-right
    flip when ``k >= 4``, then ``k % 4`` counter-clockwise quarter turns of the array axes
    ``(y, x)``. With pixel centres at integer coordinates (the image spans ``[-0.5, S -
    0.5]``) a flip maps a point ``(x, y)`` to ``(S - 1 - x, y)`` and a quarter turn
    (``numpy.rot90``) to ``(y, S - 1 - x)``, so a box ``(x0, y0, x1, y1)`` becomes
    ``(S - 1 - x1, y0, S - 1 - x0, y1)`` and ``(y0, S - 1 - x1, y1, S - 1 - x0)``. The box
    of the transformed image is then exactly the transformed box (the tests check it
    against masks).

    Parameters
    ----------
    boxes : numpy.ndarray, shape (m, 4), float
        ``(x_min, y_min, x_max, y_max)``, pixels of the image before the transform.
    k : int
        Transform code, 0..7.
    size : int
        S, side of the square image, pixels.

    Returns
    -------
    numpy.ndarray, shape (m, 4), float32
        The boxes in the transformed image (a new array).

    Raises
    ------
    ValueError
        On ``k`` outside 0..7 or boxes not of shape (m, 4).

    Examples
    --------
    >>> dihedral_boxes(np.array([[1.0, 2.0, 3.0, 5.0]]), 1, 10).tolist()
    [[2.0, 6.0, 5.0, 8.0]]
    """
    k = int(k)
    if not 0 <= k <= 7:
        raise ValueError(f"dihedral code must be in 0..7, got {k}")
    b = np.asarray(boxes, dtype=np.float32)
    if b.size == 0:
        b = b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must have shape (m, 4), got {b.shape}")
    last = np.float32(size - 1)
    x0, y0, x1, y1 = b.T
    if k >= 4:
        x0, x1 = last - x1, last - x0
    for _ in range(k % 4):
        x0, y0, x1, y1 = y0, last - x1, y1, last - x0
    return np.stack([x0, y0, x1, y1], axis=1).astype(np.float32)


def _as_float32(images: np.ndarray) -> np.ndarray:
    """The prepared images as they are (already stretched), float32."""
    return np.asarray(images, dtype=np.float32)


class BoxImageDataset(CutoutShardDataset):
    """Images, labels and boxes of one prepared image shard (see module doc).

    A :class:`~astrobatch.data.images.CutoutShardDataset` (batch reads, in memory when
    the split fits) whose items carry their boxes. ``__getitems__`` returns a list of
    items (one batch read); :func:`collate_boxes` makes the batch.

    Parameters
    ----------
    shard_path : str or pathlib.Path
        ``images_<split>.h5``.
    train : bool
        The training split: only it is augmented.
    seed : int
        Seed of the augmentation draws: the transform of row ``i`` at epoch ``e`` is
        ``default_rng((seed, e, i)).integers(8)`` (as the other image datasets).
    augment : bool
        Random flips and quarter turns of image and boxes (with ``train`` only).
    max_memory_bytes : int
        Splits whose images fit are read once and kept in memory.

    Attributes
    ----------
    n : int
        Rows.
    image_size : int
        S, pixels.
    n_channels : int
        C (3: g, r, i).
    labels : numpy.ndarray, shape (n,), float32
    ptr : numpy.ndarray, shape (n + 1,), int64
        CSR pointer of the boxes.
    xyxy : numpy.ndarray, shape (m, 4), float32
        All boxes, pixels (the boxes of row ``i`` are ``xyxy[ptr[i]:ptr[i + 1]]``).

    Notes
    -----
    Items are ``{"x": (C, S, S) float32, "y": () float32 label, "boxes": (k, 4) float32 pixels,
    "row": () int64}``.

    Raises
    ------
    InputError
        Missing or invalid shard, missing column, images not (n, C, S, S), non-finite
        labels or boxes, boxes with ``max < min``, ``n_boxes`` that disagrees with the
        pointer.
    """

    def __init__(
        self,
        shard_path: str | Path,
        train: bool,
        seed: int = 0,
        augment: bool = False,
        max_memory_bytes: int = 2 * 2**30,
    ):
        path = Path(shard_path)
        with open_shard(path, require=REQUIRED) as f:
            shape = f["images"].shape
            if len(shape) != 4 or shape[2] != shape[3]:
                raise InputError(
                    f"expected images of shape (n, C, S, S), got {shape}", path, "images"
                )
            labels = check_finite(f.read("label").astype(np.float32), path, "label", "labels")
            ptr = f.ptr("boxes").astype(np.int64)
            xyxy = f.read("boxes/xyxy").astype(np.float32).reshape(-1, 4)
            n_boxes = f.read("n_boxes").astype(np.int64)
        check_finite(xyxy, path, "boxes/xyxy", "box corners")
        if ((xyxy[:, 2] < xyxy[:, 0]) | (xyxy[:, 3] < xyxy[:, 1])).any():
            raise InputError(
                "boxes must be (x_min, y_min, x_max, y_max) with max >= min", path, "boxes/xyxy"
            )
        if not np.array_equal(n_boxes, np.diff(ptr)):
            raise InputError("n_boxes disagrees with the boxes pointer (boxes/ptr)", path,
                             "n_boxes")  # fmt: skip
        super().__init__(path, _as_float32, labels, augment=bool(train and augment), seed=seed,
                         max_memory_bytes=max_memory_bytes)  # fmt: skip
        self.train = bool(train)
        self.labels = labels
        self.ptr = ptr
        self.xyxy = xyxy
        self.n_channels = int(shape[1])
        self.image_size = int(shape[2])

    def draws(self, indices) -> np.ndarray:
        """Dihedral codes (n,) int64 of the rows ``indices`` at the current epoch."""
        return np.array(
            [np.random.default_rng((self.seed, self.epoch, int(i))).integers(8) for i in indices],
            dtype=np.int64,
        )

    def boxes(self, i: int) -> np.ndarray:
        """The boxes of row ``i`` as stored, float32 (k, 4), pixels."""
        return self.xyxy[self.ptr[i] : self.ptr[i + 1]]

    def __getitems__(self, indices) -> list[dict[str, torch.Tensor]]:
        idx = np.asarray(indices, dtype=np.int64)
        x = self.transform(self.read(idx))
        boxes = [self.boxes(int(i)) for i in idx]
        if self.augment:
            k = self.draws(idx)
            x = dihedral(x, k)
            s = self.image_size
            boxes = [dihedral_boxes(b, int(t), s) for b, t in zip(boxes, k, strict=True)]
        x = np.ascontiguousarray(x, dtype=np.float32)
        return [
            {
                "x": torch.from_numpy(x[j]),
                "y": torch.tensor(self.labels[i], dtype=torch.float32),
                "boxes": torch.from_numpy(np.array(boxes[j], dtype=np.float32).reshape(-1, 4)),
                "row": torch.tensor(int(i), dtype=torch.int64),
            }
            for j, i in enumerate(idx)
        ]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([i])[0]


def collate_boxes(items: list[dict[str, torch.Tensor]]) -> dict:
    """A batch of :class:`BoxImageDataset` items; the boxes stay a list.

    Parameters
    ----------
    items : list of dict
        Items ``{"x", "y", "boxes", "row"}``.

    Returns
    -------
    dict
        ``x`` (B, C, S, S) float32, ``y`` (B,) float32, ``row`` (B,) int64 and ``boxes``
        a list of B tensors (k_b, 4) float32, pixels (k_b = 0 for an empty field).

    Examples
    --------
    >>> it = {"x": torch.zeros(3, 4, 4), "y": torch.tensor(1.0),
    ...       "boxes": torch.zeros(2, 4), "row": torch.tensor(0)}
    >>> b = collate_boxes([it, it])
    >>> b["x"].shape, [tuple(t.shape) for t in b["boxes"]]
    (torch.Size([2, 3, 4, 4]), [(2, 4), (2, 4)])
    """
    return {
        "x": torch.stack([it["x"] for it in items]),
        "y": torch.stack([it["y"] for it in items]),
        "boxes": [it["boxes"] for it in items],
        "row": torch.stack([it["row"] for it in items]),
    }


class BoxImageDataModule(ShardDataModule):
    """Train/val/test loaders of the prepared image shards (boxes as lists).

    Parameters
    ----------
    prepared_dir : str or pathlib.Path
        Holds ``images_{train,val,test}.h5``.
    batch_size : int
    seed : int
        Seed of the shuffle and of the augmentation (per epoch).
    num_workers : int
        DataLoader processes.
    augment : bool
        Flips and quarter turns of the training images and their boxes.

    Notes
    -----
    A split's shard is opened (and validated) the first time its loader is asked for;
    :class:`~astrobatch.data.sampling.ChunkBatchSampler` relays Lightning's epoch to the
    training dataset's draws.
    """

    splits = SPLITS

    def __init__(
        self,
        prepared_dir: str | Path,
        batch_size: int,
        seed: int,
        num_workers: int = 0,
        augment: bool = True,
    ):
        super().__init__()
        self.prepared_dir = Path(prepared_dir)
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.num_workers, self.augment = int(num_workers), bool(augment)

    def build_dataset(self, split: str) -> BoxImageDataset:
        """The dataset of ``split`` (augmented when it is ``train`` and ``augment``)."""
        return BoxImageDataset(shard_path(self.prepared_dir, split), train=split == "train",
                               seed=self.seed, augment=self.augment)  # fmt: skip

    def loader(self, split: str, shuffle: bool = False) -> DataLoader:
        """DataLoader of one split (rank-aware when a trainer is attached and shuffling)."""
        ds = self.dataset(split)
        rank, world = 0, 1
        if self.trainer is not None and shuffle:
            rank, world = self.trainer.global_rank, self.trainer.world_size
        sampler = ChunkBatchSampler(
            len(ds), self.batch_size, ds.chunk, shuffle, self.seed, rank=rank,
            num_replicas=world, dataset=ds if shuffle else None,
        )  # fmt: skip
        return DataLoader(ds, batch_sampler=sampler, collate_fn=collate_boxes,
                          num_workers=self.num_workers)  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        """Shuffled (chunk-aware, epoch-seeded), augmented training batches."""
        return self.loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in file order."""
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        """Test batches in file order."""
        return self.loader("test")
