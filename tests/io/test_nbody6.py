"""Tests of the NBODY6++ OUT3 (conf.3) reader."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from astrobatch.errors import InputError
from astrobatch.io.nbody6 import Out3Snapshot, read_out3

STAR_SETS = Path(__file__).resolve().parents[2] / "data" / "external" / "star_sets"
CONF0 = STAR_SETS / "conf.3_0"
CONF20 = STAR_SETS / "conf.3_20"

needs_real = pytest.mark.skipif(
    not CONF0.is_file() or not CONF20.is_file(),
    reason=f"real NBODY6++ samples conf.3_0 / conf.3_20 not found under {STAR_SETS}",
)


@pytest.fixture(scope="module")
def snap0() -> Out3Snapshot:
    if not CONF0.is_file():
        pytest.skip(f"real NBODY6++ sample {CONF0} not found")
    return read_out3(CONF0)


@pytest.fixture(scope="module")
def snap20() -> Out3Snapshot:
    if not CONF20.is_file():
        pytest.skip(f"real NBODY6++ sample {CONF20} not found")
    return read_out3(CONF20)


def write_out3(
    path: Path,
    *,
    scalars: np.ndarray,
    body: np.ndarray,
    x: np.ndarray,
    v: np.ndarray,
    name: np.ndarray,
    order: str = "<",
    marker: int = 4,
    int_size: int = 4,
    model: int = 1,
    nrun: int = 1,
) -> None:
    """Write a one-snapshot OUT3 file with the NBODY6++ record layout."""
    ntot = len(body)
    f4 = np.dtype(f"{order}f4")
    it = np.dtype(f"{order}i{int_size}")
    mt = np.dtype(f"{order}i{marker}")
    rng = np.random.default_rng(0)
    rho = rng.random(ntot).astype(f4)
    xns = rng.random(ntot).astype(f4)
    phi = rng.random(ntot).astype(f4)
    header = np.array([ntot, model, nrun, len(scalars)], dtype=it).tobytes()
    data = b"".join(
        [
            np.asarray(scalars, dtype=f4).tobytes(),
            np.asarray(body, dtype=f4).tobytes(),
            rho.tobytes(),
            xns.tobytes(),
            np.asarray(x, dtype=f4).tobytes(),  # C order (N, 3) == Fortran XS(3, N)
            np.asarray(v, dtype=f4).tobytes(),
            phi.tobytes(),
            np.asarray(name, dtype=it).tobytes(),
        ]
    )
    out = b""
    for rec in (header, data):
        m = np.array([len(rec)], dtype=mt).tobytes()
        out += m + rec + m
    path.write_bytes(out)


def _synthetic(n: int = 7, npairs: int = 0, rbar: float = 2.0, zmbar: float = 1000.0):
    rng = np.random.default_rng(42)
    scalars = np.zeros(20, dtype=np.float32)
    scalars[0] = 3.5  # TTOT
    scalars[1] = npairs
    scalars[2] = rbar
    scalars[3] = zmbar
    scalars[10] = 4.0  # TSTAR
    scalars[11] = 0.5  # VSTAR
    body = rng.random(n).astype(np.float32) / n
    x = rng.normal(size=(n, 3)).astype(np.float32)
    v = rng.normal(size=(n, 3)).astype(np.float32)
    name = np.arange(1, n + 1)
    return {"scalars": scalars, "body": body, "x": x, "v": v, "name": name}


# --------------------------------------------------------------------- real files


@needs_real
def test_real_file_sizes():
    assert CONF0.stat().st_size == 550_112
    assert CONF20.stat().st_size == 550_112


def test_real_header(snap0, snap20):
    for s in (snap0, snap20):
        assert isinstance(s, Out3Snapshot)
        assert s.n_stars == 12_500
        assert s.mass.shape == (12_500,) and s.mass.dtype == np.float64
        assert s.pos.shape == (12_500, 3) and s.pos.dtype == np.float64
        assert s.vel.shape == (12_500, 3) and s.vel.dtype == np.float64
        assert s.name.shape == (12_500,) and s.name.dtype == np.int64
        assert s.scalars.shape == (20,)
        assert s.rbar_pc == pytest.approx(8.0)
        assert s.zmbar_msun == pytest.approx(7574.08, abs=0.01)
        assert s.tstar_myr == pytest.approx(3.884, abs=1e-3)
        assert s.vstar_kms == pytest.approx(2.018, abs=1e-3)
    assert snap0.time_nbody == 0.0
    assert snap0.time_myr == 0.0
    assert snap20.time_nbody == pytest.approx(20.0)
    assert snap20.time_myr == pytest.approx(20 * 3.884, abs=0.05)
    assert snap20.time_myr == pytest.approx(77.7, abs=0.05)
    assert snap20.scalars[9] == pytest.approx(20 / (2 * np.sqrt(2)), rel=1e-5)  # TTOT/TCR0


def test_real_mass_and_names(snap0, snap20):
    assert snap0.mass.sum() == pytest.approx(snap0.zmbar_msun, rel=0.01)
    assert np.all(snap0.mass > 0)
    assert snap20.mass.sum() < snap0.mass.sum()  # stellar-evolution mass loss
    for s in (snap0, snap20):
        assert len(np.unique(s.name)) == s.n_stars
        assert s.name.min() >= 1
    assert np.array_equal(np.sort(snap0.name), np.arange(1, 12_501))


def _half_mass_radius(s: Out3Snapshot) -> float:
    centre = s.scalars[6:9] * s.rbar_pc  # RDENS
    r = np.linalg.norm(s.pos - centre, axis=1)
    order = np.argsort(r)
    cum = np.cumsum(s.mass[order])
    return float(r[order][np.searchsorted(cum, 0.5 * cum[-1])])


def test_real_positions_and_velocities(snap0, snap20):
    for s in (snap0, snap20):
        r_h = _half_mass_radius(s)
        assert 2.0 < r_h < 20.0
        # RSCALE = AS(18) is NBODY6's half-mass radius in N-body units
        assert r_h == pytest.approx(s.scalars[17] * s.rbar_pc, rel=0.1)
        sigma = s.vel.std(axis=0)
        assert np.all((sigma > 0.3) & (sigma < 5.0))  # km/s, ~ VSTAR / sqrt(2)
    assert np.abs(snap0.pos).max() < 100.0


@needs_real
def test_real_layout_independent_struct_check():
    """Star 0's x, star 1's vz and the last name, unpacked at hand-computed offsets."""
    raw = CONF0.read_bytes()
    n, nk = 12_500, 20
    base = 4 + 16 + 4 + 4 + 4 * nk  # markers + header + marker + AS
    x0 = struct.unpack_from("<f", raw, base + 4 * 3 * n)[0]
    vz1 = struct.unpack_from("<f", raw, base + 4 * 6 * n + 4 * 5)[0]
    last_name = struct.unpack_from("<i", raw, base + 4 * 10 * n + 4 * (n - 1))[0]
    s = read_out3(CONF0)
    assert s.pos[0, 0] == pytest.approx(x0 * s.rbar_pc, rel=1e-6)
    assert s.vel[1, 2] == pytest.approx(vz1 * s.vstar_kms, rel=1e-6)
    assert s.name[-1] == last_name


@needs_real
def test_real_file_byteswapped_reads_the_same(tmp_path):
    raw = np.frombuffer(CONF0.read_bytes(), dtype="<u4")  # every item is a 4-byte word
    swapped = tmp_path / "conf.3_0.be"
    swapped.write_bytes(raw.byteswap().tobytes())
    a, b = read_out3(CONF0), read_out3(swapped)
    assert b.path == str(swapped)
    for field in ("mass", "pos", "vel", "name", "scalars"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    assert (a.time_myr, a.rbar_pc, a.zmbar_msun) == (b.time_myr, b.rbar_pc, b.zmbar_msun)


@needs_real
@pytest.mark.parametrize("keep", [0, 6, 20, 30, 1000, 550_111])
def test_real_file_truncated(tmp_path, keep):
    bad = tmp_path / "conf.3_0.trunc"
    bad.write_bytes(CONF0.read_bytes()[:keep])
    with pytest.raises(InputError) as exc:
        read_out3(bad)
    assert exc.value.path == str(bad)
    assert str(bad) in str(exc.value)


@needs_real
def test_real_file_truncated_message(tmp_path):
    bad = tmp_path / "conf.3_0.trunc"
    bad.write_bytes(CONF0.read_bytes()[:-100])
    with pytest.raises(InputError, match=r"truncated.*550080 bytes.*NTOT=12500") as exc:
        read_out3(bad)
    assert exc.value.key == "record 2"


# --------------------------------------------------------------- synthetic files


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("marker", [4, 8])
@pytest.mark.parametrize("int_size", [4, 8])
def test_round_trip(tmp_path, order, marker, int_size):
    d = _synthetic()
    p = tmp_path / "conf.3_syn"
    write_out3(p, order=order, marker=marker, int_size=int_size, **d)
    s = read_out3(p)
    assert s.path == str(p)
    assert s.n_stars == 7
    assert s.time_nbody == 3.5
    assert s.time_myr == 14.0
    assert (s.rbar_pc, s.zmbar_msun, s.tstar_myr, s.vstar_kms) == (2.0, 1000.0, 4.0, 0.5)
    # scalings are powers of two or exactly representable: the conversion is exact
    assert np.array_equal(s.mass, d["body"].astype(np.float64) * 1000.0)
    assert np.array_equal(s.pos, d["x"].astype(np.float64) * 2.0)
    assert np.array_equal(s.vel, d["v"].astype(np.float64) * 0.5)
    assert np.array_equal(s.name, d["name"])
    assert np.array_equal(s.scalars, d["scalars"].astype(np.float64))
    assert s.mass.flags.c_contiguous and s.pos.flags.c_contiguous


def test_round_trip_inexact_scaling(tmp_path):
    d = _synthetic(n=5, rbar=8.0, zmbar=7574.08)
    p = tmp_path / "conf.3_syn"
    write_out3(p, **d)
    s = read_out3(p)
    zmbar = float(np.float32(7574.08))
    assert s.zmbar_msun == zmbar
    assert np.array_equal(s.mass, d["body"].astype(np.float64) * zmbar)


def test_binary_centre_of_mass_rows_dropped(tmp_path):
    # NTOT = N + NPAIRS: rows 0,1 are KS components, the last row is their c.m.
    d = _synthetic(n=6, npairs=1)
    d["body"][5] = d["body"][0] + d["body"][1]
    d["name"] = np.array([1, 2, 3, 4, 5, 5 + 1000])
    p = tmp_path / "conf.3_bin"
    write_out3(p, **d)
    s = read_out3(p)
    assert s.n_stars == 5
    assert np.array_equal(s.name, [1, 2, 3, 4, 5])
    assert np.array_equal(s.mass, d["body"][:5].astype(np.float64) * 1000.0)


def test_snapshot_is_frozen(tmp_path):
    p = tmp_path / "conf.3_syn"
    write_out3(p, **_synthetic())
    s = read_out3(p)
    with pytest.raises(AttributeError):
        s.n_stars = 3  # type: ignore[misc]


# ------------------------------------------------------------------------ errors


def test_missing_file(tmp_path):
    p = tmp_path / "nope" / "conf.3_0"
    with pytest.raises(InputError, match="not found") as exc:
        read_out3(p)
    assert exc.value.path == str(p)


def test_zero_stars(tmp_path):
    d = _synthetic(n=0)
    p = tmp_path / "conf.3_empty"
    write_out3(p, **d)
    with pytest.raises(InputError, match=r"NTOT > 0.*NTOT = 0") as exc:
        read_out3(p)
    assert exc.value.key == "NTOT"


def test_negative_ntot(tmp_path):
    p = tmp_path / "conf.3_neg"
    write_out3(p, **_synthetic())
    raw = bytearray(p.read_bytes())
    raw[4:8] = struct.pack("<i", -5)
    p.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="NTOT = -5"):
        read_out3(p)


def test_small_nk(tmp_path):
    d = _synthetic()
    d["scalars"] = d["scalars"][:11]
    p = tmp_path / "conf.3_nk"
    write_out3(p, **d)
    with pytest.raises(InputError, match="NK >= 12") as exc:
        read_out3(p)
    assert exc.value.key == "NK"


def test_bad_first_marker(tmp_path):
    p = tmp_path / "not_out3"
    p.write_bytes(b"hello, this is not a Fortran file at all")
    with pytest.raises(InputError, match="record 1"):
        read_out3(p)


def test_mismatched_trailing_marker(tmp_path):
    p = tmp_path / "conf.3_syn"
    write_out3(p, **_synthetic())
    raw = bytearray(p.read_bytes())
    raw[-4:] = struct.pack("<i", 12345)
    p.write_bytes(bytes(raw))
    with pytest.raises(InputError, match=r"trailing marker.*12345") as exc:
        read_out3(p)
    assert exc.value.key == "record 2"


def test_wrong_data_record_length(tmp_path):
    p = tmp_path / "conf.3_syn"
    write_out3(p, **_synthetic())
    raw = bytearray(p.read_bytes())
    raw[24:28] = struct.pack("<i", 999)
    p.write_bytes(bytes(raw))
    with pytest.raises(InputError, match=r"expected record 2 of 4\*NK \+ 44\*NTOT = 388 bytes"):
        read_out3(p)


def test_trailing_bytes(tmp_path):
    p = tmp_path / "conf.3_syn"
    write_out3(p, **_synthetic())
    p.write_bytes(p.read_bytes() * 2)
    with pytest.raises(InputError, match="trailing bytes"):
        read_out3(p)


@pytest.mark.parametrize(("field", "key"), [("body", "BODYS"), ("x", "XS"), ("v", "VS")])
def test_non_finite_star_values(tmp_path, field, key):
    d = _synthetic()
    d[field][3] = np.nan if field != "v" else np.inf
    p = tmp_path / "conf.3_nan"
    write_out3(p, **d)
    with pytest.raises(InputError, match="first at star index 3") as exc:
        read_out3(p)
    assert exc.value.key == key


@pytest.mark.parametrize(("slot", "value", "match"), [(0, np.nan, "finite"), (2, 0.0, "positive")])
def test_bad_scalars(tmp_path, slot, value, match):
    d = _synthetic()
    d["scalars"][slot] = value
    p = tmp_path / "conf.3_as"
    write_out3(p, **d)
    with pytest.raises(InputError, match=match):
        read_out3(p)


@pytest.mark.parametrize("npairs", [0.5, -1, 3])
def test_bad_npairs(tmp_path, npairs):
    d = _synthetic(n=7)
    d["scalars"][1] = npairs
    p = tmp_path / "conf.3_np"
    write_out3(p, **d)
    with pytest.raises(InputError, match="NPAIRS"):
        read_out3(p)
