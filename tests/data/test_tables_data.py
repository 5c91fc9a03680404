"""Table shards and their streaming datamodule: every row once per epoch, epoch-seeded orders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from astrobatch.data.layouts import table_layout
from astrobatch.data.sampling import ChunkBatchSampler, chunk_permutation
from astrobatch.data.tables import (
    TableArrayDataset,
    TableDataModule,
    TableShardDataset,
    read_table_shard,
    table_info,
)
from astrobatch.errors import InputError
from astrobatch.io.shards import ShardWriter

N_TRAIN, N_VAL, F, L = 1037, 130, 5, 2


def _write(path, n, labelled, offset=0, chunk_rows=64):
    rows = np.arange(n)
    x = np.tile(rows[:, None], (1, F)).astype(np.float32)  # x[:, 0] == row
    x[rows % 7 == 0, 1] = np.nan  # missing values pass through
    labels = ["teff", "parallax"] if labelled else None
    cols = table_layout([f"f{i}" for i in range(F)], labels)
    with ShardWriter(path, cols, chunk_rows=chunk_rows, compression="lzf") as w:
        if n == 0:  # an empty split keeps its schema
            return
        for a in range(0, n, 100):  # blocks that do not align with chunks
            b = min(a + 100, n)
            block = {"x": x[a:b], "x_err": x[a:b] * 0.1, "source_id": rows[a:b] + offset}
            if labelled:
                y = np.tile(rows[a:b, None], (1, L)).astype(np.float32)
                block.update(y=y, y_err=y * 0)
            w.append(block)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    d = tmp_path_factory.mktemp("tables")
    for s, n in (("train", N_TRAIN), ("val", N_VAL), ("val_real", 0)):
        _write(d / f"pretrain_{s}.h5", n, labelled=False)
    for s, n in (("train", N_TRAIN), ("val", N_VAL), ("test", 77)):
        _write(d / f"finetune_{s}.h5", n, labelled=True)
    (d / "manifest.json").write_text(json.dumps({"features": [f"f{i}" for i in range(F)]}))
    return d


def _epoch_rows(loader) -> tuple[torch.Tensor, int]:
    rows, n = [], 0
    for b in loader:
        assert torch.equal(b["x"][:, 0].long(), b["row"])  # features travel with their rows
        rows.append(b["row"])
        n += 1
    return torch.cat(rows), n


def test_shard_round_trip(prepared):
    info = table_info(prepared / "finetune_train.h5")
    assert info["n_rows"] == N_TRAIN and info["labels"] == ["teff", "parallax"]
    assert info["chunk_rows"] == 64 and info["labelled"]
    d = read_table_shard(prepared / "finetune_train.h5", 10, 20)
    np.testing.assert_array_equal(d["source_id"], np.arange(10, 20))
    assert d["x"].dtype == np.float32 and np.isnan(d["x"][14 - 10, 1])


@pytest.mark.parametrize("workers", [0, 2])
def test_every_row_once_per_epoch_new_order_each_epoch(prepared, workers):
    dm = TableDataModule(prepared, "pretrain", batch_size=100, seed=3, num_workers=workers)
    loader = dm.train_dataloader()
    orders = []
    for epoch in range(3):
        loader.sampler.set_epoch(epoch)  # what Lightning calls at each epoch start
        rows, n_batches = _epoch_rows(loader)
        assert sorted(rows.tolist()) == list(range(N_TRAIN))
        assert n_batches == len(loader) == len(dm.dataset("train"))
        orders.append(rows)
    assert not torch.equal(orders[0], orders[1]) and not torch.equal(orders[1], orders[2])
    loader.sampler.set_epoch(1)
    again, _ = _epoch_rows(loader)
    assert torch.equal(again, orders[1])  # (seed, epoch) fixes the order


def test_batches_and_eval_order(prepared):
    dm = TableDataModule(prepared, "finetune", batch_size=64, seed=0, eval_batch_size=50)
    b = next(iter(dm.train_dataloader()))
    assert set(b) == {"x", "x_err", "y", "y_err", "row"}
    assert b["x"].shape == (64, F) and b["y"].shape == (64, L) and b["row"].dtype == torch.int64
    assert b["x"].dtype == torch.float32 and torch.isnan(b["x"]).any()  # NaN passed through
    rows, n = _epoch_rows(dm.val_dataloader())
    assert rows.tolist() == list(range(N_VAL)) and n == 3  # unshuffled, batches of 50
    rows, _ = _epoch_rows(dm.test_dataloader())
    assert rows.tolist() == list(range(77))
    pre = TableDataModule(prepared, "pretrain", batch_size=64)
    assert "y" not in next(iter(pre.train_dataloader()))
    assert len(list(pre.test_dataloader())) == 0  # empty val_real shard: no batch


def test_in_memory_eval(prepared):
    dm = TableDataModule(prepared, "finetune", batch_size=64, in_memory_eval=True)
    assert isinstance(dm.dataset("val"), TableArrayDataset)
    rows, _ = _epoch_rows(dm.val_dataloader())
    assert rows.tolist() == list(range(N_VAL))
    item = dm.dataset("val")[3]
    assert item["x"].shape == (F,) and item["row"].item() == 3


def test_shuffle_buffer_mixes_chunks_and_ddp_split(prepared):
    ds = TableShardDataset(prepared / "pretrain_train.h5", batch_size=64, seed=1, buffer_chunks=3)
    ds.set_epoch(0)
    first = next(iter(ds))["row"]
    assert len(set((first // 64).tolist())) > 1  # rows of several chunks in one batch
    seen, counts = [], []
    for rank in range(3):  # DDP: equal batches per rank, every row at least once
        r = TableShardDataset(prepared / "pretrain_train.h5", batch_size=64, seed=1)
        r.set_distributed(rank, 3)
        r.set_epoch(2)
        batches = list(r)
        counts.append((len(batches), len(r)))
        seen += torch.cat([b["row"] for b in batches]).tolist()
    assert len({c for c in counts}) == 1 and counts[0][0] == counts[0][1]
    assert set(seen) == set(range(N_TRAIN)) and len(seen) - N_TRAIN < 3


def test_errors(prepared, tmp_path):
    with pytest.raises(InputError, match="unknown stage"):
        TableDataModule(prepared, "train")
    with pytest.raises(InputError, match="unknown split 'test' for stage 'pretrain'"):
        TableDataModule(prepared, "pretrain").loader("test")
    with pytest.raises(InputError, match="not found"):
        TableDataModule(tmp_path, "finetune").loader("train")
    import h5py

    with h5py.File(tmp_path / "finetune_train.h5", "w") as f:
        f["x"] = np.zeros((2, 2))
    with pytest.raises(InputError, match="not a prepared shard"):
        TableDataModule(tmp_path, "finetune").loader("train")


def test_lightning_reshuffles_every_epoch(prepared):
    """Lightning reaches the iterable dataset's epoch through the loader's sampler."""
    import lightning as L

    class Probe(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(F, 1)
            self.seen: dict[int, list[int]] = {}

        def training_step(self, batch, _):
            self.seen.setdefault(self.current_epoch, []).extend(batch["row"].tolist())
            return self.lin(torch.nan_to_num(batch["x"])).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    probe = Probe()
    dm = TableDataModule(prepared, "pretrain", batch_size=256, seed=0)
    trainer = L.Trainer(
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(probe, dm)
    a, b = probe.seen[0], probe.seen[1]
    assert sorted(a) == sorted(b) == list(range(N_TRAIN)) and a != b


def test_chunk_order_is_the_shared_chunk_permutation(prepared):
    ds = TableShardDataset(prepared / "pretrain_train.h5", batch_size=32, seed=5)
    n_chunks = -(-N_TRAIN // 64)
    for epoch in range(3):
        order = ds._chunk_order(epoch)
        assert order.tolist() == chunk_permutation(N_TRAIN, 64, 5, epoch).tolist()
        np.testing.assert_array_equal(
            order, np.random.default_rng((5, epoch)).permutation(n_chunks)
        )
        # the same chunk order as ChunkBatchSampler's (whose window then shuffles rows)
        s = ChunkBatchSampler(N_TRAIN, 32, 64, shuffle=True, seed=5, window=1)
        s.set_epoch(epoch)
        seq = s.order() // 64  # window 1: the rows of each chunk stay together
        visited = seq[np.r_[0, np.flatnonzero(np.diff(seq)) + 1]]
        assert visited.tolist() == order.tolist()
    empty = TableShardDataset(prepared / "pretrain_val_real.h5", batch_size=8, seed=0)
    assert list(empty) == [] and table_info(prepared / "pretrain_val_real.h5")["features"]
