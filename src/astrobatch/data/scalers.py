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


# ----------------------------------------------------------------------------------------------
# Per-column scalers of tables with missing values (stellar_xp)
# ----------------------------------------------------------------------------------------------

TABLE_SCALERS_FORMAT = "astrobatch.table_scalers"


def _fallback_scale(values: np.ndarray) -> float:
    std = float(np.std(values)) if len(values) > 1 else 0.0
    return std if np.isfinite(std) and std > 0 else 1.0


@dataclass
class RobustScaler:
    """Per-column median centring and inter-quartile-range scaling, ignoring NaN.

    ``transform`` maps x to (x - median) / IQR and keeps NaN (missing) as NaN;
    ``transform_errors`` divides errors by the same IQR (so scaled errors stay
    the errors of the scaled values). A column whose IQR is 0 uses its standard
    deviation, then 1; a column with no finite value gets centre 0, scale 1.

    Parameters
    ----------
    features : list of str
        Column order.
    centre : list of float
        Median per column (the column's unit).
    scale : list of float
        IQR per column (the column's unit), > 0.
    n_fit : list of int
        Finite values each column was fitted on.

    Examples
    --------
    >>> s = RobustScaler.fit(np.array([[1.0, np.nan], [2.0, 5.0], [3.0, 7.0]]), ["a", "b"])
    >>> s.transform(np.array([[2.0, 6.0]])).tolist(), s.n_fit
    ([[0.0, 0.0]], [3, 2])
    """

    features: list[str]
    centre: list[float]
    scale: list[float]
    n_fit: list[int]

    @classmethod
    def fit(cls, x: np.ndarray, features: Sequence[str]) -> RobustScaler:
        """Fit on rows ``x`` of shape (n, len(features)); NaN are ignored per column.

        Raises
        ------
        InputError
            If ``x`` does not have ``len(features)`` columns or holds +-inf.
        """
        x = np.asarray(x)  # float32 or float64; columns are promoted one at a time
        if x.ndim != 2 or x.shape[1] != len(features):
            raise InputError(
                f"expected an array of shape (n, {len(features)}), got {x.shape}", key="scaler"
            )
        centre, scale, n_fit = [], [], []
        for j in range(x.shape[1]):
            col = x[:, j].astype(np.float64)
            if np.isinf(col).any():
                raise InputError("infinite values; expected finite numbers or NaN", key=features[j])
            v = col[np.isfinite(col)]
            if not len(v):
                centre.append(0.0)
                scale.append(1.0)
                n_fit.append(0)
                continue
            q25, q50, q75 = np.percentile(v, [25, 50, 75])
            iqr = float(q75 - q25)
            centre.append(float(q50))
            scale.append(iqr if iqr > 0 else _fallback_scale(v))
            n_fit.append(len(v))
        return cls(list(features), centre, scale, n_fit)

    def transform(self, x: np.ndarray) -> np.ndarray:
        """(x - centre) / scale for x of shape (n, F); float32, NaN kept."""
        return ((np.asarray(x) - np.asarray(self.centre)) / np.asarray(self.scale)).astype(
            np.float32
        )

    def transform_errors(self, err: np.ndarray) -> np.ndarray:
        """err / scale for errors of shape (n, F); float32, NaN kept."""
        return (np.asarray(err) / np.asarray(self.scale)).astype(np.float32)

    def inverse_transform(self, z: np.ndarray) -> np.ndarray:
        """Undo :meth:`transform`; float64."""
        return np.asarray(z, dtype=np.float64) * np.asarray(self.scale) + np.asarray(self.centre)

    def inverse_errors(self, z_err: np.ndarray) -> np.ndarray:
        """Undo :meth:`transform_errors`; float64."""
        return np.asarray(z_err, dtype=np.float64) * np.asarray(self.scale)


@dataclass
class StandardScaler:
    """Per-column standardisation (x - mean) / std, ignoring NaN; errors divided by std.

    Parameters
    ----------
    features : list of str
        Column order (label names).
    mean, std : list of float
        Per column, the column's unit; ``std`` > 0.
    n_fit : list of int
        Finite values each column was fitted on.

    Examples
    --------
    >>> s = StandardScaler.from_moments(["t"], [6.0], [14.0], [3])
    >>> s.mean, [round(v, 4) for v in s.std]
    ([2.0], [0.8165])
    """

    features: list[str]
    mean: list[float]
    std: list[float]
    n_fit: list[int]

    @classmethod
    def from_moments(
        cls,
        features: Sequence[str],
        total: Sequence[float],
        total_sq: Sequence[float],
        count: Sequence[int],
    ) -> StandardScaler:
        """Build from running sums (population std), so the fit can stream over blocks.

        A column with fewer than 2 values or zero spread gets std 1.
        """
        mean, std = [], []
        for s, s2, n in zip(total, total_sq, count, strict=True):
            m = s / n if n else 0.0
            var = max(s2 / n - m * m, 0.0) if n else 0.0
            sd = float(np.sqrt(var))
            mean.append(float(m))
            std.append(sd if n > 1 and sd > 0 else 1.0)
        return cls(list(features), mean, std, [int(n) for n in count])

    @classmethod
    def fit(cls, y: np.ndarray, features: Sequence[str]) -> StandardScaler:
        """Fit on rows ``y`` of shape (n, len(features)); NaN ignored per column."""
        y = np.asarray(y, dtype=np.float64)
        ok = np.isfinite(y)
        z = np.where(ok, y, 0.0)
        return cls.from_moments(features, z.sum(0), (z * z).sum(0), ok.sum(0))

    def transform(self, y: np.ndarray) -> np.ndarray:
        """(y - mean) / std; float32, NaN kept."""
        return ((np.asarray(y) - np.asarray(self.mean)) / np.asarray(self.std)).astype(np.float32)

    def transform_errors(self, err: np.ndarray) -> np.ndarray:
        """err / std; float32, NaN kept."""
        return (np.asarray(err) / np.asarray(self.std)).astype(np.float32)

    def inverse_transform(self, z: np.ndarray) -> np.ndarray:
        """Undo :meth:`transform`; float64."""
        return np.asarray(z, dtype=np.float64) * np.asarray(self.std) + np.asarray(self.mean)

    def inverse_errors(self, z_err: np.ndarray) -> np.ndarray:
        """Undo :meth:`transform_errors`; float64."""
        return np.asarray(z_err, dtype=np.float64) * np.asarray(self.std)


def save_table_scalers(
    path: str | Path, features: RobustScaler, labels: StandardScaler | None, **extra
) -> None:
    """Save a table's feature and label scalers to one JSON file (atomically).

    Layout: ``{"format": "astrobatch.table_scalers", "features": {...},
    "labels": {...} or null, **extra}``.
    """
    from astrobatch.io.atomic import write_json

    d = {"format": TABLE_SCALERS_FORMAT, "features": asdict(features)}
    d["labels"] = asdict(labels) if labels is not None else None
    d.update(extra)
    write_json(path, d)


def load_table_scalers(path: str | Path) -> tuple[RobustScaler, StandardScaler | None]:
    """Load scalers written by :func:`save_table_scalers`.

    Raises
    ------
    InputError
        Missing file, wrong format or missing keys.
    """
    import json

    path = Path(path)
    if not path.is_file():
        raise InputError("scalers file not found (run prepare first)", path)
    try:
        d = json.loads(path.read_text())
        if d.get("format") != TABLE_SCALERS_FORMAT:
            raise InputError(f"expected format {TABLE_SCALERS_FORMAT!r}", path, "format")
        labels = StandardScaler(**d["labels"]) if d.get("labels") else None
        return RobustScaler(**d["features"]), labels
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise InputError(f"malformed scalers file ({err})", path) from None
