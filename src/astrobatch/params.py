"""Typed, validated parameters: one pydantic model per ``params.yaml`` section.

Every model forbids unknown keys, checks types strictly enough to catch typos
(``"3e-3"`` is accepted as a float, ``"abc"`` is not) and checks impossible
values (a ratio outside [0, 1], an empty feature list, a negative learning
rate). :func:`load_params` turns any violation into one
:class:`~astrobatch.errors.ParamsError` naming the file, the dotted key and the
expectation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from astrobatch.errors import ParamsError

DEFAULT_PARAMS = Path("params.yaml")

#: Per-star columns of the star_sets raw format (see README, "Raw star-set format").
STAR_COLUMNS: tuple[str, ...] = (
    "x",
    "y",
    "z",
    "vx",
    "vy",
    "vz",
    "mass",
    "lon_deg",
    "lat_deg",
    "pm_lon_coslat_mas_yr",
    "pm_lat_mas_yr",
    "log_L_L_sol",
)
#: Per-snapshot target columns of the star_sets raw format.
SNAPSHOT_TARGETS: tuple[str, ...] = (
    "total_mass_within_2x_r_tidal",
    "time",
    "r_half_mass",
    "r_tidal",
    "n_stars_within_2x_r_tidal",
)


class Strict(BaseModel):
    """Base for all params models: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_range(value: tuple[float, float], lo: float, hi: float, what: str):
    a, b = value
    if not (lo <= a <= b <= hi):
        raise ValueError(f"{what} must satisfy {lo} <= low <= high <= {hi}, got [{a}, {b}]")
    return value


class StarSetsSimulate(Strict):
    """Parameters of the star_sets simulator (King models sampled with galpy)."""

    seed: int = Field(2024, description="seed of the simulated data set (not of training)")
    n_runs: int = Field(48, ge=3, description="number of simulated runs (initial conditions)")
    snapshots_per_run: int = Field(5, ge=1, description="snapshots per run, evenly spaced in time")
    log10_mass_range: tuple[float, float] = Field(
        (3.0, 4.2), description="initial cluster mass range, log10 Msun"
    )
    w0_levels: list[float] = Field(
        [3.0, 5.0, 7.0], min_length=1, description="King W0 (concentration) levels, one per 'Rad'"
    )
    metallicities: list[float] = Field([0.0002, 0.002, 0.02], min_length=1)
    max_time_myr: float = Field(100.0, gt=0, description="time of the last snapshot, Myr")
    galactocentric_radius_kpc: float = Field(
        8.0, gt=0, description="circular orbit radius in MWPotential2014 defining r_t, kpc"
    )
    filling_factor_range: tuple[float, float] = Field(
        (0.7, 1.3),
        description="King truncation radius / Jacobi radius at t = 0, per run (log-uniform); "
        "the cluster then expands adiabatically with its stellar-evolution mass loss",
    )
    binary_fraction: float = Field(0.3, ge=0, le=1)
    escaper_fraction_max: float = Field(
        0.3, ge=0, le=1, description="fraction of stars beyond r_t at the last snapshot"
    )
    field_star_fraction: float = Field(0.02, ge=0, le=1)
    imf_mass_range: tuple[float, float] = Field((0.08, 50.0), description="IMF limits, Msun")

    @field_validator("log10_mass_range")
    @classmethod
    def _mass_range(cls, v):
        return _check_range(v, 0.0, 8.0, "log10_mass_range")

    @field_validator("filling_factor_range")
    @classmethod
    def _filling(cls, v):
        if not 0 < v[0] <= v[1] <= 1.5:
            raise ValueError(
                f"filling_factor_range must satisfy 0 < low <= high <= 1.5, got {list(v)}"
            )
        return v

    @field_validator("imf_mass_range")
    @classmethod
    def _imf_range(cls, v):
        if not 0 < v[0] < v[1]:
            raise ValueError(f"imf_mass_range must satisfy 0 < low < high, got {list(v)}")
        return v


class SplitParams(Strict):
    """Split of runs into train/val/test (ratios sum to 1)."""

    train: float = Field(0.7, gt=0, lt=1)
    val: float = Field(0.2, ge=0, lt=1)
    test: float = Field(0.1, gt=0, lt=1)
    salt: str = Field(
        "astrobatch", description="salt of the run-id hash that orders runs before splitting"
    )
    stratify: list[str] = Field(
        default_factory=lambda: ["ic_w0", "ic_metallicity", "ic_mass_level"],
        description="per-snapshot columns that define strata of initial conditions",
    )

    @model_validator(mode="after")
    def _sum_to_one(self):
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1, got {total:g}")
        return self


class StarSetsData(Strict):
    """Which raw file to read and how to prepare it."""

    raw_path: str = "data/raw/star_sets/snapshots.h5"
    raw_format: Literal["hdf5", "upstream_npz", "nbody6_out3"] = "hdf5"
    features: list[str] = Field(
        default_factory=lambda: ["x", "y", "z", "vx", "vy", "vz"], min_length=1
    )
    target: str = "total_mass_within_2x_r_tidal"
    log_target: bool = Field(True, description="regress log10 of the target (mass)")
    split: SplitParams = SplitParams()
    chunk_rows: int = Field(65536, ge=1024, description="rows per HDF5 chunk / prepare block")
    scaler_sample_rows: int = Field(
        500_000, ge=1000, description="max train rows (seeded sample) used to fit scalers"
    )

    @field_validator("features")
    @classmethod
    def _known_features(cls, v):
        unknown = [f for f in v if f not in STAR_COLUMNS]
        if unknown:
            raise ValueError(f"unknown features {unknown}; choose from {list(STAR_COLUMNS)}")
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate features in {v}")
        return v

    @field_validator("target")
    @classmethod
    def _known_target(cls, v):
        if v not in SNAPSHOT_TARGETS:
            raise ValueError(f"unknown target {v!r}; choose from {list(SNAPSHOT_TARGETS)}")
        return v


class SamplingParams(Strict):
    """How sets of stars are drawn from a snapshot (training and evaluation)."""

    num_star_per_sample: int = Field(128, ge=1)
    num_sample_per_snapshot: int = Field(16, ge=1)
    drop_probability: float = Field(0.6, ge=0, le=1)
    drop_ratio_range: tuple[float, float] = (0.1, 0.9)
    drop_at_eval: bool = Field(
        True, description="also drop stars at val/test time (fixed seeded draw), as upstream"
    )

    @field_validator("drop_ratio_range")
    @classmethod
    def _ratio(cls, v):
        return _check_range(v, 0.0, 1.0, "drop_ratio_range")


class SetModelParams(Strict):
    """Set-model architecture (``name`` picks one of the three)."""

    name: Literal["summary_stats", "deep_sets", "set_transformer"] = "deep_sets"
    hidden_dim: int = Field(64, ge=1)
    phi_layers: int = Field(2, ge=1, description="deep_sets: layers of the per-star MLP")
    rho_layers: int = Field(2, ge=1, description="layers of the MLP after pooling")
    pooling: Literal["mean", "sum"] = "mean"
    num_heads: int = Field(4, ge=1, description="set_transformer: attention heads")
    num_blocks: int = Field(2, ge=1, description="set_transformer: SAB/ISAB blocks")
    num_inducing: int = Field(0, ge=0, description="set_transformer: ISAB inducing points, 0=SAB")

    @model_validator(mode="after")
    def _heads_divide(self):
        if self.name == "set_transformer" and self.hidden_dim % self.num_heads:
            raise ValueError(
                f"hidden_dim ({self.hidden_dim}) must be divisible by num_heads ({self.num_heads})"
            )
        return self


class TrainingParams(Strict):
    """Optimisation and hardware (Lightning Trainer) settings."""

    batch_size: int = Field(64, ge=1)
    max_epochs: int = Field(30, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    huber_delta: float = Field(1.0, gt=0)
    gradient_clip_val: float = Field(0.5, gt=0)
    patience: int = Field(10, ge=1, description="early stopping on val loss")
    num_workers: int = Field(0, ge=0)
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = Field(1, ge=1, description="nodes (multi-node DDP under SLURM: srun)")
    strategy: str = "auto"
    precision: str = "32-true"
    resume: Literal["auto", "never"] = Field(
        "auto", description="auto: continue from last.ckpt of an interrupted identical run"
    )


class StarSetsEvaluate(Strict):
    """Evaluation settings, including the real NBODY6++ snapshots to predict."""

    real_snapshots: list[str] = Field(
        default_factory=lambda: [
            "data/external/star_sets/conf.3_0",
            "data/external/star_sets/conf.3_20",
        ],
        description="NBODY6++ OUT3 files predicted by `evaluate`; missing files are skipped",
    )
    real_galactocentric_radius_kpc: float = Field(
        8.0, gt=0, description="circular orbit (MWPotential2014) defining r_t of real snapshots"
    )


class StarSetsParams(Strict):
    """The ``star_sets`` section of ``params.yaml``."""

    seed: int = 42
    simulate: StarSetsSimulate = StarSetsSimulate()
    data: StarSetsData = StarSetsData()
    sampling: SamplingParams = SamplingParams()
    model: SetModelParams = SetModelParams()
    training: TrainingParams = TrainingParams()
    evaluate: StarSetsEvaluate = StarSetsEvaluate()


# --------------------------------------------------------------------------- cluster_age

#: HST bands of the cluster_age cutouts, in channel order (PHANGS-HST / LEGUS).
CLUSTER_AGE_BANDS: tuple[str, ...] = ("F275W", "F336W", "F438W", "F555W", "F814W")


class ClusterAgeSimulate(Strict):
    """Parameters of the cluster_age cutout simulator (clusters drawn from the LEGUS catalogue)."""

    seed: int = Field(11, description="seed of the simulated data set (not of training)")
    catalogue_path: str = Field(
        "data/external/cluster_age/ngc628_Catalog.csv",
        description="LEGUS cluster catalogue (NGC 628) giving age, mass, E(B-V), 5-band mags",
    )
    n_clusters: int = Field(2400, ge=10, description="cutouts to simulate")
    n_galaxies: int = Field(6, ge=1, description="mock host galaxies (distinct galaxy_ids)")
    distance_mpc_range: tuple[float, float] = Field(
        (5.0, 15.0), description="distances of the mock galaxies, Mpc"
    )
    image_size: int = Field(112, ge=16, description="cutout side, pixels (real files: 112)")
    pixel_scale_arcsec: float = Field(0.04, gt=0, description="HST WFC3/UVIS-like pixel, arcsec")
    psf_fwhm_arcsec: float = Field(0.08, gt=0, description="Gaussian PSF FWHM, arcsec")
    age_jitter_dex: float = Field(
        0.02, ge=0, le=0.5, description="Gaussian jitter of the drawn catalogue log ages, dex"
    )
    mag_error_scale: float = Field(
        1.0, ge=0, le=5.0,
        description="jitter of the drawn catalogue magnitudes, in units of their catalogue "
        "errors (each capped at 0.2 mag): a re-observation of the cluster",
    )  # fmt: skip
    exposure_s: tuple[float, float, float, float, float] = Field(
        (2400.0, 1100.0, 1200.0, 1000.0, 900.0),
        description="exposure time per band (F275W, F336W, F438W, F555W, F814W), s",
    )
    sky_e_per_s_per_px: tuple[float, float, float, float, float] = Field(
        (0.0005, 0.0015, 0.007, 0.02, 0.04),
        description="sky + dark current per band, electrons / s / pixel (subtracted after noise)",
    )
    read_noise_e: tuple[float, float, float, float, float] = Field(
        (3.1, 3.1, 4.0, 4.0, 4.0), description="read noise per exposure and band, electrons"
    )
    n_exposures: int = Field(3, ge=1, description="dithered exposures combined per band")
    field_sfr_range: tuple[float, float] = Field(
        (0.002, 0.02),
        description="star-formation-rate surface density of the host discs (log-uniform per "
        "galaxy), Msun / yr / kpc^2; sets the resolved field stars",
    )
    disc_mu_v_range: tuple[float, float] = Field(
        (20.5, 22.5),
        description="F555W surface brightness of the smooth host disc (uniform per galaxy), "
        "mag / arcsec^2",
    )
    association_mass_ratio: float = Field(
        2.0, ge=0,
        description="stellar mass of the coeval association around each cluster / cluster "
        "mass (it disperses with age)",
    )  # fmt: skip
    n_workers: int = Field(
        1, ge=1, le=64, description="processes rendering cutouts (output identical for any value)"
    )

    @field_validator("distance_mpc_range")
    @classmethod
    def _dist(cls, v):
        return _check_range(v, 0.01, 1000.0, "distance_mpc_range")

    @field_validator("exposure_s", "sky_e_per_s_per_px", "read_noise_e")
    @classmethod
    def _per_band(cls, v):
        if not all(x > 0 for x in v):
            raise ValueError(f"expected five positive values, got {list(v)}")
        return v

    @field_validator("field_sfr_range")
    @classmethod
    def _sfr(cls, v):
        return _check_range(v, 1e-6, 10.0, "field_sfr_range")

    @field_validator("disc_mu_v_range")
    @classmethod
    def _mu(cls, v):
        return _check_range(v, 14.0, 30.0, "disc_mu_v_range")


class ImageSplitParams(Strict):
    """Split of cutouts into train/val/test: seeded random, or grouped by galaxy."""

    train: float = Field(0.7, gt=0, lt=1)
    val: float = Field(0.15, ge=0, lt=1)
    test: float = Field(0.15, gt=0, lt=1)
    by: Literal["random", "galaxy"] = Field(
        "random", description="random (upstream) or galaxy (no galaxy in two splits)"
    )
    seed: int = Field(0, description="seed of the split (independent of the training seed)")

    @model_validator(mode="after")
    def _sum_to_one(self):
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1, got {total:g}")
        return self


class ClusterAgeData(Strict):
    """Which raw cutout file to read and how to prepare it."""

    raw_path: str = "data/raw/cluster_age/raw_phangs_dataset.h5"
    remove_extremes: bool = Field(True, description="keep log_age_range only, before splitting")
    log_age_range: tuple[float, float] = Field((7.0, 9.5), description="kept log10 age range, yr")
    crop_size: int = Field(
        80, ge=8, description="central crop side written to the shards, pixels (112 = none)"
    )
    split: ImageSplitParams = ImageSplitParams()
    chunk_images: int = Field(64, ge=1, description="cutouts per HDF5 chunk")
    aperture_radius_px: float = Field(4.0, gt=0, description="photometry aperture (LEGUS: 4 px)")
    sky_annulus_px: tuple[float, float] = Field(
        (7.0, 9.0), description="sky annulus inner/outer radius, pixels"
    )


class MaskParams(Strict):
    """Blackout mask: a disk of radius R (pixels) at the cutout centre."""

    type: Literal["none", "inner", "outer"] = Field(
        "none", description="inner: zero the disk (hide the cluster); outer: zero outside it"
    )
    radius: float = Field(0.0, ge=0, description="R, pixels; 0 means no mask")


class CNNParams(Strict):
    """The cluster_age CNN (three conv + max-pool blocks, three dense layers)."""

    input: Literal["1im", "5im"] = Field("5im", description="1im: mean of the 5 filters")
    conv_channels: list[int] = Field(
        default_factory=lambda: [16, 32, 64], min_length=1,
        description="upstream: [128, 256, 512]",
    )  # fmt: skip
    dense_units: list[int] = Field(
        default_factory=lambda: [128, 64, 32], description="upstream: [512, 256, 128]"
    )
    dropout: float = Field(0.0, ge=0, lt=1)


class ClusterAgeTraining(TrainingParams):
    """Training of the CNN: TrainingParams plus the study's input options."""

    normalisation: Literal["single-image", "five-images", "filter", "dataset"] = "filter"
    stretch: Literal["none", "asinh"] = Field(
        "asinh",
        description="before normalisation: none (upstream, linear) or asinh(x / asinh_scale) "
        "(Lupton et al. 1999), which keeps faint structure next to bright stars",
    )
    asinh_scale: float = Field(0.05, gt=0, description="asinh softening, image units (e-/s)")
    augment: bool = Field(True, description="random dihedral transform of training cutouts")
    shuffle_targets: bool = Field(
        False, description="control: permute train/val targets (the model must fall to baseline)"
    )
    loss: Literal["mse", "huber"] = "mse"


class ClusterAgeEvaluate(Strict):
    """Evaluation settings."""

    random_baseline_draws: int = Field(100, ge=1, description="draws of the random baseline")
    n_examples: int = Field(8, ge=1, description="example cutouts drawn with the mask")


class ClusterAgeParams(Strict):
    """The ``cluster_age`` section of ``params.yaml``."""

    seed: int = 0
    simulate: ClusterAgeSimulate = ClusterAgeSimulate()
    data: ClusterAgeData = ClusterAgeData()
    mask: MaskParams = MaskParams()
    model: CNNParams = CNNParams()
    training: ClusterAgeTraining = ClusterAgeTraining(
        batch_size=32, max_epochs=30, lr=1e-3, weight_decay=0.0, patience=8
    )
    evaluate: ClusterAgeEvaluate = ClusterAgeEvaluate()


# ---------------------------------------------------------------------------- stellar_xp


class StellarXPSimulate(Strict):
    """Parameters of the stellar_xp star simulator (labels -> XP coefficients, photometry)."""

    seed: int = Field(5, description="seed of the simulated data set (not of training)")
    n_pretrain: int = Field(12000, ge=10, description="stars in the pretraining HDF5")
    rows_per_part: int = Field(4000, ge=1, description="rows per sslset<N>_part<k> dataset")
    n_finetune: int = Field(4000, ge=10, description="stars in the fine-tuning FITS table")
    g_limit: float = Field(
        17.65, gt=5, le=21, description="faint Gaia G limit of the pretraining stars (XP: 17.65)"
    )
    finetune_g_limit: float = Field(
        16.0, gt=5, le=21, description="faint G limit of the fine-tuning (spectroscopic) stars"
    )
    no_xp_fraction: float = Field(0.03, ge=0, le=1, description="stars without any XP spectrum")
    missing_band_fraction: float = Field(
        0.01, ge=0, le=1, description="stars without BP coefficients (and, independently, RP)"
    )
    batch_rows: int = Field(2000, ge=64, description="stars simulated per batch (memory)")


class StellarXPData(Strict):
    """Inputs of stellar_xp prepare and how to scale and split them."""

    pretrain_sources: Literal["simulated", "real", "mixed"] = Field(
        "mixed", description="pretrain on simulated stars, the real Gaia XP sources, or both"
    )
    pretrain_path: str = "data/raw/stellar_xp/pretrain.h5"
    real_xp_paths: list[str] = Field(
        default_factory=lambda: ["data/external/stellar_xp/gaia_dr3_xp_continuous_chunk0.fits"],
        description="real Gaia XP files (flat or archive layout; FITS, ECSV or CSV)",
    )
    finetune_path: str = "data/raw/stellar_xp/finetune.fits"
    val_keys: list[str] = Field(
        default_factory=list,
        description="pretraining datasets held out for validation (empty: the last key)",
    )
    real_val_fraction: float = Field(0.2, gt=0, lt=1, description="real sources held out")
    include_radec: bool = Field(False, description="add RA, DEC to the pretraining features")
    xp_normalisation: Literal["none", "flux"] = Field(
        "flux",
        description="flux: XP c_1 -> -2.5 log10 c_1 and c_i -> c_i / c_1 before scaling "
        "(shape separated from brightness); none: raw coefficients (upstream)",
    )
    recon_until: Literal["EBV", "KS"] = Field(
        "EBV", description="reconstructed columns: the feature prefix up to this column"
    )
    labels: list[str] = Field(
        default_factory=lambda: ["teff", "logg", "fe_h", "alpha", "age", "parallax"],
        min_length=1,
    )
    required_labels: list[str] = Field(
        default_factory=list,
        description="labels that must have a value in every fine-tuning row (NaN: InputError)",
    )
    scaler_max_rows: int = Field(200_000, ge=100, description="rows sampled to fit the scaler")
    scaler_keys: list[str] = Field(
        default_factory=list, description="datasets sampled for the scaler (empty: all train)"
    )
    chunk_rows: int = Field(4096, ge=16, description="rows per shard chunk / read block")
    split: SplitParams = SplitParams(train=0.7, val=0.15, test=0.15, salt="astrobatch", stratify=[])

    @model_validator(mode="after")
    def _known_labels(self):
        from astrobatch.studies.stellar_xp.columns import ALL_LABELS

        for name in ("labels", "required_labels"):
            v = getattr(self, name)
            unknown = [lab for lab in v if lab not in ALL_LABELS]
            if unknown:
                raise ValueError(f"{name}: unknown {unknown}; choose from {list(ALL_LABELS)}")
            if len(set(v)) != len(v):
                raise ValueError(f"{name}: duplicates in {v}")
        extra = [lab for lab in self.required_labels if lab not in self.labels]
        if extra:
            raise ValueError(f"required_labels {extra} are not in labels {self.labels}")
        return self


class MaskingParams(Strict):
    """Masked-reconstruction masking (McKay & Fabbro 2025)."""

    xp_masking_ratio: float = Field(0.9, ge=0, le=1, description="rows whose XP block is masked")
    m_masking_ratio: float = Field(0.6, ge=0, le=1, description="element-wise mask, other cols")
    force_mask_cols: list[str] = Field(default_factory=list)
    mask_indicators: bool = Field(False, description="append a binary mask channel per feature")
    fill_value: float = 0.0
    perturb_errors: bool = Field(False, description="Gaussian perturbation of inputs by errors")


class AutoencoderParams(Strict):
    """Encoder/decoder sizes (upstream widths 2048,2048,1024,1024,512,512,256,256)."""

    embedding_dim: int = Field(16, ge=1, description="periodic embedding size per feature")
    n_frequencies: int = Field(16, ge=1)
    frequency_init_scale: float = Field(0.01, gt=0)
    widths: list[int] = Field(default_factory=lambda: [512, 256], min_length=1)
    latent_dim: int = Field(256, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)


class PretrainParams(Strict):
    """Pretraining objective and optimisation."""

    loss: Literal["mae", "mse"] = "mae"
    error_weighted: bool = False
    training: TrainingParams = TrainingParams(
        batch_size=256, max_epochs=15, lr=1e-3, weight_decay=1e-5, gradient_clip_val=1.0,
        patience=5,
    )  # fmt: skip


class FinetuneParams(Strict):
    """Quantile fine-tuning."""

    head_hidden: list[int] = Field(default_factory=lambda: [256, 128])
    lr_encoder: float = Field(3e-4, gt=0)
    lr_head: float = Field(1e-3, gt=0)
    recon_weight: float = Field(0.0, ge=0, description="multitask reconstruction loss weight")
    two_pass_parallax: bool = Field(True, description="parallax from a pass with parallax masked")
    parallax_mle_weight: float = Field(0.0, ge=0)
    parallax_floor: float = Field(0.01, ge=0, description="sigma floor of the MLE term, mas")
    training: TrainingParams = TrainingParams(
        batch_size=128, max_epochs=30, lr=1e-3, weight_decay=1e-5, gradient_clip_val=1.0,
        patience=6,
    )  # fmt: skip


class StellarXPParams(Strict):
    """The ``stellar_xp`` section of ``params.yaml``."""

    seed: int = 0
    simulate: StellarXPSimulate = StellarXPSimulate()
    data: StellarXPData = StellarXPData()
    masking: MaskingParams = MaskingParams()
    model: AutoencoderParams = AutoencoderParams()
    pretrain: PretrainParams = PretrainParams()
    finetune: FinetuneParams = FinetuneParams()


SECTIONS: dict[str, type[Strict]] = {
    "star_sets": StarSetsParams,
    "cluster_age": ClusterAgeParams,
    "stellar_xp": StellarXPParams,
}
#: Top-level keys that are not study sections (shared settings).
SHARED_KEYS = {"runner"}

M = TypeVar("M", bound=BaseModel)


def _format_validation_error(err: ValidationError, section: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join([section, *[str(p) for p in e["loc"]]])
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check spelling; see params.yaml for the known keys)"
        lines.append(f"{loc}: {msg} (got {e.get('input')!r})")
    return "; ".join(lines)


def parse_section(raw: dict[str, Any] | None, model: type[M], section: str, path: str) -> M:
    """Validate one section's raw mapping into its typed model.

    Parameters
    ----------
    raw : dict or None
        The section as read from YAML (None means all defaults).
    model : type
        The pydantic model of the section.
    section : str
        Section name, used in messages.
    path : str
        File the section came from, used in messages.

    Returns
    -------
    pydantic.BaseModel
        The validated, frozen parameters.

    Raises
    ------
    ParamsError
        On an unknown key, a wrong type or an impossible value.
    """
    if raw is not None and not isinstance(raw, dict):
        raise ParamsError(f"expected a mapping, got {type(raw).__name__}", path=path, key=section)
    try:
        return model.model_validate(raw or {})
    except ValidationError as err:
        raise ParamsError(_format_validation_error(err, section), path=path) from None


def load_params(section: str, path: str | Path = DEFAULT_PARAMS) -> Any:
    """Read ``params.yaml`` and return the validated model of one section.

    Parameters
    ----------
    section : str
        Section name, e.g. ``"star_sets"``.
    path : str or pathlib.Path
        YAML file (default ``params.yaml`` in the working directory).

    Returns
    -------
    StarSetsParams or other section model
        Frozen, validated parameters.

    Raises
    ------
    ParamsError
        If the file is missing, is not valid YAML, has an unknown top-level
        section, or the section is invalid.
    """
    path = Path(path)
    if not path.is_file():
        raise ParamsError("params file not found (run from the project root)", path=path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ParamsError(f"not valid YAML: {err}", path=path) from None
    if not isinstance(data, dict):
        raise ParamsError("expected a mapping of sections at the top level", path=path)
    unknown = sorted(set(data) - set(SECTIONS) - SHARED_KEYS)
    if unknown:
        raise ParamsError(
            f"unknown top-level section(s) {unknown}; known: {sorted(SECTIONS)}", path=path
        )
    if section not in SECTIONS:
        raise ParamsError(f"unknown section {section!r}; known: {sorted(SECTIONS)}", path=path)
    return parse_section(data.get(section), SECTIONS[section], section, str(path))
