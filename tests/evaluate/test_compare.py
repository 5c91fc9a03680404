"""`dvc exp show --json` to a summary table and a figure (astrobatch.evaluate.compare).

The fixture ``data/exp_show.json`` is the real output of DVC 3.67.1 for a toy
repository: params.yaml ``study.{seed, model.{name, width}, lr, radius}``,
extra.yaml ``mask.kind``, two metrics files (metrics/study.json and
metrics/other.json, both with ``test/mae``). Rows: the workspace (identical to
two experiments), the baseline commit ``master`` (a, seed 1, radius 2), ``exp-b``
(b, radius 2), ``fined-daze`` (c, radius 4), a queued 3 models x 3 seeds grid
(radius 4), a failed experiment ``broken`` (carries stale metrics) and a queued
one ``pending`` (no metrics). ``data/exp_show_all_commits.json`` is
``dvc exp show --json -A`` after one more commit and experiment ``c-seed7``.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from astrobatch.compare_cli import app, default_stem
from astrobatch.errors import InputError
from astrobatch.evaluate import compare as cmp

DATA = Path(__file__).parent / "data"
FIXTURE = DATA / "exp_show.json"
ALL_COMMITS = DATA / "exp_show_all_commits.json"
METRIC = "study:test/mae"
MODEL = "study.model.name"

# study:test/mae of the kept rows, read off the fixture by hand.
BY_MODEL = {
    "a": [0.321045, 0.34791, 0.341045, 0.32331],  # master, jumpy-arks, lived-acts, drawn-peri
    "b": [0.240659, 0.229436, 0.227062, 0.207062],  # tippy-loss, alary-goad, cased-tell, exp-b
    "c": [0.274276, 0.303637, 0.286175],  # mardy-polo, huger-dita, filar-sorb
}
# fined-daze (c, seed 1, radius 4) is the same run as filar-sorb (same params and metrics):
# one result, counted once

runner = CliRunner()


@pytest.fixture(scope="module")
def df() -> pd.DataFrame:
    return cmp.load_experiments(FIXTURE)


def _is_png(path: Path) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > 5000
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
    assert not list(path.parent.glob(".*.tmp"))  # atomic write left nothing behind
    return image


# ------------------------------------------------------------------------------ loading


def test_rows_kinds_and_names(df):
    assert len(df) == 11
    assert df["kind"].value_counts().to_dict() == {"experiment": 10, "baseline": 1}
    names = set(df["name"])
    assert {"master", "exp-b", "filar-sorb"} <= names
    # duplicates (the workspace, fined-daze = filar-sorb), failed, queued
    assert not names & {"workspace", "fined-daze", "broken", "pending"}
    master = df.set_index("name").loc["master"]
    assert master["rev"] == "2b7a02a6587d02a52f0c12921e6e83328d29b673"
    assert pd.isna(master["baseline"])
    assert (df.loc[df["kind"] == "experiment", "baseline"] == master["rev"]).all()


def test_columns_dotted_params_and_metrics(df):
    params = ["study.seed", MODEL, "study.model.width", "study.lr", "study.radius"]
    assert df.attrs["params"] == [*params, "extra.yaml:mask.kind"]
    # test/mae is in both metrics files: prefixed by stem; the others stay bare.
    assert set(df.attrs["metrics"]) == {
        "study:test/mae", "other:test/mae", "test/mdae", "val/loss",
        "baseline/median/test/mae", "baseline/mean/test/mae", "n_test",
    }  # fmt: skip
    assert list(df.columns) == [*cmp.META_COLUMNS, *df.attrs["params"], *df.attrs["metrics"]]
    assert set(df[MODEL]) == {"a", "b", "c"}
    assert set(df["extra.yaml:mask.kind"]) == {"box"}
    assert pd.api.types.is_numeric_dtype(df[METRIC])
    assert pd.api.types.is_numeric_dtype(df["study.radius"])
    row = df.set_index("name").loc["exp-b"]
    assert row[METRIC] == 0.207062 and row["other:test/mae"] == 0.414124


def test_workspace_kept_when_it_differs(tmp_path):
    doc = json.loads(FIXTURE.read_text())
    doc[0]["data"]["metrics"]["metrics/study.json"]["data"]["test/mae"] = 0.9
    path = tmp_path / "exp.json"
    path.write_text(json.dumps(doc))
    df = cmp.load_experiments(path)
    assert len(df) == 12
    ws = df[df["kind"] == "workspace"]
    assert ws["name"].tolist() == ["workspace"] and ws[METRIC].tolist() == [0.9]


def test_all_commits_two_baselines():
    df = cmp.load_experiments(ALL_COMMITS)
    # master holds the committed result of filar-sorb (= fined-daze): counted once, as master
    assert df["kind"].value_counts().to_dict() == {"experiment": 10, "baseline": 2}
    assert not set(df["name"]) & {"filar-sorb", "fined-daze"}
    head = df[df["name"] == "master"].iloc[0]
    old = df[(df["kind"] == "baseline") & (df["name"] != "master")].iloc[0]
    assert old["name"] == old["rev"][:7]  # no branch points at the old commit
    assert df.set_index("name").loc["c-seed7", "baseline"] == head["rev"]
    assert df.set_index("name").loc["exp-b", "baseline"] == old["rev"]


def test_metrics_file_with_error_is_skipped(tmp_path):
    doc = json.loads(FIXTURE.read_text())[:2]
    for entry in doc:
        entry["experiments"] = None
    # The shape DVC 3.67 prints for a missing metrics file.
    doc[0]["data"]["metrics"]["metrics/other.json"] = {
        "error": {"type": "FileNotFoundError", "msg": "[Errno 2] No such file or directory"}
    }
    path = tmp_path / "exp.json"
    path.write_text(json.dumps(doc))
    df = cmp.load_experiments(path)
    assert df["kind"].tolist() == ["workspace", "baseline"]
    assert "study:test/mae" in df.columns and "other:test/mae" in df.columns
    assert pd.isna(df.loc[0, "other:test/mae"]) and pd.isna(df.loc[0, "n_test"])


def test_other_params_file_prefixed_and_lists_kept(tmp_path):
    doc = [{
        "rev": "workspace", "name": None, "error": None, "experiments": None,
        "data": {"params": {"params.yaml": {"data": {"s": {"range": [1, 2]}, "name": "x"}},
                            "conf/p.yaml": {"data": {"k": 3}}},
                 "metrics": {"m.json": {"data": {"test": {"mae": 1.5}}}}},
    }]  # fmt: skip
    path = tmp_path / "exp.json"
    path.write_text(json.dumps(doc))
    df = cmp.load_experiments(path)
    row = df.iloc[0]
    assert row["s.range"] == "[1, 2]" and row["conf/p.yaml:k"] == 3
    assert row["params.yaml:name"] == "x"  # would clash with the `name` column
    assert row["test.mae"] == 1.5  # nested metrics joined with dots, as DVC shows them


@pytest.mark.parametrize(
    ("text", "match"),
    [("", "not valid JSON"), ('{"workspace": {}}', "expected a JSON list"), ("[1]", "'rev'")],
)
def test_bad_json_raises(tmp_path, text, match):
    path = tmp_path / "exp.json"
    path.write_text(text)
    with pytest.raises(InputError, match=match) as info:
        cmp.load_experiments(path)
    assert str(path) in str(info.value)


def test_missing_file_and_no_metrics(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        cmp.load_experiments(tmp_path / "nope.json")
    doc = json.loads(FIXTURE.read_text())
    for entry in doc:
        entry["data"]["metrics"] = {}
        entry["experiments"] = None
    (tmp_path / "e.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match="no experiment with metrics"):
        cmp.load_experiments(tmp_path / "e.json")


def _fake_dvc(tmp_path: Path, body: str) -> str:
    exe = tmp_path / "dvc"
    exe.write_text(f"#!{sys.executable}\nimport sys\n{body}\n")
    exe.chmod(0o755)
    return str(exe)


def test_none_runs_dvc_exp_show(tmp_path, monkeypatch):
    args = tmp_path / "args.txt"
    body = (
        f"open({str(args)!r}, 'w').write(' '.join(sys.argv[1:]))\n"
        f"sys.stdout.write(open({str(FIXTURE)!r}).read())"
    )
    monkeypatch.setattr(cmp, "_dvc_executable", lambda: _fake_dvc(tmp_path, body))
    df = cmp.load_experiments(None)
    assert len(df) == 11 and args.read_text() == "exp show --json"


def test_none_dvc_failure_is_input_error(tmp_path, monkeypatch):
    body = "sys.stderr.write('ERROR: not a DVC repository\\n'); sys.exit(253)"
    monkeypatch.setattr(cmp, "_dvc_executable", lambda: _fake_dvc(tmp_path, body))
    with pytest.raises(InputError, match="not a DVC repository") as info:
        cmp.load_experiments(None)
    assert "exit status 253" in str(info.value)
    monkeypatch.setattr(cmp, "_dvc_executable", lambda: None)
    with pytest.raises(InputError, match="not found on PATH"):
        cmp.load_experiments(None)


# ------------------------------------------------------------------------------ summary


def test_summarise_categorical_by_hand(df):
    s = cmp.summarise(df, METRIC, MODEL)
    assert list(s.columns) == [MODEL, "n", "mean", "std", "min", "max"]
    assert s[MODEL].tolist() == ["a", "b", "c"]
    for row in s.itertuples(index=False):
        values = BY_MODEL[row[0]]
        assert row.n == len(values)
        assert row.mean == pytest.approx(statistics.mean(values))
        assert row.std == pytest.approx(statistics.stdev(values))  # ddof=1
        assert (row.min, row.max) == (min(values), max(values))


def test_summarise_numeric_with_hue_and_single_runs(df):
    s = cmp.summarise(df, METRIC, "study.radius", hue=MODEL)
    keys = list(zip(s["study.radius"], s[MODEL], strict=True))
    assert keys == [(2.0, "a"), (2.0, "b"), (4.0, "a"), (4.0, "b"), (4.0, "c")]
    single = s[s["study.radius"] == 2.0]
    assert single["n"].tolist() == [1, 1] and single["std"].isna().all()
    assert single["mean"].tolist() == [0.321045, 0.207062]
    a4 = s[(s["study.radius"] == 4.0) & (s[MODEL] == "a")].iloc[0]
    assert a4["mean"] == pytest.approx(statistics.mean(BY_MODEL["a"][1:]))


def test_summarise_sorts_numbers_numerically_and_lists_seeds(df):
    toy = pd.DataFrame({"r": [10, 2, 4, 2], "seed": [1, 1, 1, 2], "m": [1.0, 2.0, 3.0, 4.0]})
    s = cmp.summarise(toy, "m", "r", seed_param="seed")
    assert s["r"].tolist() == [2, 4, 10] and s["seeds"].tolist() == ["1, 2", "1", "1"]
    s = cmp.summarise(df, METRIC, MODEL, seed_param="study.seed")
    assert s["seeds"].tolist() == ["1, 2, 3"] * 3


def test_summarise_missing_columns_list_available(df):
    with pytest.raises(InputError) as info:
        cmp.summarise(df, "test/rmse", MODEL)
    msg = str(info.value)
    assert "test/rmse" in msg and "available metrics" in msg
    assert all(m in msg for m in ("study:test/mae", "test/mdae", "baseline/median/test/mae"))
    with pytest.raises(InputError, match=r"did you mean study:test/mae or other:test/mae"):
        cmp.summarise(df, "test/mae", MODEL)
    with pytest.raises(InputError, match=r"no param column 'model'.*study\.model\.name"):
        cmp.summarise(df, METRIC, "model")
    with pytest.raises(InputError, match="not numeric"):
        cmp.summarise(df, "extra.yaml:mask.kind", MODEL)


def test_baseline_values(df):
    values = cmp.baseline_values(df, ["baseline/median/test/mae", "baseline/mean/test/mae"])
    assert values == pytest.approx(
        {"baseline/median/test/mae": 0.5, "baseline/mean/test/mae": 0.55}
    )
    assert list(values) == ["baseline/median/test/mae", "baseline/mean/test/mae"]
    with pytest.raises(InputError, match="available metrics"):
        cmp.baseline_values(df, ["baseline/nope"])


# ------------------------------------------------------------------------------ outputs


def test_markdown_has_every_value_and_the_mean(df, tmp_path):
    s = cmp.summarise(df, METRIC, MODEL)
    path = tmp_path / "out" / "t.md"
    text = cmp.write_markdown(s, path, METRIC, MODEL, baselines={"baseline/median/test/mae": 0.5})
    assert path.read_text() == text
    lines = text.splitlines()
    assert lines[0] == f"## {METRIC} vs {MODEL}"
    table = [ln for ln in lines if ln.startswith("|")]
    assert len(table) == 2 + 3 and table[1].startswith("|---|")
    for model, values in BY_MODEL.items():
        row = next(ln for ln in table if ln.startswith(f"| {model} |"))
        mean, std = statistics.mean(values), statistics.stdev(values)
        assert f"{mean:.4g} ± {std:.4g}" in row and f"| {len(values)} |" in row
    assert "- `baseline/median/test/mae`: 0.5" in text
    assert lines.index("Baselines (mean over the experiments that report them):") > 5


def test_markdown_with_hue(df, tmp_path):
    s = cmp.summarise(df, METRIC, "study.radius", hue=MODEL)
    text = cmp.write_markdown(s, tmp_path / "h.md", METRIC, "study.radius", hue=MODEL)
    assert f"| study.radius | {MODEL} |" in text
    assert "| 2 | a | 0.321 | 1 |" in text  # n = 1: no ± std


@pytest.mark.parametrize(
    ("param", "hue"),
    [(MODEL, None), (MODEL, "study.radius"), ("study.radius", None), ("study.radius", MODEL)],
)
def test_plots_are_valid_pngs(df, tmp_path, param, hue):
    s = cmp.summarise(df, METRIC, param, hue=hue)
    path = tmp_path / "deep" / "fig.png"
    base = cmp.baseline_values(df, ["baseline/median/test/mae"])
    cmp.plot_comparison(s, path, METRIC, param, hue=hue, baselines=base)
    _is_png(path)


def test_plot_rejects_non_summary(tmp_path):
    with pytest.raises(InputError, match="summarise"):
        cmp.plot_comparison(pd.DataFrame({"x": [1]}), tmp_path / "f.png", "m", "x")
    assert not (tmp_path / "f.png").exists()


# ------------------------------------------------------------------------------ CLI


def test_cli_writes_both_files(tmp_path):
    out = tmp_path / "reports"
    args = ["--exp-json", str(FIXTURE), "--metric", METRIC, "--param", MODEL,
            "--baseline", "baseline/median/test/mae", "-b", "baseline/mean/test/mae",
            "--out", str(out)]  # fmt: skip
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    stem = "study_test_mae_vs_study.model.name"
    md = (out / f"{stem}.md").read_text()
    assert "baseline/mean/test/mae" in md and "0.3333 ± 0.01321" in md
    _is_png(out / f"{stem}.png")
    assert "0.3333 ± 0.01321" in r.stdout and "11 experiments" in r.stdout


def test_cli_name_and_hue(tmp_path):
    args = ["--exp-json", str(FIXTURE), "-m", METRIC, "--param", "study.radius",
            "--hue", MODEL, "-o", str(tmp_path), "--name", "radius"]  # fmt: skip
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["radius.md", "radius.png"]


def test_cli_bad_metric_exits_2(tmp_path):
    r = runner.invoke(
        app, ["--exp-json", str(FIXTURE), "-m", "test/rmse", "--param", MODEL, "-o", str(tmp_path)]
    )
    assert r.exit_code == 2
    assert r.stderr.startswith("error: ") and "available metrics" in r.stderr
    assert not list(tmp_path.iterdir())


def test_cli_help():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    assert all(s in r.output for s in ("--exp-json", "--metric", "--baseline", "Writes"))


def test_default_stem():
    assert default_stem("a/b", "c.d", "e") == "a_b_vs_c.d_by_e"


# ------------------------------------------------------------------------------ real DVC

TRAIN = """\
import json, yaml
p = yaml.safe_load(open("params.yaml"))["study"]
mae = {"a": 0.3, "b": 0.2}[p["model"]["name"]] + 0.01 * p["seed"]
json.dump({"test/mae": mae, "baseline/median/test/mae": 0.5}, open("metrics.json", "w"))
"""
DVC_YAML = """\
stages:
  train:
    cmd: python train.py
    deps: [train.py]
    params: [study]
    metrics:
      - metrics.json:
          cache: false
"""


@pytest.mark.slow
def test_cli_runs_dvc_in_a_real_repo(tmp_path, monkeypatch):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    bindir = str(Path(sys.executable).parent)
    env = {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "params.yaml").write_text("study:\n  seed: 1\n  model:\n    name: a\n")
    (repo / "train.py").write_text(TRAIN)
    (repo / "dvc.yaml").write_text(DVC_YAML)

    def run(*cmd):
        r = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"{cmd}: {r.stdout}\n{r.stderr}"

    run("git", "init", "-q")
    run("dvc", "init", "-q")
    run("dvc", "repro", "-q")
    run("git", "add", "-A")
    run("git", "commit", "-qm", "baseline")
    run("dvc", "exp", "run", "-q", "-S", "study.model.name=b")
    run("dvc", "exp", "run", "-q", "-S", "study.model.name=b", "-S", "study.seed=2")
    monkeypatch.chdir(repo)
    r = runner.invoke(
        app, ["-m", "test/mae", "--param", "study.model.name", "-b", "baseline/median/test/mae"]
    )
    assert r.exit_code == 0, r.output
    md = (repo / "reports/compare/test_mae_vs_study.model.name.md").read_text()
    assert "| a | 0.31 | 1 |" in md and "| b | 0.215 ± 0.007071 | 2 |" in md
    _is_png(repo / "reports/compare/test_mae_vs_study.model.name.png")


def test_mixed_params_inside_a_group_are_warned(tmp_path):
    # model "c" rows: radius 4 everywhere; model "a": master has radius 2, the grid 4
    df = cmp.load_experiments(FIXTURE)
    mixed = cmp.mixed_params(df, [MODEL])
    assert mixed.get("a") == ["study.radius"] and "c" not in mixed
    r = runner.invoke(app, ["--exp-json", str(FIXTURE), "-m", METRIC, "--param", MODEL,
                            "-o", str(tmp_path)])  # fmt: skip
    assert r.exit_code == 0 and "group a: the params study.radius differ" in r.output


def test_cli_experiments_only_drops_commit_rows(tmp_path):
    args = ["--exp-json", str(FIXTURE), "-m", METRIC, "--param", MODEL, "-o", str(tmp_path)]
    every = runner.invoke(app, args)
    only = runner.invoke(app, [*args, "--experiments-only"])
    assert every.exit_code == only.exit_code == 0
    assert "11 experiments" in every.stdout and "10 experiments" in only.stdout
