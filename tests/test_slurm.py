"""`astrobatch slurm`: grid expansion, the array script, submit checks, signals, and an end-to-end
run on a real one-node SLURM cluster (slurm/testing/start_cluster.sh) that brings two DVC
experiments back into a temporary project.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import psutil
import pytest
import yaml
from typer.testing import CliRunner

from astrobatch.cli import app
from astrobatch.errors import InputError
from astrobatch.slurm import (
    SlurmOptions,
    Sweep,
    apply_overrides,
    catches_signal,
    expand_grid,
    forward_signal,
    quote_value,
    render_sbatch,
    sweep_status,
)
from tests.conftest import ROOT, make_tiny_repo

runner = CliRunner()
BIN = Path(sys.executable).parent
PREFIX = "apptainer exec --nv --bind $PWD astrobatch.sif"


def _env(**extra) -> dict[str, str]:
    """Environment of the subprocesses: venv first, a git identity, no outer SLURM job."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t", DVC_NO_ANALYTICS="1", **extra)  # fmt: skip
    return env


def _run(args, cwd, env, timeout=600) -> str:
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{args} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


# ---------------------------------------------------------------------------------------------
# grid, quoting, overrides
# ---------------------------------------------------------------------------------------------


def test_expand_grid_is_the_cartesian_product_last_fastest():
    tasks = expand_grid(["star_sets.model.name=a,b,c", "star_sets.seed=1,2"])
    assert len(tasks) == 6
    assert tasks[0] == ["star_sets.model.name=a", "star_sets.seed=1"]
    assert tasks[1] == ["star_sets.model.name=a", "star_sets.seed=2"]
    assert tasks[-1] == ["star_sets.model.name=c", "star_sets.seed=2"]


def test_expand_grid_single_values_ranges_quotes_files():
    assert expand_grid(None) == [[]]
    assert expand_grid(["star_sets.seed=3"]) == [["star_sets.seed=3"]]
    assert [t[0] for t in expand_grid(["star_sets.seed=range(1,4)"])] == [
        "star_sets.seed=1", "star_sets.seed=2", "star_sets.seed=3",
    ]  # fmt: skip
    assert expand_grid(["a.b='x,y'"]) == [["a.b='x,y'"]]  # quoted: one value
    assert expand_grid(["other.yaml:lr=1,2"]) == [["other.yaml:lr=1"], ["other.yaml:lr=2"]]


@pytest.mark.parametrize("bad", ["star_sets.seed", "a=[1,2", "a=glob(*)"])
def test_expand_grid_rejects_bad_overrides(bad):
    with pytest.raises(InputError, match="--set"):
        expand_grid([bad])


def test_quote_value_and_apply_overrides(tmp_path):
    (tmp_path / "params.yaml").write_text("runner:\n  prefix: ''\nstar_sets:\n  seed: 42\n")
    apply_overrides(tmp_path, ["star_sets.seed=7", f"runner.prefix={quote_value(PREFIX + ',x')}"])
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert params == {"runner": {"prefix": PREFIX + ",x"}, "star_sets": {"seed": 7}}
    apply_overrides(tmp_path, [f"runner.prefix={quote_value('it' + chr(39) + 's ${HOME}')}"])
    assert yaml.safe_load((tmp_path / "params.yaml").read_text())["runner"]["prefix"] == (
        "it's ${HOME}"
    )
    with pytest.raises(InputError):
        quote_value("a\\b")
    with pytest.raises(InputError, match="not found"):
        apply_overrides(tmp_path, ["other.yaml:a=1"])


def test_multinode_overrides_apply_to_the_project_params(tmp_path):
    """The -S of slurm/multinode.sbatch set existing keys (Hydra refuses unknown ones)."""
    from astrobatch.params import load_params

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    sets = [
        "star_sets.training.devices=4",
        "star_sets.training.num_nodes=2",
        "star_sets.training.strategy=ddp",
        "star_sets.training.precision=bf16-mixed",
    ]
    assert all(f"-S {x}" in (ROOT / "slurm/multinode.sbatch").read_text() for x in sets)
    (task,) = expand_grid(sets)
    apply_overrides(
        tmp_path, [*task, f"runner.prefix={quote_value('slurm/srun-train.sh ' + PREFIX)}"]
    )
    t = load_params("star_sets", tmp_path / "params.yaml").training
    assert (t.devices, t.num_nodes, t.strategy, t.precision) == (4, 2, "ddp", "bf16-mixed")


# ---------------------------------------------------------------------------------------------
# the array script
# ---------------------------------------------------------------------------------------------


def _sweep(n=3, **kw) -> Sweep:
    tasks = [[f"star_sets.seed={i}", f"runner.prefix={quote_value(PREFIX)}"] for i in range(n)]
    return Sweep(name="sw", project="/proj", commit="a" * 40, cache_dir="/proj/.dvc/cache",
                 workdir="/proj/slurm/runs/sw/work", tasks=tasks, **kw)  # fmt: skip


def test_render_sbatch_lines():
    opts = SlurmOptions(partition="gpu", time="04:00:00", cpus_per_task=8, mem="32G", gpus="1",
                        extra=("--account=abc",))  # fmt: skip
    text = render_sbatch(_sweep(), opts, python="/venv/bin/python")
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    for line in (
        "#SBATCH --array=0-2",
        "#SBATCH --output=slurm/runs/sw/logs/%A_%a.out",
        "#SBATCH --signal=B:USR1@120",
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
        "#SBATCH --chdir=/proj",
        "#SBATCH --job-name=sw",
        "#SBATCH --ntasks=1",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=04:00:00",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=32G",
        "#SBATCH --gpus=1",
        "#SBATCH --account=abc",
        'export PATH=/venv/bin:"$PATH"',
        "exec /venv/bin/python -m astrobatch slurm run-task slurm/runs/sw/tasks.json "
        '"$SLURM_ARRAY_TASK_ID"',
    ):
        assert line in lines, line
    assert f"#   1: star_sets.seed=1 runner.prefix='{PREFIX}'" in lines  # the prefix is passed
    # all #SBATCH lines come before the first command
    first_cmd = lines.index("set -euo pipefail")
    assert all(i < first_cmd for i, x in enumerate(lines) if x.startswith("#SBATCH"))


def test_render_sbatch_throttle_multinode_and_defaults():
    text = render_sbatch(_sweep(5), SlurmOptions(max_parallel=2, signal_seconds=300))
    assert "#SBATCH --array=0-4%2" in text and "#SBATCH --signal=B:USR1@300" in text
    assert "--partition" not in text and "--gpus" not in text and "--time" not in text
    multi = SlurmOptions(extra=("--nodes=2", "--ntasks-per-node=4"))
    assert "--ntasks=1" not in render_sbatch(_sweep(1), multi)
    assert "#SBATCH --array=0-0" in render_sbatch(_sweep(1), multi)


# ---------------------------------------------------------------------------------------------
# submit --dry-run, dirty workspace, status, run-task errors (CLI)
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def project(tmp_path):
    """A committed git + DVC project with a params.yaml (no pipeline needed to submit)."""
    d = tmp_path / "proj"
    d.mkdir()
    env = _env()
    shutil.copy(ROOT / "params.yaml", d / "params.yaml")
    shutil.copy(ROOT / "dvc.yaml", d / "dvc.yaml")
    _run(["git", "init", "-q"], d, env)
    _run([str(BIN / "dvc"), "init", "-q"], d, env)
    _run(["git", "add", "-A"], d, env)
    _run(["git", "commit", "-qm", "init"], d, env)
    return d, env


def test_submit_dry_run(project):
    d, env = project
    r = runner.invoke(app, [
        "slurm", "submit", "--project", str(d), "--dry-run", "--name", "grid",
        "--set", "star_sets.model.name=deep_sets,summary_stats", "--set", "star_sets.seed=1,2",
        "--targets", "star_sets_evaluate", "--prefix", PREFIX, "--time", "01:00:00",
    ])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "#SBATCH --array=0-3" in r.output and "not submitted" in r.output
    run_dir = d / "slurm/runs/grid"
    script = (run_dir / "array.sbatch").read_text()
    assert "#SBATCH --output=slurm/runs/grid/logs/%A_%a.out" in script
    assert (run_dir / "logs").is_dir() and not (run_dir / "job.json").exists()
    sweep = Sweep.load(run_dir / "tasks.json")
    assert len(sweep.tasks) == 4 and sweep.targets == ["star_sets_evaluate"]
    assert sweep.tasks[3] == [
        "star_sets.model.name=summary_stats", "star_sets.seed=2", f"runner.prefix='{PREFIX}'",
    ]  # fmt: skip
    head = _run(["git", "rev-parse", "HEAD"], d, env).strip()
    assert sweep.commit == head and Path(sweep.cache_dir) == (d / ".dvc/cache").resolve()
    # the sweep folder is ignored by git: the workspace stays clean for the next submit
    assert _run(["git", "status", "--porcelain"], d, env) == ""
    rows = sweep_status(d, "grid")
    assert [r["state"] for r in rows] == ["not submitted"] * 4
    r = runner.invoke(app, ["slurm", "status", "grid", "--project", str(d), "--json"])
    assert r.exit_code == 0 and json.loads(r.output)[1]["experiment"] == "grid-1"


def test_submit_refuses_a_dirty_workspace(project):
    d, env = project
    params = d / "params.yaml"
    params.write_text(params.read_text().replace("seed: 42", "seed: 43"))
    r = runner.invoke(app, ["slurm", "submit", "--project", str(d), "--dry-run", "-n", "x"])
    assert r.exit_code == 2
    assert "uncommitted changes" in r.output and "params.yaml" in r.output
    assert not (d / "slurm/runs/x").exists()
    _run(["git", "checkout", "params.yaml"], d, env)
    (d / "notes.txt").write_text("untracked")
    r = runner.invoke(app, ["slurm", "submit", "--project", str(d), "--dry-run", "-n", "x"])
    assert r.exit_code == 2 and "notes.txt" in r.output


def test_submit_bad_name_bad_set_not_a_project(project, tmp_path):
    d, _ = project
    r = runner.invoke(app, ["slurm", "submit", "--project", str(d), "--dry-run", "-n", "a b"])
    assert r.exit_code == 2 and "sweep name" in r.output
    r = runner.invoke(app, ["slurm", "submit", "--project", str(d), "--dry-run", "-S", "a=[1"])
    assert r.exit_code == 2 and "--set" in r.output
    r = runner.invoke(app, ["slurm", "submit", "--project", str(tmp_path), "--dry-run"])
    assert r.exit_code == 2 and "DVC project" in r.output


def test_run_task_bad_file_or_index(project, tmp_path):
    d, _ = project
    r = runner.invoke(app, ["slurm", "run-task", str(tmp_path / "missing.json"), "0"])
    assert r.exit_code == 2 and "not found" in r.output
    assert runner.invoke(app, ["slurm", "submit", "--project", str(d), "--dry-run", "-n", "one"])
    r = runner.invoke(app, ["slurm", "run-task", str(d / "slurm/runs/one/tasks.json"), "5"])
    assert r.exit_code == 2 and "out of range" in r.output


# ---------------------------------------------------------------------------------------------
# signals: SIGUSR1 goes to the process that handles it (the trainer), not to dvc or sh
# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
def test_forward_signal_reaches_the_handler_only(tmp_path):
    old = signal.getsignal(signal.SIGUSR1)
    try:
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        assert not catches_signal(os.getpid(), signal.SIGUSR1)
        signal.signal(signal.SIGUSR1, lambda *a: None)
        assert catches_signal(os.getpid(), signal.SIGUSR1)
    finally:
        signal.signal(signal.SIGUSR1, old)

    flag, ready = tmp_path / "got_usr1", tmp_path / "ready"
    child = (
        "import pathlib, signal, time\n"
        f"signal.signal(signal.SIGUSR1, lambda *a: pathlib.Path({str(flag)!r}).touch())\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "time.sleep(30)\n"
    )
    script = tmp_path / "child.py"
    script.write_text(child)
    # sh -> sh -> python: the shells would die of SIGUSR1; `; true` keeps them from exec'ing
    inner = f"{sys.executable} {script}; true"
    proc = subprocess.Popen(["sh", "-c", f"sh -c '{inner}'; true"])
    try:
        for _ in range(200):
            if ready.exists():
                break
            time.sleep(0.05)
        assert ready.exists()
        sent = forward_signal(signal.SIGUSR1, root_pid=proc.pid)
        assert len(sent) == 1
        for _ in range(100):
            if flag.exists():
                break
            time.sleep(0.05)
        assert flag.exists()
        assert proc.poll() is None  # the shells are alive: they were not signalled
    finally:
        for c in psutil.Process(proc.pid).children(recursive=True):
            c.kill()
        proc.kill()
        proc.wait()


def test_resume_prefers_the_newer_of_last_and_hpc_checkpoint(tmp_path):
    from astrobatch.train import _resume_path

    (tmp_path / "train_state.json").write_text(json.dumps({"fingerprint": "f", "complete": False}))
    assert _resume_path(tmp_path, "f", "auto") is None  # no checkpoint yet
    (tmp_path / "hpc_ckpt_1.ckpt").write_bytes(b"x")  # saved on SIGUSR1 during epoch 1
    assert _resume_path(tmp_path, "f", "auto") == tmp_path / "hpc_ckpt_1.ckpt"
    (tmp_path / "last.ckpt").write_bytes(b"x")
    os.utime(tmp_path / "hpc_ckpt_1.ckpt", (time.time() - 60, time.time() - 60))
    assert _resume_path(tmp_path, "f", "auto") == tmp_path / "last.ckpt"
    os.utime(tmp_path / "hpc_ckpt_1.ckpt", (time.time() + 60, time.time() + 60))
    assert _resume_path(tmp_path, "f", "auto") == tmp_path / "hpc_ckpt_1.ckpt"
    assert _resume_path(tmp_path, "other", "auto") is None
    assert _resume_path(tmp_path, "f", "never") is None


def _tiny_repo(d: Path, env: dict[str, str]) -> None:
    """A committed git + DVC project with tiny star_sets params (as in test_pipeline_dvc)."""
    make_tiny_repo(d, env, studies=("star_sets",))


def _experiments(d: Path, env: dict[str, str]) -> dict[str, dict]:
    shown = json.loads(_run([str(BIN / "dvc"), "exp", "show", "--json"], d, env))
    return {e["name"]: e["revs"][0]["data"] for b in shown for e in b.get("experiments") or []}


@pytest.mark.slow
def test_run_task_without_slurm_brings_the_experiment_back(tmp_path):
    """What an array task runs, called directly: clone, override, repro one target, save, push."""
    env = _env()
    d = tmp_path / "repo"
    _tiny_repo(d, env)
    ab = str(BIN / "astrobatch")
    _run([ab, "slurm", "submit", "--dry-run", "-n", "one", "-S", "star_sets.simulate.seed=5,6",
          "-t", "star_sets_simulate"], d, env)  # fmt: skip
    out = subprocess.run([ab, "slurm", "run-task", "slurm/runs/one/tasks.json", "1"], cwd=d,
                         env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    exps = _experiments(d, env)
    assert set(exps) == {"one-1"}
    assert exps["one-1"]["params"]["params.yaml"]["data"]["star_sets"]["simulate"]["seed"] == 6
    state = json.loads((d / "slurm/runs/one/state/1.json").read_text())
    assert state["state"] == "done" and state["rc"] == 0
    assert not (d / "slurm/runs/one/work/1").exists()
    assert _run(["git", "status", "--porcelain"], d, env) == ""


# ---------------------------------------------------------------------------------------------
# end to end on a real one-node SLURM cluster
# ---------------------------------------------------------------------------------------------


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """slurmctld + slurmd on this machine (installed with apt-get when missing)."""
    if sys.platform != "linux":
        pytest.skip("SLURM test cluster needs Linux")
    d = tmp_path_factory.mktemp("slurm")
    ctld_port, slurmd_port = _free_ports(2)
    env = _env(SLURMCTLD_PORT=str(ctld_port), SLURMD_PORT=str(slurmd_port))
    start = ROOT / "slurm/testing/start_cluster.sh"
    r = subprocess.run(["bash", str(start), str(d)], env=env, capture_output=True, text=True,
                       timeout=900)  # fmt: skip
    if r.returncode == 3:  # loud: `pytest -ra` (make test) lists it in the short summary
        msg = f"SLURM TEST NOT RUN: SLURM cannot be installed here: {r.stderr.strip()[-500:]}"
        warnings.warn(msg, stacklevel=1)
        pytest.skip(msg)
    try:
        assert r.returncode == 0, f"start_cluster.sh failed:\n{r.stdout}\n{r.stderr}"
        yield {**env, "SLURM_CONF": str(d / "slurm.conf")}
    finally:
        subprocess.run(["bash", str(ROOT / "slurm/testing/stop_cluster.sh"), str(d)], env=env,
                       capture_output=True, timeout=120)  # fmt: skip


@pytest.mark.slow
def test_job_array_of_experiments_on_slurm(slurm_cluster, tmp_path):
    env = slurm_cluster
    d = tmp_path / "repo"
    _tiny_repo(d, env)
    dvc = str(BIN / "dvc")
    _run([dvc, "repro"], d, env)  # fills the shared cache: tasks restore simulate/prepare
    _run(["git", "add", "-A"], d, env)
    _run(["git", "commit", "-qm", "baseline"], d, env)

    out = _run([str(BIN / "astrobatch"), "slurm", "submit", "--name", "e2e",
                "--set", "star_sets.seed=1,2", "--prefix", "", "--cpus-per-task", "1"],
               d, env)  # fmt: skip
    job_id = json.loads((d / "slurm/runs/e2e/job.json").read_text())["job_id"]
    assert f"job {job_id}" in out

    run_dir = d / "slurm/runs/e2e"
    deadline, states = time.monotonic() + 360, {}
    while time.monotonic() < deadline:
        queued = subprocess.run(["squeue", "-h", "-j", job_id], env=env, capture_output=True,
                                text=True).stdout.strip()  # fmt: skip
        states = {
            i: json.loads(p.read_text())
            for i in (0, 1)
            if (p := run_dir / "state" / f"{i}.json").is_file()
        }
        finished = all(
            states.get(i, {}).get("state") not in (None, "running", "requeueing") for i in (0, 1)
        )
        if finished and not queued:
            break
        time.sleep(2)
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-4000:]}" for p in run_dir.glob("logs/*"))
    assert [states.get(i, {}).get("rc") for i in (0, 1)] == [0, 0], f"{states} {queued}\n{logs}"
    assert sorted(p.name for p in (run_dir / "logs").iterdir()) == [
        f"{job_id}_0.out", f"{job_id}_1.out",
    ]  # fmt: skip
    assert "SLURM auto-requeueing enabled" in logs  # the trainer ran with the SLURM plugin
    assert not (run_dir / "work/0").exists()  # clones are removed once pushed

    exps = _experiments(d, env)
    assert {"e2e-0", "e2e-1"} <= set(exps), sorted(exps)
    for i, seed in enumerate((1, 2)):
        data = exps[f"e2e-{i}"]
        assert data["params"]["params.yaml"]["data"]["star_sets"]["seed"] == seed
        assert data["params"]["params.yaml"]["data"]["runner"]["prefix"] == ""
        metrics = data["metrics"]["metrics/star_sets.json"]["data"]
        assert metrics["test/mae_log_mass"] > 0
    assert _run(["git", "status", "--porcelain"], d, env) == ""
    rows = json.loads(_run([str(BIN / "astrobatch"), "slurm", "status", "e2e", "--json"], d, env))
    assert [r["state"] for r in rows] == ["done", "done"]


INJECTION = "x\ntouch INJECTED #"


@pytest.mark.parametrize(
    "where",
    ["set", "prefix", "partition", "time", "mem", "gpus", "sbatch_arg", "set_cr", "prefix_nul"],
)
def test_no_value_can_add_a_line_to_the_sbatch_script(where):
    """Defect: `--prefix $'x\\ntouch FILE #'` became a shell line of array.sbatch."""
    value = {"set_cr": "x\rtouch INJECTED", "prefix_nul": "x\x00touch INJECTED"}.get(
        where, INJECTION
    )
    with pytest.raises(InputError, match=r"control character|expected"):
        if where.startswith("set"):
            expand_grid([f"star_sets.seed={value}"])
        elif where.startswith("prefix"):
            quote_value(value)
        elif where == "sbatch_arg":
            SlurmOptions(extra=(f"--account={value}",))
        else:
            SlurmOptions(**{where: value})
    # and the last guard: a sweep file edited by hand cannot smuggle one in either
    sweep = _sweep()
    sweep.tasks = [["star_sets.seed=1"], [f"runner.prefix='{INJECTION}'"]]
    text = render_sbatch(sweep, SlurmOptions(), python="/venv/bin/python")
    commands = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert not any("INJECTED" in ln for ln in commands)
    assert "#   1: runner.prefix='x\\ntouch INJECTED #'" in text.splitlines()


def test_well_formed_slurm_options_are_kept():
    extra = ("--exclusive", "--account=proj_1", "--constraint=a100|h100")
    o = SlurmOptions(partition="gpu,long", time="1-00:00:00", mem="16000", gpus="a100:2",
                     extra=extra)  # fmt: skip
    assert o.partition == "gpu,long" and o.gpus == "a100:2"
    with pytest.raises(InputError, match="--cpus-per-task"):
        SlurmOptions(cpus_per_task=0)
