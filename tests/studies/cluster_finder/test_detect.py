"""cluster_finder image models: dihedral boxes, box datasets, classifier, detector, reload."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from astrobatch.data.images import dihedral
from astrobatch.errors import InputError
from astrobatch.io.shards import Column, ShardWriter
from astrobatch.nn.detection import box_iou
from astrobatch.params import TrainingParams
from astrobatch.studies.cluster_finder.detect import (
    CLASSIFIER,
    DETECTOR,
    ClassifierTask,
    DetectorTask,
    detect_images,
    load_classifier,
    load_detector,
    model_paths,
    predict_images,
    train_classifier,
    train_detector,
)
from astrobatch.studies.cluster_finder.images import (
    BoxImageDataModule,
    BoxImageDataset,
    collate_boxes,
    dihedral_boxes,
)
from astrobatch.studies.cluster_finder.params import ClusterFinderParams, ImageModelParams
from astrobatch.study import StudyPaths


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread (two threads on a busy 2-core machine are ~20x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def write_image_shard(path: Path, images: np.ndarray, labels, boxes: list) -> Path:
    """A prepared image shard with the study's columns (``boxes`` one (k, 4) list per row)."""
    n, c, s, _ = images.shape
    cols = {
        "images": Column(np.float32, (c, s, s)), "label": Column(np.float32),
        "image_id": Column(str), "ra": Column(np.float64, units="deg"),
        "dec": Column(np.float64, units="deg"), "n_boxes": Column(np.int64),
    }  # fmt: skip
    elements = {
        "xyxy": Column(np.float32, (4,), units="pixel"), "cluster_id": Column(np.int64),
        "z": Column(np.float32), "richness": Column(np.float32),
        "inside_fraction": Column(np.float32),
    }  # fmt: skip
    counts = np.array([len(b) for b in boxes], np.int64)
    ptr = np.concatenate([[0], np.cumsum(counts)])
    xyxy = np.concatenate([np.asarray(b, np.float32).reshape(-1, 4) for b in boxes])
    m = len(xyxy)
    rows = {"images": images, "label": np.asarray(labels, np.float32),
            "image_id": [f"img{i}" for i in range(n)], "ra": np.linspace(10, 11, n),
            "dec": np.zeros(n), "n_boxes": counts}  # fmt: skip
    group = {"xyxy": xyxy, "cluster_id": np.arange(m), "z": np.full(m, 0.3, np.float32),
             "richness": np.full(m, 30.0, np.float32),
             "inside_fraction": np.ones(m, np.float32)}  # fmt: skip
    with ShardWriter(path, cols, {"boxes": elements}, chunk_rows=8) as w:
        w.append(rows, {"boxes": (ptr, group)})
    return path


def square_images(n: int, size: int, rng: np.random.Generator, noise: float = 0.1):
    """Noisy images with one bright rectangle each, and its box (pixel-centre convention)."""
    images = rng.normal(0.0, noise, (n, 3, size, size)).astype(np.float32)
    boxes = []
    for i in range(n):
        w, h = rng.integers(6, 12, 2)
        x0, y0 = rng.integers(3, size - 3 - w), rng.integers(3, size - 3 - h)
        images[i, :, y0 : y0 + h, x0 : x0 + w] += 1.0
        boxes.append([[x0, y0, x0 + w - 1, y0 + h - 1]])
    return images, boxes


def mask_box(mask: np.ndarray) -> np.ndarray:
    """``(x_min, y_min, x_max, y_max)`` of the True pixels of ``mask[y, x]``."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float32)


def cpu_training(**kw) -> TrainingParams:
    return TrainingParams(accelerator="cpu", weight_decay=0.0, **kw)


# --------------------------------------------------------------------------- dihedral boxes
@pytest.mark.parametrize("k", range(8))
def test_dihedral_boxes_match_transformed_masks(k):
    rng = np.random.default_rng(k)
    size = 11
    masks = np.zeros((3, 1, size, size), bool)
    for m in masks:  # scattered "members", not just rectangles
        pts = rng.integers(0, size, (5, 2))
        m[0, pts[:, 1], pts[:, 0]] = True
    boxes = np.stack([mask_box(m[0]) for m in masks])
    moved = dihedral(masks, np.full(3, k))
    want = np.stack([mask_box(m[0]) for m in moved])
    np.testing.assert_array_equal(dihedral_boxes(boxes, k, size), want)


def test_dihedral_boxes_group_and_errors():
    b = np.array([[1.0, 2.0, 4.0, 7.0]], np.float32)
    turned = b
    for _ in range(4):  # four quarter turns are the identity, a flip is an involution
        turned = dihedral_boxes(turned, 1, 10)
    np.testing.assert_array_equal(turned, b)
    np.testing.assert_array_equal(dihedral_boxes(dihedral_boxes(b, 4, 10), 4, 10), b)
    assert dihedral_boxes(np.zeros((0, 4)), 3, 10).shape == (0, 4)
    with pytest.raises(ValueError, match=r"0\.\.7"):
        dihedral_boxes(b, 8, 10)
    with pytest.raises(ValueError, match=r"\(m, 4\)"):
        dihedral_boxes(np.zeros((2, 3)), 0, 10)


# --------------------------------------------------------------------------- dataset
@pytest.fixture
def small_shard(tmp_path) -> Path:
    rng = np.random.default_rng(1)
    images = rng.normal(0, 0.01, (3, 3, 16, 16)).astype(np.float32)
    boxes = [[[2, 3, 6, 5], [8, 8, 12, 14]], [], [[1, 9, 4, 10]]]
    for i, bs in enumerate(boxes):
        for x0, y0, x1, y1 in bs:
            images[i, :, y0 : y1 + 1, x0 : x1 + 1] = 1.0
    return write_image_shard(tmp_path / "images_train.h5", images, [1, 0, 1], boxes)


def test_dataset_items_and_collate(small_shard):
    ds = BoxImageDataset(small_shard, train=False)
    assert (len(ds), ds.image_size, ds.n_channels) == (3, 16, 3)
    item = ds[0]
    assert item["x"].shape == (3, 16, 16) and item["x"].dtype == torch.float32
    assert item["y"].dtype == torch.float32 and item["y"].item() == 1.0
    assert item["row"].dtype == torch.int64 and item["row"].item() == 0
    torch.testing.assert_close(item["boxes"], torch.tensor([[2.0, 3, 6, 5], [8, 8, 12, 14]]))
    assert ds[1]["boxes"].shape == (0, 4) and ds[1]["y"].item() == 0.0
    batch = collate_boxes(ds.__getitems__([2, 1, 0]))
    assert batch["x"].shape == (3, 3, 16, 16) and batch["y"].tolist() == [1.0, 0.0, 1.0]
    assert batch["row"].tolist() == [2, 1, 0]
    assert [tuple(b.shape) for b in batch["boxes"]] == [(1, 4), (0, 4), (2, 4)]


def test_augmentation_moves_boxes_with_images_and_is_epoch_seeded(small_shard):
    ds = BoxImageDataset(small_shard, train=True, seed=5, augment=True)
    assert not BoxImageDataset(small_shard, train=False, augment=True).augment
    codes = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        codes |= set(ds.draws([0, 2]).tolist())
        for it in ds.__getitems__([0, 2]):
            bright = it["x"][0].numpy() > 0.5  # the boxes are the bright pixels
            corners = it["boxes"].round().int().tolist()
            for x0, y0, x1, y1 in corners:
                assert bright[y0 : y1 + 1, x0 : x1 + 1].all()
            assert bright.sum() == sum((x1 - x0 + 1) * (y1 - y0 + 1) for x0, y0, x1, y1 in corners)
    assert len(codes) > 1
    ds.set_epoch(3)
    a = ds.__getitems__([0])[0]
    ds.set_epoch(0)
    ds.set_epoch(3)
    b = ds.__getitems__([0])[0]
    torch.testing.assert_close(a["x"], b["x"])
    torch.testing.assert_close(a["boxes"], b["boxes"])


def test_datamodule_loaders_and_errors(tmp_path, small_shard):
    for split in ("val", "test"):
        (tmp_path / f"images_{split}.h5").write_bytes(small_shard.read_bytes())
    dm = BoxImageDataModule(tmp_path, batch_size=2, seed=0, augment=True)
    batches = list(dm.train_dataloader())
    assert [len(b["boxes"]) for b in batches] == [2, 1]
    assert sorted(int(r) for b in batches for r in b["row"]) == [0, 1, 2]
    assert dm.dataset("train").augment and not dm.dataset("val").augment
    val = next(iter(dm.val_dataloader()))
    assert val["row"].tolist() == [0, 1] and val["x"].shape == (2, 3, 16, 16)
    with pytest.raises(InputError, match="not found"):
        BoxImageDataset(tmp_path / "missing.h5", train=False)
    bad = write_image_shard(tmp_path / "bad.h5", np.zeros((1, 3, 8, 8), np.float32), [1],
                            [[[5.0, 1.0, 2.0, 3.0]]])  # fmt: skip
    with pytest.raises(InputError, match="max >= min"):
        BoxImageDataset(bad, train=False)


# --------------------------------------------------------------------------- classifier
def blob_images(n: int, size: int, rng: np.random.Generator):
    """Half the images hold a bright gaussian blob (label 1), the others only noise."""
    images = rng.normal(0.0, 0.3, (n, 3, size, size)).astype(np.float32)
    labels = (np.arange(n) % 2).astype(np.float32)
    yy, xx = np.mgrid[:size, :size]
    boxes = []
    for i in range(n):
        if labels[i]:
            cx, cy = rng.uniform(6, size - 7, 2)
            images[i] += 3.0 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 2.0**2))
            boxes.append([[cx - 3, cy - 3, cx + 3, cy + 3]])
        else:
            boxes.append([])
    return images, labels, boxes


@pytest.fixture
def blob_prepared(tmp_path) -> Path:
    rng = np.random.default_rng(2)
    prep = tmp_path / "prepared"
    prep.mkdir()
    for split, n in (("train", 64), ("val", 32)):
        write_image_shard(prep / f"images_{split}.h5", *blob_images(n, 24, rng))
    return prep


def _study_paths(tmp_path: Path, prepared: Path, name: str) -> StudyPaths:
    root = StudyPaths(prepared=prepared, models=tmp_path / "models", live=tmp_path / "live")
    return model_paths(root, name)


def test_classifier_learns_blobs(tmp_path, blob_prepared):
    params = ClusterFinderParams(
        seed=0,
        images=ImageModelParams(conv_channels=[8, 16], head_hidden=[16], dropout=0.0),
        classifier=cpu_training(batch_size=16, max_epochs=10, lr=5e-3, patience=10),
    )
    paths = _study_paths(tmp_path, blob_prepared, CLASSIFIER)
    state = train_classifier(params, paths)
    assert paths.models == tmp_path / "models" / CLASSIFIER
    assert (paths.models / "best.ckpt").is_file() and state["complete"]
    assert (paths.live / "plots/metrics/val/accuracy.tsv").is_file()
    task = load_classifier(paths.models)
    assert isinstance(task, ClassifierTask) and not task.training
    out = predict_images(task, blob_prepared / "images_val.h5", batch_size=10)
    assert out["probability"].shape == (32,) and out["probability"].dtype == np.float32
    accuracy = np.mean((out["probability"] > 0.5) == (out["label"] > 0.5))
    assert accuracy > 0.9
    with pytest.raises(InputError, match="DetectorTask"):
        load_detector(paths.models)


class Preempted(RuntimeError):
    """Stands for a killed job."""


class Interrupt(Callback):
    """Raise at the start of epoch ``at`` (after last.ckpt of the previous epoch was saved)."""

    def __init__(self, at: int):
        self.at = at

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.at:
            raise Preempted("simulated preemption")


def test_classifier_resume_matches_uninterrupted(tmp_path, blob_prepared):
    """Augmented training draws depend on (seed, epoch, row) only: a resumed run is the same."""
    params = ClusterFinderParams(
        seed=1,
        images=ImageModelParams(conv_channels=[4], head_hidden=[8], dropout=0.0, augment=True),
        classifier=cpu_training(batch_size=16, max_epochs=3, lr=5e-3, patience=5),
    )
    full = _study_paths(tmp_path / "a", blob_prepared, CLASSIFIER)
    cut = _study_paths(tmp_path / "b", blob_prepared, CLASSIFIER)
    train_classifier(params, full)
    with pytest.raises(Preempted):
        train_classifier(params, cut, callbacks=[Interrupt(2)])
    assert train_classifier(params, cut)["resumed"] is True
    a = load_classifier(full.models, "last.ckpt").state_dict()
    b = load_classifier(cut.models, "last.ckpt").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- detector
class BestState(Callback):
    """Keep the weights and val/loss of every epoch (what best.ckpt should hold)."""

    def __init__(self):
        self.epochs: list[tuple[float, dict]] = []

    def on_validation_end(self, trainer, pl_module):
        loss = float(trainer.callback_metrics["val/loss"])
        self.epochs.append((loss, {k: v.clone() for k, v in pl_module.state_dict().items()}))

    def best(self) -> dict:
        return self.epochs[int(np.argmin([loss for loss, _ in self.epochs]))][1]


def test_detector_overfits_squares_and_reloads(tmp_path):
    rng = np.random.default_rng(0)
    images, boxes = square_images(8, 32, rng)
    prep = tmp_path / "prepared"
    prep.mkdir()
    for split in ("train", "val"):  # overfit: validation on the training images
        write_image_shard(prep / f"images_{split}.h5", images, np.ones(8), boxes)
    params = ClusterFinderParams(
        seed=0,
        images=ImageModelParams(conv_channels=[8, 16], detector_hidden=16, augment=False),
        detector=cpu_training(batch_size=8, max_epochs=50, lr=1e-2, patience=50),
    )
    paths = _study_paths(tmp_path, prep, DETECTOR)
    record = BestState()
    state = train_detector(params, paths, callbacks=[record])
    assert state["complete"] and state["best_val_loss"] < 0.5
    for term in ("loss", "heatmap", "giou"):
        assert (paths.live / f"plots/metrics/val/{term}.tsv").is_file()
    task = load_detector(paths.models)
    assert isinstance(task, DetectorTask) and not task.training
    assert (task.stride, task.offset) == (4.0, 4.5)
    found = detect_images(task, prep / "images_val.h5", batch_size=3, score_threshold=0.3)
    assert len(found) == 8
    for (b, s), truth in zip(found, boxes, strict=True):
        assert b.dtype == np.float32 and b.shape[1] == 4 and len(b) == len(s) >= 1
        assert np.all(np.diff(s) <= 0)
        iou = box_iou(torch.from_numpy(b[:1]), torch.tensor(truth, dtype=torch.float32))
        assert iou.item() > 0.5
    # best.ckpt holds the weights of the best validation epoch: same predictions
    trained = DetectorTask(**task.hparams)
    trained.load_state_dict(record.best())
    trained.eval()
    x = torch.from_numpy(images)
    for (b1, s1), (b2, s2) in zip(task.predict_boxes(x, 0.1), trained.predict_boxes(x, 0.1),
                                  strict=True):  # fmt: skip
        torch.testing.assert_close(b1, b2)
        torch.testing.assert_close(s1, s2)
    with pytest.raises(InputError, match="not found"):
        load_detector(tmp_path / "nowhere")


def test_detector_loss_on_empty_fields_and_prediction_shapes():
    torch.manual_seed(0)
    task = DetectorTask(3, 32, conv_channels=[4, 8], hidden=8)
    x = torch.randn(3, 3, 32, 32)
    terms = task.loss_terms(x, [torch.zeros(0, 4), torch.tensor([[4.0, 4, 12, 12]]),
                                torch.zeros(0, 4)])  # fmt: skip
    assert set(terms) == {"loss", "heatmap", "giou"}
    assert all(torch.isfinite(v) for v in terms.values())
    terms["loss"].backward()
    out = task.eval().predict_boxes(x, score_threshold=0.0)
    assert len(out) == 3 and all(b.shape[1] == 4 and len(b) == len(s) for b, s in out)
