"""Reader for NBODY6++ ``OUT3`` snapshot files (``conf.3_<T>``).

NBODY6++ (``src/Main/output.F`` of github.com/nbodyx/Nbody6ppGPU, subroutine
``OUTPUT``) writes one snapshot per file with two Fortran unformatted
sequential ``WRITE (3)`` statements::

    WRITE (3) NTOT, MODEL, NRUN, NK
    WRITE (3) (AS(K),K=1,NK), (BODYS(J),J=1,NTOT), (RHOS(J),J=1,NTOT),
              (XNS(J),J=1,NTOT), ((XS(K,J),K=1,3),J=1,NTOT),
              ((VS(K,J),K=1,3),J=1,NTOT), (PHI(J),J=1,NTOT), (NAME(J),J=1,NTOT)

The same record order is read by ``_get_nbody6pp_conf3`` in
``clustertools/io/nbody6pp.py`` (github.com/webbjj/clustertools). Each record
is framed by a leading and a trailing record-length marker (gfortran: 4-byte
signed integer, the byte count of the payload). The byte layout, checked
against the sample files ``conf.3_0`` / ``conf.3_20`` (550,112 bytes,
NTOT = 12,500, little-endian, 4-byte markers)::

    offset          size        content
    0               4           marker = 16
    4               4 x int32   NTOT, MODEL, NRUN, NK      (12500, 1, 1, 20)
    20              4           marker = 16
    24              4           marker = 4*NK + 40*NTOT    (550,080)
    28              NK float32  AS(1..NK), scalars (table below)
    28 + 4*NK       NTOT f4     BODYS  masses              [N-body mass]
                    NTOT f4     RHOS   local densities
                    NTOT f4     XNS    (XNDBL; neighbour-density diagnostic)
                    3*NTOT f4   XS(3,NTOT) positions, x1 y1 z1 x2 ... [N-body length]
                    3*NTOT f4   VS(3,NTOT) velocities, same order     [N-body velocity]
                    NTOT f4     PHI    potentials
                    NTOT int32  NAME   particle identities
    end - 4         4           marker = 4*NK + 40*NTOT

``AS`` is ``REAL*4`` (``AS(20)``, ``NK = 20``); slots set in ``OUTPUT``, with
the values found in ``conf.3_0`` / ``conf.3_20``:

==== ============ ============================================ ===================
AS   variable     meaning                                      conf.3_0 / conf.3_20
==== ============ ============================================ ===================
1    TTOT         time [N-body]                                0 / 20
2    NPAIRS       number of KS pairs (as a real)               0 / 0
3    RBAR         length unit [pc]                             8.0
4    ZMBAR        mass unit [Msun]                             7574.082
5    RTIDE        tidal radius [N-body]                        2801.69
6    TIDAL(4)     tidal term                                   7.78e-6
7-9  RDENS(1:3)   density centre [N-body]                      ~0.01-0.05
10   TTOT/TCR0    time in initial crossing times               0 / 7.071
11   TSCALE       time unit [Myr] (TSTAR)                      3.88356
12   VSTAR        velocity unit [km/s]                         2.01790
13   RC           core radius [N-body]                         0.286 / 0.387
14   NC           core membership                              983 / 860
15   VC           core velocity [N-body]                       0.906 / 0.743
16   RHOM         maximum mass density                         31.5 / 85.6
17   CMAX         maximum density contrast                     12.7 / 4.47
18   RSCALE       half-mass radius [N-body]                    0.768 / 1.069
19   RSMIN        smallest regularization distance             100
20   DMIN1        smallest two-body separation                 100 / 1.4e-5
==== ============ ============================================ ===================

``NTOT = N + NPAIRS``: the KS binary components are stored individually in
rows ``1..2*NPAIRS`` and their centres of mass in rows ``N+1..NTOT``. The
reader keeps the first ``N = NTOT - NPAIRS`` rows (every individual star once)
and drops the centre-of-mass rows, so that masses are not counted twice.
Positions are as written (not re-centred on ``RDENS``).

Byte order and marker size are detected from the header record: the first
marker must read 16 (four default ``INTEGER``) or 32 (``-i8`` builds, then
``NAME`` is int64 too) in either little- or big-endian order, with 4-byte
(gfortran, ifort) or 8-byte (old g77 on 64-bit) markers; the trailing marker
must repeat it. gfortran's sub-records (negative markers, records over 2 GiB)
and files holding more than one snapshot are rejected with
:class:`~astrobatch.errors.InputError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from astrobatch.errors import InputError
from astrobatch.io.errors import guarded

__all__ = ["Out3Snapshot", "read_out3"]

#: 0-based indices into ``AS`` of the scalars used by the reader.
AS_TTOT, AS_NPAIRS, AS_RBAR, AS_ZMBAR, AS_TSTAR, AS_VSTAR = 0, 1, 2, 3, 10, 11
#: Minimum ``NK`` holding every scalar above.
MIN_NK = AS_VSTAR + 1
#: Per-star real (float32) words in the data record: BODYS, RHOS, XNS, XS(3), VS(3), PHI.
N_REAL_WORDS = 10


@dataclass(frozen=True, eq=False)
class Out3Snapshot:
    """One NBODY6++ ``OUT3`` snapshot converted to physical units.

    Immutable record; compared by identity (the fields hold numpy arrays).

    Parameters
    ----------
    path : str
        The file that was read.
    time_nbody : float
        Time ``TTOT`` (``AS(1)``) in N-body units.
    time_myr : float
        Time in Myr, ``time_nbody * tstar_myr``.
    n_stars : int
        Number of individual stars ``N = NTOT - NPAIRS`` (binary centre-of-mass
        rows are dropped).
    mass : numpy.ndarray, shape (n_stars,), float64
        Masses in Msun (``BODYS * ZMBAR``).
    pos : numpy.ndarray, shape (n_stars, 3), float64
        Positions in pc (``XS * RBAR``), in the simulation frame (not re-centred).
    vel : numpy.ndarray, shape (n_stars, 3), float64
        Velocities in km/s (``VS * VSTAR``).
    name : numpy.ndarray, shape (n_stars,), int64
        NBODY6 particle identities ``NAME``.
    rbar_pc : float
        Length unit in pc (``AS(3)``).
    zmbar_msun : float
        Mass unit in Msun (``AS(4)``).
    tstar_myr : float
        Time unit in Myr (``AS(11)``, ``TSCALE``).
    vstar_kms : float
        Velocity unit in km/s (``AS(12)``).
    scalars : numpy.ndarray, shape (NK,), float64
        The raw ``AS`` array, in N-body units where applicable (see the module
        docstring for the meaning of each slot).
    """

    path: str
    time_nbody: float
    time_myr: float
    n_stars: int
    mass: np.ndarray
    pos: np.ndarray
    vel: np.ndarray
    name: np.ndarray
    rbar_pc: float
    zmbar_msun: float
    tstar_myr: float
    vstar_kms: float
    scalars: np.ndarray


def _marker(buf: bytes, offset: int, dtype: np.dtype) -> int | None:
    """Return the record marker at ``offset``, or None if the file ends before it."""
    if offset + dtype.itemsize > len(buf):
        return None
    return int(np.frombuffer(buf, dtype=dtype, count=1, offset=offset)[0])


def _detect_framing(buf: bytes, path: str) -> tuple[str, np.dtype, np.dtype]:
    """Find the byte order, marker dtype and integer dtype from the header record."""
    if len(buf) < 8:
        raise InputError(
            f"file is {len(buf)} bytes long; expected an NBODY6++ OUT3 file starting with "
            "a 16-byte header record (NTOT, MODEL, NRUN, NK) framed by record markers",
            path=path,
            key="record 1",
        )
    for order in ("<", ">"):
        for marker_size in (4, 8):
            mdt = np.dtype(f"{order}i{marker_size}")
            head = _marker(buf, 0, mdt)
            if head not in (16, 32):
                continue
            tail = _marker(buf, marker_size + head, mdt)
            if tail == head:
                idt = np.dtype(f"{order}i{head // 4}")
                return order, mdt, idt
    first = np.frombuffer(buf, dtype="<i4", count=1)[0]
    raise InputError(
        "expected record 1 (NTOT, MODEL, NRUN, NK) framed by matching 4- or 8-byte record "
        f"markers of value 16 (or 32 for 8-byte integers) in either byte order; "
        f"got a first marker of {int(first)} (little-endian int32) and no matching framing",
        path=path,
        key="record 1",
    )


def _check_finite(arr: np.ndarray, path: str, key: str) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        first = int(np.flatnonzero(bad.reshape(len(arr), -1).any(axis=1))[0])
        raise InputError(
            f"expected finite values; {int(bad.sum())} non-finite, first at star index {first}",
            path=path,
            key=key,
        )


@guarded("NBODY6++ OUT3 snapshot")
def read_out3(path: str | Path) -> Out3Snapshot:
    """Read an NBODY6++ ``OUT3`` (``conf.3_<T>``) snapshot and convert it to physical units.

    Parameters
    ----------
    path : str or pathlib.Path
        The Fortran unformatted file (layout in the module docstring).

    Returns
    -------
    Out3Snapshot
        Masses in Msun, positions in pc, velocities in km/s, time in N-body units
        and in Myr, plus the raw ``AS`` scalars.

    Raises
    ------
    InputError
        If the file is missing or unreadable, truncated, has record markers that
        do not match, ``NTOT <= 0``, ``NK`` too small, an invalid ``NPAIRS``,
        non-positive unit scalings, non-finite values, or trailing bytes after
        the snapshot.
    """
    spath = str(path)
    try:
        buf = Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError(
            "file not found; expected an NBODY6++ OUT3 snapshot (conf.3_<T>)", path=spath
        ) from None
    except OSError as exc:
        raise InputError(f"cannot read file: {exc}", path=spath) from None

    order, mdt, idt = _detect_framing(buf, spath)
    msize = mdt.itemsize
    isize = idt.itemsize
    head_len = 4 * isize

    ntot, model, nrun, nk = (int(v) for v in np.frombuffer(buf, idt, count=4, offset=msize))
    del model, nrun
    if ntot <= 0:
        raise InputError(
            f"expected NTOT > 0 stars in the header record, got NTOT = {ntot}",
            path=spath,
            key="NTOT",
        )
    if nk < MIN_NK:
        raise InputError(
            f"expected NK >= {MIN_NK} header scalars (AS(12) = VSTAR is needed), got NK = {nk}",
            path=spath,
            key="NK",
        )

    # Record 2: AS(NK), 10 float32 words per star, then NAME.
    rec2_start = 2 * msize + head_len
    expected = 4 * nk + (4 * N_REAL_WORDS + isize) * ntot
    shape_txt = f"4*NK + {4 * N_REAL_WORDS + isize}*NTOT = {expected} bytes (NK={nk}, NTOT={ntot})"
    lead = _marker(buf, rec2_start, mdt)
    if lead is None:
        raise InputError(
            f"file truncated after the header: expected record 2 of {shape_txt}, "
            f"file is {len(buf)} bytes",
            path=spath,
            key="record 2",
        )
    if lead != expected:
        raise InputError(
            f"expected record 2 of {shape_txt}, got a leading record marker of {lead}",
            path=spath,
            key="record 2",
        )
    data_start = rec2_start + msize
    total = data_start + expected + msize
    if len(buf) < total:
        raise InputError(
            f"file truncated: expected record 2 of {shape_txt} and a file of {total} bytes, "
            f"file is {len(buf)} bytes",
            path=spath,
            key="record 2",
        )
    trail = _marker(buf, data_start + expected, mdt)
    if trail != lead:
        raise InputError(
            f"expected the trailing marker of record 2 to repeat {lead}, got {trail}",
            path=spath,
            key="record 2",
        )
    if len(buf) != total:
        raise InputError(
            f"expected exactly one snapshot ({total} bytes), file has {len(buf) - total} "
            "trailing bytes (multi-snapshot OUT3 files are not supported)",
            path=spath,
            key="record 3",
        )

    fdt = np.dtype(f"{order}f4")
    off = data_start
    scalars = np.frombuffer(buf, fdt, count=nk, offset=off).astype(np.float64)
    off += 4 * nk
    reals = np.frombuffer(buf, fdt, count=N_REAL_WORDS * ntot, offset=off)
    off += 4 * N_REAL_WORDS * ntot
    names = np.frombuffer(buf, idt, count=ntot, offset=off).astype(np.int64)

    used = {
        "AS(1) TTOT": AS_TTOT,
        "AS(2) NPAIRS": AS_NPAIRS,
        "AS(3) RBAR": AS_RBAR,
        "AS(4) ZMBAR": AS_ZMBAR,
        "AS(11) TSTAR": AS_TSTAR,
        "AS(12) VSTAR": AS_VSTAR,
    }
    for key, k in used.items():
        if not np.isfinite(scalars[k]):
            raise InputError(f"expected a finite value, got {scalars[k]}", path=spath, key=key)
    for key in ("AS(3) RBAR", "AS(4) ZMBAR", "AS(11) TSTAR", "AS(12) VSTAR"):
        if scalars[used[key]] <= 0:
            raise InputError(
                f"expected a positive N-body unit scaling, got {scalars[used[key]]}",
                path=spath,
                key=key,
            )
    npairs_f = scalars[AS_NPAIRS]
    npairs = int(npairs_f)
    if npairs != npairs_f or npairs < 0 or 3 * npairs > ntot:
        raise InputError(
            f"expected an integer NPAIRS with 0 <= 3*NPAIRS <= NTOT = {ntot}, got {npairs_f}",
            path=spath,
            key="AS(2) NPAIRS",
        )
    n = ntot - npairs

    bodys = reals[:ntot]
    xs = reals[3 * ntot : 6 * ntot].reshape(ntot, 3)
    vs = reals[6 * ntot : 9 * ntot].reshape(ntot, 3)

    rbar = float(scalars[AS_RBAR])
    zmbar = float(scalars[AS_ZMBAR])
    tstar = float(scalars[AS_TSTAR])
    vstar = float(scalars[AS_VSTAR])
    mass = bodys[:n].astype(np.float64) * zmbar
    pos = xs[:n].astype(np.float64) * rbar
    vel = vs[:n].astype(np.float64) * vstar
    _check_finite(mass, spath, "BODYS")
    _check_finite(pos, spath, "XS")
    _check_finite(vel, spath, "VS")

    time_nbody = float(scalars[AS_TTOT])
    return Out3Snapshot(
        path=spath,
        time_nbody=time_nbody,
        time_myr=time_nbody * tstar,
        n_stars=n,
        mass=mass,
        pos=pos,
        vel=vel,
        name=names[:n].copy(),
        rbar_pc=rbar,
        zmbar_msun=zmbar,
        tstar_myr=tstar,
        vstar_kms=vstar,
        scalars=scalars,
    )
