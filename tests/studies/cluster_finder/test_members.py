"""cluster_finder member-set models: summaries, baselines, sky rotations, a tiny training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from astrobatch.data.layouts import SET_ELEMENTS, set_layout
from astrobatch.data.scalers import GroupRobustScaler, TargetScaler, save_scalers
from astrobatch.data.sets import SetDataModule
from astrobatch.errors import InputError
from astrobatch.io.shards import ShardWriter
from astrobatch.params import TrainingParams
from astrobatch.studies.cluster_finder.members import (
    MemberRegressionTask,
    _rotate_columns,
    baselines,
    build_task,
    load_members_model,
    predict_sets,
    summary_features,
    train_members,
)
from astrobatch.studies.cluster_finder.params import (
    UNIT_VECTOR,
    ClusterFinderParams,
    MembersTarget,
    SamplingParams,
    SetModelParams,
)
from astrobatch.studies.cluster_finder.prepare import prepare
from astrobatch.study import StudyPaths
from tests.studies.cluster_finder.test_prepare import (
    REAL_CLUSTERS,
    REAL_MEMBERS,
    data_params,
    simulate_tiny,
)

pytestmark = pytest.mark.skipif(
    not (REAL_MEMBERS.is_file() and REAL_CLUSTERS.is_file()),
    reason="real redMaPPer files not in data/external/cluster_finder",
)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread (two threads on a busy 2-core machine are ~20x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """The prepared tiny sky of test_prepare (12 clusters, 4 empty fields)."""
    root = tmp_path_factory.mktemp("cf_members")
    sky = simulate_tiny(root / "sky")
    prepare(data_params(sky), root / "prepared")
    return root / "prepared"


def write_sets(folder: Path, split: str, sets: list[np.ndarray], target, names) -> Path:
    """A set shard of ``sets`` (one (n_i, F) array each) with ``set_layout``."""
    folder.mkdir(parents=True, exist_ok=True)
    cols, groups = set_layout(names, {"cluster_id": np.int64})
    ptr = np.concatenate([[0], np.cumsum([len(s) for s in sets])])
    path = folder / f"{split}.h5"
    with ShardWriter(path, cols, groups) as w:
        w.append(
            {"target": np.asarray(target, np.float32), "cluster_id": np.arange(len(sets))},
            {SET_ELEMENTS: (ptr, {"features": np.concatenate(sets).astype(np.float32)})},
        )
    return path


# --------------------------------------------------------------------------- baselines
def test_summary_features_by_hand(tmp_path):
    a = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 60.0]])
    b = np.array([[5.0, 0.0], [7.0, 1.0]])
    write_sets(tmp_path, "train", [a, b], [0.5, -1.0], ["f0", "f1"])
    x, y = summary_features(tmp_path, "train")
    assert x.shape == (2, 7 * 2 + 1) and x.dtype == np.float64
    np.testing.assert_allclose(y, [0.5, -1.0])
    want_a = [
        2.0, 30.0,  # mean
        2.0, 20.0,  # median
        np.sqrt(2 / 3), np.std([10.0, 20.0, 60.0]),  # std (population)
        1.5, 15.0,  # 25 %
        2.5, 40.0,  # 75 %
        1.0, 10.0,  # min
        3.0, 60.0,  # max
        np.log(4.0),  # log(1 + n)
    ]  # fmt: skip
    want_b = [6.0, 0.5, 6.0, 0.5, 1.0, 0.5, 5.5, 0.25, 6.5, 0.75, 5.0, 0.0, 7.0, 1.0, np.log(3.0)]
    np.testing.assert_allclose(x, [want_a, want_b], rtol=1e-6)


def test_baselines_on_hand_made_sets(tmp_path):
    rng = np.random.default_rng(0)
    sets = [rng.normal(i, 1.0, (int(rng.integers(3, 9)), 2)) for i in range(12)]
    y = np.arange(12.0) / 11.0
    for split in ("train", "test"):
        write_sets(tmp_path, split, sets, y, ["f0", "f1"])
    tscaler = TargetScaler(log10=True, mean=1.5, std=0.2)
    save_scalers(tmp_path / "scalers.json", GroupRobustScaler([], [], []), tscaler)
    out = baselines(tmp_path, "test", seed=0)
    assert set(out) == {"train_median", "gradient_boosting"}
    for v in out.values():
        assert v.shape == (12,) and np.isfinite(v).all() and (v > 0).all()
    np.testing.assert_allclose(out["train_median"], 10 ** (1.5 + 0.2 * np.median(y)))


def test_baselines_on_the_prepared_sky(prepared):
    folder = prepared / "members_redshift"
    counts = json.loads((folder / "manifest.json").read_text())["counts"]
    out = baselines(folder, "test", seed=0)
    for v in out.values():
        assert v.shape == (counts["test"],) and np.isfinite(v).all()
    assert ((out["train_median"] > 0.05) & (out["train_median"] < 0.4)).all()  # a redshift


# --------------------------------------------------------------------------- rotations
def _unit(ra, dec) -> torch.Tensor:
    r, d = torch.deg2rad(ra), torch.deg2rad(dec)
    return torch.stack([d.cos() * r.cos(), d.cos() * r.sin(), d.sin()], dim=-1)


def _capture(task: MemberRegressionTask) -> list:
    seen = []

    def step(batch, stage):
        seen.append((batch, stage))
        return torch.tensor(0.0)

    task._step = step  # the loss itself is RegressionTask's (tested there)
    return seen


def test_training_step_rotates_only_the_unit_vector_columns():
    torch.manual_seed(0)
    B, N, F = 4, 6, 6
    cols = (1, 3, 4)  # unit vector scattered among the other features
    x = torch.randn(B, N, F)
    x[..., list(cols)] = _unit(torch.rand(B, N) * 360, torch.rand(B, N) * 20 - 10)
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[1, 4:] = False  # padded slots
    x[1, 4:] = 0.0
    batch = {"x": x.clone(), "mask": mask.clone(), "y": torch.randn(B)}
    spec = MembersTarget(model=SetModelParams(hidden_dim=8, n_tuples_train=4, n_tuples_eval=4))
    task = build_task(spec, F, cols)
    assert isinstance(task, MemberRegressionTask) and task.rotate.columns == cols
    seen = _capture(task)
    task.training_step(batch, 0)
    (rot, stage), = seen  # fmt: skip
    assert stage == "train"
    assert torch.equal(batch["x"], x) and torch.equal(rot["mask"], mask)  # input not modified
    assert torch.equal(rot["y"], batch["y"])
    others = [c for c in range(F) if c not in cols]
    assert torch.equal(rot["x"][..., others], x[..., others])
    assert torch.equal(rot["x"][1, 4:], x[1, 4:])  # padding untouched
    u0, u1 = x[..., list(cols)], rot["x"][..., list(cols)]
    assert not torch.allclose(u0[mask], u1[mask], atol=1e-3)  # really rotated
    torch.testing.assert_close(u1[mask].norm(dim=-1), torch.ones(int(mask.sum())))
    for b in range(B):  # pairwise angular separations within a set are kept
        m = mask[b]
        torch.testing.assert_close(u1[b][m] @ u1[b][m].T, u0[b][m] @ u0[b][m].T, atol=1e-5,
                                   rtol=0)  # fmt: skip
    # one rotation per set: the rotation of set b maps its members' old vectors to the new
    for b in range(B):
        m = mask[b]
        sol = torch.linalg.lstsq(u0[b][m], u1[b][m]).solution
        torch.testing.assert_close(sol.T @ sol, torch.eye(3), atol=1e-4, rtol=0)
    # no rotation columns: the batch is passed on as it is
    plain = build_task(spec, F, None)
    seen = _capture(plain)
    plain.training_step(batch, 0)
    assert seen[0][0] is batch


def test_rotate_columns_of_the_prepared_features(prepared):
    folder = prepared / "members_redshift"
    feats = json.loads((folder / "manifest.json").read_text())["features"]
    assert _rotate_columns(folder, True) == tuple(feats.index(u) for u in UNIT_VECTOR)
    assert _rotate_columns(folder, False) is None


# --------------------------------------------------------------------------- training
def tiny_params() -> ClusterFinderParams:
    spec = MembersTarget(
        sampling=SamplingParams(num_star_per_sample=16, num_sample_per_snapshot=2),
        model=SetModelParams(hidden_dim=8, n_tuples_train=8, n_tuples_eval=16),
        training=TrainingParams(accelerator="cpu", batch_size=8, max_epochs=2, patience=5),
    )
    return ClusterFinderParams(seed=3, redshift=spec)


def test_train_members_then_predict(prepared, tmp_path):
    params = tiny_params()
    spec = params.redshift
    paths = StudyPaths(prepared=prepared, models=tmp_path / "models", live=tmp_path / "live")
    state = train_members(params, paths, "redshift")
    assert state["complete"]
    assert (paths.models / "best.ckpt").is_file() and (paths.models / "last.ckpt").is_file()
    folder = prepared / "members_redshift"
    counts = json.loads((folder / "manifest.json").read_text())["counts"]
    model = load_members_model(spec, folder, paths.models)
    assert not model.training
    for split in ("test", "real"):
        out = predict_sets(model, folder, split, spec.sampling, params.seed, batch_size=4)
        n = counts[split]
        assert set(out) == {"prediction", "target", "cluster_id", "n_members"}
        assert all(v.shape == (n,) for v in out.values())
        assert np.isfinite(out["prediction"]).all()
        assert (np.abs(out["prediction"]) < 10).all()  # physical redshifts, not model space
    assert out["cluster_id"].tolist() == [17551] and out["n_members"].tolist() == [513]
    assert out["target"][0] == pytest.approx(0.2287, abs=1e-4)
    # the same draws every time: predictions are reproducible
    again = predict_sets(model, folder, "test", spec.sampling, params.seed, batch_size=3)
    first = predict_sets(model, folder, "test", spec.sampling, params.seed, batch_size=4)
    np.testing.assert_allclose(again["prediction"], first["prediction"], rtol=1e-5)

    # Janossy evaluation is exactly invariant to the order of the members and the padding
    ds = SetDataModule(folder, spec.sampling, 4, 0).dataset("test")
    rows = ds.features[ds.ptr[0] : ds.ptr[1]][:12]
    n = len(rows)
    perm = np.random.default_rng(0).permutation(n)
    x = torch.zeros(3, 20, rows.shape[1])
    mask = torch.zeros(3, 20, dtype=torch.bool)
    x[0, :n], x[1, :n] = torch.from_numpy(rows), torch.from_numpy(rows[perm])
    x[2, 20 - n :] = torch.from_numpy(rows[perm[::-1]])  # reversed, after the padding
    mask[0, :n] = mask[1, :n] = mask[2, 20 - n :] = True
    with torch.no_grad():
        y = model(x, mask).squeeze(-1)
        alone = model(x[1:2, :n], mask[1:2, :n]).squeeze(-1)
    assert torch.isfinite(y).all()
    assert torch.equal(y[0], y[1]) and torch.equal(y[0], y[2])
    torch.testing.assert_close(alone[0], y[0], rtol=1e-6, atol=1e-7)


def test_train_members_errors(tmp_path):
    params = tiny_params()
    paths = StudyPaths(prepared=tmp_path / "nowhere", models=tmp_path / "m", live=tmp_path / "l")
    with pytest.raises(ValueError, match="which"):
        train_members(params, paths, "mass")
    with pytest.raises(InputError, match="run prepare first"):
        train_members(params, paths, "richness")
