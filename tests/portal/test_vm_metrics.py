"""The VM page's CPU and memory graphs, and the polyline maths behind them."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from cloud.models import VMSample
from cloud.selectors.charts import chart_segments

# --- the pure maths -----------------------------------------------------------------


def test_points_are_scaled_onto_the_box_with_y_flipped():
    segments = chart_segments(
        [(0, 0), (1800, 50), (3600, 100)], x_span=3600, y_max=100, gap=1800, width=300, height=80
    )
    assert segments == ["0.0,80.0 150.0,40.0 300.0,0.0"]


def test_one_point_is_drawn_as_a_dot():
    assert chart_segments([(900, 25)], x_span=3600, y_max=100, gap=600) == ["75.0,60.0 75.0,60.0"]


def test_a_flat_series_is_a_horizontal_line_even_at_zero():
    flat = chart_segments([(0, 7), (60, 7), (120, 7)], x_span=120, y_max=7, gap=600)
    assert flat == ["0.0,0.0 150.0,0.0 300.0,0.0"]
    zero = chart_segments([(0, 0), (60, 0)], x_span=120, y_max=0, gap=600)
    assert zero == ["0.0,80.0 150.0,80.0"]


def test_a_gap_in_sampling_breaks_the_line():
    points = [(0, 10), (60, 10), (1200, 20), (1260, 20), (3600, 30)]
    segments = chart_segments(points, x_span=3600, y_max=40, gap=150)
    assert len(segments) == 3
    assert segments[0] == "0.0,60.0 5.0,60.0"
    assert segments[2] == "300.0,20.0 300.0,20.0"  # a lone last point


def test_values_outside_the_box_are_clamped_and_no_points_is_no_line():
    assert chart_segments([(-10, -5), (7200, 500)], x_span=3600, y_max=100, gap=10**6) == [
        "0.0,80.0 300.0,0.0"
    ]
    assert chart_segments([], x_span=3600, y_max=100, gap=60) == []


# --- the page -----------------------------------------------------------------------


@pytest.mark.django_db
def test_vm_page_draws_cpu_and_memory_graphs(world, client_as):
    vm = world["vm"]
    now = timezone.now()
    VMSample.objects.bulk_create(
        VMSample(
            vm=vm,
            at=now - timedelta(minutes=minutes),
            cpu_percent=cpu,
            cpu_time_ns=10**9 * (100 - minutes),
            memory_mib=memory,
        )
        for minutes, cpu, memory in [(90, 99, 999), (3, 10.0, 400), (2, 40.0, 420), (1, 25.5, 410)]
    )
    url = reverse("portal:vm", args=["alpha", vm.pk])
    html = client_as(world["viewer"]).get(url).content.decode()
    assert html.count("<polyline") == 2
    assert 'role="img" aria-label="CPU over the last hour: now 25.5 %' in html
    assert 'aria-label="Memory over the last hour: now 410 MiB, lowest 400, highest 420"' in html
    assert "60 min ago" in html and ">now<" in html
    assert "999" not in html  # the sample older than an hour is not drawn
    assert "Not enough samples" not in html
    assert f'hx-get="{url}"' in html and 'hx-select="#vm-metrics"' in html


@pytest.mark.django_db
def test_vm_page_says_so_under_two_samples(world, client_as):
    vm = world["vm"]
    url = reverse("portal:vm", args=["alpha", vm.pk])
    html = client_as(world["viewer"]).get(url).content.decode()
    assert "Not enough samples yet" in html and "<polyline" not in html
    VMSample.objects.create(vm=vm, cpu_percent=5, cpu_time_ns=1, memory_mib=100)
    html = client_as(world["viewer"]).get(url).content.decode()
    assert "Not enough samples yet" in html and "<polyline" not in html


@pytest.mark.django_db
def test_another_teams_samples_never_reach_the_page(world, client_as):
    from cloud.models import VirtualMachine

    theirs = VirtualMachine.objects.exclude(environment__team=world["team"]).first()
    for minutes in (2, 1):
        VMSample.objects.create(
            vm=theirs,
            at=timezone.now() - timedelta(minutes=minutes),
            cpu_percent=1,
            cpu_time_ns=1,
            memory_mib=1,
        )
    url = reverse("portal:vm", args=["beta", theirs.pk])
    assert client_as(world["viewer"]).get(url).status_code == 404
