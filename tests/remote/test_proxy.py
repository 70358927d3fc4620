"""The service proxy: haproxy.cfg rendering and validation, then a real
HAProxy on 127.0.0.1 in front of real HTTP replicas on loopback ports."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest

from bench.harness.proxy_servers import LOOPBACK, Haproxy, Load, ReplicaServer, free_port, get
from workers.drivers.guest.proxy_config import (
    HealthCheck,
    ProxyConfig,
    ProxyConfigError,
    Replica,
    Service,
    haproxy_argv,
    render_config,
)
from workers.drivers.guest.proxy_runtime import (
    ProxyTimeout,
    RuntimeAPI,
    RuntimeCommandFailed,
    admit_replicas,
    drain_replicas,
    roll_replica,
)

# Fast checks keep the tests at a few seconds: down after 2 failures 100 ms apart.
FAST = HealthCheck(path="/healthz", interval_ms=100, timeout_ms=500, fall=2, rise=2)


def replica_of(server: ReplicaServer, **changes) -> Replica:
    return dataclasses.replace(Replica(server.name, LOOPBACK, server.port), **changes)


@pytest.fixture
def servers():
    started: list[ReplicaServer] = []

    def start(*names: str) -> list[ReplicaServer]:
        new = [ReplicaServer(name) for name in names]
        started.extend(new)
        return new

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def haproxy():
    proxy = Haproxy()
    yield proxy
    proxy.stop()


def start_service(haproxy: Haproxy, replicas: list[ReplicaServer]) -> Service:
    service = Service("api", free_port(), tuple(map(replica_of, replicas)), FAST)
    haproxy.start(haproxy.config([service]))
    haproxy.api.wait_until(
        "api", lambda s: all(x.up for x in s.values()), 10, "replicas did not come up"
    )
    return service


# --- rendering ----------------------------------------------------------------


def sample_config(**overrides) -> ProxyConfig:
    values = dict(
        services=(
            Service(
                "api",
                8080,
                (Replica("api-1", "10.77.1.10", 32001), Replica("api-2", "10.77.1.11", 32002)),
                HealthCheck(path="/healthz", interval_ms=2000, fall=3, rise=2),
            ),
            Service("db", 5432, (Replica("db-1", "10.77.1.12", 5432),), protocol="tcp"),
        ),
        bind_addresses=("10.77.1.10", "172.17.0.1"),
        runtime_socket="/var/lib/strata-proxy/admin.sock",
        state_file="/var/lib/strata-proxy/server-state",
    )
    values.update(overrides)
    return ProxyConfig(**values)


def test_rendered_config_has_health_checks_runtime_api_and_master_worker():
    text = render_config(sample_config())
    lines = [line.strip() for line in text.splitlines()]
    assert "master-worker" in lines
    socket = "/var/lib/strata-proxy/admin.sock"
    assert f"stats socket {socket} mode 600 level admin expose-fd listeners" in lines
    assert "load-server-state-from-file global" in lines
    api = text[text.index("listen api") : text.index("listen db")]
    assert "bind 10.77.1.10:8080" in api and "bind 172.17.0.1:8080" in api
    assert "option httpchk GET /healthz" in api
    assert "retry-on conn-failure empty-response" in api
    assert "http-request disable-l7-retry unless METH_GET || METH_OPTIONS" in api
    assert "server api-1 10.77.1.10:32001 check inter 2000 fall 3 rise 2" in api
    db = text[text.index("listen db") :]
    assert "mode tcp" in db and "httpchk" not in db
    assert "server db-1 10.77.1.12:5432 check inter 2000 fall 3 rise 2" in db


def test_haproxy_accepts_every_rendered_shape(haproxy):
    drain_and_maint = sample_config().services[0]
    drain_and_maint = dataclasses.replace(
        drain_and_maint,
        replicas=(
            dataclasses.replace(drain_and_maint.replicas[0], state="drain"),
            dataclasses.replace(drain_and_maint.replicas[1], state="maint"),
        ),
    )
    for config in (
        sample_config(),
        sample_config(services=()),
        sample_config(services=(Service("empty", 9000, ()),)),
        sample_config(services=(drain_and_maint,)),
    ):
        checked = haproxy.check(haproxy.config(config.services))
        assert checked.returncode == 0, checked.stderr
    assert haproxy_argv("/etc/haproxy/haproxy.cfg", "/run/haproxy-master.sock") == [
        "haproxy", "-W", "-f", "/etc/haproxy/haproxy.cfg", "-S", "/run/haproxy-master.sock"
    ]  # fmt: skip
    # In the background, as a guest runs it: the master writes its pid.
    assert haproxy_argv("/p/haproxy.cfg", "/p/master.sock", "/p/haproxy.pid")[-3:] == [
        "-D", "-p", "/p/haproxy.pid"
    ]  # fmt: skip


def service_with(**changes) -> dict:
    return {"services": (dataclasses.replace(sample_config().services[0], **changes),)}


def replica_with(**changes) -> dict:
    api = sample_config().services[0]
    return service_with(replicas=(dataclasses.replace(api.replicas[0], **changes),))


def health_with(**changes) -> dict:
    return service_with(health=dataclasses.replace(FAST, **changes))


HOSTILE = [
    ("services[0].name", service_with(name="api\n    server evil 1.2.3.4:80")),
    ("services[0].name", service_with(name="API")),
    ("services[0].name", service_with(name="")),
    ("services[0].listen_port", service_with(listen_port=0)),
    ("services[0].listen_port", service_with(listen_port=True)),
    ("services[0].protocol", service_with(protocol="udp")),
    ("services[0].health", service_with(health="/healthz")),
    ("services[0].replicas", service_with(replicas=[])),
    ("services[0].replicas[0]", service_with(replicas=(("a", "10.0.0.1", 80),))),
    ("services[0].health.path", health_with(path="healthz")),
    ("services[0].health.path", health_with(path="/health check")),
    ("services[0].health.path", health_with(path="/h\nserver x 1.1.1.1:1")),
    ("services[0].health.path", health_with(path="/h#x")),
    ("services[0].health.path", health_with(path="/h%0a")),
    ("services[0].health.path", health_with(path="/h?x=1")),
    ("services[0].health.interval_ms", health_with(interval_ms=0)),
    ("services[0].health.timeout_ms", health_with(timeout_ms=10**9)),
    ("services[0].health.fall", health_with(fall=0)),
    ("services[0].health.rise", health_with(rise="2")),
    ("services[0].replicas[0].name", replica_with(name="api 1")),
    ("services[0].replicas[0].name", replica_with(name="api/1")),
    ("services[0].replicas[0].address", replica_with(address="localhost")),
    ("services[0].replicas[0].address", replica_with(address="10.77.1.10 backup")),
    ("services[0].replicas[0].address", replica_with(address="::1")),
    ("services[0].replicas[0].port", replica_with(port=70000)),
    ("services[0].replicas[0].state", replica_with(state="backup")),
    ("services[0].replicas[1].name", service_with(
        replicas=(Replica("a", "10.77.1.10", 1), Replica("a", "10.77.1.11", 1)))),
    ("services[1].name", {"services": sample_config().services[:1] * 2}),
    ("services[1].listen_port", {"services": (
        sample_config().services[0],
        dataclasses.replace(sample_config().services[1], listen_port=8080))}),
    ("services", {"services": [sample_config().services[0]]}),
    ("bind_addresses", {"bind_addresses": ()}),
    ("bind_addresses", {"bind_addresses": "10.77.1.10"}),
    ("bind_addresses[0]", {"bind_addresses": ("10.77.1.10:80",)}),
    ("runtime_socket", {"runtime_socket": "run/admin.sock"}),
    ("runtime_socket", {"runtime_socket": "/run/admin sock level admin"}),
    ("runtime_socket", {"runtime_socket": "/run/../etc/passwd"}),
    ("state_file", {"state_file": "/var/lib/haproxy//state"}),
    ("max_connections", {"max_connections": 0}),
    ("client_timeout_ms", {"client_timeout_ms": -1}),
]  # fmt: skip


@pytest.mark.parametrize(("field", "overrides"), HOSTILE)
def test_hostile_values_are_refused_naming_the_field(field, overrides):
    with pytest.raises(ProxyConfigError) as refused:
        render_config(sample_config(**overrides))
    assert refused.value.field == field


def test_runtime_commands_refuse_hostile_names_before_sending():
    sent: list[str] = []
    api = RuntimeAPI(lambda command: sent.append(command) or "")
    for call in (
        lambda: api.set_state("api", "a1; shutdown sessions server api/a2", "drain"),
        lambda: api.set_state("api", "a1", "ready\nshutdown frontend api"),
        lambda: api.servers("api\nshow info"),
        lambda: api.add_replica("api", Replica("a2", "10.77.1.10 weight 0", 80), FAST),
        lambda: api.hold_back("api", "a2\nshutdown sessions server api/a1"),
        lambda: api.admit_replica("api", "a2 weight 100", timeout=1),
        lambda: api.remove_replica("api/a1", "a1"),
    ):
        with pytest.raises(ProxyConfigError):
            call()
    assert sent == []


def test_runtime_errors_are_raised():
    api = RuntimeAPI(lambda command: "No such server.\n")
    with pytest.raises(RuntimeCommandFailed, match="No such server"):
        api.set_state("api", "a1", "drain")


# --- a real HAProxy on loopback ---------------------------------------------------


def test_traffic_spreads_over_every_healthy_replica(haproxy, servers):
    replicas = servers("a1", "a2", "a3")
    service = start_service(haproxy, replicas)
    answers = [get(service.listen_port) for _ in range(30)]
    assert all(status == 200 for status, _ in answers)
    # Round robin: exactly a third each.
    assert {name: [b for _, b in answers].count(name) for name in ("a1", "a2", "a3")} == {
        "a1": 10,
        "a2": 10,
        "a3": 10,
    }


def test_a_replica_failing_its_health_check_stops_receiving_traffic(haproxy, servers):
    a1, a2, a3 = servers("a1", "a2", "a3")
    service = start_service(haproxy, [a1, a2, a3])
    a2.healthy = False
    haproxy.api.wait_until("api", lambda s: s["a2"].status == "DOWN", 5, "a2 not marked down")
    served_before = a2.served
    answers = [get(service.listen_port) for _ in range(20)]
    assert {body for _, body in answers} == {"a1", "a3"}
    assert a2.served == served_before
    # Healthy again: back in rotation after ``rise`` good checks.
    a2.healthy = True
    haproxy.api.wait_until("api", lambda s: s["a2"].up, 5, "a2 not back up")
    assert "a2" in {get(service.listen_port)[1] for _ in range(6)}


def test_a_replica_that_dies_under_load_costs_no_request(haproxy, servers):
    """Requests reaching a dying replica before its check fails are retried
    on another one (retry-on conn-failure empty-response), so a client
    sending GETs sees nothing."""
    a1, a2 = servers("a1", "a2")
    service = start_service(haproxy, [a1, a2])
    with Load(service.listen_port, rate=20) as load:
        time.sleep(0.5)
        a2.stop()
        haproxy.api.wait_until("api", lambda s: s["a2"].status == "DOWN", 5, "a2 not down")
        time.sleep(0.5)
    assert load.result.sent >= 15
    assert load.result.failed == 0, load.result.errors


def test_rollout_under_load_loses_no_request(haproxy, servers):
    """Add the new replica, wait until it is UP, drain and remove the old ones,
    while a client sends 20 requests/s on new connections."""
    old1, old2, new = servers("v1-a", "v1-b", "v2-a")
    service = start_service(haproxy, [old1, old2])
    with Load(service.listen_port, rate=20) as load:
        time.sleep(1.0)
        roll_replica(haproxy.api, service, replica_of(new), ["v1-a", "v1-b"])
        time.sleep(1.0)
    result = load.result
    assert result.sent >= 35 and result.failed == 0, result.errors
    assert set(result.answered_by) == {"v1-a", "v1-b", "v2-a"}
    assert list(haproxy.api.servers("api")) == ["v2-a"]
    assert {get(service.listen_port)[1] for _ in range(5)} == {"v2-a"}


def test_drain_waits_for_the_request_in_flight(haproxy, servers):
    old, new = servers("v1", "v2")
    service = start_service(haproxy, [old])
    in_flight: list[tuple[int, str]] = []
    slow = threading.Thread(
        target=lambda: in_flight.append(get(service.listen_port, "/slow", timeout=5))
    )
    slow.start()
    haproxy.api.wait_until("api", lambda s: s["v1"].sessions == 1, 5, "slow request not seen")
    started = time.monotonic()
    roll_replica(haproxy.api, service, replica_of(new), ["v1"])
    slow.join(timeout=5)
    assert in_flight == [(200, "v1")]
    assert time.monotonic() - started >= 0.3, "the old replica was removed before it drained"
    assert list(haproxy.api.servers("api")) == ["v2"]


def test_a_new_replica_that_never_gets_healthy_is_rolled_back(haproxy, servers):
    old, new = servers("v1", "v2")
    new.healthy = False
    service = start_service(haproxy, [old])
    with Load(service.listen_port, rate=20) as load:
        with pytest.raises(ProxyTimeout, match="v2 did not pass its health check"):
            roll_replica(haproxy.api, service, replica_of(new), ["v1"], health_timeout=1.0)
    assert load.result.failed == 0 and set(load.result.answered_by) == {"v1"}
    assert list(haproxy.api.servers("api")) == ["v1"]


def test_adding_a_replica_twice_is_refused_by_haproxy(haproxy, servers):
    old, new = servers("v1", "v2")
    service = start_service(haproxy, [old])
    haproxy.api.add_replica("api", replica_of(new), service.health)
    with pytest.raises(RuntimeCommandFailed, match="v2"):
        haproxy.api.add_replica("api", replica_of(new), service.health)


def test_hitless_reload_under_load_loses_no_request(haproxy, servers):
    """The other path: write the new config and reload the master; the old
    worker finishes its requests while the new one takes the socket."""
    old, new = servers("v1", "v2")
    service = start_service(haproxy, [old])
    with Load(service.listen_port, rate=20) as load:
        time.sleep(0.5)
        both = dataclasses.replace(service, replicas=(replica_of(old), replica_of(new)))
        assert haproxy.reload(haproxy.config([both])).reloads == 1
        haproxy.api.wait_until("api", lambda s: s.get("v2") and s["v2"].up, 5, "v2 not up")
        only_new = dataclasses.replace(service, replicas=(replica_of(new),))
        assert haproxy.reload(haproxy.config([only_new])).reloads == 2
        assert list(haproxy.api.servers("api")) == ["v2"]
        time.sleep(0.5)
    assert load.result.sent >= 20 and load.result.failed == 0, load.result.errors
    assert {get(service.listen_port)[1] for _ in range(4)} == {"v2"}


def test_a_refused_reload_is_reported_and_the_old_workers_serve_again(haproxy, servers):
    """A new service on a port another process holds: the new worker cannot
    bind, HAProxy keeps the old one and the reload raises instead of
    pretending. Measured on HAProxy 2.6: the old worker pauses its listeners
    for the attempt, so connections are refused for about 2 s; this is why
    replicas change through the runtime API and listen ports are Strata's."""
    (a1,) = servers("a1")
    service = start_service(haproxy, [a1])
    squatter = Service("web", a1.port, (replica_of(a1),), FAST)
    with pytest.raises(RuntimeCommandFailed, match="refused the new configuration"):
        haproxy.reload(haproxy.config([service, squatter]))
    assert haproxy.master.state().failed_reloads == 1
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if get(service.listen_port) == (200, "a1"):
                break
        except OSError:
            time.sleep(0.1)
    with Load(service.listen_port, rate=20, max_seconds=5) as load:
        time.sleep(1.0)
    assert load.result.sent >= 15 and load.result.failed == 0, load.result.errors
    assert set(load.result.answered_by) == {"a1"}


def test_a_replica_added_live_takes_traffic_only_once_admitted(haproxy, servers):
    """Scaling out without a reload: HAProxy counts a new server as up before
    its first check, so add_replica holds it back until admit_replica."""
    a1, a2 = servers("a1", "a2")
    service = start_service(haproxy, [a1])
    a2.healthy = False
    haproxy.api.add_replica("api", replica_of(a2), service.health)
    assert {get(service.listen_port)[1] for _ in range(6)} == {"a1"}
    with pytest.raises(ProxyTimeout):
        haproxy.api.admit_replica("api", "a2", timeout=0.5)
    a2.healthy = True
    haproxy.api.admit_replica("api", "a2", timeout=5)
    assert [get(service.listen_port)[1] for _ in range(4)].count("a2") == 2


def test_a_rollout_rerun_after_a_crash_halfway_completes(haproxy, servers):
    """A job retried after its worker died: once after the add (server still in
    maintenance), once after the admit; a third run after success changes nothing."""
    old, new = servers("v1", "v2")
    service = start_service(haproxy, [old])
    target = f"api/{new.name}"
    assert haproxy.api._send(f"add server {target} {LOOPBACK}:{new.port} check weight 0").strip()
    assert haproxy.api.servers("api")["v2"].status == "MAINT"
    with Load(service.listen_port, rate=20, max_seconds=10) as load:
        roll_replica(haproxy.api, service, replica_of(new), ["v1"])
        roll_replica(haproxy.api, service, replica_of(new), ["v1"])
    assert load.result.failed == 0, load.result.errors
    assert list(haproxy.api.servers("api")) == ["v2"]
    assert haproxy.api.remove_replica("api", "v1") is False


def test_a_drain_that_runs_out_of_time_keeps_the_replica_until_forced(haproxy, servers):
    """A request longer than the drain timeout: the rollout stops with the old
    replica drained (no new traffic) but kept, until removed with force."""
    old, new = servers("v1", "v2")
    old.slow_seconds = 3.0
    service = start_service(haproxy, [old])
    in_flight: list[object] = []

    def slow_request() -> None:
        try:
            in_flight.append(get(service.listen_port, "/slow", timeout=5))
        except OSError as error:
            in_flight.append(error)

    slow = threading.Thread(target=slow_request)
    slow.start()
    haproxy.api.wait_until("api", lambda s: s["v1"].sessions == 1, 5, "slow request not seen")
    with pytest.raises(ProxyTimeout, match="v1 did not drain"):
        roll_replica(haproxy.api, service, replica_of(new), ["v1"], drain_timeout=0.3)
    assert haproxy.api.servers("api")["v1"].status == "DRAIN"
    assert {get(service.listen_port)[1] for _ in range(4)} == {"v2"}
    with pytest.raises(RuntimeCommandFailed):
        haproxy.api.remove_replica("api", "v1")
    assert haproxy.api.remove_replica("api", "v1", force=True) is True
    slow.join(timeout=5)
    assert list(haproxy.api.servers("api")) == ["v2"]
    # The cut GET was replayed on the new replica (retry-on empty-response),
    # so even the forced removal cost this client nothing.
    assert in_flight == [(200, "v2")]


def test_new_replicas_are_admitted_together_or_not_at_all(haproxy, servers):
    """Two new replicas, one never healthy: both go, the old one serves on."""
    old, good, bad = servers("v1", "v2-a", "v2-b")
    bad.healthy = False
    service = start_service(haproxy, [old])
    with Load(service.listen_port, rate=20) as load:
        with pytest.raises(ProxyTimeout, match="v2-b did not pass its health check"):
            admit_replicas(haproxy.api, service, [replica_of(good), replica_of(bad)], 1.0)
    assert list(haproxy.api.servers("api")) == ["v1"]
    assert load.result.failed == 0 and set(load.result.answered_by) == {"v1"}


def test_a_forced_drain_cuts_the_slow_request_and_replays_it(haproxy, servers):
    old, new = servers("v1", "v2")
    old.slow_seconds = 3.0
    service = start_service(haproxy, [old])
    in_flight: list[tuple[int, str]] = []
    slow = threading.Thread(
        target=lambda: in_flight.append(get(service.listen_port, "/slow", timeout=5))
    )
    slow.start()
    haproxy.api.wait_until("api", lambda s: s["v1"].sessions == 1, 5, "slow request not seen")
    admit_replicas(haproxy.api, service, [replica_of(new)], 5)
    started = time.monotonic()
    drain_replicas(haproxy.api, service, ["v1"], drain_timeout=0.3, force=True)
    assert time.monotonic() - started < 2, "the drain waited for the slow request"
    slow.join(timeout=5)
    assert list(haproxy.api.servers("api")) == ["v2"]
    assert in_flight == [(200, "v2")]
