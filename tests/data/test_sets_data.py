"""Sampling of sets: sizes, padding, dropping, epoch-seeded determinism."""

from __future__ import annotations

import numpy as np
import torch

from astrobatch.data.sampling import ChunkBatchSampler
from astrobatch.data.sets import SetDataModule, SetSampleDataset, sample_set
from astrobatch.studies.star_sets.params import SamplingParams


def test_sample_set_sizes_and_drop():
    s = SamplingParams(num_star_per_sample=128, drop_probability=1.0, drop_ratio_range=(0.9, 0.9))
    idx = sample_set(100, np.random.default_rng(0), s)
    assert len(idx) == 10  # 90% dropped, fewer than 128 remain
    assert len(set(idx.tolist())) == 10 and idx.max() < 100
    assert len(sample_set(1, np.random.default_rng(0), s)) == 1  # at least one star kept
    assert len(sample_set(0, np.random.default_rng(0), s)) == 0
    no_drop = SamplingParams(drop_probability=0.0)
    assert len(sample_set(1000, np.random.default_rng(0), no_drop)) == 128
    assert len(sample_set(50, np.random.default_rng(0), no_drop)) == 50


def test_drop_probability_statistics():
    s = SamplingParams(num_star_per_sample=1000, drop_probability=0.6, drop_ratio_range=(0.5, 0.5))
    rng = np.random.default_rng(1)
    sizes = np.array([len(sample_set(100, rng, s)) for _ in range(4000)])
    assert set(np.unique(sizes)) == {50, 100}
    assert abs(np.mean(sizes == 50) - 0.6) < 0.03


def test_dataset_padding_mask_and_determinism(tiny_prepared):
    s = SamplingParams(num_star_per_sample=32, num_sample_per_snapshot=4)
    ds = SetSampleDataset(tiny_prepared / "train.h5", s, seed=1, train=True)
    item = ds[(5, 0)]
    assert item["x"].shape == (32, 6) and item["mask"].dtype == torch.bool
    n = int(item["mask"].sum())
    assert torch.all(item["x"][n:] == 0)  # padding after the real stars
    assert torch.equal(ds[(5, 0)]["x"], item["x"])  # same (index, epoch): same draw
    assert not torch.equal(ds[(5, 1)]["x"], item["x"])  # next epoch: fresh draw
    lazy = SetSampleDataset(tiny_prepared / "train.h5", s, seed=1, train=True, in_memory=False)
    assert torch.equal(lazy[(5, 0)]["x"], item["x"])  # streaming gives the same data
    ev = SetSampleDataset(tiny_prepared / "test.h5", s, seed=1, train=False)
    assert torch.equal(ev[(2, 0)]["x"], ev[(2, 7)]["x"])  # evaluation: one fixed draw
    assert len(ds) == ds.n_sets * 4


def _sets_sampler(n, shuffle=True, seed=0, batch_size=3, **kw):
    """The sampler of SetDataModule: one chunk over the split, salt 7, (index, epoch) items."""
    return ChunkBatchSampler(n, batch_size, chunk=n, shuffle=shuffle, seed=seed, salt=7,
                             tag_epoch=True, distribute="items", **kw)  # fmt: skip


def test_sampler_epochs_and_ranks():
    sm = _sets_sampler(10)
    e0 = [i for b in sm for i, _ in b]
    sm.set_epoch(1)
    e1 = [i for b in sm for i, e in b]
    assert sorted(e0) == sorted(e1) == list(range(10)) and e0 != e1
    assert all(e == 1 for b in sm for _, e in b)
    # the orders of the former EpochSampler: default_rng((seed, epoch, 7)).permutation(n)
    for epoch in range(3):
        sm.set_epoch(epoch)
        want = np.random.default_rng((0, epoch, 7)).permutation(10).tolist()
        batches = [[i for i, _ in b] for b in sm]
        assert [i for b in batches for i in b] == want
        assert [len(b) for b in batches] == [3, 3, 3, 1] == [len(b) for b in sm]
    assert [i for b in _sets_sampler(10, shuffle=False) for i, _ in b] == list(range(10))
    # ranks: every world-th item of the same permutation, padded to equal lengths
    ranks = [_sets_sampler(10, rank=r, num_replicas=3) for r in range(3)]
    items = [[i for b in r for i, _ in b] for r in ranks]
    assert [len(x) for x in items] == [4, 4, 4]
    full = np.resize(np.random.default_rng((0, 0, 7)).permutation(10), 12)
    assert all(items[r] == full[r::3].tolist() for r in range(3))


def test_datamodule_orders_equal_the_epoch_permutation(tiny_prepared):
    s = SamplingParams(num_star_per_sample=16, num_sample_per_snapshot=2)
    dm = SetDataModule(tiny_prepared, s, 5, seed=4)
    loader = dm.train_dataloader()
    n = len(dm.dataset("train"))
    for epoch in range(3):
        loader.batch_sampler.set_epoch(epoch)
        got = []
        for b in loader:
            got += (b["set_index"] * 2 + b["sample_index"]).tolist()
        assert got == np.random.default_rng((4, epoch, 7)).permutation(n).tolist()
    val = [b["set_index"] * 2 + b["sample_index"] for b in dm.val_dataloader()]
    assert torch.cat(val).tolist() == list(range(len(dm.dataset("val"))))
    assert dm.dataset("train") is dm.dataset("train")  # cached


def test_datamodule_batches(tiny_prepared):
    dm = SetDataModule(tiny_prepared, SamplingParams(num_star_per_sample=16), 8, seed=0)
    b = next(iter(dm.train_dataloader()))
    assert b["x"].shape == (8, 16, 6) and b["mask"].shape == (8, 16) and b["y"].shape == (8,)
