"""cluster_age prepare / train / evaluate on a tiny simulated file, and the CLI's bad-input path."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from astrobatch.cli import app
from astrobatch.errors import InputError
from astrobatch.io.cutouts import write_cutouts
from astrobatch.params import ImageSplitParams
from astrobatch.studies.cluster_age.params import ClusterAgeParams
from astrobatch.studies.cluster_age.prepare import prepare, split_by_galaxy, split_random
from astrobatch.study import StudyPaths
from tests.conftest import ROOT

CATALOGUE = ROOT / "data" / "external" / "cluster_age" / "ngc628_Catalog.csv"


def tiny_params(**over) -> ClusterAgeParams:
    base = {
        "seed": 1,
        "simulate": {
            "n_clusters": 90, "image_size": 40, "n_galaxies": 4, "catalogue_path": str(CATALOGUE),
        },
        "data": {"crop_size": 32, "chunk_images": 8},
        "model": {"conv_channels": [4, 8], "dense_units": [16]},
        "training": {"batch_size": 16, "max_epochs": 2, "patience": 5},
        "evaluate": {"random_baseline_draws": 5, "n_examples": 3},
    }  # fmt: skip
    for k, v in over.items():
        base.setdefault(k, {}).update(v) if isinstance(v, dict) else base.__setitem__(k, v)
    return ClusterAgeParams.model_validate(base)


@pytest.fixture(scope="module")
def raw_file(tmp_path_factory):
    from astrobatch.studies.cluster_age.simulate import simulate_to_file

    p = tiny_params()
    path = tmp_path_factory.mktemp("ca") / "raw_phangs_dataset.h5"
    simulate_to_file(p.simulate, path)
    return path


def test_split_random_and_by_galaxy_partition_the_clusters():
    s = split_random(100, ImageSplitParams(seed=3))
    allidx = np.concatenate(list(s.values()))
    assert sorted(allidx) == list(range(100)) and [len(s[k]) for k in s] == [70, 15, 15]
    assert not np.array_equal(s["test"], split_random(100, ImageSplitParams(seed=4))["test"])
    gal = np.array([f"G{i % 7}" for i in range(140)])
    g = split_by_galaxy(gal, ImageSplitParams(by="galaxy"))
    assert sorted(np.concatenate(list(g.values()))) == list(range(140))
    sets = [set(gal[v]) for v in g.values()]
    assert all(len(x) > 0 for x in sets)
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    with pytest.raises(InputError, match="galaxies"):
        split_by_galaxy(np.array(["A"] * 10 + ["B"] * 5), ImageSplitParams(by="galaxy"))


def test_prepare_removes_extremes_crops_and_splits(raw_file, tmp_path):
    p = tiny_params(data={"raw_path": str(raw_file)})
    m = prepare(p.data, tmp_path / "prep")
    with h5py.File(raw_file) as f:
        ages = f["cluster_log_ages"][:]
        full = f["image_cutouts"][:]
        ids = f["cluster_ids"][:]
    inside = (ages >= 7) & (ages <= 9.5)
    assert m["n_kept"] == inside.sum() and sum(m["counts"].values()) == inside.sum()
    seen = []
    for split in ("train", "val", "test"):
        with h5py.File(tmp_path / "prep" / f"{split}.h5") as f:
            assert f["images"].shape[1:] == (5, 32, 32)
            assert f["images"].chunks[0] <= 8
            la = f["log_age"][:]
            assert ((la >= 7) & (la <= 9.5)).all()
            cid = f["cluster_id"][:]
            seen += cid.tolist()
            # the crop is the central 32 pixels of the raw cutout
            row = int(np.flatnonzero(ids == cid[0])[0])
            np.testing.assert_array_equal(f["images"][0], full[row, :, 4:36, 4:36])
            assert np.isfinite(f["photometry"][:]).mean() > 0.5
            assert "catalogue_magnitudes" in f
    assert sorted(seen) == sorted(ids[inside].tolist())
    assert m["target_min"] >= 7 and m["target_max"] <= 9.5
    keep_all = prepare(
        tiny_params(data={"raw_path": str(raw_file), "remove_extremes": False}).data,
        tmp_path / "all",
    )
    assert keep_all["n_kept"] == len(ages)


def test_prepare_rejects_bad_layouts(tmp_path):
    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as f:
        f["cluster_ids"] = np.arange(4, dtype=np.int32)
        f["image_cutouts"] = np.zeros((4, 5, 16, 16), np.float32)
        f["cluster_log_ages"] = np.full(4, 8.0, np.float32)
    p = tiny_params(data={"raw_path": str(bad), "crop_size": 16})
    with pytest.raises(InputError, match="galaxy_ids"):
        prepare(p.data, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    wrong = tmp_path / "wrong.h5"
    write_cutouts(
        wrong, np.arange(4), ["G"] * 4, np.zeros((4, 5, 16, 16), np.float32), np.full(4, 8.0)
    )
    with h5py.File(wrong, "a") as f:
        del f["image_cutouts"]
        f["image_cutouts"] = np.zeros((4, 5, 16, 12), np.float32)
    with pytest.raises(InputError, match="image_cutouts"):
        prepare(tiny_params(data={"raw_path": str(wrong)}).data, tmp_path / "out")


def test_train_evaluate_end_to_end(raw_file, tmp_path):
    from astrobatch.studies.cluster_age.evaluate import evaluate
    from astrobatch.studies.cluster_age.train import train

    p = tiny_params(
        data={"raw_path": str(raw_file), "remove_extremes": False},
        mask={"type": "inner", "radius": 4},
        model={"input": "1im"},
    )
    prepare(p.data, tmp_path / "prep")
    paths = StudyPaths(
        prepared=tmp_path / "prep", models=tmp_path / "models", live=tmp_path / "live",
        metrics=tmp_path / "m.json", plots=tmp_path / "plots", reports=tmp_path / "rep",
    )  # fmt: skip
    state = train(p, paths)
    assert state["complete"] and (tmp_path / "models" / "best.ckpt").is_file()
    norm = json.loads((tmp_path / "models" / "normalisation.json").read_text())
    assert len(norm["stats"]["channel_min"]) == 1  # 1im: one channel
    m = evaluate(p, paths)
    for k in ("test/mdae_log_age", "val/r2_log_age", "test_inner/mae_log_age",
              "baseline/mean/test/mdae_log_age", "baseline/random/test/mdae_log_age",
              "baseline/photometric/test/rmse_log_age"):  # fmt: skip
        assert np.isfinite(m[k]), k
    assert "test_outer/mdae_log_age" in m  # extremes kept -> outer subset reported
    # MdAE is 1.4826 x the median absolute error of the predictions table
    import pandas as pd

    df = pd.read_parquet(tmp_path / "rep" / "predictions.parquet")
    t = df[df.split == "test"]
    mdae = 1.4826 * np.median(np.abs(t.log_age_pred - t.log_age_true))
    assert np.isclose(m["test/mdae_log_age"], mdae)
    # random guessing is worse than the mean on average (it adds the target variance)
    assert m["baseline/random/test/rmse_log_age"] > m["baseline/mean/test/rmse_log_age"]
    # the photometric baseline uses the aperture photometry of the cutouts (what real data
    # gives); the simulator's catalogue magnitudes are a separate, labelled upper bound
    from astrobatch.studies.cluster_age.evaluate import photometric_baseline

    for source, col in (("aperture", "log_age_photometric"),
                        ("catalogue", "log_age_photometric_catalogue")):  # fmt: skip
        refit = photometric_baseline(tmp_path / "prep", p.seed, source)["test"]
        assert np.allclose(t[col].to_numpy(), refit)
    assert not np.allclose(t.log_age_photometric, t.log_age_photometric_catalogue)
    assert np.isfinite(m["baseline/photometric_catalogue/test/mdae_log_age"])
    for name in ("loss_curves", "pred_vs_true", "input_hist", "output_hist", "example_cutouts"):
        assert (tmp_path / "plots" / f"{name}.png").stat().st_size > 1000


def test_control_permutes_train_and_val_targets_only(raw_file, tmp_path):
    from astrobatch.studies.cluster_age.train import make_datasets, make_transform

    p = tiny_params(data={"raw_path": str(raw_file)}, training={"shuffle_targets": True})
    prepare(p.data, tmp_path / "prep")
    t = make_transform(p, tmp_path / "prep")
    shuffled = make_datasets(p, tmp_path / "prep", t, for_training=True)
    plain = make_datasets(p, tmp_path / "prep", t, for_training=False)
    for split in ("train", "val"):
        a, b = shuffled[split].targets, plain[split].targets
        assert sorted(a) == sorted(b) and not np.array_equal(a, b)
    np.testing.assert_array_equal(shuffled["test"].targets, plain["test"].targets)
    assert shuffled["train"].augment and not plain["train"].augment


def test_cli_bad_input_exits_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("cluster_age:\n  data:\n    raw_path: nowhere.h5\n")
    r = CliRunner().invoke(app, ["cluster-age", "prepare", "--out", "prep"])
    assert r.exit_code == 2 and "nowhere.h5" in r.output
    assert not (tmp_path / "prep").exists()
    (tmp_path / "params.yaml").write_text("cluster_age:\n  mask:\n    type: ring\n")
    r = CliRunner().invoke(app, ["cluster-age", "prepare", "--out", "prep"])
    assert r.exit_code == 2 and "mask.type" in r.output


@pytest.mark.parametrize("norm", ["filter", "dataset"])
def test_normalisation_statistics_come_from_masked_training_images(raw_file, tmp_path, norm):
    from astrobatch.studies.cluster_age.train import make_transform

    p = tiny_params(
        data={"raw_path": str(raw_file)},
        mask={"type": "outer", "radius": 6},
        training={"normalisation": norm},
    )
    prepare(p.data, tmp_path / "prep")
    t = make_transform(p, tmp_path / "prep")
    imgs = {}
    for split in ("train", "val", "test"):
        with h5py.File(tmp_path / "prep" / f"{split}.h5") as f:
            imgs[split] = t.masked(f["images"][:])  # masked + asinh-stretched, as trained on
    train = imgs["train"]
    np.testing.assert_allclose(t.stats.channel_min, train.min(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(t.stats.channel_max, train.max(axis=(0, 2, 3)), rtol=1e-6)
    assert t.stats.global_max == pytest.approx(float(train.max()))
    everything = np.concatenate(list(imgs.values()))
    assert everything.max() > train.max()  # val/test never leak into the statistics
    x = t(_raw_train(tmp_path))
    if norm == "dataset":
        assert x.min() == pytest.approx(0, abs=1e-6) and x.max() == pytest.approx(1, abs=1e-6)


def _raw_train(tmp_path):
    with h5py.File(tmp_path / "prep" / "train.h5") as f:
        return f["images"][:]


def test_the_galaxy_split_error_names_the_raw_file(tmp_path):
    """Audit: 'split by galaxy needs at least 3 galaxies' named no file."""
    from astrobatch.studies.cluster_age.simulate import simulate_to_file

    p = tiny_params(simulate={"n_galaxies": 2})
    raw = tmp_path / "two_galaxies.h5"
    simulate_to_file(p.simulate, raw)
    q = tiny_params(simulate={"n_galaxies": 2},
                    data={"raw_path": str(raw), "split": {"by": "galaxy"}})  # fmt: skip
    with pytest.raises(InputError, match="galaxies") as err:
        prepare(q.data, tmp_path / "prep")
    assert err.value.path == str(raw)
    assert not (tmp_path / "prep").exists()
