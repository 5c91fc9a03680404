"""morphology: training-step, head-only, inference and loader images/s of the DINOv2 ViT study.

The Galaxy Zoo vote-fraction study (:mod:`astrobatch.studies.morphology.train`) on random
weights and random data: nothing is read from ``data/`` and nothing is downloaded. Every
model is built by the stage code, ``build_task(params, manifest, "full")``, from the
``morphology`` section's defaults (:class:`MorphologyParams`) with ``model`` overrides per
backbone; ``manifest`` is ``{"answers", "question_index", "image_size"}`` of the DECaLS
schema restricted to the questions GZ DECaLS and GZ2 share (what ``prepare`` writes by
default: 22 answers, 7 questions). Backbones (``--backbones``):

``default``
    The params.yaml small random DINOv2: hidden 96, 3 layers, 3 heads, patch 8, 64 px.
``tiny-192``
    Hidden 192, 4 layers, 3 heads, patch 8, 112 px (14 x 14 patches).
``dinov2-small-shape``
    Random weights in the ``facebook/dinov2-small`` shape (hidden 384, 12 layers, 6 heads,
    patch 14) at 224 px (16 x 16 patches), the size the pretrained weights were made for.
``convnet``
    ``backbone: convnet`` (:class:`~astrobatch.nn.cnn.ConvEncoder`, conv [16, 32, 64]), 64 px.

The head is always the params' :class:`~astrobatch.nn.heads.VoteHead` (-> 512 -> 256 -> 22,
BatchNorm, ReLU, dropout 0.2). Targets are random ``(B, 3, A)`` fractions, counts and
weights (Poisson votes per answer); images are uniform random uint8 planes.

Training step (images/s)
    One step of the ``full`` stage as Lightning runs it: ``task.train()``, forward +
    ``VoteTask.compute_losses`` (its :class:`~astrobatch.tasks.votes.VoteLoss`, ``--loss``,
    default ``mse``) + backward + gradient clipping (``full.gradient_clip_val``, 0.5, by
    norm) + the step of ``task.configure_optimizers()["optimizer"]`` (AdamW with the task's
    four parameter groups: backbone at ``full.lr_backbone``, head at ``full.lr_head``, each
    split into decayed / not decayed; the scheduler is not stepped). Input: normalised
    float32 images, ``POOL`` batches drawn once from the augmented loader path below and
    kept on the device, so this is compute only.
Head-only step (images/s)
    The ``head`` stage: ``build_task(params, manifest, "head")`` fed 2-D ``(B, D)`` precomputed
    embeddings (``VoteTask.encode`` passes them through), same step with its optimizer,
    batch ``--head-batch-size`` (default ``head.batch_size``, 128).
Inference (images/s)
    ``task.eval()`` under ``torch.inference_mode``: backbone + head on kept batches of
    ``--infer-batch-size`` images (default 64; 8 for ``dinov2-small-shape``), and
    :func:`~astrobatch.studies.morphology.train.embed` (backbone only, what the head stage
    runs once per set) over a whole non-augmented :class:`ImageShardDataset`, so it includes
    the shard reads and the uint8 -> float normalisation.
Data path (images/s)
    ``ImageShardDataset.__getitems__`` with augmentation on (``augment`` defaults: flips,
    quarter turns, colour jitter 0.05, per-image seeded draws) and the backbone's
    ``image_transform``, reading a temporary uint8 shard written with
    :class:`~astrobatch.io.shards.ShardWriter` (the columns of ``prepare``'s
    ``_shard_columns``, 64-image chunks) per image size, through the training DataLoader
    (``CutoutDataModule.loader("train", shuffle=True)``, chunk-aware sampler,
    ``num_workers`` 0) over whole epochs, at the backbone's training batch size. The split is
    held in memory (the default ``max_memory_bytes``, as in training). Reported with its
    *share*: the loader's time per image over loader + training step time per image, i.e.
    the fraction of a single-process training step spent waiting for data.

Timing: ``--warmup`` untimed steps (batches, epochs), then ``--repeats`` x ``--steps``;
median images/s (min-max over repeats). Steps, repeats and batch sizes are per backbone
(the table ``BACKBONES``; printed), because the 224 px ViT runs at ~1 image/s on a 2-core
CPU; ``--steps``, ``--repeats``, ``--batch-size``, ``--infer-batch-size`` override them for
every backbone.

Usage::

    .venv/bin/python benchmarks/bench_morphology_throughput.py \\
        --out benchmarks/results/morphology_throughput_cpu.json        # ~3 min, 2 cores
    .venv/bin/python benchmarks/bench_morphology_throughput.py --device cuda --precision bf16 \\
        --steps 20 --repeats 5 --batch-size 64 --out benchmarks/results/morphology_cuda_bf16.json

Options: ``--device cpu|cuda``, ``--precision 32|bf16`` (forward passes under
``torch.autocast(device_type, dtype=torch.bfloat16)``, the loss in float32),
``--threads`` (``torch.set_num_threads``; default all cores), ``--backbones``, ``--loss
mse|dirichlet``, ``--batch-size``, ``--head-batch-size``, ``--infer-batch-size``,
``--steps``, ``--repeats``, ``--warmup``, ``--skip-data``, ``--out`` (JSON: machine,
threads, arguments, per-backbone settings, raw rates). The CPU used by *other* processes
during the run (:class:`_common.OtherLoad`) is stored as ``machine.other_processes_cores``
and per backbone; above 0.2 cores a warning is printed (with 2 threads on 2 cores, one busy
core elsewhere slows a step many times over).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from _common import OtherLoad, autocast, machine_info
from _common import timed_rates as timed
from astrobatch.data.images import CutoutDataModule, ImageShardDataset
from astrobatch.io.shards import ShardWriter
from astrobatch.studies.morphology import schema
from astrobatch.studies.morphology.params import MorphologyParams
from astrobatch.studies.morphology.prepare import _shard_columns
from astrobatch.studies.morphology.train import FULL, HEAD, VoteTask, build_task, embed
from astrobatch.studies.morphology.train import image_transform as make_image_transform

POOL = 4  # batches kept on the device for the compute-only steps
CHUNK = 64  # images per HDF5 chunk (prepare's data.chunk_images default)

#: Per backbone: ``model`` overrides, image side, training / inference batch, timed steps,
#: repeats, images in the temporary shard (embed() runs over all of them).
BACKBONES: dict[str, dict] = {
    "default": {
        "model": {},
        "size": 64, "batch": 32, "infer_batch": 64, "steps": 10, "repeats": 3, "shard": 512,
    },
    "tiny-192": {
        "model": {"hidden_size": 192, "num_hidden_layers": 4, "num_attention_heads": 3,
                  "patch_size": 8},
        "size": 112, "batch": 32, "infer_batch": 64, "steps": 3, "repeats": 3, "shard": 256,
    },
    "dinov2-small-shape": {
        "model": {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6,
                  "patch_size": 14},
        "size": 224, "batch": 4, "infer_batch": 8, "steps": 2, "repeats": 2, "shard": 16,
    },
    "convnet": {
        "model": {"backbone": "convnet", "conv_channels": [16, 32, 64]},
        "size": 64, "batch": 32, "infer_batch": 64, "steps": 10, "repeats": 3, "shard": 512,
    },
}  # fmt: skip


# ------------------------------------------------------------------ machine


# ------------------------------------------------------------------ setup


def manifest_for(size: int) -> dict:
    """The prepared manifest's schema keys: DECaLS restricted to the GZ DECaLS / GZ2 questions."""
    s = schema.DECALS.restrict(schema.shared_questions(["gz_decals", "gz2"]))
    return {
        "answers": list(s.answer_names),
        "question_index": [int(q) for q in s.question_index],
        "image_size": size,
    }


def params_for(name: str, loss: str) -> MorphologyParams:
    """The section's defaults with the backbone's ``model`` overrides and ``loss`` (validated)."""
    return MorphologyParams.model_validate({"model": BACKBONES[name]["model"], "loss": loss})


def random_targets(n: int, question_index: list[int], rng: np.random.Generator) -> np.ndarray:
    """``(n, 3, A)`` float32: vote fractions per question, Poisson vote counts, weights."""
    q = np.asarray(question_index)
    counts = rng.poisson(5.0, (n, len(q))).astype(np.float32)
    totals = np.zeros((n, q.max() + 1), np.float32)
    np.add.at(totals.T, q, counts.T)
    per_answer = totals[:, q]
    frac = np.divide(counts, per_answer, out=np.zeros_like(counts), where=per_answer > 0)
    weights = per_answer / np.float32(per_answer.max())
    return np.stack([frac, counts, weights], axis=1)


def write_shard(path: Path, n: int, size: int, manifest: dict, seed: int) -> np.ndarray:
    """A uint8 shard of ``n`` random images with prepare's columns; returns its targets."""
    rng = np.random.default_rng(seed)
    answers = manifest["answers"]
    t = random_targets(n, manifest["question_index"], rng)
    cols = _shard_columns(len(answers), size, answers)
    with ShardWriter(path, cols, chunk_rows=min(CHUNK, n), attrs={"split": "train"}) as w:
        for a in range(0, n, CHUNK):
            b = min(a + CHUNK, n)
            w.append({
                "images": rng.integers(0, 256, (b - a, 3, size, size), dtype=np.uint8),
                "fractions": t[a:b, 0], "counts": t[a:b, 1], "weights": t[a:b, 2],
                "galaxy_id": [f"g{i}" for i in range(a, b)], "survey": ["sim"] * (b - a),
            })  # fmt: skip
    return t


def image_dataset(p: MorphologyParams, path: Path, transform, targets, augment: bool):
    """The training :class:`ImageShardDataset` as ``image_datasets`` builds it."""
    a = p.augment
    return ImageShardDataset(path, transform, targets, augment=augment, seed=p.seed,
                             flips=a.flips, rotations=a.rotations,
                             colour_jitter=a.colour_jitter)  # fmt: skip


# ------------------------------------------------------------------ timing


def summary(rates: list[float], **extra) -> dict:
    return {
        "images_per_s": statistics.median(rates),
        "images_per_s_min": min(rates),
        "images_per_s_max": max(rates),
        "repeats": rates,
        **extra,
    }


class Stepper:
    """forward + ``compute_losses`` + backward + clip-by-norm + the task's AdamW step."""

    def __init__(self, task: VoteTask, clip: float, device, precision: str):
        self.task = task.to(device).train()
        self.opt = task.configure_optimizers()["optimizer"]
        self.clip, self.device, self.precision = clip, device, precision
        self.groups = [
            {"name": g.get("name"), "lr": g["lr"], "weight_decay": g["weight_decay"],
             "params": sum(p.numel() for p in g["params"])}
            for g in self.opt.param_groups
        ]  # fmt: skip

    def __call__(self, batch: dict) -> None:
        with autocast(self.device, self.precision):
            pred = self.task(batch["x"])
        loss = self.task.loss_fn(pred.float(), batch["y"])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.task.parameters(), self.clip)
        self.opt.step()


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def to_device(b: dict, device) -> dict:
    return {"x": b["x"].to(device), "y": b["y"].to(device)}


def bench_backbone(name: str, cfg: dict, shard: Path, targets: np.ndarray, device, a) -> dict:
    """All measurements of one backbone (its shard already written)."""
    load = OtherLoad()
    p = params_for(name, a.loss)
    manifest = manifest_for(cfg["size"])
    torch.manual_seed(p.seed)
    task = build_task(p, manifest, FULL)
    transform = make_image_transform(task.model)
    bs, ibs, steps, reps = cfg["batch"], cfg["infer_batch"], cfg["steps"], cfg["repeats"]
    warm = a.warmup
    out: dict = {
        "backbone": name,
        "image_size": cfg["size"],
        "model": p.model.model_dump(),
        "loss": a.loss,
        "params_backbone": n_params(task.model),
        "params_head": n_params(task.head),
        "batch_size": bs,
        "infer_batch_size": ibs,
        "steps": steps,
        "repeats_n": reps,
        "shard_images": len(targets),
    }
    rng = np.random.default_rng(p.seed)

    # -- data path: the augmented training loader over whole epochs
    ds = image_dataset(p, shard, transform, targets, augment=True)
    dm = CutoutDataModule({"train": ds}, bs, p.seed, 0)
    loader = dm.loader("train", shuffle=True)
    pool = [to_device(ds.__getitems__(rng.choice(len(ds), bs).tolist()), device)
            for _ in range(POOL)]  # fmt: skip
    if not a.skip_data:
        epoch = [0]

        def run_epoch(_):
            loader.batch_sampler.set_epoch(epoch[0])
            epoch[0] += 1
            seen = 0
            for b in loader:
                seen += len(b["x"])
            return seen

        n_ep = sum(len(b) for b in loader.batch_sampler)  # images per epoch
        out["data"] = summary(
            timed(run_epoch, n_ep, 1, max(3, reps), 1, device), epochs=max(3, reps)
        )
        print(f"  {name}: data path {out['data']['images_per_s']:,.0f} img/s", flush=True)

    # -- training step of the full model
    step = Stepper(task, p.full.gradient_clip_val, device, a.precision)
    out["param_groups"] = step.groups
    out["train"] = summary(timed(lambda i: step(pool[i % POOL]), bs, steps, reps, warm, device))
    print(f"  {name}: train step {out['train']['images_per_s']:,.1f} img/s", flush=True)

    # -- inference: backbone + head, and embed() (backbone only) over the shard
    task.eval()
    xs = [torch.cat([pool[(j + k) % POOL]["x"] for k in range(-(-ibs // bs))])[:ibs]
          for j in range(POOL)]  # fmt: skip

    @torch.inference_mode()
    def infer(i):
        with autocast(device, a.precision):
            task(xs[i % POOL])

    out["infer"] = summary(timed(infer, ibs, steps, reps, min(warm, 1), device))
    print(f"  {name}: inference {out['infer']['images_per_s']:,.1f} img/s", flush=True)
    emb_ds = image_dataset(p, shard, transform, targets, augment=False)
    encoder = task.model.to(device)
    if device.type == "cuda":  # embed() feeds CPU batches: move them for the model

        class OnDevice(nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m, self.out_features = m, m.out_features

            def forward(self, x):
                return self.m(x.to(device))

        encoder = OnDevice(encoder)

    def run_embed(_):
        with autocast(device, a.precision):
            embed(encoder, emb_ds, ibs)

    out["embed"] = summary(timed(run_embed, len(emb_ds), 1, reps, 1, device))
    print(f"  {name}: embed() {out['embed']['images_per_s']:,.1f} img/s", flush=True)
    with torch.inference_mode():
        emb = task.model(pool[0]["x"]).float()

    # -- head-only step on precomputed embeddings (the head stage)
    hbs = a.head_batch_size or p.head.batch_size
    torch.manual_seed(p.seed)
    head_task = build_task(p, manifest, HEAD)
    d = emb.shape[1]
    hpool = [
        {"x": torch.randn(hbs, d, device=device),
         "y": torch.from_numpy(random_targets(hbs, manifest["question_index"], rng)).to(device)}
        for _ in range(POOL)
    ]  # fmt: skip
    hstep = Stepper(head_task, p.head.gradient_clip_val, device, a.precision)
    hsteps = max(steps, 20)
    out["head"] = summary(
        timed(lambda i: hstep(hpool[i % POOL]), hbs, hsteps, reps, warm, device),
        batch_size=hbs, steps=hsteps, embedding_dim=d,
    )  # fmt: skip
    print(f"  {name}: head-only step {out['head']['images_per_s']:,.0f} img/s", flush=True)
    if "data" in out:
        t_load = 1 / out["data"]["images_per_s"]
        out["data_share"] = t_load / (t_load + 1 / out["train"]["images_per_s"])
    out["other_processes_cores"] = load.cores()
    return out


# ------------------------------------------------------------------ output


def rate(r: dict, fmt: str = ",.1f") -> str:
    return (
        f"{r['images_per_s']:{fmt}} ({r['images_per_s_min']:{fmt}}–{r['images_per_s_max']:{fmt}})"
    )


def print_tables(rows: list[dict], a, where: str) -> None:
    print(
        f"\nmorphology throughput, images/s, median (min–max over repeats); {where}, "
        f"precision {a.precision}, loss {a.loss}\n"
    )
    print(
        "| backbone | px | params (backbone + head) | train step | head-only step "
        "| inference (backbone + head) | embed() | data path | data share |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        data = rate(r["data"], ",.0f") if "data" in r else "–"
        share = f"{r['data_share']:.1%}" if "data_share" in r else "–"
        print(
            f"| {r['backbone']} | {r['image_size']} "
            f"| {r['params_backbone']:,} + {r['params_head']:,} | {rate(r['train'])} "
            f"| {rate(r['head'], ',.0f')} | {rate(r['infer'])} | {rate(r['embed'])} "
            f"| {data} | {share} |"
        )
    print("\nsettings per backbone\n")
    print(
        "| backbone | train batch | head batch | infer / embed batch | timed steps "
        "| head steps | shard images | train ms/step | other load (cores) |"
    )
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|")
    for r in rows:
        o = r["other_processes_cores"]
        print(
            f"| {r['backbone']} | {r['batch_size']} | {r['head']['batch_size']} "
            f"| {r['infer_batch_size']} | {r['repeats_n']} x {r['steps']} (+{a.warmup} warm-up) "
            f"| {r['head']['steps']} | {r['shard_images']} "
            f"| {1e3 * r['batch_size'] / r['train']['images_per_s']:,.0f} "
            f"| {'–' if o is None else f'{o:.2f}'} |"
        )


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--precision", choices=["32", "bf16"], default="32")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: cores)")
    ap.add_argument("--backbones", nargs="+", choices=list(BACKBONES), default=list(BACKBONES))
    ap.add_argument("--loss", choices=["mse", "dirichlet"], default="mse")
    ap.add_argument("--batch-size", type=int, default=None, help="training batch (all)")
    ap.add_argument("--head-batch-size", type=int, default=None, help="default head.batch_size")
    ap.add_argument("--infer-batch-size", type=int, default=None, help="inference/embed batch")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per repeat (all)")
    ap.add_argument("--repeats", type=int, default=None, help="repeats (all)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    ap.add_argument("--skip-data", action="store_true", help="no data-path measurement")
    ap.add_argument("--out", type=Path, default=None, help="JSON results file")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    t_start = time.perf_counter()
    a = parse(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible to torch")
    torch.set_num_threads(a.threads or os.cpu_count() or 1)
    device = torch.device(a.device)
    other = OtherLoad()
    cfgs = {}
    for name in a.backbones:
        c = dict(BACKBONES[name])
        for key, opt in (("batch", a.batch_size), ("infer_batch", a.infer_batch_size),
                         ("steps", a.steps), ("repeats", a.repeats)):  # fmt: skip
            if opt:
                c[key] = opt
        c["shard"] = max(c["shard"], c["batch"], c["infer_batch"])
        cfgs[name] = c
    print(f"device={device} precision={a.precision} threads={torch.get_num_threads()}")
    for name, c in cfgs.items():
        print(
            f"  {name}: {c['size']} px, batch {c['batch']} (inference {c['infer_batch']}), "
            f"{c['repeats']} x {c['steps']} steps, shard of {c['shard']} images",
            flush=True,
        )
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_morphology_") as tmp:
        shards: dict[tuple[int, int], tuple[Path, np.ndarray]] = {}
        for name, c in cfgs.items():
            key = (c["size"], c["shard"])
            if key not in shards:
                path = Path(tmp) / f"train_{c['size']}px_{c['shard']}.h5"
                shards[key] = (path, write_shard(path, c["shard"], c["size"],
                                                 manifest_for(c["size"]), 0))  # fmt: skip
            rows.append(bench_backbone(name, c, *shards[key], device, a))
    info = machine_info(device, ("transformers",))
    info["other_processes_cores"] = other.cores()
    if (info["other_processes_cores"] or 0) > 0.2:
        print(
            f"\nwarning: other processes used {info['other_processes_cores']:.2f} of "
            f"{os.cpu_count()} cores on average during the run; figures may be low"
        )
    where = info["cpu"] if a.device == "cpu" else info.get("gpu")
    print_tables(rows, a, f"{where}, {info['torch_threads']} threads, torch {info['torch']}")
    wall = time.perf_counter() - t_start
    o = info["other_processes_cores"]
    print(f"\nrun took {wall:.0f} s; other processes used {'?' if o is None else f'{o:.2f}'} cores")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        result = {
            "benchmark": "morphology_throughput",
            "machine": info,
            "threads": torch.get_num_threads(),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
            "settings": cfgs,
            "wall_s": wall,
            "results": rows,
        }
        a.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
