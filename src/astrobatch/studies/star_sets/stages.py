"""The ``astrobatch star-sets`` sub-app: one command per DVC stage (made by the study kit)."""

from __future__ import annotations

from astrobatch.study import Study, print_summary

study = Study(
    "star_sets",
    help="Star-cluster mass from variable-size sets of member stars "
    "(summary statistics, Deep Sets, Set Transformer).",
    question="How well does a set model recover a star cluster's total mass from a variable-size "
    "sample of its member stars?",
)


@study.stage("simulate", out="raw", out_help="Raw HDF5 file to write (default: data.raw_path).")
def simulate_cmd(p, out) -> None:
    """Simulate star-cluster snapshots (the embedded default data set).

    Reads star_sets.simulate from PARAMS: King models sampled with galpy, a
    Kroupa IMF, stellar-evolution mass loss, escapers in tidal tails, field
    stars, unresolved binaries, pseudo-observation at a distance. Writes OUT
    (default: star_sets.data.raw_path) in the raw star-set HDF5 format (CSR
    `ptr` over stars, per-snapshot targets and run ids; see README).
    """
    from astrobatch.progress import progress
    from astrobatch.studies.star_sets.simulate import simulate_to_file

    out = out or p.data.raw_path
    s = p.simulate
    with progress("simulate snapshots", s.n_runs * s.snapshots_per_run) as update:
        simulate_to_file(s, s.seed, out, progress=update)
    study.log.info("wrote %s", out)


@study.stage("prepare", out="prepared")
def prepare_cmd(p, out) -> None:
    """Split runs, fit scalers on train only, write chunked HDF5 shards.

    Reads star_sets.data from PARAMS: the raw input (raw_path, raw_format:
    hdf5 | upstream_npz | nbody6_out3), features, target, split ratios and
    stratification. Writes OUT/manifest.json (runs per split), OUT/scalers.json
    and OUT/{train,val,test}.h5. No run is shared between splits.
    """
    from astrobatch.progress import progress
    from astrobatch.studies.star_sets.prepare import prepare

    with progress("prepare shards", 1) as update:
        manifest = prepare(p.data, out, p.evaluate.real_galactocentric_radius_kpc, update)
    study.log.info(
        "runs per split %s, snapshots %s -> %s",
        {k: len(v) for k, v in manifest["runs"].items()}, manifest["n_snapshots"], out,
    )  # fmt: skip


@study.stage("train", out="models", inputs=("prepared", "live"), resume="training")
def train_cmd(p, paths) -> dict:
    """Train the set model chosen by star_sets.model.name.

    Models: summary_stats | deep_sets | set_transformer. Huber loss on the
    scaled log10 target, AdamW + cosine schedule, gradient clipping, early
    stopping on val/loss. Writes OUT/best.ckpt, OUT/last.ckpt and
    OUT/train_state.json; curves go to LIVE through DVCLive. An interrupted run
    resumes (from its resume folder, see astrobatch.train.resume_root) when called again
    with the same params.
    """
    from astrobatch.studies.star_sets.train import train

    return train(p, paths)


@study.stage("evaluate", inputs=("prepared", "models", "live", "metrics", "plots", "reports"))
def evaluate_cmd(p, paths) -> None:
    """Evaluate the best checkpoint on val/test and on the real NBODY6++ snapshots.

    Writes METRICS (flat JSON: MAE, RMSE, median and 90th-percentile absolute
    error of the mass in dex and Msun, per-snapshot Pearson/Spearman, the
    within-snapshot spread, the median baseline, real-snapshot predictions),
    REPORTS/predictions.parquet and PLOTS (pred_vs_true.png,
    residual_hist.png, loss_curves.png). The real/ metrics summarise the
    predictions table star_sets.evaluate.real_predictions (written by
    predict; absent: none).
    """
    from astrobatch.studies.star_sets.evaluate import evaluate

    m = evaluate(p, paths)
    keep = ("test/", "baseline/median/test/mae", "real/")
    rows = [(k, v) for k, v in m.items() if k.startswith(keep) and "/bias" not in k]
    print_summary(f"star_sets {p.model.name}: test", rows)


@study.predict()
def predict_cmd(p, model, inputs):
    """Predict the cluster mass of real NBODY6++ OUT3 snapshots.

    INPUT: OUT3 files, or folders searched for conf.3_* at any depth (other
    files ignored); converted as prepare converts them, scaled with the
    model folder's scalers.json, sampled as the test split. Writes OUT (.ecsv
    or .fits), one row per snapshot: file, run_id, time [Myr], n_stars,
    r_tidal [pc], mass [Msun], log_mass and log_mass_std (log10 Msun, the
    spread over samples), mass_reference and log_mass_reference (the true
    mass within 2 r_t of the snapshot's stars).
    """
    from astrobatch.studies.star_sets.predict import predict

    return predict(p, model, inputs)
