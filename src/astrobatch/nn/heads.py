"""Heads: small modules that map an encoder's feature vector to a study's outputs.

Every model of :mod:`astrobatch.nn` is an encoder (features of one object: a
cutout, a set of stars, a row of tabular features) followed by a head (the
outputs). The encoders live with their data type (:mod:`astrobatch.nn.cnn`,
:mod:`astrobatch.nn.sets`, :mod:`astrobatch.nn.autoencoder`); the heads live
here, so that any head fits any encoder of the right width, and
:class:`EncoderHead` composes the two::

    x --encoder--> z (B, D) --head--> outputs

Heads
-----
:class:`MLPHead`
    Linear layers with an activation in between (optional dropout): regression
    and classification logits.
:class:`QuantileHead`
    An MLP to the 16/50/84 % quantiles of every label, ordered by construction
    (``q16 <= q50 <= q84`` for any weights).
:class:`VoteHead`
    The Dirichlet head: an MLP with batch normalisation to one output per
    answer of a decision tree of questions (Galaxy Zoo style votes): vote
    fractions in (0, 1) or Dirichlet concentrations in (1, 100). Its losses
    (vote-weighted MSE, the Dirichlet-multinomial likelihood of raw vote
    counts) are objectives of :mod:`astrobatch.tasks.votes`, not of the head.

Heads to come, and where they go
--------------------------------
One head of the study plan belongs in this module when its study lands: a
*box head* (cluster_finder: single-shot detection) takes the encoder's feature
*map* (:class:`~astrobatch.nn.cnn.ConvEncoder` with ``return_feature_map=True``,
shape ``(B, C, h, w)``) rather than a vector and predicts, per map cell and
anchor, box offsets and a class score. It takes plain arguments (widths,
counts), like the heads here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ACTIVATIONS", "EncoderHead", "MLPHead", "QuantileHead", "VoteHead"]

#: Activations of :class:`MLPHead` by name.
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU}


class MLPHead(nn.Module):
    """Multi-layer perceptron head: ``[Dropout] Linear act`` per hidden layer, then ``Linear``.

    Layers are created in order (hidden layers first, the output layer last), so
    the same seed gives the same weights as a hand-written ``nn.Sequential`` of
    the same layers.

    Parameters
    ----------
    in_features : int
        Width D of the input (the encoder's feature vector).
    out_features : int
        Outputs per object (1 for a scalar regression).
    hidden : sequence of int
        Widths of the hidden layers; empty: a single linear map.
    activation : {"relu", "elu", "gelu"}
        Activation after every hidden layer (never after the output layer).
    dropout : float
        Dropout probability before every hidden layer, in [0, 1) (0 = no
        dropout module at all). The output layer has no dropout before it.

    Attributes
    ----------
    layers : torch.nn.Sequential
        The layers above.

    Shape
    -----
    - input: ``(B, in_features)``, float32
    - output: ``(B, out_features)``, float32

    Raises
    ------
    ValueError
        On a non-positive width, an unknown activation or a dropout outside [0, 1).

    Examples
    --------
    >>> head = MLPHead(8, 1, hidden=(4,), dropout=0.2)
    >>> head.layers
    Sequential(
      (0): Dropout(p=0.2, inplace=False)
      (1): Linear(in_features=8, out_features=4, bias=True)
      (2): ReLU()
      (3): Linear(in_features=4, out_features=1, bias=True)
    )
    >>> head(torch.zeros(3, 8)).shape
    torch.Size([3, 1])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (),
        activation: str = "relu",
        dropout: float = 0.0,
    ):
        super().__init__()
        hidden = [int(h) for h in hidden]
        if min([in_features, out_features, *hidden]) < 1:
            raise ValueError(
                f"widths must be >= 1, got in_features={in_features}, "
                f"out_features={out_features}, hidden={hidden}"
            )
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {list(ACTIVATIONS)}, got {activation!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        layers: list[nn.Module] = []
        width = self.in_features
        for units in hidden:
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            layers += [nn.Linear(width, units), ACTIVATIONS[activation]()]
            width = units
        layers.append(nn.Linear(width, self.out_features))
        self.layers = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        """Outputs ``(B, out_features)`` of features ``z`` ``(B, in_features)``."""
        return self.layers(z)


class QuantileHead(nn.Module):
    """MLP from the latent to the 16/50/84 % quantiles of every label, never crossing.

    The last layer gives three numbers ``(a, m, b)`` per label; the quantiles are
    ``(m - softplus(a), m, m + softplus(b))``. Since ``softplus >= 0`` and float
    subtraction/addition of a non-negative number is monotone, ``q16 <= q50 <=
    q84`` holds for any weights (McKay & Fabbro 2025, the Masked Stellar
    Autoencoder). Which quantile levels the three outputs mean is fixed by the
    loss (:data:`astrobatch.tasks.quantile.QUANTILES`).

    Parameters
    ----------
    latent_dim : int
        Input width (the encoder's feature size).
    n_labels : int
        L, the number of labels.
    hidden : sequence of int
        Widths of the hidden layers (Linear + ELU each); empty: one linear map.

    Attributes
    ----------
    body : torch.nn.Sequential
        The hidden layers.
    out : torch.nn.Linear
        ``(B, width) -> (B, 3 L)``, ``(a, m, b)`` per label.

    Shape
    -----
    - z: ``(B, latent_dim)``, float32
    - output: ``(B, L, 3)``, float32, quantiles 0.16, 0.5, 0.84 in the units of
      the (scaled) labels

    Raises
    ------
    ValueError
        On a non-positive size.

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> q = QuantileHead(4, n_labels=2, hidden=(8,))(torch.randn(5, 4))
    >>> q.shape
    torch.Size([5, 2, 3])
    >>> bool((q[..., 0] <= q[..., 1]).all() and (q[..., 1] <= q[..., 2]).all())
    True
    """

    def __init__(self, latent_dim: int, n_labels: int, hidden: Sequence[int] = (256, 128)):
        super().__init__()
        if min(latent_dim, n_labels) < 1 or any(int(h) < 1 for h in hidden):
            raise ValueError(
                f"sizes must be >= 1, got latent_dim={latent_dim}, n_labels={n_labels}, "
                f"hidden={list(hidden)}"
            )
        self.latent_dim = int(latent_dim)
        self.n_labels = int(n_labels)
        layers: list[nn.Module] = []
        width = int(latent_dim)
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ELU()]
            width = int(h)
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(width, 3 * self.n_labels)

    @property
    def in_features(self) -> int:
        """Input width (``latent_dim``), as :class:`MLPHead` names it."""
        return self.latent_dim

    def forward(self, z: Tensor) -> Tensor:
        """Quantiles ``(B, L, 3)`` = (q16, q50, q84) of the labels."""
        o = self.out(self.body(z)).view(z.shape[0], self.n_labels, 3)
        a, m, b = o.unbind(-1)
        return torch.stack([m - F.softplus(a), m, m + F.softplus(b)], dim=-1)


class EncoderHead(nn.Module):
    """An encoder followed by a head: ``head(encoder(x))``.

    Parameters
    ----------
    encoder : torch.nn.Module
        Maps the inputs to features ``(B, D)`` (e.g.
        :class:`~astrobatch.nn.cnn.ConvEncoder`, images ``(B, C, H, W)``).
    head : torch.nn.Module
        Maps ``(B, D)`` to the outputs (e.g. :class:`MLPHead`).

    Attributes
    ----------
    encoder, head : torch.nn.Module
        Saved under ``encoder.*`` and ``head.*`` in state dicts, in this order.

    Shape
    -----
    - input: whatever ``encoder`` takes
    - output: whatever ``head`` returns

    Raises
    ------
    ValueError
        If both widths are known (``encoder.out_features``, ``head.in_features``)
        and differ.

    Examples
    --------
    >>> model = EncoderHead(nn.Flatten(), MLPHead(12, 2))
    >>> model(torch.zeros(4, 3, 2, 2)).shape
    torch.Size([4, 2])
    """

    def __init__(self, encoder: nn.Module, head: nn.Module):
        super().__init__()
        d_out = getattr(encoder, "out_features", None)
        d_in = getattr(head, "in_features", None)
        if isinstance(d_out, int) and isinstance(d_in, int) and d_out != d_in:
            raise ValueError(f"encoder.out_features ({d_out}) != head.in_features ({d_in})")
        self.encoder = encoder
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        """``head(encoder(x))``."""
        return self.head(self.encoder(x))


#: Outputs of :class:`VoteHead`.
VOTE_OUTPUTS = ("fraction", "concentration")


class VoteHead(nn.Module):
    """MLP to one output per answer: vote fractions or Dirichlet concentrations.

    Per hidden layer ``Linear -> BatchNorm1d -> ReLU -> Dropout``, then
    ``Linear -> n_answers`` and the output map:

    - ``"fraction"``: ``sigmoid(z)``, each answer's vote fraction in (0, 1),
      independently per answer (the fractions of one question need not sum to
      1), as in the Galaxy Sommelier DINOv2 fine-tuning of Galaxy Zoo votes
      (768 -> 512 -> 256 -> N, batch norm, ReLU, dropout 0.2); train with the
      vote-weighted MSE of :class:`astrobatch.tasks.votes.VoteLoss`;
    - ``"concentration"``: ``1 + 99 sigmoid(z)``, the concentrations of one
      Dirichlet per question, in (1, 100) (Zoobot; Walmsley et al. 2022,
      MNRAS 509, 3966, arXiv:2102.08414); train with the Dirichlet-multinomial
      likelihood of the raw vote counts (``VoteLoss(kind="dirichlet")``) and
      read expected fractions with
      :func:`astrobatch.tasks.votes.expected_fractions`.

    Parameters
    ----------
    in_features : int
        D, width of the encoder's features (e.g. 768 for DINOv2 ViT-B/14).
    n_answers : int
        A, answers of all questions together.
    hidden : sequence of int
        Widths of the hidden layers; empty: a single linear map (no batch norm).
    dropout : float
        Dropout probability after every hidden layer, in [0, 1) (0: no dropout
        module).
    output : {"fraction", "concentration"}
        The output map above.

    Attributes
    ----------
    in_features, out_features : int
        D and A.
    output : str
    layers : torch.nn.Sequential
        Everything up to the logits ``z`` ``(B, A)``.

    Shape
    -----
    - input: ``(B, in_features)``, float32
    - output: ``(B, n_answers)``, float32, fractions in (0, 1) or
      concentrations in (1, 100) (in float32 the sigmoid may round to the
      closed interval's ends for ``|z| > ~17``)

    Raises
    ------
    ValueError
        On a non-positive width, a dropout outside [0, 1) or an unknown
        ``output``. In training mode, ``BatchNorm1d`` raises ValueError on a
        batch of one object ("Expected more than 1 value per channel"): drop
        the last incomplete batch (``drop_last=True``) or call ``eval()``.

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> head = VoteHead(16, 5, hidden=(8,), output="concentration")
    >>> [type(m).__name__ for m in head.layers]
    ['Linear', 'BatchNorm1d', 'ReLU', 'Dropout', 'Linear']
    >>> alpha = head(torch.randn(4, 16))
    >>> alpha.shape, bool(((alpha > 1) & (alpha < 100)).all())
    (torch.Size([4, 5]), True)
    """

    def __init__(
        self,
        in_features: int,
        n_answers: int,
        hidden: Sequence[int] = (512, 256),
        dropout: float = 0.2,
        output: str = "fraction",
    ):
        super().__init__()
        hidden = [int(h) for h in hidden]
        if min([in_features, n_answers, *hidden]) < 1:
            raise ValueError(
                f"widths must be >= 1, got in_features={in_features}, "
                f"n_answers={n_answers}, hidden={hidden}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if output not in VOTE_OUTPUTS:
            raise ValueError(f"output must be one of {list(VOTE_OUTPUTS)}, got {output!r}")
        self.in_features = int(in_features)
        self.out_features = int(n_answers)
        self.output = output
        layers: list[nn.Module] = []
        width = self.in_features
        for units in hidden:
            layers += [nn.Linear(width, units), nn.BatchNorm1d(units), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = units
        layers.append(nn.Linear(width, self.out_features))
        self.layers = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        """Fractions or concentrations ``(B, n_answers)`` of features ``z`` ``(B, in_features)``."""
        p = torch.sigmoid(self.layers(z))
        return p if self.output == "fraction" else 1.0 + 99.0 * p
