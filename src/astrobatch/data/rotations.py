"""Sky positions as unit vectors, and random 3-D rotations of them (training augmentation).

A member catalogue gives every galaxy a sky position (RA, Dec). A set model
sees it as the unit vector ``(X, Y, Z)`` on the celestial sphere (equatorial
frame); a random proper rotation of all the members of one cluster moves the
cluster elsewhere on the sky but keeps every angular separation, so a model
of redshift or richness should not care. :class:`RandomSkyRotation` draws one
such rotation per set of a padded batch.

Rotations are drawn with PyTorch (not ``scipy.spatial.transform.Rotation``)
so that they follow a ``torch.Generator`` (or the global torch seed that
Lightning's ``seed_everything`` sets) and can be applied to batches on any
device; they are drawn on the CPU in float64, so the same seed gives the
same rotations everywhere.

Functions accept numpy arrays or torch tensors and return the same kind.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "RandomSkyRotation",
    "radec_to_unit",
    "random_rotation_matrices",
    "rotate_unit_vectors",
    "unit_to_radec",
]


def random_rotation_matrices(
    n: int,
    generator: torch.Generator | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """``n`` independent rotation matrices, uniformly (Haar) distributed on SO(3).

    Uniform unit quaternions by Shoemake's subgroup algorithm (K. Shoemake
    1992, "Uniform random rotations", Graphics Gems III, pp. 124-132): with
    ``u1, u2, u3 ~ U(0, 1)``,
    ``q = (sqrt(1 - u1) sin 2 pi u2, sqrt(1 - u1) cos 2 pi u2, sqrt(u1) sin 2 pi u3,
    sqrt(u1) cos 2 pi u3)`` is uniform on the 3-sphere, and its rotation matrix
    is uniform on SO(3) (the double cover maps Haar to Haar).

    Parameters
    ----------
    n : int
        Number of rotations (>= 0).
    generator : torch.Generator, optional
        A CPU generator; None uses torch's global RNG.
    dtype : torch.dtype
        Floating dtype of the result (computed in float64, then cast).
    device : torch.device or str, optional
        Device of the result (drawn on the CPU, then moved).

    Returns
    -------
    torch.Tensor, shape (n, 3, 3)
        Proper rotations: ``R @ R.T = I`` and ``det R = +1`` (to rounding).
        ``R @ v`` rotates the column vector ``v``.

    Raises
    ------
    ValueError
        If ``n < 0`` or ``dtype`` is not floating point.

    Examples
    --------
    >>> R = random_rotation_matrices(4, torch.Generator().manual_seed(0))
    >>> R.shape
    torch.Size([4, 3, 3])
    >>> bool(torch.allclose(R @ R.transpose(1, 2), torch.eye(3).expand(4, 3, 3), atol=1e-6))
    True
    >>> [round(d, 4) for d in torch.linalg.det(R).tolist()]
    [1.0, 1.0, 1.0, 1.0]
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be floating point, got {dtype}")
    u1, u2, u3 = torch.rand(3, n, generator=generator, dtype=torch.float64)
    a, b = torch.sqrt(1.0 - u1), torch.sqrt(u1)
    x, y = a * torch.sin(2 * math.pi * u2), a * torch.cos(2 * math.pi * u2)
    z, w = b * torch.sin(2 * math.pi * u3), b * torch.cos(2 * math.pi * u3)
    R = torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            torch.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            torch.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        dim=-2,
    )
    return R.to(dtype=dtype, device=device)


def radec_to_unit(ra_deg, dec_deg):
    """Unit vectors on the celestial sphere from right ascension and declination.

    ``(X, Y, Z) = (cos dec cos ra, cos dec sin ra, sin dec)``: X towards
    (ra, dec) = (0, 0), Z towards the north celestial pole (the Cartesian
    representation of ``astropy.coordinates.SkyCoord``).

    Parameters
    ----------
    ra_deg, dec_deg : numpy.ndarray or torch.Tensor, shape (...), float
        Right ascension and declination in degrees (broadcast together).
        Both numpy or both torch.

    Returns
    -------
    numpy.ndarray or torch.Tensor, shape (..., 3)
        Unit vectors (dimensionless), the type and float dtype of the input
        (float64 for numpy integer input).

    Examples
    --------
    >>> radec_to_unit(np.array([0.0, 90.0]), np.array([0.0, 0.0])).round(6) + 0.0
    array([[1., 0., 0.],
           [0., 1., 0.]])
    """
    if isinstance(ra_deg, Tensor):
        ra, dec = torch.deg2rad(ra_deg), torch.deg2rad(torch.as_tensor(dec_deg))
        ra, dec = torch.broadcast_tensors(ra, dec)
        return torch.stack(
            [torch.cos(dec) * torch.cos(ra), torch.cos(dec) * torch.sin(ra), torch.sin(dec)], -1
        )
    ra, dec = np.broadcast_arrays(np.deg2rad(ra_deg), np.deg2rad(dec_deg))
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=-1)


def unit_to_radec(xyz):
    """Right ascension and declination (degrees) of vectors on the celestial sphere.

    The inverse of :func:`radec_to_unit`; the vectors need not be normalised
    (only their direction matters). ``dec = atan2(Z, hypot(X, Y))`` is
    accurate near the poles, where ``arcsin(Z)`` is not.

    Parameters
    ----------
    xyz : numpy.ndarray or torch.Tensor, shape (..., 3), float
        Non-zero vectors ``(X, Y, Z)``.

    Returns
    -------
    ra_deg : numpy.ndarray or torch.Tensor, shape (...)
        Right ascension in degrees, in ``[0, 360)``.
    dec_deg : numpy.ndarray or torch.Tensor, shape (...)
        Declination in degrees, in ``[-90, 90]``.

    Raises
    ------
    ValueError
        If the last dimension is not 3.

    Examples
    --------
    >>> ra, dec = unit_to_radec(np.array([[0.0, -1.0, 0.0], [0.0, 0.0, 2.0]]))
    >>> ra.tolist(), dec.tolist()
    ([270.0, 0.0], [0.0, 90.0])
    """
    if xyz.shape[-1] != 3:
        raise ValueError(f"xyz must have shape (..., 3), got {tuple(xyz.shape)}")
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    if isinstance(xyz, Tensor):
        ra = torch.rad2deg(torch.atan2(y, x)) % 360.0
        ra = torch.where(ra >= 360.0, ra - 360.0, ra)  # -tiny % 360 rounds up to 360
        return ra, torch.rad2deg(torch.atan2(z, torch.hypot(x, y)))
    ra = np.rad2deg(np.arctan2(y, x)) % 360.0
    ra = np.where(ra >= 360.0, ra - 360.0, ra)
    return ra, np.rad2deg(np.arctan2(z, np.hypot(x, y)))


def _check_columns(columns: Sequence[int], n_features: int) -> list[int]:
    cols = [int(c) for c in columns]
    if len(cols) != 3 or len(set(cols)) != 3:
        raise ValueError(f"columns must be 3 distinct feature indices, got {tuple(columns)}")
    if not all(-n_features <= c < n_features for c in cols):
        raise ValueError(f"columns {tuple(cols)} out of range for {n_features} features")
    return [c % n_features for c in cols]


def rotate_unit_vectors(x, columns: Sequence[int], rotation):
    """Rotate the unit-vector columns of a feature array; the other columns are copied as is.

    Row by row, ``v' = R v`` for ``v = x[..., columns]`` (a column vector).

    Parameters
    ----------
    x : torch.Tensor, shape (B, N, F) or (N, F), float; or numpy.ndarray of the same shapes
        Features of the elements; ``x[..., columns]`` are the (X, Y, Z) unit
        vectors (dimensionless), e.g. from :func:`radec_to_unit`.
    columns : sequence of 3 int
        Feature indices of X, Y and Z (negative indices allowed).
    rotation : torch.Tensor or numpy.ndarray, shape (3, 3) or (B, 3, 3)
        Rotation matrices: one for all rows, or one per set of a ``(B, N, F)``
        batch. Converted to the type, dtype (and device) of ``x``.

    Returns
    -------
    torch.Tensor or numpy.ndarray, shape of ``x``
        A new array (``x`` is not modified). Columns not in ``columns`` are
        bit-identical to the input; rows with non-finite vectors stay
        non-finite but never affect other rows.

    Raises
    ------
    ValueError
        If ``x`` is not 2-D or 3-D, ``columns`` are not 3 distinct valid
        indices, or ``rotation`` has the wrong shape.

    Examples
    --------
    >>> x = np.array([[1.0, 0.0, 0.0, 7.0]])  # (X, Y, Z, magnitude)
    >>> Rz90 = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    >>> rotate_unit_vectors(x, (0, 1, 2), Rz90)
    array([[0., 1., 0., 7.]])
    """
    if x.ndim not in (2, 3):
        raise ValueError(f"x must have shape (B, N, F) or (N, F), got {tuple(x.shape)}")
    cols = _check_columns(columns, x.shape[-1])
    is_torch = isinstance(x, Tensor)
    if is_torch:
        R = torch.as_tensor(rotation, dtype=x.dtype, device=x.device)
    else:
        R = np.asarray(rotation, dtype=x.dtype if x.dtype.kind == "f" else np.float64)
    batched = R.ndim == 3
    if R.shape[-2:] != (3, 3) or R.ndim not in (2, 3):
        raise ValueError(f"rotation must have shape (3, 3) or (B, 3, 3), got {tuple(R.shape)}")
    if batched and (x.ndim != 3 or R.shape[0] != x.shape[0]):
        raise ValueError(
            f"a batch of rotations {tuple(R.shape)} needs x of shape ({R.shape[0]}, N, F), "
            f"got {tuple(x.shape)}"
        )
    v = x[..., cols]  # (..., N, 3)
    Rt = R.transpose(-1, -2) if is_torch else np.swapaxes(R, -1, -2)
    v_rot = v @ Rt  # row vectors: (R v)^T = v^T R^T; batched R broadcasts over the set axis
    out = x.clone() if is_torch else x.copy()
    out[..., cols] = v_rot.to(out.dtype) if is_torch else v_rot.astype(out.dtype)  # autocast: bf16
    return out


class RandomSkyRotation:
    """Training augmentation: one uniform random 3-D rotation of the sky per set.

    Applied to a padded batch ``(x, mask)``, it rotates the unit-vector
    columns of every real element of set ``b`` by the same rotation ``R_b``
    (independent, Haar-uniform, see :func:`random_rotation_matrices`); other
    columns and padded slots are returned unchanged, and the mask is passed
    through. Angular separations within a set are preserved.

    Parameters
    ----------
    columns : sequence of 3 int
        Feature indices of the X, Y, Z unit-vector columns.
    generator : torch.Generator, optional
        CPU generator of the rotations; None (default) uses torch's global RNG,
        so the run's seed controls it.

    Shape
    -----
    - x: ``(B, N, F)``, float
    - mask: ``(B, N)``, bool, True = real element
    - output: ``(x_rotated, mask)``, same shapes

    Examples
    --------
    >>> aug = RandomSkyRotation(columns=(0, 1, 2), generator=torch.Generator().manual_seed(0))
    >>> x = torch.cat([radec_to_unit(torch.rand(2, 5) * 360, torch.zeros(2, 5)),
    ...                torch.ones(2, 5, 1)], dim=-1)
    >>> x_rot, mask = aug(x, torch.ones(2, 5, dtype=torch.bool))
    >>> x_rot.shape, bool(torch.equal(x_rot[..., 3], x[..., 3]))
    (torch.Size([2, 5, 4]), True)
    >>> bool(torch.allclose(x_rot[..., :3].norm(dim=-1), torch.ones(2, 5)))
    True
    """

    def __init__(self, columns: Sequence[int], generator: torch.Generator | None = None):
        if len(columns) != 3 or len(set(columns)) != 3:
            raise ValueError(f"columns must be 3 distinct feature indices, got {tuple(columns)}")
        self.columns = tuple(int(c) for c in columns)
        self.generator = generator

    def __call__(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``(x with rotated unit vectors, mask)``; see the class docstring."""
        if x.ndim != 3 or mask.shape != x.shape[:2]:
            raise ValueError(
                f"expected x (B, N, F) and mask (B, N), got {tuple(x.shape)}, {tuple(mask.shape)}"
            )
        R = random_rotation_matrices(x.shape[0], self.generator, dtype=x.dtype, device=x.device)
        rotated = rotate_unit_vectors(x, self.columns, R)
        return torch.where(mask.unsqueeze(-1), rotated, x), mask

    def __repr__(self) -> str:
        return f"{type(self).__name__}(columns={self.columns})"
