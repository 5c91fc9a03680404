"""Image files as survey cutouts come: JPEG/PNG colour composites (Pillow) and FITS (astropy).

Both are decoded to one layout, ``uint8 (3, S, S)`` (channels first, resized to a square
side ``S``), the form the prepared image shards store: JPEG/PNG planes as they are (RGB; a
grey image is repeated to three planes); FITS data (2-D, or a cube of 1–3 planes in the
primary or first image HDU) stretched per image with ``asinh(x / (k σ))`` (Lupton et al.
2004, PASP 116, 133, arXiv:astro-ph/0312483), σ the sky noise estimated by the median
absolute deviation, then mapped to 0..255 between the 0th and 99.9th percentile.

Every reader raises :class:`~astrobatch.errors.InputError` naming the file for a missing,
truncated or corrupt image (Pillow's and astropy's own errors included), never a traceback.

Examples
--------
>>> import tempfile, pathlib, numpy as np
>>> from PIL import Image
>>> p = pathlib.Path(tempfile.mkdtemp()) / "g.png"
>>> Image.fromarray(np.full((10, 10, 3), 7, np.uint8)).save(p)
>>> a = read_image(p, 8)
>>> a.shape, a.dtype, int(a.max())
((3, 8, 8), dtype('uint8'), 7)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from astrobatch.errors import InputError
from astrobatch.io.errors import reading

#: Suffixes read through Pillow and through astropy.
RASTER_SUFFIXES = (".jpg", ".jpeg", ".png")
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz")


def _pil_errors() -> tuple:
    from PIL import Image, UnidentifiedImageError

    return (UnidentifiedImageError, Image.DecompressionBombError, SyntaxError, EOFError)


def _fits_errors() -> tuple:
    from astropy.io.fits.verify import VerifyError

    return (VerifyError, EOFError, TypeError, IndexError)


def _resize(planes: np.ndarray, size: int) -> np.ndarray:
    """uint8 (C, H, W) -> uint8 (C, size, size) with Pillow's Lanczos filter."""
    from PIL import Image

    if planes.shape[1:] == (size, size):
        return planes
    out = np.empty((planes.shape[0], size, size), np.uint8)
    for c, plane in enumerate(planes):
        img = Image.fromarray(plane)
        out[c] = np.asarray(img.resize((size, size), Image.Resampling.LANCZOS))
    return out


def read_raster(path: str | Path, size: int) -> np.ndarray:
    """A JPEG or PNG image as ``uint8 (3, size, size)`` (RGB planes).

    Raises
    ------
    InputError
        Missing, truncated or undecodable file.
    """
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise InputError("image file not found", path)
    with reading(path, "JPEG/PNG image", also=_pil_errors):
        with Image.open(path) as img:
            img.load()  # decode now: a truncated file fails here, not later
            rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return _resize(np.ascontiguousarray(rgb.transpose(2, 0, 1)), size)


def stretch_to_uint8(data: np.ndarray, softening: float = 3.0) -> np.ndarray:
    """Float planes ``(C, H, W)`` to uint8 by an asinh stretch (one scale for all planes).

    Parameters
    ----------
    data : numpy.ndarray, shape (C, H, W), float
        Finite pixel values, any units.
    softening : float
        ``k``: the stretch is ``asinh(x / (k σ))``, σ the median absolute deviation of all
        pixels (× 1.4826, a Gaussian sky's standard deviation).

    Returns
    -------
    numpy.ndarray, shape (C, H, W), uint8
        0 at the image's minimum after stretching, 255 at its 99.9th percentile.
    """
    x = np.asarray(data, np.float64)
    med = np.median(x)
    sigma = 1.4826 * np.median(np.abs(x - med))
    if not sigma > 0:
        sigma = float(np.std(x)) or 1.0
    s = np.arcsinh((x - med) / (softening * sigma))
    lo, hi = float(s.min()), float(np.percentile(s, 99.9))
    if hi <= lo:
        return np.zeros(x.shape, np.uint8)
    return np.clip(np.round((s - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)


def read_fits_image(path: str | Path, size: int, softening: float = 3.0) -> np.ndarray:
    """A FITS image (2-D, or a cube of 1–3 planes) as ``uint8 (3, size, size)``.

    The data come from the primary HDU, or the first image HDU when the primary is empty.
    A 2-D image or a single plane is repeated to three planes; planes are stretched with
    :func:`stretch_to_uint8`.

    Raises
    ------
    InputError
        Missing or corrupt file, no image data, more than 3 planes, NaN or inf pixels.
    """
    from astropy.io import fits

    path = Path(path)
    if not path.is_file():
        raise InputError("image file not found", path)
    with reading(path, "FITS image", also=_fits_errors):
        with fits.open(path, memmap=False) as hdul:
            data = next((h.data for h in hdul if getattr(h, "data", None) is not None
                         and h.is_image), None)  # fmt: skip
            if data is None:
                raise InputError("no image data in any HDU (expected a 2-D image or a cube)",
                                 path)  # fmt: skip
            data = np.asarray(data, np.float64)
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3 or data.shape[0] > 3 or min(data.shape[1:]) < 2:
        raise InputError(f"image of shape {data.shape}: expected (H, W) or (C<=3, H, W)", path)
    if not np.isfinite(data).all():
        raise InputError("NaN or inf pixels (expected finite values)", path)
    if data.shape[0] < 3:
        data = np.concatenate([data, np.repeat(data[-1:], 3 - data.shape[0], axis=0)])
    return _resize(stretch_to_uint8(data, softening), size)


def read_image(path: str | Path, size: int, fits_softening: float = 3.0) -> np.ndarray:
    """Any supported image file as ``uint8 (3, size, size)``, by suffix.

    Raises
    ------
    InputError
        Unknown suffix, or as :func:`read_raster` / :func:`read_fits_image`.
    """
    name = str(path).lower()
    if name.endswith(FITS_SUFFIXES):
        return read_fits_image(path, size, fits_softening)
    if name.endswith(RASTER_SUFFIXES):
        return read_raster(path, size)
    raise InputError(
        f"unknown image type (expected {', '.join(RASTER_SUFFIXES + FITS_SUFFIXES)})", path
    )
