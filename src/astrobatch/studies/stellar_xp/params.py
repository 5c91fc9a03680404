"""Params of the stellar_xp study: the ``stellar_xp`` section of ``params.yaml``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from astrobatch.params import Fraction, PositiveInt, SplitParams, Strict, TrainingParams
from astrobatch.studies.stellar_xp.columns import ALL_LABELS


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
    no_xp_fraction: Fraction = Field(0.03, description="stars without any XP spectrum")
    missing_band_fraction: Fraction = Field(
        0.01, description="stars without BP coefficients (and, independently, RP)"
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

    xp_masking_ratio: Fraction = Field(0.9, description="rows whose XP block is masked")
    m_masking_ratio: Fraction = Field(0.6, description="element-wise mask, other cols")
    force_mask_cols: list[str] = Field(default_factory=list)
    mask_indicators: bool = Field(False, description="append a binary mask channel per feature")
    fill_value: float = 0.0
    perturb_errors: bool = Field(False, description="Gaussian perturbation of inputs by errors")


class AutoencoderParams(Strict):
    """Encoder/decoder sizes (upstream widths 2048,2048,1024,1024,512,512,256,256)."""

    embedding_dim: int = Field(16, ge=1, description="periodic embedding size per feature")
    n_frequencies: int = Field(16, ge=1)
    frequency_init_scale: float = Field(0.01, gt=0)
    widths: list[PositiveInt] = Field(default_factory=lambda: [512, 256], min_length=1)
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

    head_hidden: list[PositiveInt] = Field(default_factory=lambda: [256, 128])
    lr_encoder: float = Field(3e-4, gt=0)
    lr_head: float = Field(1e-3, gt=0)
    head_only_epochs: int = Field(
        0, ge=0, description="epochs with the encoder frozen before it trains (0 = none)"
    )
    recon_weight: float = Field(0.0, ge=0, description="multitask reconstruction loss weight")
    two_pass_parallax: bool = Field(True, description="parallax from a pass with parallax masked")
    parallax_mle_weight: float = Field(0.0, ge=0)
    parallax_floor: float = Field(0.01, ge=0, description="sigma floor of the MLE term, mas")
    training: TrainingParams = TrainingParams(
        batch_size=128, max_epochs=30, lr=1e-3, weight_decay=1e-5, gradient_clip_val=1.0,
        patience=6,
    )  # fmt: skip


class StellarXPEvaluate(Strict):
    """Evaluation settings beyond the prepared splits."""

    real_predictions: str | None = Field(
        "reports/real/stellar_xp.ecsv",
        description="predictions table of real Gaia XP sources (`astrobatch stellar-xp "
        "predict`, the stellar_xp_predict stage) summarised as real/ metrics; null or a "
        "missing file: none",
    )


class StellarXPParams(Strict):
    """The ``stellar_xp`` section of ``params.yaml``."""

    seed: int = 0
    simulate: StellarXPSimulate = StellarXPSimulate()
    data: StellarXPData = StellarXPData()
    masking: MaskingParams = MaskingParams()
    model: AutoencoderParams = AutoencoderParams()
    pretrain: PretrainParams = PretrainParams()
    finetune: FinetuneParams = FinetuneParams()
    evaluate: StellarXPEvaluate = StellarXPEvaluate()
