"""Params of the cluster_age study: the ``cluster_age`` section of ``params.yaml``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from astrobatch.io.cutouts import PHANGS_BANDS
from astrobatch.params import (
    ImageSplitParams,
    OrderedRange,
    PositiveInt,
    PositiveTuple,
    Strict,
    TrainingParams,
)

#: HST bands of the cluster_age cutouts, in channel order (the PHANGS-HST cutout format).
CLUSTER_AGE_BANDS: tuple[str, ...] = PHANGS_BANDS


class ClusterAgeSimulate(Strict):
    """Parameters of the cluster_age cutout simulator (clusters drawn from the LEGUS catalogue)."""

    seed: int = Field(11, description="seed of the simulated data set (not of training)")
    catalogue_path: str = Field(
        "data/external/cluster_age/ngc628_Catalog.csv",
        description="LEGUS cluster catalogue (CSV export or MAST .tab, plain or gzip) giving "
        "age, mass, E(B-V), 5-band mags",
    )
    catalogue_distance_modulus: float = Field(
        29.98,
        gt=0,
        description="distance modulus of the catalogue's galaxy, mag (NGC 628: 29.98, 9.9 Mpc; "
        "NGC 1566: 31.28, 18 Mpc, Calzetti et al. 2015 Table 1)",
    )
    n_clusters: int = Field(2400, ge=10, description="cutouts to simulate")
    n_galaxies: int = Field(6, ge=1, description="mock host galaxies (distinct galaxy_ids)")
    distance_mpc_range: OrderedRange(0.01, 1000.0) = Field(
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
    exposure_s: PositiveTuple(5) = Field(
        (2400.0, 1100.0, 1200.0, 1000.0, 900.0),
        description="exposure time per band (F275W, F336W, F438W, F555W, F814W), s",
    )
    sky_e_per_s_per_px: PositiveTuple(5) = Field(
        (0.0005, 0.0015, 0.007, 0.02, 0.04),
        description="sky + dark current per band, electrons / s / pixel (subtracted after noise)",
    )
    read_noise_e: PositiveTuple(5) = Field(
        (3.1, 3.1, 4.0, 4.0, 4.0), description="read noise per exposure and band, electrons"
    )
    n_exposures: int = Field(3, ge=1, description="dithered exposures combined per band")
    field_sfr_range: OrderedRange(1e-6, 10.0) = Field(
        (0.002, 0.02),
        description="star-formation-rate surface density of the host discs (log-uniform per "
        "galaxy), Msun / yr / kpc^2; sets the resolved field stars",
    )
    disc_mu_v_range: OrderedRange(14.0, 30.0) = Field(
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


#: The NGC 1566 LEGUS catalogue vendored in ``data/external/cluster_age`` (MAST HLSP table).
NGC1566_CATALOGUE = (
    "data/external/cluster_age/"
    "hlsp_legus_hst_wfc3_ngc1566_multiband_v1_padagb-mwext-avgapcor.tab.gz"
)


class ClusterAgeCrossGalaxy(Strict):
    """The cross-galaxy sample: cutouts simulated from another galaxy's LEGUS catalogue.

    ``astrobatch cluster-age simulate-cross`` runs the simulator with ``simulate`` (every
    setting of the training set's mock observations) except the fields here, and writes
    ``raw_path``; ``astrobatch cluster-age predict`` applies the model trained on the default
    set (NGC 628) to it, and ``evaluate`` reports ``cross_galaxy/...`` from those predictions
    (``evaluate.real_predictions``). It never enters the splits.
    """

    catalogue_path: str = Field(
        NGC1566_CATALOGUE, description="LEGUS catalogue of the other galaxy (CSV or MAST .tab)"
    )
    catalogue_distance_modulus: float = Field(
        31.28, gt=0,
        description="distance modulus of that galaxy, mag (NGC 1566: 31.28, Calzetti et al. "
        "2015 Table 1)",
    )  # fmt: skip
    n_clusters: int = Field(600, ge=10, description="cutouts to simulate (about half in 7-9.5)")
    seed: int = Field(1566, ge=0, description="data-set seed (not the training set's)")
    raw_path: str = Field(
        "data/raw/cluster_age_cross/raw_phangs_dataset.h5",
        description="raw cutout file written by simulate-cross, read by the predict stage",
    )

    def simulate_params(self, simulate: ClusterAgeSimulate) -> ClusterAgeSimulate:
        """``simulate`` with this sample's catalogue, distance modulus, size and seed.

        Examples
        --------
        >>> s = ClusterAgeCrossGalaxy(n_clusters=20).simulate_params(ClusterAgeSimulate())
        >>> s.n_clusters, s.catalogue_distance_modulus, s.image_size
        (20, 31.28, 112)
        """
        own = self.model_dump(include={"catalogue_path", "catalogue_distance_modulus",
                                       "n_clusters", "seed"})  # fmt: skip
        return ClusterAgeSimulate.model_validate(simulate.model_dump() | own)


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
    conv_channels: list[PositiveInt] = Field(
        default_factory=lambda: [16, 32, 64], min_length=1,
        description="upstream: [128, 256, 512]",
    )  # fmt: skip
    dense_units: list[PositiveInt] = Field(
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
    real_predictions: str | None = Field(
        "reports/real/cluster_age.ecsv",
        description="predictions table of `astrobatch cluster-age predict` on the "
        "cross-galaxy sample (columns log_age, log_age_reference); evaluate reports "
        "cross_galaxy/... from it. null, empty or a missing file: no cross-galaxy metrics",
    )


class ClusterAgeParams(Strict):
    """The ``cluster_age`` section of ``params.yaml``."""

    seed: int = 0
    simulate: ClusterAgeSimulate = ClusterAgeSimulate()
    cross_galaxy: ClusterAgeCrossGalaxy = ClusterAgeCrossGalaxy()
    data: ClusterAgeData = ClusterAgeData()
    mask: MaskParams = MaskParams()
    model: CNNParams = CNNParams()
    training: ClusterAgeTraining = ClusterAgeTraining(
        batch_size=32, max_epochs=30, lr=1e-3, weight_decay=0.0, patience=8
    )
    evaluate: ClusterAgeEvaluate = ClusterAgeEvaluate()
