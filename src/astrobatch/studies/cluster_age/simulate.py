"""cluster_age simulator (the embedded default): HST cluster cutouts drawn from the LEGUS catalogue.

Writes the real ``raw_phangs_dataset.h5`` layout (:mod:`astrobatch.io.cutouts`):
five channels F275W, F336W, F438W, F555W, F814W in electrons / s / pixel
(sky subtracted), the cluster at pixel ``(H // 2, W // 2)``. Physics in
:mod:`~astrobatch.studies.cluster_age.physics`; zero points
:data:`~astrobatch.studies.cluster_age.photometry.ZEROPOINTS_VEGA`.

Clusters
    Drawn from the LEGUS NGC 628 catalogue (Adamo et al. 2017, ApJ 841, 131),
    visual classes 1-3 with SED fits (1262 clusters; :mod:`astrobatch.io.legus`):
    each draw takes one row's (log age, mass, E(B-V), 5-band Vega magnitudes)
    *jointly*, so the age-colour relation of the images is the real one.
    Rows are drawn without replacement, cycling through fresh permutations when
    N exceeds the catalogue, so each row is used floor(N / 1262) or one more
    times (the parent row is saved as ``catalogue_source_ids``). Jitter: log
    age + N(0, ``age_jitter_dex``) (clipped to 6.0-10.1); each magnitude +
    N(0, ``mag_error_scale`` x its catalogue error, capped at 0.2 mag). F275W
    magnitudes missing in the catalogue (14 rows) are imputed for the image from
    the median F275W - F336W of the 20 detected clusters nearest in age, and
    stay NaN in ``catalogue_magnitudes``.
Galaxies
    ``n_galaxies`` mock hosts ``MOCK_01, ...`` at distances log-spaced over
    ``distance_mpc_range``: magnitudes shift by mu - 29.98 (the LEGUS distance
    modulus of NGC 628) and physical sizes scale with the pixel scale. Each host
    has its own star-formation-rate surface density (``field_sfr_range``),
    disc surface brightness (``disc_mu_v_range``) and dust E(B-V) (0.05-0.3).
    Clusters are assigned to hosts with Dirichlet(8) weights, independently of
    their properties.
Cluster light
    The catalogue flux of each band is split into resolved stars and an
    unresolved EFF profile (Elson, Fall & Freeman 1987) with gamma uniform in
    2.3-3.5 and R_eff from :func:`~.physics.effective_radius_pc`. Resolved
    stars: the Kroupa IMF between max(1.5, min(8, 0.8 m_TO)) Msun and the
    largest mass still shining (:func:`~.physics.death_mass`), Poisson number
    from the cluster mass, each star's L and Teff from
    :func:`~.physics.stellar_properties`, its fluxes from blackbodies through
    the HST filter curves reddened by the cluster's E(B-V) (Calzetti et al.
    2000), positions drawn from the same EFF profile. The draw is conditioned on
    the catalogue photometry (stochastic IMF sampling): up to four draws are
    tried until the stars leave >= 10 % of every band's flux to the unresolved
    part; otherwise the brightest stars are dropped until they do. So young
    clusters show bright blue stars, 10-50 Myr clusters red supergiants, old
    ones at most faint giants.
Environment
    A coeval association of ``association_mass_ratio`` x the cluster mass
    (x 10^N(0, 0.3)), star ages within +-0.15 dex of the cluster's, spread as
    a Gaussian of sigma = 20 pc + 1 km/s x age (it disperses: young clusters
    sit in compact star-forming complexes, older ones do not; Gieles & Portegies
    Zwart 2011; Grasha et al. 2017, ApJ 840, 113); its unresolved light has the
    cluster's colours. Field stars of the host (constant star formation over
    10 Gyr at the host's rate x 10^N(0, 0.3); :class:`~.physics.FieldPopulation`:
    main-sequence stars above 5 Msun and evolved stars above 2 Msun, fainter
    ones belong to the smooth disc) uniform over the cutout, reddened by the
    host E(B-V) x Gamma(2, 1/2). A smooth disc (F555W surface brightness of
    the host + N(0, 0.4) mag) whose light mixes an old population (colours of
    the catalogue clusters older than 1 Gyr) with a clumpy young one (5-40 %
    in F555W; colours of the clusters younger than 3 Myr; lognormal
    Gaussian-random-field clumps of 15 pc), with an exponential gradient and
    patchy dust lanes (Gaussian random field, 40 pc, Calzetti law). The cluster
    centre scatters by 0.2 px around the central pixel. Measured colours carry
    the age most strongly in the central aperture and less and less in rings
    further out (the environment signal that an inner mask leaves).
Instrument
    Point sources are deposited bilinearly and, with the unresolved profile,
    convolved with a Gaussian of variance sigma_PSF^2 - 1/6 px^2, so that the
    effective PSF of a point source has the FWHM ``psf_fwhm_arcsec`` (the
    bilinear kernel adds 1/6 px^2). Noise: electrons = (image + sky) x t,
    Poisson, plus read noise x sqrt(``n_exposures``), then divided by t and
    sky-subtracted (``exposure_s``, ``sky_e_per_s_per_px``, ``read_noise_e``).

Every cluster has its own random stream (``SeedSequence(seed).spawn``), so
the output does not depend on ``n_workers`` or on the block size, and the same
seed gives byte-identical arrays.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from astrobatch.errors import InputError
from astrobatch.io.cutouts import UNITS as CUTOUT_UNITS
from astrobatch.io.cutouts import CutoutWriter
from astrobatch.io.legus import read_legus_catalogue, select_clusters
from astrobatch.studies.cluster_age.params import CLUSTER_AGE_BANDS, ClusterAgeSimulate
from astrobatch.studies.cluster_age.photometry import ZEROPOINTS_VEGA, mag_to_counts
from astrobatch.studies.cluster_age.physics import (
    FILTER_CURVES,
    FieldPopulation,
    death_mass,
    diffuse_extinction_coefficients,
    eff_core_radius,
    eff_enclosed_fraction,
    eff_sample_radius,
    effective_radius_pc,
    kroupa_number_per_msun,
    sample_imf,
    star_counts,
    stellar_properties,
    turnoff_mass,
)

ARCSEC_PER_RAD = 206264.80624709636
KMS_PC_PER_MYR = 1.0227121650537077
#: Log-age limits of the simulated labels (the range of the real file), dex.
LOG_AGE_LIMITS = (6.0, 10.1)
#: Largest magnitude jitter per band, mag.
MAX_MAG_JITTER = 0.2
#: Smallest fraction of each band's catalogue flux left to the unresolved profile.
MIN_UNRESOLVED_FRACTION = 0.1
#: Draws of the resolved stars tried before the brightest are dropped.
STAR_DRAW_TRIES = 4
#: EFF index range (uniform).
EFF_GAMMA_RANGE = (2.3, 3.5)
#: Association: initial Gaussian sigma (pc), drift speed (km/s), age spread (dex), mass scatter.
ASSOC_SIGMA0_PC, ASSOC_DRIFT_KMS, ASSOC_AGE_SPREAD_DEX, ASSOC_MASS_SCATTER_DEX = (
    20.0,
    1.0,
    0.15,
    0.3,
)
#: Host dust E(B-V) range (uniform per galaxy), mag.
HOST_EBV_RANGE = (0.05, 0.3)
#: Range of the young fraction of the smooth disc light in F555W (uniform per cutout).
YOUNG_DISC_FRACTION = (0.05, 0.4)
#: Clump and dust-lane correlation lengths of the host disc, pc.
CLUMP_SCALE_PC, DUST_SCALE_PC = 15.0, 40.0
#: Sub-pixel scatter of the cluster centre around pixel (H // 2, W // 2), pixels.
CENTRE_JITTER_PX = 0.2
#: Ages defining the old and young diffuse-light colours (catalogue clusters), log yr.
OLD_LOG_AGE, YOUNG_LOG_AGE = 9.0, 6.5
#: Concentration of the Dirichlet weights assigning clusters to hosts (larger: more even).
GALAXY_DIRICHLET_ALPHA = 8.0
#: Cutouts rendered per block (the memory bound: one block of images).
BLOCK_SIZE = 32


# ----------------------------------------------------------------------------------------------
# Parent catalogue
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParentCatalogue:
    """The catalogue clusters the simulator draws from (classes 1-3 with SED fits).

    Attributes
    ----------
    log_age, mass, ebv : numpy.ndarray, shape (P,), float64
        dex (log10 yr), Msun, mag.
    mags : numpy.ndarray, shape (P, 5), float64
        Vega magnitudes at the NGC 628 distance, F275W imputed where undetected.
    errors : numpy.ndarray, shape (P, 5), float64
        Photometric errors, mag (0.1 where imputed).
    detected : numpy.ndarray, shape (P, 5), bool
        False where the catalogue magnitude was a sentinel.
    source_ids : numpy.ndarray, shape (P,), int64
        ``pointing * 100000 + source_id``.
    sha256 : str
        Of the catalogue file.
    """

    log_age: np.ndarray
    mass: np.ndarray
    ebv: np.ndarray
    mags: np.ndarray
    errors: np.ndarray
    detected: np.ndarray
    source_ids: np.ndarray
    sha256: str

    def __len__(self) -> int:
        return len(self.log_age)


def load_parent_catalogue(path: str | Path) -> ParentCatalogue:
    """Read and select the LEGUS clusters, imputing missing magnitudes for the images.

    A band without a detection gets the magnitude of the adjacent detected
    band plus the median colour between the two among the 20 detected
    clusters nearest in log age (F275W from F336W in NGC 628).

    Parameters
    ----------
    path : str or pathlib.Path
        LEGUS catalogue: the CSV export or a MAST HLSP ``.tab``, plain or
        gzip-compressed, told apart by content
        (:func:`astrobatch.io.legus.read_legus_catalogue`). The magnitudes are
        apparent, at the catalogue galaxy's distance
        (``simulate.catalogue_distance_modulus``: 29.98 for NGC 628, 31.28 for
        NGC 1566), which :func:`draw_clusters` removes before moving the clusters
        to the mock hosts.

    Returns
    -------
    ParentCatalogue

    Raises
    ------
    InputError
        If the file is unreadable, or fewer than 20 clusters remain, or a
        cluster lacks both F336W and F555W.
    """
    df = select_clusters(read_legus_catalogue(path))
    if len(df) < 20:
        raise InputError(f"expected >= 20 clusters of classes 1-3 with SED fits, got {len(df)}",
                         path, "class_mode")  # fmt: skip
    mags = df[[f"mag_{b}" for b in CLUSTER_AGE_BANDS]].to_numpy(dtype=np.float64)
    errs = df[[f"err_{b}" for b in CLUSTER_AGE_BANDS]].to_numpy(dtype=np.float64)
    detected = np.isfinite(mags)
    log_age = df["log_age"].to_numpy(dtype=np.float64)
    ref_of = {0: 1, 1: 2, 2: 3, 3: 2, 4: 3}  # adjacent band used for imputation
    for b in range(5):
        ref = ref_of[b]
        miss = np.flatnonzero(~detected[:, b])
        if miss.size == 0:
            continue
        both = np.flatnonzero(detected[:, b] & detected[:, ref])
        if not detected[miss, ref].all():
            raise InputError(
                f"cannot impute {CLUSTER_AGE_BANDS[b]}: {CLUSTER_AGE_BANDS[ref]} also missing",
                path,
                f"mag_{CLUSTER_AGE_BANDS[b]}",
            )
        colour = mags[both, b] - mags[both, ref]
        for i in miss:
            near = both[np.argsort(np.abs(log_age[both] - log_age[i]), kind="stable")[:20]]
            mags[i, b] = mags[i, ref] + np.median(colour[np.isin(both, near)])
            errs[i, b] = 0.1
    errs = np.where(np.isfinite(errs), errs, 0.1)
    sha = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return ParentCatalogue(
        log_age=log_age,
        mass=df["mass"].to_numpy(dtype=np.float64),
        ebv=df["ebv"].to_numpy(dtype=np.float64),
        mags=mags,
        errors=errs,
        detected=detected,
        source_ids=(df["pointing"].to_numpy() * 100000 + df["source_id"].to_numpy()).astype(
            np.int64
        ),
        sha256=sha,
    )


def diffuse_colours(parent: ParentCatalogue) -> tuple[np.ndarray, np.ndarray]:
    """Colours (mag_b - mag_F555W) of old and young diffuse light, from catalogue clusters.

    Parameters
    ----------
    parent : ParentCatalogue

    Returns
    -------
    old, young : numpy.ndarray, shape (5,), float64
        Medians over clusters with log age >= 9.0 and <= 6.5 (or the oldest /
        youngest 10 % if fewer than 5 qualify).
    """
    col = parent.mags - parent.mags[:, [3]]
    order = np.argsort(parent.log_age, kind="stable")
    k = max(5, len(order) // 10)
    old = parent.log_age >= OLD_LOG_AGE
    young = parent.log_age <= YOUNG_LOG_AGE
    old_idx = np.flatnonzero(old) if old.sum() >= 5 else order[-k:]
    young_idx = np.flatnonzero(young) if young.sum() >= 5 else order[:k]
    return np.median(col[old_idx], axis=0), np.median(col[young_idx], axis=0)


# ----------------------------------------------------------------------------------------------
# Draws
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Galaxy:
    """A mock host galaxy.

    Attributes
    ----------
    name : str
        ``MOCK_01``, ...
    distance_mpc : float
    distance_modulus : float
        mag.
    sfr_density : float
        Msun / yr / kpc^2.
    disc_mu_v : float
        F555W surface brightness of the smooth disc, mag / arcsec^2.
    ebv : float
        Mean dust E(B-V) of the disc, mag.
    """

    name: str
    distance_mpc: float
    distance_modulus: float
    sfr_density: float
    disc_mu_v: float
    ebv: float


def draw_galaxies(p: ClusterAgeSimulate, rng: np.random.Generator) -> list[Galaxy]:
    """The ``n_galaxies`` mock hosts (distances log-spaced over ``distance_mpc_range``)."""
    lo, hi = p.distance_mpc_range
    dist = np.geomspace(lo, hi, p.n_galaxies) if p.n_galaxies > 1 else np.array([np.sqrt(lo * hi)])
    out = []
    for k, d in enumerate(dist):
        sfr = float(np.exp(rng.uniform(*np.log(p.field_sfr_range))))
        out.append(
            Galaxy(
                name=f"MOCK_{k + 1:02d}",
                distance_mpc=float(d),
                distance_modulus=float(5.0 * np.log10(d * 1e6 / 10.0)),
                sfr_density=sfr,
                disc_mu_v=float(rng.uniform(*p.disc_mu_v_range)),
                ebv=float(rng.uniform(*HOST_EBV_RANGE)),
            )
        )
    return out


def draw_clusters(
    p: ClusterAgeSimulate,
    parent: ParentCatalogue,
    galaxies: list[Galaxy],
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Draw the N clusters: parent rows, hosts, jittered ages and magnitudes.

    Returns
    -------
    dict of numpy.ndarray
        ``parent`` (int64 row), ``galaxy`` (int64 index), ``log_age`` (dex),
        ``mass`` (Msun), ``ebv`` (mag), ``mags`` (N, 5) apparent Vega
        magnitudes used for the images, ``catalogue_magnitudes`` (N, 5) the
        same with NaN where the catalogue had no detection. Sorted by host
        (stable), as real files group the clusters of a galaxy.
    """
    n, n_par = p.n_clusters, len(parent)
    rows = np.concatenate([rng.permutation(n_par) for _ in range(-(-n // n_par))])[:n]
    weights = rng.dirichlet(np.full(len(galaxies), GALAXY_DIRICHLET_ALPHA))
    gal = rng.choice(len(galaxies), size=n, p=weights)
    order = np.argsort(gal, kind="stable")
    rows, gal = rows[order], gal[order]
    log_age = (
        parent.log_age[rows] + rng.normal(0.0, p.age_jitter_dex, n)
        if p.age_jitter_dex
        else (parent.log_age[rows].copy())
    )
    log_age = np.clip(log_age, *LOG_AGE_LIMITS)
    sigma = np.minimum(parent.errors[rows], MAX_MAG_JITTER) * p.mag_error_scale
    shift = np.array([g.distance_modulus for g in galaxies])[gal] - p.catalogue_distance_modulus
    mags = parent.mags[rows] + rng.normal(0.0, 1.0, (n, 5)) * sigma + shift[:, None]
    return {
        "parent": rows.astype(np.int64),
        "galaxy": gal.astype(np.int64),
        "log_age": log_age,
        "mass": parent.mass[rows],
        "ebv": parent.ebv[rows],
        "mags": mags,
        "catalogue_magnitudes": np.where(parent.detected[rows], mags, np.nan),
    }


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------


def eff_image(size: int, x0: float, y0: float, a: float, gamma: float, box: int = 6,
              oversample: int = 5) -> np.ndarray:  # fmt: skip
    """Pixel-integrated EFF profile of unit total light (before the PSF).

    Surface density ``(gamma - 2) / (2 pi a^2) (1 + r^2 / a^2)^(-gamma / 2)``
    (Elson, Fall & Freeman 1987), sampled at pixel centres, with
    ``oversample^2`` sub-samples per pixel within ``box`` pixels of the centre;
    the sub-samples inside the circle of radius ``box - 1/2`` are rescaled to
    its exact enclosed light (:func:`~.physics.eff_enclosed_fraction`), so the
    flux is right even for a core much smaller than a pixel.

    Parameters
    ----------
    size : int
        Cutout side, pixels.
    x0, y0 : float
        Centre, pixel coordinates (pixel i spans i - 1/2 to i + 1/2).
    a : float
        Core radius, pixels (> 0).
    gamma : float
        EFF index (> 2).
    box : int
        Half-size of the oversampled box, pixels.
    oversample : int
        Sub-samples per pixel and axis.

    Returns
    -------
    numpy.ndarray, shape (size, size), float64
        Fraction of the total light in each pixel (sums to the light inside
        the cutout, < 1).
    """
    norm = (gamma - 2.0) / (2.0 * np.pi * a * a)
    ax = np.arange(size, dtype=np.float64)
    r2 = (ax[None, :] - x0) ** 2 + (ax[:, None] - y0) ** 2
    img = norm * (1.0 + r2 / (a * a)) ** (-0.5 * gamma)
    ix, iy = round(x0), round(y0)
    lo_x, hi_x, lo_y, hi_y = ix - box, ix + box + 1, iy - box, iy + box + 1
    if lo_x < 0 or lo_y < 0 or hi_x > size or hi_y > size:
        return img
    sub = (np.arange(oversample) + 0.5) / oversample - 0.5
    xs = (np.arange(lo_x, hi_x)[:, None] + sub[None, :]).reshape(-1)
    ys = (np.arange(lo_y, hi_y)[:, None] + sub[None, :]).reshape(-1)
    s2 = (xs[None, :] - x0) ** 2 + (ys[:, None] - y0) ** 2
    vals = norm * (1.0 + s2 / (a * a)) ** (-0.5 * gamma) / oversample**2
    r_c = box - 0.5
    inside = s2 < r_c * r_c
    total = vals[inside].sum()
    if total > 0:
        vals[inside] *= float(eff_enclosed_fraction(r_c, a, gamma)) / total
    n = 2 * box + 1
    img[lo_y:hi_y, lo_x:hi_x] = vals.reshape(n, oversample, n, oversample).sum(axis=(1, 3))
    return img


def splat(x: np.ndarray, y: np.ndarray, flux: np.ndarray, size: int) -> np.ndarray:
    """Deposit point sources bilinearly on a pixel grid (flux outside the grid is lost).

    Parameters
    ----------
    x, y : numpy.ndarray, shape (n,), float
        Pixel coordinates (pixel i spans i - 1/2 to i + 1/2).
    flux : numpy.ndarray, shape (n, C), float
        Count rates, e-/s.
    size : int
        Grid side.

    Returns
    -------
    numpy.ndarray, shape (C, size, size), float64
        The four neighbouring pixel centres of each source share its flux
        with weights (1 - dx)(1 - dy), ...: the total is conserved inside the grid.
    """
    n_c = flux.shape[1]
    out = np.zeros((n_c, size * size))
    if len(x) == 0:
        return out.reshape(n_c, size, size)
    ix, iy = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    fx, fy = x - ix, y - iy
    cx = np.concatenate([ix, ix + 1, ix, ix + 1])
    cy = np.concatenate([iy, iy, iy + 1, iy + 1])
    w = np.concatenate([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy])
    ok = (cx >= 0) & (cx < size) & (cy >= 0) & (cy < size) & (w > 0)
    idx = (cy * size + cx)[ok]
    w = w[ok]
    fl = np.tile(flux, (4, 1))[ok]
    for c in range(n_c):
        out[c] = np.bincount(idx, weights=w * fl[:, c], minlength=size * size)
    return out.reshape(n_c, size, size)


def psf_blur(sharp: np.ndarray, fwhm_px: float) -> np.ndarray:
    """Convolve bilinearly deposited sources (:func:`splat`) to a Gaussian PSF of ``fwhm_px``.

    The bilinear deposit acts as a kernel of variance 1/6 px^2 per axis (for
    uniformly distributed sub-pixel positions), so the images are convolved
    with a Gaussian of variance ``sigma^2 - 1/6`` (sigma = FWHM / 2.3548),
    zero padding; for ``sigma^2 <= 1/6`` nothing is done.

    Parameters
    ----------
    sharp : numpy.ndarray, shape (C, H, W), float64
        Deposited fluxes, modified in place.
    fwhm_px : float
        PSF full width at half maximum, pixels.

    Returns
    -------
    numpy.ndarray, shape (C, H, W), float64
        ``sharp``, blurred (total flux conserved away from the edges).
    """
    sigma = fwhm_px / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    blur = np.sqrt(max(sigma**2 - 1.0 / 6.0, 0.0))
    if blur > 0:
        for b in range(sharp.shape[0]):
            sharp[b] = gaussian_filter(sharp[b], blur, mode="constant", truncate=4.0)
    return sharp


def gaussian_random_field(size: int, scale_px: float, rng: np.random.Generator) -> np.ndarray:
    """Periodic Gaussian random field of unit expected variance and Gaussian correlation.

    White noise filtered in Fourier space by a Gaussian kernel of sigma
    ``scale_px`` and divided by the expected standard deviation (so a scale
    much larger than the grid gives an almost uniform N(0, 1) offset).

    Parameters
    ----------
    size : int
        Side, pixels.
    scale_px : float
        Sigma of the smoothing kernel, pixels.
    rng : numpy.random.Generator

    Returns
    -------
    numpy.ndarray, shape (size, size), float64
    """
    white = rng.standard_normal((size, size))
    k = np.fft.fftfreq(size)
    gain = np.exp(-2.0 * np.pi**2 * scale_px**2 * k**2)  # separable Gaussian transfer function
    transfer = gain[:, None] * gain[None, : size // 2 + 1]
    field = np.fft.irfft2(np.fft.rfft2(white) * transfer, s=(size, size))
    # expected variance of filtered unit white noise (Parseval): mean of |T|^2 over all modes
    return field / np.sqrt(np.mean(gain**2) ** 2)


@dataclass(frozen=True)
class _Context:
    """Everything a worker needs to render a cutout (picklable)."""

    p: ClusterAgeSimulate
    galaxies: tuple[Galaxy, ...]
    old_colour: np.ndarray
    young_colour: np.ndarray


_FIELD = FieldPopulation(m_ms_min=5.0, m_post_min=2.0)


def _cluster_stars(age, mass, ebv, mu, counts, rng):
    """Resolved stars of a cluster conditioned on its catalogue counts: (n, 5) fluxes."""
    m_to = float(turnoff_mass(age))
    m_hi = float(death_mass(age))
    m_lo = min(max(1.5, min(8.0, 0.8 * m_to)), 0.999 * m_hi)
    lam = mass * kroupa_number_per_msun(m_lo, m_hi)
    limit = (1.0 - MIN_UNRESOLVED_FRACTION) * counts
    flux = np.zeros((0, 5))
    for _ in range(STAR_DRAW_TRIES):
        m = sample_imf(int(rng.poisson(lam)), m_lo, m_hi, rng)
        log_l, log_t, alive = stellar_properties(m, age, rng) if m.size else (m, m, m > 0)
        flux = star_counts(log_l[alive], log_t[alive], ebv, mu) if m.size else np.zeros((0, 5))
        if np.all(flux.sum(axis=0) <= limit):
            return flux, 0
    # condition on the photometry: drop the brightest (relative to the catalogue) first
    ratio = (flux / counts[None, :]).max(axis=1)
    flux = flux[np.argsort(-ratio, kind="stable")]
    left = flux.sum(axis=0)[None, :] - np.cumsum(flux, axis=0)
    ok = np.all(left <= limit[None, :] * (1 + 1e-12), axis=1)
    k = int(np.argmax(ok)) + 1 if ok.any() else len(flux)
    return flux[k:], k


def render_cutout(ctx: _Context, cl: dict, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Render one cutout (see the module docstring).

    Parameters
    ----------
    ctx : _Context
    cl : dict
        ``galaxy`` (int), ``log_age`` (dex), ``mass`` (Msun), ``ebv`` (mag),
        ``mags`` (5,) apparent Vega magnitudes.
    rng : numpy.random.Generator
        The cluster's own stream.

    Returns
    -------
    image : numpy.ndarray, shape (5, H, W), float32
        e-/s per pixel, sky subtracted.
    dropped : int
        Resolved stars dropped to respect the catalogue photometry.
    """
    p = ctx.p
    g = ctx.galaxies[cl["galaxy"]]
    size = p.image_size
    pc_px = g.distance_mpc * 1e6 * p.pixel_scale_arcsec / ARCSEC_PER_RAD
    age = 10.0 ** cl["log_age"]
    mass, ebv, mu = cl["mass"], cl["ebv"], g.distance_modulus
    counts = mag_to_counts(cl["mags"], ZEROPOINTS_VEGA)
    c = size // 2
    x0, y0 = c + rng.normal(0.0, CENTRE_JITTER_PX, 2)

    # cluster: resolved stars + unresolved EFF profile
    gamma = rng.uniform(*EFF_GAMMA_RANGE)
    r_eff = float(effective_radius_pc(mass, age, rng)) / pc_px
    a = float(eff_core_radius(r_eff, gamma))
    star_flux, dropped = _cluster_stars(age, mass, ebv, mu, counts, rng)
    unresolved = counts - star_flux.sum(axis=0)
    r = eff_sample_radius(rng.random(len(star_flux)), a, gamma)
    phi = rng.uniform(0.0, 2.0 * np.pi, len(star_flux))
    xs, ys, fluxes = [x0 + r * np.cos(phi)], [y0 + r * np.sin(phi)], [star_flux]
    sharp_profile = eff_image(size, x0, y0, a, gamma)

    # coeval association, dispersing with age
    m_assoc = p.association_mass_ratio * mass * 10.0 ** rng.normal(0, ASSOC_MASS_SCATTER_DEX)
    sigma_px = (ASSOC_SIGMA0_PC + ASSOC_DRIFT_KMS * KMS_PC_PER_MYR * age / 1e6) / pc_px
    smooth = np.zeros((5, size, size))
    if m_assoc > 0:
        a_lo, a_hi = age * 10.0**-ASSOC_AGE_SPREAD_DEX, age * 10.0**ASSOC_AGE_SPREAD_DEX
        m_hi = float(death_mass(a_lo))
        m_lo = min(max(1.5, min(8.0, 0.8 * float(turnoff_mass(a_hi)))), 0.999 * m_hi)
        m = sample_imf(int(rng.poisson(m_assoc * kroupa_number_per_msun(m_lo, m_hi))), m_lo,
                       m_hi, rng)  # fmt: skip
        if m.size:
            ages = 10.0 ** rng.uniform(np.log10(a_lo), np.log10(a_hi), m.size)
            log_l, log_t, alive = stellar_properties(m, ages, rng)
            e_star = ebv * rng.uniform(0.5, 1.5, int(alive.sum()))
            fluxes.append(star_counts(log_l[alive], log_t[alive], e_star, mu))
            xs.append(x0 + rng.normal(0.0, sigma_px, int(alive.sum())))
            ys.append(y0 + rng.normal(0.0, sigma_px, int(alive.sum())))
        ax = np.arange(size, dtype=np.float64)
        gauss = np.exp(-0.5 * ((ax[None, :] - x0) ** 2 + (ax[:, None] - y0) ** 2) / sigma_px**2)
        gauss /= 2.0 * np.pi * sigma_px**2
        smooth += (unresolved * m_assoc / mass)[:, None, None] * gauss[None]

    # field stars of the host, uniform over the cutout
    area_kpc2 = (size * pc_px / 1e3) ** 2
    sfr = g.sfr_density * area_kpc2 * 10.0 ** rng.normal(0.0, 0.3)
    m, ages = _FIELD.sample(sfr, rng)
    if m.size:
        log_l, log_t, alive = stellar_properties(m, ages, rng)
        n_alive = int(alive.sum())
        e_star = g.ebv * rng.gamma(2.0, 0.5, n_alive)
        fluxes.append(star_counts(log_l[alive], log_t[alive], e_star, mu))
        xs.append(rng.uniform(-0.5, size - 0.5, n_alive))
        ys.append(rng.uniform(-0.5, size - 0.5, n_alive))

    # PSF: bilinear deposit (+1/6 px^2) then a Gaussian of the remaining variance
    sharp = splat(np.concatenate(xs), np.concatenate(ys), np.concatenate(fluxes), size)
    sharp += unresolved[:, None, None] * sharp_profile[None]
    sharp = psf_blur(sharp, p.psf_fwhm_arcsec / p.pixel_scale_arcsec)

    # smooth host disc: old + clumpy young light, gradient, patchy dust
    zp_v = ZEROPOINTS_VEGA[3]
    mu_v = g.disc_mu_v + rng.normal(0.0, 0.4)
    s0_v = 10.0 ** (-0.4 * (mu_v - 5.0 * np.log10(p.pixel_scale_arcsec) - zp_v))
    f_young = rng.uniform(*YOUNG_DISC_FRACTION)
    ax = (np.arange(size, dtype=np.float64) - c) / size
    grad = np.exp(rng.normal(0.0, 0.3) * ax[None, :] + rng.normal(0.0, 0.3) * ax[:, None])
    clump = np.exp(0.8 * gaussian_random_field(size, CLUMP_SCALE_PC / pc_px, rng) - 0.32)
    dust = g.ebv * np.exp(0.7 * gaussian_random_field(size, DUST_SCALE_PC / pc_px, rng) - 0.245)
    # count-rate ratios to F555W: colours (mag) minus zero-point differences
    dzp = ZEROPOINTS_VEGA - zp_v
    old_flux = s0_v * (1.0 - f_young) * 10.0 ** (-0.4 * (ctx.old_colour - dzp))
    young_flux = s0_v * f_young * 10.0 ** (-0.4 * (ctx.young_colour - dzp))
    k_diff = diffuse_extinction_coefficients()
    disc = (
        old_flux[:, None, None] * grad[None] + young_flux[:, None, None] * (grad * clump)[None]
    ) * 10.0 ** (-0.4 * k_diff[:, None, None] * dust[None])
    image = sharp + smooth + disc

    # noise
    t = np.asarray(p.exposure_s)[:, None, None]
    sky = np.asarray(p.sky_e_per_s_per_px)[:, None, None]
    rn = np.asarray(p.read_noise_e)[:, None, None] * np.sqrt(p.n_exposures)
    electrons = rng.poisson(np.clip((image + sky) * t, 0.0, None)).astype(np.float64)
    electrons += rng.normal(0.0, 1.0, image.shape) * rn
    return (electrons / t - sky).astype(np.float32), dropped


def _render_block(args) -> tuple[np.ndarray, int]:
    ctx, clusters, seeds = args
    out = np.empty((len(seeds), 5, ctx.p.image_size, ctx.p.image_size), dtype=np.float32)
    dropped = 0
    for i, seed in enumerate(seeds):
        cl = {k: v[i] for k, v in clusters.items()}
        out[i], d = render_cutout(ctx, cl, np.random.default_rng(seed))
        dropped += d > 0
    return out, dropped


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------


def simulate_to_file(
    p: ClusterAgeSimulate,
    out: str | Path,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Simulate the cutouts and write the raw file (atomically, streamed block by block).

    Parameters
    ----------
    p : ClusterAgeSimulate
        Simulator parameters (``catalogue_path`` is read relative to the
        working directory).
    out : str or pathlib.Path
        Destination ``raw_phangs_dataset.h5``: the four real datasets
        (``cluster_ids`` int32 1..N, ``galaxy_ids``, ``image_cutouts``
        float32 (N, 5, H, H) in e-/s/pixel, ``cluster_log_ages`` float32 dex)
        plus ``catalogue_magnitudes`` float32 (N, 5) apparent Vega mag (NaN:
        undetected in the catalogue), ``cluster_log_masses``, ``cluster_ebv``
        and ``catalogue_source_ids``; root attributes hold the parameters,
        zero points, filter curves, hosts and versions.
    progress : callable, optional
        ``progress(done, total)`` after each block of cutouts.

    Returns
    -------
    dict
        Summary: ``path``, ``n_clusters``, ``image_size``, ``seconds``,
        ``file_bytes``, ``fraction_log_age_7_9p5``, ``log_age_min``,
        ``log_age_max``, ``galaxies`` (name -> distance_mpc and n),
        ``clusters_with_dropped_stars``.

    Raises
    ------
    InputError
        If the catalogue is missing or malformed, or the seed is negative.
    """
    import sedpy

    from astrobatch import __version__ as astrobatch_version

    t0 = time.perf_counter()
    if p.seed < 0:
        raise InputError(f"expected a non-negative seed, got {p.seed}", key="seed")
    out = Path(out)
    parent = load_parent_catalogue(p.catalogue_path)
    ss = np.random.SeedSequence(p.seed)
    ss_draws, ss_clusters = ss.spawn(2)
    rng = np.random.default_rng(ss_draws)
    galaxies = draw_galaxies(p, rng)
    cl = draw_clusters(p, parent, galaxies, rng)
    old_c, young_c = diffuse_colours(parent)
    ctx = _Context(p=p, galaxies=tuple(galaxies), old_colour=old_c, young_colour=young_c)
    seeds = ss_clusters.spawn(p.n_clusters)
    n = p.n_clusters
    gal_names = [galaxies[k].name for k in cl["galaxy"]]
    attrs = {
        "study": "cluster_age",
        "source": "simulated: astrobatch.studies.cluster_age.simulate (LEGUS NGC 628 clusters, "
        "EFF profile + resolved IMF stars, host disc, Gaussian PSF, Poisson + read noise)",
        "params": p.model_dump_json(),
        "seed": int(p.seed),
        "catalogue_sha256": parent.sha256,
        "astrobatch_version": str(astrobatch_version),
        "sedpy_version": str(getattr(sedpy, "__version__", "unknown")),
        "numpy_version": np.__version__,
        "zeropoints_vega": {
            b: float(z) for b, z in zip(CLUSTER_AGE_BANDS, ZEROPOINTS_VEGA, strict=True)
        },
        "filter_curves": {b: f"sedpy:{FILTER_CURVES[b]}" for b in CLUSTER_AGE_BANDS},
        "pixel_scale_arcsec": float(p.pixel_scale_arcsec),
        "psf_fwhm_arcsec": float(p.psf_fwhm_arcsec),
        "cluster_centre_px": [p.image_size // 2, p.image_size // 2],
        "reference_distance_modulus": p.catalogue_distance_modulus,
        "galaxies": {
            g.name: {
                "distance_mpc": g.distance_mpc,
                "distance_modulus": g.distance_modulus,
                "sfr_density_msun_yr_kpc2": g.sfr_density,
                "disc_mu_v": g.disc_mu_v,
                "ebv": g.ebv,
            }
            for g in galaxies
        },
        "units": dict(CUTOUT_UNITS),
    }
    extra = {
        "catalogue_magnitudes": cl["catalogue_magnitudes"].astype(np.float32),
        "cluster_log_masses": np.log10(cl["mass"]).astype(np.float32),
        "cluster_ebv": cl["ebv"].astype(np.float32),
        "catalogue_source_ids": parent.source_ids[cl["parent"]],
    }
    per_cluster = {k: cl[k] for k in ("galaxy", "log_age", "mass", "ebv", "mags")}
    blocks = [
        (ctx, {k: v[s : s + BLOCK_SIZE] for k, v in per_cluster.items()}, seeds[s : s + BLOCK_SIZE])
        for s in range(0, n, BLOCK_SIZE)
    ]
    dropped = 0
    with CutoutWriter(
        out, np.arange(1, n + 1), gal_names, cl["log_age"], (5, p.image_size, p.image_size),
        extra=extra, attrs=attrs, band_names=CLUSTER_AGE_BANDS,
    ) as w:  # fmt: skip
        if p.n_workers > 1:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(p.n_workers) as pool:
                results = pool.imap(_render_block, blocks)
                for b, (imgs, d) in enumerate(results):
                    w.write(b * BLOCK_SIZE, imgs)
                    dropped += d
                    if progress is not None:
                        progress(min(n, (b + 1) * BLOCK_SIZE), n)
        else:
            for b, block in enumerate(blocks):
                imgs, d = _render_block(block)
                w.write(b * BLOCK_SIZE, imgs)
                dropped += d
                if progress is not None:
                    progress(min(n, (b + 1) * BLOCK_SIZE), n)
    la = cl["log_age"]
    return {
        "path": str(out),
        "n_clusters": n,
        "image_size": p.image_size,
        "seconds": round(time.perf_counter() - t0, 2),
        "file_bytes": out.stat().st_size,
        "fraction_log_age_7_9p5": float(np.mean((la >= 7.0) & (la <= 9.5))),
        "log_age_min": float(la.min()),
        "log_age_max": float(la.max()),
        "galaxies": {
            g.name: {"distance_mpc": round(g.distance_mpc, 3), "n": int(np.sum(cl["galaxy"] == k))}
            for k, g in enumerate(galaxies)
        },
        "clusters_with_dropped_stars": int(dropped),
    }
