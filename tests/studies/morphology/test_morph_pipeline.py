"""morphology end to end on tiny data: prepare, head stage, full stage, predict on the real
galaxies, evaluate; local weights."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from astrobatch.errors import InputError
from astrobatch.io.predictions import write_predictions
from astrobatch.studies.morphology.evaluate import evaluate
from astrobatch.studies.morphology.params import MorphologyParams
from astrobatch.studies.morphology.predict import predict
from astrobatch.studies.morphology.prepare import prepare
from astrobatch.studies.morphology.train import build_task, train_full, train_head
from astrobatch.study import StudyPaths
from astrobatch.tasks.checkpoints import load_checkpoint
from tests.studies.morphology.conftest import data_params

TINY_MODEL = {"hidden_size": 24, "num_hidden_layers": 1, "num_attention_heads": 2,
              "patch_size": 4, "head_hidden": [16], "conv_channels": [4, 8]}  # fmt: skip
TINY_TRAIN = {"batch_size": 16, "max_epochs": 2, "patience": 2}
REAL = "data/external/morphology/gz_decals_rings/catalog.csv"


def params(data, **kw) -> MorphologyParams:
    base = {"seed": 1, "data": data.model_dump(), "model": dict(TINY_MODEL),
            "head": dict(TINY_TRAIN), "full": dict(TINY_TRAIN),
            "evaluate": {"n_examples": 2, "real_predictions": ""}}  # fmt: skip
    for k, v in kw.items():
        if isinstance(v, dict):
            base.setdefault(k, {}).update(v)
        else:
            base[k] = v
    return MorphologyParams.model_validate(base)


def paths(tmp, prepared) -> tuple[StudyPaths, StudyPaths, StudyPaths]:
    head = StudyPaths(prepared=prepared, models=tmp / "head", live=tmp / "live_head")
    full = StudyPaths(prepared=prepared, models=tmp / "full", live=tmp / "live_full",
                      pretrained=tmp / "head")  # fmt: skip
    ev = StudyPaths(prepared=prepared, models=tmp / "full", pretrained=tmp / "head",
                    live=tmp / "live_full", metrics=tmp / "m.json", plots=tmp / "plots",
                    reports=tmp / "reports")  # fmt: skip
    return head, full, ev


@pytest.fixture(scope="module")
def prepared(surveys, tmp_path_factory):
    out = tmp_path_factory.mktemp("prep") / "morphology"
    prepare(data_params(surveys), out)
    return out


@pytest.mark.parametrize("loss", ["mse", "dirichlet"])
def test_two_stages_and_evaluate(surveys, prepared, tmp_path, loss):
    p = params(data_params(surveys), loss=loss)
    head, full, ev = paths(tmp_path, prepared)
    s1 = train_head(p, head)
    assert s1["complete"] and np.isfinite(s1["best_val_loss"])
    s2 = train_full(p, full)
    assert s2["complete"]
    # the real galaxies: predict (the model folder carries its schema), then evaluate scores
    # the table as the `real` set
    shutil.copy(prepared / "manifest.json", tmp_path / "full" / "manifest.json")
    table = predict(p, tmp_path / "full", [REAL])
    write_predictions(table, tmp_path / "real.ecsv", "morphology", tmp_path / "full", [REAL])
    stds = [c for c in table.colnames if c.endswith("_std")]
    if loss == "dirichlet":  # the fraction's Beta marginal: std in (0, 0.5]
        n_answers = len(json.loads((prepared / "manifest.json").read_text())["answers"])
        assert len(stds) == n_answers and all(0 < table[c].min() and table[c].max() <= 0.5
                                       for c in stds)  # fmt: skip
    else:
        assert not stds
    p = params(data_params(surveys), loss=loss,
               evaluate={"real_predictions": str(tmp_path / "real.ecsv")})  # fmt: skip
    # the full stage starts from the head stage: before training, identical weights
    h = load_checkpoint(tmp_path / "head" / "best.ckpt")["state_dict"]
    f = load_checkpoint(tmp_path / "full" / "best.ckpt")["state_dict"]
    assert h.keys() == f.keys() and any(k.startswith("model.") for k in h)
    assert not all(torch.equal(h[k], f[k]) for k in h if k.startswith("model."))
    m = evaluate(p, ev)
    for name in ("test", "ood_c", "real"):
        assert np.isfinite(m[f"{name}/mse"]) and -1 <= m[f"{name}/r"] <= 1
    assert np.isclose(m["ood_c/degradation/mse"], m["ood_c/mse"] - m["test/mse"])
    real_answers = {k.split("/")[1] for k in m if k.startswith("real/") and k.count("/") == 2}
    assert real_answers == {"smooth-or-featured_featured-or-disk", "disk-edge-on_no",
                            "has-spiral-arms_no"}  # fmt: skip
    assert ("test/coverage_68" in m) == (loss == "dirichlet")
    if loss == "dirichlet":
        assert 0 <= m["test/coverage_68"] <= 1
    headline = json.loads((tmp_path / "m.json").read_text())
    assert 0 < len(headline) <= 12 and "test/mse" in headline
    for png in ("pred_vs_true.png", "answer_r_test.png", "examples.png"):
        assert (tmp_path / "plots" / png).stat().st_size > 1000


def test_local_weights_round_trip_and_finetune_on_real(tmp_path):
    """A tiny DINOv2 saved with save_pretrained is the backbone; fine-tune on the real set."""
    from astrobatch.nn.vit import Dinov2Backbone, small_dinov2_config

    torch.manual_seed(0)
    cfg = small_dinov2_config(hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                              patch_size=4, image_size=32)  # fmt: skip
    Dinov2Backbone.from_config(cfg).save_pretrained(tmp_path / "weights")
    real = "data/external/morphology/gz_decals_rings/catalog.csv"
    data = {"catalogues": [{"path": real, "survey": "decals_real"}],
            "train_surveys": {"decals_real": 1.0}, "ood_surveys": [],
            "questions": ["smooth-or-featured", "disk-edge-on", "has-spiral-arms"],
            "image_size": 32, "chunk_images": 16}  # fmt: skip
    p = params(MorphologyParams.model_validate({"data": data}).data,
               model={"weights_dir": str(tmp_path / "weights")})  # fmt: skip
    out = tmp_path / "prep"
    prepare(p.data, out)
    head, full, ev = paths(tmp_path, out)
    task = build_task(p, json.loads((out / "manifest.json").read_text()), "head")
    ref = Dinov2Backbone.from_pretrained(tmp_path / "weights").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(task.model.eval()(x), ref(x))  # the local weights, exactly
    train_head(p, head)
    train_full(p, full)
    m = evaluate(p, ev)
    assert m["n_answers"] == 3 and np.isfinite(m["test/r"])
    # the Dirichlet loss needs counts: a fraction-only training set is refused
    with pytest.raises(InputError, match="needs vote counts"):
        train_head(params(p.data, model={"weights_dir": str(tmp_path / "weights")},
                          loss="dirichlet"), head)  # fmt: skip
    # a weights folder without a config: one message naming it
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty"):
        train_head(params(p.data, model={"weights_dir": str(tmp_path / "empty")}), head)


def test_head_stage_embeds_each_image_once(surveys, prepared, tmp_path, monkeypatch):
    """The frozen backbone runs once per image (embeddings), never during the head's epochs."""
    from astrobatch.nn.vit import Dinov2Backbone

    seen = []
    forward = Dinov2Backbone.forward

    def counting(self, x):
        seen.append(len(x))
        return forward(self, x)

    monkeypatch.setattr(Dinov2Backbone, "forward", counting)
    p = params(data_params(surveys), head={"max_epochs": 3, "patience": 5})
    head, _, _ = paths(tmp_path, prepared)
    state = train_head(p, head)
    manifest = json.loads((prepared / "manifest.json").read_text())
    n_images = sum(manifest["counts"][s] for s in ("train", "val", "test"))
    assert state["epochs_trained"] == 3 and sum(seen) == n_images
