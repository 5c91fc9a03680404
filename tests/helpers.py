"""Small pieces several test modules share: an in-memory dataset and a quiet Trainer."""

from __future__ import annotations

import lightning as L
from torch.utils.data import Dataset


class Rows(Dataset):
    """Rows of a dict of equal-length tensors; item ``i`` is ``{key: value[i]}``."""

    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data["x"])

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.data.items()}


def quiet_trainer(tmp_path, **kw) -> L.Trainer:
    """A CPU Trainer without logger, checkpoints, progress bar or summary (overridable)."""
    args = {
        "max_epochs": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "accelerator": "cpu",
        "default_root_dir": tmp_path,
    }
    args.update(kw)
    return L.Trainer(**args)
