"""Detection metrics: greedy IoU matching, completeness/purity per threshold, AP (pycocotools)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from astrobatch.evaluate.detection import (
    average_precision,
    completeness_purity,
    match_detections,
)

# --------------------------------------------------------------------------- the constructed survey
# image 0: two truths; a perfect detection of T0 (0.9), a duplicate of T0 (0.8, IoU 9/11 with it:
#          must not match a second time) and a perfect detection of T1 (0.3)
# image 1: one truth T2, missed; a detection far from it (0.7): a false positive
# image 2: an empty field (no truth) with one detection (0.6): a false positive on an empty field
SURVEY = [
    (
        [[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]],
        [0.9, 0.8, 0.3],
        [[0, 0, 10, 10], [20, 20, 30, 30]],
    ),
    ([[0, 0, 5, 5]], [0.7], [[50, 50, 60, 60]]),
    ([[10, 10, 20, 20]], [0.6], np.zeros((0, 4))),
]


# --------------------------------------------------------------------------- matching
def test_match_duplicate_does_not_match_twice():
    pb, ps, tb = SURVEY[0]
    m = match_detections(pb, ps, tb)
    assert m.truth_match.tolist() == [0, 2]
    assert m.pred_match.tolist() == [0, -1, 1]
    np.testing.assert_allclose(m.iou, [1.0, 0.0, 1.0])


def test_match_is_greedy_by_score_and_takes_the_best_free_truth():
    truths = [[0, 0, 10, 10], [5, 0, 15, 10]]
    # p overlaps A by 60/140 and B by 90/110: it takes B (the higher IoU)
    m = match_detections([[4, 0, 14, 10], [0, 0, 10, 10]], [0.9, 0.5], truths)
    assert m.pred_match.tolist() == [1, 0] and m.truth_match.tolist() == [1, 0]
    # the higher score wins the truth even with a lower IoU; the better box becomes a false positive
    m = match_detections([[0, 0, 10, 10], [1, 0, 11, 10]], [0.4, 0.9], [[0, 0, 10, 10]])
    assert m.pred_match.tolist() == [-1, 0]
    np.testing.assert_allclose(m.iou, [0.0, 9 / 11])
    # a truth already taken: the next detection falls back to its second-best truth if >= threshold
    m = match_detections(
        [[0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.8], [[0, 0, 10, 10], [1, 0, 11, 10]]
    )
    assert m.pred_match.tolist() == [0, 1]
    # below the IoU threshold: no match
    m = match_detections([[0, 0, 10, 10]], [0.9], [[5, 0, 15, 10]], iou_threshold=0.5)
    assert m.pred_match.tolist() == [-1] and m.truth_match.tolist() == [-1]


def test_match_empty_inputs_and_checks():
    m = match_detections(np.zeros((0, 4)), [], [[0, 0, 1, 1]])
    assert m.truth_match.tolist() == [-1] and m.pred_match.size == 0 and m.iou.size == 0
    m = match_detections([[0, 0, 1, 1]], [0.5], [])
    assert m.pred_match.tolist() == [-1] and m.truth_match.size == 0
    # torch inputs are accepted
    m = match_detections(
        torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([0.5]), torch.tensor([[0.0, 0, 1, 1]])
    )
    assert m.pred_match.tolist() == [0]
    with pytest.raises(ValueError, match="pred_scores"):
        match_detections([[0, 0, 1, 1]], [0.5, 0.4], [])
    with pytest.raises(ValueError, match="max >= min"):
        match_detections([[2, 0, 1, 1]], [0.5], [])
    with pytest.raises(ValueError, match="iou_threshold"):
        match_detections([[0, 0, 1, 1]], [0.5], [], iou_threshold=0.0)


# --------------------------------------------------------------------------- completeness, purity
def test_completeness_purity_hand_counted():
    cp = completeness_purity(SURVEY, [0.0, 0.5, 0.85, 0.95])
    tab = cp.table
    assert list(tab.columns) == [
        "threshold",
        "n_true",
        "n_pred",
        "n_matched",
        "n_false_positive",
        "n_false_positive_empty",
        "completeness",
        "purity",
    ]
    assert tab["n_true"].tolist() == [3, 3, 3, 3]
    # t = 0: all 5 detections, T0 and T1 matched; t = 0.5: 0.9, 0.8, 0.7, 0.6, only T0;
    # t = 0.85: only the 0.9; t = 0.95: nothing
    assert tab["n_pred"].tolist() == [5, 4, 1, 0]
    assert tab["n_matched"].tolist() == [2, 1, 1, 0]
    assert tab["n_false_positive"].tolist() == [3, 3, 0, 0]
    assert tab["n_false_positive_empty"].tolist() == [1, 1, 0, 0]
    np.testing.assert_allclose(tab["completeness"], [2 / 3, 1 / 3, 1 / 3, 0.0])
    np.testing.assert_allclose(tab["purity"].iloc[:3], [2 / 5, 1 / 4, 1.0])
    assert np.isnan(tab["purity"].iloc[3])  # no detection above 0.95
    # per truth, image by image
    assert cp.truth_image.tolist() == [0, 0, 1]
    np.testing.assert_allclose(cp.truth_score, [0.9, 0.3, np.nan])
    assert cp.detected.tolist() == [
        [True, True, True, False],
        [True, False, False, False],
        [False, False, False, False],
    ]
    # completeness per bin of a truth property is a column mean of `detected`
    redshift = np.array([0.1, 0.3, 0.3])
    high = redshift > 0.2
    assert cp.detected[high, 0].mean() == 0.5


def test_completeness_purity_edge_cases():
    only_empty = completeness_purity([([[0, 0, 1, 1]], [0.5], [])], [0.1])
    assert only_empty.table["purity"].tolist() == [0.0]
    assert np.isnan(only_empty.table["completeness"].iloc[0])
    assert only_empty.detected.shape == (0, 1)
    none = completeness_purity([], [0.1, 0.2])
    assert none.table["n_pred"].tolist() == [0, 0]
    with pytest.raises(ValueError, match="thresholds"):
        completeness_purity(SURVEY, [])
    with pytest.raises(ValueError, match=r"images\[1\]"):
        completeness_purity([SURVEY[0], ([[0, 0, 1, 1]], [], [])], [0.5])


# --------------------------------------------------------------------------- AP
def test_ap_of_perfect_detections_is_one():
    images = [(tb, np.linspace(0.9, 0.5, len(tb)), tb) for _, _, tb in SURVEY]
    assert average_precision(images) == pytest.approx(1.0, abs=1e-9)


def test_ap_ranking_case_by_hand():
    # two truths in two images and a false positive on an empty field, scored between them:
    # ranked TP (0.9), FP (0.8), TP (0.7): recall 1/2, 1/2, 1; precision 1, 1/2, 2/3.
    # Interpolated precision max_{r' >= r} p(r'): 1 up to recall 1/2, then 2/3. Over the 101
    # recalls 0, 0.01, ..., 1: the 51 points r <= 0.5 get 1, the 50 points r > 0.5 get 2/3.
    images = [
        ([[0, 0, 10, 10]], [0.9], [[0, 0, 10, 10]]),
        ([[0, 0, 10, 10]], [0.7], [[0, 0, 10, 10]]),
        ([[0, 0, 10, 10]], [0.8], []),
    ]
    assert average_precision(images) == pytest.approx((51 * 1.0 + 50 * 2 / 3) / 101, abs=1e-9)
    # the false positive first: FP, TP, TP: precision 0, 1/2, 2/3 -> interpolated 2/3 everywhere
    images[2] = ([[0, 0, 10, 10]], [0.95], [])
    assert average_precision(images) == pytest.approx(2 / 3, abs=1e-9)


def test_ap_missed_truth_duplicate_and_iou_threshold():
    # one of two truths found (recall at most 1/2): 51 of 101 recall points at precision 1;
    # a duplicate of the found truth (lower score) is a false positive after recall 1/2 is reached
    images = [
        ([[0, 0, 10, 10], [1, 0, 11, 10]], [0.9, 0.8], [[0, 0, 10, 10]]),
        ([], [], [[0, 0, 10, 10]]),
    ]
    assert average_precision(images) == pytest.approx(51 / 101, abs=1e-9)
    # IoU 0.6 (the box [0, 0, 10, 6] in the 10 x 10 truth: 60 / 100): a match at 0.5, not at 0.75
    shifted = [([[0, 0, 10, 6]], [0.9], [[0, 0, 10, 10]])]
    assert average_precision(shifted, iou_threshold=0.5) == pytest.approx(1.0, abs=1e-9)
    assert average_precision(shifted, iou_threshold=0.75) == 0.0


def test_ap_without_detections_or_truths():
    assert average_precision([([], [], [[0, 0, 1, 1]])]) == 0.0
    assert np.isnan(average_precision([([[0, 0, 1, 1]], [0.5], [])]))
    with pytest.raises(ValueError, match="iou_threshold"):
        average_precision(SURVEY, iou_threshold=1.5)
