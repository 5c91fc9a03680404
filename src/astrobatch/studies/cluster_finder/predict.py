"""cluster_finder predict: redshift and richness of real clusters from their member catalogues.

``astrobatch cluster-finder predict --model models/cluster_finder --input <members.fit>
--input <clusters.fit> --out reports/real/cluster_finder.ecsv`` applies the two member-set
models (``<model>/redshift/best.ckpt``, ``<model>/richness/best.ckpt``) to every cluster of a
redMaPPer member catalogue. The image models (classifier, detector) need images, and the real
samples have none: predict is for member catalogues only.

Inputs: FITS (or CSV) tables, given as files or as one folder of ``*.fit``/``*.fits``
tables, told apart by their columns
(:func:`~astrobatch.studies.cluster_finder.catalogues.catalogue_kind`): one or more member
catalogues and exactly one cluster catalogue, in the dr8 public layout or the redmapper
code's layout (auto-detected). They are validated as ``prepare`` validates them
(:func:`~astrobatch.studies.cluster_finder.catalogues.read_members`,
:func:`~astrobatch.studies.cluster_finder.catalogues.read_clusters`,
:func:`~astrobatch.studies.cluster_finder.catalogues.check_members`): a missing column, NaN
magnitudes or members whose cluster is not in the catalogue raise an
:class:`~astrobatch.errors.InputError` naming the file and the column. The cluster
catalogue needs ``cluster_id``, ``z_lambda`` and ``richness`` (redMaPPer's values, written
as the ``*_reference`` columns); its positions are optional.

Features: per member, the features of the training manifest that the train stage keeps in
each model folder (``<model>/<target>/manifest.json``: the ones the model was trained on),
computed by
:func:`~astrobatch.studies.cluster_finder.prepare.member_features` (the members' own ``Z``
is never read), robust-scaled with the training split's scalers
(``<model>/<target>/scalers.json``, a copy of the prepared one) and clipped to
``±CLIP_SCALED`` as in prepare. Each cluster is one set, predicted by
:func:`~astrobatch.studies.cluster_finder.members.predict_sets` with
``<target>.sampling`` and ``seed`` (the fixed seeded draws of evaluation, averaged in model
space): the same members give the same values as the test split's evaluation would.

:func:`real_metrics` turns the table into the ``real/...`` metrics of ``evaluate``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from astrobatch.errors import InputError
from astrobatch.studies.cluster_finder.params import (
    CLIP_SCALED,
    UNSCALED,
    ClusterFinderParams,
)

__all__ = [
    "TABLE_SUFFIXES",
    "load_member_sets",
    "predict",
    "real_metrics",
    "scale_features",
    "split_inputs",
]

#: Suffixes of the tables a folder given as ``--input`` is searched for.
TABLE_SUFFIXES = (".fit", ".fits", ".fit.gz", ".fits.gz")
#: Required cluster-catalogue columns of predict (the reference values).
CLUSTER_REQUIRE = ("cluster_id", "z_lambda", "richness")
#: Target -> (prediction column, catalogue column of its reference).
COLUMNS = {"redshift": ("z_lambda", "z_lambda"), "richness": ("lambda", "richness")}


def split_inputs(inputs: Sequence[str | Path]) -> tuple[list[Path], Path]:
    """The member catalogues and the cluster catalogue among ``inputs``.

    Parameters
    ----------
    inputs : sequence of str or pathlib.Path
        Files, or folders whose :data:`TABLE_SUFFIXES` tables (not recursive) are taken.

    Returns
    -------
    members : list of pathlib.Path
        One or more member catalogues, in input order.
    clusters : pathlib.Path
        The cluster catalogue.

    Raises
    ------
    InputError
        A folder without tables, a table of neither kind, no member catalogue, or not
        exactly one cluster catalogue (the message lists the files of each kind).
    """
    from astrobatch.studies.cluster_finder.catalogues import catalogue_kind

    files: list[Path] = []
    for path in map(Path, inputs):
        if path.is_dir():
            found = sorted(f for f in path.iterdir()
                           if f.is_file() and f.name.lower().endswith(TABLE_SUFFIXES))  # fmt: skip
            if not found:
                raise InputError(f"no FITS table ({', '.join(TABLE_SUFFIXES)}) in the folder",
                                 path, "--input")  # fmt: skip
            files += found
        else:
            files.append(path)
    kinds: dict[str, list[Path]] = {"members": [], "clusters": []}
    for f in files:
        kinds[catalogue_kind(f)].append(f)
    names = {k: [str(f) for f in v] for k, v in kinds.items()}
    if not kinds["members"]:
        raise InputError(f"no member catalogue among the inputs (cluster catalogues: "
                         f"{names['clusters']}); expected a redMaPPer members table with P, "
                         "THETA_I, THETA_R and magnitudes", files[0], "--input")  # fmt: skip
    if len(kinds["clusters"]) != 1:
        raise InputError(f"{len(kinds['clusters'])} cluster catalogues among the inputs "
                         f"({names['clusters']}); expected exactly one, with the members' "
                         "cluster ids, Z_LAMBDA and LAMBDA", files[0], "--input")  # fmt: skip
    return kinds["members"], kinds["clusters"][0]


def load_member_sets(
    params: ClusterFinderParams, inputs: Sequence[str | Path], features: Sequence[str]
) -> tuple[list[np.ndarray], pd.DataFrame]:
    """Read and validate the inputs; one unscaled feature set per cluster with members.

    Parameters
    ----------
    params : ClusterFinderParams
        Reads ``data.min_members`` (the fewest members a set may have, as in prepare).
    inputs : sequence of str or pathlib.Path
        As :func:`split_inputs`.
    features : sequence of str
        F feature names (the prepared manifest's).

    Returns
    -------
    sets : list of numpy.ndarray, shape (n_i, F), float64
        The members of each cluster (file order), unscaled.
    clusters : pandas.DataFrame
        One row per set, by increasing cluster id: ``cluster_id`` (int64), ``ra``,
        ``dec`` (deg: the catalogue's, or where it has none the member at the smallest
        ``r``, redMaPPer's central galaxy), ``n_members``, ``z_lambda``, ``richness``
        (the catalogue's), ``members_file`` (str).

    Raises
    ------
    InputError
        The readers' and cross-checks' errors (missing column, NaN magnitudes or features,
        members of clusters absent from the catalogue), a cluster in two member files, or
        clusters with fewer than ``data.min_members`` members (the file, the members found
        and the members needed).
    """
    from astrobatch.studies.cluster_finder.catalogues import (
        check_members,
        read_clusters,
        read_members,
    )
    from astrobatch.studies.cluster_finder.prepare import _check_features, member_features

    member_files, cluster_file = split_inputs(inputs)
    catalogue = read_clusters(cluster_file, require=CLUSTER_REQUIRE).set_index("cluster_id")
    feats = list(features)
    need = params.data.min_members
    sets: list[np.ndarray] = []
    rows: list[dict] = []
    seen: dict[int, Path] = {}
    for path in member_files:
        members = read_members(path)
        check_members(members, catalogue.reset_index(), path)
        x = member_features(members, feats)
        _check_features(x, feats, path)
        mid = members["cluster_id"].to_numpy(np.int64)
        ids, counts = np.unique(mid, return_counts=True)
        small = counts < need
        if small.any():
            show = ", ".join(f"{i}: {n}" for i, n in zip(ids[small][:5], counts[small][:5],
                                                          strict=True))  # fmt: skip
            raise InputError(
                f"{int(small.sum())} cluster(s) with too few members (cluster id: members "
                f"found {show}); needed at least {need} members per cluster "
                "(cluster_finder.data.min_members)", path, "cluster_id",
            )  # fmt: skip
        again = [int(i) for i in ids if int(i) in seen]
        if again:
            raise InputError(f"clusters {again[:5]} also have members in {seen[again[0]]}; "
                             "expected each cluster's members in one file", path,
                             "cluster_id")  # fmt: skip
        r = members["r"].to_numpy(np.float64)
        for cid in ids:
            sel = np.flatnonzero(mid == cid)
            seen[int(cid)] = path
            c = catalogue.loc[cid]
            ra, dec = float(c["ra"]), float(c["dec"])
            if not (np.isfinite(ra) and np.isfinite(dec)):
                centre = sel[int(np.argmin(np.where(np.isfinite(r[sel]), r[sel], np.inf)))]
                ra, dec = float(members["ra"].iloc[centre]), float(members["dec"].iloc[centre])
            sets.append(x[sel])
            rows.append({"cluster_id": int(cid), "ra": ra, "dec": dec, "n_members": len(sel),
                         "z_lambda": float(c["z_lambda"]), "richness": float(c["richness"]),
                         "members_file": str(path)})  # fmt: skip
    order = np.argsort([r["cluster_id"] for r in rows], kind="stable")
    return [sets[i] for i in order], pd.DataFrame([rows[i] for i in order])


def scale_features(x: np.ndarray, features: Sequence[str], scaler) -> np.ndarray:
    """Scale member features as prepare does: robust scaling, clipped to ``±CLIP_SCALED``.

    Parameters
    ----------
    x : numpy.ndarray, shape (n, F), float
        Unscaled features (:func:`~astrobatch.studies.cluster_finder.prepare.member_features`).
    features : sequence of str
        The F names of the columns of ``x``.
    scaler : astrobatch.data.scalers.GroupRobustScaler
        The training split's scaler of the features not in ``UNSCALED``.

    Returns
    -------
    numpy.ndarray, shape (n, F), float32
        The unit vector and the [0, 1] weights unchanged, the other features scaled.

    Raises
    ------
    InputError
        A scaler of other features than those (the model of another run).
    """
    feats = list(features)
    scaled = [f for f in feats if f not in UNSCALED]
    if list(scaler.features) != scaled:
        raise InputError(f"the scaler scales {list(scaler.features)}, expected {scaled} (the "
                         "scaled features of the manifest)", key="scalers.json")  # fmt: skip
    x = np.asarray(x, np.float64).copy()
    if scaled:
        idx = [feats.index(f) for f in scaled]
        x[:, idx] = np.clip(scaler.transform(x[:, idx]), -CLIP_SCALED, CLIP_SCALED)
    return x.astype(np.float32)


def _model_files(folder: Path, which: str) -> list[str]:
    """The features of one model folder, after checking it holds what predict reads."""
    import json

    for name in ("best.ckpt", "manifest.json", "scalers.json"):
        if not (folder / name).is_file():
            raise InputError(f"missing file of the {which} model (run train-{which})",
                             folder / name, "--model")  # fmt: skip
    return list(json.loads((folder / "manifest.json").read_text())["features"])


def predict(
    params: ClusterFinderParams,
    model_dir: str | Path,
    inputs: Sequence[str | Path],
):
    """Predict z_lambda and lambda of every cluster of the member catalogues (module docstring).

    Parameters
    ----------
    params : ClusterFinderParams
        ``redshift`` and ``richness`` (``model``: the architecture the checkpoints were
        trained with; ``sampling``: the draws), ``seed``, ``data.min_members``.
    model_dir : str or pathlib.Path
        Folder holding ``redshift/`` and ``richness/``, each with ``best.ckpt`` and the
        training ``manifest.json`` and ``scalers.json`` (kept there by the train stages).
    inputs : sequence of str or pathlib.Path
        Member catalogues and their cluster catalogue (:func:`split_inputs`).

    Returns
    -------
    astropy.table.Table
        One row per cluster, by increasing id: ``mem_match_id`` (int64, the id column),
        ``members_file`` (str), ``ra``, ``dec`` (deg), ``n_members`` (int64); ``z_lambda`` and
        ``z_lambda_reference`` (redshift; redMaPPer's Z_LAMBDA), ``lambda`` and
        ``lambda_reference`` (richness; LAMBDA), ``mass`` and ``mass_reference`` (Msun,
        :func:`~astrobatch.studies.cluster_finder.geometry.mass_proxy` of the richness),
        all float64, dimensionless but ``ra``, ``dec`` and the masses. No uncertainty
        columns: the set models give point estimates. ``meta``: ``id_columns``,
        ``reference``, ``description``.

    Raises
    ------
    InputError
        Bad inputs (:func:`load_member_sets`), a model folder without its checkpoint,
        manifest or scalers, or a checkpoint that does not match ``params``.
    """
    import astropy.units as u
    from astropy.table import Table

    from astrobatch.data.scalers import load_scalers
    from astrobatch.studies.cluster_finder.geometry import mass_proxy
    from astrobatch.studies.cluster_finder.members import load_members_model, predict_sets
    from astrobatch.studies.cluster_finder.prepare import _write_sets

    model_dir = Path(model_dir)
    folders = {which: model_dir / which for which in COLUMNS}
    features = {which: _model_files(f, which) for which, f in folders.items()}
    needed = list(dict.fromkeys(features["redshift"] + features["richness"]))
    raw, clusters = load_member_sets(params, inputs, needed)
    preds: dict[str, np.ndarray] = {}
    for which, folder in folders.items():
        spec = getattr(params, which)
        model = load_members_model(spec, folder, folder)
        fscaler, tscaler = load_scalers(folder / "scalers.json")
        feats = features[which]
        cols = [needed.index(f) for f in feats]
        ref = clusters[COLUMNS[which][1]].to_numpy(np.float64)
        sets = [(scale_features(x[:, cols], feats, fscaler),
                 {"cluster_id": m.cluster_id, "z_lambda": m.z_lambda, "richness": m.richness,
                  "n_members": m.n_members})
                for x, m in zip(raw, clusters.itertuples(index=False), strict=True)]  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="cf_predict_") as tmp:
            shutil.copy2(folder / "scalers.json", Path(tmp) / "scalers.json")
            _write_sets(Path(tmp) / "real.h5", sets, feats, tscaler.to_model_space(ref), "real")
            out = predict_sets(model, Path(tmp), "real", spec.sampling, params.seed)
        preds[which] = np.asarray(out["prediction"], np.float64)

    one = u.dimensionless_unscaled
    t = Table()
    t["mem_match_id"] = clusters["cluster_id"].to_numpy(np.int64)
    t["members_file"] = np.asarray(clusters["members_file"], dtype=str)
    t["ra"] = clusters["ra"].to_numpy(np.float64) * u.deg
    t["dec"] = clusters["dec"].to_numpy(np.float64) * u.deg
    t["n_members"] = clusters["n_members"].to_numpy(np.int64)
    t["n_members"].unit = one  # a count: int64, dimensionless
    t["z_lambda"] = preds["redshift"] * one
    t["z_lambda_reference"] = clusters["z_lambda"].to_numpy(np.float64) * one
    lam, lam_ref = preds["richness"], clusters["richness"].to_numpy(np.float64)
    t["lambda"] = lam * one
    t["lambda_reference"] = lam_ref * one
    t["mass"] = mass_proxy(lam) * u.Msun
    t["mass_reference"] = mass_proxy(lam_ref) * u.Msun
    s = params.redshift.sampling, params.richness.sampling
    t.meta.update({
        "id_columns": ["mem_match_id"],
        "reference": "redMaPPer's Z_LAMBDA and LAMBDA of the input cluster catalogue (mass: "
                     "the same mass proxy of LAMBDA)",
        "description": "z_lambda, lambda: member-set models (redshift, richness) on "
                       f"{s[0].num_sample_per_snapshot} / {s[1].num_sample_per_snapshot} seeded "
                       f"draws of at most {s[0].num_star_per_sample} / "
                       f"{s[1].num_star_per_sample} members; mass = 10^14.344 (lambda/40)^1.33 "
                       "Msun; ra, dec: the catalogue's, else the member at the smallest R",
    })  # fmt: skip
    return t


def real_metrics(table, outlier: float = 0.05) -> dict[str, float]:
    """The ``real/...`` metrics of evaluate from a predictions table of :func:`predict`.

    Parameters
    ----------
    table : astropy.table.Table
        With ``z_lambda``, ``z_lambda_reference``, ``lambda``, ``lambda_reference`` and
        ``n_members`` (one row per cluster); ``meta["path"]``, if set, names the file in
        errors.
    outlier : float
        ``|Δz/(1+z)|`` above which a redshift is an outlier (evaluate's ``OUTLIER``).

    Returns
    -------
    dict of str to float
        ``real/n_clusters``; with one row (the vendored real cluster) ``real/redshift_pred``,
        ``real/redshift_redmapper``, ``real/richness_pred``, ``real/richness_redmapper``,
        ``real/n_members``; with two rows or more ``real/redshift/{bias,sigma_nmad,
        outlier_fraction}`` of ``Δz/(1+z)`` against redMaPPer and ``real/richness/{bias_dex,
        scatter_dex,nmad_dex}`` of ``log10 λ_pred / λ_redMaPPer``.

    Raises
    ------
    InputError
        A missing column, or no rows.
    """
    from astrobatch.evaluate.metrics import log_ratio_metrics, redshift_metrics

    path = table.meta.get("path")
    need = ("z_lambda", "z_lambda_reference", "lambda", "lambda_reference", "n_members")
    for c in need:
        if c not in table.colnames:
            raise InputError(f"missing column {c} (expected the table of `astrobatch "
                             "cluster-finder predict`)", path, c)  # fmt: skip
    if len(table) == 0:
        raise InputError("no rows in the predictions table", path)
    v = {c: np.asarray(table[c], np.float64) for c in need}
    m: dict[str, float] = {"real/n_clusters": len(table)}
    if len(table) == 1:
        m.update({
            "real/redshift_pred": float(v["z_lambda"][0]),
            "real/redshift_redmapper": float(v["z_lambda_reference"][0]),
            "real/richness_pred": float(v["lambda"][0]),
            "real/richness_redmapper": float(v["lambda_reference"][0]),
            "real/n_members": int(v["n_members"][0]),
        })  # fmt: skip
        return m
    z = redshift_metrics(v["z_lambda"], v["z_lambda_reference"], outlier)
    lam = log_ratio_metrics(np.maximum(v["lambda"], 1e-3), v["lambda_reference"])
    m.update({f"real/redshift/{k}": z[k] for k in ("bias", "sigma_nmad", "outlier_fraction")})
    m.update({f"real/richness/{k}": lam[k] for k in ("bias_dex", "scatter_dex", "nmad_dex")})
    return m
