"""Detection metrics: IoU matching, completeness and purity, average precision.

An *image* here is a triple ``(pred_boxes, pred_scores, true_boxes)``: the
detections of one image (boxes ``(K, 4)``, scores ``(K,)``) and its true boxes
``(N, 4)``, ``N = 0`` for an empty field. Boxes are ``(x_min, y_min, x_max,
y_max)`` in pixels (the convention of :mod:`astrobatch.nn.detection`); arrays
may be NumPy arrays, torch tensors (any device) or nested lists.

- :func:`match_detections`: greedy one-to-one matching by descending score at
  an IoU threshold (the matching of COCO; IoU from
  :func:`astrobatch.nn.detection.box_iou`).
- :func:`completeness_purity`: completeness (matched truths / truths) and
  purity (matched detections / detections) as functions of the score
  threshold, with per-truth detection flags so that completeness can be binned
  by redshift or richness. Unlike the seed study, which counted boxes per
  image, boxes are matched (spec ``studies/cluster_finder.md``).
- :func:`average_precision`: AP at one IoU threshold by ``pycocotools``'
  ``COCOeval`` (101-point interpolated precision, one category).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from astrobatch.nn.detection import box_iou

__all__ = [
    "CompletenessPurity",
    "Matches",
    "average_precision",
    "completeness_purity",
    "match_detections",
]


def _array(x, name: str, shape: tuple) -> np.ndarray:
    """``x`` as float64 NumPy of ``shape`` (``-1`` free); ValueError otherwise."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.size == 0:
        return a.reshape(tuple(0 if d == -1 else d for d in shape))
    if a.ndim != len(shape) or any(d not in (-1, n) for d, n in zip(shape, a.shape, strict=True)):
        want = "(" + ", ".join("n" if d == -1 else str(d) for d in shape) + ")"
        raise ValueError(f"{name} must have shape {want}, got {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} must be finite")
    return a


def _image(image, where: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An image triple as float64 arrays; ``where`` prefixes the error messages."""
    try:
        pred_boxes, pred_scores, true_boxes = image
    except (TypeError, ValueError):
        raise ValueError(f"{where}must be a triple (pred_boxes, pred_scores, true_boxes)") from None
    pb = _array(pred_boxes, f"{where}pred_boxes", (-1, 4))
    ps = _array(pred_scores, f"{where}pred_scores", (-1,))
    tb = _array(true_boxes, f"{where}true_boxes", (-1, 4))
    if len(ps) != len(pb):
        raise ValueError(f"{where}{len(pb)} pred_boxes but {len(ps)} pred_scores")
    for name, b in (("pred_boxes", pb), ("true_boxes", tb)):
        if ((b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])).any():
            raise ValueError(f"{where}{name} must be (x_min, y_min, x_max, y_max), max >= min")
    return pb, ps, tb


def _concat(parts: list, dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)


@dataclass(frozen=True)
class Matches:
    """One-to-one matches of the detections and the truths of one image.

    Attributes
    ----------
    truth_match : numpy.ndarray, shape (N,), int64
        Index of the detection matched to each truth, -1 if none.
    pred_match : numpy.ndarray, shape (K,), int64
        Index of the truth matched to each detection, -1 if none (a false
        positive).
    iou : numpy.ndarray, shape (K,), float64
        IoU of each detection with its matched truth, 0 where unmatched.
    """

    truth_match: np.ndarray
    pred_match: np.ndarray
    iou: np.ndarray


def match_detections(pred_boxes, pred_scores, true_boxes, iou_threshold: float = 0.5) -> Matches:
    """Greedy one-to-one matching of detections to truths by descending score.

    Detections are visited by descending score (ties in input order); each
    takes the still unmatched truth of highest IoU, if that IoU is
    ``>= iou_threshold``, as COCO's ``evaluateImg``. A truth is matched at most
    once, so a duplicate detection of a matched truth is a false positive.

    Parameters
    ----------
    pred_boxes : array-like, shape (K, 4), float
        Detected boxes ``(x_min, y_min, x_max, y_max)``, pixels.
    pred_scores : array-like, shape (K,), float
        Their scores.
    true_boxes : array-like, shape (N, 4), float
        True boxes, pixels.
    iou_threshold : float
        In (0, 1].

    Returns
    -------
    Matches

    Raises
    ------
    ValueError
        On bad shapes, non-finite values, ``max < min`` boxes or a threshold
        outside (0, 1].

    Examples
    --------
    >>> m = match_detections([[0, 0, 10, 10], [1, 0, 11, 10]], [0.6, 0.9], [[0, 0, 10, 10]])
    >>> m.truth_match.tolist(), m.pred_match.tolist(), m.iou.round(3).tolist()
    ([1], [-1, 0], [0.0, 0.818])
    """
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    pb, ps, tb = _image((pred_boxes, pred_scores, true_boxes))
    return _match(pb, ps, tb, iou_threshold)


def _match(pb: np.ndarray, ps: np.ndarray, tb: np.ndarray, iou_threshold: float) -> Matches:
    truth_match = np.full(len(tb), -1, dtype=np.int64)
    pred_match = np.full(len(pb), -1, dtype=np.int64)
    iou_out = np.zeros(len(pb))
    if len(pb) and len(tb):
        iou = box_iou(torch.from_numpy(pb), torch.from_numpy(tb)).numpy()
        for p in np.argsort(-ps, kind="stable"):
            cand = np.where(truth_match < 0, iou[p], -1.0)
            t = int(np.argmax(cand))
            if cand[t] >= iou_threshold:
                truth_match[t], pred_match[p], iou_out[p] = p, t, iou[p, t]
    return Matches(truth_match, pred_match, iou_out)


@dataclass(frozen=True)
class CompletenessPurity:
    """Completeness and purity per score threshold, and per-truth detections.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per threshold: ``threshold``, ``n_true`` (truths),
        ``n_pred`` (detections with score >= threshold), ``n_matched``
        (matched detections = detected truths), ``n_false_positive``
        (``n_pred - n_matched``), ``n_false_positive_empty`` (those on images
        without any truth), ``completeness`` (``n_matched / n_true``, NaN
        without truths) and ``purity`` (``n_matched / n_pred``, NaN without
        detections).
    thresholds : numpy.ndarray, shape (T,), float64
    truth_image : numpy.ndarray, shape (n_truths,), int64
        Image of each truth; truths are ordered image by image, in input order.
    truth_score : numpy.ndarray, shape (n_truths,), float64
        Score of the detection matched to each truth, NaN if none.
    detected : numpy.ndarray, shape (n_truths, T), bool
        Truth ``k`` detected at threshold ``t``: ``truth_score[k] >= thresholds[t]``.
        Bin a truth property (redshift, richness) and average a column to get
        completeness per bin.
    """

    table: pd.DataFrame
    thresholds: np.ndarray
    truth_image: np.ndarray
    truth_score: np.ndarray
    detected: np.ndarray


def completeness_purity(
    images: Sequence, thresholds: Sequence[float], iou_threshold: float = 0.5
) -> CompletenessPurity:
    """Completeness and purity of detections with IoU matching, per score threshold.

    At threshold ``t`` only detections with score ``>= t`` count. Matching is
    greedy by descending score (:func:`match_detections`), so the matches among
    the detections above ``t`` are those of all detections restricted to them:
    one matching per image serves every threshold. Detections on empty fields
    (images without truths) are false positives, also counted apart.

    Parameters
    ----------
    images : sequence of (pred_boxes (K, 4), pred_scores (K,), true_boxes (N, 4))
        One triple per image, boxes in pixels (module docstring).
    thresholds : sequence of float, shape (T,)
        Score thresholds.
    iou_threshold : float
        Minimum IoU of a match, in (0, 1].

    Returns
    -------
    CompletenessPurity

    Raises
    ------
    ValueError
        On a malformed image (see :func:`match_detections`), no thresholds, a
        non-finite threshold or an IoU threshold outside (0, 1].

    Examples
    --------
    >>> images = [([[0, 0, 10, 10]], [0.9], [[0, 0, 10, 10]]), ([[5, 5, 9, 9]], [0.4], [])]
    >>> cp = completeness_purity(images, [0.3, 0.5])
    >>> cp.table[["threshold", "completeness", "purity", "n_false_positive_empty"]]
       threshold  completeness  purity  n_false_positive_empty
    0        0.3           1.0     0.5                       1
    1        0.5           1.0     1.0                       0
    """
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    thr = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if thr.size == 0 or not np.isfinite(thr).all():
        raise ValueError(f"thresholds must be non-empty and finite, got {thresholds}")
    truth_image, truth_score, pred_scores, pred_tp, pred_empty = [], [], [], [], []
    for k, image in enumerate(images):
        pb, ps, tb = _image(image, f"images[{k}]: ")
        m = _match(pb, ps, tb, iou_threshold)
        matched = m.truth_match >= 0
        truth_score.append(np.where(matched, ps[np.maximum(m.truth_match, 0)], np.nan))
        truth_image.append(np.full(len(tb), k, dtype=np.int64))
        pred_scores.append(ps)
        pred_tp.append(m.pred_match >= 0)
        pred_empty.append(np.full(len(ps), len(tb) == 0))
    truth_image, truth_score = _concat(truth_image, np.int64), _concat(truth_score, np.float64)
    scores, tp = _concat(pred_scores, np.float64), _concat(pred_tp, bool)
    empty = _concat(pred_empty, bool)

    above = scores[:, None] >= thr[None, :]  # (n_pred, T)
    n_pred = above.sum(0)
    n_matched = (above & tp[:, None]).sum(0)
    n_true = len(truth_score)
    with np.errstate(invalid="ignore", divide="ignore"):
        completeness = n_matched / n_true if n_true else np.full(len(thr), np.nan)
        purity = np.where(n_pred > 0, n_matched / np.maximum(n_pred, 1), np.nan)
    table = pd.DataFrame(
        {
            "threshold": thr,
            "n_true": np.full(len(thr), n_true, dtype=np.int64),
            "n_pred": n_pred.astype(np.int64),
            "n_matched": n_matched.astype(np.int64),
            "n_false_positive": (n_pred - n_matched).astype(np.int64),
            "n_false_positive_empty": (above & empty[:, None]).sum(0).astype(np.int64),
            "completeness": np.asarray(completeness, dtype=np.float64),
            "purity": purity.astype(np.float64),
        }
    )
    detected = truth_score[:, None] >= thr[None, :]  # NaN: False
    return CompletenessPurity(table, thr, truth_image, truth_score, detected)


def average_precision(
    images: Sequence, iou_threshold: float = 0.5, max_detections: int = 100
) -> float:
    """Average precision at one IoU threshold, by ``pycocotools.cocoeval.COCOeval``.

    The images become in-memory COCO ground truth and results (one category,
    boxes as ``[x_min, y_min, width, height]``, no crowd); ``COCOeval``
    matches them greedily by score and averages the interpolated precision
    (``p(r) = max_{r' >= r} p(r')``) at the 101 recalls ``0, 0.01, ..., 1``
    (Lin et al. 2014, arXiv:1405.0312; the COCO evaluation code). Images
    without truths keep their detections as false positives. Its prints are
    silenced.

    Parameters
    ----------
    images : sequence of (pred_boxes (K, 4), pred_scores (K,), true_boxes (N, 4))
        One triple per image, boxes in pixels (module docstring).
    iou_threshold : float
        In (0, 1] (COCO caps it at ``1 - 1e-10``).
    max_detections : int
        Best-scored detections kept per image (COCO's ``maxDets``), >= 1.

    Returns
    -------
    float
        AP in [0, 1] (COCO divides by ``tp + fp + eps``: perfect detections
        give ``1 - 2e-16``); 0 without any detection; NaN without any truth.

    Raises
    ------
    ValueError
        On a malformed image, or a parameter out of range.

    Examples
    --------
    >>> round(average_precision([([[0, 0, 10, 10]], [0.9], [[0, 0, 10, 10]])]), 9)
    1.0
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    if max_detections < 1:
        raise ValueError(f"max_detections must be >= 1, got {max_detections}")
    gt_images, gt_anns, dets = [], [], []
    for k, image in enumerate(images):
        pb, ps, tb = _image(image, f"images[{k}]: ")
        gt_images.append({"id": k + 1})
        for b in tb:
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            gt_anns.append(
                {
                    "id": len(gt_anns) + 1,
                    "image_id": k + 1,
                    "category_id": 1,
                    "bbox": [float(b[0]), float(b[1]), w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
        for b, s in zip(pb, ps, strict=True):
            box = [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]
            dets.append({"image_id": k + 1, "category_id": 1, "bbox": box, "score": float(s)})
    if not gt_anns:
        return float("nan")
    if not dets:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": gt_images, "annotations": gt_anns, "categories": [{"id": 1}]}
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets), iouType="bbox")
        ev.params.iouThrs = np.array([float(iou_threshold)])
        ev.params.maxDets = [int(max_detections)]
        ev.params.areaRng = [[0.0, 1e10]]
        ev.params.areaRngLbl = ["all"]
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"][0, :, 0, 0, 0]  # (iou, recall, category, area, maxDets)
    precision = precision[precision > -1]
    return float(precision.mean()) if precision.size else float("nan")
