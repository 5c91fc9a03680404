"""Aperture photometry of cluster cutouts, and the Vega zero points of the five bands.

The LEGUS recipe (Adamo et al. 2017, ApJ 841, 131): a circular aperture of
4 px radius at the cluster, the local sky from an annulus (LEGUS: 7 px, 1 px
wide; here 7-9 px by default), magnitudes in the Vega system. Every cutout has
its cluster at the same pixel ``(H // 2, W // 2)``, so the aperture weights
are built once with photutils (exact overlap area for the aperture, pixel
centres in the annulus: the conventions of :class:`photutils.aperture.ApertureStats`)
and applied to all cutouts and channels at once with NumPy. That gives the
same numbers as calling ``ApertureStats`` per image (checked in the tests)
about 30 times faster: two ``ApertureStats`` calls cost 1.2 ms per image and
channel (10 s for 1600 five-band 112 x 112 cutouts on one CPU core), the
vectorised version 0.3 s including the HDF5 reads.

Zero points: the magnitude of a source giving 1 electron per second
(infinite aperture), ``m = ZP - 2.5 log10(counts / s)``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from astrobatch.errors import InputError
from astrobatch.studies.cluster_age.params import CLUSTER_AGE_BANDS

#: Vega zero points (mag for 1 e-/s, infinite aperture) of the five channels, in the order of
#: :data:`~astrobatch.io.cutouts.PHANGS_BANDS`. WFC3/UVIS F275W and F336W: STScI WFC3/UVIS
#: zero-point table of the 2009 SMOV calibration (Kalirai et al. 2009, WFC3 ISR 2009-31);
#: ACS/WFC F435W (the F438W channel of NGC 628), F555W, F814W: Sirianni et al. (2005, PASP
#: 117, 1049, table 10). These are the instruments of the LEGUS NGC 628 catalogue. The values
#: agree within 0.035 mag with synthetic photometry of sedpy's Vega spectrum through sedpy's
#: total-throughput curves and the 45,239 cm^2 HST collecting area (a test checks it).
ZEROPOINTS_VEGA: np.ndarray = np.array([22.632, 23.484, 25.779, 25.724, 25.501])
ZEROPOINTS_VEGA.flags.writeable = False

#: LEGUS aperture radius and a default sky annulus, pixels.
APERTURE_RADIUS_PX = 4.0
SKY_ANNULUS_PX = (7.0, 9.0)


def zeropoints(bands=CLUSTER_AGE_BANDS) -> np.ndarray:
    """Vega zero points of the named bands.

    Parameters
    ----------
    bands : sequence of str
        Channel names among :data:`~astrobatch.studies.cluster_age.params.CLUSTER_AGE_BANDS`.

    Returns
    -------
    numpy.ndarray, shape (len(bands),), float64
        mag for 1 e-/s.

    Raises
    ------
    InputError
        If a band is unknown.
    """
    out = []
    for b in bands:
        if b not in CLUSTER_AGE_BANDS:
            raise InputError(f"expected one of {CLUSTER_AGE_BANDS}, got {b!r}", key="bands")
        out.append(ZEROPOINTS_VEGA[CLUSTER_AGE_BANDS.index(b)])
    return np.array(out, dtype=np.float64)


def counts_to_mag(counts, zeropoint) -> np.ndarray:
    """Vega magnitude of a count rate: ``ZP - 2.5 log10(counts)``, NaN where counts <= 0.

    Parameters
    ----------
    counts : array_like, float
        Count rate, e-/s.
    zeropoint : array_like, float
        Zero point(s), mag, broadcast against ``counts``.

    Returns
    -------
    numpy.ndarray, float64
    """
    c = np.asarray(counts, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(
            c > 0, np.asarray(zeropoint) - 2.5 * np.log10(np.where(c > 0, c, 1)), np.nan
        )


def mag_to_counts(mag, zeropoint) -> np.ndarray:
    """Count rate of a Vega magnitude: ``10 ** (-0.4 (m - ZP))`` (e-/s); NaN stays NaN.

    Parameters
    ----------
    mag : array_like, float
        Vega magnitudes.
    zeropoint : array_like, float
        Zero point(s), mag, broadcast against ``mag``.

    Returns
    -------
    numpy.ndarray, float64
    """
    return 10.0 ** (-0.4 * (np.asarray(mag, dtype=np.float64) - np.asarray(zeropoint)))


@lru_cache(maxsize=32)
def aperture_weights(
    size: int, radius: float, annulus: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Aperture and annulus weights for a ``size x size`` cutout centred at ``(size // 2,) * 2``.

    Built with photutils: :class:`~photutils.aperture.CircularAperture` with
    the exact overlap area, :class:`~photutils.aperture.CircularAnnulus` with
    pixel centres (``method="center"``), as ``ApertureStats`` uses for sums
    and medians respectively.

    Parameters
    ----------
    size : int
        Cutout side H = W, pixels.
    radius : float
        Aperture radius, pixels (> 0).
    annulus : tuple of float
        Inner and outer sky radii, pixels (0 < inner < outer).

    Returns
    -------
    aperture : numpy.ndarray, shape (size, size), float64, read-only
        Fraction of each pixel inside the aperture (sums to pi r^2 when the
        aperture fits).
    sky : numpy.ndarray, shape (size, size), bool, read-only
        Pixels whose centre lies in the annulus.

    Raises
    ------
    InputError
        If the radii are not positive and increasing or the annulus has no
        pixel inside the cutout.
    """
    from photutils.aperture import CircularAnnulus, CircularAperture

    r_in, r_out = float(annulus[0]), float(annulus[1])
    if not (radius > 0 and 0 < r_in < r_out):
        raise InputError(
            f"expected radius > 0 and 0 < inner < outer, got {radius}, ({r_in}, {r_out})",
            key="sky_annulus_px",
        )
    c = float(size // 2)
    ap = CircularAperture((c, c), r=float(radius)).to_mask(method="exact").to_image((size, size))
    an = CircularAnnulus((c, c), r_in=r_in, r_out=r_out).to_mask(method="center")
    sky = an.to_image((size, size)) > 0
    if ap is None or not sky.any():
        raise InputError(
            f"expected the aperture and the sky annulus to overlap a {size} x {size} cutout",
            key="sky_annulus_px",
        )
    ap = np.asarray(ap, dtype=np.float64)
    ap.flags.writeable = False
    sky.flags.writeable = False
    return ap, sky


def aperture_fluxes(
    images,
    radius: float = APERTURE_RADIUS_PX,
    annulus: tuple[float, float] = SKY_ANNULUS_PX,
) -> tuple[np.ndarray, np.ndarray]:
    """Sky-subtracted aperture sums at the cutout centre.

    Parameters
    ----------
    images : array_like, shape (N, C, H, W), float
        Cutouts (count rates per pixel), H == W, cluster at ``(H // 2, W // 2)``.
    radius : float
        Aperture radius, pixels.
    annulus : tuple of float
        Sky annulus radii, pixels.

    Returns
    -------
    net : numpy.ndarray, shape (N, C), float64
        Aperture sum minus the sky median times the aperture area.
    sky : numpy.ndarray, shape (N, C), float64
        Median of the annulus pixels (per pixel).

    Raises
    ------
    InputError
        If ``images`` is not 4-D with square cutouts.
    """
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[2] != x.shape[3]:
        raise InputError(f"expected shape (N, C, H, W) with H == W, got {x.shape}", key="images")
    ap, sky_mask = aperture_weights(int(x.shape[2]), float(radius), tuple(map(float, annulus)))
    sky = np.median(x[:, :, sky_mask], axis=-1).astype(np.float64)
    total = np.einsum("ncij,ij->nc", x.astype(np.float64, copy=False), ap)
    return total - sky * ap.sum(), sky


def aperture_magnitudes(
    images,
    zeropoints=ZEROPOINTS_VEGA,
    radius: float = APERTURE_RADIUS_PX,
    annulus: tuple[float, float] = SKY_ANNULUS_PX,
) -> np.ndarray:
    """Vega aperture magnitudes at the cutout centre (no aperture correction).

    ``m = ZP - 2.5 log10(F_ap - A_ap median(sky))``: ``F_ap`` is the sum over
    a circular aperture of radius ``radius`` with exact pixel overlap
    fractions, ``A_ap = pi r^2`` its area and the sky the median of the pixels
    whose centres lie in the annulus (photutils conventions, see
    :func:`aperture_weights`); centred at pixel ``(H // 2, W // 2)``.

    Parameters
    ----------
    images : array_like, shape (N, C, H, W), float32
        Cutouts in e-/s per pixel (the raw-file units).
    zeropoints : array_like, shape (C,), float
        Vega zero points (mag for 1 e-/s), default :data:`ZEROPOINTS_VEGA`
        (five bands).
    radius : float
        Aperture radius, pixels (LEGUS: 4).
    annulus : tuple of float
        Sky annulus inner and outer radii, pixels.

    Returns
    -------
    numpy.ndarray, shape (N, C), float64
        Vega magnitudes; NaN where the net flux is <= 0 (or not finite).

    Raises
    ------
    InputError
        On a wrong image shape, a zero-point count that is not C, or invalid radii.

    Examples
    --------
    >>> img = np.zeros((1, 1, 32, 32), np.float32)
    >>> img[0, 0, 16, 16] = 100.0
    >>> aperture_magnitudes(img, [25.0]).round(3).tolist()
    [[20.0]]
    """
    x = np.asarray(images)
    zp = np.asarray(zeropoints, dtype=np.float64).reshape(-1)
    if x.ndim != 4 or zp.shape[0] != x.shape[1]:
        raise InputError(
            f"expected images (N, C, H, W) and C zero points, got {x.shape} and {zp.shape}",
            key="zeropoints",
        )
    net, _ = aperture_fluxes(x, radius, annulus)
    net[~np.isfinite(net)] = np.nan
    return counts_to_mag(net, zp[None, :])
