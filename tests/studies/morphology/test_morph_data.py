"""morphology: the decision tree, both catalogue layouts, images, prepare's sets, bad input."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from astrobatch.errors import InputError
from astrobatch.io.image_files import read_image
from astrobatch.io.shards import open_shard
from astrobatch.studies.morphology.catalogues import read_catalogue, vote_arrays
from astrobatch.studies.morphology.prepare import assign_splits, prepare
from astrobatch.studies.morphology.schema import DECALS, GZ2, GZ2_TO_DECALS, shared_questions
from tests.studies.morphology.conftest import data_params


def test_tree_votes_never_exceed_their_parent_answer(surveys):
    counts = surveys["counts"]["b"]
    tot = DECALS.total_votes(counts)
    for q, parent in enumerate(DECALS.parent_answer):
        if parent >= 0:
            assert (tot[:, q] == counts[:, parent]).all()
    # a restricted tree keeps the links between kept questions only
    s = DECALS.restrict(["smooth-or-featured", "has-spiral-arms"])
    assert s.parent_answer.tolist() == [-1, -1]


def test_both_layouts_read_to_the_same_answers(surveys):
    a = read_catalogue(surveys["paths"]["a"], "a")
    b = read_catalogue(surveys["paths"]["b"], "b")
    assert (a.layout, b.layout) == ("gz2", "gz_decals")
    assert set(a.counts) == set(GZ2_TO_DECALS.values())
    assert set(b.counts) == set(DECALS.answer_names)
    shared = DECALS.restrict(shared_questions(["gz2", "gz_decals"])).answer_names
    fa, ca, wa = vote_arrays(a, shared)
    # GZ2 counts arrive under their DECaLS names: t04 spiral a08 -> has-spiral-arms_yes
    j = shared.index("has-spiral-arms_yes")
    src = surveys["counts"]["a"][:, GZ2.answer_names.index("t04_spiral_a08_spiral")]
    assert (ca[:, j] == src).all()
    # weights are the question's votes, zero exactly where the question was not asked
    q = DECALS.restrict(shared_questions(["gz2", "gz_decals"]))
    tot = q.total_votes(ca)[:, q.question_index]
    assert np.array_equal(wa, tot) and ((wa == 0) == (tot == 0)).all()
    assert np.allclose(fa[wa > 0], (ca / np.maximum(tot, 1))[wa > 0])


def test_fraction_only_catalogue_weighs_the_given_answers():
    real = read_catalogue("data/external/morphology/gz_decals_rings/catalog.csv", "real")
    assert real.n == 376 and not real.has_counts
    answers = DECALS.restrict(["smooth-or-featured", "disk-edge-on"]).answer_names
    f, c, w = vote_arrays(real, answers)
    given = answers.index("smooth-or-featured_featured-or-disk")
    assert (w[:, given] == 1).all() and w.sum() == 2 * real.n  # two of the five answers
    assert (c == 0).all() and np.isfinite(f).all()


def test_image_files_decode_to_uint8_planes(surveys, tmp_path):
    root = surveys["root"]
    for p in (root / "a/images/0.jpg", root / "b/images/0.png", root / "c/images/0.fits"):
        x = read_image(p, 12)
        assert x.shape == (3, 12, 12) and x.dtype == np.uint8
    bad = tmp_path / "bad.jpg"
    bad.write_bytes((root / "a/images/0.jpg").read_bytes()[:100])
    with pytest.raises(InputError, match=r"bad\.jpg"):
        read_image(bad, 12)
    real = sorted(shutil.os.listdir("data/external/morphology/gz_decals_rings/images"))[0]
    path = f"data/external/morphology/gz_decals_rings/images/{real}"
    x = read_image(path, 64)
    direct = np.asarray(Image.open(path).convert("RGB"), np.float64)
    assert x.shape == (3, 64, 64)  # resized, planes first, the colours kept
    assert np.allclose(x.mean(axis=(1, 2)), direct.mean(axis=(0, 1)), atol=1.5)


def test_prepare_sets_splits_and_mixing(surveys, tmp_path):
    out = tmp_path / "prep"
    m = prepare(data_params(surveys), out)
    assert m["answers"] == DECALS.restrict(shared_questions(["gz2", "gz_decals"])).answer_names
    assert set(m["sets"]) == {"train", "val", "test", "ood_c"}
    assert m["counts"]["ood_c"] == 20
    q = m["train_per_survey"]
    assert q["a"] == q["b"] > 0 and m["counts"]["train"] == q["a"] + q["b"]
    with open_shard(out / "train.h5") as f:
        imgs, ids, w = f["images"][:], f.read("galaxy_id"), f.read("weights")
        assert set(f.read("survey").tolist()) == {"a", "b"}
    assert imgs.dtype == np.uint8 and imgs.shape[1:] == (3, 16, 16)
    assert (w[:, 0] > 0).all()  # everyone is asked the first question
    # the split is the hash of the id: train galaxies are all train by assign_splits
    split = prepare.__globals__["SplitRatios"]()
    assert (assign_splits(ids, split) == 0).all()
    # unequal proportions with a fixed size: a subset of the larger run's training set
    m2 = prepare(data_params(surveys, train_surveys={"a": 0.75, "b": 0.25}, n_train=40),
                 tmp_path / "p2")  # fmt: skip
    assert m2["train_per_survey"] == {"a": 30, "b": 10}
    with open_shard(tmp_path / "p2" / "train.h5") as f:
        ids2 = set(f.read("galaxy_id").tolist())
    with open_shard(tmp_path / "p2" / "test.h5") as f, open_shard(out / "test.h5") as g:
        assert f.read("galaxy_id").tolist() == g.read("galaxy_id").tolist()  # same test set
    assert len(ids2) == 40
    # a share of 0 leaves a survey out of every set (single-survey training)
    m3 = prepare(data_params(surveys, train_surveys={"a": 0.0, "b": 1.0}), tmp_path / "p3")
    assert m3["surveys"]["train"] == m3["surveys"]["test"] == ["b"]
    assert m3["train_per_survey"] == {"b": m3["counts"]["train"]}


@pytest.mark.parametrize("case", ["missing_image", "corrupt_png", "fraction", "negative",
                                  "unknown_survey", "corrupt_fits"])  # fmt: skip
def test_bad_input_one_message_nothing_written(surveys, tmp_path, case):
    src = surveys["paths"]["b"].parent
    b = tmp_path / "b"
    shutil.copytree(src, b)
    cat = b / "gz_decals_catalogue.csv"
    df = pd.read_csv(cat)
    match = None
    if case == "missing_image":
        for i in (3, 4, 5):
            (b / f"images/{i}.png").unlink()
        match = "3 of 60 images not found"
    elif case == "corrupt_png":
        (b / "images/7.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        match = "7.png"
    elif case == "fraction":
        df.loc[2, "smooth-or-featured_smooth_fraction"] = 1.5
        match = "outside \\[0, 1\\]"
    elif case == "negative":
        df.loc[2, "disk-edge-on_yes"] = -1
        match = "negative"
    elif case == "unknown_survey":
        df["survey"] = "hsc"
        match = "unknown survey"
    else:  # a FITS image cut short, in the held-out survey's folder (copied too)
        c = tmp_path / "c"
        shutil.copytree(surveys["paths"]["c"].parent, c)
        (c / "images/2.fits").write_bytes((c / "images/2.fits").read_bytes()[: 2880 + 100])
        surveys = {"paths": dict(surveys["paths"], c=c / "gz_decals_catalogue.csv")}
        match = "2.fits"
    df.to_csv(cat, index=False)
    paths = dict(surveys["paths"], b=cat)
    out = tmp_path / "prep"
    out.mkdir()
    (out / "keep.txt").write_text("previous")
    with pytest.raises(InputError, match=match) as err:
        prepare(data_params({"paths": paths}), out)
    assert str(cat) in str(err.value) or case.startswith("corrupt")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".prep")]


def test_cli_bad_input_exits_2_with_one_message(surveys, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from astrobatch.cli import app

    monkeypatch.chdir(tmp_path)
    cat = surveys["paths"]["b"]
    (tmp_path / "params.yaml").write_text(
        "morphology:\n  data:\n    catalogues:\n"
        f"      - {{path: {cat}, survey: b}}\n"
        "    train_surveys: {b: 1.0}\n    ood_surveys: []\n"
        "  model:\n    weights_dir: no_such_weights\n"
    )
    r = CliRunner().invoke(app, ["morphology", "prepare", "--out", "prep"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["morphology", "train-head", "--prepared", "prep", "--out", "head"])
    assert r.exit_code == 2 and "no_such_weights" in r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "head").exists()
    (tmp_path / "params.yaml").write_text("morphology:\n  data:\n    train_surveys: {}\n")
    r = CliRunner().invoke(app, ["morphology", "prepare", "--out", "prep2"])
    assert r.exit_code == 2 and "train_surveys" in r.output
