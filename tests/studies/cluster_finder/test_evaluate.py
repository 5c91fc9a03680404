"""cluster_finder evaluation: counted truths, the validation-chosen threshold, detector metrics."""

import numpy as np
import pandas as pd
import pytest

from astrobatch.studies.cluster_finder.evaluate import (
    balanced_threshold,
    counted_truths,
    detection_curve,
    detector_metrics,
)
from astrobatch.studies.cluster_finder.params import ClusterFinderParams


def _params(**detection) -> ClusterFinderParams:
    return ClusterFinderParams.model_validate({"detection": detection})


def test_counted_truths_applies_richness_and_volume_limit():
    meta = pd.DataFrame({"richness": [25.0, 15.0, 40.0, 20.0], "z": [0.2, 0.2, 0.5, 0.35]})
    assert counted_truths(meta, _params()).tolist() == [True, False, False, True]
    assert counted_truths(meta, _params(z_max=None)).tolist() == [True, False, True, True]


def _case():
    """Two cluster images and one empty field, with hand-made detections.

    Image 0: a truth at z 0.2 found at score 0.9 and a duplicate at 0.4 (IoU 0.33).
    Image 1: a truth at z 0.5 (beyond z_max) found at 0.6. Empty field: a false
    positive at 0.2.
    """
    t0 = np.array([[10.0, 10.0, 30.0, 30.0]], np.float32)
    t1 = np.array([[5.0, 5.0, 25.0, 25.0]], np.float32)
    dets = [
        (np.array([[10.0, 10.0, 30.0, 30.0], [20.0, 10.0, 40.0, 30.0]], np.float32),
         np.array([0.9, 0.4], np.float32)),
        (np.array([[5.0, 5.0, 25.0, 25.0]], np.float32), np.array([0.6], np.float32)),
        (np.array([[0.0, 0.0, 10.0, 10.0]], np.float32), np.array([0.2], np.float32)),
    ]  # fmt: skip
    truths = [t0, t1, np.zeros((0, 4), np.float32)]
    meta = pd.DataFrame({"cluster_id": [1, 2], "z": [0.2, 0.5], "richness": [30.0, 30.0],
                         "image": [0, 1]})  # fmt: skip
    return dets, truths, meta, np.array([1, 1, 0])


def test_detector_metrics_on_a_constructed_case():
    dets, truths, meta, label = _case()
    p = _params()
    m, curve, per_truth = detector_metrics(dets, truths, meta, label, p, score_threshold=0.3)
    # counted: only the z = 0.2 truth; detections above 0.3: 0.9 (TP), 0.4 (dup, FP), 0.6 (TP)
    assert m["n_truths"] == 1
    assert m["completeness"] == 1.0
    assert m["completeness_all"] == 1.0
    assert m["purity"] == pytest.approx(2 / 3)
    assert m["false_positives_empty"] == 0.0
    assert per_truth["counted"].tolist() == [True, False]
    row = curve.set_index("threshold").loc[0.2]
    assert row["purity"] == pytest.approx(2 / 4)
    assert row["false_positives_per_empty_field"] == 1.0
    m7, _, _ = detector_metrics(dets, truths, meta, label, p, score_threshold=0.7)
    assert (m7["completeness"], m7["completeness_all"], m7["purity"]) == (1.0, 0.5, 1.0)


def test_balanced_threshold_maximises_the_worse_of_completeness_and_purity():
    dets, truths, meta, label = _case()
    table, _ = detection_curve(dets, truths, meta, label, _params())
    # above 0.4 the duplicate is gone: completeness 1 and purity 1 from 0.41 to 0.9
    assert balanced_threshold(table) == pytest.approx(0.41)
    t = pd.DataFrame({"threshold": [0.1, 0.2, 0.3], "completeness": [1.0, 0.9, np.nan],
                      "purity": [0.5, 0.8, np.nan]})  # fmt: skip
    assert balanced_threshold(t) == 0.2
    with pytest.raises(ValueError, match="no threshold"):
        balanced_threshold(t.iloc[2:])
