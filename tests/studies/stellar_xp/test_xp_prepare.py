"""stellar_xp prepare: scaling on train-only samples, hashed splits, shards, input errors."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest

from astrobatch.data.scalers import load_table_scalers
from astrobatch.data.tables import read_table_shard, table_info
from astrobatch.errors import InputError
from astrobatch.io.compound_h5 import CompoundH5Writer, iter_blocks, list_keys
from astrobatch.io.fits_tables import read_fits_table, write_fits_table
from astrobatch.studies.stellar_xp.columns import error_columns, feature_names, recon_cols
from astrobatch.studies.stellar_xp.prepare import prepare
from tests.studies.stellar_xp.conftest import tiny_xp_params

SHARDS = (
    "pretrain_train",
    "pretrain_val",
    "pretrain_val_real",
    "finetune_train",
    "finetune_val",
    "finetune_test",
)


def test_outputs_and_manifest(xp_prepared):
    out, m = xp_prepared
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{s}.h5" for s in SHARDS] + ["manifest.json", "scalers.json"]
    )
    assert json.loads((out / "manifest.json").read_text()) == json.loads(json.dumps(m))
    F = len(feature_names())
    assert m["features"] == feature_names() and m["recon_cols"] == recon_cols("EBV")
    assert m["labels"] == ["teff", "logg", "fe_h", "alpha", "age", "parallax"]
    assert m["parallax_index"] == m["features"].index("PARALLAX") and m["parallax_label_index"] == 5
    assert m["sources"]["simulated"]["val_keys"] == ["sslset0_part3"]
    assert m["counts"]["pretrain_val"] == 300  # the last key
    real = m["sources"]["real"]
    assert real["n_sources"] == 2000 and m["counts"]["pretrain_val_real"] == real["n_val"]
    assert 300 < real["n_val"] < 500  # real_val_fraction 0.2 by hashed source_id
    assert m["counts"]["pretrain_train"] == 1200 + 2000 - real["n_val"]
    assert sum(m["counts"][f"finetune_{s}"] for s in ("train", "val", "test")) == 800
    for s in SHARDS:
        info = table_info(out / f"{s}.h5")
        assert info["features"] == m["features"] and info["n_rows"] == m["counts"][s]
        assert info["labelled"] == s.startswith("finetune")
    d = read_table_shard(out / "finetune_val.h5")
    assert d["x"].shape == (m["counts"]["finetune_val"], F) and d["x"].dtype == np.float32
    assert d["y"].shape == (m["counts"]["finetune_val"], 6) and d["y_err"].dtype == np.float32


def test_scaling(xp_raw, xp_prepared):
    raw, _ = xp_raw
    out, m = xp_prepared
    fs, ls = load_table_scalers(out / "scalers.json")
    feats = m["features"]
    train = read_table_shard(out / "pretrain_train.h5")
    # the scaler sample is capped at scaler_max_rows = 1000 of the ~2800 train rows
    assert m["scaler"]["sample_rows"] == 1000 and m["scaler"]["keys"] == [
        "sslset0_part0",
        "sslset0_part1",
        "sslset0_part2",
    ]
    med = np.nanmedian(train["x"], axis=0)
    j = [feats.index(c) for c in ("G", "bp_1", "bp_2", "rp_1", "J", "PARALLAX", "EBV")]
    assert np.all(np.abs(med[j]) < 0.25), med[j]  # a 1000-row sample of ~2700 train rows
    # errors are divided by the feature's IQR: undo the scaling and compare with the raw file
    blk = next(iter_blocks(raw / "pretrain.h5", "sslset0_part0", None, 64))
    # XP coefficients are flux-normalised (data.xp_normalisation: flux) before scaling
    b1, b2 = feats.index("bp_1"), feats.index("bp_2")
    x_raw = fs.inverse_transform(train["x"][:64])
    np.testing.assert_allclose(x_raw[:, b1], -2.5 * np.log10(blk["bp_1"]), rtol=1e-5)
    np.testing.assert_allclose(x_raw[:, b2], blk["bp_2"] / blk["bp_1"], rtol=1e-4, atol=1e-7)
    assert m["xp_normalisation"] == "flux"
    for c, e in (("G", "e_G"), ("J", "E_J"), ("PARALLAX", "e_parallax")):
        k = feats.index(c)
        x_raw = fs.inverse_transform(train["x"][:64])[:, k]
        e_raw = fs.inverse_errors(train["x_err"][:64])[:, k]
        np.testing.assert_allclose(x_raw, blk[c], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(e_raw, blk[e], rtol=1e-5)
        ok = np.isfinite(blk[e])
        np.testing.assert_allclose(train["x_err"][:64, k][ok], blk[e][ok] / fs.scale[k], rtol=1e-5)
    ebv = feats.index("EBV")
    assert np.all(np.isnan(train["x_err"][:, ebv]))  # no error column
    # labels: standardised on the fine-tuning train split, errors divided by the std
    y = read_table_shard(out / "finetune_train.h5")["y"]
    np.testing.assert_allclose(np.nanmean(y, 0), 0, atol=1e-4)
    np.testing.assert_allclose(np.nanstd(y, 0), 1, atol=1e-3)
    t = read_fits_table(raw / "finetune.fits", ["teff", "e_teff"])
    assert ls.features[0] == "teff" and ls.std[0] > 100
    fin = np.isfinite(t["e_teff"])
    assert np.nanmedian(t["e_teff"][fin]) / ls.std[0] == pytest.approx(
        np.nanmedian(
            np.concatenate(
                [
                    read_table_shard(out / f"finetune_{s}.h5")["y_err"][:, 0]
                    for s in ("train", "val", "test")
                ]
            )
        ),
        rel=1e-3,
    )


def test_scaler_uses_train_keys_only(tmp_path):
    """Shift the held-out key by +1000: the scaler must not move."""
    feats = feature_names()
    errs = [e for e in error_columns(feats) if e]
    rng = np.random.default_rng(0)
    p = tmp_path / "pre.h5"
    with CompoundH5Writer(p, ["source_id", *feats, *errs], rows_per_part=500) as w:
        for k in range(3):
            vals = rng.normal(0, 1, (500, len(feats))) + (1000.0 if k == 2 else 0.0)
            block = {c: vals[:, i] for i, c in enumerate(feats)}
            block.update({e: np.full(500, 0.1) for e in errs})
            block["source_id"] = np.arange(500) + 500 * k
            w.append(block)
    ft = tmp_path / "ft.fits"
    cols = {"source_id": np.arange(300) + 10**6}
    cols.update({c: rng.normal(0, 1, 300) for c in feats})
    cols.update({e: np.full(300, 0.1) for e in errs})
    for lab in ("teff", "logg", "fe_h", "alpha", "age"):
        cols[lab], cols[f"e_{lab}"] = rng.normal(5, 1, 300), np.full(300, 0.1)
    write_fits_table(ft, cols)
    params = tiny_xp_params(
        tmp_path, pretrain_path=str(p), finetune_path=str(ft), pretrain_sources="simulated",
        xp_normalisation="none",  # Gaussian noise is no spectrum
    )  # fmt: skip
    m = prepare(params, tmp_path / "out")
    fs, _ = load_table_scalers(tmp_path / "out" / "scalers.json")
    assert m["sources"]["simulated"]["val_keys"] == ["sslset0_part2"]
    assert max(abs(c) for c in fs.centre) < 0.3 and max(fs.scale) < 2.0
    val = read_table_shard(tmp_path / "out" / "pretrain_val.h5")["x"]
    assert np.nanmedian(val) > 500  # held-out data scaled with the train scaler
    with pytest.raises(InputError, match="scaler_keys must be training keys"):
        prepare(
            tiny_xp_params(
                tmp_path,
                pretrain_path=str(p),
                finetune_path=str(ft),
                pretrain_sources="simulated",
                scaler_keys=["sslset0_part2"],
            ),
            tmp_path / "out2",
        )


def test_no_source_in_two_splits(xp_raw, xp_prepared):
    raw, _ = xp_raw
    out, m = xp_prepared
    ids = {s: read_table_shard(out / f"{s}.h5")["source_id"] for s in SHARDS}
    ft = [set(ids[f"finetune_{s}"].tolist()) for s in ("train", "val", "test")]
    assert not (ft[0] & ft[1]) and not (ft[0] & ft[2]) and not (ft[1] & ft[2])
    all_ft = read_fits_table(raw / "finetune.fits", ["source_id"])["source_id"]
    assert set().union(*ft) == set(all_ft.tolist())
    pre_train, val_real = (
        set(ids["pretrain_train"].tolist()),
        set(ids["pretrain_val_real"].tolist()),
    )
    assert not pre_train & val_real and not pre_train & set(ids["pretrain_val"].tolist())
    # deterministic: the same ids land in the same splits on a second run
    m2 = prepare(tiny_xp_params(raw), out.parent / "again")
    assert m2["counts"] == m["counts"]
    again = read_table_shard(out.parent / "again" / "finetune_test.h5")["source_id"]
    np.testing.assert_array_equal(again, ids["finetune_test"])


def test_real_only_and_simulated_only(xp_raw, tmp_path):
    raw, _ = xp_raw
    m = prepare(tiny_xp_params(raw, pretrain_sources="real"), tmp_path / "real")
    assert m["sources"]["simulated"] is None
    assert m["counts"]["pretrain_val"] == m["counts"]["pretrain_val_real"] > 0
    assert (
        "G" in m["scaler"]["fitted_on_finetune"] and "bp_1" not in m["scaler"]["fitted_on_finetune"]
    )
    x = read_table_shard(tmp_path / "real" / "pretrain_train.h5")["x"]
    feats = m["features"]
    assert np.all(np.isnan(x[:, feats.index("J")])) and np.all(
        np.isfinite(x[:, feats.index("bp_1")])
    )
    m = prepare(tiny_xp_params(raw, pretrain_sources="simulated"), tmp_path / "sim")
    assert m["counts"]["pretrain_val_real"] == 0 and m["sources"]["real"] is None
    assert table_info(tmp_path / "sim" / "pretrain_val_real.h5")["n_rows"] == 0


def _expect_error(params, out, match):
    if out.exists():
        shutil.rmtree(out)
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(InputError, match=match):
        prepare(params, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]  # the old output is untouched
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def test_input_errors(xp_raw, tmp_path):
    raw, _ = xp_raw
    out = tmp_path / "out"

    def sim_params(**kw):  # real files are not needed for most checks: faster
        return tiny_xp_params(raw, pretrain_sources="simulated", **kw)

    _expect_error(
        sim_params(pretrain_path=str(tmp_path / "no.h5")),
        out,
        r"no\.h5: pretraining HDF5 file not found",
    )
    _expect_error(
        sim_params(finetune_path=str(tmp_path / "no.fits")), out, r"no\.fits: FITS table not found"
    )
    _expect_error(
        sim_params(val_keys=["sslset7_part0"]),
        out,
        r"key sslset7_part0: val_keys entry not in the file",
    )
    _expect_error(
        tiny_xp_params(raw, real_xp_paths=[str(tmp_path / "no.csv")]),
        out,
        r"no\.csv: Gaia XP file not found",
    )

    # a pretraining key without a feature column
    bad = tmp_path / "bad.h5"
    keys = list_keys(raw / "pretrain.h5")
    with h5py.File(raw / "pretrain.h5") as src, h5py.File(bad, "w") as dst:
        for k in keys:
            a = src[k][()]
            if k == keys[1]:
                names = [n for n in a.dtype.names if n != "W2"]
                a = a[names]
                a = np.array(a.tolist(), dtype=[(n, a.dtype[n]) for n in names])
            dst[k] = a
    _expect_error(
        sim_params(pretrain_path=str(bad)),
        out,
        r"bad\.h5: key sslset0_part1: missing column\(s\) \['W2'\]",
    )

    # fine-tuning table: NaN in a required label, infinite feature, duplicate ids
    t = read_fits_table(raw / "finetune.fits")
    assert np.isnan(t["age"]).any()
    _expect_error(
        sim_params(required_labels=["age"]),
        out,
        r"finetune\.fits: key age: NaN label at row \d+ \(source_id \d+\)",
    )
    t2 = dict(t)
    t2["G"] = t["G"].copy()
    t2["G"][5] = np.inf
    write_fits_table(tmp_path / "inf.fits", t2)
    _expect_error(
        sim_params(finetune_path=str(tmp_path / "inf.fits")),
        out,
        r"inf\.fits: key G: infinite feature",
    )
    t3 = dict(t)
    t3["source_id"] = t["source_id"].copy()
    t3["source_id"][1] = t3["source_id"][0]
    write_fits_table(tmp_path / "dup.fits", t3)
    _expect_error(
        sim_params(finetune_path=str(tmp_path / "dup.fits")),
        out,
        r"dup\.fits: key source_id: duplicate source_id",
    )
    t4 = {k: v for k, v in t.items() if k != "e_logg"}
    write_fits_table(tmp_path / "nolab.fits", t4)
    _expect_error(
        sim_params(finetune_path=str(tmp_path / "nolab.fits")),
        out,
        r"nolab\.fits: key e_logg: missing column",
    )
    t5 = dict(t)
    t5["alpha"] = np.full(len(t["alpha"]), np.nan)
    write_fits_table(tmp_path / "nanlab.fits", t5)
    _expect_error(
        sim_params(finetune_path=str(tmp_path / "nanlab.fits")),
        out,
        r"key alpha: no finite value in the fine-tuning train split",
    )


def test_unknown_real_layout_and_empty_split(xp_raw, tmp_path):
    raw, _ = xp_raw
    out = tmp_path / "out"
    bad = tmp_path / "not_xp.csv"
    bad.write_text("source_id,flux\n1,2.0\n")
    _expect_error(
        tiny_xp_params(raw, real_xp_paths=[str(bad)]), out, r"not_xp\.csv: expected a Gaia XP table"
    )
    t = read_fits_table(raw / "finetune.fits")
    small = {k: v[:3] for k, v in t.items()}
    write_fits_table(tmp_path / "small.fits", small)
    _expect_error(
        tiny_xp_params(
            raw, pretrain_sources="simulated", finetune_path=str(tmp_path / "small.fits")
        ),
        out,
        r"small\.fits: key source_id: the (val|test) split is empty",
    )


def test_a_zero_row_pretraining_file_is_refused_and_the_previous_output_kept(xp_raw, tmp_path):
    """Audit defect: a zero-row pretraining file was prepared, then trained on, exit 0."""
    raw, _ = xp_raw
    zero = tmp_path / "zero.h5"
    with h5py.File(raw / "pretrain.h5") as src, h5py.File(zero, "w") as dst:
        for k in src:
            dst.create_dataset(k, data=src[k][:0])
        for k, v in src.attrs.items():
            dst.attrs[k] = v
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text("{}")  # a previous output
    p = tiny_xp_params(raw, pretrain_path=str(zero), pretrain_sources="simulated")
    with pytest.raises(InputError, match="no rows for pretrain_train") as err:
        prepare(p, out)
    assert err.value.path == str(zero)
    assert [q.name for q in out.iterdir()] == ["manifest.json"]
