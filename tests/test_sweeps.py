"""Sweeps as data (astrobatch.sweeps): sweeps.yaml, `sweep list/run/compare`, bad files.

The expected commands below are those of the Makefile targets that sweeps.yaml replaced
(`sweep`, `cluster-age-sweep`, `cluster-age-cases`, `compare`, `cluster-age-compare`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from astrobatch import sweeps

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = ROOT / "sweeps.yaml"
PARAMS = ROOT / "params.yaml"
FIXTURE = ROOT / "tests" / "evaluate" / "data" / "exp_show.json"
FILES = ["-f", str(SWEEPS), "-p", str(PARAMS)]

runner = CliRunner()

CA_BASELINES = ("--baseline baseline/mean/test/mdae_log_age "
                "--baseline baseline/photometric/test/mdae_log_age")  # fmt: skip
CA_COMPARE = [
    "astrobatch compare --exp-json reports/exp_show.json --experiments-only "
    "--out reports/compare --metric test/mdae_log_age --param cluster_age.mask.radius "
    "--hue cluster_age.mask.type --where cluster_age.model.input=5im "
    f"--where cluster_age.training.shuffle_targets=false {CA_BASELINES} "
    "--name cluster_age_mdae_vs_radius || true",
    "astrobatch compare --exp-json reports/exp_show.json --experiments-only "
    "--out reports/compare --metric test/mdae_log_age "
    "--param cluster_age.mask.type+cluster_age.training.shuffle_targets "
    f"--hue cluster_age.model.input {CA_BASELINES} --name cluster_age_cases",
]
EXPECTED = {
    "star_sets_models": [
        "dvc exp run --queue -S star_sets.model.name=summary_stats,deep_sets,set_transformer "
        "-S star_sets.seed=1,2,3",
        "dvc exp run --run-all --jobs 1",
        "dvc exp show --json > reports/exp_show.json",
        "astrobatch compare --exp-json reports/exp_show.json --experiments-only "
        "--out reports/compare --metric test/mae_log_mass --param star_sets.model.name "
        "--baseline baseline/median/test/mae_log_mass",
    ],
    "cluster_age_radius": [
        "dvc exp run --queue -S cluster_age.mask.type=inner,outer "
        "-S cluster_age.mask.radius=2,4,6,8,12,16,24,32,40 -S cluster_age.seed=0,1,2",
        "dvc exp run --run-all --jobs 1",
        "dvc exp show --json > reports/exp_show.json",
        *CA_COMPARE,
    ],
    "cluster_age_cases": [
        "dvc exp run --queue -S cluster_age.mask.type=none -S cluster_age.mask.radius=0 "
        "-S cluster_age.model.input=1im,5im -S cluster_age.seed=0,1,2",
        "dvc exp run --queue -S cluster_age.mask.type=inner,outer -S cluster_age.mask.radius=6 "
        "-S cluster_age.model.input=1im,5im -S cluster_age.seed=0,1,2",
        "dvc exp run --queue -S cluster_age.training.shuffle_targets=true "
        "-S cluster_age.seed=0,1,2",
        "dvc exp run --run-all --jobs 1",
        "dvc exp show --json > reports/exp_show.json",
        *CA_COMPARE,
    ],
}


# ------------------------------------------------------------------------- the real file


def test_real_sweeps_file_validates():
    found = sweeps.load_sweeps(SWEEPS, PARAMS)
    assert list(found) == [
        "star_sets_models",
        "cluster_age_radius",
        "cluster_age_cases",
        "morphology_surveys",
        "morphology_losses",
        "morphology_backbones",
        "cluster_finder_set_models",
    ]
    assert found["morphology_surveys"].n_experiments() == 9
    assert found["cluster_finder_set_models"].n_experiments() == 9
    models = found["star_sets_models"]
    assert models.study == "star_sets" and models.n_experiments() == 9
    assert models.grids == [
        {"star_sets.model.name": ["summary_stats", "deep_sets", "set_transformer"],
         "star_sets.seed": [1, 2, 3]},
    ]  # fmt: skip
    radius = found["cluster_age_radius"]
    assert radius.grids[0]["cluster_age.mask.radius"] == [2, 4, 6, 8, 12, 16, 24, 32, 40]
    assert radius.n_experiments() == 2 * 9 * 3
    cases = found["cluster_age_cases"]
    assert cases.n_experiments() == 6 + 12 + 3
    assert cases.grids[2] == {
        "cluster_age.training.shuffle_targets": [True], "cluster_age.seed": [0, 1, 2]
    }  # fmt: skip
    assert cases.compare == radius.compare  # one YAML anchor: the Makefile's one compare target
    assert [c.allow_failure for c in cases.compare] == [True, False]


def test_list():
    r = runner.invoke(sweeps.app, ["list", *FILES])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    names = [line.split()[0] for line in lines]
    assert names[: len(EXPECTED)] == list(EXPECTED) and names[len(EXPECTED) :] == [
        "morphology_surveys",
        "morphology_losses",
        "morphology_backbones",
        "cluster_finder_set_models",
    ]
    assert "54 experiments in 1 grid(s), 2 comparison(s)" in lines[1]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dry_run_prints_the_makefile_commands(name):
    r = runner.invoke(sweeps.app, ["run", name, "--dry-run", *FILES])
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines() == EXPECTED[name]


def test_dry_run_jobs_and_mounted_under_a_root():
    root = typer.Typer()
    root.add_typer(sweeps.app, name="sweep")
    r = runner.invoke(root, ["sweep", "run", "star_sets_models", "--dry-run", "-j", "3", *FILES])
    assert r.exit_code == 0, r.output
    assert "dvc exp run --run-all --jobs 3" in r.stdout.splitlines()
    r = runner.invoke(root, ["sweep", "compare", "cluster_age_cases", "--dry-run", *FILES])
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines() == EXPECTED["cluster_age_cases"][-3:]


# ---------------------------------------------------------------------------- bad files

GOOD = {"s": {"study": "star_sets", "grids": [{"star_sets.seed": [1, 2]}]}}


def _with(**changes) -> dict:
    body = json.loads(json.dumps(GOOD["s"]))
    body.update(changes)
    return {"s": body}


@pytest.mark.parametrize(
    "content, key, words",
    [
        (_with(grid=[{"star_sets.seed": 1}]), "s.grid", "unknown key"),
        (_with(grids=[{"star_sets.sed": [1, 2]}]), "s.grids[0].star_sets.sed", "params.yaml"),
        (_with(grids=[{"cluster_age.seed": 1}]), "s.grids[0].cluster_age.seed", "study"),
        (_with(grids=[{"star_sets.seed": [[1]]}]), "s.grids[0].star_sets.seed", "scalar"),
        (_with(grids=[{"star_sets.model.name": "a,b"}]), "s.grids[0].star_sets.model.name",
         "comma"),
        (_with(grids=[]), "s.grids", "at least 1"),
        (_with(study="nope", grids=[{"nope.x": 1}]), "s.study", "not a section"),
        (_with(compare=[{"metric": "m", "param": "p", "colour": "red"}]), "s.compare[0].colour",
         "unknown key"),
        (_with(compare=[{"metric": "m", "param": "p", "where": ["x"]}]), "s.compare[0].where",
         "PARAM=VALUE"),
        (_with(compare=[{"param": "p"}]), "s.compare[0].metric", "required"),
    ],
)  # fmt: skip
def test_bad_file_exits_2_naming_file_and_key(tmp_path, content, key, words):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(content))
    for args in (["list"], ["run", "s", "--dry-run"], ["compare", "s", "--dry-run"]):
        r = runner.invoke(sweeps.app, [*args, "-f", str(path), "-p", str(PARAMS)])
        assert r.exit_code == 2, r.output
        assert r.stdout == ""  # nothing was run, not even printed
        assert r.stderr.startswith(f"error: {path}: key {key}: "), r.stderr
        assert words in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "text, key, words",
    [("s: [\n", None, "not valid YAML"), ("[1, 2]\n", None, "mapping"),
     (yaml.safe_dump(GOOD), "other", "no such sweep; known: s")],
)  # fmt: skip
def test_bad_yaml_or_unknown_name_exits_2(tmp_path, text, key, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    r = runner.invoke(sweeps.app, ["run", "other", "-f", str(path), "-p", str(PARAMS)])
    assert r.exit_code == 2
    prefix = f"error: {path}: " + (f"key {key}: " if key else "")
    assert r.stderr.startswith(prefix) and words in r.stderr


def test_missing_file_exits_2(tmp_path):
    r = runner.invoke(sweeps.app, ["list", "-f", str(tmp_path / "none.yaml")])
    assert r.exit_code == 2 and "sweeps file not found" in r.stderr


# ------------------------------------------------------------------- the compare step

#: A sweep of the toy study of tests/evaluate/data/exp_show.json (see test_compare.py).
TOY = {
    "toy": {
        "study": "study",
        "grids": [{"study.model.name": ["a", "b", "c"], "study.seed": [1, 2, 3]}],
        "compare": [
            {"metric": "study:test/mae", "param": "study.model.name",
             "baselines": ["baseline/median/test/mae"]},
            {"metric": "study:test/mae", "param": "study.radius", "hue": "study.model.name",
             "where": ["study.model.name=b"], "name": "radius", "out": "reports/other"},
            {"metric": "no/such/metric", "param": "study.seed", "allow_failure": True},
        ],
    }
}  # fmt: skip
TOY_PARAMS = {"study": {"seed": 1, "model": {"name": "a", "width": 8}, "lr": 0.01, "radius": 2}}


@pytest.fixture
def toy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sweeps.yaml").write_text(yaml.safe_dump(TOY, sort_keys=False))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TOY_PARAMS))
    return tmp_path


def _check_outputs(d: Path) -> None:
    stem = "study_test_mae_vs_study.model.name"
    assert sorted(p.name for p in (d / "reports/compare").iterdir()) == [f"{stem}.md",
                                                                       f"{stem}.png"]  # fmt: skip
    md = (d / "reports/compare" / f"{stem}.md").read_text()
    assert "study:test/mae" in md and "baseline/median/test/mae" in md
    assert all(f"| {m} |" in md for m in "abc")
    assert (d / "reports/compare" / f"{stem}.png").stat().st_size > 5000
    radius = (d / "reports/other/radius.md").read_text()
    assert "| a |" not in radius and "study.radius" in radius
    assert (d / "reports/other/radius.png").is_file()


def test_compare_writes_the_tables_and_figures(toy):
    r = runner.invoke(sweeps.app, ["compare", "toy", "--exp-json", str(FIXTURE)])
    assert r.exit_code == 0, r.output
    _check_outputs(toy)
    # 12 rows: --experiments-only drops the workspace and the baseline commit, and
    # filar-sorb and fined-daze (same params, same metrics: one result run twice) count once
    assert "(10 experiments)" in r.stdout
    assert "no/such/metric" in r.stderr  # the allowed failure said why


def test_compare_required_failure_exits_2(toy):
    broken = json.loads(json.dumps(TOY))
    broken["toy"]["compare"][2]["allow_failure"] = False
    (toy / "sweeps.yaml").write_text(yaml.safe_dump(broken))
    r = runner.invoke(sweeps.app, ["compare", "toy", "--exp-json", str(FIXTURE)])
    assert r.exit_code == 2
    assert "comparison(s) [2] failed" in r.stderr
    _check_outputs(toy)  # the others still ran


def test_compare_missing_exp_json_exits_2(toy):
    r = runner.invoke(sweeps.app, ["compare", "toy", "--exp-json", "none.json"])
    assert r.exit_code == 2 and r.stderr.startswith("error: none.json: file not found")


@pytest.fixture
def fake_dvc(toy, monkeypatch):
    """A `dvc` that logs its arguments and prints the fixture for `exp show --json`."""
    log = toy / "dvc.log"
    script = toy / "fake_dvc.py"
    script.write_text(
        "import json, sys\n"
        f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
        "if sys.argv[1:3] == ['exp', 'show']:\n"
        f"    sys.stdout.write(open({str(FIXTURE)!r}).read())\n"
        "sys.exit(int(any(a.endswith('=fail') for a in sys.argv)))\n"
    )
    monkeypatch.setattr(sweeps, "_dvc", lambda: sys.executable)
    real_run = sweeps.subprocess.run

    def run(argv, **kwargs):
        return real_run([argv[0], str(script), *argv[1:]], **kwargs)

    monkeypatch.setattr(sweeps.subprocess, "run", run)
    return log


def test_run_queues_runs_and_compares(fake_dvc, toy):
    r = runner.invoke(sweeps.app, ["run", "toy", "--jobs", "2"])
    assert r.exit_code == 0, r.output
    calls = [json.loads(line) for line in fake_dvc.read_text().splitlines()]
    assert calls == [
        ["exp", "run", "--queue", "-S", "study.model.name=a,b,c", "-S", "study.seed=1,2,3"],
        ["exp", "run", "--run-all", "--jobs", "2"],
        ["exp", "show", "--json"],
    ]
    assert json.loads((toy / "reports/exp_show.json").read_text()) == json.loads(
        FIXTURE.read_text()
    )
    _check_outputs(toy)


def test_run_stops_when_dvc_fails(fake_dvc, toy):
    failing = json.loads(json.dumps(TOY))
    failing["toy"]["grids"] = [{"study.seed": ["fail"]}]
    (toy / "sweeps.yaml").write_text(yaml.safe_dump(failing))
    r = runner.invoke(sweeps.app, ["run", "toy"])
    assert r.exit_code == 1
    assert "`dvc exp run --queue -S study.seed=fail` failed with exit status 1" in r.stderr
    assert len(fake_dvc.read_text().splitlines()) == 1  # nothing after the failure
    assert not (toy / "reports").exists()
