"""The project's image really built (podman, a local CPU base, no registry) and a stage run in it.

Runs only under ``make container-test`` (``ASTROBATCH_CONTAINER_TEST=1``): the build takes
minutes and needs root, podman, runc and debootstrap (see containers/build-cpu.sh). The image is
the project's ``Dockerfile`` with ``--build-arg BASE_IMAGE`` set to a CPU stand-in for the CUDA
base, so what runs here is what users build, minus CUDA.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from tests.conftest import ROOT, make_tiny_repo, repo_env, run_ok

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("ASTROBATCH_CONTAINER_TEST") != "1",
        reason="container build: run `make container-test` (ASTROBATCH_CONTAINER_TEST=1)",
    ),
]

IMAGE = os.environ.get("IMAGE", "localhost/astrobatch:cpu")
USER_ID = 1000  # the Dockerfile's non-root user


def podman(*args: str, timeout: int = 1800, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "CONTAINERS_CONF": str(ROOT / "containers" / "containers.conf")}
    r = subprocess.run(["podman", "--runtime", "runc", *args], capture_output=True, text=True,
                       env=env, timeout=timeout)  # fmt: skip
    if check:
        tail = f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        assert r.returncode == 0, f"podman {' '.join(args)}:\n{tail}"
    return r


@pytest.fixture(scope="module")
def image() -> str:
    for tool in ("podman", "runc", "debootstrap"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found: apt-get install podman runc debootstrap")
    r = subprocess.run([str(ROOT / "containers" / "build-cpu.sh")], capture_output=True,
                       text=True, timeout=3600, env={**os.environ, "IMAGE": IMAGE})  # fmt: skip
    assert r.returncode == 0, f"build-cpu.sh failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    print(r.stdout.strip().splitlines()[-1])  # the times and the size
    return IMAGE


def test_image_runs_the_cli_as_the_non_root_user(image):
    out = podman("run", "--rm", "--network", "host", image).stdout  # CMD: --help
    for study in ("star-sets", "cluster-age", "stellar-xp", "morphology", "cluster-finder"):
        assert study in out
    who = podman("run", "--rm", "--entrypoint", "id", image, "-u").stdout.strip()
    assert who == str(USER_ID)
    # the environment of the recipes; torch is the CPU build at the pinned version
    code = "import os, torch; print(torch.__version__, os.environ['MPLBACKEND'])"
    out = podman("run", "--rm", "--entrypoint", "python", image, "-c", code).stdout.split()
    pin = next(line.split("==")[1] for line in (ROOT / "requirements-cpu.txt").read_text()
               .splitlines() if line.startswith("torch=="))  # fmt: skip
    assert out[0].split("+")[0] == pin.strip() and out[1] == "Agg"


def test_dvc_repro_of_a_study_inside_the_image(image, tmp_path):
    """A tiny star_sets project bind-mounted at /project: `dvc repro` runs every stage inside
    the container as the image's user, and the outputs land on the host."""
    d = tmp_path / "project"
    env = repo_env()
    make_tiny_repo(d, env, studies=("star_sets",))
    # the container user owns the project, as the host user does under `docker run --user`
    subprocess.run(["chown", "-R", f"{USER_ID}:{USER_ID}", str(d)], check=True)
    r = podman("run", "--rm", "--network", "host", "-v", f"{d}:/project", "--entrypoint", "dvc",
               image, "repro", timeout=1800)  # fmt: skip
    out = r.stdout + r.stderr
    for stage in ("simulate", "prepare", "train", "predict", "evaluate"):
        assert f"Running stage 'star_sets_{stage}'" in out
    metrics = json.loads((d / "metrics" / "star_sets.json").read_text())
    assert 0 <= metrics["test/mae_log_mass"] < 5
    assert (d / "reports" / "real" / "star_sets.ecsv").stat().st_uid == USER_ID
    ckpts = list((d / "models" / "star_sets").rglob("*.ckpt"))
    assert ckpts and all(p.stat().st_uid == USER_ID for p in ckpts)
    # the host's dvc agrees that the container left the pipeline up to date
    status = run_ok(["dvc", "status", "--json"], d, env)
    assert json.loads(status or "{}") == {}
