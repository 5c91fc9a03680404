"""The ``astrobatch cluster-finder`` sub-app: one command per DVC stage (made by the study kit)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from astrobatch.study import Study, print_summary

study = Study(
    "cluster_finder",
    help="Galaxy clusters in SDSS-like images (classifier, CenterNet-style box detector) and "
    "their redshift and richness from member catalogues (Janossy pooling).",
    question="Can CNNs find galaxy clusters in SDSS-like images, and can permutation-invariant "
    "models infer their redshift and richness from the member catalogue?",
)
MODELS = {name: study.paths.models / name
          for name in ("classifier", "detector", "redshift", "richness")}  # fmt: skip


@study.stage("simulate")
def simulate_cmd(
    p,
    out: Annotated[
        Path, typer.Option(help="Folder of the simulated sky (images + catalogues).")
    ] = Path("data/raw/cluster_finder"),
) -> None:
    """Simulate an SDSS-like sky around real redMaPPer clusters (the embedded default).

    Reads cluster_finder.simulate from PARAMS: clusters at real positions, redshifts and
    richnesses, NFW members on a red sequence with a BCG, field galaxies with magnitudes
    of the real DR8 galaxy table, g r i images rendered with GalSim (PSF, sky noise).
    Writes OUT/clusters.fits, members.fits, galaxies.fits (DR8 layouts), footprint.fits
    (HEALPix), images/*.fits and images.csv (cluster-centred cutouts and empty fields).
    """
    from astrobatch.progress import progress
    from astrobatch.studies.cluster_finder.simulate import simulate_sky

    s = p.simulate
    with progress("simulate sky", s.n_clusters + s.n_empty) as update:
        summary = simulate_sky(out, **s.model_dump(), progress=update)
    study.log.info("wrote %s (%s)", out, summary)


@study.stage("prepare", out="prepared")
def prepare_cmd(p, out) -> None:
    """Read catalogues, footprint and images; write image shards with boxes and member sets.

    Reads cluster_finder.data from PARAMS: boxes from members (astropy offsets from the
    image centre, min/max of member pixels, secondary clusters whose box centre is inside,
    the fraction of each box inside the image); empty fields checked to lie more than
    min_separation_arcmin from every cluster; splits by a hash of the cluster id. Writes
    OUT/images_{train,val,test}.h5, OUT/members_{redshift,richness}/ and manifest.json.
    """
    from astrobatch.progress import progress
    from astrobatch.studies.cluster_finder.prepare import prepare

    with progress("prepare images", 1) as update:
        manifest = prepare(p.data, out, update)
    study.log.info("images %s, member sets %s -> %s", manifest["images"],
                   manifest["member_sets"], out)  # fmt: skip


@study.stage(
    "train-classifier", out="models", out_default=MODELS["classifier"],
    inputs={"prepared": None, "live": study.paths.live / "classifier"}, resume="classifier",
)  # fmt: skip
def train_classifier_cmd(p, paths) -> dict:
    """The cluster / no-cluster classifier: shared conv encoder, binary cross-entropy."""
    from astrobatch.studies.cluster_finder.detect import train_classifier

    return train_classifier(p, paths)


@study.stage(
    "train-detector", out="models", out_default=MODELS["detector"],
    inputs={"prepared": None, "live": study.paths.live / "detector"}, resume="detector",
)  # fmt: skip
def train_detector_cmd(p, paths) -> dict:
    """The box detector: centre heatmap (penalty-reduced focal loss) + box sides (GIoU)."""
    from astrobatch.studies.cluster_finder.detect import train_detector

    return train_detector(p, paths)


@study.stage(
    "train-redshift", out="models", out_default=MODELS["redshift"],
    inputs={"prepared": None, "live": study.paths.live / "redshift"},
    resume="redshift.training",
)  # fmt: skip
def train_redshift_cmd(p, paths) -> dict:
    """Cluster redshift from the member set (Janossy k = 2 by default; sky rotations)."""
    from astrobatch.studies.cluster_finder.members import train_members

    return train_members(p, paths, "redshift")


@study.stage(
    "train-richness", out="models", out_default=MODELS["richness"],
    inputs={"prepared": None, "live": study.paths.live / "richness"},
    resume="richness.training",
)  # fmt: skip
def train_richness_cmd(p, paths) -> dict:
    """Cluster richness (log10 lambda) from the member set (Janossy k = 10 by default)."""
    from astrobatch.studies.cluster_finder.members import train_members

    return train_members(p, paths, "richness")


@study.predict()
def predict_cmd(p, model, inputs):
    """Redshift and richness of real clusters from their redMaPPer member catalogues.

    Reads INPUT: a member catalogue (FITS; dr8 public names, or the redmapper code's names
    such as data/external/cluster_finder/redmapper_test_cluster_members.fit) and its cluster
    catalogue (ids, Z_LAMBDA, LAMBDA; e.g. redmapper_test_dr8_input_cluster_catalog.fit),
    as two --input flags or one folder, told apart by their columns and validated as
    prepare validates them; the member-set models MODEL/redshift and MODEL/richness, with
    the training scalers and features of data/prepared/cluster_finder/members_*/. Member
    catalogues only: the image models need images, which the real samples lack. Writes OUT
    (.ecsv or .fits), one row per cluster: mem_match_id, members_file, ra, dec (deg),
    n_members, z_lambda and z_lambda_reference (redMaPPer's Z_LAMBDA), lambda and
    lambda_reference (LAMBDA), mass and mass_reference (Msun, 10^14.344 (lambda/40)^1.33);
    redshifts and richnesses are dimensionless.
    """
    from astrobatch.studies.cluster_finder.predict import predict

    return predict(p, model, inputs)


@study.stage(
    "evaluate",
    inputs={"prepared": None, "models": study.paths.models, "metrics": None, "plots": None,
            "reports": None},
)  # fmt: skip
def evaluate_cmd(p, paths) -> None:
    """Evaluate the classifier, the detector and the member-set models against baselines.

    Writes METRICS (accuracy, ROC AUC, precision, recall; completeness and purity at IoU
    0.5 and AP@0.5; redshift bias, sigma_NMAD and outlier fraction of dz/(1+z); richness
    bias and scatter in log10; baselines; real/ metrics of the real clusters from the
    predictions table cluster_finder.evaluate.real_predictions, written by
    predict), REPORTS and PLOTS (completeness/purity
    curves, completeness against z and richness, example images with boxes, dz/(1+z)
    against z).
    """
    from astrobatch.studies.cluster_finder.evaluate import evaluate

    m = evaluate(p, paths)
    rows = [(k, m.get(k)) for k in (
        "classifier/accuracy", "classifier/roc_auc", "detector/completeness",
        "detector/purity", "detector/ap50", "redshift/sigma_nmad",
        "baseline/gradient_boosting/redshift/sigma_nmad", "richness/scatter_dex",
        "baseline/gradient_boosting/richness/scatter_dex",
    )]  # fmt: skip
    print_summary("cluster_finder", rows, ("metric", "value"))
