"""cluster_finder prepare: catalogues + images -> image shards with boxes, member-set shards.

Reads the cluster catalogue, the members catalogue (DR8 public or redmapper-code names,
:mod:`~astrobatch.studies.cluster_finder.catalogues`), the HEALPix footprint and the image
list (CSV: ``file, ra, dec, pixel_scale_arcsec, size, kind``; ``file`` relative to the list's
folder; ``kind`` ``cluster`` or ``empty``; optional ``cluster_id``, the cluster a cluster image
is centred on), validates all of it, then writes (atomically, one
folder)::

    images_{train,val,test}.h5    rows = images: images float32 (n, 3, S, S), label, image_id,
                                  ra, dec, n_boxes; ragged group boxes: xyxy (m, 4) px of the
                                  prepared image, cluster_id, z, richness, inside_fraction
    members_redshift/{train,val,test[,real]}.h5, scalers.json, manifest.json
    members_richness/...          set shards (:func:`astrobatch.data.layouts.set_layout`)
    manifest.json                 counts, features, image geometry

Boxes (:func:`~astrobatch.studies.cluster_finder.geometry.boxes_from_members`): every member
of every cluster with a member in the image, placed by astropy spherical offsets from the
image centre; box = min/max of member pixels; secondary clusters kept when the box centre
is inside; boxes are clipped to the image and carry the fraction of the box inside it. The
native boxes are scaled to the prepared side S (block averaging by an integer factor f:
``x' = (x + 0.5) / f - 0.5``).

Images: each band ``b`` is stretched as ``asinh(I / (stretch σ_b))`` with σ_b the sky noise
(1.4826 MAD of the band) and divided by ``asinh(100)`` (a source 100σ above the sky at
``stretch = 1`` maps to about 1).

Splits: clusters (their image and their member set together) and empty fields by a salted
SHA-256 hash of the id, so a cluster is never in two splits.

Member sets: per cluster with at least ``min_members`` members, the ``features`` per member
(canonical columns, colours of neighbouring bands, the RA/DEC unit vector). The members
file's ``Z`` is the cluster's own redshift and is never read as a feature (the reader drops
it). Magnitudes, errors and colours are robust-scaled on the training split
(:class:`~astrobatch.data.scalers.GroupRobustScaler`, each feature its own group) and
clipped to ±10; the unit vector is left as is, so the sky-rotation augmentation stays a
rotation, and so are the probabilities and weights in [0, 1] (``p``, ``p_free``,
``theta_*``: mostly 0 or 1, an inter-quartile range of ~0). Targets: redshift
(``z_lambda``, or ``z_spec`` where measured), richness (log10 then standardised).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from astrobatch.data.layouts import SET_ELEMENTS, set_layout
from astrobatch.data.rotations import radec_to_unit
from astrobatch.data.scalers import GroupRobustScaler, TargetScaler, save_scalers
from astrobatch.data.splits import hash_splits
from astrobatch.errors import InputError
from astrobatch.io.atomic import atomic_dir, write_json
from astrobatch.io.errors import reading
from astrobatch.io.shards import Column, ShardWriter
from astrobatch.studies.cluster_finder.catalogues import (
    check_in_footprint,
    check_members,
    read_clusters,
    read_members,
)
from astrobatch.studies.cluster_finder.geometry import (
    boxes_from_members,
    min_separation_arcmin,
    read_footprint,
)
from astrobatch.studies.cluster_finder.params import (
    CLIP_SCALED,
    UNIT_VECTOR,
    UNSCALED,
    ClusterFinderData,
)

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")
TARGETS = ("redshift", "richness")
IMAGE_LIST_COLUMNS = ("file", "ra", "dec", "pixel_scale_arcsec", "size", "kind")
#: asinh of this many stretched sky sigmas maps to 1.
STRETCH_NORM = float(np.arcsinh(100.0))


def assign_splits(ids, train: float, val: float, salt: str) -> np.ndarray:
    """0 train, 1 val, 2 test per id (:func:`astrobatch.data.splits.hash_splits`).

    Parameters
    ----------
    ids : iterable of str, n of them
        ``cluster:<id>`` or ``empty:<image id>`` keys (an image and its cluster's member set
        share a key, so they share a split).
    train, val : float
        Split fractions (test takes the rest).
    salt : str

    Returns
    -------
    numpy.ndarray, shape (n,), int8
    """
    return hash_splits(ids, train, val, salt)


# ------------------------------------------------------------------------------- inputs
def read_image_list(path: str | Path) -> pd.DataFrame:
    """The image list CSV, validated (columns, kinds, sizes); ``file`` made absolute.

    Raises
    ------
    InputError
        Missing file or column, an empty list, an unknown ``kind``, sizes < 1, NaN
        positions, or image files that do not exist (the count and the first few).
    """
    path = Path(path)
    with reading(path, "image list"):
        df = pd.read_csv(path)
    missing = [c for c in IMAGE_LIST_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"missing columns {missing}; expected {list(IMAGE_LIST_COLUMNS)}",
                         path, missing[0])  # fmt: skip
    if len(df) == 0:
        raise InputError("empty image list: expected at least one image", path)
    bad = ~df["kind"].isin(["cluster", "empty"])
    if bad.any():
        raise InputError(f"{int(bad.sum())} rows with kind not in (cluster, empty), e.g. "
                         f"{df.loc[bad, 'kind'].iloc[0]!r}", path, "kind")  # fmt: skip
    for c in ("ra", "dec", "pixel_scale_arcsec", "size"):
        v = pd.to_numeric(df[c], errors="coerce").to_numpy(np.float64)
        if not np.isfinite(v).all() or (c in ("pixel_scale_arcsec", "size") and (v <= 0).any()):
            raise InputError("expected finite values (> 0 for scales and sizes)", path, c)
    if "cluster_id" in df.columns:
        cid = pd.to_numeric(df["cluster_id"], errors="coerce").to_numpy(np.float64)
        bad = (df["kind"] == "cluster").to_numpy() & ~(np.isfinite(cid) & (cid == np.round(cid)))
        if bad.any():
            first = df.loc[bad, "file"].iloc[0]
            raise InputError(f"{int(bad.sum())} cluster images without an integer cluster_id "
                             f"(e.g. {first})", path, "cluster_id")  # fmt: skip
    files = [(path.parent / f) for f in df["file"].astype(str)]
    absent = [str(f) for f in files if not f.is_file()]
    if absent:
        raise InputError(f"{len(absent)} image files missing, e.g. {absent[:3]}", path, "file")
    df = df.copy()
    df["path"] = [str(f) for f in files]
    df["image_id"] = [Path(f).stem for f in df["file"].astype(str)]
    return df


def read_cube(path: str | Path, size: int) -> np.ndarray:
    """One FITS image cube (3, size, size) float32, finite.

    Raises
    ------
    InputError
        Unreadable or corrupt FITS, another shape, or non-finite pixels.
    """
    from astropy.io import fits

    with reading(path, "FITS image"):
        data = fits.getdata(path, 0)
    if data is None or data.shape != (3, size, size):
        shape = None if data is None else data.shape
        raise InputError(f"image of shape {shape}, expected (3, {size}, {size}) (g, r, i)", path)
    data = np.asarray(data, np.float32)
    if not np.isfinite(data).all():
        raise InputError(f"{int((~np.isfinite(data)).sum())} non-finite pixels", path)
    return data


def stretch_image(cube: np.ndarray, factor: int, stretch: float) -> np.ndarray:
    """Block-average by ``factor`` and asinh-stretch each band (see the module docstring).

    Parameters
    ----------
    cube : numpy.ndarray, shape (3, S0, S0), float32
    factor : int
        S0 / S.
    stretch : float
        Softening in units of the band's sky sigma.

    Returns
    -------
    numpy.ndarray, shape (3, S, S), float32
    """
    c, s0, _ = cube.shape
    s = s0 // factor
    small = cube.reshape(c, s, factor, s, factor).mean(axis=(2, 4))
    med = np.median(small, axis=(1, 2), keepdims=True)
    mad = np.median(np.abs(small - med), axis=(1, 2), keepdims=True)
    sigma = np.maximum(1.4826 * mad, 1e-12)
    return (np.arcsinh((small - med) / (stretch * sigma)) / STRETCH_NORM).astype(np.float32)


def scale_boxes(boxes: np.ndarray, factor: int) -> np.ndarray:
    """Native pixel boxes to the block-averaged image: ``(x + 0.5) / f - 0.5``.

    Parameters
    ----------
    boxes : numpy.ndarray, shape (..., 4)
        ``(x_min, y_min, x_max, y_max)`` in native pixels (pixel centres at integers).
    factor : int
        Block-averaging factor f (native side / prepared side).

    Returns
    -------
    numpy.ndarray, shape (..., 4), float64
        The same boxes in prepared pixels (pixel centres at integers).
    """
    return (np.asarray(boxes, np.float64) + 0.5) / factor - 0.5


# ------------------------------------------------------------------------------- features
def member_features(members: pd.DataFrame, names: list[str]) -> np.ndarray:
    """Per-member feature matrix in ``names`` order.

    Parameters
    ----------
    members : pandas.DataFrame
        Canonical member columns (:func:`.catalogues.read_members`).
    names : list of str
        F names of :data:`~astrobatch.studies.cluster_finder.params.MEMBER_FEATURES`:
        canonical columns (mag, mag errors, P, P_FREE, θ_i, θ_r, R in h⁻¹ Mpc), colours of
        neighbouring bands (``g_r = mag_g - mag_r``, ...; mag) and the ICRS unit vector
        ``ux, uy, uz`` of RA/DEC.

    Returns
    -------
    numpy.ndarray, shape (M, F), float64
        Unscaled; may hold NaN where the catalogue does (checked by the caller).
    """
    m = members
    derived = {
        "g_r": lambda: m["mag_g"] - m["mag_r"],
        "r_i": lambda: m["mag_r"] - m["mag_i"],
        "i_z": lambda: m["mag_i"] - m["mag_z"],
        "u_g": lambda: m["mag_u"] - m["mag_g"],
    }
    unit = radec_to_unit(m["ra"].to_numpy(np.float64), m["dec"].to_numpy(np.float64))
    cols = []
    for n in names:
        if n in UNIT_VECTOR:
            cols.append(unit[:, UNIT_VECTOR.index(n)])
        elif n in derived:
            cols.append(derived[n]().to_numpy(np.float64))
        else:
            cols.append(m[n].to_numpy(np.float64))
    return np.stack(cols, axis=1) if cols else np.zeros((len(m), 0))


def _check_features(x: np.ndarray, names: list[str], path) -> None:
    bad = ~np.isfinite(x)
    if bad.any():
        j = int(np.flatnonzero(bad.any(axis=0))[0])
        raise InputError(f"{int(bad[:, j].sum())} members with a non-finite {names[j]} "
                         "(expected finite features)", path, names[j])  # fmt: skip


# ------------------------------------------------------------------------------- writers
def _write_images(path: Path, rows: list[dict], size: int, split: str) -> None:
    cols = {
        "images": Column(np.float32, (3, size, size)),  # bands g, r, i
        "label": Column(np.float32),
        "image_id": Column(str),
        "ra": Column(np.float64, units="deg"),
        "dec": Column(np.float64, units="deg"),
        "n_boxes": Column(np.int64),
    }
    groups = {"boxes": {
        "xyxy": Column(np.float32, (4,), names=("x_min", "y_min", "x_max", "y_max"),
                       units="pixel"),
        "cluster_id": Column(np.int64),
        "z": Column(np.float32),
        "richness": Column(np.float32),
        "inside_fraction": Column(np.float32),
    }}  # fmt: skip
    with ShardWriter(path, cols, groups, chunk_rows=64, attrs={"split": split}) as w:
        for a in range(0, len(rows), 64):
            block = rows[a : a + 64]
            counts = [len(r["boxes"]["xyxy"]) for r in block]
            ptr = np.concatenate([[0], np.cumsum(counts)])
            w.append(
                {
                    "images": np.stack([r["image"] for r in block]),
                    "label": [r["label"] for r in block],
                    "image_id": [r["image_id"] for r in block],
                    "ra": [r["ra"] for r in block],
                    "dec": [r["dec"] for r in block],
                    "n_boxes": counts,
                },
                {"boxes": (ptr, {k: np.concatenate([np.asarray(r["boxes"][k]).reshape(
                    -1, *groups["boxes"][k].shape) for r in block]) for k in groups["boxes"]})},
            )  # fmt: skip


def _write_sets(path: Path, sets: list[tuple[np.ndarray, dict]], features: list[str],
                y: np.ndarray, split: str) -> None:  # fmt: skip
    cols, groups = set_layout(
        features,
        {
            "cluster_id": np.int64,
            "z_lambda": np.float64,
            "richness": np.float64,
            "n_members": np.int64,
        },
    )
    with ShardWriter(path, cols, groups, attrs={"split": split}) as w:
        if not sets:
            return
        ptr = np.concatenate([[0], np.cumsum([len(x) for x, _ in sets])])
        w.append(
            {"target": y, **{k: [m[k] for _, m in sets] for k in
                             ("cluster_id", "z_lambda", "richness", "n_members")}},
            {SET_ELEMENTS: (ptr, {"features": np.concatenate([x for x, _ in sets])})},
        )  # fmt: skip


# ------------------------------------------------------------------------------- prepare
def prepare(params: ClusterFinderData, out_dir: str | Path,
            progress: Callable[[int, int], None] | None = None) -> dict:  # fmt: skip
    """Validate the raw sky and write the prepared folder (see the module docstring).

    Parameters
    ----------
    params : ClusterFinderData
    out_dir : str or pathlib.Path
        Replaced only on success.
    progress : callable, optional
        Called as ``progress(done, total)`` after each image.

    Returns
    -------
    dict
        The manifest (counts per split, features, image size).

    Raises
    ------
    InputError
        Any bad input (a catalogue missing a column, NaN magnitudes, members whose
        clusters are unknown, a cluster outside the footprint, an empty image list, a
        missing or corrupt image, an empty field nearer than ``min_separation_arcmin`` to a
        cluster, an image whose size is not a multiple of ``image_size``); nothing is
        written then.
    """
    p = params
    clusters = read_clusters(p.clusters.path, p.clusters.columns or None, layout=p.clusters.layout)
    members = read_members(p.members.path, p.members.columns or None, layout=p.members.layout)
    check_members(members, clusters, p.members.path)
    footprint = read_footprint(p.footprint)
    check_in_footprint(clusters, footprint, p.clusters.path)
    images = read_image_list(p.image_list)
    if "cluster_id" in images.columns:
        cid = images.loc[images["kind"] == "cluster", "cluster_id"].astype(np.int64)
        unknown = ~cid.isin(clusters["cluster_id"])
        if unknown.any():
            ids = cid[unknown].unique()[:5].tolist()
            raise InputError(f"{int(unknown.sum())} cluster images centred on clusters absent "
                             f"from the cluster catalogue (cluster ids {ids})", p.image_list,
                             "cluster_id")  # fmt: skip
    feats = list(p.features)
    x_all = member_features(members, feats)
    _check_features(x_all, feats, p.members.path)

    empty = images[images["kind"] == "empty"]
    if len(empty):
        sep = min_separation_arcmin(empty["ra"].to_numpy(float), empty["dec"].to_numpy(float),
                                    clusters["ra"].to_numpy(float),
                                    clusters["dec"].to_numpy(float))  # fmt: skip
        near = sep < p.min_separation_arcmin
        if near.any():
            raise InputError(
                f"{int(near.sum())} empty fields nearer than {p.min_separation_arcmin} arcmin "
                f"to a cluster (e.g. {empty['file'].iloc[int(np.flatnonzero(near)[0])]} at "
                f"{sep[near].min():.1f} arcmin)", p.image_list, "ra, dec",
            )  # fmt: skip
    sizes = images["size"].astype(int)
    if (sizes % p.image_size).any():
        raise InputError(f"image sizes {sorted(set(sizes))} are not multiples of image_size "
                         f"{p.image_size}", p.image_list, "size")  # fmt: skip

    z = clusters.set_index("cluster_id")["z_lambda"]
    lam = clusters.set_index("cluster_id")["richness"]
    mid = members["cluster_id"].to_numpy(np.int64)
    mra, mdec = members["ra"].to_numpy(np.float64), members["dec"].to_numpy(np.float64)

    # images: id of a cluster image = its nearest cluster's id (it is centred on it), so a
    # cluster's image and its member set share a split
    has_cid = "cluster_id" in images.columns
    rows = {s: [] for s in SPLITS}
    n_boxes_total = 0
    for k, im in enumerate(images.itertuples(index=False)):
        size = int(im.size)
        cube = read_cube(im.path, size)
        factor = size // p.image_size
        b = boxes_from_members(mid, mra, mdec, float(im.ra), float(im.dec),
                               float(im.pixel_scale_arcsec), size,
                               min_box_side_px=p.min_box_side_px)  # fmt: skip
        keep = b["inside_fraction"] >= p.min_inside_fraction
        xyxy = np.stack([b["x_min_clip"], b["y_min_clip"], b["x_max_clip"], b["y_max_clip"]],
                        axis=1)[keep]  # fmt: skip
        ids = b["cluster_id"][keep]
        if im.kind == "cluster":
            if has_cid:  # the list names the cluster the image is centred on
                key = int(im.cluster_id)
                if key not in set(b["cluster_id"].tolist()):
                    why = "no member inside, or its centre outside"
                    raise InputError(f"the box of cluster {key} lies outside the image ({why})"
                                     ": expected the image centred on it", im.path,
                                     "cluster_id")  # fmt: skip
            else:  # else the box nearest the image centre (all boxes when none is kept)
                allx = np.stack([b["x_min_clip"], b["y_min_clip"], b["x_max_clip"],
                                 b["y_max_clip"]], axis=1)  # fmt: skip
                if not len(allx):
                    raise InputError("a cluster image with no cluster inside it (its members "
                                     "outside the image?)", im.path)  # fmt: skip
                c = (size - 1) / 2
                key = int(
                    b["cluster_id"][
                        np.argmin(
                            np.hypot(
                                (allx[:, 0] + allx[:, 2]) / 2 - c, (allx[:, 1] + allx[:, 3]) / 2 - c
                            )
                        )
                    ]
                )
            split_key = f"cluster:{key}"
        else:
            split_key = f"empty:{im.image_id}"
        split = SPLITS[int(assign_splits([split_key], p.split.train, p.split.val,
                                         p.split.salt)[0])]  # fmt: skip
        n_boxes_total += len(ids)
        rows[split].append({
            "image": stretch_image(cube, factor, p.stretch),
            "label": 1.0 if im.kind == "cluster" else 0.0,
            "image_id": str(im.image_id), "ra": float(im.ra), "dec": float(im.dec),
            "boxes": {
                "xyxy": scale_boxes(xyxy, factor).astype(np.float32),
                "cluster_id": ids.astype(np.int64),
                "z": z.loc[ids].to_numpy(np.float32) if len(ids) else np.zeros(0, np.float32),
                "richness": (lam.loc[ids].to_numpy(np.float32) if len(ids)
                             else np.zeros(0, np.float32)),
                "inside_fraction": b["inside_fraction"][keep].astype(np.float32),
            },
        })  # fmt: skip
        if progress is not None:
            progress(k + 1, len(images))

    # member sets, split by the same hash of the cluster id
    order = np.argsort(mid, kind="stable")
    ids_sorted = mid[order]
    uniq, start = np.unique(ids_sorted, return_index=True)
    stop = np.append(start[1:], len(ids_sorted))
    csplit = assign_splits([f"cluster:{c}" for c in uniq], p.split.train, p.split.val,
                           p.split.salt)  # fmt: skip
    zs = clusters.set_index("cluster_id")["z_spec"]
    sets = {s: [] for s in SPLITS}
    for c, a, e, s in zip(uniq, start, stop, csplit, strict=True):
        if e - a < p.min_members:
            continue
        meta = {"cluster_id": int(c), "z_lambda": float(z.loc[c]), "richness": float(lam.loc[c]),
                "n_members": int(e - a), "z_spec": float(zs.loc[c])}  # fmt: skip
        sets[SPLITS[int(s)]].append((x_all[order[a:e]], meta))
    if not sets["train"]:
        raise InputError(f"no training cluster has >= {p.min_members} members",
                         p.members.path, "cluster_id")  # fmt: skip

    scaled = [f for f in feats if f not in UNSCALED]
    fit_rows = np.concatenate([x for x, _ in sets["train"]])
    idx = [feats.index(f) for f in scaled]
    scaler = GroupRobustScaler.fit(fit_rows[:, idx], scaled) if scaled else None
    real = _real_members(p, feats) if p.real_members else None

    def transform(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64).copy()
        if scaler is not None:
            x[:, idx] = np.clip(scaler.transform(x[:, idx]), -CLIP_SCALED, CLIP_SCALED)
        return x.astype(np.float32)

    def target(meta: dict, which: str) -> float:
        if which == "richness":
            return meta["richness"]
        if p.redshift_target == "z_spec" and np.isfinite(meta.get("z_spec", np.nan)):
            return meta["z_spec"]
        return meta["z_lambda"]

    counts_members = {s: len(v) for s, v in sets.items()}
    with atomic_dir(out_dir) as tmp:
        for s in SPLITS:
            _write_images(tmp / f"images_{s}.h5", rows[s], p.image_size, s)
        for which in TARGETS:
            folder = tmp / f"members_{which}"
            folder.mkdir()
            y_train = np.array([target(m, which) for _, m in sets["train"]])
            tscaler = TargetScaler.fit(y_train, log10=which == "richness")
            all_sets = dict(sets)
            if real is not None:
                all_sets["real"] = [real]
            for s, v in all_sets.items():
                y = tscaler.to_model_space(np.array([target(m, which) for _, m in v]))
                _write_sets(folder / f"{s}.h5", [(transform(x), m) for x, m in v], feats, y, s)
            save_scalers(folder / "scalers.json", scaler or GroupRobustScaler([], [], []),
                         tscaler)  # fmt: skip
            write_json(folder / "manifest.json", {
                "target": which, "features": feats, "unit_vector": list(UNIT_VECTOR),
                "counts": {s: len(v) for s, v in all_sets.items()},
                "redshift_target": p.redshift_target,
            })  # fmt: skip
        manifest = {
            "images": {s: len(rows[s]) for s in SPLITS},
            "clusters_per_split": {s: int(sum(r["label"] for r in rows[s])) for s in SPLITS},
            "boxes": n_boxes_total,
            "member_sets": counts_members,
            "image_size": p.image_size,
            "features": feats,
            "real_members": real is not None,
        }
        write_json(tmp / "manifest.json", manifest)
    log.info("images %s, member sets %s", manifest["images"], counts_members)
    return manifest


def _real_members(p: ClusterFinderData, feats: list[str]) -> tuple[np.ndarray, dict] | None:
    """The real cluster's members (one set) with its redMaPPer redshift and richness.

    The fixture's members file carries the cluster redshift in ``Z`` (never a feature) and
    no richness; both come from the real cluster catalogue (``real_clusters``, by
    ``MEM_MATCH_ID``). None (no real set) when the cluster is not in it.

    Raises
    ------
    InputError
        A members file of more than one cluster, or the readers' errors.
    """
    members = read_members(p.real_members)
    x = member_features(members, feats)
    _check_features(x, feats, p.real_members)
    ids = np.unique(members["cluster_id"].to_numpy(np.int64))
    if len(ids) != 1:
        raise InputError(f"members of {len(ids)} clusters; expected one real cluster",
                         p.real_members, "cluster_id")  # fmt: skip
    cid = int(ids[0])
    if not p.real_clusters:
        return None
    cl = read_clusters(p.real_clusters, require=("cluster_id", "z_lambda", "richness"))
    hit = cl[cl["cluster_id"] == cid]
    if not len(hit):
        log.warning("real cluster %d not in %s: no real set", cid, p.real_clusters)
        return None
    z_l, lam = float(hit["z_lambda"].iloc[0]), float(hit["richness"].iloc[0])
    zs = float(hit["z_spec"].iloc[0])
    return x, {"cluster_id": cid, "z_lambda": z_l, "richness": lam,
               "n_members": len(members), "z_spec": zs}  # fmt: skip
