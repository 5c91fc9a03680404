"""Lightning really reshuffles a ChunkBatchSampler every epoch (and tells its dataset).

Lightning 2.x calls ``set_epoch`` on a DataLoader's ``sampler`` and on
``batch_sampler.sampler``, never on ``batch_sampler`` itself; before the relay every epoch
of a study that uses ChunkBatchSampler (cluster_age, star_sets) repeated epoch 0.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from astrobatch.data.sampling import ChunkBatchSampler


class _Keys(Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, -1)
        return torch.tensor([float(index), float(epoch)])


class _Recorder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: dict[int, list[tuple[int, int]]] = {}

    def training_step(self, batch, batch_idx):
        rows = [(int(i), int(e)) for i, e in batch.tolist()]
        self.seen.setdefault(self.current_epoch, []).extend(rows)
        return (self.w * batch[:, 0].float()).sum() * 0 + self.w.square().sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_each_epoch_gets_its_own_order_and_its_epoch_under_lightning():
    n = 20
    sampler = ChunkBatchSampler(n, 4, chunk=n, shuffle=True, seed=3, salt=7, tag_epoch=True)
    task = _Recorder()
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(task, DataLoader(_Keys(n), batch_sampler=sampler))
    for epoch in range(3):
        expected = np.random.default_rng((3, epoch, 7)).permutation(n).tolist()
        assert [i for i, _ in task.seen[epoch]] == expected
        assert {e for _, e in task.seen[epoch]} == {epoch}
    assert task.seen[0] != task.seen[1]
