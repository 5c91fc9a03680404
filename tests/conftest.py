"""Shared fixtures: tiny star_sets params and a tiny simulated raw file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from astrobatch.studies.star_sets.params import StarSetsParams

ROOT = Path(__file__).resolve().parents[1]
# resume folders of the tests' runs (astrobatch.train.resume_root), subprocesses included:
# never the user's cache
os.environ["ASTROBATCH_RESUME_DIR"] = tempfile.mkdtemp(prefix="astrobatch-test-resume-")


def shared_data_dir() -> Path:
    """The real data samples committed with the project (``data/external``)."""
    return ROOT / "data" / "external"


def tiny_params(**overrides) -> StarSetsParams:
    """star_sets params small enough for a test (seconds)."""
    base = {
        "seed": 3,
        "simulate": {
            "n_runs": 6,
            "snapshots_per_run": 2,
            "log10_mass_range": [2.6, 3.2],
            "w0_levels": [5.0],
            "metallicities": [0.002],
        },
        "sampling": {"num_star_per_sample": 32, "num_sample_per_snapshot": 4},
        "model": {"hidden_dim": 16},
        "training": {"batch_size": 16, "max_epochs": 3, "patience": 5},
        "evaluate": {"real_predictions": None},
    }
    for key, value in overrides.items():
        if isinstance(value, dict):
            base.setdefault(key, {}).update(value)
        else:
            base[key] = value
    return StarSetsParams.model_validate(base)


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory) -> Path:
    """A tiny simulated raw HDF5 file (6 runs x 2 snapshots)."""
    from astrobatch.studies.star_sets.simulate import simulate_to_file

    p = tiny_params()
    path = tmp_path_factory.mktemp("raw") / "snapshots.h5"
    simulate_to_file(p.simulate, p.simulate.seed, path)
    return path


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory, tiny_raw) -> Path:
    """Prepared shards of :func:`tiny_raw`."""
    from astrobatch.studies.star_sets.prepare import prepare

    p = tiny_params(data={"raw_path": str(tiny_raw)})
    out = tmp_path_factory.mktemp("prepared") / "star_sets"
    prepare(p.data, out)
    return out


@pytest.fixture(autouse=True)
def _no_tty_logging(monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    os.environ.setdefault("MPLBACKEND", "Agg")


#: Per-study params overrides of the tiny temporary DVC projects (seconds per stage).
TINY_REPO_PARAMS = {
    "star_sets": {
        "simulate": {"n_runs": 6, "snapshots_per_run": 2, "log10_mass_range": [2.6, 3.0],
                     "w0_levels": [5.0], "metallicities": [0.002]},
        "sampling": {"num_star_per_sample": 32, "num_sample_per_snapshot": 4},
        "model": {"hidden_dim": 16},
        "training": {"max_epochs": 2, "batch_size": 16},
    },
    "cluster_age": {
        "simulate": {"n_clusters": 60, "n_galaxies": 3},
        "cross_galaxy": {"n_clusters": 40},
        "data": {"crop_size": 32, "chunk_images": 8},
        "model": {"conv_channels": [4, 8], "dense_units": [16]},
        "training": {"max_epochs": 2, "batch_size": 16},
        "evaluate": {"random_baseline_draws": 5, "n_examples": 2},
    },
    "stellar_xp": {
        "simulate": {"n_pretrain": 1500, "rows_per_part": 500, "n_finetune": 800},
        "model": {"widths": [64], "latent_dim": 32},
        "pretrain": {"training": {"max_epochs": 2, "batch_size": 128}},
        "finetune": {"head_hidden": [32], "training": {"max_epochs": 2, "batch_size": 128}},
    },
    "morphology": {
        "simulate": {"surveys": [
            {"name": n, "n_galaxies": k, "layout": lay, "catalogue_format": cf,
             "image_format": fmt, "bands": b, "pixel_scale_arcsec": 0.4, "image_size": 32,
             "psf_fwhm_arcsec": 1.2, "sky_sigma": 0.05, "band_bulge_weight": [0.8, 1.0, 1.2]}
            for n, k, lay, cf, fmt, b in (
                ("sdss", 24, "gz2", "fits", "jpeg", ["g", "r", "i"]),
                ("decals", 24, "gz_decals", "csv", "png", ["g", "r", "z"]),
                ("ukidss", 12, "gz_decals", "csv", "fits", ["Y", "J", "K"]))]},
        "data": {"image_size": 32, "chunk_images": 16},
        "model": {"hidden_size": 24, "num_hidden_layers": 1, "num_attention_heads": 2,
                  "head_hidden": [16]},
        "head": {"max_epochs": 2, "batch_size": 16},
        "full": {"max_epochs": 1, "batch_size": 16},
        "evaluate": {"n_examples": 2},
    },
    "cluster_finder": {
        "simulate": {"n_clusters": 12, "n_empty": 4, "native_size": 64, "image_size": 32},
        "data": {"image_size": 32},
        "images": {"conv_channels": [4, 8], "head_hidden": [8], "detector_hidden": 8},
        "classifier": {"max_epochs": 1, "batch_size": 8},
        "detector": {"max_epochs": 1, "batch_size": 8},
        "redshift": {"model": {"hidden_dim": 8, "n_tuples_train": 4, "n_tuples_eval": 8},
                     "training": {"max_epochs": 1}},
        "richness": {"model": {"hidden_dim": 8, "n_tuples_train": 4, "n_tuples_eval": 8},
                     "sampling": {"num_star_per_sample": 32}, "training": {"max_epochs": 1}},
    },
}  # fmt: skip


def repo_env(**extra: str) -> dict[str, str]:
    """Environment of a temporary project's subprocesses: this venv first on PATH, a git
    identity, DVC analytics off, no outer SLURM job; ``extra`` added."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t", DVC_NO_ANALYTICS="1", **extra)  # fmt: skip
    return env


def run_ok(args, cwd, env, timeout: int = 600) -> str:
    """Run a command, assert exit status 0 (showing its output otherwise), return its output."""
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{args} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


def make_tiny_repo(d: Path, env: dict[str, str], studies: tuple[str, ...] | None = None) -> None:
    """A committed git + DVC copy of the project (dvc.yaml, src/, data/external) with tiny params.

    ``studies`` keeps only those studies' stages in dvc.yaml (default: all of them).
    """
    dvc = str(Path(sys.executable).parent / "dvc")
    d.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ROOT / "src", d / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "data" / "external", d / "data" / "external")
    shutil.copytree(ROOT / "vendor", d / "vendor", ignore=shutil.ignore_patterns("__pycache__"))
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    if studies is not None:
        pipeline["stages"] = {
            k: v for k, v in pipeline["stages"].items() if k.startswith(tuple(studies))
        }
        pipeline["plots"] = [p for p in pipeline["plots"] if any(s in str(p) for s in studies)]
    (d / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    shutil.copy2(ROOT / "sweeps.yaml", d / "sweeps.yaml")  # the report stage reads it
    params = yaml.safe_load((ROOT / "params.yaml").read_text())

    def merge(dst: dict, src: dict) -> None:
        for k, v in src.items():
            if isinstance(v, dict):
                merge(dst.setdefault(k, {}), v)
            else:
                dst[k] = v

    merge(params, TINY_REPO_PARAMS)
    (d / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_ok(["git", "init", "-q"], d, env)
    run_ok([dvc, "init", "-q"], d, env)
    # the project's DVC config (analytics off, the offline plots template) as in a clone
    shutil.copy2(ROOT / ".dvc" / "config", d / ".dvc" / "config")
    shutil.copytree(ROOT / ".dvc" / "plots", d / ".dvc" / "plots")
    run_ok(["git", "add", "-A"], d, env)
    run_ok(["git", "commit", "-qm", "tiny project"], d, env)
