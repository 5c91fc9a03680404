"""Peak memory (RSS) of stellar_xp ``prepare`` and of one pretraining epoch as the data grow.

Claim under test (``astrobatch.studies.stellar_xp.prepare``, ``astrobatch.data.tables``):
prepare reads the pretraining HDF5 file and writes the shards in blocks of
``chunk_rows`` rows and fits the feature scaler on a sample of at most
``scaler_max_rows`` rows; the pretraining DataLoader reads ``buffer_chunks``
chunks at a time. Peak resident memory should therefore not grow with the
number of pretraining rows.

Method
    A base pretraining file of ``--base-rows`` simulated stars and a
    fine-tuning table of ``--finetune-rows`` stars are simulated once
    (:func:`~astrobatch.studies.stellar_xp.simulate.simulate_to_files`). For
    each factor k of ``--factors`` the base file is replicated k times into a
    new file (block by block; every replica gets new ``source_id`` values and
    new ``sslset0_part<k>`` keys), so prepare sees k times more rows and bytes
    (the last key stays the validation key). In a fresh Python subprocess each,
    (1) ``prepare`` runs on that file (``pretrain_sources`` from ``--sources``,
    default ``simulated`` so that only the growing file is read) and (2) one
    epoch of ``TableDataModule(stage="pretrain").train_dataloader()`` is
    iterated (batch ``--batch-size``, ``num_workers`` 0, each batch's tensors
    summed so they are touched). Each child reports its RSS after the imports
    and its peak RSS (``VmHWM`` of ``/proc/self/status``, the process's own
    high-water mark since ``exec``); the prepare child also reports its peak up
    to the end of the scaler fit (the high-water mark is then reset through
    ``/proc/self/clear_refs``, so the remaining peak is that of shard writing).

Usage::

    .venv/bin/python benchmarks/bench_stellar_xp_memory.py \\
        --out benchmarks/results/stellar_xp_memory_cpu.json          # 20k -> 200k rows, ~3 min

Output: a markdown table on stdout and, with ``--out``, a JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import OtherLoad
from bench_prepare_memory import machine_info

ROOT = Path(__file__).resolve().parents[1]

# Child 1: prepare one pretraining file; report RSS (KiB) and timings as JSON.
CHILD_PREPARE = r"""
import json, sys, time
args = json.loads(sys.argv[1])
from astrobatch.studies.stellar_xp.params import StellarXPParams
import astrobatch.studies.stellar_xp.prepare as P

def status_kib(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])

out = {"baseline_kib": status_kib("VmRSS"), "peak_after_imports_kib": status_kib("VmHWM")}
fit = P._feature_scaler

def fit_and_record(*a, **k):
    t = time.perf_counter()
    r = fit(*a, **k)
    out["scaler_fit_s"] = time.perf_counter() - t
    out["peak_after_scaler_kib"] = status_kib("VmHWM")
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        out["hwm_reset"] = True
    except OSError:
        out["hwm_reset"] = False
    return r

P._feature_scaler = fit_and_record
params = StellarXPParams.model_validate({"data": {
    "pretrain_sources": args["sources"], "pretrain_path": args["pretrain"],
    "finetune_path": args["finetune"], "chunk_rows": args["chunk_rows"],
    "scaler_max_rows": args["scaler_max_rows"],
}})
t = time.perf_counter()
manifest = P.prepare(params, args["out_dir"])
out["time_s"] = time.perf_counter() - t
out["peak_write_kib"] = status_kib("VmHWM") if out["hwm_reset"] else None
out["peak_kib"] = max(out["peak_after_scaler_kib"], status_kib("VmHWM"))
out["counts"] = manifest["counts"]
with open(args["result"], "w") as fh:
    json.dump(out, fh)
"""

# Child 2: one epoch of the pretraining DataLoader.
CHILD_EPOCH = r"""
import json, sys, time
args = json.loads(sys.argv[1])
import torch
from astrobatch.data.tables import TableDataModule

def status_kib(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])

torch.set_num_threads(1)
out = {"baseline_kib": status_kib("VmRSS")}
dm = TableDataModule(args["prepared"], "pretrain", batch_size=args["batch_size"], seed=0)
loader = dm.train_dataloader()
loader.sampler.set_epoch(1)
t = time.perf_counter()
rows, total = 0, 0.0
for b in loader:
    rows += len(b["row"])
    total += float(torch.nan_to_num(b["x"]).sum()) + float(torch.nan_to_num(b["x_err"]).sum())
out["time_s"] = time.perf_counter() - t
out["rows"] = rows
out["peak_kib"] = status_kib("VmHWM")
with open(args["result"], "w") as fh:
    json.dump(out, fh)
"""


def run_child(code: str, args: dict) -> dict:
    """Run ``code`` in a fresh interpreter with ``args`` (JSON); return its JSON report."""
    result = Path(args["result"])
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code, json.dumps(args)], cwd=ROOT)
    if r.returncode != 0:
        raise SystemExit(f"child failed (exit {r.returncode}): {args}")
    rep = json.loads(result.read_text())
    rep["wall_s"] = time.perf_counter() - t
    return rep


def write_replicated(src: Path, dst: Path, factor: int, block_rows: int = 65536) -> int:
    """Replicate the datasets of ``src`` ``factor`` times into ``dst`` (new ids and keys).

    The training keys are repeated; the base file's last key (validation) is
    written once, last, so the validation set keeps its size.
    """
    from astrobatch.io.compound_h5 import (
        CompoundH5Writer,
        iter_blocks,
        key_columns,
        key_rows,
        list_keys,
    )

    keys = list_keys(src)
    train, val = keys[:-1], keys[-1]
    cols = key_columns(src, keys[0])
    rows_per_part = max(key_rows(src, k) for k in keys)
    n_base = sum(key_rows(src, k) for k in keys)
    total = 0
    # the base's training parts are full (checked in main), so keys stay aligned with the base
    with CompoundH5Writer(dst, cols, rows_per_part=rows_per_part) as w:
        for j in range(factor):
            for k in train:
                for block in iter_blocks(src, k, None, block_rows):
                    block = block.copy()
                    block["source_id"] += j * n_base
                    w.append(block)
                    total += len(block)
        for block in iter_blocks(src, val, None, block_rows):
            w.append(block)
            total += len(block)
    return total


def markdown(rows: list[dict]) -> str:
    """The results as a markdown table."""
    head = (
        "| factor | train rows | val rows | file (MB) | prepare peak RSS (MiB) "
        "| after imports (MiB) | peak in scaler fit (MiB) | peak in shard writing (MiB) "
        "| prepare (s) | epoch peak RSS (MiB) | epoch after imports (MiB) | epoch (s) "
        "| rows/s |\n"
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = [
        f"| {r['factor']}x | {r['train_rows']:,} | {r['rows'] - r['train_rows']:,} "
        f"| {r['file_mb']:.0f} | {r['prepare_peak_mib']:.0f} | {r['prepare_baseline_mib']:.0f} "
        f"| {r['prepare_scaler_peak_mib']:.0f} | {r['prepare_write_peak_mib']:.0f} "
        f"| {r['prepare_s']:.1f} | {r['epoch_peak_mib']:.0f} | {r['epoch_baseline_mib']:.0f} "
        f"| {r['epoch_s']:.1f} | {r['epoch_rows_per_s']:,.0f} |"
        for r in rows
    ]
    return head + "\n".join(lines)


def verdict(rows: list[dict]) -> str:
    """One line: growth of the two peaks from the smallest to the largest file."""
    a, b = rows[0], rows[-1]
    size = b["train_rows"] / a["train_rows"]
    parts = []
    for what, key in (("prepare", "prepare_peak_mib"), ("epoch", "epoch_peak_mib")):
        g = b[key] / a[key]
        flat = g < 1.25 and g - 1 < 0.1 * (size - 1)
        parts.append(
            f"{what} peak x{g:.2f} ({a[key]:.0f} -> {b[key]:.0f} MiB): "
            + ("roughly flat (bounded)" if flat else "GROWS with the input")
        )
    return f"training rows x{size:.0f}: " + "; ".join(parts)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base-rows", type=int, default=20000, help="simulated pretraining rows")
    ap.add_argument("--rows-per-part", type=int, default=20000)
    ap.add_argument("--finetune-rows", type=int, default=2000)
    ap.add_argument("--factors", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--sources", choices=["simulated", "mixed"], default="simulated")
    ap.add_argument("--chunk-rows", type=int, default=4096)
    ap.add_argument("--scaler-max-rows", type=int, default=10000)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)

    from astrobatch.studies.stellar_xp.params import StellarXPSimulate
    from astrobatch.studies.stellar_xp.simulate import simulate_to_files

    if a.base_rows % a.rows_per_part:
        ap.error("--base-rows must be a multiple of --rows-per-part (full training parts)")

    other = OtherLoad()
    work = Path(tempfile.mkdtemp(prefix="bench_stellar_xp_", dir=a.workdir))
    rows = []
    try:
        base, fine = work / "base.h5", work / "finetune.fits"
        # one more part than needed so that the training parts are full
        n_base = a.base_rows + a.rows_per_part
        t = time.perf_counter()
        sim = StellarXPSimulate(
            n_pretrain=n_base, rows_per_part=a.rows_per_part, n_finetune=a.finetune_rows
        )
        simulate_to_files(sim, base, fine)
        t_sim = time.perf_counter() - t
        print(f"simulated {n_base} + {a.finetune_rows} stars in {t_sim:.1f} s", flush=True)
        for k in sorted(a.factors):
            path = work / f"pretrain_x{k}.h5"
            n = write_replicated(base, path, k)
            prep = work / f"prepared_x{k}"
            rp = run_child(CHILD_PREPARE, {
                "sources": a.sources, "pretrain": str(path), "finetune": str(fine),
                "chunk_rows": a.chunk_rows, "scaler_max_rows": a.scaler_max_rows,
                "out_dir": str(prep), "result": str(work / f"prep_x{k}.json"),
            })  # fmt: skip
            ep = run_child(CHILD_EPOCH, {
                "prepared": str(prep), "batch_size": a.batch_size,
                "result": str(work / f"epoch_x{k}.json"),
            })  # fmt: skip
            row = {
                "factor": k,
                "rows": n,
                "train_rows": rp["counts"]["pretrain_train"],
                "file_mb": path.stat().st_size / 1e6,
                "prepare_peak_mib": rp["peak_kib"] / 1024,
                "prepare_baseline_mib": rp["baseline_kib"] / 1024,
                "prepare_scaler_peak_mib": rp["peak_after_scaler_kib"] / 1024,
                "prepare_write_peak_mib": (rp["peak_write_kib"] or 0) / 1024,
                "prepare_s": rp["time_s"],
                "scaler_fit_s": rp["scaler_fit_s"],
                "epoch_peak_mib": ep["peak_kib"] / 1024,
                "epoch_baseline_mib": ep["baseline_kib"] / 1024,
                "epoch_s": ep["time_s"],
                "epoch_rows": ep["rows"],
                "epoch_rows_per_s": ep["rows"] / ep["time_s"],
            }
            assert row["epoch_rows"] == row["train_rows"]
            rows.append(row)
            print(
                f"  {k}x: {n:,} rows, {row['file_mb']:.0f} MB: prepare peak "
                f"{row['prepare_peak_mib']:.0f} MiB ({row['prepare_s']:.1f} s), epoch peak "
                f"{row['epoch_peak_mib']:.0f} MiB ({row['epoch_s']:.1f} s)",
                flush=True,
            )
            if not a.keep:
                path.unlink()
                shutil.rmtree(prep, ignore_errors=True)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(markdown(rows))
    print()
    print(verdict(rows))
    busy = other.cores()
    if busy is not None:
        print(f"other processes used {busy:.2f} of {os.cpu_count()} cores on average (timings)")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        result = {
            "benchmark": "stellar_xp_memory",
            "machine": {**machine_info(), "other_processes_cores": busy},
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
            "simulate_s": t_sim,
            "rows": rows,
            "verdict": verdict(rows),
        }
        a.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
