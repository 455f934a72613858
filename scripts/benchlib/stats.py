"""Percentiles, slopes, and the lines every report opens with."""

from __future__ import annotations


def percentile(values: list[float], q: float) -> float:
    """The value below which a fraction `q` of `values` lies (nearest rank); 0.0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def slope(points: list[tuple[float, int]]) -> float:
    """Least-squares slope of (seconds, value) points; 0.0 for fewer than two."""
    if len(points) < 2:
        return 0.0
    mean_t = sum(t for t, _ in points) / len(points)
    mean_v = sum(v for _, v in points) / len(points)
    var = sum((t - mean_t) ** 2 for t, _ in points)
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / var if var else 0.0


def machine_lines(machine: dict[str, str], found: dict[str, str]) -> list[str]:
    """`Machine: ...` and `Software: ...` (machine.machine_description, machine.versions)."""
    return [
        f"Machine: {machine['cpu']}, {machine['memory']}, {machine['os']}, "
        f"Python {machine['python']}, load average at start {machine['load']}",
        "Software: " + ", ".join(f"{k} {v}" for k, v in found.items()),
    ]
