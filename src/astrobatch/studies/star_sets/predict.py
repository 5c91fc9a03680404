"""star_sets predict: the trained set model applied to real NBODY6++ snapshots.

``astrobatch star-sets predict --model models/star_sets --input <OUT3 file or folder>
--out reports/real/star_sets.ecsv`` reads NBODY6++ OUT3 snapshots (a folder keeps the files
named like ``conf.3_*`` at any depth, as
:data:`~astrobatch.studies.star_sets.prepare.DEFAULT_PATTERNS`; licence and other files are
ignored), converts them exactly as ``prepare`` does
(:func:`~astrobatch.studies.star_sets.prepare.nbody6_to_sets`: re-centred on the density
centre, r_t of a circular orbit at ``evaluate.real_galactocentric_radius_kpc``), scales them
with the training scalers kept in the model folder (``scalers.json``) and draws
``sampling.num_sample_per_snapshot`` seeded samples per snapshot, as the test split. The
prediction of a snapshot is the mean of its samples' log10 predictions; their standard
deviation is the spread reported beside it. The snapshot's own target (OUT3 holds every
star, so the true mass within 2 r_t is known) is the reference.

:func:`real_metrics` turns such a table into the ``real/...`` metrics of ``evaluate``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from astrobatch.errors import InputError
from astrobatch.studies.star_sets.params import StarSetsParams

__all__ = ["OUT3_COLUMNS", "predict", "real_metrics", "snapshot_files"]

#: Star columns an OUT3 snapshot provides (pseudo-observed features are not among them).
OUT3_COLUMNS = ("x", "y", "z", "vx", "vy", "vz", "mass")
#: Unit of each target's short name (astropy unit strings; "" dimensionless).
UNITS = {"mass": "solMass", "n_stars": "", "r_half_mass": "pc", "r_tidal": "pc", "time": "Myr"}


def snapshot_files(inputs: Sequence[str | Path]) -> list[Path]:
    """The OUT3 snapshot files of ``inputs`` (files, or folders searched for ``conf.3_*``).

    Raises
    ------
    InputError
        A folder without OUT3 files (the message names the folder and the pattern).
    """
    from astrobatch.studies.star_sets.prepare import DEFAULT_PATTERNS, expand_inputs

    files: list[Path] = []
    for path in inputs:
        files += expand_inputs(str(path), DEFAULT_PATTERNS["nbody6_out3"])
    return files


def predict(params: StarSetsParams, model_dir: str | Path, inputs: Sequence[str | Path]):
    """Predict the target of every OUT3 snapshot of ``inputs`` (module docstring).

    Parameters
    ----------
    params : StarSetsParams
        ``data.features`` and ``data.target`` (as trained), ``model`` (the architecture),
        ``sampling``, ``seed``, ``evaluate.real_galactocentric_radius_kpc``.
    model_dir : str or pathlib.Path
        The train stage's folder: ``best.ckpt`` and ``scalers.json``.
    inputs : sequence of str or pathlib.Path
        OUT3 files or folders.

    Returns
    -------
    astropy.table.Table
        One row per snapshot: ``file``, ``run_id`` (ids), ``time`` (Myr), ``n_stars``,
        ``r_tidal`` (pc); for the target's short name ``q`` (``mass``): ``q`` (Msun),
        ``log_q`` and ``log_q_std`` (log10, the spread over the samples; with
        ``data.log_target``), ``q_reference`` and ``log_q_reference`` (the snapshot's own
        value). ``meta``: ``id_columns``, ``reference``, ``target``.

    Raises
    ------
    InputError
        No OUT3 file, a malformed one, features that OUT3 does not provide, a model folder
        without ``best.ckpt`` or ``scalers.json``, or a checkpoint that does not match
        ``model`` in params.
    """
    import astropy.units as u
    import torch
    from astropy.table import Table

    from astrobatch.data.scalers import load_scalers
    from astrobatch.data.sets import padded_sample
    from astrobatch.studies.star_sets.evaluate import short_name
    from astrobatch.studies.star_sets.prepare import nbody6_to_sets
    from astrobatch.studies.star_sets.train import build_model
    from astrobatch.train import load_model_weights

    d = params.data
    absent = [f for f in d.features if f not in OUT3_COLUMNS]
    if absent:
        raise InputError(f"features {absent} are not in NBODY6 OUT3 snapshots (they have "
                         f"{list(OUT3_COLUMNS)})", key="star_sets.data.features")  # fmt: skip
    model_dir = Path(model_dir)
    scalers = model_dir / "scalers.json"
    if not scalers.is_file():
        raise InputError("no training scalers in the model folder (re-run the train stage)",
                         scalers)  # fmt: skip
    fscaler, tscaler = load_scalers(scalers)
    model = build_model(params.model, in_features=len(fscaler.features))
    load_model_weights(model, model_dir / "best.ckpt")

    files = snapshot_files(inputs)
    data = nbody6_to_sets(files, params.evaluate.real_galactocentric_radius_kpc)
    s, q = params.sampling, short_name(d.target)
    rows = []
    for i, path in enumerate(files):
        a, b = data.ptr[i], data.ptr[i + 1]
        x = np.stack([data.elements[k][a:b] for k in d.features], 1)
        x = fscaler.transform(x.astype(np.float64))
        rng = np.random.default_rng((params.seed, i, 99))
        samples = [padded_sample(x, rng, s, s.drop_at_eval)
                   for _ in range(s.num_sample_per_snapshot)]  # fmt: skip
        X, mask = (np.stack(v) for v in zip(*samples, strict=True))
        with torch.inference_mode():
            z = model(torch.from_numpy(X), torch.from_numpy(mask)).reshape(-1).double().numpy()
        pred = tscaler.to_log_space(z)
        rows.append((str(path), str(data.sets["run_id"][i]), float(data.sets["time"][i]),
                     int(b - a), float(data.sets["r_tidal"][i]), float(pred.mean()),
                     float(pred.std()), float(data.sets[d.target][i])))  # fmt: skip
    cols = (list(c) for c in zip(*rows, strict=True))
    file, run_id, time, n_stars, r_tidal, mean, std, ref = cols
    unit = u.Unit(UNITS.get(q, ""))
    t = Table()
    t["file"], t["run_id"] = file, run_id
    t["time"] = np.array(time) * u.Myr
    t["n_stars"] = np.array(n_stars) * u.dimensionless_unscaled
    t["r_tidal"] = np.array(r_tidal) * u.pc
    mean, std, ref = np.array(mean), np.array(std), np.array(ref)
    if tscaler.log10:
        t[q] = 10**mean * unit
        t[f"log_{q}"] = mean * u.dimensionless_unscaled
        t[f"log_{q}_std"] = std * u.dimensionless_unscaled
        t[f"{q}_reference"] = ref * unit
        t[f"log_{q}_reference"] = np.log10(ref) * u.dimensionless_unscaled
    else:
        t[q], t[f"{q}_std"], t[f"{q}_reference"] = mean * unit, std * unit, ref * unit
    t.meta.update({
        "id_columns": ["file", "run_id"],
        "target": d.target,
        "reference": f"{d.target} computed from every star of the snapshot",
        "description": f"log_{q}: log10 of {q} in {unit or 'no unit'}; *_std: spread over "
                       f"{s.num_sample_per_snapshot} samples of {s.num_star_per_sample} stars",
    })  # fmt: skip
    return t


def real_metrics(table, q: str = "mass") -> dict[str, float]:
    """The ``real/...`` metrics of a predictions table of :func:`predict`.

    Parameters
    ----------
    table : astropy.table.Table
        With ``file``, ``log_q``, ``log_q_std``, ``log_q_reference`` and ``q``,
        ``q_reference`` (log10 targets), or ``q``, ``q_std``, ``q_reference``.
    q : str
        The target's short name.

    Returns
    -------
    dict of str to float
        ``real/mae_log_q`` (dex; ``real/mae_q`` for a linear target), ``real/n_snapshots``
        and per file (its base name) ``real/<file>/pred_q``, ``true_q``,
        ``pred_log_q_std``, ``error_log_q``.
    """
    log10 = f"log_{q}" in table.colnames
    pred = np.asarray(table[f"log_{q}" if log10 else q], float)
    true = np.asarray(table[f"log_{q}_reference" if log10 else f"{q}_reference"], float)
    std = np.asarray(table[f"log_{q}_std" if log10 else f"{q}_std"], float)
    err = pred - true
    e = f"log_{q}" if log10 else q
    out = {f"real/mae_{e}": float(np.abs(err).mean()), "real/n_snapshots": len(table)}
    for row, (p, t, s, d) in enumerate(zip(table[q], table[f"{q}_reference"], std, err,
                                           strict=True)):  # fmt: skip
        key = f"real/{Path(str(table['file'][row])).name}"
        out.update({f"{key}/pred_{q}": float(np.asarray(p)),
                    f"{key}/true_{q}": float(np.asarray(t)),
                    f"{key}/pred_{e}_std": float(s), f"{key}/error_{e}": float(d)})  # fmt: skip
    return out
