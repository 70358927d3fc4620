"""Finding 11: published ports and SSH forwards come from one allocator that
retries when another job took the port first."""

import threading

import pytest
from django.db import connection

from cloud.models import PortForward, VirtualMachine
from tests.foundation.factories import catalogue
from workers.jobs.adapters import forward_port

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def two_vms(make_team):
    from cloud.models import Environment

    team, _ = make_team("alpha")
    host, flavor, image = catalogue()
    env = Environment.objects.create(team=team, name="dev", kind="dev")
    return [
        VirtualMachine.objects.create(
            environment=env, name=name, host=host, flavor=flavor, image=image
        )
        for name in ("vm1", "vm2")
    ]


def test_a_port_taken_between_scan_and_insert_is_skipped(two_vms, monkeypatch):
    """Finding 11: another job records the same free port first; the allocator moves on."""
    vm1, vm2 = two_vms
    manager = type(PortForward.objects)
    real_create = manager.create
    raced = []

    def create_after_a_rival(self, **fields):
        if fields.get("vm") == vm1 and not raced:
            # Fault injection: the rival job commits the port between our scan and our insert.
            raced.append(fields["host_port"])
            rival = threading.Thread(target=commit_rival, args=({**fields, "vm": vm2},))
            rival.start()
            rival.join()
        return real_create(self, **fields)

    def commit_rival(fields):
        try:
            real_create(PortForward.objects, **fields)
        finally:
            connection.close()

    monkeypatch.setattr(manager, "create", create_after_a_rival)
    forward = forward_port(vm1, 8080)
    assert raced and forward.host_port != raced[0]
    assert PortForward.objects.get(vm=vm2).host_port == raced[0]
    assert forward_port(vm1, 8080) == forward  # once made, the same forward


def test_two_jobs_at_once_get_two_ports(two_vms):
    """Finding 11: two allocations on one host at the same moment never share a port."""
    barrier = threading.Barrier(2)
    results, errors = {}, []

    def allocate(vm):
        try:
            barrier.wait()
            results[vm.name] = forward_port(vm, 80).host_port
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=allocate, args=(vm,)) for vm in two_vms]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(set(results.values())) == 2
