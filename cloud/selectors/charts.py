"""The VM's CPU and memory over the last hour, drawn as SVG polylines."""

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from cloud.models import VirtualMachine, VMSample

METRICS_WINDOW = timedelta(hours=1)
CHART_WIDTH, CHART_HEIGHT = 300, 80


def chart_segments(
    points: list[tuple[float, float]],
    *,
    x_span: float,
    y_max: float,
    gap: float,
    width: float = CHART_WIDTH,
    height: float = CHART_HEIGHT,
) -> list[str]:
    """SVG ``polyline`` point lists for a time series, one per unbroken run.

    ``points`` are (x, y) with x in seconds from the window's start, sorted;
    x maps 0..x_span onto 0..width and y maps 0..y_max onto height..0 (SVG's
    y grows downwards).  Two points further apart than ``gap`` seconds are not
    joined: the VM was off, or nothing sampled it.  A run of one point is
    returned as a zero-length line, which a round line cap draws as a dot.
    """
    if not points:
        return []
    x_span = x_span if x_span > 0 else 1.0
    y_max = y_max if y_max > 0 else 1.0
    segments: list[list[str]] = []
    last_x = None
    for x, y in points:
        px = min(max(x / x_span, 0.0), 1.0) * width
        py = height - min(max(y / y_max, 0.0), 1.0) * height
        point = f"{px:.1f},{py:.1f}"
        if last_x is None or x - last_x > gap:
            segments.append([point])
        else:
            segments[-1].append(point)
        last_x = x
    return [" ".join(run if len(run) > 1 else run * 2) for run in segments]


@dataclass
class Chart:
    label: str
    unit: str
    latest: float
    low: float
    peak: float
    axis_max: float
    segments: list[str]

    @property
    def summary(self) -> str:
        return (
            f"{self.label} over the last hour: now {self.latest:g} {self.unit}, "
            f"lowest {self.low:g}, highest {self.peak:g}"
        )


def vm_charts(team, vm: VirtualMachine, now: datetime | None = None) -> list[Chart]:
    """CPU % and memory MiB of the VM over the last hour; empty under 2 samples."""
    now = now or timezone.now()
    start = now - METRICS_WINDOW
    rows = list(
        VMSample.objects.for_team(team)
        .filter(vm=vm, at__gte=start, at__lte=now)
        .order_by("at")
        .values_list("at", "cpu_percent", "memory_mib")
    )
    if len(rows) < 2:
        return []
    # Missing more than two beats of the reconciler is a gap in the line.
    gap = max(settings.STRATA_RECONCILE_SECONDS * 2.5, 60)
    span = METRICS_WINDOW.total_seconds()
    charts = []
    for label, unit, column, axis_floor in (("CPU", "%", 1, 1.0), ("Memory", "MiB", 2, 1.0)):
        values = [round(float(row[column]), 1) for row in rows]
        axis_max = max(max(values), axis_floor)
        if unit == "%":
            axis_max = min(max(axis_max, 10.0), 100.0)
        points = [
            ((row[0] - start).total_seconds(), v) for row, v in zip(rows, values, strict=True)
        ]
        charts.append(
            Chart(
                label=label,
                unit=unit,
                latest=values[-1],
                low=min(values),
                peak=max(values),
                axis_max=axis_max,
                segments=chart_segments(points, x_span=span, y_max=axis_max, gap=gap),
            )
        )
    return charts
