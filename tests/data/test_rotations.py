"""Sky unit vectors and random rotations: orthonormality, uniformity, separations, round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from astropy.coordinates import SkyCoord
from scipy import stats

from astrobatch.data.rotations import (
    RandomSkyRotation,
    radec_to_unit,
    random_rotation_matrices,
    rotate_unit_vectors,
    unit_to_radec,
)


def test_rotations_are_proper_orthonormal_and_seeded():
    R = random_rotation_matrices(500, torch.Generator().manual_seed(0), dtype=torch.float64)
    assert R.shape == (500, 3, 3) and R.dtype == torch.float64
    torch.testing.assert_close(R @ R.transpose(1, 2), torch.eye(3, dtype=R.dtype).expand(500, 3, 3))
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(500, dtype=R.dtype))
    again = random_rotation_matrices(500, torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(R, again)
    assert random_rotation_matrices(3).dtype == torch.float32
    assert random_rotation_matrices(0).shape == (0, 3, 3)
    with pytest.raises(ValueError, match="n must be"):
        random_rotation_matrices(-1)


def test_rotations_are_uniform_on_so3():
    n = 20_000
    R = random_rotation_matrices(n, torch.Generator().manual_seed(1), dtype=torch.float64).numpy()
    # E[R] = 0 for the Haar measure (so R e_z is uniform on the sphere: mean 0, covariance I/3)
    assert np.abs(R.mean(axis=0)).max() < 0.02
    v = R[:, :, 2]
    np.testing.assert_allclose(v.T @ v / n, np.eye(3) / 3, atol=0.01)
    # z-component of a uniform point on the sphere is U(-1, 1) (Archimedes)
    assert stats.kstest(v[:, 2], stats.uniform(-1, 2).cdf).pvalue > 1e-3
    # rotation angle theta has density (1 - cos theta) / pi: CDF (theta - sin theta) / pi
    theta = np.arccos(np.clip((np.trace(R, axis1=1, axis2=2) - 1) / 2, -1, 1))
    assert stats.kstest(theta, lambda t: (t - np.sin(t)) / np.pi).pvalue > 1e-3


def test_radec_unit_round_trip_and_astropy():
    rng = np.random.default_rng(0)
    ra = rng.uniform(0, 360, 1000)
    dec = np.rad2deg(np.arcsin(rng.uniform(-1, 1, 1000)))
    xyz = radec_to_unit(ra, dec)
    assert xyz.shape == (1000, 3)
    np.testing.assert_allclose(np.linalg.norm(xyz, axis=-1), 1.0, rtol=1e-12)
    c = SkyCoord(ra=ra, dec=dec, unit="deg").cartesian
    np.testing.assert_allclose(xyz, np.stack([c.x.value, c.y.value, c.z.value], -1), atol=1e-12)
    ra2, dec2 = unit_to_radec(xyz)
    np.testing.assert_allclose(dec2, dec, atol=1e-9)
    dra = (ra2 - ra + 180) % 360 - 180
    np.testing.assert_allclose(dra, 0, atol=1e-9)
    assert (ra2 >= 0).all() and (ra2 < 360).all()
    # torch, float32, broadcasting and the poles
    t = radec_to_unit(torch.tensor([[10.0, 200.0]]), torch.tensor([-30.0]))
    assert isinstance(t, torch.Tensor) and t.shape == (1, 2, 3) and t.dtype == torch.float32
    tra, tdec = unit_to_radec(t)
    torch.testing.assert_close(tra, torch.tensor([[10.0, 200.0]]))
    torch.testing.assert_close(tdec, torch.tensor([[-30.0, -30.0]]))
    _, dec_pole = unit_to_radec(np.array([[0.0, 0.0, 1.0], [0.0, 0.0, -3.0]]))
    np.testing.assert_array_equal(dec_pole, [90.0, -90.0])
    assert unit_to_radec(np.array([1.0, -1e-300, 0.0]))[0] < 360.0
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        unit_to_radec(np.zeros((4, 2)))


def _members(n_sets=4, n=30, seed=0):
    """(B, N, 6) features: magnitude, X, Y, Z, colour, P; a compact cluster per set."""
    rng = np.random.default_rng(seed)
    ra = rng.uniform(0, 360, (n_sets, 1)) + rng.normal(0, 0.1, (n_sets, n))
    dec = np.clip(rng.uniform(-60, 60, (n_sets, 1)) + rng.normal(0, 0.1, (n_sets, n)), -89, 89)
    other = rng.normal(size=(n_sets, n, 3))
    xyz = radec_to_unit(ra, dec)
    return np.concatenate([other[..., :1], xyz, other[..., 1:]], axis=-1)


def test_rotation_preserves_separations_and_leaves_other_columns():
    x = _members()
    cols = (1, 2, 3)
    R = random_rotation_matrices(4, torch.Generator().manual_seed(2), dtype=torch.float64)
    out = rotate_unit_vectors(x, cols, R.numpy())  # numpy, one rotation per set
    assert isinstance(out, np.ndarray) and out.shape == x.shape
    np.testing.assert_array_equal(out[..., [0, 4, 5]], x[..., [0, 4, 5]])
    v, w = x[..., 1:4], out[..., 1:4]
    np.testing.assert_allclose(v @ np.swapaxes(v, 1, 2), w @ np.swapaxes(w, 1, 2), atol=1e-12)
    assert not np.allclose(v, w)
    np.testing.assert_allclose(w[1], v[1] @ R[1].numpy().T)  # v' = R v
    # torch, float32, batched and one shared rotation, (N, F) input; x itself untouched
    xt = torch.from_numpy(x).float()
    before = xt.clone()
    out_t = rotate_unit_vectors(xt, cols, R)
    assert out_t.dtype == torch.float32 and torch.equal(xt, before)
    torch.testing.assert_close(out_t, torch.from_numpy(out).float(), atol=1e-6, rtol=1e-6)
    shared = rotate_unit_vectors(xt[0], (-5, -4, -3), R[0])  # negative indices
    torch.testing.assert_close(shared, out_t[0])
    with pytest.raises(ValueError, match="distinct"):
        rotate_unit_vectors(x, (1, 1, 2), R)
    with pytest.raises(ValueError, match="out of range"):
        rotate_unit_vectors(x, (4, 5, 6), R)
    with pytest.raises(ValueError, match="batch of rotations"):
        rotate_unit_vectors(x[0], cols, R)
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        rotate_unit_vectors(x, cols, np.eye(4))


def test_random_sky_rotation_on_a_padded_batch():
    x = torch.from_numpy(_members(n_sets=3, n=8)).float()
    mask = torch.arange(8).unsqueeze(0) < torch.tensor([[8], [3], [0]])
    x = torch.where(mask.unsqueeze(-1), x, torch.full_like(x, float("nan")))
    aug = RandomSkyRotation((1, 2, 3), generator=torch.Generator().manual_seed(0))
    x_rot, mask_out = aug(x, mask)
    assert mask_out is mask and x_rot.shape == x.shape
    assert torch.equal(x_rot[~mask].isnan(), x[~mask].isnan())  # padded slots unchanged
    real = mask.unsqueeze(-1).expand_as(x)
    assert torch.equal(x_rot[..., [0, 4, 5]][real[..., :3]], x[..., [0, 4, 5]][real[..., :3]])
    for b, n in enumerate([8, 3]):
        v, w = x[b, :n, 1:4], x_rot[b, :n, 1:4]
        torch.testing.assert_close(w @ w.T, v @ v.T, atol=1e-5, rtol=0)  # separations kept
        torch.testing.assert_close(w.norm(dim=-1), torch.ones(n))
        assert not torch.allclose(v, w, atol=1e-3)
    # one rotation per set: different sets get different rotations; the generator is seeded
    x_rot2, _ = RandomSkyRotation((1, 2, 3), torch.Generator().manual_seed(0))(x, mask)
    assert torch.equal(x_rot2[mask], x_rot[mask])
    same = torch.from_numpy(_members(n_sets=2, n=4)).float()[:1].expand(2, 4, 6)
    both, _ = aug(same, torch.ones(2, 4, dtype=torch.bool))
    assert not torch.allclose(both[0], both[1])
    with pytest.raises(ValueError, match="distinct"):
        RandomSkyRotation((1, 2, 2))
    assert "columns=(1, 2, 3)" in repr(aug)


def test_rotation_under_bf16_autocast_keeps_the_input_dtype():
    """Mixed-precision training: the matmul runs in bf16, the batch stays float32."""
    x = torch.randn(3, 7, 5)
    mask = torch.ones(3, 7, dtype=torch.bool)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = RandomSkyRotation((2, 3, 4))(x, mask)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y[..., :2], x[..., :2], rtol=0, atol=0)
    torch.testing.assert_close(y[..., 2:].norm(dim=-1), x[..., 2:].norm(dim=-1), rtol=2e-2, atol=0)
