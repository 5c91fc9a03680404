"""The cluster_age CNN: three convolution + max-pool blocks and a dense regressor head.

Architecture of the "Star Cluster Age Experiments" study (PHANGS-HST cutouts; spec
``studies/cluster_age.md``): Conv(128, 3x3) ReLU -> MaxPool(2) -> Conv(256) -> MaxPool ->
Conv(512) -> MaxPool -> Flatten -> Dense 512 -> 256 -> 128 -> 1 (linear). Convolutions are
'valid' (no padding), as Keras' default upstream. Widths are parameters so that the embedded
default trains on a CPU; the upstream widths are ``conv_channels=(128, 256, 512)``,
``dense_units=(512, 256, 128)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class AgeCNN(nn.Module):
    """Regress one scalar (scaled log age) from a cutout.

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

    Shape
    -----
    - Input: (B, in_channels, S, S), float32, min-max normalised.
    - Output: (B, 1), float32.

    Raises
    ------
    ValueError
        If the image is too small for the number of blocks.

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
        super().__init__()
        layers: list[nn.Module] = []
        c, s = in_channels, image_size
        for out in conv_channels:
            if s - 2 < 2:
                raise ValueError(
                    f"image_size {image_size} too small for {len(conv_channels)} conv blocks"
                )
            layers += [nn.Conv2d(c, out, 3), nn.ReLU(), nn.MaxPool2d(2)]
            c, s = out, (s - 2) // 2
        self.features = nn.Sequential(*layers)
        dense: list[nn.Module] = [nn.Flatten()]
        width = c * s * s
        for units in dense_units:
            if dropout > 0:
                dense.append(nn.Dropout(dropout))
            dense += [nn.Linear(width, units), nn.ReLU()]
            width = units
        dense.append(nn.Linear(width, 1))
        self.head = nn.Sequential(*dense)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predictions, shape (B, 1)."""
        return self.head(self.features(x))
