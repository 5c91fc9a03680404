"""Params of the morphology study: the ``morphology`` section of ``params.yaml``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from astrobatch.params import Fraction, OrderedRange, PositiveInt, Strict, TrainingParams


class SurveySpec(Strict):
    """One synthetic survey of the simulator: its optics, depth, bands and file formats."""

    name: str = Field(description="survey name written in the catalogue's `survey` column")
    n_galaxies: int = Field(ge=1, description="galaxies observed by this survey")
    layout: Literal["gz_decals", "gz2"] = Field(
        "gz_decals", description="catalogue column layout (GZ DECaLS names or GZ2/Hart 2016)"
    )
    catalogue_format: Literal["csv", "fits"] = "csv"
    image_format: Literal["png", "jpeg", "fits"] = "png"
    bands: list[str] = Field(min_length=1, max_length=3, description="bands of the 3 planes")
    pixel_scale_arcsec: float = Field(gt=0, description="arcsec per pixel")
    image_size: int = Field(ge=16, le=512, description="cutout side written to file, pixels")
    psf_fwhm_arcsec: float = Field(gt=0, description="Kolmogorov/Moffat PSF FWHM, arcsec")
    sky_sigma: float = Field(
        gt=0, description="sky noise per pixel relative to the surface brightness unit"
    )
    band_bulge_weight: list[float] = Field(
        min_length=1, max_length=3,
        description="relative flux of the (red) bulge per band: redder/near-IR bands see more "
        "bulge and fewer blue arms and clumps",
    )  # fmt: skip
    volunteers_first_question: float = Field(
        40.0, gt=0, description="mean votes on the first question (Poisson)"
    )
    rgb_saturation: float = Field(
        4.0, gt=0,
        description="JPEG/PNG: surface brightness (mean of the 3 planes, in the unit of "
        "sky_sigma) that the survey's fixed asinh stretch maps to full scale",
    )  # fmt: skip


def _default_surveys() -> list[SurveySpec]:
    return [
        SurveySpec(name="sdss", n_galaxies=900, layout="gz2", catalogue_format="fits",
                   image_format="jpeg", bands=["g", "r", "i"], pixel_scale_arcsec=0.396,
                   image_size=64, psf_fwhm_arcsec=1.4, sky_sigma=0.05,
                   band_bulge_weight=[0.8, 1.0, 1.2], volunteers_first_question=44.0),
        SurveySpec(name="decals", n_galaxies=900, layout="gz_decals", image_format="png",
                   bands=["g", "r", "z"], pixel_scale_arcsec=0.262, image_size=96,
                   psf_fwhm_arcsec=1.2, sky_sigma=0.02, band_bulge_weight=[0.8, 1.0, 1.4],
                   volunteers_first_question=40.0),
        SurveySpec(name="ukidss", n_galaxies=300, layout="gz_decals", image_format="fits",
                   bands=["Y", "J", "K"], pixel_scale_arcsec=0.4, image_size=64,
                   psf_fwhm_arcsec=0.9, sky_sigma=0.08, band_bulge_weight=[1.5, 1.8, 2.2],
                   volunteers_first_question=40.0),
    ]  # fmt: skip


class MorphologySimulate(Strict):
    """Parameters of the galaxy simulator (GalSim) and of the simulated volunteers."""

    seed: int = Field(23, description="seed of the simulated data set (not of training)")
    surveys: list[SurveySpec] = Field(default_factory=_default_surveys, min_length=1)
    half_light_arcsec: OrderedRange(0.1, 30.0, strict_order=True) = Field(
        (1.5, 6.0), description="range of galaxy half-light radii (log-uniform), arcsec"
    )
    surface_brightness: OrderedRange(1e-3, 1e3, strict_order=True) = Field(
        (0.3, 3.0),
        description="range of the mean surface brightness within the half-light radius "
        "(log-uniform), in the image unit that sky_sigma is relative to",
    )
    merger_fraction: Fraction = Field(0.08, description="galaxies with a companion")
    artifact_fraction: Fraction = Field(0.03, description="stars and image artefacts")
    n_workers: int = Field(1, ge=1, le=64, description="rendering processes (same output)")


class CatalogueSpec(Strict):
    """One Galaxy Zoo catalogue that prepare reads (images referenced from its rows)."""

    path: str = Field(description="CSV, FITS or parquet catalogue")
    survey: str = Field(description="survey of its rows when it has no `survey` column")
    layout: Literal["auto", "gz_decals", "gz2"] = Field(
        "auto", description="column names: GZ DECaLS, GZ2 (Hart et al. 2016), or by content"
    )
    id_column: str = Field("auto", description="galaxy id column (auto: iauname, dr7objid, ...)")
    image_column: str = Field("auto", description="image path column (auto: file_loc, ...)")
    image_root: str = Field(
        "", description="folder image paths are relative to (empty: the catalogue's folder)"
    )


def _default_catalogues() -> list[CatalogueSpec]:
    return [
        CatalogueSpec(path="data/raw/morphology/sdss/gz2_catalogue.fits", survey="sdss"),
        CatalogueSpec(path="data/raw/morphology/decals/gz_decals_catalogue.csv", survey="decals"),
        CatalogueSpec(path="data/raw/morphology/ukidss/gz_decals_catalogue.csv", survey="ukidss"),
    ]


class SplitRatios(Strict):
    """train/val/test shares of the training surveys' galaxies, by a salted hash of the id."""

    train: float = Field(0.7, gt=0, lt=1)
    val: float = Field(0.15, gt=0, lt=1)
    test: float = Field(0.15, gt=0, lt=1)
    salt: str = Field("astrobatch", description="hash salt (fixed across experiments)")

    @model_validator(mode="after")
    def _sum(self):
        if abs(self.train + self.val + self.test - 1.0) > 1e-6:
            raise ValueError("train + val + test must be 1")
        return self


class MorphologyData(Strict):
    """Which catalogues to read, which surveys to train on and which to hold out."""

    catalogues: list[CatalogueSpec] = Field(default_factory=_default_catalogues, min_length=1)
    train_surveys: dict[str, float] = Field(
        default_factory=lambda: {"sdss": 0.5, "decals": 0.5},
        description="survey -> share of the training set (mixing proportions); a share of 0 "
        "leaves the survey out (its galaxies are in no set)",
    )
    n_train: int = Field(
        0, ge=0,
        description="training galaxies in all (0: as many as the proportions allow); equal "
        "sizes make single- and mixed-survey runs comparable",
    )  # fmt: skip
    ood_surveys: list[str] = Field(
        default_factory=lambda: ["ukidss"], description="surveys held out entirely (OOD tests)"
    )
    questions: list[str] = Field(
        default_factory=list,
        description="questions to keep (empty: those every catalogue's layout shares)",
    )
    image_size: int = Field(64, ge=16, le=518, description="side the images are resized to")
    fits_stretch: float = Field(
        3.0, gt=0, description="FITS images: asinh(x / (stretch * sky MAD)) mapped to 0..255"
    )
    split: SplitRatios = SplitRatios()
    chunk_images: int = Field(64, ge=1, description="images per HDF5 chunk")

    @model_validator(mode="after")
    def _surveys(self):
        shares = self.train_surveys.values()
        if not shares or min(shares) < 0 or max(shares) <= 0:
            raise ValueError("train_surveys: shares >= 0, at least one > 0")
        both = set(self.train_surveys) & set(self.ood_surveys)
        if both:
            raise ValueError(f"surveys {sorted(both)} are both trained on and held out")
        return self


class BackboneParams(Strict):
    """The encoder: a DINOv2 ViT (local weights or a small random config) or the conv encoder."""

    backbone: Literal["dinov2", "convnet"] = "dinov2"
    weights_dir: str = Field(
        "", description="local save_pretrained folder or facebook/dinov2-* snapshot (empty: "
        "random weights of the small config below)",
    )  # fmt: skip
    hidden_size: PositiveInt = Field(96, description="small config: width")
    num_hidden_layers: PositiveInt = Field(3, description="small config: transformer blocks")
    num_attention_heads: PositiveInt = Field(3, description="small config: heads")
    patch_size: PositiveInt = Field(8, description="small config: patch side, pixels")
    pooling: Literal["cls", "cls_mean"] = Field(
        "cls", description="ViT features: the CLS token (the seed's) or CLS + mean patch "
        "token (DINOv2's linear-evaluation features)",
    )  # fmt: skip
    conv_channels: list[PositiveInt] = Field(
        default_factory=lambda: [16, 32, 64], description="backbone: convnet widths"
    )
    head_hidden: list[PositiveInt] = Field(
        default_factory=lambda: [512, 256], description="MLP head (seed: 768 -> 512 -> 256 -> N)"
    )
    dropout: float = Field(0.2, ge=0, lt=1, description="head dropout (seed: 0.2)")

    @model_validator(mode="after")
    def _heads(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")
        return self


class AugmentParams(Strict):
    """Training-time augmentation of the full fine-tuning stage."""

    flips: bool = True
    rotations: bool = Field(True, description="random multiples of 90 degrees")
    colour_jitter: float = Field(0.05, ge=0, le=0.5, description="per-channel gain/offset sd")


class HeadTraining(TrainingParams):
    """Stage 1: the head on frozen-backbone embeddings (computed once)."""


class FullTraining(TrainingParams):
    """Stage 2: backbone and head from the head stage's best checkpoint."""

    lr_backbone: float = Field(
        5e-4, gt=0,
        description="backbone peak lr (seed: 5e-6, for pretrained weights; the small random "
        "default config learns from scratch and needs more)",
    )  # fmt: skip
    lr_head: float = Field(1e-3, gt=0, description="head peak lr (seed: 1e-4)")


class MorphologyEvaluate(Strict):
    """Evaluation settings."""

    n_examples: int = Field(8, ge=1, le=64, description="example galaxies drawn with votes")
    interval: float = Field(0.68, gt=0, lt=1, description="predictive interval of fractions")
    min_asked_share: Fraction = Field(
        0.5,
        description="metrics count an answer when its question was asked of at least this "
        "share of the galaxy's volunteers (Walmsley et al. 2022; 0: whenever asked)",
    )
    #: The real galaxies' metrics (``real/...``) come from the table that
    #: ``astrobatch morphology predict`` wrote (the ``morphology_predict`` stage), not from a
    #: prepared set: its ``<answer>`` and ``<answer>_reference`` columns.
    real_predictions: str | None = Field(
        "reports/real/morphology.ecsv",
        description="predictions table (.ecsv/.fits) of `astrobatch morphology predict` on the "
        "real galaxies, scored as the `real` set (empty, null or a missing file: no real-data "
        "metrics)",
    )


class MorphologyParams(Strict):
    """The ``morphology`` section of ``params.yaml``."""

    seed: int = 0
    simulate: MorphologySimulate = MorphologySimulate()
    data: MorphologyData = MorphologyData()
    model: BackboneParams = BackboneParams()
    loss: Literal["mse", "dirichlet"] = Field(
        "mse", description="vote-weighted MSE on fractions, or Dirichlet-multinomial on counts"
    )
    augment: AugmentParams = AugmentParams()
    head: HeadTraining = HeadTraining(
        batch_size=128, max_epochs=40, lr=1e-3, weight_decay=0.01, patience=8
    )
    full: FullTraining = FullTraining(
        batch_size=64, max_epochs=20, lr=1e-3, weight_decay=0.01, patience=6
    )
    evaluate: MorphologyEvaluate = MorphologyEvaluate()
