"""Anchor-free single-shot box detection on a feature map (CenterNet style).

The detector is a :class:`CenterNetHead` on the feature map of an encoder
(:class:`~astrobatch.nn.cnn.ConvEncoder` with ``return_feature_map=True``,
``(B, C, s, s)``). Per map cell it predicts

- a heatmap logit: the cell holds the centre of an object (Zhou, Wang &
  Krähenbühl 2019, "Objects as Points", arXiv:1904.07850), trained against
  gaussian targets (:func:`centernet_targets`) with the penalty-reduced focal
  loss of CornerNet (Law & Deng 2018, arXiv:1808.01244,
  :func:`penalty_reduced_focal_loss`);
- four box sides: the distances (left, top, right, bottom) from the cell's
  centre to the box edges, input pixels, trained with the GIoU loss
  (Rezatofighi et al. 2019, arXiv:1902.09630, :func:`giou_loss`) at the cell of
  every object's centre. The (l, t, r, b) parametrisation is that of FCOS
  (Tian et al. 2019, arXiv:1904.01355); CenterNet regresses a size and a
  sub-cell offset instead.

:func:`decode_detections` turns the outputs into boxes: 3x3 local maxima of the
heatmap above a score threshold, boxes from their sides, then non-maximum
suppression (:func:`nms`).

Conventions
-----------
- A box is ``(x_min, y_min, x_max, y_max)``, float pixels of the *input image*,
  for an image indexed ``img[y, x]`` with pixel centres at integer
  coordinates (pixel ``x`` spans ``[x - 0.5, x + 0.5]``). Areas are
  ``(x_max - x_min) (y_max - y_min)`` (no ``+ 1``), as in kornia and
  pycocotools. Zero-width boxes (a cluster with a single member) are allowed;
  ``x_max < x_min`` is not.
- Map cell ``(i, j)`` (row ``i``, column ``j``) has its centre at image pixel
  ``(x, y) = (offset + stride * j, offset + stride * i)``.
  :func:`map_geometry` gives an evenly spread ``(stride, offset)`` (the cells
  tile the image); :func:`conv_encoder_geometry` gives the receptive-field
  centres of a :class:`~astrobatch.nn.cnn.ConvEncoder` ('valid' convolutions
  shift the map inwards).

Which library does what
-----------------------
- :func:`nms`: :func:`kornia.geometry.bbox.nms`.
- :func:`box_iou`, :func:`generalized_box_iou`: our own (torch).
  :func:`kornia.metrics.mean_iou_bbox` gives the same IoU (the tests compare
  them) but raises ``AssertionError`` on zero-width boxes, and kornia has no
  GIoU, which needs the same intersection and union.
- :func:`penalty_reduced_focal_loss`: our own; kornia's
  :func:`~kornia.losses.binary_focal_loss_with_logits` is the alpha-balanced
  focal loss of RetinaNet, without CornerNet's ``(1 - y)^beta`` reduction of
  the penalty near a centre and without the normalisation by objects.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import kornia.geometry.bbox
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CenterNetHead",
    "CenterNetLoss",
    "CenterNetTargets",
    "box_iou",
    "boxes_to_sides",
    "centernet_targets",
    "conv_encoder_geometry",
    "decode_detections",
    "gaussian_radius",
    "generalized_box_iou",
    "giou_loss",
    "map_geometry",
    "nms",
    "penalty_reduced_focal_loss",
    "sides_to_boxes",
]

#: Guard of divisions by an area, pixels² (an area this small is a degenerate box).
_EPS = 1e-9


# --------------------------------------------------------------------------- boxes
def _check_boxes(boxes, name: str) -> Tensor:
    """``boxes`` as a floating tensor ``(N, 4)``; ValueError on a bad shape or box."""
    boxes = torch.as_tensor(boxes)
    if not boxes.is_floating_point():
        boxes = boxes.float()
    if boxes.numel() == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4), got {tuple(boxes.shape)}")
    if not torch.isfinite(boxes).all():
        raise ValueError(f"{name} must be finite")
    if ((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])).any():
        raise ValueError(f"{name} must be (x_min, y_min, x_max, y_max) with max >= min")
    return boxes


def _iou_terms(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Intersection, union and enclosing area of broadcast boxes ``(..., 4)``."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    elt = torch.minimum(a[..., :2], b[..., :2])
    erb = torch.maximum(a[..., 2:], b[..., 2:])
    ewh = (erb - elt).clamp(min=0)
    return inter, union, ewh[..., 0] * ewh[..., 1]


def _giou(a: Tensor, b: Tensor) -> Tensor:
    """GIoU of broadcast boxes, unchecked (the loss path: no host sync)."""
    inter, union, enclosing = _iou_terms(a, b)
    iou = inter / union.clamp(min=_EPS)
    return iou - (enclosing - union) / enclosing.clamp(min=_EPS)


def box_iou(a, b) -> Tensor:
    """Intersection over union of every pair of boxes.

    Our own implementation: :func:`kornia.metrics.mean_iou_bbox` gives the same
    values but raises on zero-width boxes, which are legitimate here (a cluster
    box from a single member).

    Parameters
    ----------
    a : torch.Tensor or array-like, shape (N, 4), float
        Boxes ``(x_min, y_min, x_max, y_max)``, pixels.
    b : torch.Tensor or array-like, shape (M, 4), float
        Boxes, same convention.

    Returns
    -------
    torch.Tensor, shape (N, M), dtype of the inputs
        IoU in [0, 1]; 0 when the union is zero (two degenerate boxes).

    Raises
    ------
    ValueError
        On a shape other than ``(N, 4)``, a non-finite value or ``max < min``.

    Examples
    --------
    >>> box_iou(torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([[1.0, 0.0, 3.0, 2.0]]))
    tensor([[0.3333]])
    """
    a, b = _check_boxes(a, "a"), _check_boxes(b, "b")
    inter, union, _ = _iou_terms(a[:, None, :], b[None, :, :])
    return inter / union.clamp(min=_EPS)


def generalized_box_iou(a, b, pairwise: bool = False) -> Tensor:
    """Generalized IoU, ``GIoU = IoU - (C - U) / C`` (Rezatofighi et al. 2019, arXiv:1902.09630).

    ``U`` is the union and ``C`` the area of the smallest box enclosing both.
    GIoU is in (-1, 1]: 1 for identical boxes, negative for disjoint boxes,
    tending to -1 as they move apart. Our own implementation (kornia has none).

    Parameters
    ----------
    a : torch.Tensor or array-like, shape (N, 4), float
        Boxes ``(x_min, y_min, x_max, y_max)``, pixels.
    b : torch.Tensor or array-like, shape (N, 4) (paired) or (M, 4) (pairwise), float
        Boxes, same convention.
    pairwise : bool
        False: GIoU of ``a[k]`` with ``b[k]``, shape ``(N,)``; True: of every
        pair, shape ``(N, M)``.

    Returns
    -------
    torch.Tensor, shape (N,) or (N, M), dtype of the inputs

    Raises
    ------
    ValueError
        On a bad box (see :func:`box_iou`), or paired inputs of different lengths.

    Examples
    --------
    >>> a = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    >>> generalized_box_iou(a, torch.tensor([[2.0, 0.0, 3.0, 1.0]]))
    tensor([-0.3333])
    """
    a, b = _check_boxes(a, "a"), _check_boxes(b, "b")
    if pairwise:
        return _giou(a[:, None, :], b[None, :, :])
    if a.shape != b.shape:
        raise ValueError(
            f"paired boxes must have equal shapes, got {tuple(a.shape)}, {tuple(b.shape)}"
        )
    return _giou(a, b)


def nms(boxes, scores, iou_threshold: float) -> Tensor:
    """Non-maximum suppression, :func:`kornia.geometry.bbox.nms`.

    Visits the boxes by descending score and drops every box whose IoU with a
    box already kept exceeds ``iou_threshold``.

    Parameters
    ----------
    boxes : torch.Tensor, shape (N, 4), float
        Boxes ``(x_min, y_min, x_max, y_max)``, pixels.
    scores : torch.Tensor, shape (N,), float
        Their scores.
    iou_threshold : float
        In [0, 1]: boxes overlapping a kept box by IoU > ``iou_threshold`` are
        suppressed.

    Returns
    -------
    torch.Tensor, shape (K,), int64
        Indices of the kept boxes, by descending score.

    Raises
    ------
    ValueError
        On a bad box, a ``scores`` shape other than ``(N,)`` or a threshold
        outside [0, 1].

    Notes
    -----
    Two boxes of zero area have an undefined IoU in kornia (0 / 0): the lower
    scored one is suppressed.

    Examples
    --------
    >>> b = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [20.0, 0.0, 30.0, 10.0]])
    >>> nms(b, torch.tensor([0.8, 0.9, 0.7]), iou_threshold=0.5)
    tensor([1, 2])
    """
    boxes = _check_boxes(boxes, "boxes")
    scores = torch.as_tensor(scores, device=boxes.device)
    if scores.shape != (boxes.shape[0],):
        raise ValueError(f"scores must have shape ({boxes.shape[0]},), got {tuple(scores.shape)}")
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    return kornia.geometry.bbox.nms(boxes, scores, float(iou_threshold))


# --------------------------------------------------------------------------- geometry
def map_geometry(image_size: int, map_size: int) -> tuple[float, float]:
    """``(stride, offset)`` of a map whose cells tile the image evenly.

    Cell ``j`` covers ``[-0.5 + stride j, -0.5 + stride (j + 1)]`` (pixel
    centres at integers, the image spans ``[-0.5, S - 0.5]``), so
    ``stride = S / s`` and the centre of cell 0 is ``offset = (stride - 1) / 2``.

    Parameters
    ----------
    image_size : int
        S, side of the input image, pixels.
    map_size : int
        s, side of the feature map, cells.

    Returns
    -------
    stride, offset : float
        Pixels per cell; image pixel of the centre of cell 0.

    Raises
    ------
    ValueError
        If a size is below 1.

    Examples
    --------
    >>> map_geometry(32, 8)
    (4.0, 1.5)
    """
    if image_size < 1 or map_size < 1:
        raise ValueError(f"sizes must be >= 1, got image_size={image_size}, map_size={map_size}")
    stride = float(image_size) / float(map_size)
    return stride, (stride - 1.0) / 2.0


def conv_encoder_geometry(n_blocks: int) -> tuple[float, float]:
    """``(stride, offset)`` of the receptive-field centres of a ConvEncoder's map.

    A block of :class:`~astrobatch.nn.cnn.ConvEncoder` (3x3 'valid' conv, 2x2
    max-pool) takes output cell ``j`` from conv cells ``2j, 2j + 1``, centred on
    input pixels ``2j + 1, 2j + 2``: centre ``2j + 1.5``. Composing ``n``
    blocks gives ``stride = 2^n`` and ``offset = 1.5 (2^n - 1)`` (the map is
    shifted inwards; pixels near the edges fall on the edge cells).

    Parameters
    ----------
    n_blocks : int
        Number of blocks (``len(channels)``), at least 1.

    Returns
    -------
    stride, offset : float
        Pixels.

    Raises
    ------
    ValueError
        If ``n_blocks < 1``.

    Examples
    --------
    >>> conv_encoder_geometry(2)
    (4.0, 4.5)
    """
    if n_blocks < 1:
        raise ValueError(f"n_blocks must be >= 1, got {n_blocks}")
    stride = 2.0**n_blocks
    return stride, 1.5 * (stride - 1.0)


def _cell_centres(h: int, w: int, stride: float, offset: float, like: Tensor):
    """Image pixel of the cell centres: ``cx`` ``(1, w)`` and ``cy`` ``(h, 1)``."""
    cx = offset + stride * torch.arange(w, device=like.device, dtype=like.dtype)
    cy = offset + stride * torch.arange(h, device=like.device, dtype=like.dtype)
    return cx[None, :], cy[:, None]


def sides_to_boxes(sides: Tensor, stride: float, offset: float) -> Tensor:
    """Boxes of every cell from its sides: ``(cx - l, cy - t, cx + r, cy + b)``.

    Parameters
    ----------
    sides : torch.Tensor, shape (B, 4, h, w), float
        Distances (left, top, right, bottom) from each cell centre to the box
        edges, pixels.
    stride, offset : float
        Cell geometry (module docstring), pixels.

    Returns
    -------
    torch.Tensor, shape (B, h, w, 4), float
        Boxes ``(x_min, y_min, x_max, y_max)``, pixels.

    Raises
    ------
    ValueError
        On a shape other than ``(B, 4, h, w)``.
    """
    if sides.ndim != 4 or sides.shape[1] != 4:
        raise ValueError(f"sides must have shape (B, 4, h, w), got {tuple(sides.shape)}")
    cx, cy = _cell_centres(sides.shape[2], sides.shape[3], stride, offset, sides)
    left, top, right, bottom = sides.unbind(1)
    return torch.stack([cx - left, cy - top, cx + right, cy + bottom], dim=-1)


def boxes_to_sides(boxes: Tensor, stride: float, offset: float) -> Tensor:
    """Sides (l, t, r, b) of the box of every cell: the inverse of :func:`sides_to_boxes`.

    Parameters
    ----------
    boxes : torch.Tensor, shape (B, h, w, 4), float
        One box per cell, pixels.
    stride, offset : float
        Cell geometry, pixels.

    Returns
    -------
    torch.Tensor, shape (B, 4, h, w), float
        Distances from the cell centre, pixels (negative where the centre lies
        outside the box).

    Raises
    ------
    ValueError
        On a shape other than ``(B, h, w, 4)``.
    """
    if boxes.ndim != 4 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape (B, h, w, 4), got {tuple(boxes.shape)}")
    cx, cy = _cell_centres(boxes.shape[1], boxes.shape[2], stride, offset, boxes)
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([cx - x0, cy - y0, x1 - cx, y1 - cy], dim=1)


# --------------------------------------------------------------------------- targets
def gaussian_radius(height: float, width: float, min_overlap: float = 0.7) -> float:
    """Radius of the CenterNet gaussian of a box, map cells.

    The smallest of the three corner shifts that keep an IoU of
    ``min_overlap`` with the box (CornerNet, Law & Deng 2018,
    arXiv:1808.01244, sec. 3.2), exactly as the reference CenterNet code
    computes them (``r = (b + sqrt(b^2 - 4ac)) / 2`` for each quadratic, which
    is not the textbook root: kept so that the targets match the published
    training; CenterNet, Zhou et al. 2019, arXiv:1904.07850).

    Parameters
    ----------
    height, width : float
        Box size, map cells (CenterNet rounds them up first).
    min_overlap : float
        In (0, 1).

    Returns
    -------
    float
        The radius (not rounded), >= 0.

    Raises
    ------
    ValueError
        On a negative size or ``min_overlap`` outside (0, 1).

    Examples
    --------
    >>> round(gaussian_radius(10, 10), 4)
    2.7332
    """
    if height < 0 or width < 0:
        raise ValueError(f"box size must be >= 0, got height={height}, width={width}")
    if not 0.0 < min_overlap < 1.0:
        raise ValueError(f"min_overlap must be in (0, 1), got {min_overlap}")
    hw, s = height * width, height + width
    c1 = hw * (1 - min_overlap) / (1 + min_overlap)
    r1 = (s + math.sqrt(max(s**2 - 4 * c1, 0.0))) / 2
    b2, c2 = 2 * s, (1 - min_overlap) * hw
    r2 = (b2 + math.sqrt(max(b2**2 - 16 * c2, 0.0))) / 2
    a3, b3, c3 = 4 * min_overlap, -2 * min_overlap * s, (min_overlap - 1) * hw
    r3 = (b3 + math.sqrt(max(b3**2 - 4 * a3 * c3, 0.0))) / 2
    return max(0.0, min(r1, r2, r3))


class CenterNetTargets(NamedTuple):
    """Training targets of a batch on a map of ``h x w`` cells (see :func:`centernet_targets`).

    Attributes
    ----------
    heatmap : torch.Tensor, shape (B, 1, h, w), float32
        Gaussian heatmap in [0, 1], exactly 1 at the cell of each object's centre.
    mask : torch.Tensor, shape (B, h, w), bool
        Cells where a box is regressed (one per object, fewer if two objects
        share a cell).
    boxes : torch.Tensor, shape (B, h, w, 4), float32
        The box to regress at each masked cell (image pixels), zeros elsewhere.
    sides : torch.Tensor, shape (B, 4, h, w), float32
        The same boxes as distances (l, t, r, b) from the cell centre, pixels,
        zeros elsewhere.
    """

    heatmap: Tensor
    mask: Tensor
    boxes: Tensor
    sides: Tensor


def _map_hw(map_size: int | Sequence[int]) -> tuple[int, int]:
    hw = (map_size, map_size) if isinstance(map_size, int) else tuple(int(v) for v in map_size)
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f"map_size must be an int or (h, w), each >= 1, got {map_size}")
    return hw


def centernet_targets(
    boxes_per_image: Sequence,
    map_size: int | Sequence[int],
    stride: float,
    offset: float,
    min_overlap: float = 0.7,
    device: torch.device | str | None = None,
) -> CenterNetTargets:
    """Gaussian heatmaps and box targets of a batch (CenterNet, Zhou et al. 2019, arXiv:1904.07850).

    Each object's centre falls in the cell ``(i, j)`` nearest to it (clamped to
    the map, for a box centre outside the mapped area). Around it the heatmap
    is ``exp(-(di^2 + dj^2) / (2 sigma^2))`` on a ``(2r + 1)^2`` window, with
    ``r = int(gaussian_radius(ceil(h / stride), ceil(w / stride), min_overlap))``
    and ``sigma = (2r + 1) / 6`` (as the reference ``draw_umich_gaussian``);
    overlapping objects take the maximum. The box is regressed at its centre
    cell only; when objects share that cell the smallest box wins (as FCOS,
    arXiv:1904.01355, resolves ambiguous cells), whatever their order.

    Parameters
    ----------
    boxes_per_image : sequence of (torch.Tensor or array-like, shape (n_b, 4), float)
        B entries, the true boxes ``(x_min, y_min, x_max, y_max)`` of each
        image, pixels; ``n_b = 0`` for an empty field.
    map_size : int or (int, int)
        Side ``s`` (or ``(h, w)``) of the feature map, cells.
    stride, offset : float
        Cell geometry (module docstring), pixels.
    min_overlap : float
        IoU in (0, 1) that sets the gaussian radius (CenterNet: 0.7).
    device : torch.device or str, optional
        Where to build the targets; default the device of the first tensor of
        ``boxes_per_image``, else the CPU.

    Returns
    -------
    CenterNetTargets
        ``heatmap`` (B, 1, h, w), ``mask`` (B, h, w), ``boxes`` (B, h, w, 4),
        ``sides`` (B, 4, h, w).

    Raises
    ------
    ValueError
        On a bad box (shape, non-finite, ``max < min``), a bad map size, a
        non-positive stride or ``min_overlap`` outside (0, 1).

    Examples
    --------
    >>> t = centernet_targets([torch.tensor([[4.0, 4.0, 12.0, 12.0]])], 4, stride=4.0, offset=1.5)
    >>> t.mask[0].nonzero().tolist(), t.heatmap[0, 0, 2, 2].item()
    ([[2, 2]], 1.0)
    """
    h, w = _map_hw(map_size)
    if not stride > 0:
        raise ValueError(f"stride must be > 0, got {stride}")
    if not 0.0 < min_overlap < 1.0:
        raise ValueError(f"min_overlap must be in (0, 1), got {min_overlap}")
    if device is None:
        first = next((b for b in boxes_per_image if isinstance(b, Tensor)), None)
        device = first.device if first is not None else torch.device("cpu")
    n_img = len(boxes_per_image)
    heat = torch.zeros(n_img, 1, h, w, device=device)
    mask = torch.zeros(n_img, h, w, dtype=torch.bool, device=device)
    tboxes = torch.zeros(n_img, h, w, 4, device=device)
    rows = torch.arange(h, device=device, dtype=torch.float32)[None, :, None]
    cols = torch.arange(w, device=device, dtype=torch.float32)[None, None, :]
    eps = torch.finfo(torch.float32).eps
    for b, boxes in enumerate(boxes_per_image):
        boxes = _check_boxes(boxes, f"boxes_per_image[{b}]").to(device, torch.float32)
        if boxes.shape[0] == 0:
            continue
        cx = (boxes[:, 0] + boxes[:, 2]) / 2
        cy = (boxes[:, 1] + boxes[:, 3]) / 2
        cj = torch.floor((cx - offset) / stride + 0.5).clamp(0, w - 1)
        ci = torch.floor((cy - offset) / stride + 0.5).clamp(0, h - 1)
        size = torch.ceil((boxes[:, 2:] - boxes[:, :2]) / stride).tolist()
        radius = torch.tensor(
            [int(gaussian_radius(bh, bw, min_overlap)) for bw, bh in size],
            device=device,
            dtype=torch.float32,
        )[:, None, None]
        sigma = (2 * radius + 1) / 6
        di, dj = rows - ci[:, None, None], cols - cj[:, None, None]
        g = torch.exp(-(di**2 + dj**2) / (2 * sigma**2))
        inside = (di.abs() <= radius) & (dj.abs() <= radius) & (g >= eps)
        heat[b, 0] = torch.where(inside, g, torch.zeros_like(g)).amax(0)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        for k in torch.argsort(area, descending=True, stable=True).tolist():
            i, j = int(ci[k]), int(cj[k])
            heat[b, 0, i, j] = 1.0
            mask[b, i, j] = True
            tboxes[b, i, j] = boxes[k]
    sides = boxes_to_sides(tboxes, stride, offset) * mask[:, None]
    return CenterNetTargets(heat, mask, tboxes, sides)


# --------------------------------------------------------------------------- losses
def penalty_reduced_focal_loss(
    logits: Tensor, target_heatmap: Tensor, alpha: float = 2.0, beta: float = 4.0
) -> Tensor:
    """CornerNet's penalty-reduced pixel-wise focal loss (Law & Deng 2018, arXiv:1808.01244, eq. 1).

    With ``p = sigmoid(logit)`` and target ``y``::

        L = -1/N sum { (1 - p)^alpha log p                   if y = 1
                     { (1 - y)^beta p^alpha log(1 - p)       otherwise

    ``N`` is the number of cells with ``y = 1`` (the objects) over the whole
    batch, taken as 1 when there is none (an empty field: only the negative
    term, finite), as the reference CenterNet ``_neg_loss``. ``log p`` and
    ``log(1 - p)`` are computed as log-sigmoids, stable for any logit (the
    reference clamps ``p`` to ``[1e-4, 1 - 1e-4]`` instead). Our own:
    kornia's binary focal loss has no penalty reduction.

    Parameters
    ----------
    logits : torch.Tensor, shape (B, 1, h, w), float
        Heatmap logits.
    target_heatmap : torch.Tensor, shape (B, 1, h, w), float
        Targets in [0, 1], exactly 1 at object centres
        (:attr:`CenterNetTargets.heatmap`).
    alpha, beta : float
        Focusing exponent and penalty-reduction exponent (CornerNet: 2 and 4).

    Returns
    -------
    torch.Tensor, shape (), float
        The loss.

    Raises
    ------
    ValueError
        If the shapes differ.

    Examples
    --------
    >>> loss = penalty_reduced_focal_loss(torch.zeros(1, 1, 1, 2), torch.tensor([[[[1.0, 0.5]]]]))
    >>> round(loss.item(), 5)  # log(2) (0.5^2 + 0.5^4 0.5^2)
    0.18412
    """
    if logits.shape != target_heatmap.shape:
        raise ValueError(
            f"logits and target_heatmap must have equal shapes, got {tuple(logits.shape)} "
            f"and {tuple(target_heatmap.shape)}"
        )
    target = target_heatmap.to(logits.dtype)
    pos = target == 1
    p = torch.sigmoid(logits)
    pos_term = (1 - p).pow(alpha) * F.logsigmoid(logits)
    neg_term = (1 - target).pow(beta) * p.pow(alpha) * F.logsigmoid(-logits)
    total = torch.where(pos, pos_term, neg_term).sum()
    return -total / pos.sum().clamp(min=1)


def giou_loss(pred_boxes: Tensor, target_boxes: Tensor) -> Tensor:
    """Mean of ``1 - GIoU`` over paired boxes (Rezatofighi et al. 2019, arXiv:1902.09630).

    Parameters
    ----------
    pred_boxes, target_boxes : torch.Tensor, shape (P, 4), float
        Predicted and true boxes ``(x_min, y_min, x_max, y_max)``, pixels, at
        the P positive cells. Not validated (no host sync in the training step).

    Returns
    -------
    torch.Tensor, shape (), float
        In [0, 2); 0 (with a gradient path) when ``P = 0``.

    Raises
    ------
    ValueError
        If the shapes differ or are not ``(P, 4)``.
    """
    if pred_boxes.shape != target_boxes.shape or pred_boxes.shape[-1:] != (4,):
        raise ValueError(
            f"boxes must have equal shapes (P, 4), got {tuple(pred_boxes.shape)} "
            f"and {tuple(target_boxes.shape)}"
        )
    if pred_boxes.shape[0] == 0:
        return pred_boxes.sum() * 0.0
    return (1.0 - _giou(pred_boxes, target_boxes.to(pred_boxes.dtype))).mean()


def _relative_boxes(sides: Tensor) -> Tensor:
    """Boxes ``(-l, -t, r, b)`` about the cell centre, ``(..., 4)`` of sides ``(..., 4)``."""
    return torch.cat([-sides[..., :2], sides[..., 2:]], dim=-1)


class CenterNetLoss(nn.Module):
    """``heatmap_weight * focal + giou_weight * GIoU loss`` of a :class:`CenterNetHead`.

    The focal term is :func:`penalty_reduced_focal_loss` on the heatmap; the
    box term :func:`giou_loss` at the masked cells. GIoU is translation
    invariant, so it is computed on the boxes ``(-l, -t, r, b)`` about each cell
    centre, which needs no geometry. The design is TTFNet's (Liu et al. 2019,
    arXiv:1909.00700: CenterNet heatmap, GIoU on (l, t, r, b)), regressed at
    the centre cell only, as CenterNet.

    Parameters
    ----------
    heatmap_weight, giou_weight : float
        Weights, >= 0.
    alpha, beta : float
        Exponents of the focal loss.

    Raises
    ------
    ValueError
        On a negative weight.
    """

    def __init__(
        self,
        heatmap_weight: float = 1.0,
        giou_weight: float = 1.0,
        alpha: float = 2.0,
        beta: float = 4.0,
    ):
        super().__init__()
        if heatmap_weight < 0 or giou_weight < 0:
            raise ValueError(
                f"weights must be >= 0, got heatmap_weight={heatmap_weight}, "
                f"giou_weight={giou_weight}"
            )
        self.heatmap_weight = float(heatmap_weight)
        self.giou_weight = float(giou_weight)
        self.alpha = float(alpha)
        self.beta = float(beta)

    def terms(self, heat_logits: Tensor, sides: Tensor, targets: CenterNetTargets) -> dict:
        """The loss and its terms.

        Parameters
        ----------
        heat_logits : torch.Tensor, shape (B, 1, h, w), float
        sides : torch.Tensor, shape (B, 4, h, w), float
            Predicted sides, pixels (the outputs of :class:`CenterNetHead`).
        targets : CenterNetTargets
            Of the same map.

        Returns
        -------
        dict of str to torch.Tensor, shape ()
            ``loss`` (weighted sum), ``heatmap`` (focal), ``giou``.

        Raises
        ------
        ValueError
            On shapes that do not match the targets.
        """
        if sides.shape != targets.sides.shape:
            raise ValueError(
                f"sides {tuple(sides.shape)} and target sides {tuple(targets.sides.shape)} differ"
            )
        focal = penalty_reduced_focal_loss(heat_logits, targets.heatmap, self.alpha, self.beta)
        mask = targets.mask
        pred = _relative_boxes(sides.permute(0, 2, 3, 1)[mask])
        true = _relative_boxes(targets.sides.permute(0, 2, 3, 1)[mask])
        box = giou_loss(pred, true)
        loss = self.heatmap_weight * focal + self.giou_weight * box
        return {"loss": loss, "heatmap": focal, "giou": box}

    def forward(self, heat_logits: Tensor, sides: Tensor, targets: CenterNetTargets) -> Tensor:
        """The scalar loss (see :meth:`terms`)."""
        return self.terms(heat_logits, sides, targets)["loss"]


# --------------------------------------------------------------------------- head
class CenterNetHead(nn.Module):
    """Heatmap and box-side head on a feature map (CenterNet, Zhou et al. 2019, arXiv:1904.07850).

    Two branches, each ``Conv 3x3 (padding 1) -> ReLU -> Conv 1x1``, as the
    CenterNet heads: one to one heatmap logit per cell (final bias
    ``heatmap_bias = -2.19``, i.e. a prior ``sigmoid(-2.19) ~ 0.1``, as
    CenterNet), one to four sides ``stride * softplus(.)``: distances (left,
    top, right, bottom) from the cell centre to the box edges, image pixels,
    positive (the raw outputs are in cells, O(1) for boxes a few cells wide).

    Parameters
    ----------
    in_channels : int
        C, channels of the feature map (``ConvEncoder.out_channels``).
    hidden : int
        Channels of the 3x3 convolution of each branch.
    stride, offset : float
        Cell geometry (module docstring), pixels: cell ``(i, j)`` is centred on
        image pixel ``(offset + stride j, offset + stride i)``; see
        :func:`map_geometry` and :func:`conv_encoder_geometry`.
    heatmap_bias : float
        Initial bias of the heatmap logits.

    Attributes
    ----------
    heatmap, sides : torch.nn.Sequential
        The branches (raw outputs).
    stride, offset : float

    Shape
    -----
    - input: ``(B, in_channels, h, w)``, float32
    - output: ``(heat_logits (B, 1, h, w), sides (B, 4, h, w))``, float32,
      sides in pixels

    Raises
    ------
    ValueError
        On a non-positive width or stride; in :meth:`forward`, on a feature
        map of the wrong shape.

    Examples
    --------
    >>> head = CenterNetHead(8, hidden=16, stride=4.0, offset=4.5)
    >>> heat, sides = head(torch.zeros(2, 8, 6, 6))
    >>> heat.shape, sides.shape, bool((sides > 0).all())
    (torch.Size([2, 1, 6, 6]), torch.Size([2, 4, 6, 6]), True)
    """

    def __init__(
        self,
        in_channels: int,
        hidden: int = 64,
        stride: float = 1.0,
        offset: float = 0.0,
        heatmap_bias: float = -2.19,
    ):
        super().__init__()
        if min(in_channels, hidden) < 1:
            raise ValueError(f"widths must be >= 1, got in_channels={in_channels}, hidden={hidden}")
        if not stride > 0:
            raise ValueError(f"stride must be > 0, got {stride}")
        self.in_channels = int(in_channels)
        self.stride = float(stride)
        self.offset = float(offset)

        def branch(out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(self.in_channels, int(hidden), 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(int(hidden), out, 1),
            )

        self.heatmap = branch(1)
        self.sides = branch(4)
        with torch.no_grad():
            self.heatmap[-1].bias.fill_(heatmap_bias)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Heatmap logits ``(B, 1, h, w)`` and sides ``(B, 4, h, w)`` (pixels) of a map."""
        if features.ndim != 4 or features.shape[1] != self.in_channels:
            raise ValueError(
                f"features must have shape (B, {self.in_channels}, h, w), got "
                f"{tuple(features.shape)}"
            )
        return self.heatmap(features), self.stride * F.softplus(self.sides(features))

    def targets(
        self, boxes_per_image: Sequence, map_size: int | Sequence[int], min_overlap: float = 0.7
    ) -> CenterNetTargets:
        """:func:`centernet_targets` with this head's geometry."""
        return centernet_targets(boxes_per_image, map_size, self.stride, self.offset, min_overlap)

    def decode(
        self,
        heat_logits: Tensor,
        sides: Tensor,
        score_threshold: float,
        iou_threshold: float = 0.45,
        max_detections: int = 100,
    ) -> list[tuple[Tensor, Tensor]]:
        """:func:`decode_detections` with this head's geometry."""
        return decode_detections(
            heat_logits,
            sides,
            self.stride,
            self.offset,
            score_threshold,
            iou_threshold=iou_threshold,
            max_detections=max_detections,
        )


# --------------------------------------------------------------------------- decoding
@torch.no_grad()
def decode_detections(
    heat_logits: Tensor,
    sides: Tensor,
    stride: float,
    offset: float,
    score_threshold: float,
    iou_threshold: float = 0.45,
    max_detections: int = 100,
) -> list[tuple[Tensor, Tensor]]:
    """Boxes and scores per image from a head's outputs.

    Scores are ``sigmoid(heat_logits)``; candidates are the cells equal to the
    maximum of their 3x3 neighbourhood (CenterNet's max-pool "NMS") with score
    ``>= score_threshold``; the ``max_detections`` best become boxes
    (:func:`sides_to_boxes`), then :func:`nms` at ``iou_threshold`` (the spec's
    0.45) removes overlapping duplicates.

    Parameters
    ----------
    heat_logits : torch.Tensor, shape (B, 1, h, w), float
    sides : torch.Tensor, shape (B, 4, h, w), float
        Distances (l, t, r, b) from the cell centres, pixels.
    stride, offset : float
        Cell geometry (module docstring), pixels.
    score_threshold : float
        In [0, 1].
    iou_threshold : float
        In [0, 1].
    max_detections : int
        At most this many boxes per image, >= 1.

    Returns
    -------
    list of (torch.Tensor, torch.Tensor)
        B pairs ``(boxes (K, 4), scores (K,))``, image pixels, by descending
        score, detached; ``K = 0`` when nothing passes.

    Raises
    ------
    ValueError
        On shapes other than ``(B, 1, h, w)`` and ``(B, 4, h, w)`` or a
        parameter out of range.
    """
    if heat_logits.ndim != 4 or heat_logits.shape[1] != 1:
        raise ValueError(
            f"heat_logits must have shape (B, 1, h, w), got {tuple(heat_logits.shape)}"
        )
    if sides.shape != (heat_logits.shape[0], 4, *heat_logits.shape[2:]):
        raise ValueError(
            f"sides must have shape (B, 4, h, w) matching heat_logits {tuple(heat_logits.shape)}, "
            f"got {tuple(sides.shape)}"
        )
    if not 0.0 <= score_threshold <= 1.0:
        raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold}")
    if max_detections < 1:
        raise ValueError(f"max_detections must be >= 1, got {max_detections}")
    scores = torch.sigmoid(heat_logits)
    peaks = scores == F.max_pool2d(scores, 3, stride=1, padding=1)
    keep = (peaks & (scores >= score_threshold)).flatten(1)
    flat_scores = scores.flatten(1)
    boxes = sides_to_boxes(sides, stride, offset).flatten(1, 2)
    out = []
    for b in range(heat_logits.shape[0]):
        idx = keep[b].nonzero().squeeze(1)
        s = flat_scores[b, idx]
        if s.numel() > max_detections:
            s, top = s.topk(max_detections)
            idx = idx[top]
        bx = boxes[b, idx]
        kept = nms(bx, s, iou_threshold)
        out.append((bx[kept], s[kept]))
    return out
