"""cluster_finder: training-step and inference throughput of the image and member-set models.

The cluster_finder study (:mod:`astrobatch.studies.cluster_finder`) on random weights and
random data built in memory: nothing is read from ``data/`` and nothing is downloaded.
Every model is built as the stage builds it, from the ``ClusterFinderParams()`` defaults
(seed ``params.seed``), with random weights:

``detector``
    :class:`~astrobatch.studies.cluster_finder.detect.DetectorTask` (ConvEncoder feature map,
    conv ``images.conv_channels`` 16/32/64, + CenterNetHead, ``images.detector_hidden`` 64),
    as ``train_detector`` builds it, at ``data.image_size`` (64 px) and at 128 px
    (``--detector-sizes``); 3 input channels (g, r, i).
``classifier``
    :class:`~astrobatch.studies.cluster_finder.detect.ClassifierTask` (ConvEncoder + MLPHead
    ``images.head_hidden`` [64], dropout 0.1) as ``train_classifier`` builds it, 64 px.
``janossy-k2``
    ``members.build_task(params.redshift, F, rotate_columns)``: the redshift defaults,
    k = 2 Janossy pooling (32 tuples per set in training, 128 in eval), sets of
    ``redshift.sampling.num_star_per_sample`` = 64 members.
``janossy-k10``
    ``members.build_task(params.richness, ...)``: the richness defaults, k = 10 with the
    ``log1p(n)`` count feature, sets of 256 members.
``deep_sets``, ``set_transformer``
    The redshift defaults with ``model.name`` replaced (hidden 64; Set Transformer: 2 SAB
    blocks, 4 heads, no inducing points), sets of 64 members.

F = ``len(params.data.features)`` = 18 member features; the unit-vector columns
(``ux``, ``uy``, ``uz``) are rotated by the task's
:class:`~astrobatch.data.rotations.RandomSkyRotation` (``rotate`` defaults to True).

Random data, drawn once per case from ``numpy.random.default_rng(params.seed)`` and kept on
the device (``POOL`` batches, cycled), so every figure is compute only:

- images: ``(B, 3, S, S)`` float32, standard normal (prepared images are asinh-stretched
  floats of about that range); detector batches carry 1-3 random boxes per image (sides
  uniform in [S/8, S/2] pixels, each box wholly inside the image); classifier labels are
  random 0 / 1;
- member sets: ``(B, N, F)`` float32 padded to N = ``num_star_per_sample``, each set with a
  random valid length uniform in [``data.min_members`` (3), N] (mask True on the first
  ones, padded slots 0); features standard normal except the unit-vector columns, which are
  random unit vectors; targets standard normal (model space).

Training step (images/s or clusters/s)
    What Lightning runs per batch in ``train_model``: ``task.train()``, the loss under
    autocast (``--precision bf16``, as Lightning's ``bf16-mixed``), ``zero_grad``, backward,
    gradient clipping by norm at the target's ``TrainingParams.gradient_clip_val`` (0.5),
    and the step of ``task.configure_optimizers()["optimizer"]`` (AdamW; the per-epoch
    cosine scheduler is not stepped). The loss is ``DetectorTask.loss_terms(x, boxes)["loss"]``
    for the detector (its CenterNet targets are built from the boxes inside the step, as in
    training), ``ClassifierTask.training_step`` (BCE with logits) for the classifier and
    ``MemberRegressionTask.training_step`` for the set models (one random sky rotation per
    set, then the Huber loss). The ``self.log`` calls of those steps are no-ops without a
    Trainer. Batch: ``detector.batch_size`` (16), ``classifier.batch_size`` (32), the target's
    ``training.batch_size`` (64) for the set models. With ``--precision bf16`` the set
    models' rotation runs outside autocast and the rest of the step
    (``RegressionTask.training_step``) inside it: ``RandomSkyRotation`` under autocast fails
    (``rotate_unit_vectors`` writes the bf16 product of its matmul into a float32 copy:
    "Index put requires the source and destination dtypes match"), so the step exactly as
    Lightning's ``bf16-mixed`` would run it does not run at all.
Inference (images/s or clusters/s)
    ``task.eval()`` under ``torch.inference_mode``. Detector: ``task.predict_boxes(x,
    detection.score_threshold (0.3), detection.iou_threshold (0.45))``, i.e. the forward
    pass and :func:`~astrobatch.nn.detection.decode_detections` (3x3 peak picking,
    threshold, NMS per image), batch 64 (``detect_images``' default). With random weights
    and the head's built heatmap bias (-2.19, prior score ~0.1) few or no peaks reach 0.3,
    so the decode does almost no box work; a second figure, *every peak a candidate*, times the
    same call on a copy of the model whose final heatmap bias is 0 (scores ~0.5: every 3x3
    peak passes the threshold and goes through NMS), an upper bound for the decode's share.
    The mean detections per image of both are reported. Classifier: ``task(x)`` and the
    sigmoid, batch 256 (``predict_images``' default). Set models: ``task(x, mask)``, batch
    128 (``predict_sets``' default); Janossy pooling in eval draws ``n_tuples_eval`` (128)
    deterministic tuples per set.

Timing: ``--warmup`` untimed steps, then ``--repeats`` x ``--steps`` timed steps; median
rate (min-max over repeats). Steps are per model family (the table ``CASES``, printed):
image models 3 x 3, set models 3 x 5, 1 warm-up step, so the default CPU run takes ~2 min
on 2 cores (1 min 49 s with the imports, one core busy elsewhere); ``--steps``,
``--repeats``, ``--warmup``, ``--batch-size`` and ``--infer-batch-size`` override them for
every case.

Usage::

    .venv/bin/python benchmarks/bench_cluster_finder_throughput.py \\
        --out benchmarks/results/cluster_finder_throughput_cpu.json      # ~2 min, 2 cores
    .venv/bin/python benchmarks/bench_cluster_finder_throughput.py --device cuda \\
        --precision bf16 --steps 50 --repeats 5 \\
        --out benchmarks/results/cluster_finder_throughput_cuda_bf16.json

Options: ``--device cpu|cuda``, ``--precision 32|bf16`` (``torch.autocast`` with
bfloat16 around the loss computation), ``--threads`` (``torch.set_num_threads``; default
all cores), ``--cases``, ``--detector-sizes``, ``--batch-size``, ``--infer-batch-size``,
``--steps``, ``--repeats``, ``--warmup``, ``--out`` (JSON: machine, threads, arguments,
per-case settings, raw rates). The CPU used by *other* processes during the run
(:class:`_common.OtherLoad`) is stored as ``machine.other_processes_cores`` and per case;
above 0.2 cores a warning is printed (with 2 threads on 2 cores, one busy core elsewhere
slows a step several times over).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from _common import (
    OtherLoad,
    autocast,
    machine_info,
    other_load_warning,
    rate_summary,
    sync,
    timed_rates,
)
from astrobatch.studies.cluster_finder.detect import ClassifierTask, DetectorTask
from astrobatch.studies.cluster_finder.members import MemberRegressionTask, build_task
from astrobatch.studies.cluster_finder.params import (
    UNIT_VECTOR,
    ClusterFinderParams,
    MembersTarget,
)
from astrobatch.tasks.regression import RegressionTask

POOL = 4  # batches kept on the device, cycled

#: Per case: family (``image`` / ``set``), the member target and ``model`` overrides of set
#: models, timed steps and repeats (image cases: one per ``--detector-sizes`` for the detector).
CASES: dict[str, dict] = {
    "detector": {"family": "image", "steps": 3, "repeats": 3},
    "classifier": {"family": "image", "steps": 3, "repeats": 3},
    "janossy-k2": {"family": "set", "target": "redshift", "model": {}, "steps": 5, "repeats": 3},
    "janossy-k10": {"family": "set", "target": "richness", "model": {}, "steps": 5, "repeats": 3},
    "deep_sets": {"family": "set", "target": "redshift", "model": {"name": "deep_sets"},
                  "steps": 5, "repeats": 3},
    "set_transformer": {"family": "set", "target": "redshift",
                        "model": {"name": "set_transformer"}, "steps": 5, "repeats": 3},
}  # fmt: skip
DETECT_INFER_BATCH = 64  # detect_images' default
CLASSIFY_INFER_BATCH = 256  # predict_images' default
SET_INFER_BATCH = 128  # predict_sets' default


# ------------------------------------------------------------------ random data


def random_boxes(rng: np.random.Generator, size: int) -> torch.Tensor:
    """1-3 boxes ``(x_min, y_min, x_max, y_max)`` inside a ``size`` px image, sides S/8-S/2."""
    k = int(rng.integers(1, 4))
    wh = rng.uniform(size / 8, size / 2, (k, 2))
    lo = rng.uniform(0, 1, (k, 2)) * (size - wh)
    return torch.from_numpy(np.concatenate([lo, lo + wh], axis=1).astype(np.float32))


def image_batch(rng: np.random.Generator, n: int, size: int, device) -> dict:
    """``x`` (n, 3, S, S), ``y`` (n,) 0 / 1 labels, ``boxes``: n tensors (k, 4), on ``device``."""
    x = torch.from_numpy(rng.standard_normal((n, 3, size, size), dtype=np.float32))
    y = torch.from_numpy(rng.integers(0, 2, n).astype(np.float32))
    boxes = [random_boxes(rng, size).to(device) for _ in range(n)]
    return {"x": x.to(device), "y": y.to(device), "boxes": boxes}


def set_batch(
    rng: np.random.Generator, n: int, n_members: int, features: list[str], min_members: int,
    device,
) -> dict:  # fmt: skip
    """Padded sets ``x`` (n, N, F), ``mask`` (n, N) with random valid lengths, ``y`` (n,)."""
    x = rng.standard_normal((n, n_members, len(features)), dtype=np.float32)
    cols = [features.index(u) for u in UNIT_VECTOR if u in features]
    if len(cols) == 3:
        v = x[..., cols]
        x[..., cols] = v / np.linalg.norm(v, axis=-1, keepdims=True)
    lengths = rng.integers(min(min_members, n_members), n_members + 1, n)
    mask = np.arange(n_members)[None, :] < lengths[:, None]
    x[~mask] = 0.0
    y = rng.standard_normal(n, dtype=np.float32)
    return {
        "x": torch.from_numpy(x).to(device),
        "mask": torch.from_numpy(mask).to(device),
        "y": torch.from_numpy(y).to(device),
    }


# ------------------------------------------------------------------ steps


class Stepper:
    """One training step: the loss under autocast, zero_grad, backward, clip, the task's AdamW."""

    def __init__(self, task: nn.Module, loss, clip: float, device, precision: str):
        self.task = task.to(device).train()
        self.opt = task.configure_optimizers()["optimizer"]
        self.loss, self.clip, self.device, self.precision = loss, clip, device, precision

    def __call__(self, batch: dict, i: int) -> None:
        with autocast(self.device, self.precision):
            loss = self.loss(batch, i)
        self.opt.zero_grad(set_to_none=True)
        loss.float().backward()
        nn.utils.clip_grad_norm_(self.task.parameters(), self.clip)
        self.opt.step()


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def other_cores(load: OtherLoad) -> float | None:
    c = load.cores()
    return None if c is None else round(c, 3)


def train_rates(task, loss, clip, pool, batch, cfg, device, a) -> dict:
    step = Stepper(task, loss, clip, device, a.precision)
    rates = timed_rates(lambda i: step(pool[i % POOL], i), batch, cfg["steps"], cfg["repeats"],
                        a.warmup, device)  # fmt: skip
    return rate_summary(rates, batch_size=batch)


# ------------------------------------------------------------------ cases


def bench_detector(p: ClusterFinderParams, size: int, cfg: dict, device, a) -> dict:
    """Training step and inference (with the decode) of the detector at ``size`` px."""
    load = OtherLoad()
    m, t = p.images, p.detector
    rng = np.random.default_rng(p.seed)
    torch.manual_seed(p.seed)
    task = DetectorTask(3, size, m.conv_channels, m.detector_hidden, t.lr, t.weight_decay,
                        t.max_epochs)  # fmt: skip
    bs = a.batch_size or t.batch_size
    ibs = a.infer_batch_size or DETECT_INFER_BATCH
    out: dict = {"case": "detector", "image_size": size, "params": n_params(task),
                 "map_size": None}  # fmt: skip
    pool = [image_batch(rng, bs, size, device) for _ in range(POOL)]
    out["boxes_per_image"] = float(np.mean([len(b) for q in pool for b in q["boxes"]]))
    out["train"] = train_rates(
        task, lambda b, i: task.loss_terms(b["x"], b["boxes"])["loss"], t.gradient_clip_val,
        pool, bs, cfg, device, a,
    )  # fmt: skip
    print(f"  detector {size} px: train step {out['train']['per_s']:,.1f} images/s", flush=True)

    xs = [image_batch(rng, ibs, size, device)["x"] for _ in range(POOL)]
    d = p.detection
    peaks = copy.deepcopy(task)
    with torch.no_grad():
        peaks.head.heatmap[-1].bias.fill_(0.0)
    for key, model in (("infer", task), ("infer_peaks", peaks)):
        model.eval()

        @torch.inference_mode()
        def infer(i, model=model):
            with autocast(device, a.precision):
                return model.predict_boxes(xs[i % POOL], d.score_threshold, d.iou_threshold)

        rates = timed_rates(infer, ibs, cfg["steps"], cfg["repeats"], min(a.warmup, 1), device)
        dets = [len(boxes) for i in range(POOL) for boxes, _ in infer(i)]
        out[key] = rate_summary(rates, batch_size=ibs, detections_per_image=float(np.mean(dets)))
        print(f"  detector {size} px: {key} {out[key]['per_s']:,.1f} images/s "
              f"({np.mean(dets):.2f} detections/image)", flush=True)  # fmt: skip
    with torch.inference_mode():
        out["map_size"] = int(task(xs[0][:1])[0].shape[-1])
    out["score_threshold"], out["iou_threshold"] = d.score_threshold, d.iou_threshold
    out["other_processes_cores"] = other_cores(load)
    return out


def bench_classifier(p: ClusterFinderParams, cfg: dict, device, a) -> dict:
    """Training step and inference of the classifier at ``data.image_size`` px."""
    load = OtherLoad()
    m, t, size = p.images, p.classifier, p.data.image_size
    rng = np.random.default_rng(p.seed)
    torch.manual_seed(p.seed)
    task = ClassifierTask(3, size, m.conv_channels, m.head_hidden, m.dropout, t.lr,
                          t.weight_decay, t.max_epochs)  # fmt: skip
    bs = a.batch_size or t.batch_size
    ibs = a.infer_batch_size or CLASSIFY_INFER_BATCH
    out: dict = {"case": "classifier", "image_size": size, "params": n_params(task)}
    pool = [image_batch(rng, bs, size, device) for _ in range(POOL)]
    out["train"] = train_rates(task, task.training_step, t.gradient_clip_val, pool, bs, cfg,
                               device, a)  # fmt: skip
    print(f"  classifier {size} px: train step {out['train']['per_s']:,.1f} images/s", flush=True)
    xs = [image_batch(rng, ibs, size, device)["x"] for _ in range(POOL)]
    task.eval()

    @torch.inference_mode()
    def infer(i):
        with autocast(device, a.precision):
            torch.sigmoid(task(xs[i % POOL]))

    rates = timed_rates(infer, ibs, cfg["steps"], cfg["repeats"], min(a.warmup, 1), device)
    out["infer"] = rate_summary(rates, batch_size=ibs)
    print(f"  classifier {size} px: inference {out['infer']['per_s']:,.1f} images/s", flush=True)
    out["other_processes_cores"] = other_cores(load)
    return out


def set_loss(task: MemberRegressionTask, precision: str):
    """``task.training_step``; for bf16 the sky rotation runs outside autocast (see docstring)."""
    if precision != "bf16" or task.rotate is None:
        return task.training_step

    def loss(batch, i):
        with torch.autocast(batch["x"].device.type, enabled=False):
            x, mask = task.rotate(batch["x"], batch["mask"])
        return RegressionTask.training_step(task, {**batch, "x": x, "mask": mask}, i)

    return loss


def bench_set_model(p: ClusterFinderParams, name: str, cfg: dict, device, a) -> dict:
    """Training step (with the sky rotation) and inference of one member-set model."""
    load = OtherLoad()
    base: MembersTarget = getattr(p, cfg["target"])
    spec = MembersTarget.model_validate(
        {**base.model_dump(), "model": {**base.model.model_dump(), **cfg["model"]}}
    )
    feats = list(p.data.features)
    rot = tuple(feats.index(u) for u in UNIT_VECTOR) if spec.rotate else None
    rng = np.random.default_rng(p.seed)
    torch.manual_seed(p.seed)
    task = build_task(spec, len(feats), rot)
    n = spec.sampling.num_star_per_sample
    bs = a.batch_size or spec.training.batch_size
    ibs = a.infer_batch_size or SET_INFER_BATCH
    mm = p.data.min_members
    out: dict = {
        "case": name, "target": cfg["target"], "model": spec.model.model_dump(),
        "members": n, "features": len(feats), "rotate_columns": rot, "params": n_params(task),
    }  # fmt: skip
    pool = [set_batch(rng, bs, n, feats, mm, device) for _ in range(POOL)]
    out["mean_valid_length"] = float(np.mean([q["mask"].sum(1).float().mean().item()
                                              for q in pool]))  # fmt: skip
    out["train"] = train_rates(task, set_loss(task, a.precision), spec.training.gradient_clip_val,
                               pool, bs, cfg, device, a)  # fmt: skip
    print(f"  {name}: train step {out['train']['per_s']:,.0f} clusters/s", flush=True)
    ipool = [set_batch(rng, ibs, n, feats, mm, device) for _ in range(POOL)]
    task.eval()

    @torch.inference_mode()
    def infer(i):
        b = ipool[i % POOL]
        with autocast(device, a.precision):
            task(b["x"], b["mask"])

    rates = timed_rates(infer, ibs, cfg["steps"], cfg["repeats"], min(a.warmup, 1), device)
    out["infer"] = rate_summary(rates, batch_size=ibs)
    print(f"  {name}: inference {out['infer']['per_s']:,.0f} clusters/s", flush=True)
    out["other_processes_cores"] = other_cores(load)
    return out


# ------------------------------------------------------------------ output


def rate(r: dict, fmt: str = ",.1f") -> str:
    return f"{r['per_s']:{fmt}} ({r['per_s_min']:{fmt}}–{r['per_s_max']:{fmt}})"


def print_tables(rows: list[dict], a, where: str) -> None:
    images = [r for r in rows if r["case"] in ("detector", "classifier")]
    sets = [r for r in rows if r not in images]
    print(f"\ncluster_finder throughput, median (min–max over repeats); {where}, "
          f"precision {a.precision}\n")  # fmt: skip
    if images:
        print("| model | px | params | train step (images/s) | inference (images/s) "
              "| inference, every peak a candidate | detections / image |")  # fmt: skip
        print("|---|---:|---:|---:|---:|---:|---:|")
        for r in images:
            pk = rate(r["infer_peaks"]) if "infer_peaks" in r else "–"
            dets = (f"{r['infer']['detections_per_image']:.2f} / "
                    f"{r['infer_peaks']['detections_per_image']:.2f}"
                    if "infer_peaks" in r else "–")  # fmt: skip
            print(f"| {r['case']} | {r['image_size']} | {r['params']:,} | {rate(r['train'])} "
                  f"| {rate(r['infer'])} | {pk} | {dets} |")  # fmt: skip
    if sets:
        print("\n| model | members N | params | train step (clusters/s) "
              "| inference (clusters/s) |")  # fmt: skip
        print("|---|---:|---:|---:|---:|")
        for r in sets:
            print(f"| {r['case']} | {r['members']} | {r['params']:,} "
                  f"| {rate(r['train'], ',.0f')} | {rate(r['infer'], ',.0f')} |")  # fmt: skip
    print("\nsettings per case\n")
    print("| case | train batch | inference batch | timed steps | train ms/step "
          "| other load (cores) |")  # fmt: skip
    print("|---|---:|---:|---|---:|---:|")
    for r in rows:
        label = r["case"] + (f" {r['image_size']} px" if r["case"] == "detector" else "")
        o = r["other_processes_cores"]
        print(f"| {label} | {r['train']['batch_size']} | {r['infer']['batch_size']} "
              f"| {r['repeats_n']} x {r['steps']} (+{a.warmup} warm-up) "
              f"| {1e3 * r['train']['batch_size'] / r['train']['per_s']:,.1f} "
              f"| {'–' if o is None else f'{o:.2f}'} |")  # fmt: skip


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--precision", choices=["32", "bf16"], default="32")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: cores)")
    ap.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    ap.add_argument("--detector-sizes", nargs="+", type=int, default=[64, 128],
                    help="detector image sides, px")  # fmt: skip
    ap.add_argument("--batch-size", type=int, default=None, help="training batch (all cases)")
    ap.add_argument("--infer-batch-size", type=int, default=None, help="inference batch (all)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per repeat (all)")
    ap.add_argument("--repeats", type=int, default=None, help="repeats (all)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    ap.add_argument("--out", type=Path, default=None, help="JSON results file")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    t_start = time.perf_counter()
    a = parse(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible to torch")
    # the tasks' self.log() calls are no-ops without a Trainer; Lightning warns about each
    warnings.filterwarnings("ignore", message=r".*self\.log\(\)")
    torch.set_num_threads(a.threads or os.cpu_count() or 1)
    device = torch.device(a.device)
    p = ClusterFinderParams()
    other = OtherLoad()
    cfgs = {}
    for name in a.cases:
        c = dict(CASES[name])
        if a.steps:
            c["steps"] = a.steps
        if a.repeats:
            c["repeats"] = a.repeats
        cfgs[name] = c
    print(f"device={device} precision={a.precision} threads={torch.get_num_threads()} "
          f"warm-up={a.warmup}")  # fmt: skip
    for name, c in cfgs.items():
        sizes = f", {a.detector_sizes} px" if name == "detector" else ""
        print(f"  {name}: {c['repeats']} x {c['steps']} steps{sizes}", flush=True)
    rows = []
    for name, c in cfgs.items():
        if name == "detector":
            found = [bench_detector(p, s, c, device, a) for s in a.detector_sizes]
        elif name == "classifier":
            found = [bench_classifier(p, c, device, a)]
        else:
            found = [bench_set_model(p, name, c, device, a)]
        for r in found:
            r["steps"], r["repeats_n"] = c["steps"], c["repeats"]
            if msg := other_load_warning(r["other_processes_cores"], r["case"]):
                print(f"  {msg}", flush=True)
        rows.extend(found)
    sync(device)
    info = machine_info(device, ("lightning",))
    info["other_processes_cores"] = other_cores(other)
    if msg := other_load_warning(info["other_processes_cores"]):
        print(f"\n{msg}")
    where = info["cpu"] if a.device == "cpu" else info.get("gpu")
    print_tables(rows, a, f"{where}, {info['torch_threads']} threads, torch {info['torch']}")
    wall = time.perf_counter() - t_start
    o = info["other_processes_cores"]
    print(f"\nrun took {wall:.0f} s; other processes used {'?' if o is None else f'{o:.2f}'} cores")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        result = {
            "benchmark": "cluster_finder_throughput",
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
