"""End to end: `dvc repro` of tiny params in a temporary git repository.

Checks that the pipeline runs, that a second `dvc repro` does nothing, that
changing one param re-runs only the stages that depend on it, and that
`dvc exp run -S ...` + `dvc exp show --json` + `astrobatch compare` line
experiments up.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from tests.conftest import make_tiny_repo, repo_env, run_ok
from tests.test_report import check_report_numbers, render_in_chromium

pytestmark = pytest.mark.slow

_run = run_ok


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    d = tmp_path_factory.mktemp("repo")
    env = repo_env()
    make_tiny_repo(d, env)
    return d, env


def test_repro_is_complete_idempotent_and_minimal(repo):
    d, env = repo
    out = _run(["dvc", "repro"], d, env)
    for s in ("simulate", "prepare", "train", "evaluate"):
        assert f"Running stage 'star_sets_{s}'" in out
        assert f"Running stage 'cluster_age_{s}'" in out
    for s in ("simulate", "prepare", "pretrain", "finetune", "evaluate"):
        assert f"Running stage 'stellar_xp_{s}'" in out
    for s in ("simulate", "prepare", "train_head", "train_full", "evaluate"):
        assert f"Running stage 'morphology_{s}'" in out
    for s in (
        "simulate",
        "prepare",
        "train_classifier",
        "train_detector",
        "train_redshift",
        "train_richness",
        "evaluate",
    ):
        assert f"Running stage 'cluster_finder_{s}'" in out
    cf = json.loads((d / "metrics/cluster_finder.json").read_text())
    assert {"classifier/roc_auc", "detector/completeness", "detector/purity", "detector/ap50",
            "redshift/sigma_nmad", "baseline/gradient_boosting/redshift/sigma_nmad",
            "richness/scatter_dex", "real/redshift_pred"} <= set(cf)  # fmt: skip
    assert (d / "plots/cluster_finder/completeness_purity.png").is_file()
    mo = json.loads((d / "metrics/morphology.json").read_text())
    assert {"test/mse", "head_only/test/mse", "baseline/train_mean/test/mse",
            "ood_ukidss/degradation/mse", "real/r"} <= set(mo)  # fmt: skip
    ca = json.loads((d / "metrics/cluster_age.json").read_text())
    assert {"test/mdae_log_age", "baseline/mean/test/mdae_log_age"} <= set(ca)
    xp = json.loads((d / "metrics/stellar_xp.json").read_text())
    assert {"test/teff/rmse", "test/mean/coverage_68", "recon/real/xp_mae"} <= set(xp)
    assert "test/parallax/coverage_68" not in xp  # headline only; the full set is a report
    full = json.loads((d / "reports/stellar_xp/metrics_full.json").read_text())
    assert {"test/parallax/coverage_68", "test/teff/rmse"} <= set(full)
    assert full["test/teff/rmse"] == xp["test/teff/rmse"]
    m = json.loads((d / "metrics/star_sets.json").read_text())
    assert {"test/mae_log_mass", "baseline/median/test/mae_log_mass"} <= set(m)
    assert (d / "plots/star_sets/pred_vs_true.png").is_file()
    assert (d / "reports/star_sets/predictions.parquet").is_file()
    assert (d / "dvc.lock").is_file()
    # the results report: last stage, all five studies, every number from the metrics files
    assert "Running stage 'report'" in out
    html = (d / "reports/index.html").read_text()
    assert check_report_numbers(html, d) > 50
    for study in ("star_sets", "cluster_age", "stellar_xp", "morphology", "cluster_finder"):
        assert f'<h2 id="{study}">' in html and f"not run (no <code>metrics/{study}" not in html
    assert (d / "reports/README.md").is_file()

    again = _run(["dvc", "repro"], d, env)
    assert "Running stage" not in again

    params = yaml.safe_load((d / "params.yaml").read_text())
    params["star_sets"]["training"]["max_epochs"] = 3
    (d / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = _run(["dvc", "repro"], d, env)
    assert "Running stage 'star_sets_train'" in third
    assert "Running stage 'star_sets_evaluate'" in third
    assert "Running stage 'star_sets_simulate'" not in third
    assert "Running stage 'star_sets_prepare'" not in third
    assert "Running stage 'cluster_age" not in third  # other studies untouched
    assert "Running stage 'stellar_xp" not in third
    assert "Running stage 'morphology" not in third
    assert "Running stage 'cluster_finder" not in third
    state = json.loads((d / "models/star_sets/train_state.json").read_text())
    assert state["complete"] and state["resumed"] is False  # a changed run starts fresh


def test_experiments_and_compare(repo):
    d, env = repo
    _run(["git", "add", "-A"], d, env)
    _run(["git", "commit", "-qm", "baseline"], d, env)
    _run(["dvc", "exp", "run", "-S", "star_sets.model.name=summary_stats"], d, env)
    r = subprocess.run(["dvc", "exp", "show", "--json"], cwd=d, env=env, capture_output=True,
                       text=True)  # fmt: skip
    (d / "exp.json").write_text(r.stdout)
    _run(
        ["astrobatch", "compare", "--exp-json", "exp.json", "--metric", "test/mae_log_mass",
         "--param", "star_sets.model.name", "--baseline", "baseline/median/test/mae_log_mass",
         "--out", "reports/compare", "--name", "models"],
        d, env,
    )  # fmt: skip
    md = (d / "reports/compare/models.md").read_text()
    assert "summary_stats" in md and "deep_sets" in md
    assert (d / "reports/compare/models.png").stat().st_size > 5000

    # the cluster_age comparison: a combined categorical param and a --where filter
    _run(["dvc", "exp", "run", "-S", "cluster_age.training.shuffle_targets=true"], d, env)
    r = subprocess.run(["dvc", "exp", "show", "--json"], cwd=d, env=env, capture_output=True,
                       text=True)  # fmt: skip
    (d / "exp.json").write_text(r.stdout)
    _run(
        ["astrobatch", "compare", "--exp-json", "exp.json", "--metric", "test/mdae_log_age",
         "--param", "cluster_age.mask.type+cluster_age.training.shuffle_targets",
         "--hue", "cluster_age.model.input", "--where", "cluster_age.model.input=5im",
         "-b", "baseline/mean/test/mdae_log_age", "--out", "reports/compare", "--name", "ca"],
        d, env,
    )  # fmt: skip
    md = (d / "reports/compare/ca.md").read_text()
    assert "none / True" in md and "none / False" in md


def test_report_of_the_pipeline_renders_in_chromium(repo, tmp_path):
    """After the tiny `dvc repro`: reports/index.html opens offline in headless Chromium and
    every figure of the five studies loads."""
    d, env = repo
    _run(["astrobatch", "report"], d, env)  # with the experiments of the test above, if any
    html = (d / "reports/index.html").read_text()
    if "summary_stats" in _run(["dvc", "exp", "show", "--csv"], d, env):
        assert "<b>star_sets_models</b>" in html  # its experiment summarised per model
    figures = sorted((d / "plots").rglob("*.png"))
    assert {p.parent.name for p in figures} >= {"star_sets", "cluster_age", "stellar_xp",
                                                 "morphology", "cluster_finder"}  # fmt: skip
    dom = render_in_chromium(d / "reports/index.html", tmp_path)
    m = re.search(r'data-images="(\d+)" data-images-loaded="(\d+)"', dom)
    assert m and int(m.group(1)) == int(m.group(2)) == len(figures)
