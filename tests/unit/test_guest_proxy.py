"""The guest proxy's configuration, derived from container labels (no I/O)."""

import json

import pytest

from workers.drivers.guest import GuestProxy, HealthCheck, ServiceSpec
from workers.drivers.guest.containers import ContainerInfo, proxy_label
from workers.drivers.guest.proxy_config import ProxyConfigError, render_config


def spec(**changes) -> ServiceSpec:
    values = dict(
        name="web",
        image="alpha/web:1",
        service_id="7",
        environment_id="3",
        ports={8080: 80, 8443: 443},
        health=HealthCheck.http("/healthz", 80, interval=0.5, timeout=1),
    )
    return ServiceSpec(**{**values, **changes})


def container(release="v1", replica=0, label=None, ports=None) -> ContainerInfo:
    return ContainerInfo(
        id=f"id-{release}-{replica}",
        name=f"strata-web-{release}-serving-{replica}",
        state="running",
        image="sha256:ab",
        service_id="7",
        release_id=release,
        environment_id="3",
        role="serving",
        replica=replica,
        loopback_ports={80: 32000 + replica, 443: 33000 + replica} if ports is None else ports,
        proxy=proxy_label(spec()) if label is None else label,
    )


def test_one_listen_per_published_port_holding_every_replica():
    config = GuestProxy("/tmp/p", "127.0.0.1").config(
        [container("v1", 1), container("v1", 0), container("v2", 0)]
    )
    assert [(s.name, s.listen_port, s.protocol) for s in config.services] == [
        ("web-8080", 8080, "http"),
        ("web-8443", 8443, "tcp"),  # the HTTP check is on port 80: a connect check here
    ]
    http, tcp = config.services
    assert [(r.name, r.address, r.port) for r in http.replicas] == [
        ("v1-0", "127.0.0.1", 32000),
        ("v1-1", "127.0.0.1", 32001),
        ("v2-0", "127.0.0.1", 32000),
    ]
    assert (http.health.path, http.health.interval_ms, http.health.timeout_ms) == (
        "/healthz",
        500,
        1000,
    )
    text = render_config(config)
    assert "bind 127.0.0.1:8080" in text and "stats socket /tmp/p/admin.sock" in text


def test_the_listening_spec_opens_its_ports_before_any_replica_runs():
    config = GuestProxy("/tmp/p", "127.0.0.1").config([], listening=spec(ports={9000: 80}))
    assert [(s.name, s.replicas) for s in config.services] == [("web-9000", ())]


def test_a_container_not_published_on_loopback_is_no_replica():
    config = GuestProxy("/tmp/p", "127.0.0.1").config([container(ports={})])
    assert all(service.replicas == () for service in config.services)


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("directory", {"directory": "relative/dir"}),
        ("directory", {"directory": "/var/lib/../etc"}),
        ("directory", {"directory": "/tmp/a b"}),
        ("publish_address", {"publish_address": "localhost"}),
        ("publish_address", {"publish_address": "0.0.0.0 ssl"}),
    ],
)
def test_bad_locations_are_refused_naming_the_field(field, kwargs):
    with pytest.raises(ProxyConfigError) as refused:
        GuestProxy(**kwargs)
    assert refused.value.field == field


@pytest.mark.parametrize(
    ("field", "label"),
    [
        ("labels", "not json"),
        ("labels", json.dumps({"ports": [[80, 80]]})),
        ("labels.service", json.dumps({"service": "web\nserver x", "ports": [], "check": None})),
        (
            "services[0].listen_port",
            json.dumps({"service": "web", "ports": [[0, 80]], "check": None}),
        ),
        (
            "services[0].health.path",
            json.dumps(
                {
                    "service": "web",
                    "ports": [[8080, 80]],
                    "check": {
                        "http_path": "/x\n    server evil 1.2.3.4:80",
                        "port": 80,
                        "interval_ms": 100,
                        "timeout_ms": 100,
                    },
                }
            ),
        ),
    ],
)
def test_a_tampered_label_is_refused_not_written(field, label):
    with pytest.raises(ProxyConfigError) as refused:
        GuestProxy("/tmp/p", "127.0.0.1").config([container(label=label)])
    assert refused.value.field == field


def test_a_bad_setting_is_refused_naming_it(settings):
    from workers.jobs.adapters import guest_proxy

    settings.STRATA_GUEST_PROXY_DIR = "var/lib/strata-proxy"
    with pytest.raises(ProxyConfigError) as refused:
        guest_proxy()
    assert refused.value.field == "directory"
    settings.STRATA_GUEST_PROXY_DIR = ""
    assert guest_proxy() == GuestProxy()
