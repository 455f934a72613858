"""The dashboard's charts: stacked bars of a signal's buckets as inline SVG, drawn on the server
(no script, no CDN). Pure functions of the buckets: no query, no request."""

from __future__ import annotations

from dataclasses import dataclass

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from events_app.dashboard.selectors import Bucket

SLOT = 10  # px per bucket
BAR = 8
PLOT_HEIGHT = 60
TOP = 12  # room for the max label
BOTTOM = 14  # room for the time labels
SEGMENTS = ("completed", "failed", "queued")  # bottom to top; rejected goes on top of them


@dataclass(frozen=True)
class Rect:
    x: int
    y: float
    height: float
    css: str


@dataclass(frozen=True)
class Column:
    x: int
    title: str
    rects: list[Rect]


@dataclass(frozen=True)
class Chart:
    label: str
    width: int
    height: int
    baseline: int
    peak: int
    columns: list[Column]
    first_label: str
    last_label: str


def chart_of(buckets: list[Bucket], *, hourly: bool) -> Chart:
    """Stacked bars, one per bucket: completed, failed and queued (together: ingested), then
    rejected on top. One scale per chart; the peak is labelled."""
    peak = max((b.ingested + (b.rejected or 0) for b in buckets), default=0)
    scale = PLOT_HEIGHT / peak if peak else 0.0
    baseline = TOP + PLOT_HEIGHT
    label_format = "%H:%M" if hourly else "%b %d"
    columns = []
    for index, bucket in enumerate(buckets):
        x = index * SLOT + 1
        y = float(baseline)
        rects = []
        parts = [(css, getattr(bucket, css)) for css in SEGMENTS]
        parts.append(("rejected", bucket.rejected or 0))
        for css, value in parts:
            if value:
                height = value * scale
                y -= height
                rects.append(Rect(x=x, y=round(y, 2), height=round(height, 2), css=css))
        when = bucket.start.strftime("%Y-%m-%d %H:00" if hourly else "%Y-%m-%d")
        rejected = "n/a" if bucket.rejected is None else str(bucket.rejected)
        title = (
            f"{when} UTC: ingested {bucket.ingested} (completed {bucket.completed}, "
            f"failed {bucket.failed}, queued {bucket.queued}), rejected {rejected}"
        )
        columns.append(Column(x=x, title=title, rects=rects))
    return Chart(
        label="per hour, last 24 h" if hourly else "per day, last 30 days",
        width=len(buckets) * SLOT + 2,
        height=baseline + BOTTOM,
        baseline=baseline,
        peak=peak,
        columns=columns,
        first_label=buckets[0].start.strftime(label_format) if buckets else "",
        last_label=buckets[-1].start.strftime(label_format) if buckets else "",
    )


def chart_svg(chart: Chart, *, name: str) -> SafeString:
    """The chart as inline SVG markup. Built here rather than in the template: a template loop
    over ~2,000 rects per page costs more than every query of the page together."""
    parts = [
        f'<svg class="chart" width="{chart.width}" height="{chart.height}"'
        f' viewBox="0 0 {chart.width} {chart.height}" role="img"'
        f' aria-label="{escape(name)}: {escape(chart.label)}, peak {chart.peak}">'
        f'<text x="0" y="9">{chart.peak}</text>'
    ]
    for column in chart.columns:
        parts.append(
            f"<g><title>{escape(column.title)}</title>"
            f'<rect class="hit" x="{column.x}" y="{TOP}" width="{BAR}" height="{PLOT_HEIGHT}"/>'
        )
        parts.extend(
            f'<rect class="{rect.css}" x="{rect.x}" y="{rect.y}" width="{BAR}"'
            f' height="{rect.height}"/>'
            for rect in column.rects
        )
        parts.append("</g>")
    parts.append(
        f'<line class="axis" x1="0" y1="{chart.baseline}" x2="{chart.width}"'
        f' y2="{chart.baseline}"/>'
        f'<text x="0" y="{chart.height}">{escape(chart.first_label)}</text>'
        f'<text x="{chart.width}" y="{chart.height}" text-anchor="end">'
        f"{escape(chart.last_label)}</text></svg>"
    )
    # Every interpolated text above is escaped; the rest are numbers and fixed class names.
    return mark_safe("".join(parts))  # noqa: S308
