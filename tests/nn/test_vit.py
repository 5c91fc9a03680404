"""DINOv2 backbone: shapes, local loading (save_pretrained, hub cache), refusals, no network."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from astrobatch.errors import InputError
from astrobatch.nn.heads import EncoderHead, VoteHead
from astrobatch.nn.vit import (
    IMAGENET_MEAN,
    Dinov2Backbone,
    build_backbone,
    imagenet_normalise,
    small_dinov2_config,
)

TINY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2)


def tiny_backbone(**kw) -> Dinov2Backbone:
    torch.manual_seed(0)
    return Dinov2Backbone.from_config(small_dinov2_config(**{**TINY, **kw})).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, Dinov2Backbone]:
    """A tiny backbone written with save_pretrained (shared: writing costs time)."""
    folder = tmp_path_factory.mktemp("dinov2") / "tiny"
    enc = tiny_backbone()
    enc.save_pretrained(folder)
    return folder, enc


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any connection attempt fails the test: weights load from local files only."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_output_shape_and_attributes():
    enc = tiny_backbone()
    assert (enc.out_features, enc.patch_size, enc.config.model_type) == (32, 8, "dinov2")
    assert enc(torch.randn(3, 3, 64, 64)).shape == (3, 32)
    assert enc(torch.randn(2, 3, 32, 48)).shape == (2, 32), "non-square, other size: interpolated"


def test_pooled_output_is_the_layernormed_cls_token():
    enc = tiny_backbone()
    x = torch.randn(2, 3, 64, 64)
    out = enc.model(pixel_values=x)
    assert torch.equal(enc(x), out.last_hidden_state[:, 0])


def test_cls_mean_pooling_appends_the_mean_patch_token(saved):
    """cls_mean: [CLS, mean of the layer-normed patch tokens], twice the width; same weights."""
    folder, cls_enc = saved
    enc = Dinov2Backbone.from_pretrained(folder, pooling="cls_mean")
    assert enc.out_features == 2 * cls_enc.out_features
    x = enc.normalise(torch.rand(2, 3, 32, 32))
    with torch.no_grad():
        feats = enc(x)
        tokens = enc.model(pixel_values=x).last_hidden_state
    assert feats.shape == (2, 64)
    torch.testing.assert_close(feats[:, :32], cls_enc(x))
    torch.testing.assert_close(feats[:, 32:], tokens[:, 1:].mean(dim=1))
    with pytest.raises(ValueError, match="pooling"):
        Dinov2Backbone.from_config(small_dinov2_config(**TINY), pooling="max")


def test_patch14_config_takes_64px_images():
    enc = tiny_backbone(patch_size=14, image_size=224)  # 16 x 16 positions -> 4 x 4 patches
    assert enc(torch.randn(2, 3, 64, 64)).shape == (2, 32)


def test_fits_a_vote_head():
    enc = tiny_backbone()
    model = EncoderHead(enc, VoteHead(enc.out_features, 5, hidden=(8,))).eval()
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5)


def test_save_pretrained_round_trip_gives_identical_outputs(saved):
    folder, enc = saved
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {
        p.name for p in folder.iterdir()
    }
    back = Dinov2Backbone.from_pretrained(folder)
    assert not back.training
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(back(x), enc(x))
    assert back.mean == IMAGENET_MEAN


def test_preprocessor_statistics_are_read(saved, tmp_path):
    folder = tmp_path / "w"
    shutil.copytree(saved[0], folder)
    (folder / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]})
    )
    enc = Dinov2Backbone.from_pretrained(folder)
    assert (enc.mean, enc.std) == ((0.5,) * 3, (0.25,) * 3)
    assert torch.allclose(enc.normalise(torch.full((1, 3, 2, 2), 0.75)), torch.ones(1, 3, 2, 2))
    (folder / "preprocessor_config.json").unlink()
    assert Dinov2Backbone.from_pretrained(folder).mean == IMAGENET_MEAN


def test_imagenet_normalise_checks_channels():
    with pytest.raises(ValueError, match="channels"):
        imagenet_normalise(torch.zeros(1, 4, 2, 2))


def _hub_cache(root: Path, saved_folder: Path, commit: str = "0123abcd") -> Path:
    """The layout of ``~/.cache/huggingface/hub/models--org--name``: snapshots link to blobs."""
    repo = root / "models--facebook--dinov2-tiny"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for i, file in enumerate(sorted(saved_folder.iterdir())):
        blob = repo / "blobs" / f"{i:040x}"
        shutil.copy(file, blob)
        (snapshot / file.name).symlink_to(Path("..", "..", "blobs", blob.name))
    return repo


def test_hub_cache_layout_resolves(saved, tmp_path):
    folder, enc = saved
    repo = _hub_cache(tmp_path, folder)
    x = torch.randn(1, 3, 64, 64)
    # the only snapshot, without refs/main
    assert torch.equal(Dinov2Backbone.from_pretrained(repo)(x), enc(x))
    # refs/main picks one of several snapshots
    shutil.copytree(folder, repo / "snapshots" / "ffff0000")
    with pytest.raises(InputError, match="exactly one snapshot"):
        Dinov2Backbone.from_pretrained(repo)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd\n")
    assert torch.equal(Dinov2Backbone.from_pretrained(repo)(x), enc(x))
    # a snapshot folder itself
    assert torch.equal(Dinov2Backbone.from_pretrained(repo / "snapshots" / "0123abcd")(x), enc(x))
    (repo / "refs" / "main").write_text("deadbeef")
    with pytest.raises(InputError, match="deadbeef"):
        Dinov2Backbone.from_pretrained(repo)


def test_transformers4_key_names_load(saved, tmp_path):
    """Hub checkpoints (facebook/dinov2-*) name attention weights as transformers 4 did."""
    folder, enc = saved
    legacy = tmp_path / "legacy"
    shutil.copytree(folder, legacy)
    renames = {
        "attention.q_proj": "attention.attention.query",
        "attention.k_proj": "attention.attention.key",
        "attention.v_proj": "attention.attention.value",
        "attention.o_proj": "attention.output.dense",
    }
    state = load_file(legacy / "model.safetensors")
    old = {}
    for key, value in state.items():
        for new, was in renames.items():
            key = key.replace(new, was)
        old[key] = value
    assert any("attention.attention.query" in k for k in old)
    save_file(old, legacy / "model.safetensors", metadata={"format": "pt"})
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(Dinov2Backbone.from_pretrained(legacy)(x), enc(x))


def test_missing_folder_and_missing_config(tmp_path):
    with pytest.raises(InputError, match="not found"):
        Dinov2Backbone.from_pretrained(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="weights folder without a config") as err:
        Dinov2Backbone.from_pretrained(empty)
    assert str(empty) in str(err.value)


def test_pickled_weights_are_refused(saved, tmp_path):
    folder = tmp_path / "bin"
    folder.mkdir()
    shutil.copy(saved[0] / "config.json", folder / "config.json")
    (folder / "pytorch_model.bin").write_bytes(b"not to be unpickled")
    with pytest.raises(InputError, match="safetensors weights are required") as err:
        Dinov2Backbone.from_pretrained(folder)
    assert "pytorch_model.bin" in str(err.value)


def test_non_dinov2_config_is_refused(saved, tmp_path):
    folder = tmp_path / "vit"
    shutil.copytree(saved[0], folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "vit"}))
    with pytest.raises(InputError, match="not a DINOv2 config") as err:
        Dinov2Backbone.from_pretrained(folder)
    assert err.value.key == "model_type"
    (folder / "config.json").write_text("{not json")
    with pytest.raises(InputError, match="unreadable model config"):
        Dinov2Backbone.from_pretrained(folder)


def test_bad_weights_are_refused(saved, tmp_path):
    folder = tmp_path / "bad"
    shutil.copytree(saved[0], folder)
    (folder / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(InputError, match="cannot load the DINOv2 weights"):
        Dinov2Backbone.from_pretrained(folder)
    # weights of another width: shape mismatch
    tiny_backbone(hidden_size=16).save_pretrained(tmp_path / "narrow")
    shutil.copy(tmp_path / "narrow" / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(InputError, match="wrong shape"):
        Dinov2Backbone.from_pretrained(folder)
    # other parameters altogether: nothing would load (silently random otherwise)
    save_file({"foo": torch.zeros(3)}, folder / "model.safetensors")
    with pytest.raises(InputError, match="missing"):
        Dinov2Backbone.from_pretrained(folder)


def test_build_backbone(saved):
    assert build_backbone(None, **TINY).out_features == 32
    assert build_backbone(saved[0]).out_features == 32
    with pytest.raises(ValueError, match="pretrained"):
        build_backbone(saved[0], hidden_size=64)
