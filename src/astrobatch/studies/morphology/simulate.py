"""morphology simulator (the embedded default): galaxies of several surveys with Galaxy Zoo votes.

Writes, for each survey of :class:`~astrobatch.studies.morphology.params.MorphologySimulate`,
``<out>/<survey>/images/<id>.<jpg|png|fits>`` and a Galaxy Zoo catalogue
``<out>/<survey>/gz_decals_catalogue.<csv|fits>`` (GZ DECaLS layout, Walmsley et al. 2022,
MNRAS 509, 3966, arXiv:2102.08414) or ``<out>/<survey>/gz2_catalogue.<csv|fits>`` (GZ2
layout, Willett et al. 2013, MNRAS 435, 2835; column names of Hart et al. 2016, MNRAS 461,
3663), plus ``<out>/truth.parquet`` with the true structure of every galaxy. The folder is
built aside and swapped in at the end (:func:`astrobatch.io.atomic.atomic_dir`): a failed run
leaves the previous output as it was.

Units
    Images are surface brightness in a reference unit ``u`` (per arcsec^2); a galaxy's mean
    surface brightness within its half-light radius, ``surface_brightness``, is drawn
    log-uniformly over ``MorphologySimulate.surface_brightness`` (default 0.3-3 u), and
    ``SurveySpec.sky_sigma`` is the Gaussian sky noise per pixel in u. Fluxes are in
    u arcsec^2. With the defaults the S/N per pixel at the half-light radius is ~5-60 in the
    SDSS-like survey, ~3x higher in the DECaLS-like one.
Galaxies (:func:`draw_structure`)
    A morphological class (elliptical 30 %, lenticular 15 %, spiral 45 %, irregular 10 %)
    sets the ranges of the structure: bulge-to-total flux ratio B/T (in the disc's units,
    see *Colours*), Sérsic index n of the bulge (1.5-4, on a 0.1 grid), disc half-light
    radius (``half_light_arcsec``, log-uniform; for ellipticals the bulge's is 0.5-0.85 of it),
    inclination (isotropic, cos i uniform), position angle, bar strength (0-1), spiral-arm
    strength (0-1), number of arms and pitch angle (tighter for larger B/T, as along the
    Hubble sequence), clump fraction (share of the disc light in star-forming knots).
    Independently, ``merger_fraction`` of the galaxies have a companion (flux ratio
    0.25-1, 1-2.2 half-light radii away) and ``artifact_fraction`` are artefacts: a bright
    star on a faint galaxy, or a satellite trail (in one band or in all).
Rendering (:func:`render_galaxy`; GalSim, Rowe et al. 2015, A&C 10, 121, arXiv:1407.7676)
    Bulge: ``galsim.Sersic`` (truncated at 6 half-light radii) with the projected axis ratio
    of an oblate spheroid. Disc: ``galsim.InclinedExponential`` (h/R = 0.12), or, for
    spirals seen below 72 deg inclination, a face-on exponential multiplied by the arm
    pattern ``(1 - A) + A ((1 + cos Φ) / 2)^3 / (5/16)``, ``Φ = m (θ - ln(r/h) / tan p) + φ0``
    (logarithmic spirals of m arms, pitch p, strength A tapered to 0 inside the bulge or
    bar), sampled on a grid of 1.5 points per pixel, drawn through
    ``galsim.InterpolatedImage`` and projected (axis ratio ``sqrt(cos^2 i + 0.12^2 sin^2 i)``,
    major axis kept). Bar: an elongated ``Sersic(n=0.5)`` (axis ratio 0.25, up to 30 % of
    the disc light, 0.8-1.5 half-light radii long) in the disc plane, projected with it.
    Clumps: 15-50 knots, their positions drawn from the arm-modulated disc light of spirals
    (on the arms) or from ``galsim.RandomKnots`` on the exponential disc, rendered as point
    sources. Mergers: both galaxies sheared by a tidal g = 0.1-0.35 towards each other, plus
    a faint elongated tidal plume (6 % of the flux, axis ratio 0.35). Everything is
    convolved with a Moffat PSF (beta 3.5, FWHM ``psf_fwhm_arcsec``; point sources through
    the same PSF, drawn once per survey by GalSim with the pixel response, by FFT) and
    drawn with pixel response at ``pixel_scale_arcsec`` on ``image_size`` pixels, the
    centre jittered by up to half a pixel; Gaussian sky noise of ``sky_sigma`` is added.
Colours
    Each component is drawn once and the bands are linear combinations: band b is
    ``w_b bulge_and_bar + disc + w_b^-1.5 clumps (+ star, trail)`` with
    ``w_b = band_bulge_weight[b]`` (the disc has the same flux in every band): red bulges and
    bars, bluer clumps; near-IR bands (large w) see more bulge and fewer clumps.
Answer probabilities (:func:`true_probabilities`) of the GZ DECaLS tree
    Softmax of logits (or ordered-logit cut points) of the true structure plus a
    per-galaxy, per-answer N(0, 0.5^2) logit noise (volunteers disagree):

    - smooth-or-featured: featured logit ``s/2``, smooth ``-s/2`` with
      ``s = 4 (1 - B/T) - 2 + 3 arms + 2.5 bar + 3 clumps + 1.5 (1 - B/T) [i > 70 deg] +
      merger``; artifact logit 4.5 for stars, 1 for trails, -4.5 otherwise;
    - disk-edge-on: yes logit ``(i - 74 deg) / 4 deg``;
    - has-spiral-arms: yes logit ``7 (arms - 0.3) + clumps``;
    - bar: ordered logit of ``6 bar`` with cuts 1.5 (no | weak) and 3.5 (weak | strong);
    - bulge-size: ordered logit of ``10 B/T`` with cuts 0.4, 1.5, 3.5, 6 (none ... dominant);
    - how-rounded: ordered logit of ``10 (1 - q)``, q the projected axis ratio, cuts 2.5, 6;
    - edge-on-bulge: logits none ``2.5 - 14 B/T``, rounded ``0.9 (n - 2.5) + 0.5``, boxy
      ``-0.9 (n - 2.5) - 1 + 3 bar``;
    - spiral-winding: ordered logit of ``p / 4 deg`` with cuts at p = 15 and 25 deg;
    - spiral-arm-count: logit ``2.5 - 1.5 |k - m|`` for k = 1..4, >4; cant-tell
      ``1.5 - 3 arms``;
    - merging: with a companion none -1, minor 0.5, major ``1 + 2 g_tidal``, merger
      ``1 + 3 flux ratio``; without: none 3, minor ``0.2 + 2 clumps``, major -2, merger -3.5.

    GZ2 probabilities (:func:`gz2_probabilities`) follow from the DECaLS ones: the shared
    answers (:data:`~astrobatch.studies.morphology.schema.GZ2_TO_DECALS`) are equal;
    t03 bar = strong + weak; t05 bulge prominence: no bulge = none, just noticeable =
    small, obvious = moderate + large / 2, dominant = dominant + large / 2; t06 odd and
    t08 odd feature from the disturbance and merger answers, irregular clumps, and an 8 %
    base rate of rings, lenses, dust lanes and "other".
Visibility (:func:`visibility`, :func:`apply_visibility`)
    Features are harder to see in blurred and shallow images (the motivation of the GZ2
    debiasing, Hart et al. 2016): ``v_res = x^2 / (x^2 + 0.6^2)``, ``x`` = half-light
    radius / PSF FWHM; ``v_snr = S / (S + 30)``, ``S = Σ_e r_e / (σ_sky · pixel scale)``
    (the S/N of an r_e x r_e patch at the mean surface brightness). The featured-or-disk
    and disturbance/merger probabilities are multiplied by ``v = v_res v_snr``, arms yes,
    bar strong/weak and the arm counts by ``v_res^2 v_snr``; the lost probability goes to
    smooth, "no", "none" and cant-tell.
Volunteers (:func:`simulate_votes`)
    ``Poisson(volunteers_first_question)`` volunteers walk the survey's own tree (DECaLS or
    GZ2): each question's answers are a multinomial draw of the votes arriving at it (its
    parent answer's count; all volunteers for the first question), which is the same
    distribution as volunteers walking the tree one by one. A question nobody reached has
    0 votes.

Every galaxy draws all of its randomness from
``numpy.random.default_rng((seed, survey_index, galaxy_index))`` (structure first, then
the ``galsim.BaseDeviate`` seed, the noise and the votes), so the output is byte-identical
for any ``n_workers`` and the structure of galaxy i does not depend on the survey's optics.

Image files
    JPEG (Pillow, quality 90) and PNG: 8-bit RGB with R = the reddest (last) band, G = the
    middle one, B = the bluest (first; fewer bands are repeated), north (+y) up, through a
    fixed per-survey asinh stretch after Lupton et al. (2004, PASP 116, 133): channel gains
    ``w_b^-1/2`` (normalised to a geometric mean of 1; bluer bands boosted as in the
    Legacy Surveys' per-band scales, so discs look blue and bulges yellow), then
    ``rgb = x f(I) / I``, ``I`` the mean of the planes, ``f(I) = asinh(I / β) / Q`` with
    softening ``β = 2 sky_sigma`` and ``Q = asinh(rgb_saturation / β)``, so that surface
    brightness ``rgb_saturation`` reaches full scale; saturated pixels keep their colour.
    FITS: a float32 cube (3, S, S) in the primary HDU, planes in the same order as the RGB
    channels (reddest first; ``BANDS`` lists them), header ``BUNIT``, ``PIXSCALE``,
    ``BANDS``, ``SURVEY``, ``PSFFWHM``, ``SKYSIG``.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import galsim
import numpy as np
import pandas as pd

from astrobatch.errors import InputError
from astrobatch.io.atomic import atomic_dir
from astrobatch.studies.morphology.params import MorphologySimulate, SurveySpec
from astrobatch.studies.morphology.schema import DECALS, GZ2, GZ2_TO_DECALS, Schema

#: Morphological classes and their shares.
KINDS = ("elliptical", "lenticular", "spiral", "irregular")
KIND_PROBABILITIES = (0.30, 0.15, 0.45, 0.10)
#: Moffat PSF index.
MOFFAT_BETA = 3.5
#: Disc thickness (scale height over scale length) of the inclined exponential.
DISC_H_OVER_R = 0.12
#: Spirals inclined more than this are drawn as a smooth inclined disc (arms unseen), deg.
ARMS_MAX_INCLINATION_DEG = 72.0
#: Arm profile exponent (narrow arms) and the mean of ((1 + cos)/2)^3 (= 5/16).
ARM_SHARPNESS, ARM_PROFILE_MEAN = 3, 5.0 / 16.0
#: Grid points per output pixel of the arm-modulated disc, and its Fourier padding.
ARM_GRID_SAMPLING, ARM_PAD_FACTOR = 1.5, 1.5
#: Bar: Sérsic index, axis ratio, flux share of the disc light at strength 1.
BAR_N, BAR_Q, BAR_MAX_FLUX = 0.5, 0.25, 0.3
#: Band weight exponent of the clumps (w_b^-1.5: blue young knots).
CLUMP_COLOUR = -1.5
#: Tidal plume of a merger: flux share of the primary and axis ratio.
TAIL_FLUX, TAIL_Q = 0.06, 0.35
#: JPEG/PNG channel gains w_b^-1/2 (bluer bands boosted, as legacypipe's per-band scales).
RGB_GAIN_POWER = -0.5
#: Sérsic truncation radius in half-light radii.
SERSIC_TRUNC = 6.0
#: Sd of the per-answer logit noise of the true probabilities.
LOGIT_NOISE = 0.5
#: Visibility: resolution and S/N at which the factors are 1/2.
RES_HALF, SNR_HALF = 0.6, 30.0
#: asinh softening of the JPEG/PNG stretch, in sky sigmas.
RGB_SOFTENING = 2.0
#: Galaxy light kept under a bright-star artefact.
STAR_GALAXY_DIM = 0.3
#: Galaxies per worker task.
CHUNK = 16
#: First dr7objid of the GZ2-layout catalogues (SDSS DR7 object ids look like this).
DR7_BASE = 587_722_981_000_000_000
#: Truth columns of :class:`GalaxyStructure` not written to truth.parquet.
_INTERNAL = ("logit_noise", "offset_px", "companion_bulge_to_total", "companion_inclination_deg",
             "companion_position_angle_deg", "companion_angle_deg", "tail_angle_deg",
             "arm_phase", "bar_angle_deg", "star_colour", "trail_band", "trail_angle_deg",
             "trail_point", "trail_density", "star_flux", "star_point", "intrinsic_bulge_q",
             "n_clumps")  # fmt: skip

_GSPARAMS = galsim.GSParams(folding_threshold=1e-2, maxk_threshold=2e-3, maximum_fft_size=4096)


# ----------------------------------------------------------------------------------------------
# Structure
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GalaxyStructure:
    """The true structure of one simulated galaxy (survey independent).

    Attributes
    ----------
    kind : str
        ``elliptical``, ``lenticular``, ``spiral`` or ``irregular``.
    bulge_to_total : float
        Bulge flux / total, in the disc's units (band weight 1).
    sersic_n : float
        Bulge Sérsic index (1.5-4, 0.1 grid).
    half_light_arcsec : float
        Disc half-light radius (face on), arcsec; the galaxy's size.
    bulge_half_light_arcsec : float
        Bulge half-light radius, arcsec.
    inclination_deg, position_angle_deg : float
        Disc inclination (0 face on, 90 edge on) and major-axis angle from +x, deg.
    axis_ratio : float
        Projected axis ratio, B/T-weighted mean of bulge and disc.
    bar_strength, arm_strength, clump_fraction : float
        In [0, 1] (0: none).
    n_arms : int
        0 without arms; 5 stands for "more than 4".
    pitch_angle_deg, bar_length_arcsec : float
        0 without arms or bar.
    merger : bool
        Has a companion galaxy.
    companion_flux_ratio, companion_separation_arcsec, tidal_shear : float
        0 without a companion.
    artifact : bool
    artifact_kind : str
        ``none``, ``star`` or ``trail``.
    surface_brightness : float
        Mean surface brightness within ``half_light_arcsec``, u (reference unit).
    flux : float
        Total flux in the disc's units, u arcsec^2.
    ra, dec : float
        Sky position, deg (random).
    logit_noise : numpy.ndarray, shape (34,), float64
        Per-answer logit noise of the DECaLS answers.

    The other attributes are the nuisance parameters of the rendering (angles, phases,
    offsets, colours), not written to the truth table.
    """

    kind: str
    bulge_to_total: float
    sersic_n: float
    half_light_arcsec: float
    bulge_half_light_arcsec: float
    inclination_deg: float
    position_angle_deg: float
    axis_ratio: float
    intrinsic_bulge_q: float
    bar_strength: float
    bar_length_arcsec: float
    bar_angle_deg: float
    arm_strength: float
    n_arms: int
    pitch_angle_deg: float
    arm_phase: float
    clump_fraction: float
    n_clumps: int
    merger: bool
    companion_flux_ratio: float
    companion_separation_arcsec: float
    companion_angle_deg: float
    companion_bulge_to_total: float
    companion_inclination_deg: float
    companion_position_angle_deg: float
    tidal_shear: float
    tail_angle_deg: float
    artifact: bool
    artifact_kind: str
    star_flux: float
    star_colour: float
    star_point: tuple[float, float]
    trail_band: int
    trail_angle_deg: float
    trail_point: tuple[float, float]
    trail_density: float
    surface_brightness: float
    flux: float
    ra: float
    dec: float
    offset_px: tuple[float, float]
    logit_noise: np.ndarray = field(repr=False)

    def truth_row(self) -> dict:
        """The truth-table columns (the structure without rendering nuisances)."""
        return {k: v for k, v in asdict(self).items() if k not in _INTERNAL}


def _disc_q(inclination_deg: float) -> float:
    c = np.cos(np.radians(inclination_deg))
    return float(np.sqrt(c * c + DISC_H_OVER_R**2 * (1.0 - c * c)))


def _spheroid_q(inclination_deg: float, q0: float) -> float:
    c = np.cos(np.radians(inclination_deg))
    return float(np.sqrt(c * c + q0 * q0 * (1.0 - c * c)))


def draw_structure(p: MorphologySimulate, rng: np.random.Generator) -> GalaxyStructure:
    """Draw one galaxy's true structure (see the module docstring for the distributions).

    Parameters
    ----------
    p : MorphologySimulate
        Uses ``half_light_arcsec``, ``surface_brightness``, ``merger_fraction`` and
        ``artifact_fraction`` (not the surveys).
    rng : numpy.random.Generator
        The galaxy's generator.

    Returns
    -------
    GalaxyStructure
    """
    u = rng.uniform
    kind = KINDS[int(rng.choice(len(KINDS), p=KIND_PROBABILITIES))]
    r_e = float(np.exp(u(*np.log(p.half_light_arcsec))))
    sb = float(np.exp(u(*np.log(p.surface_brightness))))
    incl = float(np.degrees(np.arccos(u(0.0, 1.0))))
    pa = float(u(0.0, 180.0))
    bar = bar_len = arm = pitch = clump = 0.0
    n_arms = 0
    if kind == "elliptical":
        bt, n, r_b, q0 = u(0.9, 1.0), u(3.0, 4.0), r_e * u(0.5, 0.85), u(0.45, 0.95)
    elif kind == "lenticular":
        bt, n, r_b, q0 = u(0.35, 0.7), u(2.0, 4.0), r_e * u(0.3, 0.5), u(0.6, 0.9)
        if rng.random() < 0.3:
            bar = u(0.2, 0.7)
    elif kind == "spiral":
        bt = 0.45 * u(0.0, 1.0) ** 1.3
        n = float(np.clip(1.5 + 4.0 * bt + rng.normal(0.0, 0.3), 1.5, 4.0))
        r_b, q0 = r_e * u(0.2, 0.4), u(0.6, 0.9)
        arm = u(0.35, 1.0)
        pitch = float(np.clip(rng.normal(30.0 - 35.0 * bt, 5.0), 8.0, 45.0))
        n_arms = int(rng.choice([1, 2, 3, 4, 5], p=[0.04, 0.6, 0.2, 0.1, 0.06]))
        if rng.random() < 0.45:
            bar = u(0.15, 1.0)
        if rng.random() < 0.45:
            clump = u(0.05, 0.2)
    else:  # irregular
        bt, n, r_b, q0 = u(0.0, 0.08), 1.5, r_e * 0.3, 0.8
        clump = u(0.3, 0.6)
    n = round(float(n), 1)  # GalSim caches Sérsic tables per n: keep them few
    if bar > 0:
        bar_len = r_e * u(0.8, 1.5)
    q_d, q_b = _disc_q(incl), _spheroid_q(incl, q0)
    merger = bool(rng.random() < p.merger_fraction)
    ratio = u(0.25, 1.0) if merger else 0.0
    sep = min(r_e * u(1.0, 2.2), 10.0) if merger else 0.0
    tidal = u(0.1, 0.35) if merger else 0.0
    artifact = bool(rng.random() < p.artifact_fraction)
    a_kind = ("star" if rng.random() < 0.6 else "trail") if artifact else "none"
    n_ans = len(DECALS.answer_names)
    return GalaxyStructure(
        kind=kind, bulge_to_total=float(bt), sersic_n=n, half_light_arcsec=r_e,
        bulge_half_light_arcsec=float(r_b), inclination_deg=incl, position_angle_deg=pa,
        axis_ratio=float(bt * q_b + (1.0 - bt) * q_d), intrinsic_bulge_q=float(q0),
        bar_strength=float(bar), bar_length_arcsec=float(bar_len), bar_angle_deg=u(0, 180),
        arm_strength=float(arm), n_arms=n_arms, pitch_angle_deg=float(pitch),
        arm_phase=u(0.0, 2 * np.pi), clump_fraction=float(clump),
        n_clumps=int(rng.integers(15, 50)), merger=merger, companion_flux_ratio=float(ratio),
        companion_separation_arcsec=float(sep), companion_angle_deg=u(0.0, 360.0),
        companion_bulge_to_total=u(0.1, 0.8), companion_inclination_deg=float(
            np.degrees(np.arccos(u(0.0, 1.0)))), companion_position_angle_deg=u(0.0, 180.0),
        tidal_shear=float(tidal), tail_angle_deg=u(-30.0, 30.0), artifact=artifact,
        artifact_kind=a_kind, star_flux=u(20.0, 80.0), star_colour=u(-1.0, 2.0),
        star_point=(u(-1.0, 1.0), u(-1.0, 1.0)), trail_band=int(rng.integers(-1, 3)),
        trail_angle_deg=u(0.0, 180.0), trail_point=(u(-3.0, 3.0), u(-3.0, 3.0)),
        trail_density=u(0.5, 2.0), surface_brightness=sb,
        flux=float(2.0 * np.pi * r_e * r_e * sb), ra=u(0.0, 360.0),
        dec=float(np.degrees(np.arcsin(u(-0.2, 0.9)))), offset_px=(u(-0.5, 0.5), u(-0.5, 0.5)),
        logit_noise=rng.normal(0.0, LOGIT_NOISE, n_ans),
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Answer probabilities, visibility, votes
# ----------------------------------------------------------------------------------------------


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max())
    return z / z.sum()


def _ordinal(latent: float, cuts: Sequence[float]) -> np.ndarray:
    """Ordered-logit probabilities of len(cuts) + 1 categories, lowest latent first."""
    cum = 1.0 / (1.0 + np.exp(-(np.asarray(cuts, np.float64) - latent)))
    return np.diff(np.concatenate([[0.0], cum, [1.0]]))


def true_probabilities(s: GalaxyStructure) -> np.ndarray:
    """The DECaLS answer probabilities of a galaxy's true structure (noise-free images).

    Parameters
    ----------
    s : GalaxyStructure

    Returns
    -------
    numpy.ndarray, shape (A,), float64
        In ``DECALS.answer_names`` order; each question's answers sum to 1. The mapping
        is listed in the module docstring.
    """
    e = s.logit_noise
    first = np.searchsorted(DECALS.question_index, np.arange(len(DECALS.questions)))
    start = dict(zip(DECALS.question_names, first, strict=True))

    def soft(q: str, logits) -> np.ndarray:
        k = start[q]
        return _softmax(np.asarray(logits, np.float64) + e[k : k + len(logits)])

    def ordinal(q: str, latent: float, cuts) -> np.ndarray:
        return _ordinal(latent + e[start[q]], cuts)

    bt, arm, bar, clump = s.bulge_to_total, s.arm_strength, s.bar_strength, s.clump_fraction
    edge_disc = (1.0 - bt) * (s.inclination_deg > 70.0)
    feat = 4.0 * (1 - bt) - 2.0 + 3.0 * arm + 2.5 * bar + 3.0 * clump + 1.5 * edge_disc
    feat += 1.0 * s.merger
    art = {"star": 4.5, "trail": 1.0}.get(s.artifact_kind, -4.5)
    m = s.n_arms
    if s.merger:
        merging = [-1.0, 0.5, 1.0 + 2.0 * s.tidal_shear, 1.0 + 3.0 * s.companion_flux_ratio]
    else:
        merging = [3.0, 0.2 + 2.0 * clump, -2.0, -3.5]
    out = {
        "smooth-or-featured": soft("smooth-or-featured", [-feat / 2, feat / 2, art]),
        "disk-edge-on": soft("disk-edge-on", [(s.inclination_deg - 74.0) / 4.0, 0.0]),
        "has-spiral-arms": soft("has-spiral-arms", [7.0 * (arm - 0.3) + clump, 0.0]),
        "bar": ordinal("bar", 6.0 * bar, [1.5, 3.5])[::-1],
        "bulge-size": ordinal("bulge-size", 10.0 * bt, [0.4, 1.5, 3.5, 6.0])[::-1],
        "how-rounded": ordinal("how-rounded", 10.0 * (1.0 - s.axis_ratio), [2.5, 6.0]),
        "edge-on-bulge": soft(
            "edge-on-bulge",
            [
                -0.9 * (s.sersic_n - 2.5) - 1.0 + 3.0 * bar,
                2.5 - 14.0 * bt,
                0.9 * (s.sersic_n - 2.5) + 0.5,
            ],
        ),
        "spiral-winding": ordinal(
            "spiral-winding", s.pitch_angle_deg / 4.0, [15.0 / 4.0, 25.0 / 4.0]
        ),
        "spiral-arm-count": soft(
            "spiral-arm-count",
            [2.5 - 1.5 * abs(k - m) for k in (1, 2, 3, 4, 5)] + [1.5 - 3.0 * arm],
        ),
        "merging": soft("merging", merging),
    }
    return np.concatenate([out[q] for q in DECALS.question_names])


def visibility(
    half_light_arcsec, surface_brightness, survey: SurveySpec
) -> tuple[np.ndarray, np.ndarray]:
    """How visible features are in a survey's images (1: as in a perfect image).

    Parameters
    ----------
    half_light_arcsec : float or numpy.ndarray, shape (N,)
        Galaxy half-light radius, arcsec.
    surface_brightness : float or numpy.ndarray, shape (N,)
        Mean surface brightness within it, u.
    survey : SurveySpec
        Uses ``psf_fwhm_arcsec``, ``sky_sigma`` and ``pixel_scale_arcsec``.

    Returns
    -------
    featured, detail : numpy.ndarray, shape (N,) (or 0-d), float64, in (0, 1]
        ``v_res v_snr`` (featured-or-disk, disturbances) and ``v_res^2 v_snr`` (arms, bars,
        arm counts); see the module docstring.
    """
    r = np.asarray(half_light_arcsec, np.float64)
    x = r / survey.psf_fwhm_arcsec
    v_res = x * x / (x * x + RES_HALF**2)
    snr = (
        np.asarray(surface_brightness, np.float64)
        * r
        / (survey.sky_sigma * survey.pixel_scale_arcsec)
    )
    v_snr = snr / (snr + SNR_HALF)
    return v_res * v_snr, v_res * v_res * v_snr


def apply_visibility(probabilities: np.ndarray, featured, detail) -> np.ndarray:
    """DECaLS probabilities as volunteers see them: hard-to-see features lost.

    Parameters
    ----------
    probabilities : numpy.ndarray, shape (N, A), float
        True probabilities (:func:`true_probabilities`), ``DECALS.answer_names`` order.
    featured, detail : numpy.ndarray, shape (N,), in (0, 1]
        Visibility factors (:func:`visibility`).

    Returns
    -------
    numpy.ndarray, shape (N, A), float64
        featured-or-disk and the merging disturbance answers times ``featured``; arms yes,
        bar strong/weak and the arm counts 1..more-than-4 times ``detail``; the lost
        probability moved to smooth, has-spiral-arms no, bar no, merging none and
        cant-tell. Each question still sums to 1.
    """
    p = np.array(probabilities, np.float64, copy=True, ndmin=2)
    col = {a: j for j, a in enumerate(DECALS.answer_names)}
    f = np.broadcast_to(np.asarray(featured, np.float64), p.shape[:1])
    d = np.broadcast_to(np.asarray(detail, np.float64), p.shape[:1])

    def move(src: list[str], dst: str, v: np.ndarray) -> None:
        idx = [col[a] for a in src]
        lost = p[:, idx] * (1.0 - v)[:, None]
        p[:, idx] -= lost
        p[:, col[dst]] += lost.sum(axis=1)

    move(["smooth-or-featured_featured-or-disk"], "smooth-or-featured_smooth", f)
    move(["merging_minor-disturbance", "merging_major-disturbance", "merging_merger"],
         "merging_none", f)  # fmt: skip
    move(["has-spiral-arms_yes"], "has-spiral-arms_no", d)
    move(["bar_strong", "bar_weak"], "bar_no", d)
    move([f"spiral-arm-count_{k}" for k in ("1", "2", "3", "4", "more-than-4")],
         "spiral-arm-count_cant-tell", d)  # fmt: skip
    return p


def gz2_probabilities(decals: np.ndarray, clump_fraction) -> np.ndarray:
    """GZ2 answer probabilities derived from DECaLS ones.

    Parameters
    ----------
    decals : numpy.ndarray, shape (N, A_decals), float
        DECaLS probabilities (``DECALS.answer_names`` order).
    clump_fraction : float or numpy.ndarray, shape (N,)
        The galaxies' clump fractions (irregular-looking galaxies are "odd").

    Returns
    -------
    numpy.ndarray, shape (N, A_gz2), float64
        ``GZ2.answer_names`` order; the mapping is in the module docstring.
    """
    decals = np.asarray(decals, np.float64).reshape(-1, len(DECALS.answer_names))
    d = {a: decals[:, j] for j, a in enumerate(DECALS.answer_names)}
    c = np.broadcast_to(np.asarray(clump_fraction, np.float64), decals.shape[:1])
    g = {src: d[dst] for src, dst in GZ2_TO_DECALS.items()}
    g["t03_bar_a06_bar"] = d["bar_strong"] + d["bar_weak"]
    g["t03_bar_a07_no_bar"] = d["bar_no"]
    t05 = "t05_bulge_prominence_"
    g[t05 + "a10_no_bulge"] = d["bulge-size_none"]
    g[t05 + "a11_just_noticeable"] = d["bulge-size_small"]
    g[t05 + "a12_obvious"] = d["bulge-size_moderate"] + 0.5 * d["bulge-size_large"]
    g[t05 + "a13_dominant"] = d["bulge-size_dominant"] + 0.5 * d["bulge-size_large"]
    disturbed = d["merging_minor-disturbance"] + d["merging_major-disturbance"]
    irregular = 0.7 * c
    base = 0.08  # rings, lenses, dust lanes, other
    odd = 1.0 - d["merging_none"] * (1.0 - irregular) * (1.0 - base)
    g["t06_odd_a14_yes"], g["t06_odd_a15_no"] = odd, 1.0 - odd
    const = np.ones_like(odd) * base
    feats = {"a19_ring": 0.3 * const, "a20_lens_or_arc": 0.2 * const,
             "a21_disturbed": disturbed, "a22_irregular": irregular, "a23_other": 0.3 * const,
             "a24_merger": d["merging_merger"], "a38_dust_lane": 0.2 * const}  # fmt: skip
    tot = sum(feats.values())
    for k, v in feats.items():
        g[f"t08_odd_feature_{k}"] = v / tot
    return np.stack([g[a] for a in GZ2.answer_names], axis=1)


def simulate_votes(
    probabilities: np.ndarray, n_volunteers, schema: Schema, rng: np.random.Generator
) -> np.ndarray:
    """Vote counts of volunteers walking a decision tree.

    Each question receives the votes of its parent answer (all volunteers for a question
    asked of everyone) and splits them multinomially with its answer probabilities: the
    same distribution as each volunteer walking the tree independently.

    Parameters
    ----------
    probabilities : numpy.ndarray, shape (N, A), float
        Answer probabilities in ``schema.answer_names`` order (renormalised per question;
        a question with all-zero probabilities is answered uniformly).
    n_volunteers : int or numpy.ndarray, shape (N,), int
        Volunteers per galaxy (votes on the first question).
    schema : Schema
        The tree (:data:`~astrobatch.studies.morphology.schema.DECALS` or ``GZ2``).
    rng : numpy.random.Generator

    Returns
    -------
    numpy.ndarray, shape (N, A), int64
        Counts; ``schema.total_votes(counts)[:, q]`` equals the count of question q's
        parent answer (or ``n_volunteers``).

    Raises
    ------
    ValueError
        Shapes that do not match the schema, or negative volunteers.
    """
    p = np.asarray(probabilities, np.float64)
    if p.ndim != 2 or p.shape[1] != len(schema.answer_names):
        raise ValueError(f"probabilities of shape {p.shape}: expected (N, "
                         f"{len(schema.answer_names)}) for schema {schema.name}")  # fmt: skip
    n = np.broadcast_to(np.asarray(n_volunteers, np.int64), p.shape[:1])
    if (n < 0).any():
        raise ValueError("negative numbers of volunteers")
    counts = np.zeros(p.shape, np.int64)
    for q, parent in enumerate(schema.parent_answer):
        cols = np.flatnonzero(schema.question_index == q)
        arriving = n if parent < 0 else counts[:, parent]
        pq = np.clip(p[:, cols], 0.0, None)
        tot = pq.sum(axis=1, keepdims=True)
        pq = np.where(tot > 0, pq / np.where(tot > 0, tot, 1.0), 1.0 / len(cols))
        counts[:, cols] = rng.multinomial(arriving, pq)
    return counts


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Optics:
    psf: galsim.GSObject
    kernel: np.ndarray  # PSF x pixel image, odd side, centred, sums to ~1


_OPTICS: dict[str, _Optics] = {}


def _optics(survey: SurveySpec) -> _Optics:
    key = survey.model_dump_json()
    if key not in _OPTICS:
        fwhm, ps = survey.psf_fwhm_arcsec, survey.pixel_scale_arcsec
        psf = galsim.Moffat(beta=MOFFAT_BETA, fwhm=fwhm, trunc=4.0 * fwhm, gsparams=_GSPARAMS)
        k = min(2 * int(np.ceil(2.5 * fwhm / ps)) + 1, 2 * survey.image_size - 1)
        kernel = psf.drawImage(nx=k, ny=k, scale=ps, method="auto").array.astype(np.float64)
        _OPTICS[key] = _Optics(psf, kernel)
    return _OPTICS[key]


def _arm_disc_image(s: GalaxyStructure, extent: float, spacing: float) -> np.ndarray:
    """Face-on exponential disc times the logarithmic-spiral arm pattern, (n, n) float64."""
    h = s.half_light_arcsec / 1.678
    n = 2 * int(extent / spacing) + 1
    x = (np.arange(n) - n // 2) * spacing
    xx, yy = np.meshgrid(x, x)
    r = np.hypot(xx, yy)
    theta = np.arctan2(yy, xx)
    pitch = np.radians(s.pitch_angle_deg)
    phase = s.n_arms * (theta - np.log(np.maximum(r, 1e-3 * h) / h) / np.tan(pitch)) + s.arm_phase
    arms = ((1.0 + np.cos(phase)) / 2.0) ** ARM_SHARPNESS / ARM_PROFILE_MEAN
    r_in = max(s.bulge_half_light_arcsec, 0.5 * s.bar_length_arcsec, 0.3 * h)
    amp = s.arm_strength * (1.0 - np.exp(-((r / r_in) ** 2)))
    return np.exp(-r / h) * ((1.0 - amp) + amp * arms)


def _shear_matrix(g: float, beta_deg: float) -> np.ndarray:
    b = np.radians(2.0 * beta_deg)
    g1, g2 = g * np.cos(b), g * np.sin(b)
    return np.array([[1 + g1, g2], [g2, 1 - g1]]) / np.sqrt(1.0 - g * g)


def _rotation(deg: float) -> np.ndarray:
    a = np.radians(deg)
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


def _components(
    s: GalaxyStructure,
    survey: SurveySpec,
    deviate: galsim.BaseDeviate,
    rng: np.random.Generator,
    flux: float,
) -> tuple[list, list, np.ndarray]:
    """GalSim objects (red: bulge and bar; disc) and clump positions (K, 2), arcsec."""
    deg = galsim.degrees
    bt = s.bulge_to_total
    red, disc = [], []
    if bt > 0.005:
        q_b = _spheroid_q(s.inclination_deg, s.intrinsic_bulge_q)
        bulge = galsim.Sersic(s.sersic_n, half_light_radius=s.bulge_half_light_arcsec,
                              flux=bt * flux, trunc=SERSIC_TRUNC * s.bulge_half_light_arcsec,
                              gsparams=_GSPARAMS)  # fmt: skip
        red.append(bulge.shear(q=q_b, beta=0 * deg).rotate(s.position_angle_deg * deg))
    f_disc = (1.0 - bt) * flux
    f_bar = BAR_MAX_FLUX * s.bar_strength * f_disc
    f_clump = s.clump_fraction * f_disc
    f_smooth = f_disc - f_bar - f_clump
    incl = min(s.inclination_deg, 89.5)
    q_d = _disc_q(incl)
    jac = _rotation(s.position_angle_deg) @ np.diag([1.0, q_d])

    def to_sky(obj):  # face-on disc-plane object -> projected, major axis kept
        return (obj.shear(q=q_d, beta=0 * deg).dilate(np.sqrt(q_d))
                .rotate(s.position_angle_deg * deg))  # fmt: skip

    face_on = None
    if f_disc <= 0:
        pass
    elif s.arm_strength > 0 and s.n_arms > 0 and incl < ARMS_MAX_INCLINATION_DEG:
        ps, size = survey.pixel_scale_arcsec, survey.image_size
        h = s.half_light_arcsec / 1.678
        extent = min(6.5 * h, 0.75 * size * ps)
        spacing = ps / ARM_GRID_SAMPLING
        face_on_grid = _arm_disc_image(s, extent, spacing)
        face_on = galsim.InterpolatedImage(
            galsim.Image(face_on_grid, scale=spacing),
            x_interpolant="quintic", pad_factor=ARM_PAD_FACTOR, calculate_stepk=False,
            calculate_maxk=False, flux=1.0, gsparams=_GSPARAMS,
        )  # fmt: skip
        disc.append(to_sky(face_on.withFlux(f_smooth)))
    else:
        disc.append(galsim.InclinedExponential(
            incl * deg, half_light_radius=s.half_light_arcsec, scale_h_over_r=DISC_H_OVER_R,
            flux=f_smooth, gsparams=_GSPARAMS).rotate(s.position_angle_deg * deg))  # fmt: skip
    if f_bar > 0:
        hlr = 0.25 * s.bar_length_arcsec * np.sqrt(BAR_Q)
        bar = galsim.Sersic(BAR_N, half_light_radius=hlr, flux=f_bar, gsparams=_GSPARAMS)
        red.append(to_sky(bar.shear(q=BAR_Q, beta=s.bar_angle_deg * deg)))
    knots = np.zeros((0, 2))
    if f_clump > 0 and face_on is not None:  # knots on the arms: drawn from the arm grid
        grid = face_on_grid / face_on_grid.sum()
        k = rng.choice(grid.size, size=s.n_clumps, p=grid.ravel())
        n = grid.shape[0]
        xy = np.stack([k % n - n // 2, k // n - n // 2], axis=1) * spacing
        knots = (xy + rng.uniform(-0.5, 0.5, xy.shape) * spacing) @ jac.T
    elif f_clump > 0:
        rk = galsim.RandomKnots(s.n_clumps, half_light_radius=s.half_light_arcsec,
                                flux=f_clump, rng=deviate)  # fmt: skip
        knots = np.asarray(rk.points, np.float64) @ jac.T
    return red, disc, knots


def _deposit(image: np.ndarray, xy_arcsec: np.ndarray, flux, ps: float, offset) -> None:
    """Add point fluxes at sky positions (arcsec from the centre) bilinearly, in place."""
    size = image.shape[0]
    x = (size - 1) / 2.0 + xy_arcsec[:, 0] / ps + offset[0]
    y = (size - 1) / 2.0 + xy_arcsec[:, 1] / ps + offset[1]
    flux = np.broadcast_to(np.asarray(flux, np.float64), x.shape)
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    fx, fy = x - x0, y - y0
    for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                      (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):  # fmt: skip
        xi, yi = x0 + dx, y0 + dy
        ok = (xi >= 0) & (xi < size) & (yi >= 0) & (yi < size)
        np.add.at(image, (yi[ok], xi[ok]), (flux * w)[ok])


def render_galaxy(s: GalaxyStructure, survey: SurveySpec, rng: np.random.Generator) -> np.ndarray:
    """Draw a galaxy as a survey sees it (see the module docstring).

    Parameters
    ----------
    s : GalaxyStructure
    survey : SurveySpec
    rng : numpy.random.Generator
        The galaxy's generator (after :func:`draw_structure`): the GalSim deviate seed and
        the sky noise.

    Returns
    -------
    numpy.ndarray, shape (len(bands), S, S), float32
        Surface brightness in u per band, bands in ``survey.bands`` order, row 0 at the
        bottom (y up), sky noise included.
    """
    from scipy.signal import fftconvolve

    deg = galsim.degrees
    ps, size = survey.pixel_scale_arcsec, survey.image_size
    w = np.asarray(survey.band_bulge_weight, np.float64)
    optics = _optics(survey)
    deviate = galsim.BaseDeviate(int(rng.integers(1, 2**31 - 1)))
    flux = s.flux * (STAR_GALAXY_DIM if s.artifact_kind == "star" else 1.0)
    red, disc, knots = _components(s, survey, deviate, rng, flux)
    knot_flux = s.clump_fraction * (1.0 - s.bulge_to_total) * flux / max(len(knots), 1)
    if s.merger:
        tide = _shear_matrix(s.tidal_shear, s.companion_angle_deg)
        red = [o.shear(g=s.tidal_shear, beta=s.companion_angle_deg * deg) for o in red]
        disc = [o.shear(g=s.tidal_shear, beta=s.companion_angle_deg * deg) for o in disc]
        knots = knots @ tide.T
        a = np.radians(s.companion_angle_deg)
        shift = s.companion_separation_arcsec * np.array([np.cos(a), np.sin(a)])
        comp = GalaxyStructure(**{
            **asdict(s), "bulge_to_total": s.companion_bulge_to_total,
            "half_light_arcsec": s.half_light_arcsec * np.sqrt(s.companion_flux_ratio),
            "bulge_half_light_arcsec": 0.3 * s.half_light_arcsec * np.sqrt(
                s.companion_flux_ratio), "sersic_n": 3.0, "intrinsic_bulge_q": 0.8,
            "inclination_deg": s.companion_inclination_deg,
            "position_angle_deg": s.companion_position_angle_deg, "bar_strength": 0.0,
            "arm_strength": 0.0, "clump_fraction": 0.0,
        })  # fmt: skip
        c_red, c_disc, _ = _components(comp, survey, deviate, rng, flux * s.companion_flux_ratio)
        back = s.companion_angle_deg + 180.0
        for objs, out in ((c_red, red), (c_disc, disc)):
            out += [o.shear(g=s.tidal_shear, beta=back * deg).shift(*shift) for o in objs]
        tail_dir = np.radians(back + s.tail_angle_deg)
        tail = galsim.Gaussian(
            sigma=0.8 * s.half_light_arcsec, flux=TAIL_FLUX * flux, gsparams=_GSPARAMS
        ).shear(q=TAIL_Q, beta=np.degrees(tail_dir) * deg)
        d = 1.3 * s.half_light_arcsec
        disc.append(tail.shift(d * np.cos(tail_dir), d * np.sin(tail_dir)))  # fmt: skip

    def draw(objs) -> np.ndarray:
        if not objs:
            return np.zeros((size, size))
        obj = galsim.Convolve(objs[0] if len(objs) == 1 else galsim.Add(objs), optics.psf)
        img = obj.drawImage(nx=size, ny=size, scale=ps, offset=s.offset_px, method="auto")
        return img.array.astype(np.float64) / (ps * ps)

    r_img, d_img = draw(red), draw(disc)
    planes = w[:, None, None] * r_img[None] + d_img[None]
    points = np.zeros((len(w), size, size))
    if len(knots):
        blob = np.zeros((size, size))
        _deposit(blob, knots, knot_flux, ps, s.offset_px)
        points += blob[None] * (w**CLUMP_COLOUR)[:, None, None]
    if s.artifact_kind == "star":
        star = np.zeros((size, size))
        _deposit(star, np.array([s.star_point]), s.star_flux, ps, s.offset_px)
        points += star[None] * (w**s.star_colour)[:, None, None]
    elif s.artifact_kind == "trail":
        half = size * ps  # longer than the cutout's diagonal / 2
        t = np.arange(-half, half, 0.5 * ps)
        a = np.radians(s.trail_angle_deg)
        xy = np.asarray(s.trail_point) + t[:, None] * np.array([np.cos(a), np.sin(a)])
        line = np.zeros((size, size))
        _deposit(line, xy, s.trail_density * 0.5 * ps, ps, (0.0, 0.0))
        bands = range(len(w)) if s.trail_band < 0 else [s.trail_band % len(w)]
        for b in bands:
            points[b] += line
    if points.any():
        for b in range(len(w)):
            planes[b] += fftconvolve(points[b], optics.kernel, mode="same") / (ps * ps)
    planes += rng.normal(0.0, survey.sky_sigma, planes.shape)
    return planes.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Image files
# ----------------------------------------------------------------------------------------------


def rgb_planes(planes: np.ndarray, bands: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Planes in RGB order: reddest (last) band first; fewer than 3 bands repeated.

    Parameters
    ----------
    planes : numpy.ndarray, shape (B, S, S)
        Bands in ``bands`` order (bluest first), B = 1..3.
    bands : sequence of str

    Returns
    -------
    cube : numpy.ndarray, shape (3, S, S), same dtype
    names : list of str
        The band of each plane.
    """
    idx = [0, min(1, len(bands) - 1), len(bands) - 1][::-1] if len(bands) < 3 else [2, 1, 0]
    return planes[idx], [bands[i] for i in idx]


def asinh_rgb(cube: np.ndarray, survey: SurveySpec) -> np.ndarray:
    """The survey's fixed Lupton et al. (2004) asinh stretch to 8-bit RGB.

    Parameters
    ----------
    cube : numpy.ndarray, shape (3, S, S), float
        R, G, B planes (:func:`rgb_planes`), surface brightness in u, row 0 at the bottom.
    survey : SurveySpec
        Uses ``sky_sigma`` (softening ``β = 2 sky_sigma``), ``rgb_saturation`` and
        ``band_bulge_weight`` (channel gains ``w_b^-1/2`` over their geometric mean).

    Returns
    -------
    numpy.ndarray, shape (S, S, 3), uint8
        Row 0 at the top (north up in an image viewer).
    """
    w = np.asarray(survey.band_bulge_weight, np.float64)
    gain = w**RGB_GAIN_POWER / np.exp(np.mean(np.log(w**RGB_GAIN_POWER)))
    x = np.asarray(cube, np.float64) * rgb_planes(gain[:, None, None], survey.bands)[0]
    beta = RGB_SOFTENING * survey.sky_sigma
    q = np.arcsinh(survey.rgb_saturation / beta)
    i = x.mean(axis=0)
    scale = np.where(i > 0, np.arcsinh(np.maximum(i, 0.0) / beta) / q / np.where(i > 0, i, 1.0),
                     0.0)  # fmt: skip
    rgb = np.clip(x * scale[None], 0.0, None)
    peak = rgb.max(axis=0)
    rgb /= np.maximum(peak, 1.0)[None]  # saturate keeping the colour
    return np.round(rgb * 255.0).astype(np.uint8).transpose(1, 2, 0)[::-1].copy()


def encode_image(planes: np.ndarray, survey: SurveySpec, galaxy_id: str) -> bytes:
    """The image file's bytes: JPEG (quality 90), PNG or FITS (see the module docstring).

    Parameters
    ----------
    planes : numpy.ndarray, shape (B, S, S), float32
        :func:`render_galaxy` output.
    survey : SurveySpec
    galaxy_id : str
        Written to the FITS header (``OBJECT``).

    Returns
    -------
    bytes
    """
    cube, names = rgb_planes(planes, survey.bands)
    buf = io.BytesIO()
    if survey.image_format == "fits":
        from astropy.io import fits

        hdu = fits.PrimaryHDU(np.ascontiguousarray(cube, np.float32))
        h = hdu.header
        h["BUNIT"] = ("u", "surface brightness, reference unit u / arcsec2")
        h["PIXSCALE"] = (survey.pixel_scale_arcsec, "arcsec / pixel")
        h["BANDS"] = (",".join(names), "band of each plane")
        h["SURVEY"] = survey.name
        h["PSFFWHM"] = (survey.psf_fwhm_arcsec, "Moffat PSF FWHM, arcsec")
        h["SKYSIG"] = (survey.sky_sigma, "sky noise per pixel, u")
        h["OBJECT"] = galaxy_id
        hdu.writeto(buf)
    else:
        from PIL import Image

        img = Image.fromarray(asinh_rgb(cube, survey), mode="RGB")
        if survey.image_format == "jpeg":
            img.save(buf, format="JPEG", quality=90)
        else:
            img.save(buf, format="PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------

_SUFFIX = {"jpeg": "jpg", "png": "png", "fits": "fits"}


def catalogue_name(survey: SurveySpec) -> str:
    """``gz2_catalogue.<csv|fits>`` or ``gz_decals_catalogue.<csv|fits>``."""
    stem = "gz2_catalogue" if survey.layout == "gz2" else "gz_decals_catalogue"
    return f"{stem}.{survey.catalogue_format}"


def _galaxy_id(survey: SurveySpec, s_index: int, i: int) -> str:
    if survey.layout == "gz2":
        return str(DR7_BASE + s_index * 10_000_000 + i)
    return f"{survey.name}_{i:06d}"


def _simulate_chunk(args: tuple) -> list[tuple]:
    """Render and vote a block of one survey's galaxies (a worker task)."""
    p, s_index, indices = args
    survey = p.surveys[s_index]
    schema = GZ2 if survey.layout == "gz2" else DECALS
    out = []
    for i in indices:
        rng = np.random.default_rng((p.seed, s_index, i))
        st = draw_structure(p, rng)
        planes = render_galaxy(st, survey, rng)
        gid = _galaxy_id(survey, s_index, i)
        data = encode_image(planes, survey, gid)
        p_true = true_probabilities(st)
        v_f, v_d = visibility(st.half_light_arcsec, st.surface_brightness, survey)
        p_seen = apply_visibility(p_true[None], v_f, v_d)
        if survey.layout == "gz2":
            p_seen = gz2_probabilities(p_seen, st.clump_fraction)
        n_vol = int(rng.poisson(survey.volunteers_first_question))
        counts = simulate_votes(p_seen, n_vol, schema, rng)[0]
        truth = {"id": gid, "survey": survey.name, **st.truth_row()}
        truth.update(visibility_featured=float(v_f), visibility_detail=float(v_d),
                     n_volunteers=n_vol)  # fmt: skip
        truth.update({f"p_{a}": float(v) for a, v in zip(DECALS.answer_names, p_true, strict=True)})
        out.append((gid, data, truth, counts))
    return out


def _catalogue(survey: SurveySpec, rows: list[tuple]) -> pd.DataFrame:
    """The survey's Galaxy Zoo catalogue in its layout (one row per galaxy)."""
    schema = GZ2 if survey.layout == "gz2" else DECALS
    counts = np.stack([r[3] for r in rows]).astype(np.int64)
    frac = schema.fractions(counts)
    totals = schema.total_votes(counts)
    ext = _SUFFIX[survey.image_format]
    ids = [r[0] for r in rows]
    cols: dict[str, object] = {}
    if survey.layout == "gz2":
        cols["dr7objid"] = np.array([int(i) for i in ids], np.int64)
    else:
        cols["iauname"] = ids
    cols["file_loc"] = [f"images/{i}.{ext}" for i in ids]
    cols["survey"] = [survey.name] * len(ids)
    cols["ra"] = np.array([r[2]["ra"] for r in rows])
    cols["dec"] = np.array([r[2]["dec"] for r in rows])
    if survey.layout == "gz2":
        cols["total_classifications"] = totals[:, 0]
        cols["total_votes"] = counts.sum(axis=1)
        for j, a in enumerate(schema.answer_names):
            cols[f"{a}_count"] = counts[:, j]
            cols[f"{a}_fraction"] = frac[:, j]
            cols[f"{a}_weighted_fraction"] = frac[:, j]
            cols[f"{a}_debiased"] = frac[:, j]
    else:
        for k, q in enumerate(schema.questions):
            js = np.flatnonzero(schema.question_index == k)
            for j in js:
                cols[schema.answer_names[j]] = counts[:, j]
            cols[f"{q.name}_total-votes"] = totals[:, k]
            for j in js:
                cols[f"{schema.answer_names[j]}_fraction"] = frac[:, j]
    return pd.DataFrame(cols)


def _write_table(df: pd.DataFrame, path: Path) -> None:
    if path.suffix == ".fits":
        from astropy.table import Table

        Table.from_pandas(df).write(path, format="fits")
    else:
        df.to_csv(path, index=False)


def _check(params: MorphologySimulate) -> None:
    if params.seed < 0:
        raise InputError(f"expected a non-negative seed, got {params.seed}", key="seed")
    names = [s.name for s in params.surveys]
    for k, s in enumerate(params.surveys):
        key = f"surveys[{k}]"
        if len(s.band_bulge_weight) != len(s.bands):
            raise InputError(f"{len(s.band_bulge_weight)} band_bulge_weight values for "
                             f"{len(s.bands)} bands (expected one per band)",
                             key=f"{key}.band_bulge_weight")  # fmt: skip
        if min(s.band_bulge_weight) <= 0:
            raise InputError("band_bulge_weight must be > 0", key=f"{key}.band_bulge_weight")
        if not s.name or "/" in s.name or s.name.startswith(".") or names.count(s.name) > 1:
            raise InputError(f"survey name {s.name!r}: expected a unique folder name",
                             key=f"{key}.name")  # fmt: skip


def simulate_to_folder(
    params: MorphologySimulate,
    out_dir: str | Path,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Simulate every survey's images, Galaxy Zoo catalogue and the truth table.

    Parameters
    ----------
    params : MorphologySimulate
    out_dir : str or pathlib.Path
        Output folder (replaced as a whole, atomically, when the run succeeds):
        ``<survey>/images/<id>.<jpg|png|fits>``, ``<survey>/<catalogue_name(survey)>`` and
        ``truth.parquet`` (one row per galaxy: ``id``, ``survey``, the structure of
        :class:`GalaxyStructure`, ``visibility_featured``, ``visibility_detail``,
        ``n_volunteers`` and the true probabilities ``p_<question>_<answer>`` of every
        DECaLS answer).
    progress : callable, optional
        ``progress(done, total)`` in galaxies, after each block (the project's progress
        callback, :func:`astrobatch.progress.progress`).

    Returns
    -------
    dict
        ``out_dir``, ``n_galaxies`` (total), ``surveys`` (name -> ``n_galaxies``,
        ``layout``, ``mean_votes_first_question``, ``mean_votes_per_question``: question
        -> mean total votes), ``seconds``.

    Raises
    ------
    InputError
        A negative seed, band weights that do not match the bands, duplicate survey names.
    """
    t0 = time.perf_counter()
    _check(params)
    out_dir = Path(out_dir)
    tasks = [
        (params, k, list(range(a, min(a + CHUNK, s.n_galaxies))))
        for k, s in enumerate(params.surveys)
        for a in range(0, s.n_galaxies, CHUNK)
    ]
    total = sum(s.n_galaxies for s in params.surveys)
    per_survey: list[list[tuple]] = [[] for _ in params.surveys]
    with atomic_dir(out_dir) as tmp:
        for s in params.surveys:
            (tmp / s.name / "images").mkdir(parents=True)
        done = 0

        def consume(task: tuple, rows: list[tuple]) -> None:
            nonlocal done
            survey = params.surveys[task[1]]
            ext = _SUFFIX[survey.image_format]
            for gid, data, truth, counts in rows:
                (tmp / survey.name / "images" / f"{gid}.{ext}").write_bytes(data)
                per_survey[task[1]].append((gid, None, truth, counts))
            done += len(rows)
            if progress is not None:
                progress(done, total)

        if params.n_workers > 1:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(params.n_workers) as pool:
                for task, rows in zip(tasks, pool.imap(_simulate_chunk, tasks), strict=True):
                    consume(task, rows)
        else:
            for task in tasks:
                consume(task, _simulate_chunk(task))
        summary_surveys = {}
        for k, survey in enumerate(params.surveys):
            rows = per_survey[k]
            _write_table(_catalogue(survey, rows), tmp / survey.name / catalogue_name(survey))
            schema = GZ2 if survey.layout == "gz2" else DECALS
            totals = schema.total_votes(np.stack([r[3] for r in rows]))
            summary_surveys[survey.name] = {
                "n_galaxies": len(rows),
                "layout": survey.layout,
                "mean_votes_first_question": round(float(totals[:, 0].mean()), 3),
                "mean_votes_per_question": {
                    q: round(float(v), 3)
                    for q, v in zip(schema.question_names, totals.mean(axis=0), strict=True)
                },
            }
        truth = pd.DataFrame([r[2] for rows in per_survey for r in rows])
        truth.to_parquet(tmp / "truth.parquet", index=False)
    return {
        "out_dir": str(out_dir),
        "n_galaxies": total,
        "surveys": summary_surveys,
        "seconds": round(time.perf_counter() - t0, 2),
    }
