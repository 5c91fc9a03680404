"""Params of the star_sets study: the ``star_sets`` section of ``params.yaml``.

Shared types (:class:`~astrobatch.params.Strict`, :class:`~astrobatch.params.SplitParams`,
:class:`~astrobatch.params.TrainingParams`, :func:`~astrobatch.params.OrderedRange`) come
from :mod:`astrobatch.params`; the raw-format column lists are this study's.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from astrobatch.params import Fraction, OrderedRange, SplitParams, Strict, TrainingParams

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


class StarSetsSimulate(Strict):
    """Parameters of the star_sets simulator (King models sampled with galpy)."""

    seed: int = Field(2024, description="seed of the simulated data set (not of training)")
    n_runs: int = Field(48, ge=3, description="number of simulated runs (initial conditions)")
    snapshots_per_run: int = Field(5, ge=1, description="snapshots per run, evenly spaced in time")
    log10_mass_range: OrderedRange(0.0, 8.0) = Field(
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
    filling_factor_range: OrderedRange(0.0, 1.5, open_low=True) = Field(
        (0.7, 1.3),
        description="King truncation radius / Jacobi radius at t = 0, per run (log-uniform); "
        "the cluster then expands adiabatically with its stellar-evolution mass loss",
    )
    binary_fraction: Fraction = 0.3
    escaper_fraction_max: Fraction = Field(
        0.3, description="fraction of stars beyond r_t at the last snapshot"
    )
    field_star_fraction: Fraction = 0.02
    imf_mass_range: OrderedRange(0.0, open_low=True, strict_order=True) = Field(
        (0.08, 50.0), description="IMF limits, Msun"
    )


class StarSetsData(Strict):
    """Which raw file to read and how to prepare it."""

    raw_path: str = "data/raw/star_sets/snapshots.h5"
    raw_format: Literal["hdf5", "upstream_npz", "nbody6_out3"] = "hdf5"
    raw_pattern: str | None = Field(
        None,
        description="glob of the files kept when raw_path is a folder (null: the format's own "
        "naming, **/conf.3_* for nbody6_out3, *.npz for upstream_npz); other files are ignored",
    )
    run_id: str | None = Field(
        None,
        description="run id of nbody6_out3 snapshots (null: the name of each file's folder, "
        "one NBODY6 run per folder)",
    )
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
    drop_probability: Fraction = 0.6
    drop_ratio_range: OrderedRange(0.0, 1.0) = (0.1, 0.9)
    drop_at_eval: bool = Field(
        True, description="also drop stars at val/test time (fixed seeded draw), as upstream"
    )


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


class StarSetsEvaluate(Strict):
    """Evaluation settings: the real snapshots' predictions and the orbit of real runs."""

    real_predictions: str | None = Field(
        "reports/real/star_sets.ecsv",
        description="predictions table of the real NBODY6++ snapshots (`astrobatch star-sets "
        "predict`, the star_sets_predict stage) summarised as real/ metrics; null or a "
        "missing file: none",
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
