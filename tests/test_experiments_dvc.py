"""DVC experiments a user can trust, in a temporary star_sets project with tiny params.

- the run cache restores an earlier params set without training (model folders are ordinary
  cached outputs, no ``persist``);
- a training stage killed under ``dvc exp run`` resumes from its resume folder (outside the
  workspace, keyed by the run fingerprint) when the experiment is run again;
- two ``dvc exp run --temp -S`` experiments do not inherit each other's params;
- ``astrobatch exp show star_sets`` lists them by name, within 160 columns.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import make_tiny_repo, repo_env, run_ok

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    d = tmp_path_factory.mktemp("exps")
    env = repo_env(ASTROBATCH_RESUME_DIR=str(tmp_path_factory.mktemp("resume")))
    make_tiny_repo(d, env, studies=("star_sets",))
    run_ok(["dvc", "repro"], d, env)
    run_ok(["git", "add", "-A"], d, env)
    run_ok(["git", "commit", "-qm", "baseline results"], d, env)
    return d, env


def _set(d: Path, **training) -> None:
    params = yaml.safe_load((d / "params.yaml").read_text())
    params["star_sets"]["training"].update(training)
    (d / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_run_cache_restores_an_earlier_params_set_without_training(repo):
    d, env = repo
    before = (d / "metrics/star_sets.json").read_text()
    _set(d, max_epochs=3)
    changed = run_ok(["dvc", "repro"], d, env)
    assert "Running stage 'star_sets_train'" in changed
    run_ok(["git", "checkout", "params.yaml"], d, env)  # back to the committed params
    back = run_ok(["dvc", "repro"], d, env)
    assert "Running stage 'star_sets_train'" not in back
    assert "star_sets_train' is cached" in back  # restored from the run cache
    assert (d / "metrics/star_sets.json").read_text() == before
    assert (d / "models/star_sets/best.ckpt").is_file()


def test_a_stage_killed_under_dvc_exp_run_resumes(repo):
    d, env = repo
    resume_root = Path(env["ASTROBATCH_RESUME_DIR"])
    args = ["dvc", "exp", "run", "-S", "star_sets.training.max_epochs=12",
            "-S", "star_sets.training.patience=20", "-S", "star_sets.seed=5"]  # fmt: skip
    job = subprocess.Popen(args, cwd=d, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    deadline = time.time() + 300
    while job.poll() is None and time.time() < deadline:
        if list(resume_root.glob("*/model/last.ckpt")):
            break
        time.sleep(0.05)
    assert job.poll() is None, f"finished before it could be killed: {job.stderr.read()}"
    os.killpg(job.pid, signal.SIGKILL)  # dvc and the training process with it
    job.wait(timeout=60)
    (pending,) = [p for p in resume_root.iterdir() if (p / "model/last.ckpt").is_file()]
    state = json.loads((pending / "model/train_state.json").read_text())
    assert state["complete"] is False

    run_ok(args, d, env)
    state = json.loads((d / "models/star_sets/train_state.json").read_text())
    assert state["complete"] is True and state["resumed"] is True
    assert state["epochs_trained"] == 12
    assert not pending.exists()  # removed when the stage finished
    run_ok(["git", "checkout", "params.yaml"], d, env)


def test_temp_experiments_do_not_inherit_params_and_exp_show_fits(repo):
    d, env = repo
    run_ok(["git", "checkout", "params.yaml"], d, env)
    run_ok(["dvc", "exp", "run", "--temp", "-n", "lr-low", "-S", "star_sets.training.lr=0.0003"],
           d, env)  # fmt: skip
    run_ok(["dvc", "exp", "run", "--temp", "-n", "wide", "-S", "star_sets.model.hidden_dim=24"],
           d, env)  # fmt: skip
    assert "lr: 0.0003" not in (d / "params.yaml").read_text()  # the workspace is untouched
    code = (
        "import json, dvc.api; print(json.dumps([{k: r.get(k) for k in "
        "('Experiment', 'star_sets.training.lr', 'star_sets.model.hidden_dim')} "
        "for r in dvc.api.exp_show()]))"
    )
    rows = {r["Experiment"]: r for r in json.loads(run_ok([sys.executable, "-c", code], d, env))}
    default_lr = yaml.safe_load((d / "params.yaml").read_text())["star_sets"]["training"]["lr"]
    assert rows["lr-low"]["star_sets.training.lr"] == 0.0003
    assert rows["wide"]["star_sets.training.lr"] == default_lr  # not the first's value
    assert rows["wide"]["star_sets.model.hidden_dim"] == 24
    assert rows["lr-low"]["star_sets.model.hidden_dim"] == 16

    table = run_ok(["astrobatch", "exp", "show", "star_sets"], d, env)
    lines = table.splitlines()
    assert max(map(len, lines)) <= 160
    assert any(line.strip().startswith("lr-low") for line in lines)
    assert "wide" in table and "hidden_dim" in table and "lr" in table
    csv = run_ok(["astrobatch", "exp", "show", "star_sets", "--format", "csv"], d, env)
    head = csv.splitlines()[0].split(",")
    assert head[0] == "Experiment" and "test/mae_log_mass" in head and "training.lr" in head


def _chromium() -> str | None:
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium (Debian chromium) not installed")
def test_dvc_plots_page_draws_the_curves_offline(repo, tmp_path):
    from matplotlib.image import imread

    d, env = repo
    run_ok(["git", "checkout", "params.yaml"], d, env)
    run_ok(["dvc", "repro"], d, env)  # the committed params' outputs in the workspace
    run_ok(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], d, env)
    html = (tmp_path / "plots/index.html").read_text()
    assert "cdn.jsdelivr" not in html and "https://" not in html.split("<body>")[1][:2000]
    assert html.count("vegaEmbed(") == 2  # star_sets: loss panel and pred-vs-true
    png = tmp_path / "shot.png"
    # no network for the page: --host-resolver-rules sends every host name nowhere
    subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=10000",
         "--window-size=1200,1400", f"--screenshot={png}",
         (tmp_path / "plots/index.html").as_uri()],
        capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    img = (imread(png)[..., :3] * 255).astype(int)
    # DVC's colour of the workspace revision (#945dd6, anti-aliased lighter on thin strokes):
    # purple hue, blue and red above green (the blue smoothing slider has little red)
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    purple = (b > g + 40) & (r > g + 20)
    # both panels drawn side by side: the loss curves on the left, and on the right more
    # purple than the scatter's legend ring alone (~45 pixels): the test-snapshot points
    w = img.shape[1]
    assert purple[:, : w // 2].sum() > 500, purple[:, : w // 2].sum()
    assert purple[:, w // 2 :].sum() > 80, purple[:, w // 2 :].sum()
