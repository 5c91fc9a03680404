"""Params of the cluster_finder study: the ``cluster_finder`` section of ``params.yaml``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from astrobatch.params import Fraction, OrderedRange, PositiveInt, Strict, TrainingParams

#: Member features the prepare step can compute (canonical catalogue columns, colours of
#: neighbouring bands, the unit vector of RA/DEC). ``r`` (projected radius, h^-1 Mpc) is
#: computed by redMaPPer from the cluster's own redshift: allowed, but off by default.
MEMBER_FEATURES: tuple[str, ...] = (
    "mag_u", "mag_g", "mag_r", "mag_i", "mag_z",
    "magerr_u", "magerr_g", "magerr_r", "magerr_i", "magerr_z",
    "g_r", "r_i", "i_z", "u_g", "imag", "imag_err",
    "p", "p_free", "theta_i", "theta_r", "r",
    "ux", "uy", "uz",
)  # fmt: skip
#: The unit-vector features (rotated together by the sky-rotation augmentation, not scaled).
UNIT_VECTOR: tuple[str, ...] = ("ux", "uy", "uz")
#: Features left unscaled: the unit vector, and the probabilities and weights in [0, 1]
#: (mostly 0 or 1, so an inter-quartile range would be ~0).
UNSCALED: tuple[str, ...] = (*UNIT_VECTOR, "p", "p_free", "theta_i", "theta_r")
#: Robust-scaled features are clipped to this many inter-quartile ranges (heavy-tailed
#: magnitude errors of faint members).
CLIP_SCALED = 10.0


class ClusterFinderSimulate(Strict):
    """The synthetic SDSS-like sky (clusters at real redMaPPer positions, GalSim images)."""

    seed: int = Field(11, description="seed of the simulated sky (not of training)")
    cluster_list: str = Field(
        "data/external/cluster_finder/redmapper_sdss_dr8_v5.10_clusters.csv.gz",
        description="real redMaPPer cluster list: positions, redshifts, richnesses",
    )
    galaxy_table: str = Field(
        "data/external/cluster_finder/redmapper_test_dr8_gals_with_zred.fit",
        description="real DR8 galaxy table: field-galaxy magnitudes are drawn from it",
    )
    n_clusters: PositiveInt = Field(320, description="cluster-centred images")
    n_empty: int = Field(160, ge=0, description="empty fields (> min_separation from clusters)")
    z_range: OrderedRange(0.0, 1.0, open_low=True) = Field(
        (0.08, 0.35), description="redshift range of the chosen clusters"
    )
    min_richness: float = Field(20.0, gt=0, description="lambda of the chosen clusters")
    field_arcmin: float = Field(
        13.5, gt=0, description="side of a cutout, arcmin (the seed's 2048 px x 0.396\")"
    )
    native_size: PositiveInt = Field(128, description="rendered side, pixels")
    image_size: PositiveInt = Field(64, description="written side after block averaging")
    max_offset_arcmin: float = Field(1.5, ge=0, description="random offset of the centre")
    psf_fwhm_arcsec: float = Field(1.4, gt=0)
    sky_sigma: float | None = Field(
        None, gt=0, description="sky noise per native pixel (flux units); null: SDSS depth"
    )
    mag_limit: float = Field(21.5, description="faintest rendered galaxy, i band")
    footprint_nside: PositiveInt = Field(64, description="HEALPix nside of the footprint map")
    n_workers: int = Field(1, ge=1)


class CatalogueSpec(Strict):
    """One raw input file and how to read it."""

    path: str
    layout: Literal["auto", "dr8", "redmapper", "cluster_list"] = "auto"
    columns: dict[str, str] = Field(
        default_factory=dict, description="file column -> canonical name (other releases)"
    )


class SplitRatios(Strict):
    """Train/val/test fractions of a salted hash of the cluster (or field) id."""

    train: Fraction = 0.7
    val: Fraction = 0.15
    salt: str = "cluster_finder"

    @field_validator("val")
    @classmethod
    def _sum(cls, v, info):
        if info.data.get("train", 0.7) + v >= 1:
            raise ValueError("train + val must leave a test share (< 1)")
        return v


class ClusterFinderData(Strict):
    """Which raw files to read and how to prepare images, boxes and member sets."""

    clusters: CatalogueSpec = CatalogueSpec(path="data/raw/cluster_finder/clusters.fits")
    members: CatalogueSpec = CatalogueSpec(path="data/raw/cluster_finder/members.fits")
    footprint: str = "data/raw/cluster_finder/footprint.fits"
    image_list: str = Field(
        "data/raw/cluster_finder/images.csv",
        description="CSV of file, ra, dec, pixel_scale_arcsec, size, kind (cluster|empty)",
    )
    image_size: PositiveInt = Field(64, description="prepared side (a divisor of the file's)")
    stretch: float = Field(3.0, gt=0, description="asinh softening in units of the sky sigma")
    min_box_side_px: float = Field(4.0, ge=0, description="native pixels")
    min_inside_fraction: Fraction = Field(
        0.5, description="boxes less inside the image than this are not detector targets"
    )
    min_separation_arcmin: float = Field(20.0, gt=0, description="empty fields from clusters")
    features: list[str] = Field(
        default_factory=lambda: [
            "mag_g", "mag_r", "mag_i", "mag_z", "magerr_g", "magerr_r", "magerr_i",
            "magerr_z", "g_r", "r_i", "i_z", "p", "p_free", "theta_i", "theta_r",
            "ux", "uy", "uz",
        ],
        description="member features (MEMBER_FEATURES); never the cluster's own Z",
    )  # fmt: skip
    redshift_target: Literal["z_lambda", "z_spec"] = Field(
        "z_lambda", description="z_spec falls back to z_lambda where missing"
    )
    min_members: PositiveInt = Field(3, description="clusters with fewer are not sets")
    split: SplitRatios = SplitRatios()
    real_members: str = Field(
        "data/external/cluster_finder/redmapper_test_cluster_members.fit",
        description="real members that prepare writes as the real.h5 set shards (empty: "
        "none); evaluate no longer predicts them: `astrobatch cluster-finder predict` does",
    )
    real_clusters: str = Field(
        "data/external/cluster_finder/redmapper_test_dr8_input_cluster_catalog.fit",
        description="redMaPPer's redshift and richness of the real members' cluster",
    )
    reference_clusters: str = Field(
        "data/external/cluster_finder/redmapper_test_zlamcal_cat.fit",
        description="real clusters with Z_LAMBDA and BCG_SPEC_Z: redMaPPer's own scatter",
    )

    @field_validator("features")
    @classmethod
    def _known(cls, v):
        unknown = [f for f in v if f not in MEMBER_FEATURES]
        if unknown:
            raise ValueError(f"unknown features {unknown}; choose from {list(MEMBER_FEATURES)}")
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate features in {v}")
        return v


class ImageModelParams(Strict):
    """Conv encoder (shared) of the classifier and the detector."""

    conv_channels: list[PositiveInt] = Field(default_factory=lambda: [16, 32, 64])
    head_hidden: list[PositiveInt] = Field(default_factory=lambda: [64])
    dropout: float = Field(0.1, ge=0, lt=1)
    detector_hidden: PositiveInt = 64
    augment: bool = Field(True, description="random flips and quarter turns (boxes follow)")


class DetectorEval(Strict):
    """Decoding and matching of detections."""

    score_threshold: Fraction | Literal["val"] = Field(
        "val",
        description="a score in [0, 1], or 'val': the threshold of the curve's grid where "
        "min(completeness, purity) is largest on the validation images",
    )
    iou_threshold: Fraction = Field(0.45, description="NMS")
    match_iou: Fraction = Field(0.5, description="a detection matches a truth at IoU >= this")
    min_richness: float = Field(20.0, ge=0, description="truths counted in completeness")
    z_max: float | None = Field(
        0.35,
        gt=0,
        description="truths counted in completeness have z <= z_max (redMaPPer SDSS DR8 is "
        "volume limited to z ~ 0.35, Rykoff et al. 2014); null: every redshift",
    )


class SamplingParams(Strict):
    """How member sets are drawn (the shared set sampler)."""

    num_star_per_sample: PositiveInt = Field(64, description="members per drawn set (padded)")
    num_sample_per_snapshot: PositiveInt = Field(4, description="draws per cluster per epoch")
    drop_probability: Fraction = 0.3
    drop_ratio_range: OrderedRange(0.0, 1.0) = (0.1, 0.5)
    drop_at_eval: bool = False


class SetModelParams(Strict):
    """A member-set model: Janossy pooling (default) or the shared Deep Sets / Set Transformer."""

    name: Literal["janossy", "deep_sets", "set_transformer", "summary_stats"] = "janossy"
    hidden_dim: PositiveInt = 64
    phi_layers: PositiveInt = 2
    rho_layers: PositiveInt = 2
    pooling: Literal["mean", "sum"] = "mean"
    num_heads: PositiveInt = 4
    num_blocks: PositiveInt = 2
    num_inducing: int = Field(0, ge=0)
    janossy_k: PositiveInt = Field(2, description="k of k-ary Janossy pooling")
    n_tuples_train: PositiveInt = 32
    n_tuples_eval: PositiveInt = 128
    janossy_count_feature: bool = Field(False, description="log(1 + n) of the set to rho")


class MembersTarget(Strict):
    """One member-set regression (redshift or richness)."""

    sampling: SamplingParams = SamplingParams()
    model: SetModelParams = SetModelParams()
    training: TrainingParams = TrainingParams(batch_size=64, max_epochs=15, lr=3e-3, patience=6)
    rotate: bool = Field(True, description="random 3-D rotations of the unit vectors")


class ClusterFinderEvaluate(Strict):
    """Evaluation settings that are not detection's: the real clusters' predictions."""

    real_predictions: str | None = Field(
        "reports/real/cluster_finder.ecsv",
        description="predictions table of the real clusters (`astrobatch cluster-finder "
        "predict`, the cluster_finder_predict stage) summarised as the real/ metrics; null, "
        "empty or a missing file: none",
    )


class ClusterFinderParams(Strict):
    """The ``cluster_finder`` section of ``params.yaml``."""

    seed: int = 0
    simulate: ClusterFinderSimulate = ClusterFinderSimulate()
    data: ClusterFinderData = ClusterFinderData()
    images: ImageModelParams = ImageModelParams()
    classifier: TrainingParams = TrainingParams(batch_size=32, max_epochs=15, lr=2e-3, patience=5)
    detector: TrainingParams = TrainingParams(batch_size=16, max_epochs=30, lr=2e-3, patience=8)
    detection: DetectorEval = DetectorEval()
    evaluate: ClusterFinderEvaluate = ClusterFinderEvaluate()
    redshift: MembersTarget = MembersTarget()
    richness: MembersTarget = MembersTarget(
        # every member, none dropped: richness is close to a count of members
        sampling=SamplingParams(num_star_per_sample=256, num_sample_per_snapshot=2,
                                drop_probability=0.0),
        model=SetModelParams(janossy_k=10, janossy_count_feature=True),
    )  # fmt: skip
