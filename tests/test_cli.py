"""The CLI: helpful --help, and bad input gives exit status 2 with one clear message."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from astrobatch.cli import app
from tests.conftest import ROOT

runner = CliRunner()


@pytest.mark.parametrize("stage", ["simulate", "prepare", "train", "evaluate"])
def test_help(stage):
    r = runner.invoke(app, ["star-sets", stage, "--help"])
    assert r.exit_code == 0
    assert "--params" in r.output and "Writes" in r.output


def test_root_help_lists_studies_and_compare():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0 and "star-sets" in r.output and "compare" in r.output


def _params(tmp_path, **section):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    for k, v in section.items():
        data["star_sets"][k].update(v)
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_bad_param_exit_2(tmp_path):
    p = _params(tmp_path, sampling={"drop_ratio_range": [0.2, 1.5]})
    r = runner.invoke(
        app, ["star-sets", "prepare", "--params", str(p), "--out", str(tmp_path / "o")]
    )
    assert r.exit_code == 2
    assert "star_sets.sampling.drop_ratio_range" in r.output and "params.yaml" in r.output
    assert not (tmp_path / "o").exists()


def test_missing_raw_file_exit_2(tmp_path):
    p = _params(tmp_path, data={"raw_path": str(tmp_path / "missing.h5")})
    r = runner.invoke(
        app, ["star-sets", "prepare", "--params", str(p), "--out", str(tmp_path / "o")]
    )
    assert r.exit_code == 2
    assert "missing.h5" in r.output and "not found" in r.output
    assert not (tmp_path / "o").exists()


def test_nan_features_exit_2(tmp_path, tiny_raw):
    import h5py
    import numpy as np

    bad = tmp_path / "nan.h5"
    bad.write_bytes(tiny_raw.read_bytes())
    with h5py.File(bad, "a") as f:
        f["stars/vz"][10] = np.nan
    p = _params(tmp_path, data={"raw_path": str(bad)})
    r = runner.invoke(
        app, ["star-sets", "prepare", "--params", str(p), "--out", str(tmp_path / "o")]
    )
    assert r.exit_code == 2 and "key vz" in r.output and "non-finite" in r.output


def test_train_without_prepared_exit_2(tmp_path):
    r = runner.invoke(
        app, ["star-sets", "train", "--params", str(ROOT / "params.yaml"),
              "--prepared", str(tmp_path / "none"), "--out", str(tmp_path / "m")],
    )  # fmt: skip
    assert r.exit_code == 2 and "run prepare first" in r.output
    assert not (tmp_path / "m").exists()


def test_train_corrupted_shard_exit_2(tmp_path, tiny_prepared):
    import shutil

    prep = tmp_path / "prep"
    shutil.copytree(tiny_prepared, prep)
    raw = (prep / "train.h5").read_bytes()
    (prep / "train.h5").write_bytes(raw[:200])
    r = runner.invoke(
        app, ["star-sets", "train", "--params", str(ROOT / "params.yaml"),
              "--prepared", str(prep), "--out", str(tmp_path / "m")],
    )  # fmt: skip
    assert r.exit_code == 2 and "train.h5" in r.output and "corrupted" in r.output


def test_version():
    from typer.testing import CliRunner

    from astrobatch import __version__
    from astrobatch.cli import app

    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"astrobatch {__version__}"
