"""star_sets builds its set models from its params: every field reaches nn.sets, same defaults."""

from __future__ import annotations

import inspect

import pytest
import torch

from astrobatch.nn.sets import DeepSets, SetTransformer, SummaryStats, build_set_model
from astrobatch.studies.star_sets.params import SetModelParams
from astrobatch.studies.star_sets.train import build_model


def test_params_fields_are_the_builder_keywords_with_the_same_defaults():
    sig = inspect.signature(build_set_model).parameters
    fields = SetModelParams.model_fields
    assert set(fields) <= set(sig), "every params field must be a build_set_model keyword"
    for name, field in fields.items():
        if name != "name":
            assert sig[name].default == field.default, name


@pytest.mark.parametrize(
    ("name", "cls"),
    [("summary_stats", SummaryStats), ("deep_sets", DeepSets), ("set_transformer", SetTransformer)],
)
def test_build_model_from_params(name, cls):
    p = SetModelParams(name=name, hidden_dim=16, num_heads=2, num_inducing=3, pooling="sum")
    torch.manual_seed(0)
    model = build_model(p, in_features=6)
    torch.manual_seed(0)
    plain = build_set_model(name, 6, hidden_dim=16, num_heads=2, num_inducing=3, pooling="sum")
    assert type(model) is cls
    for a, b in zip(model.parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b)
    x, mask = torch.randn(2, 5, 6), torch.ones(2, 5, dtype=torch.bool)
    assert model(x, mask).shape == (2, 1)
