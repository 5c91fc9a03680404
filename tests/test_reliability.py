"""Reliability defects of the audit: each test fails on the code before the fix.

No code runs from a checkpoint; a failed or interrupted stage keeps the previous outputs;
bad numbers in params are refused; interrupted swaps and stale temporaries are repaired.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from astrobatch.cli import app
from astrobatch.errors import InputError, ParamsError
from astrobatch.io.atomic import atomic_dir, recover, swap_in
from astrobatch.params import TrainingParams
from astrobatch.study import StudyPaths
from astrobatch.tasks.checkpoints import load_checkpoint
from astrobatch.train import load_model_weights, pending_runs
from tests.conftest import tiny_params


class Preempted(RuntimeError):
    """Stands for a killed job."""


class _Payload:
    """Unpickling this runs ``os.system``: what a poisoned checkpoint holds."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _poisoned(path: Path, marker: Path) -> Path:
    torch.save({"state_dict": {"model.w": torch.ones(1)}, "evil": _Payload(marker)}, path)
    return path


def _digests(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# ------------------------------------------------------------------- 1. no code from files


def test_a_poisoned_checkpoint_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "PWNED"
    ckpt = _poisoned(tmp_path / "best.ckpt", marker)
    with pytest.raises(InputError, match="weights-only") as err:
        load_checkpoint(ckpt)
    assert str(ckpt) in str(err.value)
    with pytest.raises(InputError):
        load_model_weights(torch.nn.Linear(1, 1), ckpt)
    from astrobatch.tasks.finetune import load_pretrained_encoder

    with pytest.raises(InputError):
        load_pretrained_encoder(torch.nn.Linear(1, 1), ckpt, prefix="model.")
    assert not marker.exists()


def test_finetune_from_a_poisoned_pretrained_checkpoint_exits_2_without_running_it(tmp_path):
    marker = tmp_path / "PWNED"
    (tmp_path / "pre").mkdir()
    _poisoned(tmp_path / "pre" / "best.ckpt", marker)
    r = CliRunner().invoke(app, [
        "stellar-xp", "finetune", "--pretrained", str(tmp_path / "pre"),
        "--prepared", str(tmp_path / "nothing"), "--out", str(tmp_path / "ft"),
        "--live", str(tmp_path / "live"),
    ])  # fmt: skip
    assert r.exit_code == 2
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"\x00garbage" * 10, b"PK\x03\x04truncated"])
def test_garbage_checkpoints_are_one_clean_error(tmp_path, content):
    p = tmp_path / "x.ckpt"
    p.write_bytes(content)
    with pytest.raises(InputError) as err:
        load_model_weights(torch.nn.Linear(1, 1), p)
    assert str(p) in str(err.value)


def test_a_checkpoint_without_the_models_weights_does_not_blame_the_params(tmp_path):
    p = tmp_path / "x.ckpt"
    torch.save({"state_dict": {"other.w": torch.ones(1)}}, p)
    with pytest.raises(InputError, match="no model"):
        load_model_weights(torch.nn.Linear(1, 1), p)


# ------------------------------------------------------------- 2. no lost models or outputs


@pytest.fixture
def trained(tmp_path, tiny_prepared):
    from astrobatch.studies.star_sets.train import train

    prepared = tmp_path / "prep"
    shutil.copytree(tiny_prepared, prepared)
    paths = StudyPaths(prepared=prepared, models=tmp_path / "m", live=tmp_path / "live",
                       metrics=tmp_path / "metrics.json", plots=tmp_path / "plots",
                       reports=tmp_path / "reports")  # fmt: skip
    p = tiny_params(training={"max_epochs": 2})
    train(p, paths)
    return p, paths


def test_a_failed_train_keeps_the_previous_model(trained):
    from astrobatch.studies.star_sets.train import train

    _, paths = trained
    before, live = _digests(paths.models), _digests(paths.live)
    assert "best.ckpt" in before
    # a changed run (new fingerprint) whose validation shard is missing
    (paths.prepared / "val.h5").unlink()
    with pytest.raises(InputError, match=r"val\.h5"):
        train(tiny_params(seed=9, training={"max_epochs": 2}), paths)
    assert _digests(paths.models) == before and _digests(paths.live) == live


def test_trainer_settings_are_checked_before_anything_is_removed(trained, monkeypatch):
    from astrobatch.studies.star_sets.train import train

    _, paths = trained
    before = _digests(paths.models)
    # a setting that passes params validation but that Lightning refuses on this machine
    bad = tiny_params(seed=9, training={"max_epochs": 2, "accelerator": "tpu"})
    with pytest.raises(ParamsError, match="accelerator"):
        train(bad, paths)
    assert _digests(paths.models) == before
    assert not any(p.rglob("*.ckpt") for p in pending_runs(paths.models))


def test_an_interrupted_train_keeps_the_previous_model_and_resumes(trained):
    from lightning.pytorch.callbacks import Callback

    from astrobatch.studies.star_sets.train import train

    class Kill(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                raise Preempted

    _, paths = trained
    before = _digests(paths.models)
    q = tiny_params(seed=9, training={"max_epochs": 3})
    with pytest.raises(Preempted):
        train(q, paths, [Kill()])
    assert _digests(paths.models) == before  # the new run waits in its resume folder
    (pending,) = pending_runs(paths.models)
    assert (pending / "model" / "last.ckpt").is_file()
    state = train(q, paths)
    assert state["resumed"] is True and state["complete"] is True
    assert _digests(paths.models) != before and not pending_runs(paths.models)


def test_a_corrupt_last_ckpt_starts_afresh_instead_of_crashing_every_rerun(trained):
    from lightning.pytorch.callbacks import Callback

    from astrobatch.studies.star_sets.train import train

    class Kill(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                raise Preempted

    _, paths = trained
    q = tiny_params(seed=9, training={"max_epochs": 2})
    with pytest.raises(Preempted):
        train(q, paths, [Kill()])
    (pending,) = pending_runs(paths.models)
    (pending / "model" / "last.ckpt").write_bytes(b"truncated")
    state = train(q, paths)
    assert state["complete"] is True and state["resumed"] is False


def test_a_failed_evaluate_keeps_the_previous_plots_reports_and_metrics(trained, monkeypatch):
    from astrobatch.studies.star_sets import evaluate as ev

    p, paths = trained
    ev.evaluate(p, paths)
    before = {k: _digests(getattr(paths, k)) for k in ("plots", "reports")}
    metrics = paths.metrics.read_bytes()
    assert before["plots"] and before["reports"]

    def fail(*args, **kwargs):
        raise InputError("simulated failure after the plots were drawn", paths.prepared)

    monkeypatch.setattr(ev, "write_evaluation", fail)
    with pytest.raises(InputError, match="simulated"):
        ev.evaluate(p, paths)
    assert {k: _digests(getattr(paths, k)) for k in ("plots", "reports")} == before
    assert paths.metrics.read_bytes() == metrics
    leftovers = [q.name for q in paths.plots.parent.iterdir() if q.name.endswith(".tmp")]
    assert leftovers == []


# --------------------------------------------------------------------- 3. numbers in params


@pytest.mark.parametrize(
    "bad",
    [{"lr": float("inf")}, {"lr": float("nan")}, {"weight_decay": float("inf")},
     {"precision": "17-bits"}, {"accelerator": "quantum"}, {"devices": 0},
     {"strategy": "ddp; rm -rf"}],
)  # fmt: skip
def test_training_params_refuse_non_finite_and_unknown_settings(bad):
    with pytest.raises(ValueError):
        TrainingParams(**bad)


def test_negative_layer_sizes_are_a_params_error(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("cluster_age:\n  model:\n    dense_units: [-4]\n")
    r = CliRunner().invoke(app, ["cluster-age", "train", "-p", str(f)])
    assert r.exit_code == 2 and "cluster_age.model.dense_units" in r.output


def test_inf_in_params_yaml_exits_2_naming_the_key(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("star_sets:\n  training:\n    lr: .inf\n")
    r = CliRunner().invoke(app, ["star-sets", "train", "-p", str(f)])
    assert r.exit_code == 2 and "star_sets.training.lr" in r.output


# --------------------------------------------------------------- 6. interrupted swaps, temps


def test_an_interrupted_swap_is_recovered_by_the_next_writer(tmp_path):
    out = tmp_path / "star_sets"
    # killed inside a swap: the output was moved aside, the new one not yet in place
    old = tmp_path / ".star_sets.old"
    old.mkdir()
    (old / "train.h5").write_text("previous")
    stale = tmp_path / ".star_sets.abc123.tmp"  # a killed prepare's temporary folder
    stale.mkdir()
    (stale / "junk").write_bytes(b"x" * 100)
    recover(out)
    assert (out / "train.h5").read_text() == "previous"
    assert not old.exists() and not stale.exists()
    # and atomic_dir does it by itself before it writes
    old.mkdir()
    stale.mkdir()
    with atomic_dir(out) as tmp:
        (tmp / "train.h5").write_text("new")
    assert (out / "train.h5").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["star_sets"]


def test_swap_in_replaces_a_folder_and_leaves_no_old_copy(tmp_path):
    a, b = tmp_path / "new", tmp_path / "out"
    a.mkdir()
    (a / "x").write_text("1")
    b.mkdir()
    (b / "y").write_text("2")
    swap_in(a, b)
    assert [p.name for p in b.iterdir()] == ["x"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ------------------------------------------------------- 3. NaN in prepared shards is refused


def test_nan_in_a_prepared_set_shard_is_a_clean_error(tmp_path, tiny_prepared):
    import h5py

    from astrobatch.data.sets import SetSampleDataset

    bad = tmp_path / "train.h5"
    shutil.copy(tiny_prepared / "train.h5", bad)
    with h5py.File(bad, "a") as f:
        f["stars/features"][3, 0] = float("nan")
    with pytest.raises(InputError, match=r"NaN/inf \(first at index 3\)") as err:
        SetSampleDataset(bad, tiny_params().sampling, seed=0, train=True)
    assert err.value.path == str(bad) and err.value.key == "stars/features"


def test_nan_targets_of_a_cutout_split_are_a_clean_error(tmp_path):
    import numpy as np

    from astrobatch.data.images import CutoutShardDataset, CutoutTransform
    from astrobatch.data.layouts import cutout_layout
    from astrobatch.io.shards import ShardWriter

    p = tmp_path / "train.h5"
    cols = cutout_layout(1, 4, ["F555W"], "e-/s", 4.0, None)
    with ShardWriter(p, cols, chunk_rows=2) as w:
        w.append({
            "images": np.ones((3, 1, 4, 4), np.float32), "photometry": np.zeros((3, 1), np.float32),
            "log_age": np.zeros(3, np.float32), "cluster_id": np.arange(3),
            "galaxy_id": np.array(["a", "b", "c"]),
        })  # fmt: skip
    t = CutoutTransform("none", 0.0, "5im", "none", None, "none", 1.0)
    with pytest.raises(InputError, match="first at index 1"):
        CutoutShardDataset(p, t, np.array([0.0, np.inf, 0.0], np.float32))


@pytest.mark.parametrize("text", ["garbage", "[1, 2]", '{"stats": {"channel_min": "x"}}'])
def test_a_garbage_normalisation_file_is_a_clean_error(tmp_path, text):
    from astrobatch.studies.cluster_age.train import load_norm_stats

    (tmp_path / "normalisation.json").write_text(text)
    with pytest.raises(InputError) as err:
        load_norm_stats(tmp_path)
    assert err.value.path == str(tmp_path / "normalisation.json")


def test_a_garbage_dvclive_curve_is_a_clean_error(tmp_path):
    from astrobatch.evaluate.plots import read_dvclive_curves

    tsv = tmp_path / "plots" / "metrics" / "train" / "loss.tsv"
    tsv.parent.mkdir(parents=True)
    tsv.write_bytes(b"\xff\xfe\x00garbage\n")
    with pytest.raises(InputError) as err:
        read_dvclive_curves(tmp_path, ("train/loss",))
    assert err.value.path == str(tsv)


def test_ctrl_c_in_training_is_a_keyboard_interrupt_not_exit_1(trained):
    """Lightning turns Ctrl-C into sys.exit(1); the CLI promises exit 130 and a resume."""
    import signal

    from lightning.pytorch.callbacks import Callback

    from astrobatch.studies.star_sets.train import train

    class CtrlC(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                raise KeyboardInterrupt

    _, paths = trained
    q = tiny_params(seed=11, training={"max_epochs": 3})
    with pytest.raises(KeyboardInterrupt, match="run again to resume"):
        train(q, paths, [CtrlC()])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert train(q, paths)["resumed"] is True


def test_a_dvclive_folder_cut_short_by_sigkill_is_repaired_for_resume(tmp_path):
    from astrobatch.train import _repair_live

    live = tmp_path / "live"
    (live / "plots/metrics/train").mkdir(parents=True)
    (live / "metrics.json").write_text("")  # killed while DVCLive rewrote it
    tsv = live / "plots/metrics/train/loss.tsv"
    tsv.write_text("timestamp\tstep\tloss\n1\t0\t0.5\n2\t1\t0.4\n3\t2")  # last line cut
    ok = live / "plots/metrics/val.tsv"
    ok.write_text("timestamp\tstep\tloss\n1\t0\t0.5\n")
    _repair_live(live)
    assert not (live / "metrics.json").exists()
    assert tsv.read_text() == "timestamp\tstep\tloss\n1\t0\t0.5\n2\t1\t0.4\n"
    assert ok.read_text() == "timestamp\tstep\tloss\n1\t0\t0.5\n"  # intact: untouched
    (live / "metrics.json").write_text('{"step": 2}')
    _repair_live(live)
    assert (live / "metrics.json").read_text() == '{"step": 2}'
