"""The study kit: paths, the generated stage commands, the registry, the evaluate writer."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from astrobatch.cli import app as root
from astrobatch.params import ParamsError, Strict, TrainingParams, load_params, section_model
from astrobatch.studies import STUDIES
from astrobatch.study import Study, StudyPaths, _with_resume, write_evaluation
from astrobatch.train import RUN_INVARIANT, run_fingerprint


def test_paths_follow_the_name():
    p = StudyPaths.for_study("morphology", root="/x")
    assert p.raw == Path("/x/data/raw/morphology")
    assert p.prepared == Path("/x/data/prepared/morphology")
    assert p.models == Path("/x/models/morphology")
    assert p.live == Path("/x/dvclive/morphology")
    assert p.metrics == Path("/x/metrics/morphology.json")
    assert p.plots == Path("/x/plots/morphology")
    assert p.reports == Path("/x/reports/morphology")


def test_registry_mounts_every_study_with_its_params():
    groups = {g.name: g.typer_instance for g in root.registered_groups}
    for name, entry in STUDIES.items():
        assert name.replace("_", "-") in groups
        model = section_model(name)
        assert issubclass(model, Strict)
        assert model.__module__ == f"{entry.package}.params"
        # every section of the repository's params.yaml validates through the registry
        assert isinstance(load_params(name), model)
    with pytest.raises(ParamsError, match="unknown section"):
        section_model("no_such_study")


class _Inner(Strict):
    training: TrainingParams = TrainingParams()


class _Params(Strict):
    seed: int = 0
    training: TrainingParams = TrainingParams()
    phase: _Inner = _Inner()


def test_resume_override_reaches_a_nested_training():
    p = _Params()
    assert _with_resume(p, "training", None) is p
    assert _with_resume(p, "training", False).training.resume == "never"
    q = _with_resume(p, "phase.training", False)
    assert q.phase.training.resume == "never" and q.training.resume == "auto"
    assert _with_resume(q, "phase.training", True).phase.training.resume == "auto"


@pytest.fixture
def toy(monkeypatch):
    """A throw-away study registered as ``star_sets``'s params (a real section)."""
    study = Study("star_sets", help="toy")
    calls = {}

    @study.stage("train", out="models", inputs=("prepared", "live"), resume="training")
    def train_cmd(p, out, prepared, live):
        """Toy training."""
        calls.update(p=p, out=out, prepared=prepared, live=live)
        return {"best_val_loss": 0.5, "epochs_trained": 3}

    @study.stage("simulate", out="raw")
    def simulate_cmd(p, out):
        """Toy simulate."""
        calls.update(out=out or p.data.raw_path)

    return study, calls


def test_generated_options_and_defaults(toy, tmp_path, monkeypatch):
    study, calls = toy
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    r = CliRunner().invoke(study.app, ["train", "--no-resume"])
    assert r.exit_code == 0, r.output
    assert calls["out"] == Path("models/star_sets")
    assert calls["prepared"] == Path("data/prepared/star_sets")
    assert calls["live"] == Path("dvclive/star_sets")
    assert calls["p"].training.resume == "never"
    r = CliRunner().invoke(study.app, ["train", "--out", str(tmp_path / "m")])
    assert calls["out"] == tmp_path / "m" and calls["p"].training.resume == "auto"
    r = CliRunner().invoke(study.app, ["simulate"])
    assert r.exit_code == 0, r.output
    assert calls["out"] == "data/raw/star_sets/snapshots.h5"  # from params, not a constant
    help_text = CliRunner().invoke(study.app, ["train", "--help"]).output
    for opt in ("--params", "--out", "--prepared", "--live", "--resume", "Toy training."):
        assert opt in help_text


def test_a_paths_parameter_gets_the_folders_as_study_paths(tmp_path, monkeypatch):
    study = Study("stellar_xp", help="toy")
    got = {}

    @study.stage("finetune", out="models", out_default=study.paths.models / "ft",
                 inputs={"prepared": None, "pretrained": tmp_path / "pre"})  # fmt: skip
    def finetune_cmd(p, paths, verbose: bool = False):
        """Toy fine-tuning."""
        got.update(paths=paths, verbose=verbose)

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    r = CliRunner().invoke(study.app, ["--prepared", str(tmp_path / "prep"), "--verbose"])
    assert r.exit_code == 0, r.output
    paths = got["paths"]
    assert isinstance(paths, StudyPaths) and got["verbose"] is True
    assert paths.models == Path("models/stellar_xp/ft")  # --out fills the field of its kind
    assert paths.prepared == tmp_path / "prep" and paths.pretrained == tmp_path / "pre"
    assert paths.live == Path("dvclive/stellar_xp")  # not an option: the study's default
    with pytest.raises(ValueError, match="not set"):
        StudyPaths(prepared=tmp_path).need("prepared", "models")


def test_bad_params_exit_2_with_one_line(toy, tmp_path):
    study, _ = toy
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump({"star_sets": {"training": {"lr": -1}}}))
    r = CliRunner().invoke(study.app, ["train", "--params", str(bad)])
    assert r.exit_code == 2
    assert "star_sets.training.lr" in r.output and str(bad) in r.output


def test_unknown_folder_option_is_refused():
    with pytest.raises(ValueError, match="unknown folder option"):
        Study("x", help="x").stage("evaluate", inputs=("checkpoints",))


def test_write_evaluation_writes_tables_then_metrics(tmp_path):
    table = pd.DataFrame({"id": [1, 2], "pred": [0.5, 1.5]})
    write_evaluation(
        {"test/mae": 0.25}, tmp_path / "m" / "s.json", tmp_path / "r",
        {"predictions.parquet": table, "other.csv": table},
    )  # fmt: skip
    assert json.loads((tmp_path / "m" / "s.json").read_text()) == {"test/mae": 0.25}
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "r" / "predictions.parquet"), table)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "r" / "other.csv"), table)
    # a bad table name fails before the metrics are replaced
    with pytest.raises(ValueError, match=r"\.parquet, \.csv, \.ecsv, \.fits"):
        write_evaluation({"test/mae": 9.0}, tmp_path / "m" / "s.json", tmp_path / "r",
                         {"new.parquet": table, "x.txt": table})  # fmt: skip
    assert json.loads((tmp_path / "m" / "s.json").read_text()) == {"test/mae": 0.25}
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [
        "metrics_full.json",
        "other.csv",
        "predictions.parquet",
    ]


def test_write_evaluation_headline_full_metrics_and_tables_with_units(tmp_path):
    from astropy.table import Table

    full = {f"test/m{i}": float(i) for i in range(20)}
    table = pd.DataFrame({"source_id": [7, 8], "teff": [5000.0, 6000.0]})
    write_evaluation(
        full, tmp_path / "m.json", tmp_path / "r",
        {"p.ecsv": table, "p.fits": table},
        headline=["test/m3", "test/m1", "real/absent"], units={"teff": "K"},
    )  # fmt: skip
    # the DVC metric holds the headline keys, in their order; the full set beside the tables
    assert list(json.loads((tmp_path / "m.json").read_text()).items()) == [
        ("test/m3", 3.0), ("test/m1", 1.0)
    ]  # fmt: skip
    assert json.loads((tmp_path / "r" / "metrics_full.json").read_text()) == full
    for name in ("p.ecsv", "p.fits"):
        t = Table.read(tmp_path / "r" / name)
        assert str(t["teff"].unit) == "K" and t["source_id"].unit is None
        assert list(t["source_id"]) == [7, 8] and t["source_id"].dtype.kind == "i"
    with pytest.raises(ValueError, match="at most 12"):
        write_evaluation(full, tmp_path / "m.json", tmp_path / "r", headline=list(full))


@pytest.mark.parametrize(
    "change",
    [{"batch_size": 32}, {"lr": 1e-4}, {"max_epochs": 7}, {"precision": "bf16-mixed"},
     {"patience": 3}, {"gradient_clip_val": 2.0}, {"devices": 2}, {"strategy": "ddp"}],
)  # fmt: skip
def test_fingerprint_changes_with_every_run_param(change):
    t = TrainingParams()
    assert run_fingerprint({"m": 1}, t, 0) != run_fingerprint(
        {"m": 1}, t.model_copy(update=change), 0
    )


def test_fingerprint_ignores_only_the_invariant_fields(tmp_path):
    t = TrainingParams()
    assert RUN_INVARIANT == {"resume", "num_workers"}
    same = t.model_copy(update={"resume": "never", "num_workers": 4})
    assert run_fingerprint({"m": 1}, t, 0) == run_fingerprint({"m": 1}, same, 0)
    assert run_fingerprint({"m": 1}, t, 0) != run_fingerprint({"m": 2}, t, 0)
    assert run_fingerprint({"m": 1}, t, 0) != run_fingerprint({"m": 1}, t, 1)
    f = tmp_path / "manifest.json"
    f.write_text("a")
    a = run_fingerprint({"m": 1}, t, 0, [f])
    f.write_text("b")
    assert run_fingerprint({"m": 1}, t, 0, [f]) != a


SKELETON_PARAMS = """
from astrobatch.params import Strict, TrainingParams


class SkeletonParams(Strict):
    seed: int = 0
    training: TrainingParams = TrainingParams()
"""

SKELETON_STAGES = '''
import json

from astrobatch.study import Study

study = Study("skeleton", help="A study that is only its own folder.")


@study.stage("train", out="models", inputs=("prepared", "live"), resume="training")
def train_cmd(p, paths):
    """Toy training: records what the kit gave it."""
    paths.models.mkdir(parents=True, exist_ok=True)
    (paths.models / "state.json").write_text(json.dumps({
        "seed": p.seed, "resume": p.training.resume, "prepared": str(paths.prepared),
        "live": str(paths.live),
    }))
'''


def test_a_skeleton_study_needs_only_its_folder_params_and_one_registry_line(tmp_path):
    """What the README's 'How to add a study' promises, run for real in a subprocess."""
    import subprocess
    import sys

    pkg = tmp_path / "pkgs" / "skeleton_study"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "params.py").write_text(SKELETON_PARAMS)
    (pkg / "stages.py").write_text(SKELETON_STAGES)
    (tmp_path / "params.yaml").write_text("skeleton:\n  seed: 7\n")
    script = (
        "import sys; sys.path.insert(0, 'pkgs')\n"
        "from astrobatch.studies import STUDIES, StudyEntry\n"
        "STUDIES['skeleton'] = StudyEntry('skeleton_study', 'SkeletonParams')  # the one line\n"
        "from astrobatch.cli import app\n"
        "app(['skeleton', 'train', '--no-resume'], prog_name='astrobatch')\n"
    )
    r = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    state = json.loads((tmp_path / "models" / "skeleton" / "state.json").read_text())
    assert state == {"seed": 7, "resume": "never", "prepared": "data/prepared/skeleton",
                     "live": "dvclive/skeleton"}  # fmt: skip
    bad = subprocess.run([sys.executable, "-c", script.replace("'--no-resume'", "'-p', 'x.yaml'")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "x.yaml" in bad.stderr + bad.stdout


def test_set_param_overrides_like_dvc_without_touching_the_file(toy, tmp_path, monkeypatch):
    study, calls = toy
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    before = Path("params.yaml").read_bytes()
    r = CliRunner().invoke(
        study.app,
        ["train", "-S", "star_sets.training.lr=0.00025", "-S", "training.max_epochs=7",
         "--set-param", "model.name=summary_stats", "-S", "params.yaml:star_sets.seed=11"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    p = calls["p"]
    assert (p.training.lr, p.training.max_epochs, p.model.name, p.seed) == (
        0.00025, 7, "summary_stats", 11
    )  # fmt: skip
    assert Path("params.yaml").read_bytes() == before
    for bad, needle in [("training.lr", "expected key=value"),
                        ("training.lr=[1", "not YAML"),
                        ("other.yaml:star_sets.seed=1", "not other.yaml"),
                        ("training.nope=1", "nope")]:  # fmt: skip
        r = CliRunner().invoke(study.app, ["train", "-S", bad])
        assert r.exit_code == 2 and needle in r.output, (bad, r.output)
