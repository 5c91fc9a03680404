"""The CenterNet-style detector: box IoU/GIoU, NMS, geometry, targets, losses, head, decoding."""

from __future__ import annotations

import math

import pytest
import torch
from kornia.metrics import mean_iou_bbox

from astrobatch.nn.cnn import ConvEncoder
from astrobatch.nn.detection import (
    CenterNetHead,
    CenterNetLoss,
    box_iou,
    boxes_to_sides,
    centernet_targets,
    conv_encoder_geometry,
    decode_detections,
    gaussian_radius,
    generalized_box_iou,
    giou_loss,
    map_geometry,
    nms,
    penalty_reduced_focal_loss,
    sides_to_boxes,
)

T = torch.tensor
LN2 = math.log(2.0)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread (two threads on a busy 2-core machine are ~20x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------- IoU, GIoU
def test_box_iou_hand_values():
    a = T([[0.0, 0.0, 2.0, 2.0]])
    b = T(
        [
            [1.0, 0.0, 3.0, 2.0],  # half overlap: 2 / (4 + 4 - 2)
            [1.0, 1.0, 2.0, 2.0],  # inside: 1 / 4
            [3.0, 3.0, 4.0, 4.0],  # disjoint
            [0.0, 0.0, 2.0, 2.0],  # identical
            [1.0, 0.0, 1.0, 2.0],  # zero width (one-member cluster): no error, IoU 0
        ]
    )
    iou = box_iou(a, b)
    assert iou.shape == (1, 5)
    torch.testing.assert_close(iou[0], T([1 / 3, 1 / 4, 0.0, 1.0, 0.0]))


def test_box_iou_matches_kornia_on_valid_boxes():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(7, 2, generator=g) * 20
    a = torch.cat([xy, xy + 1 + torch.rand(7, 2, generator=g) * 10], 1)
    xy = torch.rand(5, 2, generator=g) * 20
    b = torch.cat([xy, xy + 1 + torch.rand(5, 2, generator=g) * 10], 1)
    torch.testing.assert_close(box_iou(a, b), mean_iou_bbox(a, b))


def test_box_checks():
    good = T([[0.0, 0.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match="max >= min"):
        box_iou(T([[2.0, 0.0, 1.0, 1.0]]), good)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        box_iou(T([[0.0, 0.0, 1.0]]), good)
    with pytest.raises(ValueError, match="finite"):
        box_iou(good, T([[0.0, 0.0, float("nan"), 1.0]]))
    assert box_iou(torch.zeros(0, 4), good).shape == (0, 1)


def test_generalized_box_iou_hand_values():
    a = T([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.0]])
    b = T([[2.0, 0.0, 3.0, 1.0], [1.0, 0.0, 3.0, 2.0], [1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0]])
    # disjoint: IoU 0, C = 3, U = 2 -> -1/3 (< 0); enclosing = union: GIoU = IoU = 1/3;
    # diagonal shift: IoU 1/7, C = 9, U = 7 -> 1/7 - 2/9 = -5/63; identical: 1
    expected = T([-1 / 3, 1 / 3, -5 / 63, 1.0])
    torch.testing.assert_close(generalized_box_iou(a, b), expected)
    pw = generalized_box_iou(a, b, pairwise=True)
    assert pw.shape == (4, 4)
    torch.testing.assert_close(torch.diagonal(pw), expected)
    # far apart: tends to -1
    far = generalized_box_iou(T([[0.0, 0.0, 1.0, 1.0]]), T([[1000.0, 1000.0, 1001.0, 1001.0]]))
    assert -1.0 < far.item() < -0.99
    with pytest.raises(ValueError, match="equal shapes"):
        generalized_box_iou(a, b[:2])


# --------------------------------------------------------------------------- NMS
def test_nms_constructed_case():
    boxes = T(
        [
            [0.0, 0.0, 10.0, 10.0],  # 0: 0.9
            [1.0, 0.0, 11.0, 10.0],  # 1: IoU 9/11 with box 0 -> suppressed
            [5.0, 0.0, 15.0, 10.0],  # 2: IoU 1/3 with box 0, 6/14 with box 1 -> kept at 0.45
            [50.0, 50.0, 60.0, 60.0],  # 3: alone, best score
        ]
    )
    keep = nms(boxes, T([0.9, 0.8, 0.7, 0.95]), iou_threshold=0.45)
    assert keep.tolist() == [3, 0, 2]
    assert keep.dtype == torch.long
    assert nms(boxes, T([0.9, 0.8, 0.7, 0.95]), iou_threshold=0.3).tolist() == [3, 0]
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).tolist() == []
    with pytest.raises(ValueError, match="scores"):
        nms(boxes, T([0.9]), 0.5)
    with pytest.raises(ValueError, match="iou_threshold"):
        nms(boxes, T([0.9, 0.8, 0.7, 0.95]), 1.5)


# --------------------------------------------------------------------------- geometry
def test_map_geometry_tiles_the_image():
    stride, offset = map_geometry(32, 8)
    assert (stride, offset) == (4.0, 1.5)
    # cell 0 spans pixel centres 0..3 ([-0.5, 3.5]); the last cell ends at the image edge 31.5
    assert offset - stride / 2 == -0.5 and offset + 7 * stride + stride / 2 == 31.5
    s, o = map_geometry(30, 4)
    assert s == 7.5 and o == pytest.approx(3.25)
    with pytest.raises(ValueError):
        map_geometry(0, 4)


@pytest.mark.parametrize("n_blocks", [1, 2])
def test_conv_encoder_geometry_is_the_receptive_field_centre(n_blocks):
    # an averaging ConvEncoder on impulses: the pixels that reach map column j are its
    # receptive field, whose middle must be offset + stride * j
    size = 24
    enc = ConvEncoder(1, size, channels=(1,) * n_blocks, return_feature_map=True)
    with torch.no_grad():
        for m in enc.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.fill_(1.0 / 9)
                m.bias.zero_()
    imgs = torch.zeros(size, 1, size, size)
    row = size // 2
    imgs[torch.arange(size), 0, row, torch.arange(size)] = 1.0
    with torch.no_grad():
        out = enc(imgs)[:, 0].amax(1)  # (x of the impulse, map column)
    stride, offset = conv_encoder_geometry(n_blocks)
    for j in range(out.shape[1]):
        xs = (out[:, j] > 0).nonzero().squeeze(1).float()
        assert (xs.min() + xs.max()).item() / 2 == offset + stride * j
    assert conv_encoder_geometry(3) == (8.0, 10.5)


def test_sides_and_boxes_round_trip():
    sides = torch.rand(2, 4, 3, 5) * 10
    boxes = sides_to_boxes(sides, 4.0, 1.5)
    assert boxes.shape == (2, 3, 5, 4)
    # cell (i=1, j=2) is centred at (x, y) = (1.5 + 8, 1.5 + 4)
    left, top, right, bottom = sides[0, :, 1, 2].tolist()
    torch.testing.assert_close(
        boxes[0, 1, 2], T([9.5 - left, 5.5 - top, 9.5 + right, 5.5 + bottom])
    )
    torch.testing.assert_close(boxes_to_sides(boxes, 4.0, 1.5), sides)


# --------------------------------------------------------------------------- targets
def _reference_radius(height, width, min_overlap=0.7):
    """The CenterNet reference formulas, written out."""
    a1, b1 = 1, height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1**2 - 4 * a1 * c1)) / 2
    a2, b2 = 4, 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(b2**2 - 4 * a2 * c2)) / 2
    a3, b3 = 4 * min_overlap, -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def test_gaussian_radius():
    # 10 x 10: r3 = (b3 + sqrt(b3^2 - 4 a3 c3)) / 2 with a3 = 2.8, b3 = -28, c3 = -30
    # = (sqrt(784 + 336) - 28) / 2, the smallest of the three
    assert gaussian_radius(10, 10) == pytest.approx((math.sqrt(1120) - 28) / 2)
    for h, w, ov in [(3, 2, 0.7), (20, 5, 0.7), (7, 7, 0.5)]:
        assert gaussian_radius(h, w, ov) == pytest.approx(_reference_radius(h, w, ov))
    assert gaussian_radius(0, 0) == 0.0
    with pytest.raises(ValueError):
        gaussian_radius(3, 3, min_overlap=1.0)


def test_targets_peak_mask_and_boxes():
    box = T([[10.0, 2.0, 18.0, 14.0]])  # centre (14, 8)
    t = centernet_targets([box, torch.zeros(0, 4)], 8, stride=4.0, offset=1.5)
    assert t.heatmap.shape == (2, 1, 8, 8) and t.mask.shape == (2, 8, 8)
    assert t.boxes.shape == (2, 8, 8, 4) and t.sides.shape == (2, 4, 8, 8)
    # column round((14 - 1.5) / 4) = 3, row round((8 - 1.5) / 4) = 2
    assert t.mask[0].nonzero().tolist() == [[2, 3]]
    assert t.heatmap[0, 0, 2, 3].item() == 1.0
    assert (t.heatmap[0] == 1).sum() == 1
    torch.testing.assert_close(t.boxes[0, 2, 3], box[0])
    # cell centre (13.5, 9.5): sides (3.5, 7.5, 4.5, 4.5)
    torch.testing.assert_close(t.sides[0, :, 2, 3], T([3.5, 7.5, 4.5, 4.5]))
    assert not t.mask[1].any() and t.heatmap[1].abs().sum() == 0 and t.sides[1].abs().sum() == 0


def test_targets_gaussian_values_and_overlaps():
    # a 40-pixel box on stride 4: 10 cells, radius int(2.73) = 2, sigma = 5 / 6
    big = T([[0.0, 0.0, 40.0, 40.0]])  # centre (20, 20): cell round(18.5 / 4) = 5
    t = centernet_targets([big], 12, stride=4.0, offset=1.5)
    h = t.heatmap[0, 0]
    assert h[5, 5] == 1.0
    sigma2 = (5 / 6) ** 2
    assert h[5, 6].item() == pytest.approx(math.exp(-1 / (2 * sigma2)), rel=1e-6)
    assert h[7, 7].item() == pytest.approx(math.exp(-8 / (2 * sigma2)), rel=1e-5)
    assert h[5, 8] == 0 and h[8, 5] == 0  # outside the (2r + 1)^2 window
    # a second, small box with the same centre cell: the peak stays 1, the smaller box is regressed
    small = T([[18.0, 18.0, 22.0, 22.0]])
    for boxes in (torch.cat([big, small]), torch.cat([small, big])):
        t2 = centernet_targets([boxes], 12, stride=4.0, offset=1.5)
        assert t2.mask[0].sum() == 1
        torch.testing.assert_close(t2.boxes[0, 5, 5], small[0])
        torch.testing.assert_close(t2.heatmap, t.heatmap)  # max of both gaussians
    # a centre outside the mapped area is clamped to the edge cell
    t3 = centernet_targets([T([[40.0, 0.0, 60.0, 4.0]])], 8, stride=4.0, offset=1.5)
    assert t3.mask[0].nonzero().tolist() == [[0, 7]]


def test_targets_checks():
    with pytest.raises(ValueError, match=r"boxes_per_image\[0\]"):
        centernet_targets([T([[5.0, 0.0, 1.0, 1.0]])], 8, 4.0, 1.5)
    with pytest.raises(ValueError, match="map_size"):
        centernet_targets([T([[0.0, 0.0, 1.0, 1.0]])], 0, 4.0, 1.5)
    with pytest.raises(ValueError, match="stride"):
        centernet_targets([T([[0.0, 0.0, 1.0, 1.0]])], 8, 0.0, 1.5)


# --------------------------------------------------------------------------- decoding
def _perfect_outputs(targets):
    return torch.logit(targets.heatmap, eps=1e-6), targets.sides


def test_decoding_perfect_outputs_returns_the_true_boxes():
    stride, offset = map_geometry(64, 16)
    truths = [
        T([[3.0, 4.0, 20.0, 30.0], [35.0, 40.0, 60.0, 52.0]]),
        T([[10.0, 10.0, 13.0, 12.0]]),  # smaller than a cell
        torch.zeros(0, 4),  # empty field
    ]
    t = centernet_targets(truths, 16, stride, offset)
    dets = decode_detections(*_perfect_outputs(t), stride, offset, score_threshold=0.5)
    assert len(dets) == 3
    for (boxes, scores), true in zip(dets, truths, strict=True):
        assert boxes.shape == true.shape and scores.shape == (len(true),)
        if len(true):
            order = torch.argsort(boxes[:, 0])
            assert (boxes[order] - true[torch.argsort(true[:, 0])]).abs().max() < 1.0
            assert (scores > 0.99).all()
            assert (scores[:-1] >= scores[1:]).all()


def test_decoding_threshold_nms_and_max_detections():
    heat = torch.full((1, 1, 8, 8), -10.0)
    heat[0, 0, 2, 2], heat[0, 0, 2, 4], heat[0, 0, 6, 6] = 3.0, 2.0, 1.0  # 3 separate peaks
    sides = torch.full((1, 4, 8, 8), 6.0)  # 12-pixel boxes on stride 4: neighbours overlap
    ((boxes, _),) = decode_detections(heat, sides, 4.0, 1.5, score_threshold=0.5)
    # the peak two cells away has IoU 4/20 = 0.2 with the best one: kept at 0.45, not at 0.1
    assert len(boxes) == 3
    torch.testing.assert_close(boxes[0], T([3.5, 3.5, 15.5, 15.5]))
    ((b2, _),) = decode_detections(heat, sides, 4.0, 1.5, score_threshold=0.5, iou_threshold=0.1)
    assert len(b2) == 2
    ((b3, s3),) = decode_detections(heat, sides, 4.0, 1.5, score_threshold=0.8)
    assert len(b3) == 2 and s3.min() >= 0.8  # sigmoid(1) = 0.73 is dropped
    ((b4, _),) = decode_detections(heat, sides, 4.0, 1.5, score_threshold=0.5, max_detections=1)
    assert len(b4) == 1
    with pytest.raises(ValueError, match="sides"):
        decode_detections(heat, sides[:, :2], 4.0, 1.5, 0.5)


# --------------------------------------------------------------------------- losses
def test_focal_loss_hand_case():
    # p = 0.5 everywhere; positive: (1 - p)^2 log 2; negative at y = 0.5: (1 - y)^4 p^2 log 2
    loss = penalty_reduced_focal_loss(torch.zeros(1, 1, 1, 2), T([[[[1.0, 0.5]]]]))
    assert loss.item() == pytest.approx(LN2 * (0.25 + 0.0625 * 0.25), rel=1e-6)
    # normalised by the number of objects: two such images give the same value
    two = penalty_reduced_focal_loss(torch.zeros(2, 1, 1, 2), T([[[[1.0, 0.5]]], [[[1.0, 0.5]]]]))
    assert two.item() == pytest.approx(loss.item(), rel=1e-6)


def test_focal_loss_without_objects_is_finite():
    logits = torch.zeros(1, 1, 2, 2, requires_grad=True)
    loss = penalty_reduced_focal_loss(logits, torch.zeros(1, 1, 2, 2))
    assert loss.item() == pytest.approx(4 * 0.25 * LN2, rel=1e-6)  # sum, divided by 1
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    extreme = penalty_reduced_focal_loss(T([[[[100.0, -100.0]]]]), T([[[[0.0, 1.0]]]]))
    assert torch.isfinite(extreme)
    with pytest.raises(ValueError, match="equal shapes"):
        penalty_reduced_focal_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 3))


def test_giou_loss():
    a = T([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]])
    b = T([[2.0, 0.0, 3.0, 1.0], [0.0, 0.0, 2.0, 2.0]])
    assert giou_loss(a, b).item() == pytest.approx(((1 + 1 / 3) + 0) / 2)
    empty = torch.zeros(0, 4, requires_grad=True)
    z = giou_loss(empty, torch.zeros(0, 4))
    assert z.item() == 0.0 and z.requires_grad


def test_centernet_loss_terms():
    stride, offset = 4.0, 1.5
    t = centernet_targets([T([[4.0, 6.0, 20.0, 18.0]])], 8, stride, offset)
    logits, sides = _perfect_outputs(t)
    loss_fn = CenterNetLoss(heatmap_weight=1.0, giou_weight=2.0)
    terms = loss_fn.terms(logits, sides, t)
    assert terms["giou"].item() == pytest.approx(0.0, abs=1e-6)
    assert terms["heatmap"].item() < 1e-3
    # GIoU about the cell centre equals GIoU of the image-pixel boxes
    wrong = sides * T([1.0, 0.5, 2.0, 1.0])[None, :, None, None]
    got = loss_fn.terms(logits, wrong, t)
    pred = sides_to_boxes(wrong, stride, offset)[t.mask]
    expected = 1 - generalized_box_iou(pred, t.boxes[t.mask])
    assert got["giou"].item() == pytest.approx(expected.mean().item(), rel=1e-5)
    assert got["loss"].item() == pytest.approx(
        got["heatmap"].item() + 2.0 * got["giou"].item(), rel=1e-6
    )
    assert loss_fn(logits, wrong, t).item() == pytest.approx(got["loss"].item())
    with pytest.raises(ValueError):
        CenterNetLoss(giou_weight=-1.0)


# --------------------------------------------------------------------------- head
def test_head_shapes_init_and_encoder():
    enc = ConvEncoder(3, 32, channels=(4, 8), return_feature_map=True)
    stride, offset = conv_encoder_geometry(2)
    head = CenterNetHead(enc.out_channels, hidden=8, stride=stride, offset=offset)
    heat, sides = head(enc(torch.randn(2, 3, 32, 32)))
    assert heat.shape == (2, 1, enc.map_size, enc.map_size)
    assert sides.shape == (2, 4, enc.map_size, enc.map_size)
    assert (sides > 0).all()
    assert head.heatmap[-1].bias.item() == pytest.approx(-2.19)
    assert len(head.decode(heat, sides, score_threshold=0.0)) == 2
    t = head.targets([T([[4.0, 4.0, 20.0, 20.0]]), torch.zeros(0, 4)], enc.map_size)
    assert t.heatmap.shape == heat.shape
    with pytest.raises(ValueError, match="features"):
        head(torch.zeros(1, 5, 6, 6))
    with pytest.raises(ValueError, match="stride"):
        CenterNetHead(8, stride=0.0)


def test_head_overfits_one_image():
    torch.manual_seed(0)
    features = torch.randn(1, 8, 8, 8)
    head = CenterNetHead(8, hidden=16, stride=4.0, offset=1.5)
    targets = head.targets([T([[6.0, 5.0, 22.0, 17.0]])], 8)
    loss_fn = CenterNetLoss()
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = loss_fn(*head(features), targets)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
    heat, _ = head(features)
    assert heat.flatten().argmax().item() == targets.mask.flatten().nonzero().item()
