"""cluster_age: loader images/s, CNN training-step images/s, data-wait share, peak RSS.

Issue requirement under test: "data loading must not starve training: cutouts are
read from the prepared HDF5 in batches, not one file read per sample". Everything
runs on the training split (``train.h5``) with the stage code of
:mod:`astrobatch.studies.cluster_age.train` (``make_transform``, ``make_datasets``,
``build_model``) and the ``cluster_age`` section of ``params.yaml`` (mask, asinh
stretch, ``filter`` normalisation with training statistics, dihedral augmentation,
seed), varying only the model input (``1im`` / ``5im``) and widths.

Loader throughput (images/s)
    Full training epochs (transform + augmentation, batch ``--batch-size``,
    shuffled, ``num_workers`` of ``--workers``) through three paths:

    ``memory``
        :class:`~astrobatch.data.images.CutoutShardDataset` as built by
        ``make_datasets`` (the split fits ``max_memory_bytes``: read once, kept
        in RAM) with :class:`~astrobatch.data.sampling.ChunkBatchSampler`
        (``CutoutDataModule.loader("train", shuffle=True)``).
    ``hdf5``
        The same with ``max_memory_bytes=0``: every batch is read from the
        shard by one ``__getitems__`` -> ``read`` call, chunk-aware sampler.
    ``per-sample``
        For contrast, the naive path: a plain ``Dataset`` whose ``__getitem__``
        reads one cutout (``h5py.File(path)["images"][i]``, default h5py
        settings, handle kept), transforms and augments it alone, with
        ``DataLoader(batch_size=..., shuffle=True)`` and the default collate.

    The dataset is kept across epochs, as in training; one untimed epoch first
    (it loads the ``memory`` split and warms the HDF5 chunk cache), then
    ``--loader-repeats`` timed epochs; the median images/s (min-max) is
    reported. The shard is in the OS page cache (this measures the loader, not
    the disk). Every measurement closes its shard handles before the next:
    HDF5 shares one dataset, and its chunk cache, among all open handles of a
    file in a process, so a handle left open would lend its 256 MiB cache to
    the per-sample reads.

Raw reads (images/s)
    The reads alone (no transform, no augmentation) of one shuffled epoch's
    batches (``ChunkBatchSampler``; all 5 channels): ``CutoutShardDataset.read``
    in RAM and from HDF5 (``max_memory_bytes=0``), then plain h5py on a fresh
    handle each: one selection of the batch's sorted rows
    (``images[rows]``, h5py's list indexing; what ``read`` did before it read
    runs of consecutive rows), and one read per row (``images[i]`` with the
    256 MiB chunk cache of ``open_shard`` or h5py's default 1 MiB one;
    ``read_direct`` with no chunk cache, ``rdcc_nbytes=0``). One untimed
    epoch, then ``--read-repeats`` timed ones.

Training-step throughput (images/s)
    One step = forward + MSE + backward + gradient clipping
    (``training.gradient_clip_val``, as Lightning does in training) + AdamW
    (``training.lr`` and ``weight_decay``, 0: Adam), batch ``--batch-size``, for
    ``1im`` and ``5im`` at the ``default`` widths (``params.yaml``: conv
    [16, 32, 64], dense [128, 64, 32], on the prepared crop, 80 px) and the
    ``upstream`` widths (conv [128, 256, 512], dense [512, 256, 128], on
    112 px cutouts: shards prepared with ``crop_size`` 112 in a temporary folder
    from the raw file). ``POOL`` batches drawn from the training dataset are
    kept on the device, so this is compute only. ``--warmup`` steps, then
    ``--repeats`` x ``--steps`` (upstream: ``--upstream-repeats`` x
    ``--upstream-steps``, it is slow on a CPU); median images/s (min-max).

Data-wait share
    The same step fed by each loader path (default widths, ``1im`` and ``5im``;
    upstream widths, ``5im``, ``hdf5`` path only, ``--upstream-share-steps``
    steps). Per step, the time blocked in ``next(iterator)`` plus the
    host-to-device copy is *wait*, the rest *compute*; share =
    sum(wait) / sum(wait + compute) over ``--share-steps`` steps after
    ``--warmup`` untimed ones. When an epoch ends a new one starts (as in
    training) and its first-batch latency counts as wait.

Peak RSS
    ``VmHWM`` (``/proc/self/status``) of this process per phase (the
    high-water mark is reset between phases through ``/proc/self/clear_refs``
    where allowed) and overall; DataLoader worker processes are not included.

Data: ``--prepared DIR`` (default ``data/prepared/cluster_age`` when it holds
``train.h5``) and, for the upstream widths, ``--prepared-upstream DIR`` or
shards prepared with ``crop_size`` 112 from ``--raw`` (default
``cluster_age.data.raw_path``). When one is missing (or with ``--simulate``), a
small raw set (``--sim-clusters`` cutouts of 112 px) is simulated with
:func:`~astrobatch.studies.cluster_age.simulate.simulate_to_file` and prepared
with :func:`~astrobatch.studies.cluster_age.prepare.prepare` in a temporary folder.

Usage::

    .venv/bin/python benchmarks/bench_cluster_age_throughput.py \\
        --out benchmarks/results/cluster_age_throughput_cpu.json          # ~2 min, 2 cores
    .venv/bin/python benchmarks/bench_cluster_age_throughput.py --device cuda --precision bf16 \\
        --steps 50 --upstream-steps 20 --upstream-repeats 5 --upstream-share-steps 60 \\
        --out benchmarks/results/cluster_age_throughput_cuda_bf16.json

Options: ``--device cpu|cuda``, ``--precision 32|bf16`` (``torch.autocast`` with
bfloat16), ``--batch-size``, ``--steps``, ``--repeats``, ``--upstream-steps``,
``--upstream-repeats``, ``--warmup``, ``--loader-repeats``, ``--read-repeats``,
``--share-steps``, ``--upstream-share-steps`` (0 = skip), ``--workers``, ``--threads``,
``--skip-loader`` / ``--skip-compute`` / ``--skip-share`` / ``--skip-upstream``,
``--out`` (JSON). The CPU used by *other* processes during the run is stored as
``machine.other_processes_cores`` (warning above 0.2 cores) and per phase as
``other_processes_cores_per_phase``: with 2 torch threads on 2 cores, one busy
core elsewhere made the default-width step ~14x slower.
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

import h5py
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from _common import OtherLoad, machine_info, sync
from astrobatch.data.images import (
    CutoutDataModule,
    CutoutShardDataset,
    CutoutTransform,
    dihedral,
    open_shard,
)
from astrobatch.data.sampling import ChunkBatchSampler
from astrobatch.io.shards import ShardReader
from astrobatch.params import load_params
from astrobatch.studies.cluster_age.params import ClusterAgeParams
from astrobatch.studies.cluster_age.train import build_model, make_datasets, make_transform

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PREPARED = ROOT / "data/prepared/cluster_age"
MODES = ("memory", "hdf5", "per-sample")
INPUTS = ("1im", "5im")
UPSTREAM = {"conv_channels": [128, 256, 512], "dense_units": [512, 256, 128]}
UPSTREAM_CROP = 112
POOL = 4  # batches kept on the device for the compute-only measurement


# ------------------------------------------------------------------ machine, memory


def status_mib(key: str) -> float | None:
    """``VmHWM`` (peak RSS) or ``VmRSS`` of this process, MiB (Linux; None elsewhere)."""
    with contextlib.suppress(OSError), open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return None


class Phases:
    """Per phase: peak RSS (``VmHWM``, then reset by ``clear_refs``) and other processes' CPU."""

    def __init__(self):
        self.phases: dict[str, float | None] = {}
        self.other: dict[str, float | None] = {}
        self.reset_ok = True
        self._load = OtherLoad()

    def mark(self, phase: str) -> None:
        self.phases[phase] = status_mib("VmHWM")
        self.other[phase] = self._load.cores()
        self._load = OtherLoad()
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
        except OSError:
            self.reset_ok = False

    def overall(self) -> float | None:
        vals = [v for v in self.phases.values() if v is not None]
        return max(vals) if vals else None


# ------------------------------------------------------------------ data


def with_model(p: ClusterAgeParams, inp: str, widths: str) -> ClusterAgeParams:
    """``p`` with model input ``inp`` and the ``default`` (params.yaml) or upstream widths."""
    upd: dict = {"input": inp}
    if widths == "upstream":
        upd.update(UPSTREAM)
    return p.model_copy(update={"model": p.model.model_copy(update=upd)})


def simulated_raw(p: ClusterAgeParams, work: Path, n: int) -> Path:
    """A small simulated raw file (``n`` cutouts, 112 px) in ``work``, made once."""
    from astrobatch.studies.cluster_age.simulate import simulate_to_file

    raw = work / "raw_phangs_dataset.h5"
    if not raw.is_file():
        print(f"simulating {n} cutouts into {work} ...", flush=True)
        sim = p.simulate.model_copy(update={"n_clusters": n, "image_size": UPSTREAM_CROP})
        simulate_to_file(sim, raw)
    return raw


def prepared_dirs(p: ClusterAgeParams, a: argparse.Namespace, work: Path) -> dict[str, Path]:
    """Shards for the default widths (prepared crop) and the upstream ones (112 px)."""
    from astrobatch.studies.cluster_age.prepare import prepare

    def prep(raw: Path, crop: int, name: str) -> Path:
        print(f"preparing {raw} with crop_size {crop} into {work / name} ...", flush=True)
        prepare(p.data.model_copy(update={"raw_path": str(raw), "crop_size": crop}), work / name)
        return work / name

    out = {}
    if a.prepared is not None and not a.simulate:
        out["default"] = a.prepared
    elif (DEFAULT_PREPARED / "train.h5").is_file() and not a.simulate:
        out["default"] = DEFAULT_PREPARED
    else:
        out["default"] = prep(simulated_raw(p, work, a.sim_clusters), p.data.crop_size, "p_def")
    if not a.skip_upstream:
        if a.prepared_upstream is not None and not a.simulate:
            out["upstream"] = a.prepared_upstream
        else:
            raw = a.raw if a.raw is not None else ROOT / p.data.raw_path
            if a.simulate or not raw.is_file():
                raw = simulated_raw(p, work, a.sim_clusters)
            out["upstream"] = prep(raw, UPSTREAM_CROP, "p_up")
    return out


def shard_shape(prepared: Path) -> tuple[int, ...]:
    with h5py.File(prepared / "train.h5", "r") as f:
        return tuple(f["images"].shape)


class PerSampleDataset(Dataset):
    """The naive path: one HDF5 read, transform and augmentation per cutout."""

    def __init__(self, path: Path, transform: CutoutTransform, targets: np.ndarray, seed: int):
        self.path, self.transform, self.targets = path, transform, targets
        self.seed, self.epoch = seed, 0
        self.n = len(targets)
        self._file: h5py.File | None = None

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if self._file is None:
            self._file = h5py.File(self.path, "r")
        x = self.transform(self._file["images"][i][None])
        k = np.random.default_rng((self.seed, self.epoch, int(i))).integers(8)
        x = dihedral(x, k)[0]
        return {"x": torch.from_numpy(np.ascontiguousarray(x)), "y": torch.tensor(self.targets[i])}

    def __getstate__(self):
        return {**self.__dict__, "_file": None}


class Setup:
    """Transform, training dataset and params of one (widths, input) configuration."""

    def __init__(self, p: ClusterAgeParams, prepared: Path, widths: str, inp: str):
        self.params = with_model(p, inp, widths)
        self.prepared = prepared
        self.transform = make_transform(self.params, prepared)
        self.train = make_datasets(self.params, prepared, self.transform, for_training=True)[
            "train"
        ]

    def dataset(self, mode: str) -> Dataset:
        """A fresh training dataset read through path ``mode``."""
        t, seed = self.train, self.params.seed
        if mode == "per-sample":
            return PerSampleDataset(t.path, self.transform, t.targets, seed)
        budget = {} if mode == "memory" else {"max_memory_bytes": 0}
        return CutoutShardDataset(t.path, self.transform, t.targets, t.augment, seed, **budget)


class EpochLoader:
    """The training DataLoader of one path; ``epoch()`` starts the next epoch's iterator."""

    def __init__(self, setup: Setup, mode: str, batch_size: int, workers: int):
        self.ds = setup.dataset(mode)
        seed = setup.params.seed
        if mode == "per-sample":
            gen = torch.Generator().manual_seed(seed)
            self.loader = DataLoader(
                self.ds, batch_size=batch_size, shuffle=True, num_workers=workers, generator=gen
            )
        else:
            dm = CutoutDataModule({"train": self.ds}, batch_size, seed, workers)
            self.loader = dm.loader("train", shuffle=True)
        self.n_epoch = -1

    def epoch(self):
        self.n_epoch += 1
        sampler = self.loader.batch_sampler
        if isinstance(sampler, ChunkBatchSampler):
            sampler.set_epoch(self.n_epoch)
        else:
            self.ds.set_epoch(self.n_epoch)
        return iter(self.loader)


# ------------------------------------------------------------------ measurements


def bench_loader(setup: Setup, mode: str, workers: int, a) -> dict:
    """Images/s of whole training epochs through one loader path."""
    el = EpochLoader(setup, mode, a.batch_size, workers)
    rates, first = [], None
    for r in range(1 + a.loader_repeats):
        t, n = time.perf_counter(), 0
        for batch in el.epoch():
            n += len(batch["y"])
        dt = time.perf_counter() - t
        if r == 0:
            first = n / dt
        else:
            rates.append(n / dt)
    med = statistics.median(rates)
    return {
        "mode": mode,
        "input": setup.params.model.input,
        "num_workers": workers,
        "images_per_s": med,
        "images_per_s_min": min(rates),
        "images_per_s_max": max(rates),
        "ms_per_batch": 1e3 * a.batch_size / med,
        "first_epoch_images_per_s": first,
        "repeats": rates,
    }


RAW_READS = (  # (label, how the file is opened, how a batch is read)
    ("CutoutShardDataset.read, split in RAM", "memory", "dataset"),
    ("CutoutShardDataset.read, HDF5 (max_memory_bytes=0)", "hdf5", "dataset"),
    ("images[sorted rows], one selection per batch, open_shard cache", "open_shard", "selection"),
    ("images[i] per row, open_shard (256 MiB chunk cache)", "open_shard", "row"),
    ("images[i] per row, default chunk cache", "default", "row"),
    ("read_direct per row, no chunk cache", "nocache", "row_direct"),
)


def batch_reader(d: h5py.Dataset, how: str):
    """Read the (sorted) rows of a batch from ``d``: one selection, or one read per row."""

    def selection(idx):
        return d[np.sort(idx)]

    def row(idx):
        return np.stack([d[i] for i in np.sort(idx)])

    def row_direct(idx):
        out = np.empty((len(idx), *d.shape[1:]), d.dtype)
        for j, i in enumerate(np.sort(idx)):
            d.read_direct(out, np.s_[i : i + 1], np.s_[j : j + 1])
        return out

    return {"selection": selection, "row": row, "row_direct": row_direct}[how]


def bench_raw_reads(setup: Setup, a) -> list[dict]:
    """Images/s of the reads alone (no transform) of one shuffled epoch's batches.

    Each variant gets a fresh file handle (cold HDF5 chunk cache); one untimed
    epoch, then ``--read-repeats`` timed ones.
    """
    t = setup.train
    batches = list(ChunkBatchSampler(len(t), a.batch_size, t.chunk, True, setup.params.seed))
    n = sum(len(b) for b in batches)
    openers = {
        "open_shard": lambda: open_shard(t.path),
        "default": lambda: h5py.File(t.path, "r"),
        "nocache": lambda: h5py.File(t.path, "r", rdcc_nbytes=0),
    }
    rows = []
    for label, source, how in RAW_READS:
        src = setup.dataset(source) if how == "dataset" else openers[source]()
        read = src.read if how == "dataset" else batch_reader(src["images"], how)
        rates = []
        for r in range(1 + a.read_repeats):
            t0 = time.perf_counter()
            for b in batches:
                read(np.asarray(b))
            if r:
                rates.append(n / (time.perf_counter() - t0))
        # Close before the next variant: HDF5 shares one dataset (and its chunk cache) between
        # all open handles of a file in a process.
        del read
        if isinstance(src, h5py.File | ShardReader):
            src.close()
        del src
        med = statistics.median(rates)
        rows.append(
            {
                "read": label,
                "images_per_s": med,
                "images_per_s_min": min(rates),
                "images_per_s_max": max(rates),
                "ms_per_batch": 1e3 * a.batch_size / med,
            }
        )
    return rows


class Stepper:
    """One training step: forward, MSE, backward, gradient clipping, AdamW."""

    def __init__(self, model: nn.Module, params: ClusterAgeParams, device, precision: str):
        self.model = model.to(device).train()
        self.device = device
        t = params.training
        self.opt = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        self.clip = t.gradient_clip_val
        self.loss_fn = nn.MSELoss()
        self.bf16 = precision == "bf16"

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        ctx = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if self.bf16
            else contextlib.nullcontext()
        )
        with ctx:
            pred = self.model(x).squeeze(-1)
        loss = self.loss_fn(pred.float(), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.opt.step()


def to_device(batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    nb = device.type == "cuda"
    return batch["x"].to(device, non_blocking=nb), batch["y"].float().to(device, non_blocking=nb)


def new_stepper(setup: Setup, device, precision: str) -> tuple[Stepper, int]:
    torch.manual_seed(setup.params.seed)
    model = build_model(setup.params, setup.prepared)
    return Stepper(model, setup.params, device, precision), sum(
        p.numel() for p in model.parameters()
    )


def bench_compute(setup: Setup, widths: str, device, steps: int, repeats: int, a) -> dict:
    """Median images/s of compute-only training steps."""
    step, nparams = new_stepper(setup, device, a.precision)
    rng = np.random.default_rng(setup.params.seed)
    ds = setup.dataset("memory")
    pool = [
        to_device(
            ds.__getitems__(rng.choice(len(ds), a.batch_size, replace=len(ds) < a.batch_size)),
            device,
        )
        for _ in range(POOL)
    ]
    del ds  # closes its shard handle (see bench_raw_reads)
    for i in range(a.warmup):
        step(*pool[i % POOL])
    sync(device)
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        for i in range(steps):
            step(*pool[i % POOL])
        sync(device)
        rates.append(a.batch_size * steps / (time.perf_counter() - t))
    med = statistics.median(rates)
    return {
        "widths": widths,
        "input": setup.params.model.input,
        "image_size": int(pool[0][0].shape[-1]),
        "params": nparams,
        "images_per_s": med,
        "images_per_s_min": min(rates),
        "images_per_s_max": max(rates),
        "ms_per_step": 1e3 * a.batch_size / med,
        "steps": steps,
        "repeats": rates,
    }


def bench_share(setup: Setup, widths: str, mode: str, workers: int, device, steps: int, a):
    """Time waiting for batches vs computing, the step fed by one loader path."""
    step, _ = new_stepper(setup, device, a.precision)
    el = EpochLoader(setup, mode, a.batch_size, workers)
    it = el.epoch()
    wait = comp = 0.0
    warm = min(a.warmup, 1) if widths == "upstream" else a.warmup
    for i in range(warm + steps):
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:  # new epoch, as in training
            it = el.epoch()
            batch = next(it)
        x, y = to_device(batch, device)
        sync(device)
        t1 = time.perf_counter()
        step(x, y)
        sync(device)
        t2 = time.perf_counter()
        if i >= warm:
            wait += t1 - t0
            comp += t2 - t1
    del it
    return {
        "widths": widths,
        "input": setup.params.model.input,
        "mode": mode,
        "num_workers": workers,
        "steps": steps,
        "wait_ms_per_step": 1e3 * wait / steps,
        "compute_ms_per_step": 1e3 * comp / steps,
        "wait_share": wait / (wait + comp),
        "images_per_s": a.batch_size * steps / (wait + comp),
    }


# ------------------------------------------------------------------ output


def rate(r: dict) -> str:
    lo, hi = r["images_per_s_min"], r["images_per_s_max"]
    return f"{r['images_per_s']:,.0f} ({lo:,.0f}–{hi:,.0f})"


def print_tables(res: dict, a, where: str) -> None:
    if res["raw_reads"]:
        print(
            f"\nRaw reads only (no transform), images/s, median of {a.read_repeats} epochs "
            f"(min–max), batch {a.batch_size}; {where}\n"
        )
        print("| read | images/s | ms/batch |\n|---|---:|---:|")
        for r in res["raw_reads"]:
            print(f"| {r['read']} | {rate(r)} | {r['ms_per_batch']:.2f} |")
    if res["loader"]:
        print(
            f"\nLoader, images/s, median of {a.loader_repeats} epochs (min–max), "
            f"batch {a.batch_size}; {where}\n"
        )
        print("| path | input | num_workers | images/s | ms/batch | first epoch images/s |")
        print("|---|---|---:|---:|---:|---:|")
        for r in res["loader"]:
            print(
                f"| {r['mode']} | {r['input']} | {r['num_workers']} | {rate(r)} "
                f"| {r['ms_per_batch']:.1f} | {r['first_epoch_images_per_s']:,.0f} |"
            )
    if res["compute"]:
        print(
            f"\nTraining step (compute only), images/s (min–max), batch {a.batch_size}, "
            f"precision {a.precision}; {where}\n"
        )
        print("| widths | input | size | params | images/s | ms/step | steps |")
        print("|---|---|---:|---:|---:|---:|---|")
        for r in res["compute"]:
            print(
                f"| {r['widths']} | {r['input']} | {r['image_size']} | {r['params']:,} "
                f"| {rate(r)} | {r['ms_per_step']:.1f} | {len(r['repeats'])} x {r['steps']} |"
            )
    if res["share"]:
        print(f"\nData-wait share, batch {a.batch_size}; {where}\n")
        print(
            "| widths | input | path | num_workers | steps | wait (ms/step) "
            "| compute (ms/step) | wait share | end-to-end images/s |"
        )
        print("|---|---|---|---:|---:|---:|---:|---:|---:|")
        for r in res["share"]:
            print(
                f"| {r['widths']} | {r['input']} | {r['mode']} | {r['num_workers']} "
                f"| {r['steps']} | {r['wait_ms_per_step']:.1f} | {r['compute_ms_per_step']:.1f} "
                f"| {r['wait_share']:.0%} | {r['images_per_s']:,.0f} |"
            )
    rss = res["peak_rss_mib"]
    print("\nPeak RSS (VmHWM, MiB) per phase: " + ", ".join(f"{k} {v:.0f}" for k, v in rss.items()))
    other = res["other_processes_cores_per_phase"]
    print(
        "Other processes' CPU (cores) per phase: "
        + ", ".join(f"{k} {v:.2f}" for k, v in other.items() if v is not None)
    )


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prepared", type=Path, default=None, help="folder with train.h5")
    ap.add_argument("--prepared-upstream", type=Path, default=None, help="112 px shards")
    ap.add_argument("--raw", type=Path, default=None, help="raw file for the 112 px shards")
    ap.add_argument("--simulate", action="store_true", help="simulate a small raw set")
    ap.add_argument("--sim-clusters", type=int, default=300)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--precision", choices=["32", "bf16"], default="32")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per repeat (default)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--upstream-steps", type=int, default=2, help="timed steps per repeat")
    ap.add_argument("--upstream-repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps (upstream share: 1)")
    ap.add_argument("--loader-repeats", type=int, default=3, help="timed epochs per path")
    ap.add_argument("--read-repeats", type=int, default=2, help="timed epochs per raw read")
    ap.add_argument("--share-steps", type=int, default=40)
    ap.add_argument("--upstream-share-steps", type=int, default=3, help="0: skip")
    ap.add_argument("--workers", type=int, nargs="*", default=None, help="DataLoader workers")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--skip-loader", action="store_true")
    ap.add_argument("--skip-compute", action="store_true")
    ap.add_argument("--skip-share", action="store_true")
    ap.add_argument("--skip-upstream", action="store_true", help="default widths only")
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
    rss = Phases()
    rss.mark("imports")
    other = OtherLoad()
    p = load_params("cluster_age", ROOT / "params.yaml")
    res: dict = {"raw_reads": [], "loader": [], "compute": [], "share": []}
    with tempfile.TemporaryDirectory(prefix="bench_cluster_age_") as tmp:
        dirs = prepared_dirs(p, a, Path(tmp))
        shapes = {k: shard_shape(v) for k, v in dirs.items()}
        for k in dirs:
            print(f"data {k}: {dirs[k]} train images {shapes[k]}", flush=True)
        print(f"device={device} precision={a.precision} threads={torch.get_num_threads()}")
        setups = {(w, i): Setup(p, dirs[w], w, i) for w in dirs for i in INPUTS}
        rss.mark("data")
        if not a.skip_loader:
            res["raw_reads"] = bench_raw_reads(setups["default", "5im"], a)
            for r in res["raw_reads"]:
                print(f"  raw read {r['read']:64s} {r['images_per_s']:8,.0f} img/s", flush=True)
            for w in a.workers:
                for mode in MODES:
                    for inp in INPUTS:
                        r = bench_loader(setups["default", inp], mode, w, a)
                        res["loader"].append(r)
                        print(
                            f"  loader {mode:10s} {inp} workers {w}: "
                            f"{r['images_per_s']:8,.0f} img/s",
                            flush=True,
                        )
            rss.mark("loader")
        for widths in dirs:
            if a.skip_compute:
                break
            steps, reps = (
                (a.upstream_steps, a.upstream_repeats)
                if widths == "upstream"
                else (a.steps, a.repeats)
            )
            for inp in INPUTS:
                r = bench_compute(setups[widths, inp], widths, device, steps, reps, a)
                res["compute"].append(r)
                print(
                    f"  step {widths:8s} {inp}: {r['images_per_s']:8,.1f} img/s "
                    f"({r['params']:,} params)",
                    flush=True,
                )
            rss.mark(f"compute_{widths}")
        if not a.skip_share:
            plan = [("default", inp, m, w) for w in a.workers for m in MODES for inp in INPUTS]
            if "upstream" in dirs and a.upstream_share_steps > 0:
                plan += [("upstream", "5im", "hdf5", w) for w in a.workers]
            for widths, inp, mode, w in plan:
                steps = a.upstream_share_steps if widths == "upstream" else a.share_steps
                r = bench_share(setups[widths, inp], widths, mode, w, device, steps, a)
                res["share"].append(r)
                print(
                    f"  share {widths:8s} {inp} {mode:10s} workers {w}: {r['wait_share']:.0%} wait",
                    flush=True,
                )
            rss.mark("share")
        data_info = {
            k: {"prepared": str(v), "train_images_shape": shapes[k]} for k, v in dirs.items()
        }
    res["peak_rss_mib"] = {**rss.phases, "overall": rss.overall()}
    res["other_processes_cores_per_phase"] = rss.other
    info = machine_info(device, ("h5py",))
    info["hdf5"] = h5py.version.hdf5_version
    info["other_processes_cores"] = other.cores()
    info["hwm_reset_per_phase"] = rss.reset_ok
    if (info["other_processes_cores"] or 0) > 0.2:
        print(
            f"\nwarning: other processes used {info['other_processes_cores']:.2f} of "
            f"{os.cpu_count()} cores on average during the run; figures may be low"
        )
    where = info["cpu"] if a.device == "cpu" else info.get("gpu")
    print_tables(res, a, f"{where}, torch {info['torch']}")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        result = {
            "benchmark": "cluster_age_throughput",
            "machine": info,
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
            "data": data_info,
            **res,
        }
        a.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()
