"""Cross-galaxy test of cluster_age: the default model (trained on cutouts simulated from NGC 628)
applied to cutouts simulated from the NGC 1566 LEGUS catalogue.

Not a speed benchmark: a one-off science check kept beside them until the study has a
``predict`` command (issue 14). Run after ``dvc repro cluster_age_evaluate``::

    python benchmarks/cross_galaxy_cluster_age.py [--out /tmp/cross_galaxy]

It simulates ``cluster_age.simulate`` with the NGC 1566 catalogue (distance modulus 31.28),
prepares it with the same ``cluster_age.data`` params, predicts every kept cutout with
``models/cluster_age/best.ckpt`` (the training normalisation and target scaling), and fits the
photometric baseline (aperture magnitudes) on the NGC 628 training split. Prints MdAE
(1.4826 x median |pred - true|, dex) of both on the NGC 1566 cutouts with 7 <= log age <= 9.5,
beside the same-galaxy test figures in ``metrics/cluster_age.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

NGC1566 = (
    "data/external/cluster_age/"
    "hlsp_legus_hst_wfc3_ngc1566_multiband_v1_padagb-mwext-avgapcor.tab.gz"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/cross_galaxy_cluster_age")
    ap.add_argument("--models", default="models/cluster_age")
    ap.add_argument("--prepared", default="data/prepared/cluster_age")
    args = ap.parse_args()

    from astrobatch.data.images import CutoutDataModule
    from astrobatch.evaluate.metrics import age_metrics
    from astrobatch.params import load_params
    from astrobatch.studies.cluster_age.evaluate import (
        fit_photometric_baseline,
        photometric_features,
    )
    from astrobatch.studies.cluster_age.prepare import prepare
    from astrobatch.studies.cluster_age.simulate import simulate_to_file
    from astrobatch.studies.cluster_age.train import (
        base_transform,
        build_model,
        load_norm_stats,
        make_datasets,
        read_log_age,
        read_manifest,
        unscale_target,
    )
    from astrobatch.tasks.regression import predict
    from astrobatch.train import load_model_weights

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    p = load_params("cluster_age")
    sim = p.simulate.model_copy(
        update={"catalogue_path": NGC1566, "catalogue_distance_modulus": 31.28}
    )
    raw = out / "ngc1566_cutouts.h5"
    simulate_to_file(sim, raw)
    # every kept NGC 1566 cutout is a test cutout here: prepare writes its usual three splits
    # and they are pooled below
    data = p.data.model_copy(update={"raw_path": str(raw)})
    prep = out / "prepared"
    prepare(data, prep)

    model_dir, train_prep = Path(args.models), Path(args.prepared)
    manifest = read_manifest(train_prep)  # the training target scaling (NGC 628)
    transform = base_transform(p, load_norm_stats(model_dir))
    datasets = make_datasets(p, prep, transform, for_training=False)
    model = load_model_weights(build_model(p, train_prep), model_dir / "best.ckpt")
    dm = CutoutDataModule(datasets, p.training.batch_size, p.seed)

    gbr = fit_photometric_baseline(train_prep, p.seed)  # on the NGC 628 training split

    pred, phot, true = [], [], []
    for split in ("train", "val", "test"):
        o = predict(model, dm.loader(split))
        pred.append(unscale_target(o["prediction"][np.argsort(o["row"])], manifest))
        phot.append(gbr.predict(photometric_features(prep, split)))
        true.append(read_log_age(prep, split))
    pred, phot, true = (np.concatenate(v) for v in (pred, phot, true))
    same = json.loads(Path("metrics/cluster_age.json").read_text())
    result = {
        "n_ngc1566": len(true),
        "cnn_mdae_ngc1566": age_metrics(pred, true)["mdae"],
        "photometric_mdae_ngc1566": age_metrics(phot, true)["mdae"],
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
