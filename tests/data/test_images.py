"""Blackout masks, normalisations, dihedral augmentation and batch reads of image shards."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from astrobatch.data.images import (
    CutoutShardDataset,
    CutoutTransform,
    apply_blackout,
    dihedral,
    disk,
    fit_norm_stats,
    keep_mask,
    normalise,
    white_light,
)
from astrobatch.data.layouts import cutout_layout
from astrobatch.data.sampling import ChunkBatchSampler
from astrobatch.errors import InputError
from astrobatch.io.shards import ShardWriter


@pytest.mark.parametrize("size", [112, 80, 33])
@pytest.mark.parametrize("radius", [1.0, 6.0, 12.0, 12.5, 40.0])
def test_disk_pixels_exactly_inside_or_outside(size, radius):
    d = disk(size, radius)
    c = size // 2
    for i in range(size):
        for j in range(size):
            assert d[i, j] == ((i - c) ** 2 + (j - c) ** 2 <= radius**2)
    # centre pixel (56, 56) of a 112 cutout is inside any R >= 0 disk with R > 0
    assert d[c, c]


def test_disk_area_matches_lattice_count():
    # Gauss circle problem: number of lattice points with x² + y² <= 36 is 113
    assert disk(112, 6).sum() == 113
    assert disk(112, 0).sum() == 0


def test_inner_and_outer_masks_are_complements():
    for r in (3, 6, 12, 40):
        inner, outer = keep_mask(112, "inner", r), keep_mask(112, "outer", r)
        assert not (inner & outer).any() and (inner | outer).all()
    assert keep_mask(112, "inner", 0).all() and keep_mask(112, "outer", 0).all()
    assert keep_mask(112, "none", 10).all()
    with pytest.raises(ValueError):
        keep_mask(112, "ring", 3)


def test_blackout_zeroes_every_channel_on_raw_values():
    rng = np.random.default_rng(0)
    x = rng.uniform(1, 2, (3, 5, 40, 40)).astype(np.float32)
    inner = apply_blackout(x, "inner", 6)
    outer = apply_blackout(x, "outer", 6)
    d = disk(40, 6)
    assert (inner[:, :, d] == 0).all() and (inner[:, :, ~d] == x[:, :, ~d]).all()
    assert (outer[:, :, ~d] == 0).all() and (outer[:, :, d] == x[:, :, d]).all()
    assert (x > 0).all()  # input untouched


def test_white_light_is_channel_mean():
    x = np.arange(2 * 5 * 4 * 4, dtype=np.float32).reshape(2, 5, 4, 4)
    w = white_light(x)
    assert w.shape == (2, 1, 4, 4)
    np.testing.assert_allclose(w[:, 0], x.mean(axis=1))


def _images(seed=0, n=6):
    rng = np.random.default_rng(seed)
    scale = np.array([1, 10, 100, 1000, 5])[None, :, None, None]
    return (rng.normal(size=(n, 5, 8, 8)) * scale).astype(np.float32)


def test_single_image_normalises_each_instance_and_channel():
    x = normalise(_images(), "single-image")
    np.testing.assert_allclose(x.min(axis=(2, 3)), 0, atol=1e-6)
    np.testing.assert_allclose(x.max(axis=(2, 3)), 1, atol=1e-6)


def test_five_images_normalises_each_instance_over_all_channels():
    raw = _images()
    x = normalise(raw, "five-images")
    np.testing.assert_allclose(x.min(axis=(1, 2, 3)), 0, atol=1e-6)
    np.testing.assert_allclose(x.max(axis=(1, 2, 3)), 1, atol=1e-6)
    # channels keep their relative scale within an instance
    assert (x[:, 3].std(axis=(1, 2)) > 100 * x[:, 0].std(axis=(1, 2))).all()


def test_filter_and_dataset_use_training_statistics_only():
    train, test = _images(0), _images(1) * 3
    stats = fit_norm_stats(iter([train[:3], train[3:]]))  # batches
    np.testing.assert_allclose(stats.channel_min, train.min(axis=(0, 2, 3)))
    np.testing.assert_allclose(stats.channel_max, train.max(axis=(0, 2, 3)))
    assert stats.global_min == train.min() and stats.global_max == train.max()
    f_train = normalise(train, "filter", stats)
    np.testing.assert_allclose(f_train.min(axis=(0, 2, 3)), 0, atol=1e-6)
    np.testing.assert_allclose(f_train.max(axis=(0, 2, 3)), 1, atol=1e-6)
    f_test = normalise(test, "filter", stats)  # test data may leave [0, 1]
    assert f_test.max() > 1 or f_test.min() < 0
    d = normalise(train, "dataset", stats)
    assert np.isclose(d.min(), 0) and np.isclose(d.max(), 1)
    lo, hi = train.min(), train.max()
    np.testing.assert_allclose(d, (train - lo) / (hi - lo), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        normalise(train, "filter")


def test_transform_statistics_follow_the_mask():
    raw = np.abs(_images()) + 1.0  # strictly positive
    t = CutoutTransform("inner", 2, "5im", "filter")
    stats = fit_norm_stats(iter([t.masked(raw)]))
    assert stats.channel_min == (0.0,) * 5  # zeroed pixels are part of the masked images
    t1 = CutoutTransform("none", 0, "1im", "dataset")
    stats1 = fit_norm_stats(iter([t1.masked(raw)]))
    assert len(stats1.channel_min) == 1


def test_dihedral_group():
    x = np.random.default_rng(0).normal(size=(8, 2, 5, 5))
    outs = [dihedral(x[:1], k)[0] for k in range(8)]
    # the 8 transforms of a generic image are distinct
    assert len({o.tobytes() for o in outs}) == 8
    # rotations: k=1 four times is the identity; flips are involutions
    y = x.copy()
    for _ in range(4):
        y = dihedral(y, 1)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(dihedral(dihedral(x, 4), 4), x)
    # per-image k, and pixel values are only permuted
    k = np.arange(8)
    z = dihedral(x, k)
    for i in range(8):
        np.testing.assert_array_equal(z[i], dihedral(x[i : i + 1], i)[0])
        np.testing.assert_array_equal(np.sort(z[i].ravel()), np.sort(x[i].ravel()))
    # the centre pixel stays the centre (masks are dihedral-invariant)
    np.testing.assert_array_equal(z[:, :, 2, 2], x[:, :, 2, 2])


@pytest.fixture()
def shard(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (50, 5, 12, 12)).astype(np.float32)
    p = tmp_path / "train.h5"
    cols = cutout_layout(5, 12, list("abcde"), "e/s", 4.0)
    rows = {
        "images": x, "photometry": np.zeros((50, 5)), "log_age": np.linspace(7, 9, 50),
        "cluster_id": np.arange(50), "galaxy_id": ["G"] * 50,
    }  # fmt: skip
    with ShardWriter(p, cols, chunk_rows=8) as w:
        w.append(rows)
    with h5py.File(p) as f:
        assert f["images"].chunks == (8, 5, 12, 12)
    return p, x


@pytest.mark.parametrize("max_memory_bytes", [0, 2**30])  # batch reads / whole split in memory
def test_dataset_reads_batches_in_any_order(shard, max_memory_bytes):
    p, x = shard
    t = CutoutTransform(normalisation="single-image")
    ds = CutoutShardDataset(p, t, np.arange(50.0), max_memory_bytes=max_memory_bytes)
    assert ds.in_memory == (max_memory_bytes > 0)
    idx = [31, 2, 17, 2, 49]
    b = ds.__getitems__(idx)
    np.testing.assert_allclose(b["x"].numpy(), normalise(x[idx], "single-image"), rtol=1e-6)
    assert b["y"].tolist() == [float(i) for i in idx] and b["row"].tolist() == idx


def test_augmentation_is_seeded_by_epoch_and_index(shard):
    p, _ = shard
    t = CutoutTransform(normalisation="single-image")
    ds = CutoutShardDataset(p, t, np.zeros(50), augment=True, seed=3)
    a = ds.__getitems__([1, 2, 3])["x"]
    assert torch.equal(a, ds.__getitems__([1, 2, 3])["x"])
    ds.set_epoch(1)
    assert not torch.equal(a, ds.__getitems__([1, 2, 3])["x"])


def test_dataset_rejects_wrong_target_length(shard):
    p, _ = shard
    with pytest.raises(InputError, match="log_age"):
        CutoutShardDataset(p, CutoutTransform(normalisation="single-image"), np.zeros(3))


def test_chunk_batch_sampler_covers_every_index_once_and_touches_few_chunks():
    s = ChunkBatchSampler(1000, 32, chunk=64, shuffle=True, seed=0, window=2)
    seen = [i for b in s for i in b]
    assert sorted(seen) == list(range(1000))
    first = list(s)
    s.set_epoch(1)
    assert list(s) != first
    assert max(len({i // 64 for i in b}) for b in first) <= 3  # window of 2 chunks (+ boundary)
    ranks = [ChunkBatchSampler(1000, 32, 64, True, 0, rank=r, num_replicas=2) for r in (0, 1)]
    both = [i for r in ranks for b in r for i in b]
    assert sorted(both) == list(range(1000)) and len(ranks[0]) + len(ranks[1]) == len(s)


@pytest.mark.parametrize("n, batch_size, world", [(100, 8, 2), (90, 10, 4), (5, 4, 3), (7, 8, 2)])
def test_chunk_batch_sampler_gives_every_rank_the_same_steps(n, batch_size, world):
    """DDP waits for every rank at each step: an uneven batch count would hang it. The list is
    padded with the epoch's first batches to a multiple of the world size; nothing is dropped
    and, apart from that padding, no batch is on two ranks."""
    ranks = [ChunkBatchSampler(n, batch_size, 16, True, 3, rank=r, num_replicas=world)
             for r in range(world)]  # fmt: skip
    for s in ranks:
        s.set_epoch(2)
    per_rank = [list(s) for s in ranks]
    total = -(-n // batch_size)
    steps = -(-total // world)
    assert [len(b) for b in per_rank] == [len(s) for s in ranks] == [steps] * world
    one = ChunkBatchSampler(n, batch_size, 16, True, 3)
    one.set_epoch(2)
    single = list(one)
    interleaved = [per_rank[r][k] for k in range(steps) for r in range(world)]
    pad = steps * world - total
    assert interleaved == single + [single[i % total] for i in range(pad)]
    assert sorted(i for b in interleaved[:total] for i in b) == list(range(n))


def test_chunk_batch_sampler_salt_and_epoch_tags():
    plain = ChunkBatchSampler(100, 10, chunk=16, shuffle=True, seed=2)
    salted = ChunkBatchSampler(100, 10, chunk=16, shuffle=True, seed=2, salt=3)
    assert list(plain) != list(salted)
    tagged = ChunkBatchSampler(100, 10, chunk=16, shuffle=True, seed=2, tag_epoch=True)
    tagged.set_epoch(4)
    plain.set_epoch(4)
    assert [[i for i, _ in b] for b in tagged] == list(plain)
    assert {e for b in tagged for _, e in b} == {4}
    one_chunk = ChunkBatchSampler(100, 10, chunk=100, shuffle=True, seed=2, salt=7)
    assert [i for b in one_chunk for i in b] == (
        np.random.default_rng((2, 0, 7)).permutation(100).tolist()
    )
