"""cluster_age prepare: raw PHANGS-HST cutout file -> split, cropped, chunked HDF5 shards.

Steps (spec ``studies/cluster_age.md``):

1. open and validate ``raw_phangs_dataset.h5`` (any N; :func:`astrobatch.io.cutouts.open_cutouts`);
2. ``remove_extremes``: keep ``log_age_range`` (7 <= log_age <= 9.5 dex) before splitting;
3. split 70/15/15, seeded at random (upstream) or grouped by galaxy (no galaxy in two splits);
4. per split, write the shard ``{split}.h5`` block by block (:mod:`astrobatch.io.shards`,
   columns of :func:`astrobatch.data.layouts.cutout_layout`): central crop of ``crop_size``
   pixels of the raw cutouts (``images`` float32 (n, C, S, S), chunked
   ``(chunk_images, C, S, S)``), ``log_age``, ``cluster_id``, ``galaxy_id``, aperture
   ``photometry`` (Vega mag, measured on the full raw cutout) and, when the raw file has
   them, ``catalogue_magnitudes``;
5. ``manifest.json``: input file, counts, the cluster ids of each split, the training
   min/max of log age (the target scaling) and the per-split galaxies.

Nothing is half-written: the output folder is built aside and renamed into place.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from astrobatch.data.layouts import cutout_layout
from astrobatch.errors import InputError
from astrobatch.io.atomic import atomic_dir, write_json
from astrobatch.io.cutouts import open_cutouts
from astrobatch.io.shards import ShardWriter
from astrobatch.params import ImageSplitParams
from astrobatch.studies.cluster_age.params import ClusterAgeData
from astrobatch.studies.cluster_age.photometry import ZEROPOINTS_VEGA, aperture_magnitudes

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


def split_random(n: int, split: ImageSplitParams) -> dict[str, np.ndarray]:
    """Seeded random split of ``n`` items into train/val/test (sorted index arrays).

    Examples
    --------
    >>> s = split_random(20, ImageSplitParams())
    >>> [len(s[k]) for k in ("train", "val", "test")]
    [14, 3, 3]
    """
    perm = np.random.default_rng(split.seed).permutation(n)
    n_train = round(split.train * n)
    n_val = round(split.val * n)
    parts = {
        "train": perm[:n_train],
        "val": perm[n_train : n_train + n_val],
        "test": perm[n_train + n_val :],
    }
    return {k: np.sort(v) for k, v in parts.items()}


def split_by_galaxy(galaxy_ids: np.ndarray, split: ImageSplitParams) -> dict[str, np.ndarray]:
    """Grouped split: every galaxy in exactly one split, fractions of clusters near the targets.

    Galaxies are visited in a seeded random order and each goes to the split
    furthest below its target count of clusters.

    Parameters
    ----------
    galaxy_ids : numpy.ndarray of str, shape (n,)
    split : ImageSplitParams

    Returns
    -------
    dict of str to numpy.ndarray of int64
        Sorted indices per split.

    Raises
    ------
    InputError
        Fewer galaxies than non-empty splits.
    """
    names, inv, counts = np.unique(galaxy_ids, return_inverse=True, return_counts=True)
    wanted = [k for k in SPLITS if getattr(split, k) > 0]
    if len(names) < len(wanted):
        raise InputError(
            f"split by galaxy needs at least {len(wanted)} galaxies, the file has {len(names)} "
            f"({list(names)}); use data.split.by: random",
            key="galaxy_ids",
        )
    order = np.random.default_rng(split.seed).permutation(len(names))
    target = {k: getattr(split, k) * len(galaxy_ids) for k in wanted}
    have = dict.fromkeys(wanted, 0)
    assign: dict[str, list[int]] = {k: [] for k in SPLITS}
    for rank, g in enumerate(order):
        left = len(order) - rank
        empty = [k for k in wanted if not assign[k]]
        # keep one galaxy for every split still empty; otherwise fill the largest deficit
        pool = empty if len(empty) >= left else wanted
        k = max(pool, key=lambda s: (target[s] - have[s]) / max(target[s], 1e-9))
        assign[k].append(int(g))
        have[k] += int(counts[g])
    return {k: np.sort(np.flatnonzero(np.isin(inv, assign[k]))) for k in SPLITS}


def _crop(images: np.ndarray, size: int) -> np.ndarray:
    s = images.shape[-1]
    if size > s:
        raise InputError(f"crop_size {size} exceeds the cutout size {s}", key="data.crop_size")
    a = (s - size) // 2
    return images[..., a : a + size, a : a + size]


def prepare(
    data: ClusterAgeData,
    out_dir: str | Path,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Prepare the cutout shards of one raw file.

    Parameters
    ----------
    data : ClusterAgeData
        ``raw_path``, ``remove_extremes``, ``log_age_range``, ``split``,
        ``crop_size``, ``chunk_images``, aperture settings.
    out_dir : str or pathlib.Path
        Replaced atomically by a folder with ``{train,val,test}.h5`` and ``manifest.json``.
    progress : callable(done, total), optional

    Returns
    -------
    dict
        The manifest.

    Raises
    ------
    InputError
        Missing raw file, missing key or wrong shape in it, an empty split.
    """
    raw = open_cutouts(data.raw_path)
    log_age = raw.log_ages.astype(np.float64)
    lo, hi = data.log_age_range
    keep = np.flatnonzero((log_age >= lo) & (log_age <= hi)) if data.remove_extremes else None
    kept = np.arange(raw.n) if keep is None else keep
    if len(kept) < 3:
        raise InputError(
            f"only {len(kept)} cutouts left after remove_extremes {list(data.log_age_range)}",
            data.raw_path,
            "cluster_log_ages",
        )
    galaxies = np.asarray(raw.galaxy_ids)[kept]
    try:
        if data.split.by == "galaxy":
            local = split_by_galaxy(galaxies, data.split)
        else:
            local = split_random(len(kept), data.split)
    except InputError as err:
        raise err.in_file(data.raw_path) from None
    parts = {k: kept[v] for k, v in local.items()}
    for k in ("train", "test"):
        if len(parts[k]) == 0:
            raise InputError(f"the {k} split is empty", data.raw_path, "data.split")
    size = min(data.crop_size, raw.image_size)
    if data.crop_size > raw.image_size:
        log.warning("crop_size %d > cutout size %d: no crop", data.crop_size, raw.image_size)
    catalogue = raw.extra("catalogue_magnitudes")
    n_bands = raw.n_channels
    zps = np.asarray(ZEROPOINTS_VEGA[:n_bands]) if n_bands == len(ZEROPOINTS_VEGA) else None
    total, done = sum(len(v) for v in parts.values()), 0
    with atomic_dir(out_dir) as tmp:
        for name in SPLITS:
            idx = parts[name]
            n = len(idx)
            chunk = max(1, min(data.chunk_images, n))
            columns = cutout_layout(
                raw.n_channels, size, raw.bands, raw.image_units, data.aperture_radius_px,
                None if catalogue is None else catalogue.shape[1:],
            )  # fmt: skip
            with ShardWriter(tmp / f"{name}.h5", columns, chunk_rows=chunk,
                             attrs={"split": name}) as w:  # fmt: skip
                for a in range(0, n, chunk):
                    sel = idx[a : a + chunk]
                    block = raw.read_images(sel)
                    if zps is not None:
                        phot = aperture_magnitudes(
                            block, zps, data.aperture_radius_px, data.sky_annulus_px
                        )
                    else:
                        phot = np.full((len(sel), n_bands), np.nan, np.float32)
                    rows = {
                        "images": _crop(block, size),
                        "photometry": phot,
                        "log_age": log_age[sel].astype(np.float32),
                        "cluster_id": raw.cluster_ids[sel].astype(np.int64),
                        "galaxy_id": np.asarray(raw.galaxy_ids)[sel],
                    }
                    if catalogue is not None:
                        rows["catalogue_magnitudes"] = catalogue[sel].astype(np.float32)
                    w.append(rows)
                    done += len(sel)
                    if progress:
                        progress(done, total)
        train_age = log_age[parts["train"]]
        manifest = {
            "raw_path": str(data.raw_path),
            "n_raw": int(raw.n),
            "n_kept": len(kept),
            "removed_extremes": bool(data.remove_extremes),
            "log_age_range": list(data.log_age_range),
            "split_by": data.split.by,
            "split_seed": data.split.seed,
            "counts": {k: len(v) for k, v in parts.items()},
            "galaxies": {
                k: sorted(set(np.asarray(raw.galaxy_ids)[v].tolist())) for k, v in parts.items()
            },
            "cluster_ids": {k: raw.cluster_ids[v].astype(int).tolist() for k, v in parts.items()},
            "target_min": float(train_age.min()),
            "target_max": float(train_age.max()),
            "bands": list(raw.bands),
            "crop_size": int(size),
            "raw_image_size": int(raw.image_size),
            "has_catalogue_magnitudes": catalogue is not None,
        }
        write_json(tmp / "manifest.json", manifest)
    raw.close()
    return manifest
