"""Training throughput of the star_sets set models, and the data-loading share of a step.

Two measurements on prepared star_sets shards (``train.h5``):

Compute throughput
    Sets (samples) per second of one optimisation step, forward + Huber loss +
    backward + gradient clipping (0.5, as in training) + AdamW step, for each
    model of ``--models`` (built with
    ``astrobatch.nn.sets.build_set_model(in_features=F, **SetModelParams(name=...,
    hidden_dim=...).model_dump())``, as star_sets' ``build_model`` does,
    other hyper-parameters at their defaults) and each batch size of
    ``--batch-sizes``. The batches are drawn once from
    :class:`astrobatch.data.sets.SetSampleDataset` and kept on the device (a pool
    of ``POOL`` batches, cycled), so this is compute only. ``--warmup`` steps are
    run first and not timed; then ``--repeats`` timings of ``--steps`` steps
    each; the median (and the min-max spread) over the repeats is reported.
Data-loading share
    The same step fed by the real training DataLoader
    (:meth:`astrobatch.data.sets.SetDataModule.loader`, epoch-seeded sampler,
    batch ``--loader-batch-size``) for each ``num_workers`` of ``--workers``
    (default 0, plus 2 when the machine has more than 2 cores). Per step, the
    time blocked in ``next(iterator)`` plus the host-to-device copy is *wait*,
    the rest is *compute*; the share is ``sum(wait) / sum(wait + compute)``
    over ``--loader-steps`` steps after ``--warmup`` untimed ones (which absorb
    the worker start-up). When an epoch ends, a new one starts (as in training)
    and its first-batch latency counts as wait.

Data: ``--prepared DIR`` (default ``data/prepared/star_sets`` when it holds
``train.h5``); otherwise a small data set (12 runs x 5 snapshots) is simulated
with :func:`~astrobatch.studies.star_sets.simulate.simulate_to_file` and
prepared with :func:`~astrobatch.studies.star_sets.prepare.prepare` in a
temporary folder.

Usage::

    .venv/bin/python benchmarks/bench_train_throughput.py \\
        --out benchmarks/results/train_throughput_cpu.json                 # ~1-2 min on 2 cores
    .venv/bin/python benchmarks/bench_train_throughput.py --device cuda --precision bf16 \\
        --batch-sizes 64 256 1024 4096 --steps 50 --out benchmarks/results/train_throughput_gpu.json

Options: ``--device cpu|cuda``, ``--precision 32|bf16`` (``torch.autocast`` with
bfloat16; meant for CUDA, also accepted on CPUs with bf16 support), ``--steps``,
``--repeats``, ``--warmup``, ``--threads`` (torch intra-op threads on CPU),
``--stream`` (read shard rows from disk instead of RAM), ``--workers``,
``--skip-compute`` / ``--skip-loader`` (one measurement only), ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import default_collate

from _common import OtherLoad, machine_info, sync
from astrobatch.data.sets import SetDataModule, SetSampleDataset
from astrobatch.studies.star_sets.params import (
    SamplingParams,
    SetModelParams,
    StarSetsData,
    StarSetsSimulate,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PREPARED = ROOT / "data/prepared/star_sets"
MODELS = ("summary_stats", "deep_sets", "set_transformer")
POOL = 4  # batches kept on the device for the compute-only measurement
SEED = 42


def wait_for_models(timeout_s: float = 3600.0):
    """Import ``build_set_model``, polling every 60 s while ``astrobatch.nn.sets`` is missing."""
    t0 = time.monotonic()
    while True:
        try:
            from astrobatch.nn.sets import build_set_model

            return build_set_model
        except ModuleNotFoundError as err:
            if "astrobatch.nn" not in str(err) or time.monotonic() - t0 > timeout_s:
                raise
            print("astrobatch.nn.sets not found yet; retrying in 60 s", flush=True)
            time.sleep(60)


def prepared_dir(arg: Path | None, work: Path) -> Path:
    """The prepared shards to read: ``arg``, the project's, or a small simulated set."""
    if arg is not None:
        return arg
    if (DEFAULT_PREPARED / "train.h5").is_file():
        return DEFAULT_PREPARED
    from astrobatch.studies.star_sets.prepare import prepare
    from astrobatch.studies.star_sets.simulate import simulate_to_file

    raw = work / "raw.h5"
    print(f"no prepared data; simulating 12 runs x 5 snapshots into {work} ...", flush=True)
    simulate_to_file(StarSetsSimulate(n_runs=12, snapshots_per_run=5), None, raw)
    prepare(StarSetsData(raw_path=str(raw)), work / "prepared")
    return work / "prepared"


class Stepper:
    """One training step of a set model: forward, Huber loss, backward, clip, AdamW."""

    def __init__(self, model: nn.Module, device: torch.device, precision: str):
        self.model = model.to(device).train()
        self.device = device
        self.opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
        self.loss_fn = nn.HuberLoss(delta=1.0)
        self.bf16 = precision == "bf16"

    def __call__(self, batch: dict[str, torch.Tensor]) -> None:
        ctx = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if self.bf16
            else contextlib.nullcontext()
        )
        with ctx:
            pred = self.model(batch["x"], batch["mask"]).reshape(-1)
        loss = self.loss_fn(pred.float(), batch["y"].float())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), 0.5)
        self.opt.step()


def to_device(batch: dict, device: torch.device) -> dict:
    """Move the tensors the step needs to ``device``."""
    nb = device.type == "cuda"
    return {k: batch[k].to(device, non_blocking=nb) for k in ("x", "mask", "y")}


def batch_pool(ds: SetSampleDataset, batch_size: int, device: torch.device) -> list[dict]:
    """``POOL`` batches of random training samples, already on ``device``."""
    rng = np.random.default_rng(SEED)
    pool = []
    for epoch in range(POOL):
        idx = rng.integers(len(ds), size=batch_size)
        pool.append(to_device(default_collate([ds[(int(i), epoch)] for i in idx]), device))
    return pool


def bench_compute(build, name, hidden, ds, batch_size, device, a) -> dict:
    """Median sets/s of compute-only steps for one model and batch size."""
    torch.manual_seed(SEED)
    model = build(
        in_features=ds.n_features, **SetModelParams(name=name, hidden_dim=hidden).model_dump()
    )
    step = Stepper(model, device, a.precision)
    pool = batch_pool(ds, batch_size, device)
    for i in range(a.warmup):
        step(pool[i % POOL])
    sync(device)
    rates = []
    for _ in range(a.repeats):
        t = time.perf_counter()
        for i in range(a.steps):
            step(pool[i % POOL])
        sync(device)
        rates.append(batch_size * a.steps / (time.perf_counter() - t))
    med = statistics.median(rates)
    return {
        "model": name,
        "batch_size": batch_size,
        "params": sum(p.numel() for p in model.parameters()),
        "sets_per_s": med,
        "sets_per_s_min": min(rates),
        "sets_per_s_max": max(rates),
        "ms_per_step": 1e3 * batch_size / med,
        "repeats": rates,
    }


def bench_loader(build, name, hidden, prepared, workers, device, a) -> dict:
    """Time waiting for batches vs computing, with the real training DataLoader."""
    torch.manual_seed(SEED)
    dm = SetDataModule(
        prepared, SamplingParams(), a.loader_batch_size, SEED, workers, in_memory=not a.stream
    )
    loader = dm.loader("train")
    model = build(
        in_features=dm.dataset("train").n_features,
        **SetModelParams(name=name, hidden_dim=hidden).model_dump(),
    )
    step = Stepper(model, device, a.precision)
    epoch, it = 0, iter(loader)
    wait = comp = 0.0
    for i in range(a.warmup + a.loader_steps):
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:  # new epoch, as in training
            epoch += 1
            loader.batch_sampler.set_epoch(epoch)
            it = iter(loader)
            batch = next(it)
        batch = to_device(batch, device)
        sync(device)
        t1 = time.perf_counter()
        step(batch)
        sync(device)
        t2 = time.perf_counter()
        if i >= a.warmup:
            wait += t1 - t0
            comp += t2 - t1
    del it, loader  # stop persistent workers
    n = a.loader_steps
    return {
        "model": name,
        "batch_size": a.loader_batch_size,
        "num_workers": workers,
        "in_memory": not a.stream,
        "wait_ms_per_step": 1e3 * wait / n,
        "compute_ms_per_step": 1e3 * comp / n,
        "loading_share": wait / (wait + comp),
        "sets_per_s": a.loader_batch_size * n / (wait + comp),
    }


def throughput_table(rows: list[dict], batch_sizes: list[int]) -> str:
    """Markdown: one row per model, one column per batch size (median sets/s [min-max])."""
    head = "| model | params | " + " | ".join(f"batch {b}" for b in batch_sizes) + " |\n"
    head += "|---|---:|" + "---:|" * len(batch_sizes) + "\n"
    lines = []
    for m in dict.fromkeys(r["model"] for r in rows):
        cells = {r["batch_size"]: r for r in rows if r["model"] == m}
        nparams = next(iter(cells.values()))["params"]
        vals = [
            f"{c['sets_per_s']:,.0f} ({c['sets_per_s_min']:,.0f}–{c['sets_per_s_max']:,.0f})"
            if (c := cells.get(b))
            else "–"
            for b in batch_sizes
        ]
        lines.append(f"| {m} | {nparams:,} | " + " | ".join(vals) + " |")
    return head + "\n".join(lines)


def loader_table(rows: list[dict]) -> str:
    """Markdown: waiting for data vs compute per step."""
    head = (
        "| model | batch | num_workers | wait (ms/step) | compute (ms/step) | loading share "
        "| end-to-end sets/s |\n|---|---:|---:|---:|---:|---:|---:|\n"
    )
    return head + "\n".join(
        f"| {r['model']} | {r['batch_size']} | {r['num_workers']} | {r['wait_ms_per_step']:.1f} "
        f"| {r['compute_ms_per_step']:.1f} | {r['loading_share']:.0%} | {r['sets_per_s']:,.0f} |"
        for r in rows
    )


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prepared", type=Path, default=None, help="folder with train.h5")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--precision", choices=["32", "bf16"], default="32")
    ap.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 128, 256])
    ap.add_argument("--hidden-dim", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per repeat")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps before timing")
    ap.add_argument("--workers", type=int, nargs="*", default=None, help="DataLoader workers")
    ap.add_argument("--loader-batch-size", type=int, default=64)
    ap.add_argument("--loader-steps", type=int, default=60)
    ap.add_argument("--stream", action="store_true", help="read shard rows from disk")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--skip-loader", action="store_true", help="compute throughput only")
    ap.add_argument("--skip-compute", action="store_true", help="data-loading share only")
    ap.add_argument("--out", type=Path, default=None, help="JSON results file")
    a = ap.parse_args(argv)
    if a.workers is None:
        a.workers = [0, 2] if (os.cpu_count() or 1) > 2 else [0]
    return a


def main(argv: list[str] | None = None) -> None:
    a = parse(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible to torch")
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    build = wait_for_models()
    other = OtherLoad()
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        prepared = prepared_dir(a.prepared, Path(tmp))
        ds = SetSampleDataset(prepared / "train.h5", SamplingParams(), SEED, train=True)
        print(
            f"data: {prepared} ({ds.n_sets} train snapshots, {len(ds)} samples/epoch, "
            f"F={ds.n_features}, N={ds.sampling.num_star_per_sample}); device={device} "
            f"precision={a.precision} threads={torch.get_num_threads()}",
            flush=True,
        )
        rows = []
        for name in [] if a.skip_compute else a.models:
            for b in a.batch_sizes:
                r = bench_compute(build, name, a.hidden_dim, ds, b, device, a)
                rows.append(r)
                print(f"  {name:16s} batch {b:5d}: {r['sets_per_s']:10,.0f} sets/s", flush=True)
        loader_rows = []
        if not a.skip_loader:
            for w in a.workers:
                for name in a.models:
                    r = bench_loader(build, name, a.hidden_dim, prepared, w, device, a)
                    loader_rows.append(r)
                    print(
                        f"  loader {name:16s} workers {w}: share {r['loading_share']:.0%}",
                        flush=True,
                    )
        data_info = {"prepared": str(prepared), "train_snapshots": ds.n_sets, "samples": len(ds)}
    info = machine_info(device)
    info["other_processes_cores"] = other.cores()
    if (info["other_processes_cores"] or 0) > 0.2:
        print(
            f"\nwarning: other processes used {info['other_processes_cores']:.2f} of "
            f"{os.cpu_count()} cores on average during the run; figures may be low"
        )
    where = info["cpu"] if a.device == "cpu" else info.get("gpu")
    if rows:
        print(
            f"\nTraining throughput, sets/s, median over {a.repeats} x {a.steps} steps "
            f"(min–max); {where}, precision {a.precision}, torch {info['torch']}\n"
        )
        print(throughput_table(rows, a.batch_sizes))
    if loader_rows:
        print(
            f"\nData-loading share ({a.loader_steps} steps, batch {a.loader_batch_size}, "
            f"{'streamed from disk' if a.stream else 'in memory'}); {where}\n"
        )
        print(loader_table(loader_rows))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        result = {
            "benchmark": "train_throughput",
            "machine": info,
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
            "data": data_info,
            "throughput": rows,
            "loader": loader_rows,
        }
        a.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()
