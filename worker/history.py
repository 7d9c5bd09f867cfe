"""A bounded metric history: one point per `log_every` steps, the mean of those steps.

A 500K-step run logs about `MLFLOW_MAX_POINTS` points per metric instead of 500K. A point is
placed at the last step of its window and holds, per metric, the mean of the window's finite
values; for the losses and the gradient norm also `<name>_min` and `<name>_max`, so a spike
between two points stays visible. The point at a run's last step holds that step's exact values
(min/max still cover its window): the value MLflow shows as the run's final one is not an
average. Windows end where `step % log_every == 0`, so a resumed run continues the same grid.

Pure Python, no MLflow: `worker.tracking` sends the points.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from liftplace import defaults

__all__ = ["Point", "Window", "has_spread", "log_every_for", "spread_names"]

SPREAD_PREFIXES = ("loss", "grad_norm")  # metrics whose extremes between points matter


def log_every_for(total_steps: int, max_points: int = defaults.MLFLOW_MAX_POINTS) -> int:
    """Steps per point so that a run of `total_steps` logs at most `max_points` points per metric."""
    return max(1, math.ceil(max(1, total_steps) / max(1, max_points)))


def has_spread(name: str) -> bool:
    """True for the metrics that get `_min`/`_max` beside their mean (losses, gradient norm)."""
    return name.startswith(SPREAD_PREFIXES)


def spread_names(name: str) -> tuple[str, str]:
    return f"{name}_min", f"{name}_max"


@dataclass
class Point:
    """One point of the history: `values` (metric -> float) at `step`, stamped `timestamp_ms`."""

    step: int
    timestamp_ms: int
    values: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "timestamp_ms": self.timestamp_ms, "values": self.values}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Point:
        return cls(int(data["step"]), int(data["timestamp_ms"]), {str(k): float(v) for k, v in data["values"].items()})


@dataclass
class Window:
    """The steps since the last point: per metric the sum, count, min and max of its finite values."""

    first_step: int = 0  # 0: empty
    last_step: int = 0
    timestamp_ms: int = 0  # of the last step
    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    mins: dict[str, float] = field(default_factory=dict)
    maxs: dict[str, float] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)  # the last step's values

    @property
    def empty(self) -> bool:
        return self.first_step == 0

    @property
    def steps(self) -> int:
        return 0 if self.empty else self.last_step - self.first_step + 1

    def add(self, step: int, metrics: Mapping[str, float], timestamp_ms: int) -> None:
        """Take one step's metrics; non-finite values are left out (divergence is the loop's business)."""
        if self.empty:
            self.first_step = step
        self.last_step, self.timestamp_ms, self.last = step, timestamp_ms, {}
        for name, value in metrics.items():
            v = float(value)
            if not math.isfinite(v):
                continue
            self.last[name] = v
            self.sums[name] = self.sums.get(name, 0.0) + v
            self.counts[name] = self.counts.get(name, 0) + 1
            self.mins[name] = min(self.mins.get(name, v), v)
            self.maxs[name] = max(self.maxs.get(name, v), v)

    def point(self, *, exact: bool = False) -> Point | None:
        """The window as one point (None when empty): means, or with `exact` the last step's values;
        min/max of the spread metrics when the window holds more than one step."""
        if self.empty:
            return None
        values: dict[str, float] = {}
        for name, n in self.counts.items():
            values[name] = self.last[name] if exact and name in self.last else self.sums[name] / n
            if has_spread(name) and self.steps > 1:
                lo, hi = spread_names(name)
                values[lo], values[hi] = self.mins[name], self.maxs[name]
        return Point(self.last_step, self.timestamp_ms, values)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("first_step", "last_step", "timestamp_ms", "sums", "counts", "mins",
                                                "maxs", "last")}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Window:
        return cls(**{k: data[k] for k in ("first_step", "last_step", "timestamp_ms", "sums", "counts", "mins",
                                           "maxs", "last")})
