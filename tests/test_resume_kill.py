"""A training job killed with SIGKILL resumes from last.ckpt and ends like an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from astrobatch.train import pending_runs
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def _params(tmp_path: Path) -> Path:
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    s = data["star_sets"]
    s["sampling"].update(num_star_per_sample=32, num_sample_per_snapshot=48)
    s["model"].update(name="deep_sets", hidden_dim=16)
    s["training"].update(max_epochs=8, batch_size=16, patience=20)
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def _train(params: Path, prepared: Path, out: Path) -> subprocess.Popen:
    exe = Path(sys.executable).parent / "astrobatch"
    args = [str(exe), "star-sets", "train", "--params", str(params), "--prepared", str(prepared),
            "--out", str(out / "models"), "--live", str(out / "live")]  # fmt: skip
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_sigkill_then_resume_matches_uninterrupted(tmp_path, tiny_prepared):
    params = _params(tmp_path)
    full = _train(params, tiny_prepared, tmp_path / "full")
    assert full.wait(timeout=300) == 0, full.stderr.read()

    job = _train(params, tiny_prepared, tmp_path / "cut")
    deadline = time.time() + 240  # a run is built in its resume folder, outside the project

    def last() -> Path | None:
        return next((p / "model/last.ckpt" for p in pending_runs(tmp_path / "cut/models")
                     if (p / "model/last.ckpt").exists()), None)  # fmt: skip

    while last() is None and job.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(job.pid, signal.SIGKILL)  # killed after its first checkpoint, mid-training
    job.wait(timeout=60)
    state = json.loads((last().parent / "train_state.json").read_text())
    assert state["complete"] is False, "the job finished before it could be killed"
    assert not (tmp_path / "cut/models").exists()

    again = _train(params, tiny_prepared, tmp_path / "cut")
    assert again.wait(timeout=300) == 0, again.stderr.read()
    a = json.loads((tmp_path / "full/models/train_state.json").read_text())
    b = json.loads((tmp_path / "cut/models/train_state.json").read_text())
    assert b["resumed"] is True and a["resumed"] is False
    assert b["global_step"] == a["global_step"]
    assert b["best_val_loss"] == pytest.approx(a["best_val_loss"], rel=1e-6)
    wa = torch.load(tmp_path / "full/models/last.ckpt", weights_only=True)["state_dict"]
    wb = torch.load(tmp_path / "cut/models/last.ckpt", weights_only=True)["state_dict"]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)
