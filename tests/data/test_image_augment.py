"""ImageShardDataset: what its augmentation draws (not only that it repeats), and ArrayDataset."""

from __future__ import annotations

import numpy as np
import pytest

from astrobatch.data.images import (
    DIHEDRAL_CHOICES,
    ArrayDataset,
    ImageShardDataset,
    Uint8Normalise,
    dihedral,
)
from astrobatch.io.shards import Column, ShardWriter

N, S = 400, 6


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "train.h5"
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (N, 3, S, S), dtype=np.uint8)
    cols = {"images": Column(np.uint8, (3, S, S))}
    with ShardWriter(path, cols, chunk_rows=64) as w:
        w.append({"images": images})
    return path, images


def dataset(path, **kw):
    return ImageShardDataset(path, Uint8Normalise(), np.zeros((N, 2), np.float32), augment=True,
                             seed=3, **kw)  # fmt: skip


@pytest.mark.parametrize(("flips", "rotations"), list(DIHEDRAL_CHOICES))
def test_dihedral_draws_cover_the_allowed_group_uniformly(shard, flips, rotations):
    ds = dataset(shard[0], flips=flips, rotations=rotations)
    ks = []
    for epoch in range(5):
        ds.set_epoch(epoch)
        ks.append(ds.draws(np.arange(N))[0])
    ks = np.concatenate(ks)
    allowed = DIHEDRAL_CHOICES[(flips, rotations)]
    assert set(ks.tolist()) == set(allowed)  # the mirror half is drawn when flips are on
    freq = np.bincount(ks, minlength=8)[list(allowed)] / len(ks)
    assert np.allclose(freq, 1 / len(allowed), atol=0.04)


def test_batches_are_the_drawn_transforms_of_the_images(shard):
    path, images = shard
    ds = dataset(path, colour_jitter=0.0)
    ds.set_epoch(2)
    idx = np.array([5, 17, 300])
    k, _, _ = ds.draws(idx)
    got = ds.__getitems__(idx.tolist())["x"].numpy()
    assert np.allclose(got, dihedral(Uint8Normalise()(images[idx]), k))
    ds.set_epoch(3)
    assert not np.allclose(ds.__getitems__(idx.tolist())["x"].numpy(), got)  # new epoch


def test_colour_jitter_has_the_stated_spread_per_channel(shard):
    ds = dataset(shard[0], colour_jitter=0.05, flips=False, rotations=False)
    _, g, o = ds.draws(np.arange(N))
    assert g.shape == o.shape == (N, 3)
    for v in (g, o):
        assert abs(v.std() - 0.05) < 0.005 and abs(v.mean()) < 0.01
    assert not np.allclose(g[:, 0], g[:, 1])  # drawn per channel
    x = ds.__getitems__(list(range(4)))["x"].numpy()
    plain = Uint8Normalise()(shard[1][:4])
    assert np.allclose(x, plain * (1 + g[:4, :, None, None]) + o[:4, :, None, None], atol=1e-5)


def test_no_augmentation_outside_training(shard):
    path, images = shard
    ds = ImageShardDataset(path, Uint8Normalise(), np.zeros((N, 2), np.float32), augment=False,
                           colour_jitter=0.5)  # fmt: skip
    assert np.allclose(ds.__getitems__([0, 1])["x"].numpy(), Uint8Normalise()(images[:2]))


def test_uint8_normalise_uses_the_given_statistics():
    t = Uint8Normalise((0.2, 0.4, 0.6), (0.5, 0.25, 0.125))
    x = np.full((1, 3, 1, 1), 102, np.uint8)  # 0.4 in [0, 1]
    assert np.allclose(t(x).ravel(), [(0.4 - 0.2) / 0.5, 0.0, (0.4 - 0.6) / 0.125])


def test_array_dataset_gathers_rows_and_checks_lengths():
    ds = ArrayDataset(np.arange(12, dtype=np.float32).reshape(6, 2), np.arange(6.0))
    b = ds.__getitems__([4, 1])
    assert b["x"].tolist() == [[8.0, 9.0], [2.0, 3.0]] and b["row"].tolist() == [4, 1]
    with pytest.raises(ValueError, match="targets"):
        ArrayDataset(np.zeros((3, 2)), np.zeros(2))
