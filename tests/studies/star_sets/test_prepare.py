"""prepare: deterministic split by run, train-only scalers, shards, all input formats."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from astrobatch.data.layouts import SET_ELEMENTS, SET_FEATURES, SET_REQUIRED
from astrobatch.data.scalers import load_scalers
from astrobatch.errors import InputError
from astrobatch.io.sets import read_csr_h5, write_upstream_npz
from astrobatch.io.shards import open_shard
from astrobatch.params import SplitParams
from astrobatch.studies.star_sets.prepare import expand_inputs, prepare, split_runs
from tests.conftest import shared_data_dir, tiny_params


def test_split_is_by_run_stratified_and_deterministic():
    runs = [f"Rad{w:02d}-zmet0002-M{m}-{i:04d}" for i, (w, m) in enumerate(
        [(w, m) for w in (3, 5, 7) for m in range(3)] * 4
    )]  # fmt: skip
    strata = [(r[:5], r[15:17]) for r in runs]
    a = split_runs(runs, strata, SplitParams())
    b = split_runs(list(reversed(runs)), list(reversed(strata)), SplitParams())
    assert a == b  # order of input does not matter
    assert sorted(a["train"] + a["val"] + a["test"]) == sorted(runs)
    assert not (set(a["train"]) & set(a["test"])) and not (set(a["val"]) & set(a["test"]))
    assert [len(a[s]) for s in ("train", "val", "test")] == [25, 7, 4]
    # stratified: every mass level reaches train, and the test set spans >1 stratum
    assert {r[15:17] for r in a["train"]} == {"M0", "M1", "M2"}
    assert len({s for r, s in zip(runs, strata, strict=True) if r in a["test"]}) > 1
    c = split_runs(runs, strata, SplitParams(salt="other"))
    assert c != a  # the salt, not the training seed, orders runs


def test_too_few_runs():
    with pytest.raises(InputError, match="at least 3 distinct run_id"):
        split_runs(["a", "b"], None, SplitParams())


def _read(path):
    """A prepared set shard in memory: features, ptr, per-set columns, element count."""
    with open_shard(path, require=SET_REQUIRED) as r:
        sets = {k: r.read(k) for k in r.info["columns"] if "/" not in k}
        features = r.read(SET_FEATURES)
        assert len(r.names(SET_FEATURES)) == features.shape[1]  # the feature names
        return {"features": features, "ptr": r.ptr(SET_ELEMENTS), "sets": sets,
                "n_rows": r.info["groups"][SET_ELEMENTS]["n_elements"]}  # fmt: skip


def test_prepare_outputs(tiny_raw, tiny_prepared):
    manifest = json.loads((tiny_prepared / "manifest.json").read_text())
    runs = manifest["runs"]
    assert not set(runs["train"]) & set(runs["val"])
    assert not set(runs["train"]) & set(runs["test"])
    assert not set(runs["val"]) & set(runs["test"])
    raw = read_csr_h5(tiny_raw)
    shards = {s: _read(tiny_prepared / f"{s}.h5") for s in ("train", "val", "test")}
    for s, sh in shards.items():
        assert set(sh["sets"]["run_id"]) == set(runs[s])  # shards hold exactly their runs
        assert sh["features"].dtype == np.float32
        assert sh["features"].shape[1] == 6
    assert sum(len(sh["ptr"]) - 1 for sh in shards.values()) == raw.n_sets
    assert sum(sh["n_rows"] for sh in shards.values()) == raw.n_elements
    # scalers were fitted on train only: train features have median ~0, val/test need not
    _, ts = load_scalers(tiny_prepared / "scalers.json")
    train_rows = shards["train"]["features"]
    assert np.abs(np.median(train_rows, axis=0)).max() < 0.05
    # target scaling: train targets standardised
    y = shards["train"]["sets"]["target"]
    assert abs(float(np.mean(y))) < 1e-5 and abs(float(np.std(y)) - 1) < 1e-4
    # inverse transform gives back log10 mass of the raw file
    m = raw.sets["total_mass_within_2x_r_tidal"]
    sid = shards["test"]["sets"]["snapshot_id"]
    np.testing.assert_allclose(
        10 ** ts.to_log_space(shards["test"]["sets"]["target"]),
        m[np.searchsorted(raw.sets["snapshot_id"], sid)],
        rtol=1e-4,
    )


def test_prepare_is_deterministic(tiny_raw, tmp_path):
    p = tiny_params(data={"raw_path": str(tiny_raw)})
    prepare(p.data, tmp_path / "a")
    prepare(p.data, tmp_path / "b")
    assert (tmp_path / "a/manifest.json").read_text() == (tmp_path / "b/manifest.json").read_text()
    assert (tmp_path / "a/scalers.json").read_text() == (tmp_path / "b/scalers.json").read_text()


def test_prepare_upstream_npz(tiny_raw, tmp_path):
    raw = read_csr_h5(tiny_raw)
    feats = ["x", "y", "z", "vx", "vy", "vz"]
    tkeys = ["total_mass_within_2x_r_tidal", "time"]
    for r in np.unique(raw.sets["run_id"]):
        idx = np.flatnonzero(raw.sets["run_id"] == r)
        write_upstream_npz(tmp_path / "npz" / f"{r}.npz", raw.select(idx), feats, tkeys)
    p = tiny_params(data={"raw_path": str(tmp_path / "npz"), "raw_format": "upstream_npz"})
    manifest = prepare(p.data, tmp_path / "out")
    assert sum(manifest["n_snapshots"].values()) == raw.n_sets
    assert sorted(r for rs in manifest["runs"].values() for r in rs) == sorted(
        set(raw.sets["run_id"])
    )


def test_prepare_real_nbody6(tmp_path):
    d = shared_data_dir() / "star_sets"
    if not (d / "conf.3_0").is_file():
        pytest.skip(f"real NBODY6++ snapshots not found in {d}")
    p = tiny_params(
        data={
            "raw_path": str(d / "conf.3_*"),
            "raw_format": "nbody6_out3",
            "split": {"train": 0.5, "val": 0.0, "test": 0.5},
        }
    )
    # one run only (two snapshots of the same cluster): cannot be split by run
    with pytest.raises(InputError, match="cannot fill 2 splits") as err:
        prepare(p.data, tmp_path / "out")
    assert err.value.path == str(d / "conf.3_*")  # the message names the input
    assert not (tmp_path / "out").exists()


def _corrupt(tmp_path, tiny_raw, edit):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(tiny_raw.read_bytes())
    with h5py.File(bad, "a") as f:
        edit(f)
    return bad


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda f: f["stars"].__delitem__("vx"), "key stars/vx: missing star column"),
        (lambda f: f["stars/x"].__setitem__(slice(3, 4), np.nan), "key x: 1 non-finite"),
        (lambda f: f["snapshots"].__delitem__("run_id"), "key run_id: missing per-snapshot"),
        (
            lambda f: (f["stars"].__delitem__("y"), f["stars"].create_dataset("y", data=[1.0])),
            "key stars/y: expected shape",
        ),
    ],
)
def test_prepare_bad_raw_is_reported_and_writes_nothing(tmp_path, tiny_raw, edit, needle):
    bad = _corrupt(tmp_path, tiny_raw, edit)
    p = tiny_params(data={"raw_path": str(bad)})
    with pytest.raises(InputError) as info:
        prepare(p.data, tmp_path / "out")
    assert needle in str(info.value) and "bad.h5" in str(info.value)
    assert not (tmp_path / "out").exists()
    assert [q.name for q in tmp_path.iterdir()] == ["bad.h5"]


def test_prepare_empty_snapshot(tmp_path, tiny_raw):
    def empty_first(f):
        ptr = f["ptr"][()]
        n0 = ptr[1]
        for k in list(f["stars"]):
            v = f["stars"][k][n0:]
            del f["stars"][k]
            f["stars"].create_dataset(k, data=v)
        ptr = ptr - n0
        ptr[0] = 0
        f["ptr"][...] = ptr

    bad = _corrupt(tmp_path, tiny_raw, empty_first)
    with pytest.raises(InputError, match="has no stars; expected at least 1"):
        prepare(tiny_params(data={"raw_path": str(bad)}).data, tmp_path / "out")


def test_folder_input_keeps_the_pattern_and_names_runs_by_folder(tmp_path):
    src = Path("data/external/star_sets")
    assert (src / "LICENSE-clustertools").is_file()  # a non-data file beside the snapshots
    root = tmp_path / "runs"
    for run, snap in (("run_a", "conf.3_0"), ("run_b", "conf.3_20")):
        (root / run).mkdir(parents=True)
        shutil.copy(src / snap, root / run / snap)
        (root / run / "LICENSE").write_text("not a snapshot\n")
    (root / ".hidden").mkdir()
    shutil.copy(src / "conf.3_0", root / ".hidden" / "conf.3_0")
    assert [q.name for q in expand_inputs(str(src), "**/conf.3_*")] == ["conf.3_0", "conf.3_20"]
    assert "LICENSE-clustertools" in [q.name for q in expand_inputs(str(src))]  # no pattern: all
    split = {"train": 0.5, "val": 0.0, "test": 0.5}
    p = tiny_params(data={"raw_path": str(root), "raw_format": "nbody6_out3", "split": split})
    manifest = prepare(p.data, tmp_path / "out")
    assert sorted(r for rs in manifest["runs"].values() for r in rs) == ["run_a", "run_b"]
    assert sum(manifest["n_snapshots"].values()) == 2  # the hidden copy and LICENSEs ignored
    # one run id for every snapshot: cannot be split by run, and nothing is written
    p1 = tiny_params(data={"raw_path": str(root), "raw_format": "nbody6_out3", "split": split,
                           "run_id": "one_run"})  # fmt: skip
    with pytest.raises(InputError, match="1 run"):
        prepare(p1.data, tmp_path / "out1")
    assert not (tmp_path / "out1").exists()
    # a folder with no file of the pattern: one message naming folder and key
    with pytest.raises(InputError, match=re.escape("no file named like 'conf.3_9*'")) as err:
        expand_inputs(str(root / "run_a"), "conf.3_9*")
    assert err.value.key == "data.raw_pattern"
