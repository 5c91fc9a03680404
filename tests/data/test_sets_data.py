"""Sampling of sets: sizes, padding, dropping, epoch-seeded determinism."""

from __future__ import annotations

import numpy as np
import torch

from astrobatch.data.sets import EpochSampler, SetDataModule, SetSampleDataset, sample_set
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


def test_sampler_epochs_and_ranks():
    sm = EpochSampler(10, shuffle=True, seed=0)
    e0 = [i for i, _ in sm]
    sm.set_epoch(1)
    e1 = [i for i, e in sm]
    assert sorted(e0) == sorted(e1) == list(range(10)) and e0 != e1
    assert all(e == 1 for _, e in sm)


def test_datamodule_batches(tiny_prepared):
    dm = SetDataModule(tiny_prepared, SamplingParams(num_star_per_sample=16), 8, seed=0)
    b = next(iter(dm.train_dataloader()))
    assert b["x"].shape == (8, 16, 6) and b["mask"].shape == (8, 16) and b["y"].shape == (8,)
