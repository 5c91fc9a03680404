"""Params validation: unknown keys, wrong types and impossible values give one clear error."""

from __future__ import annotations

import pytest
import yaml

from astrobatch.errors import ParamsError
from astrobatch.params import load_params
from astrobatch.studies.star_sets.params import StarSetsParams
from tests.conftest import ROOT


def _write(tmp_path, section: dict):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"star_sets": section}))
    return p


def test_repo_params_are_valid():
    p = load_params("star_sets", ROOT / "params.yaml")
    assert isinstance(p, StarSetsParams)
    assert p.model.name in ("summary_stats", "deep_sets", "set_transformer")
    assert p.data.split.train + p.data.split.val + p.data.split.test == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("section", "needle"),
    [
        ({"sampling": {"drop_ratio_range": [0.5, 1.2]}}, "star_sets.sampling.drop_ratio_range"),
        ({"sampling": {"drop_ratio_range": [0.8, 0.2]}}, "drop_ratio_range"),
        ({"model": {"nmae": "deep_sets"}}, "star_sets.model.nmae: unknown key"),
        ({"model": {"name": "resnet"}}, "star_sets.model.name"),
        ({"training": {"lr": "fast"}}, "star_sets.training.lr"),
        ({"training": {"lr": -1}}, "star_sets.training.lr"),
        ({"data": {"features": ["x", "colour"]}}, "unknown features ['colour']"),
        ({"data": {"split": {"train": 0.9, "val": 0.2, "test": 0.1}}}, "must be 1"),
        ({"model": {"name": "set_transformer", "hidden_dim": 30, "num_heads": 4}}, "divisible"),
    ],
)
def test_bad_params_raise_one_clear_error(tmp_path, section, needle):
    with pytest.raises(ParamsError) as info:
        load_params("star_sets", _write(tmp_path, section))
    msg = str(info.value)
    assert needle in msg
    assert str(tmp_path / "params.yaml") in msg


def test_unknown_section_and_missing_file(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("star_set: {}\n")
    with pytest.raises(ParamsError, match="unknown top-level section"):
        load_params("star_sets", p)
    with pytest.raises(ParamsError, match="not found"):
        load_params("star_sets", tmp_path / "nope.yaml")


def test_numbers_as_strings_are_coerced():
    p = StarSetsParams.model_validate({"training": {"lr": "3e-3"}})
    assert p.training.lr == pytest.approx(3e-3)
