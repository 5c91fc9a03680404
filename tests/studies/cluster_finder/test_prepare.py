"""cluster_finder prepare: a tiny simulated sky (12 clusters, 4 empty fields) to shards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import healpy as hp
import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.table import Table

from astrobatch.data.layouts import SET_ELEMENTS, SET_FEATURES, SET_REQUIRED
from astrobatch.data.rotations import radec_to_unit
from astrobatch.data.scalers import load_scalers
from astrobatch.errors import InputError
from astrobatch.io.shards import open_shard
from astrobatch.studies.cluster_finder.catalogues import read_clusters, read_members
from astrobatch.studies.cluster_finder.geometry import read_footprint, sky_to_pixel, write_footprint
from astrobatch.studies.cluster_finder.params import (
    CLIP_SCALED,
    UNIT_VECTOR,
    UNSCALED,
    CatalogueSpec,
    ClusterFinderData,
)
from astrobatch.studies.cluster_finder.prepare import assign_splits, prepare
from astrobatch.studies.cluster_finder.simulate import simulate_sky

ROOT = Path(__file__).resolve().parents[3]
DATA = ROOT / "data" / "external" / "cluster_finder"
CLUSTER_LIST = DATA / "redmapper_sdss_dr8_v5.10_clusters.csv.gz"
GALAXIES = DATA / "redmapper_test_dr8_gals_with_zred.fit"
REAL_MEMBERS = DATA / "redmapper_test_cluster_members.fit"
REAL_CLUSTERS = DATA / "redmapper_test_dr8_input_cluster_catalog.fit"
#: The sky's files are 64 px (rendered at 64 px); prepare block-averages them to 32 px, so
#: boxes are scaled by a factor of 2.
SKY = dict(n_clusters=12, n_empty=4, image_size=64, native_size=64, field_arcmin=13.5, seed=5)
SIZE = 32
FACTOR = SKY["image_size"] // SIZE
SPLITS = ("train", "val", "test")
TARGETS = ("redshift", "richness")

pytestmark = pytest.mark.skipif(
    not all(p.is_file() for p in (CLUSTER_LIST, GALAXIES, REAL_MEMBERS, REAL_CLUSTERS)),
    reason="real redMaPPer files not in data/external/cluster_finder",
)


def simulate_tiny(out: Path) -> Path:
    """The tiny sky of these tests (about 2 s)."""
    simulate_sky(out, cluster_list=CLUSTER_LIST, galaxy_table=GALAXIES, **SKY)
    return out


def data_params(sky: Path, **changes) -> ClusterFinderData:
    """Data params reading the sky in ``sky`` (and the real members of data/external)."""
    kw = dict(
        clusters=CatalogueSpec(path=str(sky / "clusters.fits")),
        members=CatalogueSpec(path=str(sky / "members.fits")),
        footprint=str(sky / "footprint.fits"),
        image_list=str(sky / "images.csv"),
        image_size=SIZE,
        real_members=str(REAL_MEMBERS),
        real_clusters=str(REAL_CLUSTERS),
    )
    return ClusterFinderData(**{**kw, **changes})


@pytest.fixture(scope="module")
def sky(tmp_path_factory) -> Path:
    return simulate_tiny(tmp_path_factory.mktemp("cf_prepare") / "sky")


@pytest.fixture(scope="module")
def prepared(sky, tmp_path_factory):
    params = data_params(sky)
    out = tmp_path_factory.mktemp("cf_prepared") / "prepared"
    calls = []
    manifest = prepare(params, out, progress=lambda done, total: calls.append((done, total)))
    return {"out": out, "manifest": manifest, "params": params, "progress": calls}


def read_h5(path: Path) -> dict:
    """Every dataset of a shard (``group/column`` keys, strings decoded), ``names`` of the
    features and the root attrs; plain h5py (:func:`open_shard` probes each new file in a
    subprocess, half a second each)."""
    out = {}
    with h5py.File(path, "r") as f:

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                string = h5py.check_string_dtype(obj.dtype)
                out[name] = np.array(obj.asstr()[()], dtype=str) if string else obj[()]
                if "names" in obj.attrs:
                    out[f"{name}:names"] = [str(n) for n in obj.attrs["names"]]

        f.visititems(visit)
        out["attrs"] = dict(f.attrs)
    return out


def read_images(path: Path) -> dict:
    """An image shard in memory (rows, boxes with their CSR pointer)."""
    d = read_h5(path)
    rows = {k: d[k] for k in ("images", "label", "image_id", "ra", "dec", "n_boxes")}
    rows["ptr"] = d["boxes/ptr"]
    rows["boxes"] = {k: d[f"boxes/{k}"] for k in
                     ("xyxy", "cluster_id", "z", "richness", "inside_fraction")}  # fmt: skip
    rows["attrs"] = d["attrs"]
    return rows


def read_sets(path: Path) -> dict:
    """A member-set shard in memory."""
    d = read_h5(path)
    out = {k: d[k] for k in ("target", "cluster_id", "z_lambda", "richness", "n_members")}
    out["features"] = d[SET_FEATURES]
    out["names"] = d[f"{SET_FEATURES}:names"]
    out["ptr"] = d[f"{SET_ELEMENTS}/ptr"]
    out["attrs"] = d["attrs"]
    return out


def image_list(sky: Path) -> pd.DataFrame:
    df = pd.read_csv(sky / "images.csv")
    df["image_id"] = [Path(f).stem for f in df["file"]]
    return df.set_index("image_id")


# --------------------------------------------------------------------------- outputs
def test_manifest_counts_add_up(sky, prepared):
    out, manifest, params = prepared["out"], prepared["manifest"], prepared["params"]
    assert json.loads((out / "manifest.json").read_text()) == manifest
    images = image_list(sky)
    members = read_members(sky / "members.fits")
    n_members = members["cluster_id"].value_counts()
    assert sum(manifest["images"].values()) == len(images) == 16
    assert sum(manifest["clusters_per_split"].values()) == (images["kind"] == "cluster").sum()
    shards = {s: read_images(out / f"images_{s}.h5") for s in SPLITS}
    for s in SPLITS:
        assert manifest["images"][s] == len(shards[s]["label"])
        assert manifest["clusters_per_split"][s] == int(shards[s]["label"].sum())
        assert manifest["clusters_per_split"][s] > 0  # every split gets clusters
        assert shards[s]["attrs"]["split"] == s
    assert manifest["boxes"] == sum(int(sh["n_boxes"].sum()) for sh in shards.values())
    want_sets = int((n_members >= params.min_members).sum())
    assert sum(manifest["member_sets"].values()) == want_sets
    assert all(manifest["member_sets"][s] > 0 for s in SPLITS)
    assert manifest["image_size"] == SIZE and manifest["features"] == params.features
    assert manifest["real_members"] is True
    for which in TARGETS:
        sub = json.loads((out / f"members_{which}" / "manifest.json").read_text())
        assert sub["target"] == which and sub["features"] == params.features
        assert sub["unit_vector"] == list(UNIT_VECTOR)
        assert sub["counts"] == {**manifest["member_sets"], "real": 1}
        for s in sub["counts"]:
            sets = read_sets(out / f"members_{which}" / f"{s}.h5")
            assert len(sets["target"]) == sub["counts"][s]
    assert prepared["progress"] == [(k, 16) for k in range(1, 17)]
    assert not list(out.parent.glob(".prepared.*"))  # the temporary folder was swapped in


def test_image_shards_labels_and_boxes(sky, prepared):
    out, params = prepared["out"], prepared["params"]
    images = image_list(sky)
    clusters = read_clusters(sky / "clusters.fits").set_index("cluster_id")
    for s in SPLITS:
        sh = read_images(out / f"images_{s}.h5")
        n = len(sh["label"])
        assert sh["images"].dtype == np.float32 and sh["images"].shape == (n, 3, SIZE, SIZE)
        assert np.isfinite(sh["images"]).all()
        assert np.array_equal(np.diff(sh["ptr"]), sh["n_boxes"])
        b = sh["boxes"]
        assert b["xyxy"].shape == (sh["ptr"][-1], 4)
        for i, image_id in enumerate(sh["image_id"]):
            row = images.loc[image_id]
            assert sh["ra"][i] == pytest.approx(row.ra) and sh["dec"][i] == pytest.approx(row.dec)
            a, e = sh["ptr"][i], sh["ptr"][i + 1]
            if row.kind == "empty":
                assert sh["label"][i] == 0 and sh["n_boxes"][i] == 0
                continue
            assert sh["label"][i] == 1 and sh["n_boxes"][i] >= 1
            assert row.cluster_id in b["cluster_id"][a:e]  # its own cluster has a box
        xyxy = b["xyxy"]
        assert (xyxy >= -0.5).all() and (xyxy <= SIZE - 0.5).all()
        assert (xyxy[:, 2] > xyxy[:, 0]).all() and (xyxy[:, 3] > xyxy[:, 1]).all()
        f = b["inside_fraction"]
        assert ((f > 0) & (f <= 1) & (f >= params.min_inside_fraction)).all()
        ids = b["cluster_id"]
        np.testing.assert_allclose(b["z"], clusters.loc[ids, "z_lambda"], rtol=1e-6)
        np.testing.assert_allclose(b["richness"], clusters.loc[ids, "richness"], rtol=1e-6)


def _box_by_hand(members, cluster_id, row, min_side):
    """The box of ``cluster_id`` in image ``row`` (native px), clipped, and its inside fraction."""
    m = members[members["cluster_id"] == cluster_id]
    size = int(row["size"])
    x, y = sky_to_pixel(m["ra"], m["dec"], row.ra, row.dec, row.pixel_scale_arcsec, size)
    box = np.array([x.min(), y.min(), x.max(), y.max()])
    for lo, hi in ((0, 2), (1, 3)):  # widened to the smallest side about its centre
        if box[hi] - box[lo] < min_side:
            mid = (box[lo] + box[hi]) / 2
            box[lo], box[hi] = mid - min_side / 2, mid + min_side / 2
    clipped = np.clip(box, -0.5, size - 0.5)
    area = (box[2] - box[0]) * (box[3] - box[1])
    return clipped, (clipped[2] - clipped[0]) * (clipped[3] - clipped[1]) / area


def test_boxes_recomputed_by_hand_from_the_members(sky, prepared):
    out, params = prepared["out"], prepared["params"]
    images = image_list(sky)
    members = read_members(sky / "members.fits")
    checked = 0
    for s in SPLITS:
        sh = read_images(out / f"images_{s}.h5")
        for i, image_id in enumerate(sh["image_id"]):
            row = images.loc[image_id]
            assert row["size"] == FACTOR * SIZE
            for j in range(sh["ptr"][i], sh["ptr"][i + 1]):
                cid = sh["boxes"]["cluster_id"][j]
                native, inside = _box_by_hand(members, cid, row, params.min_box_side_px)
                want = (native + 0.5) / FACTOR - 0.5
                np.testing.assert_allclose(sh["boxes"]["xyxy"][j], want, atol=1e-4)
                assert sh["boxes"]["inside_fraction"][j] == pytest.approx(inside, rel=1e-5)
                checked += 1
    assert checked == prepared["manifest"]["boxes"] >= 12


def test_images_are_block_averaged_and_asinh_stretched(sky, prepared):
    out, params = prepared["out"], prepared["params"]
    sh = read_images(out / "images_train.h5")
    row = image_list(sky).loc[sh["image_id"][0]]
    cube = fits.getdata(sky / row.file).astype(np.float64)
    small = cube.reshape(3, SIZE, FACTOR, SIZE, FACTOR).mean(axis=(2, 4))
    med = np.median(small, axis=(1, 2), keepdims=True)
    sigma = 1.4826 * np.median(np.abs(small - med), axis=(1, 2), keepdims=True)
    want = np.arcsinh((small - med) / (params.stretch * sigma)) / np.arcsinh(100.0)
    np.testing.assert_allclose(sh["images"][0], want, rtol=1e-4, atol=1e-5)


def test_cluster_image_and_member_set_share_a_split(sky, prepared):
    out = prepared["out"]
    images = image_list(sky)
    image_split, set_split = {}, {}
    for s in SPLITS:
        for image_id in read_images(out / f"images_{s}.h5")["image_id"]:
            assert image_id not in image_split  # disjoint
            image_split[image_id] = s
        for which in TARGETS:
            for cid in read_sets(out / f"members_{which}" / f"{s}.h5")["cluster_id"]:
                assert set_split.setdefault((which, int(cid)), s) == s
    assert sorted(image_split) == sorted(images.index)  # every image, once
    n_sets = sum(prepared["manifest"]["member_sets"].values())
    assert len(set_split) == 2 * n_sets  # every set, once per target
    for which in TARGETS:  # both targets split the clusters alike
        assert {c: s for (w, c), s in set_split.items() if w == which} == {
            c: s for (w, c), s in set_split.items() if w == "redshift"
        }
    salt = prepared["params"].split
    for image_id, row in images[images["kind"] == "cluster"].iterrows():
        cid = int(row.cluster_id)
        assert image_split[image_id] == set_split[("redshift", cid)]
        k = assign_splits([f"cluster:{cid}"], salt.train, salt.val, salt.salt)[0]
        assert image_split[image_id] == SPLITS[k]


def test_member_set_features_and_targets(sky, prepared):
    out, params = prepared["out"], prepared["params"]
    feats = params.features
    clusters = read_clusters(sky / "clusters.fits").set_index("cluster_id")
    members = read_members(sky / "members.fits")
    unit = [feats.index(u) for u in UNIT_VECTOR]
    scaled = [i for i, f in enumerate(feats) if f not in UNSCALED]
    for which in TARGETS:
        folder = out / f"members_{which}"
        fscaler, tscaler = load_scalers(folder / "scalers.json")
        assert tscaler.log10 is (which == "richness")
        assert fscaler.features == [feats[i] for i in scaled]
        for s in (*SPLITS, "real"):
            sets = read_sets(folder / f"{s}.h5")
            assert sets["names"] == feats and sets["attrs"]["split"] == s
            assert not {"z", "Z"} & set(sets["names"])
            x = sets["features"]
            assert x.dtype == np.float32 and np.isfinite(x).all()
            np.testing.assert_allclose(np.linalg.norm(x[:, unit], axis=1), 1.0, atol=1e-6)
            assert (np.abs(x[:, scaled]) <= CLIP_SCALED).all()
            assert np.array_equal(np.diff(sets["ptr"]), sets["n_members"])
            assert (sets["n_members"] >= params.min_members).all()
            phys = tscaler.to_physical(sets["target"])
            if s == "real":
                continue
            cid = sets["cluster_id"]
            if which == "redshift":
                np.testing.assert_allclose(phys, clusters.loc[cid, "z_lambda"], atol=1e-6)
            else:
                np.testing.assert_allclose(phys, clusters.loc[cid, "richness"], rtol=1e-5)
                np.testing.assert_allclose(
                    sets["target"],
                    (np.log10(clusters.loc[cid, "richness"]) - tscaler.mean) / tscaler.std,
                    atol=1e-5,
                )
            np.testing.assert_allclose(sets["z_lambda"], clusters.loc[cid, "z_lambda"])
            np.testing.assert_allclose(sets["richness"], clusters.loc[cid, "richness"])
            # the features of each set are its members' (file order), the magnitudes
            # robust-scaled: the inverse transform gives them back where not clipped
            for k, c in enumerate(cid):
                m = members[members["cluster_id"] == c]
                xs = x[sets["ptr"][k] : sets["ptr"][k + 1]]
                assert len(xs) == len(m) == sets["n_members"][k]
                np.testing.assert_allclose(
                    xs[:, unit], radec_to_unit(m["ra"].to_numpy(), m["dec"].to_numpy()),
                    atol=1e-6,
                )  # fmt: skip
                for f in ("p", "p_free", "theta_i", "theta_r"):
                    np.testing.assert_allclose(xs[:, feats.index(f)], m[f], atol=1e-6)
                raw = fscaler.inverse_transform(xs[:, scaled])
                ok = np.abs(xs[:, scaled]) < CLIP_SCALED
                want = np.stack([m["mag_g"], m["magerr_i"], m["mag_g"] - m["mag_r"]], axis=1)
                cols = [fscaler.features.index(f) for f in ("mag_g", "magerr_i", "g_r")]
                sub = ok[:, cols]
                assert sub.any()
                np.testing.assert_allclose(raw[:, cols][sub], want[sub], atol=1e-4)
        # robust scaling fitted on the training split: its medians are 0
        train = read_sets(folder / "train.h5")["features"]
        np.testing.assert_allclose(np.median(train[:, scaled], axis=0), 0.0, atol=1e-5)


def test_shards_are_valid_shards_of_their_layouts(prepared):
    out, feats = prepared["out"], prepared["params"].features
    with open_shard(out / "images_val.h5", require=("images", "label", "boxes/xyxy")) as r:
        assert r.names("boxes/xyxy") == ["x_min", "y_min", "x_max", "y_max"]
        assert r.units("boxes/xyxy") == "pixel" and r.units("ra") == "deg"
        assert r.info["groups"]["boxes"]["n_elements"] == r.ptr("boxes")[-1]
    with open_shard(out / "members_richness" / "val.h5", require=SET_REQUIRED) as r:
        assert r.names(SET_FEATURES) == feats and r.attrs["split"] == "val"


def test_real_members_set(prepared):
    out = prepared["out"]
    real_cat = Table.read(REAL_CLUSTERS)
    row = real_cat[real_cat["mem_match_id"] == 17551]
    assert len(row) == 1
    n_real = len(Table.read(REAL_MEMBERS))
    for which in TARGETS:
        path = out / f"members_{which}" / "real.h5"
        assert path.is_file()
        sets = read_sets(path)
        assert sets["ptr"].tolist() == [0, 513] and sets["n_members"].tolist() == [513]
        assert n_real == 513 and sets["cluster_id"].tolist() == [17551]
        assert sets["z_lambda"][0] == pytest.approx(0.2287, abs=1e-4)
        assert sets["z_lambda"][0] == pytest.approx(float(row["z_lambda"][0]))
        assert sets["richness"][0] == pytest.approx(float(row["lambda"][0]))
        _, tscaler = load_scalers(out / f"members_{which}" / "scalers.json")
        want = sets["z_lambda"][0] if which == "redshift" else sets["richness"][0]
        assert tscaler.to_physical(sets["target"])[0] == pytest.approx(want, rel=1e-5)


# --------------------------------------------------------------------------- bad input
def _edit_table(path: Path, edit) -> None:
    t = Table.read(path)
    edit(t)
    t.write(path, overwrite=True)


def _drop_column(sky):
    _edit_table(sky / "members.fits", lambda t: t.remove_column("MODEL_MAG_I"))
    return sky / "members.fits", "MODEL_MAG_I", "missing required column", {}


def _orphan_members(sky):
    def edit(t):
        t["ID"][:3] = 99999999

    _edit_table(sky / "members.fits", edit)
    return sky / "members.fits", "cluster_id", "99999999", {}


def _nan_magnitude(sky):
    def edit(t):
        t["MODEL_MAG_R"][5] = np.nan

    _edit_table(sky / "members.fits", edit)
    return sky / "members.fits", "MODEL_MAG_R", "NaN", {}


def _empty_image_list(sky):
    pd.read_csv(sky / "images.csv").iloc[:0].to_csv(sky / "images.csv", index=False)
    return sky / "images.csv", None, "empty image list", {}


def _missing_image(sky):
    (sky / "images" / "empty_0001.fits").unlink()
    return sky / "images.csv", "file", "1 image files missing.*empty_0001", {}


def _empty_field_on_a_cluster(sky):
    df = pd.read_csv(sky / "images.csv")
    c = read_clusters(sky / "clusters.fits").iloc[0]
    i = df.index[df["kind"] == "empty"][0]
    df.loc[i, ["ra", "dec"]] = [c.ra, c.dec + 0.05]  # 3' from the cluster
    df.to_csv(sky / "images.csv", index=False)
    return sky / "images.csv", "ra, dec", r"nearer than 20\.0 arcmin", {}


def _cluster_outside_footprint(sky):
    m = read_footprint(sky / "footprint.fits")
    c = read_clusters(sky / "clusters.fits").iloc[0]
    cid = int(c.cluster_id)
    m[hp.ang2pix(hp.npix2nside(len(m)), c.ra, c.dec, lonlat=True)] = False
    write_footprint(sky / "footprint.fits", m)
    return (
        sky / "clusters.fits",
        "ra, dec",
        rf"outside the survey footprint \(cluster ids \[{cid}\]\)",
        {},
    )


def _corrupt_image(sky):
    f = sky / "images" / "empty_0002.fits"
    f.write_bytes(f.read_bytes()[:20000])  # truncated in the data
    return f, None, "cannot read the FITS image", {}


def _size_not_a_multiple(sky):
    return sky / "images.csv", "size", "not multiples of image_size 24", {"image_size": 24}


def _box_outside_the_image(sky):
    df = pd.read_csv(sky / "images.csv")
    i = df.index[df["kind"] == "cluster"][0]
    df.loc[i, "dec"] = df.loc[i, "dec"] + 1.0  # 1 deg away from its cluster
    df.to_csv(sky / "images.csv", index=False)
    return sky / "images" / Path(df.loc[i, "file"]).name, "cluster_id", "lies outside the image", {}


BAD = [_box_outside_the_image, _drop_column, _orphan_members, _nan_magnitude,
       _empty_image_list, _missing_image, _empty_field_on_a_cluster,
       _cluster_outside_footprint, _corrupt_image, _size_not_a_multiple]  # fmt: skip


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore:.*truncated.*")
@pytest.mark.parametrize("case", BAD, ids=[c.__name__.strip("_") for c in BAD])
def test_bad_input_raises_and_writes_nothing(sky, tmp_path, case):
    copy = tmp_path / "sky"
    shutil.copytree(sky, copy)
    path, key, match, changes = case(copy)
    params = data_params(copy, **changes)
    out = tmp_path / "prepared"
    with pytest.raises(InputError, match=match) as err:
        prepare(params, out)
    assert err.value.path == str(path) and str(path) in str(err.value)
    assert err.value.key == key
    if key is not None:
        assert f"key {key}" in str(err.value)
    assert not out.exists()
    # an existing output is left as it was
    out.mkdir()
    (out / "marker.txt").write_text("previous")
    with pytest.raises(InputError, match=match):
        prepare(params, out)
    assert [p.name for p in out.iterdir()] == ["marker.txt"]
    assert (out / "marker.txt").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared", "sky"]
