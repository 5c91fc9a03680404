"""DINOv2 vision-transformer backbone (Hugging Face ``transformers``), loaded from local files only.

:class:`Dinov2Backbone` wraps a :class:`transformers.Dinov2Model` (Oquab et al.
2023, "DINOv2: Learning Robust Visual Features without Supervision",
arXiv:2304.07193) as an encoder of :mod:`astrobatch.nn`: images ``(B, C, H, W)``
to the feature vector ``(B, hidden_size)``, the final-layer-normed CLS token
(``pooler_output`` of the Hugging Face model). Any head of
:mod:`astrobatch.nn.heads` of width ``out_features`` fits it.

Weights
-------
Pretrained weights load from a local folder and nothing else: no download is
ever attempted (``local_files_only=True``, and the folder is resolved and
checked here before ``transformers`` sees it). The folder may be

- a ``save_pretrained`` folder (``config.json`` + ``model.safetensors``),
- a Hugging Face hub cache repository folder (``.../models--facebook--dinov2-small``:
  ``refs/main`` names the snapshot, or the only one under ``snapshots/`` is used),
- one ``snapshots/<hash>`` folder of such a cache.

Only safetensors weights are read (``use_safetensors=True``): pickled
``pytorch_model.bin`` files are refused, since unpickling runs arbitrary code.
Checkpoints of the hub (``facebook/dinov2-*``) use the attention key names of
transformers 4 (``attention.attention.query``); transformers 5 renames them on
load. Every problem (missing folder, no config, not a DINOv2 config, no
safetensors file, unreadable or mismatched weights) raises
:class:`~astrobatch.errors.InputError` naming the folder.

Input normalisation
-------------------
The DINOv2 weights expect images in [0, 1] normalised per channel with the
ImageNet mean and standard deviation; :func:`imagenet_normalise` does it, with
the ``image_mean``/``image_std`` of the weights folder's
``preprocessor_config.json`` when there is one (:attr:`Dinov2Backbone.mean`,
:attr:`Dinov2Backbone.std`).

Image size
----------
The model interpolates its position embeddings (bicubic, from the square grid
of ``config.image_size / patch_size`` positions) to the patch grid of the input,
so any side works, e.g. 64 px cutouts with the patch-14 weights trained at 224
px (a 4 x 4 grid). The patch convolution has stride ``patch_size``: a side that
is not a multiple of it loses its last ``side % patch_size`` rows/columns
(64 px with patch 14: the last 8), so prefer multiples (e.g. 56 or 70 px for
patch 14).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import Dinov2Config, Dinov2Model
from transformers.utils import logging as hf_logging

from astrobatch.errors import InputError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Dinov2Backbone",
    "build_backbone",
    "imagenet_normalise",
    "resolve_weights_dir",
    "small_dinov2_config",
]

#: ImageNet channel means (R, G, B) of images in [0, 1], as DINOv2 was trained with.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
#: ImageNet channel standard deviations (R, G, B) of images in [0, 1].
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_CONFIG = "config.json"
_PREPROCESSOR = "preprocessor_config.json"
_SAFETENSORS = ("model.safetensors", "model.safetensors.index.json")
_PICKLED = (
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "model.bin",
    "model.pt",
    "model.pth",
)
#: Parameters a checkpoint may lack without harm (used only with ``bool_masked_pos``).
_OPTIONAL_KEYS = frozenset({"embeddings.mask_token"})
#: Feature poolings of :class:`Dinov2Backbone`.
POOLINGS = ("cls", "cls_mean")


def small_dinov2_config(
    hidden_size: int = 96,
    num_hidden_layers: int = 3,
    num_attention_heads: int = 3,
    patch_size: int = 8,
    image_size: int = 64,
    num_channels: int = 3,
) -> Dinov2Config:
    """A small DINOv2 configuration, for training from scratch or tests (random weights).

    The architecture is DINOv2's (pre-norm blocks, GELU MLP of ``mlp_ratio`` 4,
    layer scale initialised at 1.0 as in the Hugging Face ``facebook/dinov2-*``
    configurations, no stochastic depth, no dropout), only smaller.

    Parameters
    ----------
    hidden_size : int
        Width D of the tokens and of the output features; a multiple of
        ``num_attention_heads``.
    num_hidden_layers : int
        Transformer blocks.
    num_attention_heads : int
        Heads of each self-attention.
    patch_size : int
        Side of the square patches, pixels.
    image_size : int
        Side, pixels, the position embeddings are laid out for (``image_size /
        patch_size`` per side); other sides are interpolated.
    num_channels : int
        C, channels of the images.

    Returns
    -------
    transformers.Dinov2Config

    Raises
    ------
    ValueError
        On a non-positive size or a width that is not a multiple of the heads.

    Examples
    --------
    >>> cfg = small_dinov2_config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    >>> cfg.model_type, cfg.hidden_size, cfg.patch_size, cfg.mlp_ratio
    ('dinov2', 32, 8, 4)
    """
    sizes = dict(
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        patch_size=patch_size,
        image_size=image_size,
        num_channels=num_channels,
    )
    bad = {k: v for k, v in sizes.items() if int(v) < 1}
    if bad:
        raise ValueError(f"sizes must be >= 1, got {bad}")
    if hidden_size % num_attention_heads:
        raise ValueError(
            f"hidden_size ({hidden_size}) must be a multiple of "
            f"num_attention_heads ({num_attention_heads})"
        )
    return Dinov2Config(
        **{k: int(v) for k, v in sizes.items()},
        mlp_ratio=4,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        drop_path_rate=0.0,
        layerscale_value=1.0,
        layer_norm_eps=1e-6,
        qkv_bias=True,
        use_swiglu_ffn=False,
    )


def imagenet_normalise(
    x: Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> Tensor:
    """Per-channel normalisation ``(x - mean) / std`` of images in [0, 1].

    Parameters
    ----------
    x : torch.Tensor, shape (B, C, H, W) or (C, H, W), float
        Images scaled to [0, 1] (e.g. 8-bit images divided by 255).
    mean, std : sequence of float, length C
        Channel means and standard deviations (default ImageNet's, which the
        DINOv2 weights expect).

    Returns
    -------
    torch.Tensor
        Same shape and dtype as ``x``.

    Raises
    ------
    ValueError
        If ``x`` is not 3-D or 4-D, or its channels differ from ``len(mean)``.

    Examples
    --------
    >>> y = imagenet_normalise(torch.full((1, 3, 2, 2), 0.485))
    >>> float(y[0, 0, 0, 0]), round(float(y[0, 2, 0, 0]), 4)
    (0.0, 0.3511)
    """
    if x.ndim not in (3, 4):
        raise ValueError(f"images must be (B, C, H, W) or (C, H, W), got shape {tuple(x.shape)}")
    c = x.shape[-3]
    if len(mean) != c or len(std) != c:
        raise ValueError(f"{c} channels but {len(mean)} means and {len(std)} stds")
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(c, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(c, 1, 1)
    return (x - m) / s


def resolve_weights_dir(path: str | Path) -> Path:
    """The folder that holds ``config.json``: ``path`` itself, or a hub cache's snapshot.

    Parameters
    ----------
    path : str or pathlib.Path
        A ``save_pretrained`` folder, a ``snapshots/<hash>`` folder, or a hub
        cache repository folder (``models--<org>--<name>``, with ``snapshots/``
        and usually ``refs/main``).

    Returns
    -------
    pathlib.Path
        The folder with the config and weights (an existing directory).

    Raises
    ------
    astrobatch.errors.InputError
        If the folder does not exist, ``refs/main`` names a missing snapshot,
        a cache without ``refs/main`` has several snapshots, or the resolved
        folder has no ``config.json`` ("weights folder without a config").
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise InputError(
            "weights folder not found (pretrained weights load from local files only)", root
        )
    folder = root
    snapshots = root / "snapshots"
    if not (root / _CONFIG).is_file() and snapshots.is_dir():
        ref = root / "refs" / "main"
        if ref.is_file():
            commit = ref.read_text().strip()
            folder = snapshots / commit
            if not folder.is_dir():
                raise InputError(
                    f"refs/main names snapshot {commit!r}, which is not under snapshots/", root
                )
        else:
            found = sorted(p for p in snapshots.iterdir() if p.is_dir())
            if len(found) != 1:
                names = [p.name for p in found]
                raise InputError(
                    f"hub cache without refs/main must hold exactly one snapshot, found {names}",
                    root,
                )
            folder = found[0]
    if not (folder / _CONFIG).is_file():
        raise InputError(f"weights folder without a config ({_CONFIG}): {folder}", folder)
    return folder


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"unreadable {what}: {err}", path) from None
    if not isinstance(data, dict):
        raise InputError(f"{what} must be a JSON object", path)
    return data


def _channel_stats(folder: Path | None, n_channels: int) -> tuple[tuple[float, ...], ...]:
    """(mean, std) of ``preprocessor_config.json`` in ``folder``, else ImageNet's."""
    if folder is not None and (folder / _PREPROCESSOR).is_file():
        pre = _read_json(folder / _PREPROCESSOR, "preprocessor config")
        if "image_mean" in pre or "image_std" in pre:
            try:
                mean = tuple(float(v) for v in pre["image_mean"])
                std = tuple(float(v) for v in pre["image_std"])
            except (KeyError, TypeError, ValueError):
                raise InputError(
                    "image_mean and image_std must both be lists of numbers",
                    folder / _PREPROCESSOR,
                    "image_mean",
                ) from None
            if len(mean) != n_channels or len(std) != n_channels or min(std) <= 0:
                raise InputError(
                    f"expected {n_channels} means and {n_channels} positive stds, "
                    f"got {list(mean)} and {list(std)}",
                    folder / _PREPROCESSOR,
                    "image_std",
                )
            return mean, std
    if n_channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    # No statistics for C != 3 channels: the ImageNet averages over channels.
    return (sum(IMAGENET_MEAN) / 3,) * n_channels, (sum(IMAGENET_STD) / 3,) * n_channels


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No progress bars nor load reports from ``transformers`` (errors are raised here)."""
    bars = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


class Dinov2Backbone(nn.Module):
    """DINOv2 encoder: normalised images to the final-layer-normed CLS token.

    Parameters
    ----------
    model : transformers.Dinov2Model
        The wrapped model (random or pretrained).
    mean, std : sequence of float, optional
        Channel statistics of the input normalisation the weights expect
        (default ImageNet's for 3 channels); not applied by :meth:`forward`,
        see :meth:`normalise`.
    pooling : {"cls", "cls_mean"}
        ``"cls"``: the final-layer-normed CLS token (``pooler_output``, D
        features; the seed's choice). ``"cls_mean"``: the CLS token and the
        mean of the final-layer-normed patch tokens concatenated (2D
        features): the linear-evaluation features of DINOv2 (Oquab et al.
        2023, arXiv:2304.07193, section 7.1).

    Attributes
    ----------
    model : transformers.Dinov2Model
        Saved under ``model.*`` in state dicts (Hugging Face key names after).
    config : transformers.Dinov2Config
    out_features : int
        D, the hidden size (2D with ``pooling="cls_mean"``).
    patch_size : int
        Side of the patches, pixels.
    mean, std : tuple of float
        Channel statistics for :func:`imagenet_normalise`.

    Shape
    -----
    - input: ``(B, C, H, W)``, float32, normalised (:meth:`normalise`); any
      ``H, W >= patch_size`` (position embeddings are interpolated; prefer
      multiples of ``patch_size``, see the module docstring)
    - output: ``(B, out_features)``, float32

    Raises
    ------
    TypeError
        If ``model`` is not a ``Dinov2Model``.

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> cfg = small_dinov2_config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    >>> enc = Dinov2Backbone.from_config(cfg).eval()
    >>> enc.out_features, enc.mean
    (32, (0.485, 0.456, 0.406))
    >>> enc(enc.normalise(torch.rand(2, 3, 64, 64))).shape
    torch.Size([2, 32])
    """

    def __init__(
        self,
        model: Dinov2Model,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        pooling: str = "cls",
    ):
        super().__init__()
        if not isinstance(model, Dinov2Model):
            raise TypeError(f"expected a transformers.Dinov2Model, got {type(model).__name__}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.model = model
        self.pooling = pooling
        default_mean, default_std = _channel_stats(None, int(model.config.num_channels))
        self.mean = tuple(float(v) for v in (default_mean if mean is None else mean))
        self.std = tuple(float(v) for v in (default_std if std is None else std))

    @property
    def config(self) -> Dinov2Config:
        """The model's configuration."""
        return self.model.config

    @property
    def out_features(self) -> int:
        """Width of the output features: D, the hidden size (2D with ``cls_mean``)."""
        return int(self.model.config.hidden_size) * (2 if self.pooling == "cls_mean" else 1)

    @property
    def patch_size(self) -> int:
        """Side of the square patches, pixels."""
        p = self.model.config.patch_size
        return int(p if isinstance(p, int) else p[0])

    @classmethod
    def from_config(
        cls,
        config: Dinov2Config,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        pooling: str = "cls",
    ) -> Dinov2Backbone:
        """A backbone with random weights of ``config`` (e.g. :func:`small_dinov2_config`)."""
        if getattr(config, "model_type", None) != "dinov2":
            raise TypeError(f"expected a Dinov2Config, got {type(config).__name__}")
        return cls(Dinov2Model(config), mean, std, pooling)

    @classmethod
    def from_pretrained(cls, path: str | Path, pooling: str = "cls") -> Dinov2Backbone:
        """Load local DINOv2 weights (safetensors only, never a download).

        Parameters
        ----------
        path : str or pathlib.Path
            A ``save_pretrained`` folder, a hub cache repository folder or one
            of its snapshots (:func:`resolve_weights_dir`).
        pooling : {"cls", "cls_mean"}
            The output features (see the class).

        Returns
        -------
        Dinov2Backbone
            In eval mode (as ``transformers`` returns it), with ``mean``/``std``
            from ``preprocessor_config.json`` when present, else ImageNet's.

        Raises
        ------
        astrobatch.errors.InputError
            On a missing folder, a folder without ``config.json``, a config
            whose ``model_type`` is not ``"dinov2"``, a folder without
            safetensors weights (pickled ``.bin`` files are refused), weights
            that cannot be read, or weights missing or of the wrong shape for
            the config.
        """
        folder = resolve_weights_dir(path)
        config = _read_json(folder / _CONFIG, "model config")
        if config.get("model_type") != "dinov2":
            raise InputError(
                f"not a DINOv2 config: model_type {config.get('model_type')!r}, expected 'dinov2'",
                folder / _CONFIG,
                "model_type",
            )
        if not any((folder / name).is_file() for name in _SAFETENSORS):
            pickled = [n for n in _PICKLED if (folder / n).is_file()]
            why = f" (found {pickled}; pickled weights are never loaded)" if pickled else ""
            raise InputError(
                f"no model.safetensors: safetensors weights are required{why}; convert with "
                "transformers' save_pretrained(..., safe_serialization=True) in a trusted session",
                folder,
            )
        mean, std = _channel_stats(folder, int(config.get("num_channels", 3)))
        try:
            with _quiet_transformers():
                model, info = Dinov2Model.from_pretrained(
                    str(folder.resolve()),
                    local_files_only=True,
                    use_safetensors=True,
                    output_loading_info=True,
                )
        except Exception as err:  # transformers/safetensors raise OSError, RuntimeError, ...
            lines = str(err).strip().splitlines()
            first = lines[0] if lines else type(err).__name__
            if "ignore_mismatched_sizes" in first:  # transformers' words for a shape mismatch
                first = "parameters of the wrong shape for the config"
            raise InputError(f"cannot load the DINOv2 weights: {first}", folder) from None
        missing = sorted(set(info.get("missing_keys", ())) - _OPTIONAL_KEYS)
        mismatched = sorted(str(k) for k in info.get("mismatched_keys", ()))
        if missing or mismatched:
            problems = []
            if missing:
                problems.append(f"{len(missing)} missing (e.g. {missing[:3]})")
            if mismatched:
                problems.append(f"{len(mismatched)} of the wrong shape (e.g. {mismatched[:3]})")
            raise InputError(
                "weights do not fit the config: " + ", ".join(problems) + " parameters", folder
            )
        return cls(model, mean, std, pooling).eval()

    def save_pretrained(self, path: str | Path) -> None:
        """Write ``config.json``, ``model.safetensors``, ``preprocessor_config.json`` to ``path``.

        The folder loads back with :meth:`from_pretrained` (or ``transformers``'
        ``Dinov2Model.from_pretrained``); ``preprocessor_config.json`` holds
        only ``image_mean`` and ``image_std``.
        """
        folder = Path(path)
        with _quiet_transformers():
            self.model.save_pretrained(str(folder), safe_serialization=True)
        stats = {"image_mean": list(self.mean), "image_std": list(self.std)}
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{_PREPROCESSOR}.", suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump(stats, fh, indent=2)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; config.json is not
        os.replace(tmp, folder / _PREPROCESSOR)

    def normalise(self, x: Tensor) -> Tensor:
        """Images in [0, 1] ``(B, C, H, W)`` normalised with :attr:`mean` and :attr:`std`."""
        return imagenet_normalise(x, self.mean, self.std)

    def forward(self, x: Tensor) -> Tensor:
        """Features ``(B, out_features)`` of normalised images ``x`` (see ``pooling``)."""
        if x.ndim != 4:
            raise ValueError(f"images must be (B, C, H, W), got shape {tuple(x.shape)}")
        out = self.model(pixel_values=x)
        if self.pooling == "cls":
            return out.pooler_output
        tokens = out.last_hidden_state  # (B, 1 + registers + patches, D), layer-normed
        n_patches = (x.shape[-2] // self.patch_size) * (x.shape[-1] // self.patch_size)
        return torch.cat([out.pooler_output, tokens[:, -n_patches:].mean(dim=1)], dim=1)


def build_backbone(
    weights_dir: str | Path | None = None, pooling: str = "cls", **small_config_kwargs: int
) -> Dinov2Backbone:
    """Pretrained DINOv2 from a local folder, or a random small one.

    Parameters
    ----------
    weights_dir : str or pathlib.Path or None
        Local weights (:meth:`Dinov2Backbone.from_pretrained`); None: random
        weights of :func:`small_dinov2_config`.
    pooling : {"cls", "cls_mean"}
        The output features (:class:`Dinov2Backbone`).
    **small_config_kwargs
        Arguments of :func:`small_dinov2_config` (only without ``weights_dir``).

    Returns
    -------
    Dinov2Backbone

    Raises
    ------
    astrobatch.errors.InputError
        As :meth:`Dinov2Backbone.from_pretrained`.
    ValueError
        If both ``weights_dir`` and config arguments are given, or on bad sizes.

    Examples
    --------
    >>> enc = build_backbone(None, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    >>> enc.out_features
    32
    """
    if weights_dir is not None:
        if small_config_kwargs:
            raise ValueError(
                f"config arguments {sorted(small_config_kwargs)} cannot change pretrained weights"
            )
        return Dinov2Backbone.from_pretrained(weights_dir, pooling)
    return Dinov2Backbone.from_config(small_dinov2_config(**small_config_kwargs), pooling=pooling)
