"""cluster_finder simulator (the embedded default): an SDSS-like sky around real redMaPPer clusters.

:func:`simulate_sky` writes, into one folder built aside and swapped in at the end
(:func:`astrobatch.io.atomic.atomic_dir`; a failed run leaves the previous output as it was):

``clusters.fits``
    Every populated cluster in the public redMaPPer DR8 layout (``ID, RA, DEC, Z_LAMBDA,
    Z_LAMBDA_ERR, Z_SPEC, LAMBDA, LAMBDA_ERR``; :func:`.catalogues.write_clusters`).
``members.fits``
    Their member candidates in the DR8 layout (``ID, RA, DEC, R, P, P_FREE, THETA_I,
    THETA_R, MODEL_MAG_{U..Z}, MODEL_MAGERR_{U..Z}, IMAG, IMAG_ERR, Z_SPEC, OBJID``).
``galaxies.fits``
    The field galaxies whose centre is inside an image (``RA, DEC, MODEL_MAG_{U..Z},
    MODEL_MAGERR_{U..Z}``).
``footprint.fits``
    A boolean HEALPix map (RING, equatorial; :func:`.geometry.write_footprint`): the
    pixels within ``footprint_radius_deg`` of the chosen clusters.
``images/cluster_<ID>.fits``, ``images/empty_<k>.fits``, ``images.csv``
    One float32 cube ``(3, S, S)`` (bands g, r, i) per cutout and the list of cutouts
    (``file, kind, ra, dec, pixel_scale_arcsec, size, native_pixel_scale_arcsec,
    cluster_id, n_clusters``).
``truth.parquet``, ``truth_members.parquet``
    The true state of every populated cluster and of every member candidate.

The sky
-------
Clusters
    ``n_clusters`` clusters of the real 26,350-cluster redMaPPer DR8 list with ``z_range[0]
    <= z_lambda < z_range[1]`` and ``λ >= min_richness`` (a seeded random subset) are
    the *primary* clusters; a cutout is centred on each, displaced by up to
    ``max_offset_arcmin`` on each axis. Every real cluster whose centre lies inside a
    cutout or within ``secondary_margin_arcmin`` of it is populated too (*secondary*
    clusters), all of them at their real position, redshift and richness. A cluster's
    true redshift is its list ``z_lambda`` plus a Gaussian error of
    :func:`.physics.z_lambda_error` (so the catalogue ``Z_LAMBDA`` is a photometric
    estimate and ``Z_SPEC``, where present, the truth up to peculiar velocities).
Members (:mod:`.physics`)
    A BCG at the cluster position (1.5 mag brighter than m*) and candidates with
    calibrated membership probabilities ``P`` (:func:`.physics.draw_candidates`: the
    number of true members is ``1 + Poisson(λ - 1)``); true members at projected NFW
    radii (concentration ``concentration``) inside ``R_λ = (λ / 100)**0.2 h^-1 Mpc``,
    interlopers uniform in the same disc; Schechter (α = -1) luminosities above 0.2 L*;
    red-sequence colours at the cluster redshift (interlopers with twice the scatter);
    observed magnitudes and errors from the SDSS depth model. ``R`` is the projected
    distance in h^-1 Mpc at the catalogue ``z_lambda``; ``THETA_I``, ``THETA_R`` the
    smoothed luminosity and radial weights; ``P_FREE = λ / (λ + Σ λ')`` over the richer
    real clusters whose ``R_λ`` also contains the galaxy (1 for most). Spectroscopic
    redshifts for galaxies with r < 17.77 (the SDSS main sample) and for BCGs with
    r < 19.5 with probability 0.7 (LRG / BOSS targets): members at the cluster redshift
    plus their velocity dispersion, interlopers 0.03-0.2 (1 + z) in front or behind.
    The cluster ``Z_SPEC`` is its BCG's.
Field galaxies
    Poisson-distributed, uniform on the sky at ``field_density_arcmin2`` (1 per arcmin^2:
    of the order of SDSS galaxy counts to i ≈ 21), drawn cell by cell of a HEALPix grid
    (nside :data:`FIELD_NSIDE`, seeded by the cell) so that overlapping cutouts see the
    same galaxies; magnitudes and errors are whole rows of the real DR8 galaxy table
    (:func:`.physics.bootstrap_rows`).
Empty fields
    ``n_empty`` positions from :func:`.geometry.empty_field_centres`: inside the
    footprint and more than ``min_separation_arcmin`` (20') from every cluster of the
    real list. They hold field galaxies only (members of the populated clusters are not
    drawn into them).

Rendering (GalSim, Rowe et al. 2015, A&C 10, 121, arXiv:1407.7676)
------------------------------------------------------------------
A cutout covers ``field_arcmin`` on a side and is rendered on ``native_size`` pixels
(render scale ``field_arcmin * 60 / native_size``, 3.75"/px by default), then block
averaged to ``image_size`` pixels (7.5"/px by default): the seed's 2048-pixel SDSS
cutouts at 0.396"/px, resized, would be too slow on a CPU, so the render grid is coarser
than SDSS's own; ``native_size = field_arcmin * 60 / 0.396127`` renders at the SDSS pixel
scale. Members and red field galaxies are de Vaucouleurs profiles (Sérsic n = 4,
truncated at 5 half-light radii), the others exponential discs; half-light radii shrink
with distance (:func:`.physics.member_half_light_arcsec`) or with magnitude
(:func:`.physics.field_half_light_arcsec`). Each profile is convolved with a Moffat PSF
(β = 3.5, FWHM ``psf_fwhm_arcsec``, the same in g, r, i) and drawn by GalSim with the
pixel response, at a scale of at most :data:`DRAW_SCALE` (0.8") summed into render pixels
(GalSim's FFTs are slow at pixels much larger than the profile). To keep the cost bounded
a profile is drawn once per bin of half-light
radius (20 % wide), axis ratio (0.3, 0.5, 0.7, 1) and position angle (22.5°), on a
stamp of unit flux that is scaled by the galaxy's flux in each band
(``10**(-0.4 (m - zero_point))``, nanomaggies for 22.5) and added at the render pixel
nearest to the galaxy's centre (a shift of at most half a render pixel); only galaxies
brighter than ``mag_limit`` (i band, true magnitude) are drawn. Pixel positions follow
:func:`.geometry.sky_to_pixel` (north +y, east -x).

Values are nanomaggies per native SDSS pixel (0.396127"): the block average of the image
an SDSS camera would have taken, with Gaussian sky noise of ``sky_sigma`` per native pixel
scaled to the output pixel (``sky_sigma * 0.396127 / pixel_scale``). ``sky_sigma=None``
derives it per band from the SDSS point-source depths (:func:`.physics.sky_sigma_per_pixel`:
g 0.050, r 0.050, i 0.113 nanomaggies for a 1.4" PSF). The header holds ``RA``, ``DEC``
(the centre), ``PIXSCALE`` (the output scale), ``NATPIXSC`` (0.396127), ``RENDSCAL``,
``BANDS``, ``PSFFWHM``, ``ZEROPT``, ``SKYSIG1..3``, ``KIND``, ``CLUSTER`` and a celestial
WCS (``RA---CAR`` / ``DEC--CAR`` about the centre, default ``LONPOLE``: exactly the
offset-frame plate carrée of :func:`.geometry.sky_to_pixel`).

Randomness: one ``numpy.random.default_rng((seed, stream, key))`` per cluster (key: the
cluster id), per field cell (the HEALPix pixel), per image (its index) and for the choice
of clusters and empty fields, so a cluster looks the same whichever cutouts it falls in
and the same seed gives byte-identical catalogues and images.

Simplifications versus the real SDSS sky: no stars, no blue cluster members, no members
fainter than 0.2 L*, no Galactic extinction, one PSF for all bands, a flat sky-subtracted
background, field galaxies without clustering, and only clusters of the real list whose
centre is in or near a cutout are populated.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from astrobatch.errors import InputError
from astrobatch.io.atomic import atomic_dir
from astrobatch.studies.cluster_finder import physics
from astrobatch.studies.cluster_finder.catalogues import (
    read_clusters,
    read_galaxies,
    write_clusters,
    write_galaxies,
    write_members,
)
from astrobatch.studies.cluster_finder.geometry import (
    empty_field_centres,
    footprint_from_positions,
    pixel_to_sky,
    richness_radius,
    sky_to_pixel,
    write_footprint,
)

__all__ = ["IMAGE_BANDS", "IMAGE_COLUMNS", "NATIVE_PIXEL_SCALE", "simulate_sky"]

#: Bands of the image cubes, in plane order.
IMAGE_BANDS = ("g", "r", "i")
_BAND_INDEX = [physics.BANDS.index(b) for b in IMAGE_BANDS]
#: SDSS pixel scale, arcsec / pixel.
NATIVE_PIXEL_SCALE = 0.396127
#: Columns of ``images.csv``.
IMAGE_COLUMNS = (
    "file",
    "kind",
    "ra",
    "dec",
    "pixel_scale_arcsec",
    "size",
    "native_pixel_scale_arcsec",
    "cluster_id",
    "n_clusters",
)
#: HEALPix nside of the cells in which field galaxies are drawn (13.7' cells).
FIELD_NSIDE = 256
#: First OBJID of the simulated galaxies (SDSS DR8 object ids are ~1.2376e18);
#: a candidate's OBJID is ``OBJID_BASE + 10_000 cluster_id + k``.
OBJID_BASE = 1_237_640_000_000_000_000
#: 0.2 L* in magnitudes above m* (2.5 log10 5).
LUM_CUT_MAG = 2.5 * np.log10(1.0 / physics.LUMINOSITY_CUT)
#: Spectroscopic limits: SDSS main galaxy sample (r), LRG / BOSS BCGs (r) and their chance.
MAIN_SAMPLE_R, BCG_SPEC_R, BCG_SPEC_CHANCE = 17.77, 19.5, 0.7
#: Galaxy profile kinds.
DEV, EXP = 0, 1
#: Moffat index of the PSF and its truncation in FWHM.
MOFFAT_BETA, MOFFAT_TRUNC = 3.5, 4.0
#: Sérsic truncation, in half-light radii.
SERSIC_TRUNC = 5.0
#: Template bins: half-light radius (log, 20 %), axis ratio, position angle.
HLR_MIN, HLR_STEP, N_HLR = 0.1, np.log(1.2), 34
Q_BINS = np.array([0.3, 0.5, 0.7, 1.0])
PA_STEP_DEG = 22.5
#: Largest pixel scale at which GalSim draws a stamp (arcsec); coarser render pixels are
#: sums of blocks of these.
DRAW_SCALE = 0.8
#: Random streams of ``default_rng((seed, stream, key))``.
_CHOICE, _CLUSTER, _EMPTY, _FIELD, _IMAGE = range(5)


# ------------------------------------------------------------------------------ helpers
def _unit(ra, dec) -> np.ndarray:
    r, d = np.radians(ra), np.radians(dec)
    return np.stack([np.cos(d) * np.cos(r), np.cos(d) * np.sin(r), np.sin(d)], axis=-1)


def _near(vectors: np.ndarray, ra0: float, dec0: float, radius_deg: float) -> np.ndarray:
    """Indices of unit vectors within ``radius_deg`` of (ra0, dec0)."""
    return np.flatnonzero(vectors @ _unit(ra0, dec0) >= np.cos(np.radians(radius_deg)))


def _check(**kw) -> None:
    def bad(key, msg):
        raise InputError(f"{msg}, got {kw[key]!r}", key=key)

    if kw["seed"] < 0:
        bad("seed", "expected a non-negative seed")
    if kw["n_clusters"] < 1:
        bad("n_clusters", "expected at least one cluster")
    if kw["n_empty"] < 0:
        bad("n_empty", "expected n_empty >= 0")
    lo, hi = kw["z_range"]
    if not (0 < lo < hi):
        bad("z_range", "expected 0 < z_min < z_max")
    for key in ("field_arcmin", "psf_fwhm_arcsec", "concentration", "field_density_arcmin2",
                "footprint_radius_deg", "min_separation_arcmin"):  # fmt: skip
        if not (np.isfinite(kw[key]) and kw[key] > 0):
            bad(key, "expected a finite value > 0")
    for key in ("max_offset_arcmin", "secondary_margin_arcmin"):
        if not (np.isfinite(kw[key]) and kw[key] >= 0):
            bad(key, "expected a finite value >= 0")
    if kw["image_size"] < 2 or kw["native_size"] < kw["image_size"]:
        bad("native_size", "expected native_size >= image_size >= 2")
    if kw["native_size"] % kw["image_size"]:
        bad("native_size", f"expected a multiple of image_size {kw['image_size']}")
    if kw["max_offset_arcmin"] > kw["field_arcmin"] / 2:
        bad("max_offset_arcmin", "expected an offset that keeps the cluster inside the cutout")


def _sky_sigma(sky_sigma, psf_fwhm: float, zero_point: float) -> np.ndarray:
    if sky_sigma is None:
        depth = physics.POINT_SOURCE_DEPTH[_BAND_INDEX]
        return physics.sky_sigma_per_pixel(depth, psf_fwhm, NATIVE_PIXEL_SCALE, zero_point)
    s = np.broadcast_to(np.asarray(sky_sigma, dtype=np.float64), (len(IMAGE_BANDS),)).copy()
    if not np.all(np.isfinite(s) & (s >= 0)):
        raise InputError(f"expected sky_sigma >= 0 per band, got {sky_sigma}", key="sky_sigma")
    return s


# ------------------------------------------------------------------------------ members
def _cluster_scalars(z_true, z_lambda, h0: float, om0: float) -> dict[str, np.ndarray]:
    """m*, angular-diameter distances (Mpc) and arcsec / kpc of every populated cluster at
    once (astropy distance calls are the slow part, vectorised here)."""
    import astropy.units as u

    cosmo = physics.flat_lcdm(h0, om0)
    return {
        "mstar_true": physics.mstar_i(z_true, h0, om0),
        "mstar_lambda": physics.mstar_i(z_lambda, h0, om0),
        "da_true": cosmo.angular_diameter_distance(z_true).to_value(u.Mpc),
        "da_lambda": cosmo.angular_diameter_distance(z_lambda).to_value(u.Mpc),
        "arcsec_per_kpc": cosmo.arcsec_per_kpc_proper(z_true).to_value(u.arcsec / u.kpc),
    }


def _populate(
    cluster: dict,
    rng: np.random.Generator,
    concentration: float,
    h: float,
) -> pd.DataFrame:
    """Member candidates of one cluster (canonical member columns + truth columns)."""
    lam, z = cluster["richness"], cluster["z_true"]
    p, member = physics.draw_candidates(lam, rng)
    n = p.size
    r_lam = float(richness_radius(lam, h=1.0))  # h^-1 Mpc
    # luminosities: the BCG, then Schechter above 0.2 L*
    lum = np.concatenate(
        [[physics.bcg_luminosity(rng)], physics.schechter_luminosities(n - 1, rng)]
    )
    # radii (h^-1 Mpc, proper, at the true redshift): NFW for members, uniform for interlopers
    r_true = np.where(
        member,
        physics.sample_nfw_radii(n, r_lam, concentration, rng),
        physics.uniform_disc_radii(n, r_lam, rng),
    )
    r_true[0] = 0.0
    theta_deg = np.degrees(r_true / h / cluster["da_true"])
    pa = rng.uniform(0.0, 360.0, n)
    ra, dec = physics.spherical_offset(cluster["ra"], cluster["dec"], pa, theta_deg)
    ra[0], dec[0] = cluster["ra"], cluster["dec"]
    # magnitudes: red sequence at z (interlopers: twice the scatter)
    true = physics.member_magnitudes(
        z, lum, rng, np.where(member, 1.0, 2.0), m_star=cluster["mstar_true"]
    )
    obs, err = physics.observe_magnitudes(true, rng)
    # galaxy redshifts: members with the velocity dispersion, interlopers in front / behind
    dz_v = physics.velocity_dispersion_kms(lam) / physics.C_KMS * (1 + z)
    shift = rng.uniform(0.03, 0.2, n) * (1 + z) * rng.choice([-1.0, 1.0], n)
    z_gal = np.where(member, z + dz_v * rng.standard_normal(n), np.maximum(z + shift, 0.003))
    z_gal[0] = z + dz_v * rng.standard_normal()
    spec = obs[:, 2] < MAIN_SAMPLE_R
    spec[0] |= (obs[0, 2] < BCG_SPEC_R) and (rng.random() < BCG_SPEC_CHANCE)
    # shapes
    hlr = physics.member_half_light_arcsec(lum, z, rng, arcsec_per_kpc=cluster["arcsec_per_kpc"])
    q = rng.uniform(0.6, 1.0, n)
    beta = rng.uniform(0.0, 180.0, n)
    # catalogue columns
    r_cat = r_true * cluster["da_lambda"] / cluster["da_true"]
    m_lim = cluster["mstar_lambda"] + LUM_CUT_MAG
    frame = {
        "cluster_id": np.full(n, cluster["cluster_id"], dtype=np.int64),
        "ra": ra,
        "dec": dec,
        "r": r_cat,
        "p": p,
        "p_free": np.ones(n),
        "theta_i": physics.theta_i(obs[:, 3], err[:, 3], m_lim),
        "theta_r": physics.theta_r(r_cat, r_lam),
    }
    for j, b in enumerate(physics.BANDS):
        frame[f"mag_{b}"] = obs[:, j]
    for j, b in enumerate(physics.BANDS):
        frame[f"magerr_{b}"] = err[:, j]
    frame["imag"] = obs[:, 3]
    frame["imag_err"] = err[:, 3]
    frame["z_spec"] = np.where(spec, z_gal, np.nan)
    frame["objid"] = OBJID_BASE + 10_000 * int(cluster["cluster_id"]) + np.arange(n, dtype=np.int64)
    # truth (not written to members.fits)
    frame["is_member"] = member
    frame["is_bcg"] = np.arange(n) == 0
    frame["z_galaxy"] = z_gal
    for j, b in enumerate(physics.BANDS):
        frame[f"true_mag_{b}"] = true[:, j]
    frame["luminosity"] = lum
    frame["hlr_arcsec"] = hlr
    frame["kind"] = np.full(n, DEV, dtype=np.int8)
    frame["q"] = q
    frame["beta_deg"] = beta
    return pd.DataFrame(frame)


def _p_free(
    cand: pd.DataFrame, cluster: dict, vectors: np.ndarray, radii_deg: np.ndarray, lam: np.ndarray
) -> np.ndarray:
    """``λ / (λ + Σ λ')`` over the richer real clusters whose R_λ contains each candidate."""
    near = _near(vectors, cluster["ra"], cluster["dec"], cluster["r_lambda_deg"] + radii_deg.max())
    near = near[lam[near] > cluster["richness"]]
    out = np.ones(len(cand))
    if near.size == 0:
        return out
    gv = _unit(cand["ra"].to_numpy(), cand["dec"].to_numpy())
    inside = gv @ vectors[near].T >= np.cos(np.radians(radii_deg[near]))[None, :]
    richer = inside.astype(np.float64) @ lam[near]
    return cluster["richness"] / (cluster["richness"] + richer)


# -------------------------------------------------------------------------- field galaxies
class _FieldSky:
    """Field galaxies drawn cell by cell (HEALPix, nside FIELD_NSIDE), cached."""

    def __init__(self, seed: int, density_arcmin2: float, mags: np.ndarray, errs: np.ndarray):
        import healpy as hp

        self.seed, self.mags, self.errs = seed, mags, errs
        self.cos_r = float(np.cos(hp.max_pixrad(FIELD_NSIDE)))
        cap_arcmin2 = 2 * np.pi * (1 - self.cos_r) * (180 * 60 / np.pi) ** 2
        self.mean = density_arcmin2 * cap_arcmin2
        self.cells: dict[int, dict[str, np.ndarray]] = {}

    def cell(self, pix: int) -> dict[str, np.ndarray]:
        if pix not in self.cells:
            self.cells[pix] = self._draw(pix)
        return self.cells[pix]

    def _draw(self, pix: int) -> dict[str, np.ndarray]:
        import healpy as hp

        rng = np.random.default_rng((self.seed, _FIELD, pix))
        # a Poisson process in the cap around the cell centre, kept inside the cell
        n = int(rng.poisson(self.mean))
        c = np.asarray(hp.pix2vec(FIELD_NSIDE, pix))
        axis = np.array([0.0, 0.0, 1.0]) if abs(c[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
        e1 = np.cross(axis, c)
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(c, e1)
        cos_t = 1.0 - rng.random(n) * (1.0 - self.cos_r)
        sin_t = np.sqrt(np.clip(1.0 - cos_t**2, 0.0, None))
        phi = 2 * np.pi * rng.random(n)
        v = cos_t[:, None] * c + sin_t[:, None] * (
            np.cos(phi)[:, None] * e1 + np.sin(phi)[:, None] * e2
        )
        ra, dec = hp.vec2ang(v, lonlat=True) if n else (np.empty(0), np.empty(0))
        keep = hp.ang2pix(FIELD_NSIDE, ra, dec, lonlat=True) == pix if n else np.zeros(0, bool)
        ra, dec, n = ra[keep], dec[keep], int(keep.sum())
        rows = physics.bootstrap_rows(len(self.mags), n, rng)
        mags, errs = self.mags[rows], self.errs[rows]
        hlr = physics.field_half_light_arcsec(mags[:, 2], rng)
        dev = rng.random(n) < physics.early_type_probability(mags[:, 1] - mags[:, 2])
        q = np.where(dev, rng.uniform(0.5, 1.0, n), rng.uniform(0.2, 1.0, n))
        return {
            "id": pix * 100_000 + np.arange(n, dtype=np.int64),
            "ra": np.mod(ra, 360.0),
            "dec": dec,
            "mags": mags,
            "errs": errs,
            "hlr_arcsec": hlr,
            "kind": np.where(dev, DEV, EXP).astype(np.int8),
            "q": q,
            "beta_deg": rng.uniform(0.0, 180.0, n),
        }

    def around(self, ra0: float, dec0: float, radius_deg: float) -> dict[str, np.ndarray]:
        import healpy as hp

        cells = hp.query_disc(FIELD_NSIDE, _unit(ra0, dec0), np.radians(radius_deg), inclusive=True)
        parts = [self.cell(int(p)) for p in np.sort(cells)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# ------------------------------------------------------------------------------ rendering
class _Renderer:
    """GalSim stamps of unit flux per (profile, size, axis ratio, angle) bin, and cutouts."""

    def __init__(self, psf_fwhm: float, render_scale: float, native_size: int, image_size: int):
        import galsim

        self.galsim = galsim
        self.gsparams = galsim.GSParams(folding_threshold=1e-2, maxk_threshold=2e-3)
        self.psf = galsim.Moffat(beta=MOFFAT_BETA, fwhm=psf_fwhm, trunc=MOFFAT_TRUNC * psf_fwhm,
                                 gsparams=self.gsparams)  # fmt: skip
        self.scale = render_scale
        self.n = native_size
        self.block = native_size // image_size
        self.max_stamp = 2 * native_size + 1
        self.sub = max(1, int(np.ceil(render_scale / DRAW_SCALE - 1e-9)))
        self.stamps: dict[tuple[int, int, int, int], np.ndarray] = {}

    def keys(self, kind, hlr, q, beta) -> np.ndarray:
        """Template bins (kind, size, axis ratio, angle) of each galaxy, shape (N, 4)."""
        h = np.maximum(np.asarray(hlr, dtype=np.float64), HLR_MIN)
        ih = np.clip(np.rint(np.log(h / HLR_MIN) / HLR_STEP), 0, N_HLR - 1).astype(np.int64)
        iq = np.argmin(np.abs(Q_BINS[None, :] - np.asarray(q)[:, None]), axis=1)
        ip = np.rint((np.asarray(beta) % 180.0) / PA_STEP_DEG).astype(np.int64) % 8
        ip[Q_BINS[iq] >= 1.0] = 0
        return np.stack([np.asarray(kind, dtype=np.int64), ih, iq, ip], axis=1)

    def stamp(self, key: tuple[int, int, int, int]) -> np.ndarray:
        if key not in self.stamps:
            g = self.galsim
            kind, ih, iq, ip = key
            hlr = HLR_MIN * float(np.exp(ih * HLR_STEP))
            if kind == DEV:
                prof = g.Sersic(4.0, half_light_radius=hlr, trunc=SERSIC_TRUNC * hlr,
                                gsparams=self.gsparams)  # fmt: skip
            else:
                prof = g.Exponential(half_light_radius=hlr, gsparams=self.gsparams)
            if Q_BINS[iq] < 1.0:
                prof = prof.shear(q=float(Q_BINS[iq]), beta=ip * PA_STEP_DEG * g.degrees)
            obj = g.Convolve(prof, self.psf)
            n = min(obj.getGoodImageSize(self.scale), self.max_stamp) // 2 * 2 + 1
            # GalSim's FFTs are slow at pixels much larger than the profile: draw at a fine
            # scale (<= DRAW_SCALE) and sum blocks of m x m, which integrates over the pixel
            m = self.sub
            arr = obj.drawImage(nx=n * m, ny=n * m, scale=self.scale / m, method="auto").array
            arr = np.asarray(arr, dtype=np.float64).reshape(n, m, n, m).sum(axis=(1, 3))
            self.stamps[key] = arr / arr.sum()
        return self.stamps[key]

    def render(self, x, y, flux, kind, hlr, q, beta) -> np.ndarray:
        """Noise-free cube (3, S, S), flux per output pixel; x, y in output pixels."""
        n, k = self.n, self.block
        fine = np.zeros((len(IMAGE_BANDS), n, n))
        ix = np.rint((np.asarray(x) + 0.5) * k - 0.5).astype(np.int64)
        iy = np.rint((np.asarray(y) + 0.5) * k - 0.5).astype(np.int64)
        for j, key in enumerate(map(tuple, self.keys(kind, hlr, q, beta).tolist())):
            st = self.stamp(key)
            m = st.shape[0] // 2
            x0, x1 = ix[j] - m, ix[j] + m + 1
            y0, y1 = iy[j] - m, iy[j] + m + 1
            cx0, cx1, cy0, cy1 = max(x0, 0), min(x1, n), max(y0, 0), min(y1, n)
            if cx0 >= cx1 or cy0 >= cy1:
                continue
            piece = st[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
            fine[:, cy0:cy1, cx0:cx1] += flux[j][:, None, None] * piece[None]
        s = n // k
        return fine.reshape(len(IMAGE_BANDS), s, k, s, k).sum(axis=(2, 4))


def _header_template(
    scale: float, size: int, render_scale: float, psf_fwhm: float, zero_point: float, sigma
):
    """The FITS header shared by every cutout (:func:`_header` fills in the centre)."""
    from astropy.io import fits
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---CAR", "DEC--CAR"]
    w.wcs.crval = [0.0, 0.0]
    w.wcs.crpix = [(size + 1) / 2.0, (size + 1) / 2.0]
    w.wcs.cdelt = [-scale / 3600.0, scale / 3600.0]
    h = fits.Header()
    h["BANDS"] = (",".join(IMAGE_BANDS), "planes of the cube")
    h["BUNIT"] = ("nanomaggy", f"per native {NATIVE_PIXEL_SCALE} arcsec pixel")
    h["RA"] = (0.0, "centre, ICRS deg")
    h["DEC"] = (0.0, "centre, ICRS deg")
    h["PIXSCALE"] = (scale, "arcsec / pixel of this image")
    h["NATPIXSC"] = (NATIVE_PIXEL_SCALE, "SDSS pixel scale, arcsec / pixel")
    h["RENDSCAL"] = (render_scale, "GalSim render scale, arcsec / pixel")
    h["PSFFWHM"] = (psf_fwhm, "Moffat PSF FWHM, arcsec")
    h["ZEROPT"] = (zero_point, "mag of unit flux")
    for j, b in enumerate(IMAGE_BANDS):
        h[f"SKYSIG{j + 1}"] = (float(sigma[j]), f"{b} sky noise per native pixel")
    h["KIND"] = ("cluster", "cluster or empty")
    h["CLUSTER"] = (-1, "centred cluster ID (-1: empty field)")
    h.extend(w.to_header(), update=True)
    return h


def _header(template, row: dict):
    """The header of one cutout: the template with its centre, kind and cluster."""
    h = template.copy()
    h["RA"] = row["ra"]
    h["DEC"] = row["dec"]
    h["CRVAL1"] = row["ra"]
    h["CRVAL2"] = row["dec"]
    # wcslib's default LONPOLE for a CAR reference point at dec0 (0 if dec0 >= 0 else 180)
    h["LONPOLE"] = 0.0 if row["dec"] >= 0 else 180.0
    h["KIND"] = row["kind"]
    h["CLUSTER"] = int(row["cluster_id"])
    return h


def _write_cube(path: Path, cube: np.ndarray, header) -> None:
    from astropy.io import fits

    fits.PrimaryHDU(cube.astype(np.float32), header=header).writeto(path)


# ------------------------------------------------------------------------------ main
def simulate_sky(
    out_dir: str | Path,
    *,
    seed: int = 11,
    cluster_list: str
    | Path = "data/external/cluster_finder/redmapper_sdss_dr8_v5.10_clusters.csv.gz",
    galaxy_table: str | Path = "data/external/cluster_finder/redmapper_test_dr8_gals_with_zred.fit",
    n_clusters: int = 150,
    n_empty: int = 150,
    z_range: Sequence[float] = (0.08, 0.35),
    min_richness: float = 20.0,
    field_arcmin: float = 8.0,
    native_size: int = 128,
    image_size: int = 64,
    max_offset_arcmin: float = 1.5,
    psf_fwhm_arcsec: float = 1.4,
    sky_sigma: float | Sequence[float] | None = None,
    mag_limit: float = 21.5,
    footprint_nside: int = 64,
    footprint_radius_deg: float = 1.0,
    min_separation_arcmin: float = 20.0,
    secondary_margin_arcmin: float = 2.0,
    concentration: float = 3.0,
    field_density_arcmin2: float = 1.0,
    zero_point: float = 22.5,
    h0: float = 70.0,
    om0: float = 0.3,
    n_workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Simulate the SDSS-like sky around real redMaPPer clusters: images and catalogues.

    Parameters
    ----------
    out_dir : str or pathlib.Path
        Output folder, replaced as a whole when the run succeeds (module docstring).
    seed : int
        Seed of the whole sky (>= 0).
    cluster_list : str or pathlib.Path
        The real redMaPPer cluster list (CSV ``ID, name, RA, dec, redshift, lambda, r500``,
        or any layout :func:`.catalogues.read_clusters` reads).
    galaxy_table : str or pathlib.Path
        The real DR8 galaxy table (5-element ``MODEL_MAG``, ``MODEL_MAGERR``); rows with an
        invalid magnitude or error are dropped (:func:`.physics.valid_magnitude_rows`).
    n_clusters : int
        Primary clusters, one cutout each (>= 1).
    n_empty : int
        Empty fields (>= 0).
    z_range : (float, float)
        ``z_min <= z_lambda < z_max`` of the primary clusters.
    min_richness : float
        Least λ of the primary clusters.
    field_arcmin : float
        Side of a cutout, arcmin (8': R_λ of a λ = 40 cluster at z = 0.2 is ~5').
    native_size : int
        Render grid side, pixels (a multiple of ``image_size``).
    image_size : int
        Output side, pixels (block average of the render grid).
    max_offset_arcmin : float
        Largest offset of a cutout centre from its cluster on each axis, arcmin.
    psf_fwhm_arcsec : float
        Moffat PSF FWHM, arcsec (all bands).
    sky_sigma : float or sequence of 3 floats or None
        Sky noise per native 0.396" pixel (flux units of ``zero_point``), one value or one
        per band g, r, i; None: from the SDSS depths (:func:`.physics.sky_sigma_per_pixel`).
    mag_limit : float
        Galaxies fainter than this (true i magnitude) are not drawn (they stay in the
        catalogues).
    footprint_nside : int
        HEALPix nside of ``footprint.fits`` (a power of 2).
    footprint_radius_deg : float
        The footprint is every pixel within this radius of a primary cluster.
    min_separation_arcmin : float
        Empty fields lie farther than this from every cluster of the real list.
    secondary_margin_arcmin : float
        Real clusters with a centre within this distance outside a cutout are populated.
    concentration : float
        NFW concentration ``R_λ / r_s`` of the members.
    field_density_arcmin2 : float
        Field galaxies per arcmin^2.
    zero_point : float
        Magnitude of unit flux (22.5: nanomaggies).
    h0, om0 : float
        Flat ΛCDM cosmology.
    n_workers : int
        Accepted for the params section; the simulation runs in one process (it is
        dominated by catalogue work, not by rendering).
    progress : callable, optional
        ``progress(done, total)`` in images.

    Returns
    -------
    dict
        ``out_dir``, ``n_images``, ``n_cluster_images``, ``n_empty``, ``n_clusters``
        (populated), ``n_secondary``, ``n_members`` (candidate rows), ``n_galaxies``,
        ``n_templates`` (GalSim stamps drawn), ``pixel_scale_arcsec``, ``seconds``.

    Raises
    ------
    InputError
        Invalid arguments (the message names the argument), unreadable real files, fewer
        clusters than ``n_clusters`` in the ranges, or no room for the empty fields.
    """
    t0 = time.perf_counter()
    _check(
        seed=seed, n_clusters=n_clusters, n_empty=n_empty, z_range=tuple(z_range),
        field_arcmin=field_arcmin, psf_fwhm_arcsec=psf_fwhm_arcsec,
        concentration=concentration, field_density_arcmin2=field_density_arcmin2,
        footprint_radius_deg=footprint_radius_deg, min_separation_arcmin=min_separation_arcmin,
        max_offset_arcmin=max_offset_arcmin, secondary_margin_arcmin=secondary_margin_arcmin,
        image_size=image_size, native_size=native_size,
    )  # fmt: skip
    sigma_native = _sky_sigma(sky_sigma, psf_fwhm_arcsec, zero_point)
    out_dir = Path(out_dir)
    h = h0 / 100.0
    scale = field_arcmin * 60.0 / image_size
    render_scale = field_arcmin * 60.0 / native_size
    sigma_out = sigma_native * NATIVE_PIXEL_SCALE / scale
    to_native = (NATIVE_PIXEL_SCALE / scale) ** 2  # flux per output pixel -> per native pixel

    # ---- real inputs
    real = read_clusters(cluster_list, require=("cluster_id", "ra", "dec", "z_lambda", "richness"))
    real = real.sort_values("cluster_id", kind="stable").reset_index(drop=True)
    gal = read_galaxies(galaxy_table)
    gmags = gal[[f"mag_{b}" for b in physics.BANDS]].to_numpy()
    gerrs = gal[[f"magerr_{b}" for b in physics.BANDS]].to_numpy()
    ok = physics.valid_magnitude_rows(gmags, gerrs)
    if not ok.any():
        raise InputError("no galaxy row with valid magnitudes and errors", galaxy_table)
    gmags, gerrs = gmags[ok], gerrs[ok]

    lam_all = real["richness"].to_numpy()
    z_all = real["z_lambda"].to_numpy()
    ra_all, dec_all = real["ra"].to_numpy(), real["dec"].to_numpy()
    vec_all = _unit(ra_all, dec_all)
    rlam_deg_all = (
        physics.angular_radius_arcmin(richness_radius(lam_all, h=1.0), z_all, h0, om0) / 60
    )

    # ---- primary clusters
    pool = np.flatnonzero((z_all >= z_range[0]) & (z_all < z_range[1]) & (lam_all >= min_richness))
    if pool.size < n_clusters:
        raise InputError(
            f"only {pool.size} clusters with {z_range[0]} <= z_lambda < {z_range[1]} and "
            f"lambda >= {min_richness}; expected at least n_clusters = {n_clusters}",
            cluster_list,
            "n_clusters",
        )
    rng = np.random.default_rng((seed, _CHOICE))
    primary = np.sort(rng.choice(pool, n_clusters, replace=False))
    offsets = rng.uniform(-max_offset_arcmin, max_offset_arcmin, (n_clusters, 2)) * 60.0
    c = (image_size - 1) / 2.0
    img_ra, img_dec = pixel_to_sky(
        c - offsets[:, 0] / scale, c + offsets[:, 1] / scale,
        ra_all[primary], dec_all[primary], scale, image_size,
    )  # fmt: skip

    # ---- footprint and empty fields
    footprint = footprint_from_positions(
        ra_all[primary], dec_all[primary], footprint_nside, footprint_radius_deg
    )
    e_ra, e_dec = empty_field_centres(
        footprint, ra_all, dec_all, n_empty, min_separation_arcmin,
        rng=np.random.default_rng((seed, _EMPTY)),
    )  # fmt: skip

    images = [
        {"file": f"images/cluster_{int(real['cluster_id'][i]):06d}.fits", "kind": "cluster",
         "ra": float(img_ra[k]), "dec": float(img_dec[k]), "cluster_id": int(real["cluster_id"][i])}
        for k, i in enumerate(primary)
    ] + [
        {"file": f"images/empty_{k:04d}.fits", "kind": "empty", "ra": float(e_ra[k]),
         "dec": float(e_dec[k]), "cluster_id": -1}
        for k in range(n_empty)
    ]  # fmt: skip
    half_diag_deg = field_arcmin / 60.0 / np.sqrt(2.0)
    lo, hi = -0.5, image_size - 0.5

    def box(x, y, margin=0.0):
        return (x >= lo - margin) & (x <= hi + margin) & (y >= lo - margin) & (y <= hi + margin)

    # ---- secondary clusters: every real cluster in (or near) a cluster cutout
    margin_px = secondary_margin_arcmin * 60.0 / scale
    populated = set(int(i) for i in primary)
    in_image: list[np.ndarray] = []
    for row in images:
        if row["kind"] != "cluster":
            in_image.append(np.empty(0, np.int64))
            continue
        near = _near(vec_all, row["ra"], row["dec"], half_diag_deg + secondary_margin_arcmin / 60)
        x, y = sky_to_pixel(ra_all[near], dec_all[near], row["ra"], row["dec"], scale, image_size)
        inside = box(x, y, margin_px)
        in_image.append(near[box(x, y)])
        populated.update(int(i) for i in near[inside])
    pop = np.array(sorted(populated), dtype=np.int64)

    # ---- members of every populated cluster
    z_true = np.empty(pop.size)
    for k, i in enumerate(pop):
        r = np.random.default_rng((seed, _CLUSTER, int(real["cluster_id"][i])))
        z_true[k] = max(
            z_all[i] + float(physics.z_lambda_error(z_all[i])) * r.standard_normal(), 0.01
        )
    scal = _cluster_scalars(z_true, z_all[pop], h0, om0)
    cand_frames, truth_rows = [], []
    primary_set = set(int(i) for i in primary)
    for k, i in enumerate(pop):
        cid = int(real["cluster_id"][i])
        r = np.random.default_rng((seed, _CLUSTER, cid))
        r.standard_normal()  # the true-redshift draw above
        cl = {"cluster_id": cid, "ra": ra_all[i], "dec": dec_all[i], "richness": lam_all[i],
              "z_lambda": z_all[i], "z_true": z_true[k], "r_lambda_deg": rlam_deg_all[i],
              **{key: float(v[k]) for key, v in scal.items()}}  # fmt: skip
        cand = _populate(cl, r, concentration, h)
        cand["p_free"] = _p_free(cand, cl, vec_all, rlam_deg_all, lam_all)
        cand_frames.append(cand)
        truth_rows.append({
            "cluster_id": cid, "ra": ra_all[i], "dec": dec_all[i], "z_lambda": z_all[i],
            "z_true": z_true[k], "z_spec": float(cand["z_spec"].iloc[0]),
            "richness": lam_all[i], "r_lambda_hmpc": float(richness_radius(lam_all[i], h=1.0)),
            "r_lambda_arcmin": np.nan, "mstar_i": scal["mstar_true"][k], "n_candidates": len(cand),
            "n_members": int(cand["is_member"].sum()), "sum_p": float(cand["p"].sum()),
            "bcg_imag": float(cand["true_mag_i"].iloc[0]), "primary": bool(i in primary_set),
        })  # fmt: skip
    cands = pd.concat(cand_frames, ignore_index=True)
    cand_vec = _unit(cands["ra"].to_numpy(), cands["dec"].to_numpy())
    cand_flux = physics.fluxes(cands[[f"true_mag_{b}" for b in IMAGE_BANDS]].to_numpy(), zero_point)
    cand_bright = cands["true_mag_i"].to_numpy() < mag_limit

    # ---- images
    field = _FieldSky(seed, field_density_arcmin2, gmags, gerrs)
    renderer = _Renderer(psf_fwhm_arcsec, render_scale, native_size, image_size)
    render_margin = 20.0 / scale + 1.0  # galaxies up to 20" outside still shed light inside
    search_deg = half_diag_deg + 30.0 / 3600.0
    shape_keys = ("kind", "hlr_arcsec", "q", "beta_deg")
    cand_ra, cand_dec = cands["ra"].to_numpy(), cands["dec"].to_numpy()
    cand_shape = {key: cands[key].to_numpy() for key in shape_keys}
    cand_cid = cands["cluster_id"].to_numpy()
    field_rows: dict[int, tuple] = {}
    total = len(images)
    rendered = np.zeros(len(cands), dtype=bool)
    n_images_of: dict[int, int] = {}

    template = _header_template(
        scale, image_size, render_scale, psf_fwhm_arcsec, zero_point, sigma_native
    )
    with atomic_dir(out_dir) as tmp:
        (tmp / "images").mkdir()
        for k, row in enumerate(images):
            ra0, dec0 = row["ra"], row["dec"]
            f = field.around(ra0, dec0, search_deg)
            nf = len(f["ra"])
            near = (
                _near(cand_vec, ra0, dec0, search_deg)
                if row["kind"] == "cluster"
                else np.empty(0, dtype=np.int64)
            )
            x, y = sky_to_pixel(np.concatenate([f["ra"], cand_ra[near]]),
                                np.concatenate([f["dec"], cand_dec[near]]),
                                ra0, dec0, scale, image_size)  # fmt: skip
            fx, fy, mx, my = x[:nf], y[:nf], x[nf:], y[nf:]
            for j in np.flatnonzero(box(fx, fy)):
                field_rows.setdefault(
                    int(f["id"][j]), (f["ra"][j], f["dec"][j], f["mags"][j], f["errs"][j])
                )
            fdraw = box(fx, fy, render_margin) & (f["mags"][:, 3] < mag_limit)
            inside = box(mx, my)
            for cid in np.unique(cand_cid[near[inside]]):
                n_images_of[int(cid)] = n_images_of.get(int(cid), 0) + 1
            draw = box(mx, my, render_margin) & cand_bright[near]
            rendered[near[draw & inside]] = True
            sel = near[draw]
            xs, ys = [fx[fdraw], mx[draw]], [fy[fdraw], my[draw]]
            flux = [physics.fluxes(f["mags"][fdraw][:, _BAND_INDEX], zero_point), cand_flux[sel]]
            parts = {key: [f[key][fdraw], cand_shape[key][sel]] for key in shape_keys}
            cube = renderer.render(
                np.concatenate(xs), np.concatenate(ys), np.concatenate(flux),
                *(np.concatenate(parts[key]) for key in shape_keys),
            ) * to_native  # fmt: skip
            noise = np.random.default_rng((seed, _IMAGE, k)).standard_normal(cube.shape)
            cube += noise * sigma_out[:, None, None]
            row.update(pixel_scale_arcsec=scale, size=image_size,
                       native_pixel_scale_arcsec=NATIVE_PIXEL_SCALE,
                       n_clusters=len(in_image[k]))  # fmt: skip
            _write_cube(tmp / row["file"], cube, _header(template, row))
            if progress is not None:
                progress(k + 1, total)

        # ---- catalogues
        clusters = pd.DataFrame({
            "cluster_id": real["cluster_id"].to_numpy()[pop],
            "ra": ra_all[pop], "dec": dec_all[pop], "z_lambda": z_all[pop],
            "z_lambda_err": physics.z_lambda_error(z_all[pop]),
            "z_spec": [t["z_spec"] for t in truth_rows],
            "richness": lam_all[pop], "richness_err": physics.richness_error(lam_all[pop]),
        })  # fmt: skip
        write_clusters(tmp / "clusters.fits", clusters, layout="dr8")
        write_members(tmp / "members.fits", cands, layout="dr8")
        ids = sorted(field_rows)
        gal_cols = {"ra": np.array([field_rows[i][0] for i in ids], dtype=np.float64),
                    "dec": np.array([field_rows[i][1] for i in ids], dtype=np.float64)}  # fmt: skip
        fm = np.array([field_rows[i][2] for i in ids], dtype=np.float64).reshape(-1, 5)
        fe = np.array([field_rows[i][3] for i in ids], dtype=np.float64).reshape(-1, 5)
        for j, b in enumerate(physics.BANDS):
            gal_cols[f"mag_{b}"] = fm[:, j]
        for j, b in enumerate(physics.BANDS):
            gal_cols[f"magerr_{b}"] = fe[:, j]
        write_galaxies(tmp / "galaxies.fits", pd.DataFrame(gal_cols))
        write_footprint(tmp / "footprint.fits", footprint)
        pd.DataFrame(images, columns=list(IMAGE_COLUMNS)).to_csv(tmp / "images.csv", index=False)

        truth = pd.DataFrame(truth_rows)
        truth["r_lambda_arcmin"] = physics.angular_radius_arcmin(
            truth["r_lambda_hmpc"].to_numpy(), z_true, h0, om0
        )
        member = cands["is_member"].to_numpy()
        truth["n_rendered_members"] = [
            int((rendered & member & (cand_cid == t)).sum()) for t in truth["cluster_id"]
        ]
        truth["n_images"] = [n_images_of.get(int(t), 0) for t in truth["cluster_id"]]
        truth.to_parquet(tmp / "truth.parquet", index=False)
        keep = ["objid", "cluster_id", "is_member", "is_bcg", "z_galaxy", "luminosity",
                *[f"true_mag_{b}" for b in physics.BANDS], *shape_keys[1:]]  # fmt: skip
        truth_members = cands[keep].copy()
        truth_members["rendered"] = rendered
        truth_members.to_parquet(tmp / "truth_members.parquet", index=False)

    return {
        "out_dir": str(out_dir),
        "n_images": total,
        "n_cluster_images": n_clusters,
        "n_empty": n_empty,
        "n_clusters": int(pop.size),
        "n_secondary": int(pop.size - n_clusters),
        "n_members": len(cands),
        "n_galaxies": len(field_rows),
        "n_templates": len(renderer.stamps),
        "pixel_scale_arcsec": scale,
        "seconds": round(time.perf_counter() - t0, 2),
    }
