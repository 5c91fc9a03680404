"""Masked autoencoder of tabular stellar data (the encoder of stellar_xp).

The Masked Stellar Autoencoder (MSA; McKay & Fabbro 2025) encodes one row of
scaled features (Gaia XP coefficients, photometry, parallax, ...) into a latent
vector and decodes it back to the first ``n_recon`` features::

    x_filled (B, F) --PeriodicEmbeddings--> (B, F, d) --flatten--> (B, F d)
        [--concat mask indicators (B, F)-->  (B, F d + F)]
        --Linear--> residual blocks (widths) --Linear--> z (B, latent_dim)
    z --Linear--> residual blocks (reversed widths) --Linear--> recon (B, n_recon)

Inputs must be finite: masked and missing values are replaced by a fill value
beforehand (:func:`astrobatch.tasks.masked.fill_masked`).

Mask indicators
---------------
With ``mask_indicators=True`` the model takes a second ``(B, F)`` tensor, 1 where
the value was hidden (masked or missing) and 0 where it is real, so the raw
input is ``(B, 2F)`` (:attr:`MaskedAutoencoder.in_features` ``= 2F``). Upstream
appends the indicators to the features and embeds all ``2F`` columns
periodically. Here they **bypass the periodic embedding** and are concatenated
to the flattened embeddings: with the default frequency scale (sigma = 0.01) a
periodic embedding of a {0, 1} value barely moves at initialisation
(cos(2 pi 0.01) = 0.998), while a linear path gives the indicator full weight
from the first step. The first ``Linear`` then sees ``F d + F`` inputs instead
of ``F d``.

Classes
-------
:class:`ResidualBlock`
    Linear, LayerNorm, ELU, Dropout, Linear, LayerNorm, skip (+ projection), ELU.
:class:`MaskedAutoencoder`
    The encoder/decoder above, built from plain arguments (a study passes its
    params' fields as keyword arguments).

The quantile head that reads the latent is
:class:`~astrobatch.nn.heads.QuantileHead`.

References
----------
- McKay, A. & Fabbro, S. 2025, the Masked Stellar Autoencoder (MSA),
  https://github.com/aydanmckay/masked-stellar-autoencoder
- Gorishniy, Y., Rubachev, I. & Babenko, A. 2022, "On Embeddings for Numerical
  Features in Tabular Deep Learning", arXiv:2203.05556 (periodic embeddings).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
import torch.nn.functional as F
from rtdl_num_embeddings import PeriodicEmbeddings
from torch import Tensor, nn

__all__ = ["MaskedAutoencoder", "ResidualBlock"]


class ResidualBlock(nn.Module):
    """A residual MLP block (as in the MSA encoder).

    ``out = ELU(LN(Linear(Dropout(ELU(LN(Linear(x)))))) + skip(x))`` where
    ``skip`` is the identity when the widths agree and a bias-free ``Linear``
    projection otherwise. The two main ``Linear`` layers have no bias: each is
    followed by a LayerNorm, whose own shift makes a bias redundant.

    Parameters
    ----------
    in_features : int
        Input width.
    out_features : int
        Output width.
    dropout : float
        Dropout probability between the two linear layers.

    Shape
    -----
    - input: ``(B, in_features)``, float32
    - output: ``(B, out_features)``, float32

    Examples
    --------
    >>> block = ResidualBlock(8, 4, dropout=0.0)
    >>> block(torch.randn(3, 8)).shape
    torch.Size([3, 4])
    """

    def __init__(self, in_features: int, out_features: int, dropout: float = 0.1):
        super().__init__()
        self.linear1 = nn.Linear(in_features, out_features, bias=False)
        self.norm1 = nn.LayerNorm(out_features)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(out_features, out_features, bias=False)
        self.norm2 = nn.LayerNorm(out_features)
        self.skip: nn.Module = (
            nn.Identity()
            if in_features == out_features
            else nn.Linear(in_features, out_features, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block, ``(B, in_features) -> (B, out_features)``."""
        h = self.dropout(F.elu(self.norm1(self.linear1(x))))
        h = self.norm2(self.linear2(h))
        return F.elu(h + self.skip(x))


def _residual_stack(widths: Sequence[int], dropout: float) -> list[nn.Module]:
    """Blocks ``w0 -> w0``, then ``w[i-1] -> w[i]`` (projection where widths change)."""
    blocks: list[nn.Module] = [ResidualBlock(widths[0], widths[0], dropout)]
    for prev, cur in pairwise(widths):
        blocks.append(ResidualBlock(prev, cur, dropout))
    return blocks


class MaskedAutoencoder(nn.Module):
    """Encoder/decoder of scaled stellar features (McKay & Fabbro 2025).

    Parameters
    ----------
    n_features : int
        F, the number of input features (columns of ``x``).
    n_recon : int
        R, the number of reconstructed features: the decoder outputs features
        ``0 .. R-1`` (a prefix of the inputs), ``1 <= R <= F``.
    embedding_dim : int
        d, size of the periodic embedding of each feature.
    n_frequencies : int
        k, frequencies per feature of the periodic embedding.
    frequency_init_scale : float
        sigma, standard deviation of the initial frequencies (Gorishniy et al.
        2022, arXiv:2203.05556, Sec. 3.3); the frequencies are in cycles per
        unit of the scaled feature.
    widths : sequence of int
        Widths of the encoder's residual blocks (the decoder reverses them).
        Upstream: ``2048, 2048, 1024, 1024, 512, 512, 256, 256``.
    latent_dim : int
        Size of the latent vector.
    dropout : float
        Dropout probability inside every residual block.
    mask_indicators : bool
        If True, :meth:`encode` also takes a binary indicator per feature
        (1 = hidden), concatenated after the flattened embeddings (see the
        module docstring); :attr:`in_features` is then ``2 F``.

    Attributes
    ----------
    in_features : int
        Width of the raw input: ``F``, or ``2 F`` with mask indicators.
    embedding : rtdl_num_embeddings.PeriodicEmbeddings
        Per-feature periodic embeddings (not "lite": one output layer per feature).
    encoder, decoder : torch.nn.Sequential
        Latent map and reconstruction map.

    Shape
    -----
    - x_filled: ``(B, F)``, float32, scaled features, finite (fill masked/missing)
    - indicators: ``(B, F)``, float32 or bool, 1 = hidden (only with indicators)
    - latent: ``(B, latent_dim)``, float32
    - reconstruction: ``(B, R)``, float32, scaled features ``0 .. R-1``

    Raises
    ------
    ValueError
        On non-positive sizes, ``n_recon > n_features`` or empty ``widths``.

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> ae = MaskedAutoencoder(n_features=5, n_recon=3, widths=(16, 8), latent_dim=4)
    >>> x = torch.randn(2, 5)
    >>> ae.encode(x).shape, ae.decode(ae.encode(x)).shape
    (torch.Size([2, 4]), torch.Size([2, 3]))
    >>> MaskedAutoencoder(5, 3, widths=(16,), latent_dim=4, mask_indicators=True).in_features
    10
    """

    def __init__(
        self,
        n_features: int,
        n_recon: int,
        embedding_dim: int = 16,
        n_frequencies: int = 16,
        frequency_init_scale: float = 0.01,
        widths: Sequence[int] = (512, 256),
        latent_dim: int = 256,
        dropout: float = 0.1,
        mask_indicators: bool = False,
    ):
        super().__init__()
        widths = [int(w) for w in widths]
        if not widths or min(widths) < 1:
            raise ValueError(f"widths must be a non-empty list of positive ints, got {widths}")
        if min(n_features, n_recon, embedding_dim, n_frequencies, latent_dim) < 1:
            raise ValueError(
                "sizes must be >= 1, got "
                f"n_features={n_features}, n_recon={n_recon}, embedding_dim={embedding_dim}, "
                f"n_frequencies={n_frequencies}, latent_dim={latent_dim}"
            )
        if n_recon > n_features:
            raise ValueError(
                f"n_recon ({n_recon}) must be <= n_features ({n_features}): the reconstructed "
                "columns are a prefix of the features"
            )
        self.n_features = int(n_features)
        self.n_recon = int(n_recon)
        self.latent_dim = int(latent_dim)
        self.mask_indicators = bool(mask_indicators)
        self.in_features = self.n_features * (2 if self.mask_indicators else 1)

        self.embedding = PeriodicEmbeddings(
            self.n_features,
            embedding_dim,
            n_frequencies=n_frequencies,
            frequency_init_scale=frequency_init_scale,
            lite=False,
        )
        flat = self.n_features * embedding_dim + (self.n_features if self.mask_indicators else 0)
        self.encoder = nn.Sequential(
            nn.Linear(flat, widths[0]),
            *_residual_stack(widths, dropout),
            nn.Linear(widths[-1], self.latent_dim),
        )
        rev = widths[::-1]
        self.decoder = nn.Sequential(
            nn.Linear(self.latent_dim, rev[0]),
            *_residual_stack(rev, dropout),
            nn.Linear(rev[-1], self.n_recon),
        )

    def encode(self, x_filled: Tensor, indicators: Tensor | None = None) -> Tensor:
        """Latent vectors of filled feature rows.

        Parameters
        ----------
        x_filled : torch.Tensor, shape (B, F), float32
            Scaled features with masked and missing values already replaced by
            the fill value; must be finite.
        indicators : torch.Tensor, shape (B, F), float32 or bool, optional
            1 (True) where the value is hidden (masked or missing). Required
            with ``mask_indicators=True``, ignored otherwise.

        Returns
        -------
        torch.Tensor, shape (B, latent_dim), float32

        Raises
        ------
        ValueError
            On a wrong shape, or missing indicators when the model uses them.
        """
        if x_filled.ndim != 2 or x_filled.shape[1] != self.n_features:
            raise ValueError(
                f"x_filled must have shape (B, {self.n_features}), got {tuple(x_filled.shape)}"
            )
        h = self.embedding(x_filled).flatten(1)
        if self.mask_indicators:
            if indicators is None:
                raise ValueError("this model uses mask indicators: pass indicators (B, F)")
            if indicators.shape != x_filled.shape:
                raise ValueError(
                    f"indicators must have shape {tuple(x_filled.shape)}, "
                    f"got {tuple(indicators.shape)}"
                )
            h = torch.cat([h, indicators.to(h.dtype)], dim=1)
        return self.encoder(h)

    def decode(self, z: Tensor) -> Tensor:
        """Reconstruct the first ``n_recon`` scaled features from latents.

        Parameters
        ----------
        z : torch.Tensor, shape (B, latent_dim), float32

        Returns
        -------
        torch.Tensor, shape (B, n_recon), float32
            Scaled features ``0 .. n_recon-1``.
        """
        return self.decoder(z)

    def forward(self, x_filled: Tensor, indicators: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Reconstruction and latent, ``((B, n_recon), (B, latent_dim))``; see :meth:`encode`."""
        z = self.encode(x_filled, indicators)
        return self.decode(z), z
