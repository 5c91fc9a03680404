"""Convolutional encoder of images, and the cluster_age CNN built from it.

:class:`ConvEncoder` maps images to a feature vector: blocks of a 3x3 'valid'
convolution (no padding, as Keras' default), ReLU and a 2x2 max-pool, then the
flattened feature map. With ``return_feature_map=True`` it returns the map
itself, ``(B, C, h, w)``, for heads that need positions (a box detector, see
:mod:`astrobatch.nn.heads`).

:class:`AgeCNN` is the architecture of the "Star Cluster Age Experiments" study
(PHANGS-HST cutouts; spec ``studies/cluster_age.md``): a :class:`ConvEncoder`
and an :class:`~astrobatch.nn.heads.MLPHead`, i.e. Conv(128, 3x3) ReLU ->
MaxPool(2) -> Conv(256) -> MaxPool -> Conv(512) -> MaxPool -> Flatten -> Dense 512
-> 256 -> 128 -> 1 (linear). Widths are parameters so that the embedded default
trains on a CPU; the upstream widths are ``conv_channels=(128, 256, 512)``,
``dense_units=(512, 256, 128)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from astrobatch.nn.heads import EncoderHead, MLPHead

__all__ = ["AgeCNN", "ConvEncoder"]


class ConvEncoder(nn.Module):
    """Images to features: ``(Conv 3x3 'valid' -> ReLU -> MaxPool 2x2)`` blocks, flattened.

    Each block maps a side ``s`` to ``(s - 2) // 2``.

    Parameters
    ----------
    in_channels : int
        C, channels of the images (e.g. 5 filters, or 1 for white light).
    image_size : int
        S, side of the square images, pixels (fixes the flattened width).
    channels : sequence of int
        Output channels of each block (at least one).
    return_feature_map : bool
        If True, :meth:`forward` returns the last feature map ``(B, C', s, s)``
        instead of the flattened vector (for a head that needs positions, such
        as a box detector); :meth:`feature_map` gives it in either mode.

    Attributes
    ----------
    features : torch.nn.Sequential
        The blocks.
    out_channels : int
        C', channels of the last map.
    map_size : int
        s, side of the last map, pixels of the map.
    out_features : int
        ``C' s s``, width of the flattened vector.

    Shape
    -----
    - input: ``(B, in_channels, S, S)``, float32 (normalised images)
    - output: ``(B, out_features)``, float32; with ``return_feature_map``
      ``(B, out_channels, map_size, map_size)``

    Raises
    ------
    ValueError
        If the image is too small for the number of blocks, ``channels`` is
        empty or a size is not positive.

    Examples
    --------
    >>> enc = ConvEncoder(5, 32, channels=(4, 8))
    >>> enc.out_channels, enc.map_size, enc.out_features
    (8, 6, 288)
    >>> enc(torch.zeros(2, 5, 32, 32)).shape
    torch.Size([2, 288])
    >>> enc.feature_map(torch.zeros(2, 5, 32, 32)).shape
    torch.Size([2, 8, 6, 6])
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        channels: Sequence[int] = (128, 256, 512),
        return_feature_map: bool = False,
    ):
        super().__init__()
        channels = [int(c) for c in channels]
        if not channels or min([in_channels, image_size, *channels]) < 1:
            raise ValueError(
                f"sizes must be >= 1 and channels non-empty, got in_channels={in_channels}, "
                f"image_size={image_size}, channels={channels}"
            )
        layers: list[nn.Module] = []
        c, s = int(in_channels), int(image_size)
        for out in channels:
            if s - 2 < 2:
                raise ValueError(
                    f"image_size {image_size} too small for {len(channels)} conv blocks"
                )
            layers += [nn.Conv2d(c, out, 3), nn.ReLU(), nn.MaxPool2d(2)]
            c, s = out, (s - 2) // 2
        self.features = nn.Sequential(*layers)
        self.in_channels = int(in_channels)
        self.image_size = int(image_size)
        self.out_channels = c
        self.map_size = s
        self.out_features = c * s * s
        self.return_feature_map = bool(return_feature_map)

    def _check(self, x: torch.Tensor, full: bool) -> None:
        C, S = self.in_channels, self.image_size
        if x.ndim != 4 or x.shape[1] != C or (full and tuple(x.shape[2:]) != (S, S)):
            want = f"(B, {C}, {S}, {S})" if full else f"(B, {C}, H, W)"
            raise ValueError(f"images must have shape {want}, got {tuple(x.shape)}")

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map.

        Parameters
        ----------
        x : torch.Tensor, shape (B, in_channels, H, W), float32
            Images; any side that survives the blocks (``S`` gives ``map_size``).

        Returns
        -------
        torch.Tensor, shape (B, out_channels, h, w), float32

        Raises
        ------
        ValueError
            On a wrong number of dimensions or channels.
        """
        self._check(x, full=False)
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened features ``(B, out_features)`` (the map with ``return_feature_map``).

        Raises
        ------
        ValueError
            On a shape other than ``(B, in_channels, S, S)`` (vector mode) or
            ``(B, in_channels, H, W)`` (map mode).
        """
        if self.return_feature_map:
            return self.feature_map(x)
        self._check(x, full=True)
        return self.features(x).flatten(1)


class AgeCNN(EncoderHead):
    """Regress one scalar (scaled log age) from a cutout: ConvEncoder + MLPHead.

    Parameters
    ----------
    in_channels : int
        1 (``1im``, white light) or 5 (``5im``, one channel per filter).
    image_size : int
        Cutout side S, pixels (fixes the flattened width).
    conv_channels : sequence of int
        Output channels of each 3x3 convolution block (each followed by ReLU and 2x2 max-pool).
    dense_units : sequence of int
        Hidden dense layers (ReLU) before the linear output.
    dropout : float
        Dropout before each hidden dense layer (0 = none, as upstream).

    Attributes
    ----------
    encoder : ConvEncoder
        Saved under ``encoder.*`` (the convolution blocks: ``encoder.features.*``).
    head : astrobatch.nn.heads.MLPHead
        Saved under ``head.*`` (``head.layers.*``).

    Shape
    -----
    - Input: (B, in_channels, S, S), float32, min-max normalised.
    - Output: (B, 1), float32.

    Raises
    ------
    ValueError
        If the image is too small for the number of blocks, or a size or the
        dropout is out of range.

    Examples
    --------
    >>> m = AgeCNN(5, 32, conv_channels=(4, 8), dense_units=(16,))
    >>> m(torch.zeros(2, 5, 32, 32)).shape
    torch.Size([2, 1])
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        conv_channels: Sequence[int] = (128, 256, 512),
        dense_units: Sequence[int] = (512, 256, 128),
        dropout: float = 0.0,
    ):
        # encoder first, head second: the same creation order (and seeded weights) as the
        # original single-Sequential CNN
        encoder = ConvEncoder(in_channels, image_size, conv_channels)
        head = MLPHead(encoder.out_features, 1, dense_units, activation="relu", dropout=dropout)
        super().__init__(encoder, head)
