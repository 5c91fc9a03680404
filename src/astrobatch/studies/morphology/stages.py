"""The ``astrobatch morphology`` sub-app: one command per DVC stage (made by the study kit)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from astrobatch.study import Study, print_summary

study = Study(
    "morphology",
    help="Galaxy Zoo vote fractions with a DINOv2 ViT (head, then full fine-tuning); "
    "out-of-distribution surveys and real GZ DECaLS galaxies.",
    question="Does training on a mix of surveys make a ViT's Galaxy Zoo vote-fraction predictions "
    "hold up on a survey it never saw?",
)
HEAD_DIR = study.paths.models / "head"
FULL_DIR = study.paths.models / "full"


@study.stage("simulate")
def simulate_cmd(
    p,
    out: Annotated[
        Path, typer.Option(help="Folder of the simulated surveys (images + catalogues).")
    ] = Path("data/raw/morphology"),
) -> None:
    """Simulate galaxies of several surveys with Galaxy Zoo votes (the embedded default).

    Reads morphology.simulate from PARAMS: bulge + disk galaxies (inclination,
    clumps, bars, spiral arms, mergers) rendered with GalSim per survey (pixel
    scale, PSF, depth, bands); the true structure sets the answer probabilities
    of the GZ DECaLS tree and simulated volunteers vote down the tree. Writes
    OUT/<survey>/images/ (JPEG, PNG or FITS) and the catalogue of each survey
    in the GZ DECaLS or GZ2 column layout, plus OUT/truth.parquet.
    """
    from astrobatch.progress import progress
    from astrobatch.studies.morphology.simulate import simulate_to_folder

    n = sum(s.n_galaxies for s in p.simulate.surveys)
    with progress("simulate galaxies", n) as update:
        summary = simulate_to_folder(p.simulate, out, progress=update)
    study.log.info("wrote %s (%s)", out, summary)


@study.stage("prepare", out="prepared")
def prepare_cmd(p, out) -> None:
    """Read the Galaxy Zoo catalogues and images, split, write uint8 image shards.

    Reads morphology.data from PARAMS: GZ DECaLS- or GZ2-layout catalogues
    (CSV, FITS, parquet) mapped to the answers they share, JPEG/PNG/FITS images
    resized to image_size; train/val/test by a hash of the galaxy id over the
    train_surveys (mixed in their proportions, n_train in all) and one set per
    held-out survey (ood_<survey>); real galaxies go through `predict`. Writes
    OUT/<set>.h5 and OUT/manifest.json.
    """
    from astrobatch.progress import progress
    from astrobatch.studies.morphology.prepare import prepare

    with progress("prepare images", 1) as update:
        manifest = prepare(p.data, out, update)
    study.log.info("sets %s, %d answers -> %s", manifest["counts"], len(manifest["answers"]), out)


@study.stage(
    "train-head", out="models", out_default=HEAD_DIR,
    inputs={"prepared": None, "live": study.paths.live / "head"}, resume="head",
)  # fmt: skip
def train_head_cmd(p, paths) -> dict:
    """Stage 1: the MLP head on embeddings of the frozen backbone (computed once).

    Backbone: DINOv2 from model.weights_dir (local, never downloaded) or a small
    random config, or the conv encoder (model.backbone: convnet). Loss: vote-
    weighted MSE on fractions or Dirichlet-multinomial on counts (loss).
    """
    from astrobatch.studies.morphology.train import train_head

    return train_head(p, paths)


@study.stage(
    "train-full", out="models", out_default=FULL_DIR,
    inputs={"prepared": None, "pretrained": HEAD_DIR, "live": study.paths.live / "full"},
    resume="full",
)  # fmt: skip
def train_full_cmd(p, paths) -> dict:
    """Stage 2: backbone and head from the head stage's best checkpoint.

    Augmented images (flips, quarter turns, colour jitter), separate backbone
    and head learning rates (full.lr_backbone, full.lr_head), early stopping.
    """
    from astrobatch.studies.morphology.train import train_full

    return train_full(p, paths)


@study.stage(
    "evaluate",
    inputs={"prepared": None, "pretrained": HEAD_DIR, "models": FULL_DIR,
            "live": study.paths.live / "full", "metrics": None, "plots": None,
            "reports": None},
)  # fmt: skip
def evaluate_cmd(p, paths) -> None:
    """Evaluate full and head-only models against the train-mean baseline.

    Writes METRICS (per answer and overall Pearson r, R2 (coefficient of
    determination), r2 (squared Pearson), MAE, MSE on test, each held-out
    survey and the real galaxies, these from the `predict` table named by
    evaluate.real_predictions; OOD degradation; 68% interval coverage with
    the Dirichlet loss), REPORTS (predictions.parquet, pred_vs_true.csv) and
    PLOTS (per-answer r bars, predicted vs true, examples with votes).
    """
    from astrobatch.studies.morphology.evaluate import evaluate

    m = evaluate(p, paths)
    sets = ["test", *sorted(k.split("/")[0] for k in m if k.endswith("/mse")
                            and k.count("/") == 1 and k.split("/")[0] != "test")]  # fmt: skip
    rows = [
        (s, *(m.get(k, "-") for k in (f"{s}/mse", f"head_only/{s}/mse",
                                        f"baseline/train_mean/{s}/mse", f"{s}/r", f"{s}/mae")))
        for s in sets  # `real` (from the predict table) has no head-only figures: "-"
    ]  # fmt: skip
    print_summary("morphology: vote fractions", rows,
                  ("set", "MSE full", "MSE head only", "MSE train mean", "r", "MAE"))  # fmt: skip


@study.predict(model_default=FULL_DIR)
def predict_cmd(p, model, inputs):
    """Predict Galaxy Zoo vote fractions of real galaxies with the fine-tuned model.

    Each --input is a GZ DECaLS- or GZ2-layout catalogue (CSV, FITS, parquet;
    id and image-path columns, image paths relative to its folder) or a folder
    holding one, checked as prepare checks catalogues (vote columns optional);
    the images are decoded and resized as prepare does (image_size of the
    model's prepared manifest, data.fits_stretch). MODEL: the train-full folder
    (best.ckpt, weights-only; schema from its manifest.json or
    data/prepared/morphology/manifest.json). Writes OUT, one row per galaxy:
    catalogue, galaxy_id (ids), survey, image, ra/dec (deg) if present; per
    answer <question>_<answer> the predicted vote fraction (dimensionless),
    <...>_std (Dirichlet loss: the fraction's standard deviation) and
    <...>_reference (the volunteers' fraction, where the catalogue has votes);
    <question>_votes (volunteers' votes, where it has counts).
    """
    from astrobatch.studies.morphology.predict import predict

    return predict(p, model, inputs)
