"""Peak memory (RSS) of star_sets ``prepare`` as the raw data set grows.

Claim under test (README, "prepare"): shards are written block by block and the
feature scaler is fitted on a sample of at most ``scaler_sample_rows`` rows, so
the peak resident memory of :func:`astrobatch.studies.star_sets.prepare.prepare`
is bounded by ``chunk_rows`` and ``scaler_sample_rows`` (plus per-snapshot
columns, a few numbers per snapshot), not proportional to the raw file size.

Method
    A base raw file (``--raw``, default ``data/raw/star_sets/snapshots.h5``
    when it exists, otherwise a small simulated one) is optionally cut to its
    first ``--base-runs`` runs, then replicated ``k`` times for each factor
    ``k`` of ``--factors``: every replica's snapshots get new run ids
    (``<run_id>~r<j>``), so ``prepare`` sees ``k`` times more runs, snapshots and
    stars, and the file is ``k`` times larger (same layout and gzip settings as
    :func:`astrobatch.io.sets.write_csr_h5`, written one column at a time, so
    this script holds at most one replicated column in memory). Each ``prepare`` runs in a fresh
    Python subprocess, which reports its own peak RSS (``VmHWM`` of
    ``/proc/self/status``: the high-water mark of the process image, reset by
    ``exec``), its RSS after the imports (baseline), its peak up to the end of
    the scaler fit, and (after resetting the high-water mark through
    ``/proc/self/clear_refs``) the peak of the shard-writing phase, so any growth
    can be attributed to one phase or the other. ``ru_maxrss`` from ``os.wait4`` (or
    ``RUSAGE_CHILDREN``) is recorded too, as a cross-check only: on Linux the
    high-water mark survives ``exec``, so it also counts the RSS the parent had
    when it forked the child (this script holds the base data set, ~100 MiB).

Usage::

    .venv/bin/python benchmarks/bench_prepare_memory.py                 # ~2 min, 1x..8x
    .venv/bin/python benchmarks/bench_prepare_memory.py --base-runs 0 \\
        --factors 1 2 4 8 16 32 --out benchmarks/results/prepare_memory_32x.json

Output: a markdown table on stdout and, with ``--out``, a JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from _common import OtherLoad

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RAW = ROOT / "data/raw/star_sets/snapshots.h5"
MiB = 1024**2

# Code run in the fresh child process: prepare one raw file, report timings and RSS (KiB).
CHILD = r"""
import json, sys, time
args = json.loads(sys.argv[1])
from astrobatch.studies.star_sets.params import StarSetsData
import astrobatch.studies.star_sets.prepare as P

def status_kib(key):  # VmHWM: peak RSS of this process image (reset by exec), VmRSS: current
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])

out = {"baseline_kib": status_kib("VmRSS"), "peak_after_imports_kib": status_kib("VmHWM")}
fit = P._fit_feature_scaler

def fit_and_record(*a, **k):
    t = time.perf_counter()
    s = fit(*a, **k)
    out["scaler_fit_s"] = time.perf_counter() - t
    out["peak_after_scaler_kib"] = status_kib("VmHWM")
    try:  # reset the high-water mark: the final VmHWM is then the shard-writing phase's peak
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        out["hwm_reset"] = True
    except OSError:
        out["hwm_reset"] = False
    return s

P._fit_feature_scaler = fit_and_record
params = StarSetsData(
    raw_path=args["raw"], chunk_rows=args["chunk_rows"],
    scaler_sample_rows=args["scaler_sample_rows"],
)
t = time.perf_counter()
manifest = P.prepare(params, args["out_dir"])
out["time_s"] = time.perf_counter() - t
out["peak_write_kib"] = status_kib("VmHWM") if out["hwm_reset"] else None
out["peak_kib"] = max(out["peak_after_scaler_kib"], status_kib("VmHWM"))
out["n_stars"] = manifest["n_stars"]
with open(args["result"], "w") as fh:
    json.dump(out, fh)
"""


def machine_info() -> dict:
    """CPU model, core count, RAM and library versions of this machine."""
    import h5py

    model = platform.processor() or "unknown"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "ram_gib": round(mem / 1024**3, 1),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "h5py": h5py.__version__,
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
    }


def load_base(raw: Path | None, base_runs: int, workdir: Path):
    """The base raw data set in memory (a :class:`~astrobatch.io.sets.CSRSets`).

    Parameters
    ----------
    raw : pathlib.Path or None
        Raw HDF5 file; None simulates a small one (12 runs x 5 snapshots).
    base_runs : int
        Keep only the snapshots of the first ``base_runs`` runs (0 = all).
    workdir : pathlib.Path
        Where a simulated file is written.
    """
    from astrobatch.io.sets import read_csr_h5

    if raw is None:
        from astrobatch.studies.star_sets.params import StarSetsSimulate
        from astrobatch.studies.star_sets.simulate import simulate_to_file

        raw = workdir / "simulated.h5"
        print(f"simulating a base raw file (12 runs x 5 snapshots) into {raw} ...", flush=True)
        simulate_to_file(StarSetsSimulate(n_runs=12, snapshots_per_run=5), None, raw)
    data = read_csr_h5(raw)
    if base_runs:
        runs = list(dict.fromkeys(data.sets["run_id"].astype(str)))[:base_runs]
        keep = np.flatnonzero(np.isin(data.sets["run_id"].astype(str), runs))
        data = data.select(keep)
    return data, raw


def write_replicated(path: Path, base, factor: int) -> None:
    """Write ``factor`` copies of ``base`` as one raw file, each copy with new run ids.

    Same layout and compression as :func:`astrobatch.io.sets.write_csr_h5`
    (float32 element columns, chunks of 262144 rows, gzip level 1), written one
    column at a time.
    """
    import h5py

    from astrobatch.io.sets import FORMAT_NAME, FORMAT_VERSION

    n_el, n_sets = base.n_elements, base.n_sets
    total = n_el * factor
    ptr = np.concatenate([[0]] + [base.ptr[1:] + j * n_el for j in range(factor)]).astype(np.int64)
    with h5py.File(path, "w") as f:
        f.attrs["format"] = FORMAT_NAME
        f.attrs["version"] = FORMAT_VERSION
        f.attrs["element_group"] = "stars"
        f.attrs["set_group"] = "snapshots"
        f.create_dataset("ptr", data=ptr)
        g = f.create_group("stars")
        chunk = (min(max(total, 1), 262144),)
        for k, v in base.elements.items():
            g.create_dataset(
                k,
                data=np.tile(np.asarray(v, dtype=np.float32), factor),
                chunks=chunk,
                compression="gzip",
                compression_opts=1,
            )
        s = f.create_group("snapshots")
        for k, v in base.sets.items():
            if k == "run_id":
                ids = v.astype(str)
                col = np.concatenate([ids] + [np.char.add(ids, f"~r{j}") for j in range(1, factor)])
                s.create_dataset(k, data=col.astype(object).astype(h5py.string_dtype("utf-8")))
            elif k == "snapshot_id":
                s.create_dataset(k, data=np.arange(n_sets * factor, dtype=np.int64))
            elif np.asarray(v).dtype.kind in "US":
                col = np.tile(np.asarray(v).astype(str), factor)
                s.create_dataset(k, data=col.astype(object).astype(h5py.string_dtype("utf-8")))
            else:
                s.create_dataset(k, data=np.tile(np.asarray(v), factor))


def run_child(raw: Path, out_dir: Path, chunk_rows: int, scaler_rows: int) -> dict:
    """Run ``prepare`` in a fresh interpreter; return its report plus the exact peak RSS."""
    result = out_dir.with_suffix(".result.json")
    args = {
        "raw": str(raw),
        "out_dir": str(out_dir),
        "result": str(result),
        "chunk_rows": chunk_rows,
        "scaler_sample_rows": scaler_rows,
    }
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(args)])
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # already reaped
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"prepare child failed (exit {proc.returncode}) on {raw}")
    rep = json.loads(result.read_text())
    # ru_maxrss of the child (KiB): on Linux it also counts the RSS this (parent) process had
    # when it forked the child, because the high-water mark survives exec; kept as a
    # cross-check only. The figure reported is the child's VmHWM (its own peak since exec).
    rep["ru_maxrss_kib"] = usage.ru_maxrss
    rep["wall_s"] = wall
    return rep


def markdown(rows: list[dict]) -> str:
    """The results as a markdown table."""
    head = (
        "| factor | snapshots | stars (M) | raw file (MB) | peak RSS (MiB) | after imports (MiB) "
        "| peak − imports (MiB) | peak in scaler fit (MiB) | peak in shard writing (MiB) "
        "| prepare (s) | stars/s (M) |\n"
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = [
        f"| {r['factor']}x | {r['snapshots']} | {r['stars'] / 1e6:.2f} | {r['raw_mb']:.0f} "
        f"| {r['peak_rss_mib']:.0f} | {r['baseline_mib']:.0f} | {r['delta_mib']:.0f} "
        f"| {r['peak_scaler_phase_mib']:.0f} | {r['peak_write_phase_mib']:.0f} | {r['time_s']:.1f} "
        f"| {r['stars'] / r['time_s'] / 1e6:.2f} |"
        for r in rows
    ]
    return head + "\n".join(lines)


def verdict(rows: list[dict], scaler_rows: int) -> str:
    """One line: does the peak RSS grow with the file once the scaler sample is capped.

    Below ``scaler_rows`` training stars the scaler sample holds every training
    row, so memory is expected to grow up to that point; the judgement uses the
    rows at or above it.
    """
    sat = [r for r in rows if r["train_stars"] >= scaler_rows]
    if len(sat) < 2:
        return (
            f"fewer than two sizes with >= {scaler_rows} training stars (the scaler-sample cap); "
            "use larger --factors or --base-runs 0 to judge the growth"
        )
    stars = np.array([r["stars"] for r in sat], dtype=float) / 1e6
    peak = np.array([r["peak_rss_mib"] for r in sat], dtype=float)
    slope = float(np.polyfit(stars, peak, 1)[0])
    growth, size = peak[-1] / peak[0], stars[-1] / stars[0]
    flat = growth < 1.25 and growth - 1 < 0.1 * (size - 1)
    kind = "roughly flat (bounded)" if flat else "GROWS with the input"
    return (
        f"from {sat[0]['factor']}x to {sat[-1]['factor']}x (scaler sample capped): peak RSS "
        f"x{growth:.2f} while the data grew x{size:.0f}: {kind}; "
        f"linear fit {slope:.2f} MiB per million stars"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--raw", type=Path, default=None, help="base raw HDF5 (default: see module)")
    ap.add_argument("--simulate", action="store_true", help="simulate the base file")
    ap.add_argument("--base-runs", type=int, default=12, help="first N runs of the base; 0=all")
    ap.add_argument("--factors", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--chunk-rows", type=int, default=65536)
    ap.add_argument("--scaler-sample-rows", type=int, default=500_000)
    ap.add_argument("--workdir", type=Path, default=None, help="temp folder (default: system)")
    ap.add_argument("--keep", action="store_true", help="keep generated files")
    ap.add_argument("--out", type=Path, default=None, help="JSON results file")
    a = ap.parse_args(argv)

    raw = None if a.simulate else (a.raw or (DEFAULT_RAW if DEFAULT_RAW.is_file() else None))
    other = OtherLoad()
    work = Path(tempfile.mkdtemp(prefix="bench_prepare_", dir=a.workdir))
    rows = []
    try:
        base, raw = load_base(raw, a.base_runs, work)
        n_runs = len(set(base.sets["run_id"].astype(str)))
        print(
            f"base: {raw} ({n_runs} runs, {base.n_sets} snapshots, {base.n_elements} stars); "
            f"chunk_rows={a.chunk_rows} scaler_sample_rows={a.scaler_sample_rows}",
            flush=True,
        )
        for k in sorted(a.factors):
            path = work / f"raw_x{k}.h5"
            t = time.perf_counter()
            write_replicated(path, base, k)
            t_write = time.perf_counter() - t
            rep = run_child(path, work / f"prepared_x{k}", a.chunk_rows, a.scaler_sample_rows)
            row = {
                "factor": k,
                "runs": n_runs * k,
                "snapshots": base.n_sets * k,
                "stars": base.n_elements * k,
                "train_stars": rep["n_stars"]["train"],
                "raw_mb": path.stat().st_size / 1e6,
                "peak_rss_mib": rep["peak_kib"] / 1024,
                "baseline_mib": rep["baseline_kib"] / 1024,
                "delta_mib": (rep["peak_kib"] - rep["baseline_kib"]) / 1024,
                "ru_maxrss_mib": rep["ru_maxrss_kib"] / 1024,
                "peak_scaler_phase_mib": rep["peak_after_scaler_kib"] / 1024,
                "peak_write_phase_mib": (rep["peak_write_kib"] or 0) / 1024,
                "scaler_fit_s": rep["scaler_fit_s"],
                "time_s": rep["time_s"],
                "write_raw_s": t_write,
            }
            rows.append(row)
            print(
                f"  {k}x: {row['stars'] / 1e6:.2f} M stars, {row['raw_mb']:.0f} MB, "
                f"peak RSS {row['peak_rss_mib']:.0f} MiB, prepare {row['time_s']:.1f} s",
                flush=True,
            )
            if not a.keep:
                path.unlink()
                shutil.rmtree(work / f"prepared_x{k}", ignore_errors=True)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(markdown(rows))
    print()
    print(verdict(rows, a.scaler_sample_rows))
    busy = other.cores()
    if busy is not None:
        print(f"other processes used {busy:.2f} of {os.cpu_count()} cores on average (timings)")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        result = {
            "benchmark": "prepare_memory",
            "machine": {**machine_info(), "other_processes_cores": busy},
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
            "base": {"raw": str(raw), "snapshots": base.n_sets, "stars": base.n_elements},
            "rows": rows,
            "verdict": verdict(rows, a.scaler_sample_rows),
        }
        a.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
