"""Sky geometry of the cluster_finder study: pixels, member boxes, footprint, empty fields.

Pixel convention
----------------
An image of ``size`` x ``size`` pixels is the array ``img[y, x]``. Pixel centres lie at
integer coordinates: pixel ``(0, 0)`` covers ``-0.5 .. 0.5`` on both axes and the whole
image covers ``-0.5 .. size - 0.5``; the image centre is at ``((size - 1) / 2,
(size - 1) / 2)``. North is ``+y`` and east is ``-x``, so that ``imshow(img,
origin="lower")`` shows the sky as it is seen: north up, east left.

A sky position is placed by its spherical offsets from the image centre (astropy
``SkyCoord.spherical_offsets_to``): ``dlon`` (east positive) and ``dlat`` (north positive)
are the longitude and latitude in the offset frame whose origin is the image centre, and

    x = (size - 1) / 2 - dlon / pixel_scale,    y = (size - 1) / 2 + dlat / pixel_scale.

This is a plate carrée projection about the image centre: along the two axes through the
centre pixel distance is exactly proportional to angle; elsewhere it differs from the
tangent-plane (TAN) projection by a relative ``~ theta**2 / 3`` (below 1e-6 within 0.1 deg,
a 2048-pixel SDSS cutout at 0.396127 arcsec / pixel spans 0.23 deg).

Boxes from members (the seed's rule, ``studies/cluster_finder.md``): every cluster with a
member inside the image gets all of its members projected; its box is the min / max of
their pixel positions; the box is kept when its centre is inside the image (secondary
clusters included), with the fraction of its area inside the image.

The survey footprint is a boolean HEALPix map (``healpy``, RING ordering, equatorial
coordinates); empty fields are uniform random positions inside it that lie more than a
minimum separation (20 arcmin in the seed) from every cluster.

Examples
--------
>>> x, y = sky_to_pixel([10.0, 10.0], [0.0, 0.001], 10.0, 0.0, 3.6, 101)
>>> [round(float(v), 9) for v in (*x, *y)]
[50.0, 50.0, 50.0, 51.0]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from astrobatch.errors import InputError
from astrobatch.io.atomic import atomic_path
from astrobatch.io.errors import reading

__all__ = [
    "BOX_COLUMNS",
    "boxes_from_members",
    "empty_field_centres",
    "footprint_from_positions",
    "in_footprint",
    "mass_proxy",
    "min_separation_arcmin",
    "pixel_to_sky",
    "read_footprint",
    "richness_radius",
    "sky_to_pixel",
    "write_footprint",
]

#: Columns returned by :func:`boxes_from_members`, in order.
BOX_COLUMNS = (
    "cluster_id",
    "n_members",
    "n_inside",
    "x_min",
    "y_min",
    "x_max",
    "y_max",
    "x_min_clip",
    "y_min_clip",
    "x_max_clip",
    "y_max_clip",
    "inside_fraction",
)

#: What a footprint file is, for messages.
FOOTPRINT_WHAT = "HEALPix footprint map (FITS)"


def _check_image(pixel_scale_arcsec: float, size: int) -> None:
    if not (np.isfinite(pixel_scale_arcsec) and pixel_scale_arcsec > 0):
        raise InputError(
            f"expected a positive pixel scale (arcsec / pixel), got {pixel_scale_arcsec}",
            key="pixel_scale_arcsec",
        )
    if int(size) != size or size < 1:
        raise InputError(f"expected a positive integer image size, got {size}", key="size")


def _skycoord(ra, dec):
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    return SkyCoord(
        np.asarray(ra, dtype=np.float64) * u.deg,
        np.asarray(dec, dtype=np.float64) * u.deg,
        frame="icrs",
    )


def sky_to_pixel(
    ra, dec, ra0: float, dec0: float, pixel_scale_arcsec: float, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates of sky positions in an image centred on ``(ra0, dec0)``.

    Parameters
    ----------
    ra, dec : array_like, float, shape (...)
        Positions (ICRS, degrees).
    ra0, dec0 : float
        Image centre (ICRS, degrees).
    pixel_scale_arcsec : float
        Pixel scale (arcsec / pixel), e.g. 0.396127 for SDSS.
    size : int
        Image side (pixels).

    Returns
    -------
    x, y : numpy.ndarray, float64, shape (...)
        Pixel coordinates in the module's convention (centres at integers, image centre
        at ``(size - 1) / 2``, north ``+y``, east ``-x``); positions outside the image give
        coordinates outside ``-0.5 .. size - 0.5``.

    Raises
    ------
    InputError
        A non-positive pixel scale or size.

    Notes
    -----
    ``dlon, dlat = SkyCoord(ra0, dec0).spherical_offsets_to(SkyCoord(ra, dec))``, then
    ``x = (size - 1) / 2 - dlon / scale`` and ``y = (size - 1) / 2 + dlat / scale``.
    """
    import astropy.units as u

    _check_image(pixel_scale_arcsec, size)
    dlon, dlat = _skycoord(ra0, dec0).spherical_offsets_to(_skycoord(ra, dec))
    c = (size - 1) / 2.0
    x = c - dlon.to_value(u.arcsec) / pixel_scale_arcsec
    y = c + dlat.to_value(u.arcsec) / pixel_scale_arcsec
    return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)


def pixel_to_sky(
    x, y, ra0: float, dec0: float, pixel_scale_arcsec: float, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sky positions of pixel coordinates: the inverse of :func:`sky_to_pixel`.

    Parameters
    ----------
    x, y : array_like, float, shape (...)
        Pixel coordinates (module convention).
    ra0, dec0 : float
        Image centre (ICRS, degrees).
    pixel_scale_arcsec : float
        Pixel scale (arcsec / pixel).
    size : int
        Image side (pixels).

    Returns
    -------
    ra, dec : numpy.ndarray, float64, shape (...)
        ICRS degrees, ``ra`` in ``[0, 360)``.

    Raises
    ------
    InputError
        A non-positive pixel scale or size.

    Notes
    -----
    ``SkyCoord(ra0, dec0).spherical_offsets_by(dlon, dlat)`` with
    ``dlon = -(x - c) * scale`` and ``dlat = (y - c) * scale``, ``c = (size - 1) / 2``.
    """
    import astropy.units as u

    _check_image(pixel_scale_arcsec, size)
    c = (size - 1) / 2.0
    dlon = -(np.asarray(x, dtype=np.float64) - c) * pixel_scale_arcsec * u.arcsec
    dlat = (np.asarray(y, dtype=np.float64) - c) * pixel_scale_arcsec * u.arcsec
    sky = _skycoord(ra0, dec0).spherical_offsets_by(dlon, dlat)
    ra = np.mod(np.asarray(sky.ra.deg, dtype=np.float64), 360.0)
    return ra, np.asarray(sky.dec.deg, dtype=np.float64)


def _unit_vectors(ra, dec) -> np.ndarray:
    r, d = np.radians(ra), np.radians(dec)
    return np.stack([np.cos(d) * np.cos(r), np.cos(d) * np.sin(r), np.sin(d)], axis=-1)


def boxes_from_members(
    member_cluster_id,
    member_ra,
    member_dec,
    ra0: float,
    dec0: float,
    pixel_scale_arcsec: float,
    size: int,
    min_members: int = 1,
    min_box_side_px: float = 4.0,
) -> dict[str, np.ndarray]:
    """Boxes of the clusters seen in one image, from their members' positions.

    A cluster is seen when at least ``min_members`` of its members fall inside the image
    (``-0.5 <= x, y <= size - 0.5``). All of its members (inside the image or not) are
    projected (:func:`sky_to_pixel`) and its box is the min / max of their pixel
    positions. A box narrower than ``min_box_side_px`` on an axis (one member, or members
    on a line: a zero-area box) is widened to that side about its centre. A box is kept
    when its centre is inside the image, so secondary clusters are kept too and a cluster
    whose members reach into the image from a centre outside is dropped.

    Parameters
    ----------
    member_cluster_id : array_like, int, shape (M,)
        Cluster id of each member (canonical ``cluster_id``).
    member_ra, member_dec : array_like, float, shape (M,)
        Member positions (ICRS, degrees).
    ra0, dec0 : float
        Image centre (ICRS, degrees).
    pixel_scale_arcsec : float
        Pixel scale (arcsec / pixel).
    size : int
        Image side (pixels).
    min_members : int
        Members inside the image needed for a cluster to be considered (the seed: 1).
    min_box_side_px : float
        Smallest box side (pixels), > 0.

    Returns
    -------
    dict of str to numpy.ndarray, each shape (B,), keys :data:`BOX_COLUMNS`
        Sorted by ``cluster_id`` (int64). ``n_members`` (int64): the cluster's members in
        the input; ``n_inside`` (int64): those inside the image; ``x_min, y_min, x_max,
        y_max`` (float64, pixels): the box, which may extend beyond the image;
        ``*_clip`` (float64): the box clipped to ``-0.5 .. size - 0.5``;
        ``inside_fraction`` (float64, in (0, 1]): area of box ∩ image / box area.

    Raises
    ------
    InputError
        Arrays of different lengths, a non-positive scale, size, ``min_members`` or
        ``min_box_side_px``.
    """
    _check_image(pixel_scale_arcsec, size)
    ids = np.asarray(member_cluster_id)
    ra = np.asarray(member_ra, dtype=np.float64)
    dec = np.asarray(member_dec, dtype=np.float64)
    if ids.ndim != 1 or ra.shape != ids.shape or dec.shape != ids.shape:
        raise InputError(
            f"expected three 1-D arrays of one length, got shapes {ids.shape}, {ra.shape}, "
            f"{dec.shape}",
            key="member_cluster_id",
        )
    if min_members < 1:
        raise InputError(f"expected min_members >= 1, got {min_members}", key="min_members")
    if not (min_box_side_px > 0):
        raise InputError(
            f"expected min_box_side_px > 0, got {min_box_side_px}", key="min_box_side_px"
        )
    ids = ids.astype(np.int64)
    lo, hi = -0.5, size - 0.5

    # members that can be inside: within size * scale of the centre (a point of the image has
    # |dlon|, |dlat| <= size * scale / 2 and its distance is at most |dlon| + |dlat|)
    r_max = min(np.pi, np.radians(size * pixel_scale_arcsec / 3600.0) * 1.01 + 1e-9)
    near = _unit_vectors(ra, dec) @ _unit_vectors(ra0, dec0) >= np.cos(r_max)
    xn, yn = sky_to_pixel(ra[near], dec[near], ra0, dec0, pixel_scale_arcsec, size)
    inside_near = (xn >= lo) & (xn <= hi) & (yn >= lo) & (yn <= hi)
    seen, n_seen = np.unique(ids[near][inside_near], return_counts=True)
    seen = seen[n_seen >= min_members]

    sel = np.isin(ids, seen)
    x, y = sky_to_pixel(ra[sel], dec[sel], ra0, dec0, pixel_scale_arcsec, size)
    uid, inv = np.unique(ids[sel], return_inverse=True)
    k = len(uid)
    x_min = np.full(k, np.inf)
    y_min = np.full(k, np.inf)
    x_max = np.full(k, -np.inf)
    y_max = np.full(k, -np.inf)
    np.minimum.at(x_min, inv, x)
    np.minimum.at(y_min, inv, y)
    np.maximum.at(x_max, inv, x)
    np.maximum.at(y_max, inv, y)
    inside = (x >= lo) & (x <= hi) & (y >= lo) & (y <= hi)
    n_members = np.bincount(inv, minlength=k).astype(np.int64)
    n_inside = np.bincount(inv, weights=inside, minlength=k).astype(np.int64)

    for a, b in ((x_min, x_max), (y_min, y_max)):
        narrow = (b - a) < min_box_side_px
        mid = (a + b) / 2.0
        a[narrow] = mid[narrow] - min_box_side_px / 2.0
        b[narrow] = mid[narrow] + min_box_side_px / 2.0

    xc, yc = (x_min + x_max) / 2.0, (y_min + y_max) / 2.0
    keep = (xc >= lo) & (xc <= hi) & (yc >= lo) & (yc <= hi)
    clip = [np.clip(v[keep], lo, hi) for v in (x_min, y_min, x_max, y_max)]
    area = (x_max[keep] - x_min[keep]) * (y_max[keep] - y_min[keep])
    area_in = (clip[2] - clip[0]) * (clip[3] - clip[1])
    out = {
        "cluster_id": uid[keep],
        "n_members": n_members[keep],
        "n_inside": n_inside[keep],
        "x_min": x_min[keep],
        "y_min": y_min[keep],
        "x_max": x_max[keep],
        "y_max": y_max[keep],
        "x_min_clip": clip[0],
        "y_min_clip": clip[1],
        "x_max_clip": clip[2],
        "y_max_clip": clip[3],
        "inside_fraction": area_in / area,
    }
    return {c: np.asarray(out[c]) for c in BOX_COLUMNS}


# ------------------------------------------------------------------------------ footprint
def _footprint_bool(values) -> np.ndarray:
    """A footprint's values as bool: bool as is; numbers: finite, not UNSEEN and > 0."""
    import healpy as hp

    v = np.asarray(values)
    if v.dtype == bool:
        return v
    v = v.astype(np.float64)
    return np.isfinite(v) & (v != hp.UNSEEN) & (v > 0)


def _nside_of(footprint: np.ndarray, path: str | Path | None = None) -> int:
    import healpy as hp

    m = np.asarray(footprint)
    if m.ndim != 1 or not hp.isnpixok(m.size):
        raise InputError(
            f"expected a full-sky HEALPix map of 12 * nside**2 pixels, got shape {m.shape}",
            path,
            "footprint",
        )
    return int(hp.npix2nside(m.size))


def footprint_from_positions(
    ra, dec, nside: int, radius_deg: float, inclusive: bool = False
) -> np.ndarray:
    """Footprint map of the HEALPix pixels within ``radius_deg`` of any position.

    Parameters
    ----------
    ra, dec : array_like, float, shape (N,)
        Positions (ICRS, degrees), e.g. the galaxies or image centres of a survey.
    nside : int
        HEALPix resolution (a power of 2; 2048 in the seed: 1.7 arcmin pixels).
    radius_deg : float
        Disc radius (degrees), > 0.
    inclusive : bool
        ``healpy.query_disc``'s flag: False keeps pixels whose centre is in a disc, True
        also those that only overlap one.

    Returns
    -------
    numpy.ndarray, bool, shape (12 * nside**2,)
        RING ordering.

    Raises
    ------
    InputError
        An invalid ``nside`` or a non-positive radius.
    """
    import healpy as hp

    if not hp.isnsideok(nside, nest=True):
        raise InputError(f"expected a power of 2 for nside, got {nside}", key="nside")
    if not (radius_deg > 0):
        raise InputError(f"expected radius_deg > 0, got {radius_deg}", key="radius_deg")
    ra = np.atleast_1d(np.asarray(ra, dtype=np.float64))
    dec = np.atleast_1d(np.asarray(dec, dtype=np.float64))
    m = np.zeros(hp.nside2npix(nside), dtype=bool)
    radius = np.radians(radius_deg)
    for v in _unit_vectors(ra, dec):
        m[hp.query_disc(nside, v, radius, inclusive=inclusive)] = True
    return m


def in_footprint(footprint, ra, dec) -> np.ndarray:
    """Whether positions fall in footprint pixels.

    Parameters
    ----------
    footprint : array_like, shape (12 * nside**2,)
        RING map; bool, or numbers (inside: finite, not ``UNSEEN``, > 0).
    ra, dec : array_like, float, shape (...)
        Positions (ICRS, degrees).

    Returns
    -------
    numpy.ndarray, bool, shape (...)

    Raises
    ------
    InputError
        A map whose length is not 12 * nside**2.
    """
    import healpy as hp

    m = np.asarray(footprint)
    nside = _nside_of(m)
    pix = hp.ang2pix(
        nside, np.asarray(ra, dtype=np.float64), np.asarray(dec, dtype=np.float64), lonlat=True
    )
    return _footprint_bool(m[pix])


def write_footprint(path: str | Path, footprint) -> None:
    """Write a footprint map as a HEALPix FITS file (uint8 0 / 1, RING, equatorial), atomically.

    Parameters
    ----------
    path : str or pathlib.Path
        Output ``.fits`` file; it appears only once complete.
    footprint : array_like, shape (12 * nside**2,)
        RING map (bool, or numbers as in :func:`in_footprint`).

    Raises
    ------
    InputError
        A map whose length is not 12 * nside**2.
    """
    import healpy as hp

    m = np.asarray(footprint)
    _nside_of(m, path)
    with atomic_path(path) as tmp:
        hp.write_map(
            str(tmp),
            _footprint_bool(m).astype(np.uint8),
            nest=False,
            coord="C",
            dtype=np.uint8,
            overwrite=True,
            column_names=["FOOTPRINT"],
        )


def _fits_errors() -> tuple:
    from astropy.io.fits.verify import VerifyError

    return (VerifyError,)


def read_footprint(path: str | Path) -> np.ndarray:
    """Read a HEALPix footprint map (:func:`write_footprint`, or any healpy map file).

    Parameters
    ----------
    path : str or pathlib.Path
        HEALPix FITS file (first column of HDU 1; NESTED files are converted to RING).

    Returns
    -------
    numpy.ndarray, bool, shape (12 * nside**2,)
        RING ordering; inside = finite, not ``UNSEEN`` and > 0.

    Raises
    ------
    InputError
        A missing file, or one that is not a readable full-sky HEALPix map.
    """
    import healpy as hp

    path = Path(path)
    if not path.is_file():
        raise InputError("footprint map not found (expected a HEALPix FITS file)", path)
    with reading(path, FOOTPRINT_WHAT, "HDU 1", also=_fits_errors):
        m = hp.read_map(str(path), dtype=None, nest=False)
    if np.ndim(m) != 1:
        raise InputError(f"expected one map column, got shape {np.shape(m)}", path, "HDU 1")
    _nside_of(m, path)
    return _footprint_bool(m)


def _nearest_sep_arcmin(ra, dec, catalog) -> np.ndarray:
    ra = np.asarray(ra, dtype=np.float64)
    if catalog is None or len(ra) == 0:
        return np.full(ra.shape, np.inf)
    _, sep, _ = _skycoord(ra, dec).match_to_catalog_sky(catalog)
    return np.asarray(sep.arcmin, dtype=np.float64)


def _cluster_catalog(cluster_ra, cluster_dec):
    cra = np.atleast_1d(np.asarray(cluster_ra, dtype=np.float64))
    cdec = np.atleast_1d(np.asarray(cluster_dec, dtype=np.float64))
    if cra.shape != cdec.shape:
        raise InputError(
            f"expected cluster_ra and cluster_dec of one shape, got {cra.shape}, {cdec.shape}",
            key="cluster_ra",
        )
    ok = np.isfinite(cra) & np.isfinite(cdec)
    return _skycoord(cra[ok], cdec[ok]) if ok.any() else None


def min_separation_arcmin(ra, dec, cluster_ra, cluster_dec) -> np.ndarray:
    """Angular distance from each position to its nearest cluster.

    Parameters
    ----------
    ra, dec : array_like, float, shape (N,)
        Positions (ICRS, degrees).
    cluster_ra, cluster_dec : array_like, float, shape (C,)
        Cluster positions (ICRS, degrees); non-finite ones are ignored.

    Returns
    -------
    numpy.ndarray, float64, shape (N,)
        Arcmin (``inf`` when there is no cluster), from astropy
        ``SkyCoord.match_to_catalog_sky``.
    """
    ra = np.atleast_1d(np.asarray(ra, dtype=np.float64))
    dec = np.atleast_1d(np.asarray(dec, dtype=np.float64))
    return _nearest_sep_arcmin(ra, dec, _cluster_catalog(cluster_ra, cluster_dec))


def _uniform_in_pixels(nside: int, pixels: np.ndarray, rng: np.random.Generator):
    """Uniform random (ra, dec) inside each HEALPix pixel (RING): uniform in the cap of
    radius ``max_pixrad`` about the pixel centre, redrawn until in the pixel."""
    import healpy as hp

    ra = np.empty(len(pixels))
    dec = np.empty(len(pixels))
    cos_r = np.cos(hp.max_pixrad(nside))
    todo = np.arange(len(pixels))
    while todo.size:
        c = np.stack(hp.pix2vec(nside, pixels[todo]), axis=-1)
        axis = np.where(np.abs(c[:, 2:3]) < 0.9, [[0.0, 0.0, 1.0]], [[1.0, 0.0, 0.0]])
        e1 = np.cross(axis, c)
        e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
        e2 = np.cross(c, e1)
        cos_t = 1.0 - rng.random(todo.size) * (1.0 - cos_r)
        sin_t = np.sqrt(np.clip(1.0 - cos_t**2, 0.0, None))
        phi = 2.0 * np.pi * rng.random(todo.size)
        v = cos_t[:, None] * c + sin_t[:, None] * (
            np.cos(phi)[:, None] * e1 + np.sin(phi)[:, None] * e2
        )
        r, d = hp.vec2ang(v, lonlat=True)
        ok = hp.ang2pix(nside, r, d, lonlat=True) == pixels[todo]
        ra[todo[ok]] = np.mod(r[ok], 360.0)
        dec[todo[ok]] = d[ok]
        todo = todo[~ok]
    return ra, dec


def empty_field_centres(
    footprint,
    cluster_ra,
    cluster_dec,
    n: int,
    min_separation_arcmin: float = 20.0,
    rng: np.random.Generator | int | None = None,
    max_tries: int = 100,
) -> tuple[np.ndarray, np.ndarray]:
    """Random sky positions inside the footprint, far from every cluster (empty fields).

    Positions are uniform on the sphere within the footprint: footprint pixels (of equal
    area) are drawn uniformly, then a point uniform inside each pixel; points closer than
    ``min_separation_arcmin`` to a cluster (astropy ``match_to_catalog_sky``) are
    dropped, and batches of ``max(4 n, 256)`` draws are repeated until ``n`` remain.

    Parameters
    ----------
    footprint : array_like, shape (12 * nside**2,)
        RING map (bool, or numbers as in :func:`in_footprint`).
    cluster_ra, cluster_dec : array_like, float, shape (C,)
        Cluster positions (ICRS, degrees); non-finite ones are ignored.
    n : int
        Positions wanted (>= 0).
    min_separation_arcmin : float
        Smallest distance to any cluster (arcmin; 20 in the seed).
    rng : numpy.random.Generator or int or None
        Random generator, or a seed for ``numpy.random.default_rng``.
    max_tries : int
        Batches drawn at most.

    Returns
    -------
    ra, dec : numpy.ndarray, float64, shape (n,)
        ICRS degrees, ``ra`` in ``[0, 360)``; each inside the footprint and more than
        ``min_separation_arcmin`` from every cluster.

    Raises
    ------
    InputError
        An empty footprint, a negative ``n``, or fewer than ``n`` positions found in
        ``max_tries`` batches (the footprint is too small or too crowded with clusters).
    """
    m = np.asarray(footprint)
    nside = _nside_of(m)
    if n < 0:
        raise InputError(f"expected n >= 0, got {n}", key="n")
    pixels = np.flatnonzero(_footprint_bool(m))
    if pixels.size == 0:
        raise InputError("the footprint map has no pixel inside", key="footprint")
    rng = np.random.default_rng(rng)
    catalog = _cluster_catalog(cluster_ra, cluster_dec)
    batch = max(4 * int(n), 256)
    got_ra: list[np.ndarray] = []
    got_dec: list[np.ndarray] = []
    found = 0
    for _ in range(max_tries):
        if found >= n:
            break
        ra, dec = _uniform_in_pixels(nside, rng.choice(pixels, size=batch), rng)
        ok = _nearest_sep_arcmin(ra, dec, catalog) > min_separation_arcmin
        ra, dec = ra[ok][: n - found], dec[ok][: n - found]
        got_ra.append(ra)
        got_dec.append(dec)
        found += len(ra)
    if found < n:
        raise InputError(
            f"found only {found} of {n} empty-field centres inside the footprint and more than "
            f"{min_separation_arcmin} arcmin from every cluster after {max_tries} batches of "
            f"{batch} draws; expected a footprint with room away from the clusters (lower n "
            "or min_separation_arcmin)",
            key="min_separation_arcmin",
        )
    if not got_ra:
        return np.empty(0), np.empty(0)
    return np.concatenate(got_ra), np.concatenate(got_dec)


# ------------------------------------------------------------------------------ scalings
def _positive(richness, key: str = "richness") -> np.ndarray:
    lam = np.asarray(richness, dtype=np.float64)
    bad = ~(np.isfinite(lam) & (lam > 0))
    if bad.any():
        raise InputError(
            f"expected finite richness > 0, got {int(bad.sum())} bad value(s)", key=key
        )
    return lam


def mass_proxy(richness) -> np.ndarray:
    """Cluster mass from redMaPPer richness, ``M = 10**14.344 (lambda / 40)**1.33`` Msun.

    The relation as in the study spec (``studies/cluster_finder.md``), a Simet et al. 2017
    style mass-richness relation (Simet et al. 2017, MNRAS 466, 3103, arXiv:1603.06953,
    weak lensing of SDSS redMaPPer clusters: ``log10 M0 = 14.344``, slope 1.33 at the
    pivot lambda = 40, for M_200m in h^-1 Msun; the spec reads it in Msun).

    Parameters
    ----------
    richness : array_like, float, shape (...)
        redMaPPer richness lambda (> 0).

    Returns
    -------
    numpy.ndarray, float64, shape (...)
        Mass (Msun, as in the spec).

    Raises
    ------
    InputError
        A non-finite or non-positive richness.

    Examples
    --------
    >>> float(mass_proxy(40.0)) == 10**14.344
    True
    """
    return 10.0**14.344 * (_positive(richness) / 40.0) ** 1.33


def richness_radius(richness, h: float = 0.7) -> np.ndarray:
    """redMaPPer cluster radius ``R_lambda = (lambda / 100)**0.2 h^-1 Mpc``, in Mpc.

    Rykoff et al. 2014, ApJ 785, 104, arXiv:1303.3562, Eq. (4): the radius within which
    members are counted, a physical (proper) radius.

    Parameters
    ----------
    richness : array_like, float, shape (...)
        redMaPPer richness lambda (> 0).
    h : float
        Dimensionless Hubble constant, H0 / (100 km/s/Mpc); ``h = 1`` returns the value in
        h^-1 Mpc.

    Returns
    -------
    numpy.ndarray, float64, shape (...)
        ``R_lambda`` (physical Mpc).

    Raises
    ------
    InputError
        A non-finite or non-positive richness or ``h``.

    Examples
    --------
    >>> float(richness_radius(100.0, h=0.5))
    2.0
    """
    if not (np.isfinite(h) and h > 0):
        raise InputError(f"expected h > 0, got {h}", key="h")
    return (_positive(richness) / 100.0) ** 0.2 / h
