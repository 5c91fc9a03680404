"""morphology train: a DINOv2 ViT (or the conv encoder) with the seed's MLP head, two stages.

1. ``train-head``: the backbone frozen. Its embeddings (the pooled CLS token) of every
   training, validation and test image are computed once, without augmentation, and the
   head (:class:`~astrobatch.nn.heads.VoteHead`: →512→256→N, BatchNorm, ReLU, Dropout
   0.2) is trained on them (AdamW). The checkpoint holds the backbone too (unchanged), so
   the second stage and evaluation start from one file.
2. ``train-full``: backbone and head from the head stage's ``best.ckpt``, trained together
   on augmented images (flips, quarter turns, mild colour jitter) with separate learning
   rates (``full.lr_backbone``, ``full.lr_head``), early stopping on validation.

Losses (:class:`~astrobatch.tasks.votes.VoteLoss`): ``mse``, the seed's vote-weighted MSE on
fractions, but answers of questions a galaxy was never asked weigh 0 (the seed trained
them toward 0); ``dirichlet``, Zoobot's Dirichlet-multinomial negative log-likelihood on
raw counts per question (Walmsley et al. 2022, arXiv:2102.08414), unasked questions
contributing nothing. Targets are ``(n, 3, A)``: fractions, counts, weights.

Weights: ``model.weights_dir`` names a local folder (``save_pretrained`` layout or a
downloaded ``facebook/dinov2-small`` snapshot), loaded with ``local_files_only``; empty:
a small random config. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from astrobatch.data.images import (
    ArrayDataset,
    CutoutDataModule,
    ImageShardDataset,
    Uint8Normalise,
    open_shard,
)
from astrobatch.errors import InputError
from astrobatch.io.atomic import read_manifest
from astrobatch.nn.heads import VoteHead
from astrobatch.studies.morphology.params import MorphologyParams
from astrobatch.study import StudyPaths
from astrobatch.tasks.finetune import FinetuneTask
from astrobatch.tasks.votes import VoteLoss, expected_fractions
from astrobatch.train import load_model_weights, train_model

SPLITS = ("train", "val", "test")
HEAD = "head"
FULL = "full"


def read_targets(prepared_dir: str | Path, name: str) -> np.ndarray:
    """Targets of one prepared set: float32 (n, 3, A) = fractions, counts, weights.

    Raises
    ------
    InputError
        Missing shard or column.
    """
    path = Path(prepared_dir) / f"{name}.h5"
    with open_shard(path, require=("fractions", "counts", "weights")) as f:
        return np.stack([f.read("fractions"), f.read("counts"), f.read("weights")], axis=1)


def build_encoder(params: MorphologyParams, image_size: int) -> nn.Module:
    """The backbone of ``params.model``: DINOv2 (local weights or small random) or convnet.

    Raises
    ------
    InputError
        A weights folder that is missing, has no config or unreadable weights.
    """
    m = params.model
    if m.backbone == "convnet":
        from astrobatch.nn.cnn import ConvEncoder

        return ConvEncoder(3, image_size, m.conv_channels)
    from astrobatch.nn.vit import build_backbone

    if m.weights_dir:  # the local folder's own config; the small-config params do not apply
        return build_backbone(m.weights_dir, m.pooling)
    return build_backbone(
        None, m.pooling, hidden_size=m.hidden_size, num_hidden_layers=m.num_hidden_layers,
        num_attention_heads=m.num_attention_heads, patch_size=m.patch_size,
        image_size=image_size,
    )  # fmt: skip


def image_transform(encoder: nn.Module) -> Uint8Normalise:
    """uint8 -> float32 with the backbone's normalisation (ImageNet for DINOv2 weights)."""
    mean = getattr(encoder, "mean", None)
    std = getattr(encoder, "std", None)
    if mean is None or std is None:
        return Uint8Normalise()
    return Uint8Normalise(tuple(float(v) for v in mean), tuple(float(v) for v in std))


class VoteTask(FinetuneTask):
    """Backbone + vote head; a 2-D input is taken as precomputed backbone embeddings.

    Parameters
    ----------
    model : torch.nn.Module
        Backbone, images ``(B, 3, S, S)`` -> ``(B, D)``.
    head : VoteHead
    question_index : sequence of int
        Question of each answer (A,).
    loss : {"mse", "dirichlet"}
    **kwargs
        :class:`FinetuneTask` options (learning rates, weight decay, epochs).
    """

    def __init__(self, model: nn.Module, head: VoteHead, question_index, loss: str, **kwargs):
        super().__init__(model, head, VoteLoss(question_index, loss), **kwargs)
        self.kind = loss
        self.n_questions = int(max(question_index)) + 1
        self.register_buffer("qindex", torch.as_tensor(list(question_index), dtype=torch.long),
                             persistent=False)  # fmt: skip

    def encode(self, x: Tensor) -> Tensor:
        """Backbone features, or ``x`` itself when it already is ``(B, D)`` embeddings."""
        return x if x.ndim == 2 else self.model(x)

    def fractions(self, x: Tensor) -> Tensor:
        """Predicted vote fractions ``(B, A)`` (the Dirichlet mean for ``dirichlet``)."""
        out = self(x)
        return expected_fractions(out, self.qindex, self.n_questions) if self.kind == "dirichlet" \
            else out  # fmt: skip


def build_task(params: MorphologyParams, manifest: dict, stage: str) -> VoteTask:
    """The task of ``stage`` (``head`` or ``full``) for the prepared schema of ``manifest``."""
    encoder = build_encoder(params, int(manifest["image_size"]))
    m = params.model
    head = VoteHead(encoder.out_features, len(manifest["answers"]), m.head_hidden, m.dropout,
                    output="fraction" if params.loss == "mse" else "concentration")  # fmt: skip
    if stage == HEAD:
        t = params.head
        # the head stage trains on precomputed embeddings: the backbone takes no part, and
        # marking it so keeps DDP from waiting for gradients it never gets
        encoder.requires_grad_(False)
        return VoteTask(encoder, head, manifest["question_index"], params.loss,
                        lr_encoder=t.lr, lr_head=t.lr, weight_decay=t.weight_decay,
                        max_epochs=t.max_epochs).train()  # fmt: skip
    t = params.full
    return VoteTask(encoder, head, manifest["question_index"], params.loss,
                    lr_encoder=t.lr_backbone, lr_head=t.lr_head, weight_decay=t.weight_decay,
                    max_epochs=t.max_epochs).train()  # fmt: skip


def image_datasets(params: MorphologyParams, prepared_dir: Path, transform, names=SPLITS,
                   augment: bool = False) -> dict[str, ImageShardDataset]:  # fmt: skip
    """Image datasets of the prepared sets ``names`` (augmentation on ``train`` only)."""
    a = params.augment
    return {
        n: ImageShardDataset(
            prepared_dir / f"{n}.h5", transform, read_targets(prepared_dir, n),
            augment=augment and n == "train", seed=params.seed, flips=a.flips,
            rotations=a.rotations, colour_jitter=a.colour_jitter,
        )
        for n in names
    }  # fmt: skip


@torch.inference_mode()
def embed(encoder: nn.Module, dataset: ImageShardDataset, batch_size: int) -> np.ndarray:
    """Backbone embeddings of every image of ``dataset`` (eval mode), float32 (n, D)."""
    encoder.eval()
    out = []
    for a in range(0, len(dataset), batch_size):
        b = dataset.__getitems__(list(range(a, min(a + batch_size, len(dataset)))))
        out.append(encoder(b["x"]).float().numpy())
    return np.concatenate(out) if out else np.zeros((0, encoder.out_features), np.float32)


def _check_loss(params: MorphologyParams, targets: np.ndarray, path: Path) -> None:
    if params.loss == "dirichlet" and not (targets[:, 1] > 0).any():
        raise InputError(
            "loss: dirichlet needs vote counts, and the training set has none (fractions only: "
            "use loss: mse)", path, "counts",
        )  # fmt: skip


def train_head(params: MorphologyParams, paths: StudyPaths) -> dict:
    """Stage 1: the head on embeddings of the frozen backbone (computed once).

    Parameters
    ----------
    params : MorphologyParams
    paths : StudyPaths
        Reads ``prepared`` (``train.h5``, ``val.h5``, ``test.h5``, ``manifest.json``);
        writes ``models`` (``best.ckpt``, ``last.ckpt``: backbone and head; a copy of the
        training ``manifest.json``, the answer schema predict reads) and ``live``.

    Returns
    -------
    dict
        The training state.

    Raises
    ------
    InputError
        Missing prepared data, a bad weights folder, Dirichlet loss without counts.
    """
    prepared_dir, model_dir, live_dir = paths.need("prepared", "models", "live")
    manifest = read_manifest(prepared_dir, require=("answers", "question_index", "image_size"))
    t = params.head
    import lightning as L

    L.seed_everything(params.seed, workers=True, verbose=False)
    task0 = build_task(params, manifest, HEAD)  # train_model seeds the same: same backbone
    sets = image_datasets(params, prepared_dir, image_transform(task0.model))
    _check_loss(params, sets["train"].targets, prepared_dir / "train.h5")
    emb = {n: ArrayDataset(embed(task0.model, ds, t.batch_size), ds.targets)
           for n, ds in sets.items()}  # fmt: skip
    dm = CutoutDataModule(emb, t.batch_size, params.seed, t.num_workers)
    state = train_model(
        lambda: build_task(params, manifest, HEAD), dm, t, model_dir, live_dir, seed=params.seed,
        config=[params.model.model_dump(), params.loss, "head"],
        inputs=[prepared_dir / "manifest.json"], bundle=[prepared_dir / "manifest.json"],
    )  # fmt: skip
    return state


def train_full(params: MorphologyParams, paths: StudyPaths) -> dict:
    """Stage 2: backbone and head from the head stage's best checkpoint, on augmented images.

    Parameters
    ----------
    params : MorphologyParams
    paths : StudyPaths
        Reads ``prepared`` and ``pretrained`` (the head stage's folder, ``best.ckpt``);
        writes ``models`` (as :func:`train_head`) and ``live``.

    Returns
    -------
    dict
        The training state.

    Raises
    ------
    InputError
        Missing prepared data or head checkpoint, or one that does not match params.
    """
    prepared_dir, model_dir, live_dir, head_dir = paths.need(
        "prepared", "models", "live", "pretrained"
    )
    manifest = read_manifest(prepared_dir, require=("answers", "question_index", "image_size"))
    ckpt = Path(head_dir) / "best.ckpt"
    t = params.full

    def build() -> VoteTask:
        task = build_task(params, manifest, FULL)
        load_model_weights(task, ckpt, prefix="")
        return task.train()

    probe = build()
    transform = image_transform(probe.model)
    sets = image_datasets(params, prepared_dir, transform, augment=True)
    _check_loss(params, sets["train"].targets, prepared_dir / "train.h5")
    dm = CutoutDataModule(sets, t.batch_size, params.seed, t.num_workers)
    return train_model(
        build, dm, t, model_dir, live_dir, seed=params.seed,
        config=[params.model.model_dump(), params.loss, params.augment.model_dump(), "full"],
        inputs=[prepared_dir / "manifest.json", ckpt], bundle=[prepared_dir / "manifest.json"],
    )  # fmt: skip


def load_task(params: MorphologyParams, manifest: dict, model_dir: str | Path) -> VoteTask:
    """The trained task of a stage folder (``best.ckpt``), in eval mode.

    Raises
    ------
    InputError
        Missing checkpoint or one that does not match params.
    """
    task = build_task(params, manifest, FULL)
    return load_model_weights(task, Path(model_dir) / "best.ckpt", prefix="")
