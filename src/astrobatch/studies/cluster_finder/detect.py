"""cluster_finder image models: a cluster / no-cluster classifier and a box detector.

:class:`ClassifierTask`
    :class:`~astrobatch.nn.cnn.ConvEncoder` (flattened) + :class:`~astrobatch.nn.heads.MLPHead`
    to one logit, binary cross-entropy on the image label (1 = cluster-centred, 0 = empty
    field).
:class:`DetectorTask`
    An anchor-free single-shot detector: the ConvEncoder's feature map and a
    :class:`~astrobatch.nn.detection.CenterNetHead` (a centre heatmap trained with
    CornerNet's penalty-reduced focal loss, box sides trained with the GIoU loss;
    CenterNet, Zhou, Wang & Krähenbühl 2019, arXiv:1904.07850; GIoU, Rezatofighi et al.
    2019, arXiv:1902.09630), decoded by 3x3 peak picking, a score threshold and NMS at
    IoU 0.45 (:func:`~astrobatch.nn.detection.decode_detections`). Written from the
    papers (Ultralytics YOLO, used by YOLO-CL, is AGPL).

Both are trained by :func:`train_classifier` and :func:`train_detector` through the shared
driver (:func:`astrobatch.train.train_model`: resume, ``best.ckpt`` on ``val/loss``,
DVCLive curves) on :class:`~astrobatch.studies.cluster_finder.images.BoxImageDataModule`
(flips and quarter turns of the training images, boxes transformed with them), AdamW and
cosine annealing over the epochs (:func:`astrobatch.tasks.optim.cosine_annealing`).

Folders: as morphology's two train stages, the stage chooses each model's folders
(``models/<study>/classifier``, ``dvclive/<study>/classifier``; ``.../detector``) and
passes them as ``paths.models`` and ``paths.live``; :func:`model_paths` derives them from
the study's paths. Each task stores its architecture in the checkpoint's hyper-parameters,
so :func:`load_classifier` and :func:`load_detector` rebuild it from ``best.ckpt`` alone
(weights-only load, never a full unpickle).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from astrobatch.errors import InputError
from astrobatch.nn.cnn import ConvEncoder
from astrobatch.nn.detection import (
    CenterNetHead,
    CenterNetLoss,
    centernet_targets,
    conv_encoder_geometry,
)
from astrobatch.nn.heads import EncoderHead, MLPHead
from astrobatch.params import TrainingParams
from astrobatch.studies.cluster_finder.images import (
    BoxImageDataModule,
    BoxImageDataset,
    collate_boxes,
    shard_path,
)
from astrobatch.study import StudyPaths
from astrobatch.tasks.optim import cosine_annealing, decay_param_groups
from astrobatch.train import load_model_weights, train_model

__all__ = [
    "CLASSIFIER",
    "DETECTOR",
    "ClassifierTask",
    "DetectorTask",
    "detect_images",
    "load_classifier",
    "load_detector",
    "model_paths",
    "predict_images",
    "train_classifier",
    "train_detector",
]

#: Sub-folders of the two image models below the study's ``models`` and ``live`` folders.
CLASSIFIER = "classifier"
DETECTOR = "detector"
#: The checkpoint that the loaders read.
BEST = "best.ckpt"


def model_paths(paths: StudyPaths, name: str) -> StudyPaths:
    """``paths`` with ``models`` and ``live`` moved to their sub-folder ``name``.

    Examples
    --------
    >>> p = model_paths(StudyPaths.for_study("cluster_finder"), DETECTOR)
    >>> p.models.as_posix(), p.live.as_posix()
    ('models/cluster_finder/detector', 'dvclive/cluster_finder/detector')
    """
    models, live = paths.need("models", "live")
    return dataclasses.replace(paths, models=models / name, live=live / name)


# ------------------------------------------------------------------------------- tasks
def _adamw_cosine(module: nn.Module, lr: float, weight_decay: float, max_epochs: int) -> dict:
    opt = torch.optim.AdamW(decay_param_groups(module, weight_decay), lr=lr)
    return {"optimizer": opt, "lr_scheduler": cosine_annealing(opt, max_epochs)}


class ClassifierTask(L.LightningModule):
    """Cluster / no-cluster classifier: ConvEncoder (flattened) + MLPHead -> one logit.

    Parameters
    ----------
    in_channels : int
        C, image channels (3: g, r, i).
    image_size : int
        S, pixels (fixes the flattened width).
    conv_channels : sequence of int
        Channels of the encoder's blocks (3x3 'valid' conv, ReLU, 2x2 max-pool).
    head_hidden : sequence of int
        Hidden widths of the head (ReLU).
    dropout : float
        Dropout before each hidden layer of the head, in [0, 1).
    lr, weight_decay : float
        AdamW (no decay on biases).
    max_epochs : int
        Length of the cosine schedule, epochs.

    Attributes
    ----------
    model : EncoderHead
        ``model.encoder`` (ConvEncoder), ``model.head`` (MLPHead).

    Shape
    -----
    - input: ``(B, C, S, S)`` float32
    - output of :meth:`forward`: ``(B,)`` float32 logits; :meth:`probability`: in [0, 1]

    Notes
    -----
    Logged: ``train/loss``, ``val/loss`` (binary cross-entropy with logits), ``val/accuracy``
    (threshold 0.5 on the probability), the same under ``test/``, and ``lr``.

    Raises
    ------
    ValueError
        On an image too small for the blocks or a size out of range.

    Examples
    --------
    >>> task = ClassifierTask(3, 24, conv_channels=(4,), head_hidden=(8,))
    >>> task(torch.zeros(2, 3, 24, 24)).shape
    torch.Size([2])
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        conv_channels: Sequence[int] = (16, 32, 64),
        head_hidden: Sequence[int] = (64,),
        dropout: float = 0.1,
        lr: float = 2e-3,
        weight_decay: float = 1e-4,
        max_epochs: int = 10,
    ):
        super().__init__()
        self.save_hyperparameters(
            {
                "in_channels": int(in_channels),
                "image_size": int(image_size),
                "conv_channels": [int(c) for c in conv_channels],
                "head_hidden": [int(h) for h in head_hidden],
                "dropout": float(dropout),
                "lr": float(lr),
                "weight_decay": float(weight_decay),
                "max_epochs": int(max_epochs),
            }
        )
        encoder = ConvEncoder(in_channels, image_size, conv_channels)
        head = MLPHead(encoder.out_features, 1, head_hidden, activation="relu", dropout=dropout)
        self.model = EncoderHead(encoder, head)
        self.loss_fn = nn.BCEWithLogitsLoss()

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B,)`` of images ``(B, C, S, S)``."""
        return self.model(x).squeeze(-1)

    @torch.no_grad()
    def probability(self, x: Tensor) -> Tensor:
        """Probabilities ``(B,)`` that each image is cluster-centred (current mode kept)."""
        return torch.sigmoid(self(x))

    def _step(self, batch: dict, stage: str) -> Tensor:
        logits = self(batch["x"])
        y = batch["y"].to(logits.dtype)
        loss = self.loss_fn(logits, y)
        bs = len(y)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, batch_size=bs, sync_dist=True)
        if stage != "train":
            acc = ((logits > 0).to(y.dtype) == y).to(logits.dtype).mean()
            self.log(f"{stage}/accuracy", acc, on_epoch=True, batch_size=bs, sync_dist=True)
        return loss

    def training_step(self, batch, batch_idx):
        """BCE of one training batch (``train/loss``, per epoch)."""
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        """``val/loss`` and ``val/accuracy`` of one validation batch."""
        return self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        """``test/loss`` and ``test/accuracy`` of one test batch."""
        return self._step(batch, "test")

    def on_train_epoch_start(self) -> None:
        """Log the learning rate of the epoch (``lr``)."""
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_epoch=True, sync_dist=False)

    def configure_optimizers(self):
        """AdamW with cosine annealing over ``max_epochs``, stepped per epoch."""
        h = self.hparams
        return _adamw_cosine(self, h.lr, h.weight_decay, h.max_epochs)


class DetectorTask(L.LightningModule):
    """Single-shot cluster detector: ConvEncoder feature map + CenterNetHead.

    The encoder (``return_feature_map=True``) maps ``(B, C, S, S)`` to ``(B, C', s, s)``;
    its cells are centred on image pixels ``offset + stride j`` with ``(stride, offset) =
    conv_encoder_geometry(len(conv_channels))`` (``2^n`` and ``1.5 (2^n - 1)`` for ``n``
    blocks). Targets come from each batch's boxes
    (:func:`~astrobatch.nn.detection.centernet_targets`: a gaussian heatmap around each
    box centre, the box regressed at its centre cell); the loss is
    :class:`~astrobatch.nn.detection.CenterNetLoss` (``heatmap_weight`` x focal +
    ``giou_weight`` x GIoU). CenterNet: Zhou, Wang & Krähenbühl 2019, arXiv:1904.07850.

    Parameters
    ----------
    in_channels : int
        C, image channels.
    image_size : int
        S, pixels (the encoder checks it is large enough for the blocks).
    conv_channels : sequence of int
        Channels of the encoder's blocks.
    hidden : int
        Channels of the 3x3 convolution of each head branch.
    lr, weight_decay : float
        AdamW (no decay on biases).
    max_epochs : int
        Length of the cosine schedule, epochs.
    heatmap_weight, giou_weight : float
        Weights of the two loss terms, >= 0.
    min_overlap : float
        IoU in (0, 1) that sets the gaussian radius of the targets (CenterNet: 0.7).

    Attributes
    ----------
    encoder : ConvEncoder
    head : CenterNetHead
    loss_fn : CenterNetLoss
    stride, offset : float
        Cell geometry, pixels.

    Shape
    -----
    - input: ``(B, C, S, S)`` float32
    - output of :meth:`forward`: ``(heat_logits (B, 1, s, s), sides (B, 4, s, s))``,
      sides in pixels

    Notes
    -----
    Logged: ``train/loss``, ``train/heatmap``, ``train/giou``, ``val/loss``, ``val/heatmap``,
    ``val/giou`` (and ``test/``), ``lr``.

    Raises
    ------
    ValueError
        On an image too small for the blocks or a size out of range.

    Examples
    --------
    >>> task = DetectorTask(3, 32, conv_channels=(4, 8), hidden=8)
    >>> heat, sides = task(torch.zeros(1, 3, 32, 32))
    >>> heat.shape, sides.shape, (task.stride, task.offset)
    (torch.Size([1, 1, 6, 6]), torch.Size([1, 4, 6, 6]), (4.0, 4.5))
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        conv_channels: Sequence[int] = (16, 32, 64),
        hidden: int = 64,
        lr: float = 2e-3,
        weight_decay: float = 1e-4,
        max_epochs: int = 20,
        heatmap_weight: float = 1.0,
        giou_weight: float = 1.0,
        min_overlap: float = 0.7,
    ):
        super().__init__()
        self.save_hyperparameters(
            {
                "in_channels": int(in_channels),
                "image_size": int(image_size),
                "conv_channels": [int(c) for c in conv_channels],
                "hidden": int(hidden),
                "lr": float(lr),
                "weight_decay": float(weight_decay),
                "max_epochs": int(max_epochs),
                "heatmap_weight": float(heatmap_weight),
                "giou_weight": float(giou_weight),
                "min_overlap": float(min_overlap),
            }
        )
        if not 0.0 < min_overlap < 1.0:
            raise ValueError(f"min_overlap must be in (0, 1), got {min_overlap}")
        self.encoder = ConvEncoder(in_channels, image_size, conv_channels, return_feature_map=True)
        self.stride, self.offset = conv_encoder_geometry(len(self.hparams.conv_channels))
        self.head = CenterNetHead(self.encoder.out_channels, hidden, self.stride, self.offset)
        self.loss_fn = CenterNetLoss(heatmap_weight, giou_weight)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Heatmap logits ``(B, 1, s, s)`` and sides ``(B, 4, s, s)`` (pixels) of images."""
        return self.head(self.encoder(x))

    def loss_terms(self, x: Tensor, boxes: Sequence[Tensor]) -> dict[str, Tensor]:
        """``loss``, ``heatmap`` and ``giou`` of images ``(B, C, S, S)`` and their true boxes.

        Parameters
        ----------
        x : torch.Tensor, shape (B, C, S, S), float32
        boxes : sequence of torch.Tensor, shape (k_b, 4), float32
            B entries, pixels (``k_b = 0`` for an empty field).

        Returns
        -------
        dict of str to torch.Tensor, shape ()

        Raises
        ------
        ValueError
            On a bad box (shape, non-finite, ``max < min``).
        """
        heat, sides = self(x)
        targets = centernet_targets(boxes, tuple(heat.shape[-2:]), self.stride, self.offset,
                                    self.hparams.min_overlap, device=heat.device)  # fmt: skip
        return self.loss_fn.terms(heat, sides, targets)

    def _step(self, batch: dict, stage: str) -> Tensor:
        terms = self.loss_terms(batch["x"], batch["boxes"])
        bs = len(batch["x"])
        for name, value in terms.items():
            self.log(f"{stage}/{name}", value, on_step=False, on_epoch=True, batch_size=bs,
                     sync_dist=True)  # fmt: skip
        return terms["loss"]

    def training_step(self, batch, batch_idx):
        """CenterNet loss of a training batch: ``train/loss``, ``train/heatmap``, ``train/giou``."""
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        """``val/loss``, ``val/heatmap``, ``val/giou`` of one validation batch."""
        return self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        """``test/loss``, ``test/heatmap``, ``test/giou`` of one test batch."""
        return self._step(batch, "test")

    def on_train_epoch_start(self) -> None:
        """Log the learning rate of the epoch (``lr``)."""
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_epoch=True, sync_dist=False)

    def configure_optimizers(self):
        """AdamW with cosine annealing over ``max_epochs``, stepped per epoch."""
        h = self.hparams
        return _adamw_cosine(self, h.lr, h.weight_decay, h.max_epochs)

    @torch.no_grad()
    def predict_boxes(
        self,
        x: Tensor,
        score_threshold: float,
        iou_threshold: float = 0.45,
        max_detections: int = 100,
    ) -> list[tuple[Tensor, Tensor]]:
        """Detected boxes and scores of each image (current mode kept: call ``eval()`` first).

        Parameters
        ----------
        x : torch.Tensor, shape (B, C, S, S), float32
        score_threshold : float
            In [0, 1]: peaks of the heatmap (``sigmoid``) below it are dropped.
        iou_threshold : float
            NMS threshold in [0, 1] (the spec's 0.45).
        max_detections : int
            At most this many boxes per image.

        Returns
        -------
        list of (torch.Tensor, torch.Tensor)
            B pairs ``(boxes (K, 4), scores (K,))``, float32, image pixels ``(x_min,
            y_min, x_max, y_max)``, by descending score, on the device of ``x``.

        Raises
        ------
        ValueError
            On a threshold out of range.
        """
        heat, sides = self(x)
        return self.head.decode(heat, sides, score_threshold, iou_threshold, max_detections)


# ------------------------------------------------------------------------------- training
def _data_inputs(prepared_dir: Path) -> list[Path]:
    """Files that identify the prepared images: ``manifest.json`` if written, else the shards."""
    manifest = prepared_dir / "manifest.json"
    if manifest.is_file():
        return [manifest]
    return [p for p in (shard_path(prepared_dir, s) for s in ("train", "val")) if p.is_file()]


def _train(params, paths: StudyPaths, t: TrainingParams, build, tag: str,
           callbacks: list[Callback] | None) -> dict:  # fmt: skip
    """Fit ``build(train_dataset)`` on the prepared image shards with the shared driver."""
    prepared_dir, model_dir, live_dir = paths.need("prepared", "models", "live")
    dm = BoxImageDataModule(prepared_dir, t.batch_size, params.seed, t.num_workers,
                            augment=params.images.augment)  # fmt: skip
    ds = dm.dataset("train")
    return train_model(
        lambda: build(ds), dm, t, model_dir, live_dir, seed=params.seed,
        config=[params.images.model_dump(), tag], inputs=_data_inputs(prepared_dir),
        callbacks=callbacks,
    )  # fmt: skip


def train_classifier(params, paths: StudyPaths, callbacks: list[Callback] | None = None) -> dict:
    """Train the cluster / no-cluster classifier on the prepared image shards.

    Parameters
    ----------
    params : ClusterFinderParams
        Reads ``images`` (encoder and head sizes, ``augment``), ``classifier``
        (TrainingParams) and ``seed``.
    paths : StudyPaths
        Reads ``prepared`` (``images_{train,val}.h5``); writes ``models`` (``best.ckpt``
        of the lowest ``val/loss``, ``last.ckpt``, ``train_state.json``) and ``live``
        (DVCLive curves): the classifier's own folders (see :func:`model_paths`).
    callbacks : list of lightning Callback, optional
        Extra callbacks (tests).

    Returns
    -------
    dict
        ``train_state.json`` of the finished run.

    Raises
    ------
    InputError
        Missing or invalid shards.
    ParamsError
        Trainer settings that Lightning refuses.
    """
    m, t = params.images, params.classifier

    def build(ds: BoxImageDataset) -> ClassifierTask:
        return ClassifierTask(ds.n_channels, ds.image_size, m.conv_channels, m.head_hidden,
                              m.dropout, t.lr, t.weight_decay, t.max_epochs)  # fmt: skip

    return _train(params, paths, t, build, CLASSIFIER, callbacks)


def train_detector(params, paths: StudyPaths, callbacks: list[Callback] | None = None) -> dict:
    """Train the CenterNet-style box detector on the prepared image shards.

    Parameters
    ----------
    params : ClusterFinderParams
        Reads ``images`` (``conv_channels``, ``detector_hidden``, ``augment``),
        ``detector`` (TrainingParams) and ``seed``.
    paths : StudyPaths
        Reads ``prepared`` (``images_{train,val}.h5`` with their ``boxes``); writes
        ``models`` and ``live``: the detector's own folders (see :func:`model_paths`).
    callbacks : list of lightning Callback, optional
        Extra callbacks (tests).

    Returns
    -------
    dict
        ``train_state.json`` of the finished run.

    Raises
    ------
    InputError
        Missing or invalid shards.
    ParamsError
        Trainer settings that Lightning refuses.
    """
    m, t = params.images, params.detector

    def build(ds: BoxImageDataset) -> DetectorTask:
        return DetectorTask(ds.n_channels, ds.image_size, m.conv_channels, m.detector_hidden,
                            t.lr, t.weight_decay, t.max_epochs)  # fmt: skip

    return _train(params, paths, t, build, DETECTOR, callbacks)


# ------------------------------------------------------------------------------- loading
def _load(cls: type[L.LightningModule], model_dir: str | Path, checkpoint: str):
    from astrobatch.tasks.checkpoints import load_checkpoint

    path = Path(model_dir) / checkpoint
    if not path.is_file():
        raise InputError("checkpoint not found (run train first)", path)
    hp = load_checkpoint(path).get("hyper_parameters")
    if not isinstance(hp, dict):
        raise InputError(f"no hyper-parameters of a {cls.__name__} in the checkpoint", path,
                         "hyper_parameters")  # fmt: skip
    try:
        task = cls(**hp)
    except (TypeError, ValueError) as err:
        raise InputError(f"not a {cls.__name__} checkpoint ({err})", path,
                         "hyper_parameters") from None  # fmt: skip
    return load_model_weights(task, path, prefix="")


def load_classifier(model_dir: str | Path, checkpoint: str = BEST) -> ClassifierTask:
    """The trained classifier of a model folder, in eval mode (weights-only load).

    Parameters
    ----------
    model_dir : str or pathlib.Path
        The classifier's folder (``best.ckpt``).
    checkpoint : str
        File name in it (``last.ckpt`` for the final epoch).

    Returns
    -------
    ClassifierTask
        Rebuilt from the checkpoint's hyper-parameters, weights loaded, ``eval()``.

    Raises
    ------
    InputError
        Missing or unreadable checkpoint, or not a classifier's.
    """
    return _load(ClassifierTask, model_dir, checkpoint)


def load_detector(model_dir: str | Path, checkpoint: str = BEST) -> DetectorTask:
    """The trained detector of a model folder, in eval mode (weights-only load).

    Parameters
    ----------
    model_dir : str or pathlib.Path
        The detector's folder (``best.ckpt``).
    checkpoint : str
        File name in it.

    Returns
    -------
    DetectorTask
        Rebuilt from the checkpoint's hyper-parameters, weights loaded, ``eval()``.

    Raises
    ------
    InputError
        Missing or unreadable checkpoint, or not a detector's.
    """
    return _load(DetectorTask, model_dir, checkpoint)


# ------------------------------------------------------------------------------- inference
def _batches(ds: BoxImageDataset, batch_size: int, device) -> Iterator[dict]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for a in range(0, len(ds), batch_size):
        b = collate_boxes(ds.__getitems__(list(range(a, min(a + batch_size, len(ds))))))
        yield {**b, "x": b["x"].to(device)}


def _device(task: nn.Module) -> torch.device:
    return next(task.parameters()).device


@torch.inference_mode()
def predict_images(task: ClassifierTask, shard_path: str | Path, batch_size: int = 256) -> dict:
    """Cluster probabilities of every image of a shard (no augmentation; ``task`` set to eval).

    Parameters
    ----------
    task : ClassifierTask
        On any device (the images follow it).
    shard_path : str or pathlib.Path
        An image shard (``images_<split>.h5``).
    batch_size : int
        Images per forward pass.

    Returns
    -------
    dict of numpy.ndarray
        ``probability`` float32 (n,) in [0, 1], ``label`` float32 (n,) (the shard's
        truth), ``row`` int64 (n,), in shard order.

    Raises
    ------
    InputError
        Missing or invalid shard.
    ValueError
        Images of a size other than the classifier's, or ``batch_size < 1``.
    """
    ds = BoxImageDataset(shard_path, train=False)
    task.eval()
    batches = _batches(ds, batch_size, _device(task))
    probs = [torch.sigmoid(task(b["x"])).float().cpu().numpy() for b in batches]
    return {
        "probability": np.concatenate(probs) if probs else np.zeros(0, np.float32),
        "label": ds.labels.copy(),
        "row": np.arange(len(ds), dtype=np.int64),
    }


@torch.inference_mode()
def detect_images(
    task: DetectorTask,
    shard_path: str | Path,
    batch_size: int = 64,
    score_threshold: float = 0.3,
    iou_threshold: float = 0.45,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Detections in every image of a shard (no augmentation; ``task`` set to eval).

    Parameters
    ----------
    task : DetectorTask
    shard_path : str or pathlib.Path
        An image shard (``images_<split>.h5``).
    batch_size : int
        Images per forward pass.
    score_threshold, iou_threshold : float
        Decoding (see :meth:`DetectorTask.predict_boxes`).

    Returns
    -------
    list of (numpy.ndarray, numpy.ndarray)
        One pair per row, in shard order: ``boxes`` float32 (K, 4), pixels ``(x_min,
        y_min, x_max, y_max)`` of the prepared image, and ``scores`` float32 (K,), by
        descending score.

    Raises
    ------
    InputError
        Missing or invalid shard.
    ValueError
        A threshold out of range or ``batch_size < 1``.
    """
    ds = BoxImageDataset(shard_path, train=False)
    task.eval()
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for b in _batches(ds, batch_size, _device(task)):
        for boxes, scores in task.predict_boxes(b["x"], score_threshold, iou_threshold):
            out.append((boxes.float().cpu().numpy(), scores.float().cpu().numpy()))
    return out
