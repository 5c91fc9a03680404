"""The params loader and the shared, validated parameter types.

Every study's pydantic models live in its own folder
(``astrobatch.studies.<study>.params``); this module keeps what they share:

- :class:`Strict`, the base of every params model (unknown keys are errors, frozen);
- reusable validated types: :func:`OrderedRange` (a ``[low, high]`` pair within
  bounds), :data:`Fraction` (a float in [0, 1]), :data:`PositiveInt`,
  :data:`PositiveFloat`, :func:`PositiveTuple`;
- the shared training and split models (:class:`TrainingParams`,
  :class:`SplitParams`, :class:`ImageSplitParams`);
- :func:`load_params`, which finds a section's model through the study registry
  (:data:`astrobatch.studies.STUDIES`) and turns any violation into one
  :class:`~astrobatch.errors.ParamsError` naming the file, the dotted key and the
  expectation.

Types are checked strictly enough to catch typos (``"3e-3"`` is accepted as a float,
``"abc"`` is not) and impossible values (a ratio outside [0, 1], an empty feature
list, a negative learning rate).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from astrobatch.errors import ParamsError

DEFAULT_PARAMS = Path("params.yaml")


class Strict(BaseModel):
    """Base for all params models: unknown keys are errors, numbers must be finite.

    ``allow_inf_nan=False``: ``.inf``, ``-.inf`` and ``.nan`` are refused in every float
    field (a learning rate of ``.inf`` would train to NaN and exit 0).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def OrderedRange(
    lo: float = float("-inf"),
    hi: float = float("inf"),
    *,
    open_low: bool = False,
    strict_order: bool = False,
) -> Any:
    """A ``(low, high)`` float pair with ``lo <= low <= high <= hi``, as an annotated type.

    Parameters
    ----------
    lo, hi : float
        Bounds of the pair (inclusive).
    open_low : bool
        Require ``lo < low`` (e.g. a positive lower limit).
    strict_order : bool
        Require ``low < high``.

    Returns
    -------
    typing.Annotated
        ``tuple[float, float]`` with a validator; its error reads
        ``must satisfy <lo> <= low <= high <= <hi>, got [low, high]``.

    Examples
    --------
    >>> from pydantic import TypeAdapter
    >>> TypeAdapter(OrderedRange(0.0, 1.0)).validate_python([0.1, 0.9])
    (0.1, 0.9)
    """
    lo_op, mid_op = ("<" if open_low else "<="), ("<" if strict_order else "<=")

    def check(v: tuple[float, float]) -> tuple[float, float]:
        a, b = v
        ok = (lo < a if open_low else lo <= a) and (a < b if strict_order else a <= b) and b <= hi
        if not ok:
            bounds = f"{lo:g} {lo_op} low {mid_op} high"
            bounds += f" <= {hi:g}" if hi != float("inf") else ""
            raise ValueError(f"must satisfy {bounds}, got [{a:g}, {b:g}]")
        return v

    return Annotated[tuple[float, float], AfterValidator(check)]


#: A float in [0, 1] (a ratio, a probability, a fraction of rows).
Fraction = Annotated[float, Field(ge=0, le=1)]
#: An integer >= 1 (a size, a count).
PositiveInt = Annotated[int, Field(ge=1)]
#: A float > 0 (a scale, a learning rate, a physical quantity).
PositiveFloat = Annotated[float, Field(gt=0)]


def PositiveTuple(n: int) -> Any:
    """A tuple of ``n`` positive floats (e.g. one value per band), as an annotated type."""

    def check(v: tuple[float, ...]) -> tuple[float, ...]:
        if not all(x > 0 for x in v):
            raise ValueError(f"expected {n} positive values, got {list(v)}")
        return v

    return Annotated[tuple[(float,) * n], AfterValidator(check)]


def _sum_to_one(model: Any) -> Any:
    total = model.train + model.val + model.test
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"train + val + test must be 1, got {total:g}")
    return model


class _SplitRatios(Strict):
    """train/val/test ratios that sum to 1 (base of the split models)."""

    train: float = Field(0.7, gt=0, lt=1)
    val: float = Field(0.2, ge=0, lt=1)
    test: float = Field(0.1, gt=0, lt=1)

    @model_validator(mode="after")
    def _sum_to_one(self):
        return _sum_to_one(self)


class SplitParams(_SplitRatios):
    """Split of objects (runs, sources) into train/val/test by a salted hash of their ids."""

    salt: str = Field(
        "astrobatch", description="salt of the run-id hash that orders runs before splitting"
    )
    stratify: list[str] = Field(
        default_factory=lambda: ["ic_w0", "ic_metallicity", "ic_mass_level"],
        description="per-snapshot columns that define strata of initial conditions",
    )


class ImageSplitParams(_SplitRatios):
    """Split of images into train/val/test: seeded random, or grouped (e.g. by galaxy)."""

    val: float = Field(0.15, ge=0, lt=1)
    test: float = Field(0.15, gt=0, lt=1)
    by: Literal["random", "galaxy"] = Field(
        "random", description="random (upstream) or galaxy (no galaxy in two splits)"
    )
    seed: int = Field(0, description="seed of the split (independent of the training seed)")


class TrainingParams(Strict):
    """Optimisation and hardware (Lightning Trainer) settings."""

    batch_size: int = Field(64, ge=1)
    max_epochs: int = Field(30, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    huber_delta: float = Field(1.0, gt=0)
    gradient_clip_val: float = Field(0.5, gt=0)
    patience: int = Field(10, ge=1, description="early stopping on val loss")
    num_workers: int = Field(0, ge=0)
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps", "tpu"] = "auto"
    devices: int | str = Field(
        1, description="devices per node: a count >= 1, -1 (all), auto, or GPU ids '0,1'"
    )
    num_nodes: int = Field(1, ge=1, description="nodes (multi-node DDP under SLURM: srun)")
    strategy: Literal[
        "auto", "ddp", "ddp_spawn", "ddp_fork", "ddp_find_unused_parameters_true", "fsdp",
        "single_device", "deepspeed",
    ] = "auto"  # fmt: skip
    precision: Literal[
        "64-true", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true",
        "transformer-engine",
    ] = "32-true"  # fmt: skip
    resume: Literal["auto", "never"] = Field(
        "auto", description="auto: continue from last.ckpt of an interrupted identical run"
    )

    @field_validator("devices")
    @classmethod
    def _devices(cls, v: int | str) -> int | str:
        if isinstance(v, int) and (v >= 1 or v == -1):
            return v
        if isinstance(v, str) and (v == "auto" or re.fullmatch(r"\d+(,\d+)*,?", v)):
            return v
        raise ValueError(f"expected a count >= 1, -1, 'auto' or GPU ids like '0,1'; got {v!r}")


#: Top-level keys of params.yaml that are not study sections (shared settings).
SHARED_KEYS = {"runner"}

M = TypeVar("M", bound=BaseModel)


def section_model(section: str, path: str | Path = DEFAULT_PARAMS) -> type[Strict]:
    """The params model of a study section, from the study registry.

    Raises
    ------
    ParamsError
        ``section`` is not a registered study.
    """
    from astrobatch.studies import STUDIES

    if section not in STUDIES:
        raise ParamsError(f"unknown section {section!r}; known: {sorted(STUDIES)}", path=path)
    entry = STUDIES[section]
    return getattr(importlib.import_module(f"{entry.package}.params"), entry.params)


def _format_validation_error(err: ValidationError, section: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join([section, *[str(p) for p in e["loc"]]])
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check spelling; see params.yaml for the known keys)"
        lines.append(f"{loc}: {msg} (got {e.get('input')!r})")
    return "; ".join(lines)


def parse_section(raw: dict[str, Any] | None, model: type[M], section: str, path: str) -> M:
    """Validate one section's raw mapping into its typed model.

    Parameters
    ----------
    raw : dict or None
        The section as read from YAML (None means all defaults).
    model : type
        The pydantic model of the section.
    section : str
        Section name, used in messages.
    path : str
        File the section came from, used in messages.

    Returns
    -------
    pydantic.BaseModel
        The validated, frozen parameters.

    Raises
    ------
    ParamsError
        On an unknown key, a wrong type or an impossible value.
    """
    if raw is not None and not isinstance(raw, dict):
        raise ParamsError(f"expected a mapping, got {type(raw).__name__}", path=path, key=section)
    try:
        return model.model_validate(raw or {})
    except ValidationError as err:
        raise ParamsError(_format_validation_error(err, section), path=path) from None


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with the floats of YAML 1.2 (``1e-3``, not only ``1.0e-3``)."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """Parse YAML text as DVC does: PyYAML's safe loader, with YAML 1.2 floats.

    PyYAML follows YAML 1.1, where ``1e-3`` (no dot) is a string; DVC reads params with
    ruamel.yaml (YAML 1.2), where it is a float. Params files, sweeps files and ``-S``
    values all go through here, so that every reader agrees with ``dvc exp show``.

    Parameters
    ----------
    text : str
        YAML text.

    Returns
    -------
    object
        The parsed document (None for empty text). No Python objects are constructed
        (safe loader).

    Raises
    ------
    yaml.YAMLError
        Text that is not YAML.

    Examples
    --------
    >>> load_yaml("lr: 1e-3\\nn: 2\\nname: 1e3x")
    {'lr': 0.001, 'n': 2, 'name': '1e3x'}
    """
    return yaml.load(text, Loader=_Yaml12Loader)  # a SafeLoader subclass: no objects


def apply_overrides(data: dict, overrides: Iterable[str], section: str, path: str) -> dict:
    """Apply ``key=value`` overrides (the syntax of ``dvc exp run -S``) to params data.

    Parameters
    ----------
    data : dict
        The parsed params file (not modified).
    overrides : iterable of str
        ``[<file>:]<dotted.key>=<value>``; the value is parsed as YAML (``3``, ``1e-3``,
        ``true``, ``[1, 2]``, ``deep_sets``). A key that does not start with a top-level
        section of the file is taken as relative to ``section`` (``training.lr=1e-3``).
    section : str
        The study's section.
    path : str
        The params file (a ``<file>:`` prefix must name it).

    Returns
    -------
    dict
        A copy of ``data`` with the overrides set (missing levels created; the section
        model then rejects unknown keys).

    Raises
    ------
    ParamsError
        An override without ``=``, with an empty key, another file, or a value that is
        not YAML.

    Examples
    --------
    >>> apply_overrides({"s": {"t": {"lr": 1}}}, ["s.t.lr=1e-3", "t.n=[1, 2]"], "s", "p.yaml")
    {'s': {'t': {'lr': 0.001, 'n': [1, 2]}}}
    """
    import copy

    out = copy.deepcopy(data)
    for item in overrides:
        key, sep, value = item.partition("=")
        file, colon, key = key.rpartition(":")
        where = f"-S {item}"
        if not sep or not key.strip("."):
            raise ParamsError(f"{where}: expected key=value (as in `dvc exp run -S`)", path=path)
        if colon and Path(file).name != Path(path).name:
            raise ParamsError(f"{where}: this command reads {path}, not {file}", path=path)
        try:
            parsed = load_yaml(value) if value.strip() else ""
        except yaml.YAMLError as err:
            raise ParamsError(f"{where}: the value is not YAML ({err})", path=path) from None
        parts = key.split(".")
        if parts[0] not in out:
            parts = [section, *parts]
        node = out
        for name in parts[:-1]:
            nxt = node.get(name) if isinstance(node, dict) else None
            if not isinstance(nxt, dict):
                nxt = {}
                node[name] = nxt
            node = nxt
        node[parts[-1]] = parsed
    return out


def load_params(
    section: str, path: str | Path = DEFAULT_PARAMS, overrides: Iterable[str] = ()
) -> Any:
    """Read ``params.yaml`` and return the validated model of one section.

    Parameters
    ----------
    section : str
        Section name, e.g. ``"star_sets"``.
    path : str or pathlib.Path
        YAML file (default ``params.yaml`` in the working directory).
    overrides : iterable of str
        ``key=value`` settings applied before validation (:func:`apply_overrides`).

    Returns
    -------
    StarSetsParams or other section model
        Frozen, validated parameters.

    Raises
    ------
    ParamsError
        If the file is missing, is not valid YAML, has an unknown top-level
        section, or the section is invalid.
    """
    path = Path(path)
    if not path.is_file():
        raise ParamsError("params file not found (run from the project root)", path=path)
    try:
        data = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ParamsError(f"not valid YAML: {err}", path=path) from None
    if not isinstance(data, dict):
        raise ParamsError("expected a mapping of sections at the top level", path=path)
    data = apply_overrides(data, overrides, section, str(path))
    from astrobatch.studies import STUDIES

    unknown = sorted(set(data) - set(STUDIES) - SHARED_KEYS)
    if unknown:
        raise ParamsError(
            f"unknown top-level section(s) {unknown}; known: {sorted(STUDIES)}", path=path
        )
    model = section_model(section, path)
    return parse_section(data.get(section), model, section, str(path))
