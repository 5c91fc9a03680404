"""Cross-galaxy test of cluster_age: the default model (trained on cutouts simulated from NGC 628)
applied to cutouts simulated from the NGC 1566 LEGUS catalogue.

Not a speed benchmark: a science check kept beside them. The pipeline itself now reports the
CNN's figure (stages ``cluster_age_simulate_cross`` and ``cluster_age_predict``, metric
``cross_galaxy/mdae_log_age`` of evaluate, on ``cluster_age.cross_galaxy.n_clusters``
cutouts); this script adds the photometric baseline and uses the training set's size and seed.
Run after ``dvc repro cluster_age_evaluate``::

    python benchmarks/cross_galaxy_cluster_age.py [--out /tmp/cross_galaxy]

It simulates ``cluster_age.simulate`` with the catalogue of ``cluster_age.cross_galaxy``
(NGC 1566, distance modulus 31.28), predicts every cutout with the predict command's function
(:func:`astrobatch.studies.cluster_age.predict.predict`: ``models/cluster_age/best.ckpt``, the
training normalisation and target scaling), prepares the file with the same
``cluster_age.data`` params for the aperture magnitudes, and fits the photometric baseline
(aperture magnitudes) on the NGC 628 training split. Prints MdAE
(1.4826 x median |pred - true|, dex) of both on the NGC 1566 cutouts with 7 <= log age <= 9.5,
beside the same-galaxy test figures in ``metrics/cluster_age.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/cross_galaxy_cluster_age")
    ap.add_argument("--models", default="models/cluster_age")
    ap.add_argument("--prepared", default="data/prepared/cluster_age")
    args = ap.parse_args()

    from astrobatch.evaluate.metrics import age_metrics
    from astrobatch.params import load_params
    from astrobatch.studies.cluster_age.evaluate import (
        fit_photometric_baseline,
        photometric_features,
    )
    from astrobatch.studies.cluster_age.predict import predict
    from astrobatch.studies.cluster_age.prepare import prepare
    from astrobatch.studies.cluster_age.simulate import simulate_to_file
    from astrobatch.studies.cluster_age.train import read_log_age

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    p = load_params("cluster_age")
    # the other galaxy's catalogue, at the training set's size and seed
    sim = p.cross_galaxy.simulate_params(p.simulate).model_copy(
        update={"n_clusters": p.simulate.n_clusters, "seed": p.simulate.seed}
    )
    raw = out / "ngc1566_cutouts.h5"
    simulate_to_file(sim, raw)
    # every kept NGC 1566 cutout is a test cutout here: prepare writes its usual three splits
    # and they are pooled below
    data = p.data.model_copy(update={"raw_path": str(raw)})
    prep = out / "prepared"
    prepare(data, prep)

    model_dir, train_prep = Path(args.models), Path(args.prepared)
    table = predict(p, model_dir, [raw])
    ref = np.asarray(table["log_age_reference"], float)
    lo, hi = p.data.log_age_range
    kept = (ref >= lo) & (ref <= hi) if p.data.remove_extremes else np.ones(len(ref), bool)
    pred, true = np.asarray(table["log_age"], float)[kept], ref[kept]

    gbr = fit_photometric_baseline(train_prep, p.seed)  # on the NGC 628 training split
    phot, phot_true = [], []
    for split in ("train", "val", "test"):
        phot.append(gbr.predict(photometric_features(prep, split)))
        phot_true.append(read_log_age(prep, split))
    phot, phot_true = np.concatenate(phot), np.concatenate(phot_true)
    same = json.loads(Path("metrics/cluster_age.json").read_text())
    result = {
        "n_ngc1566": len(true),
        "cnn_mdae_ngc1566": age_metrics(pred, true)["mdae"],
        "photometric_mdae_ngc1566": age_metrics(phot, phot_true)["mdae"],
        "mean_baseline_mdae_ngc1566": age_metrics(
            np.full(len(true), read_log_age(train_prep, "train").mean()), true
        )["mdae"],
        "cnn_mdae_ngc628_test": same["test/mdae_log_age"],
        "photometric_mdae_ngc628_test": same["baseline/photometric/test/mdae_log_age"],
    }
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
