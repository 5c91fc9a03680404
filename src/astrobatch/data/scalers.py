"""Feature and target scalers fitted on the training split only, saved as JSON.

- :class:`GroupRobustScaler`: robust scaling with one scale per *group* of
  features (e.g. ``{x, y, z}``), so that the geometry inside a group is kept
  (an isotropic cluster stays isotropic): each feature is centred on its own
  median and divided by the group's pooled inter-quartile range.
- :class:`TargetScaler`: optional ``log10`` then standardisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from astrobatch.errors import InputError

#: Default feature groups of star_sets (one robust scaler per group).
DEFAULT_GROUPS: tuple[tuple[str, ...], ...] = (
    ("x", "y", "z"),
    ("vx", "vy", "vz"),
    ("lon_deg", "lat_deg"),
    ("pm_lon_coslat_mas_yr", "pm_lat_mas_yr"),
    ("log_L_L_sol",),
    ("mass",),
)


def feature_groups(features: Sequence[str], groups=DEFAULT_GROUPS) -> list[list[str]]:
    """Partition ``features`` into scaler groups (unknown features get their own group).

    Examples
    --------
    >>> feature_groups(["x", "vx", "y", "foo"])
    [['x', 'y'], ['vx'], ['foo']]
    """
    out, seen = [], set()
    for g in groups:
        members = [f for f in features if f in g]
        if members:
            out.append(members)
            seen.update(members)
    out.extend([f] for f in features if f not in seen)
    return out


@dataclass
class GroupRobustScaler:
    """Per-feature median centring, per-group pooled IQR scaling.

    Parameters
    ----------
    features : list of str
        Column order of the arrays this scaler transforms.
    centre : list of float
        Median of each feature (same units as the feature).
    scale : list of float
        Pooled inter-quartile range of the feature's group (same units).
    """

    features: list[str]
    centre: list[float]
    scale: list[float]

    @classmethod
    def fit(cls, x: np.ndarray, features: Sequence[str]) -> GroupRobustScaler:
        """Fit on training rows.

        Parameters
        ----------
        x : numpy.ndarray, shape (n_rows, n_features)
            Training values, finite.
        features : sequence of str
            Column names of ``x``.

        Raises
        ------
        InputError
            If ``x`` has no rows, non-finite values or a constant group.
        """
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(features) or len(x) == 0:
            raise InputError(
                f"expected a non-empty array of shape (n, {len(features)}), got {x.shape}",
                key="scaler",
            )
        centre = np.median(x, axis=0)
        scale = np.ones(len(features))
        for group in feature_groups(features):
            cols = [list(features).index(f) for f in group]
            pooled = (x[:, cols] - centre[cols]).ravel()
            q25, q75 = np.percentile(pooled, [25, 75])
            iqr = q75 - q25
            if not np.isfinite(iqr) or iqr <= 0:
                iqr = np.std(pooled) or 1.0
            scale[cols] = iqr
        return cls(list(features), centre.tolist(), scale.tolist())

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Scale ``x`` of shape (n, n_features); returns float32."""
        return ((x - np.asarray(self.centre)) / np.asarray(self.scale)).astype(np.float32)

    def inverse_transform(self, x: np.ndarray) -> np.ndarray:
        """Undo :meth:`transform`; returns float64."""
        return np.asarray(x, dtype=np.float64) * np.asarray(self.scale) + np.asarray(self.centre)


@dataclass
class TargetScaler:
    """Optional log10, then standard scaling of a scalar target.

    Parameters
    ----------
    log10 : bool
        Whether the physical target is log10-transformed first.
    mean, std : float
        Mean and standard deviation of the (log) training targets.
    """

    log10: bool
    mean: float
    std: float

    @classmethod
    def fit(cls, y: np.ndarray, log10: bool) -> TargetScaler:
        """Fit on training targets (physical units; must be > 0 when ``log10``).

        Raises
        ------
        InputError
            Non-finite or, with ``log10``, non-positive targets.
        """
        y = np.asarray(y, dtype=np.float64)
        if log10 and np.any(y <= 0):
            raise InputError("expected targets > 0 for log10 scaling", key="target")
        t = np.log10(y) if log10 else y
        std = float(np.std(t)) or 1.0
        return cls(log10, float(np.mean(t)), std)

    def to_model_space(self, y: np.ndarray) -> np.ndarray:
        """Physical target → log (if any) → standardised; float32."""
        y = np.asarray(y, dtype=np.float64)
        t = np.log10(y) if self.log10 else y
        return ((t - self.mean) / self.std).astype(np.float32)

    def to_log_space(self, z: np.ndarray) -> np.ndarray:
        """Standardised → log10 of the physical target (or physical if not ``log10``)."""
        return np.asarray(z, dtype=np.float64) * self.std + self.mean

    def to_physical(self, z: np.ndarray) -> np.ndarray:
        """Standardised → physical units."""
        t = self.to_log_space(z)
        return 10**t if self.log10 else t


def save_scalers(path: str | Path, features: GroupRobustScaler, target: TargetScaler) -> None:
    """Save both scalers to one JSON file (atomically)."""
    from astrobatch.io.atomic import write_json

    write_json(path, {"features": asdict(features), "target": asdict(target)})


def load_scalers(path: str | Path) -> tuple[GroupRobustScaler, TargetScaler]:
    """Load scalers written by :func:`save_scalers`.

    Raises
    ------
    InputError
        Missing file or missing keys.
    """
    import json

    path = Path(path)
    if not path.is_file():
        raise InputError("scalers file not found (run prepare first)", path)
    try:
        d = json.loads(path.read_text())
        return GroupRobustScaler(**d["features"]), TargetScaler(**d["target"])
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise InputError(f"malformed scalers file ({err})", path) from None
