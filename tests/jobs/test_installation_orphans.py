"""The orphan sweep of one installation next to another on the same libvirtd
(finding 9.14), on libvirt's test driver."""

from __future__ import annotations

import logging
import os
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from cloud.models import Environment, Orphan, VirtualMachine, VMState
from tenants.models import AuditEvent, Team
from tests.foundation.factories import catalogue
from tests.hypervisor.conftest import TEST_DATA_DIR, make_spec
from workers.drivers.hypervisor import Guests, Hypervisor, HypervisorError, NotFound
from workers.drivers.hypervisor.spec import NetworkSpec, default_dhcp_range
from workers.jobs.reconcile import reconcile_host

pytestmark = [pytest.mark.django_db, pytest.mark.libvirt]


@pytest.fixture
def drivers(settings):
    """Drivers of installations alpha and beta, and one that marks nothing (a
    Strata from before the marks), all on one libvirt, the reconciler's pool."""
    settings.STRATA_ORPHAN_GRACE_SECONDS = 3600
    made = {
        name: Hypervisor(
            "test:///default",
            TEST_DATA_DIR,
            pool_name=settings.STRATA_STORAGE_POOL,
            virt_type="qemu",
            installation_id=name,
        )
        for name in ("alpha", "beta", None)
    }
    for hv in made.values():
        hv.storage.ensure_pools()
    yield made
    for hv in made.values():
        hv.close()


def leave_orphans(hv: Hypervisor) -> set[str]:
    """A Strata VM's domain with its seed, and a lone seed of another VM, none of
    them with a record; returns their names."""
    in_domain, lone = (f"strata-{uuid.uuid4()}" for _ in range(2))
    hv.guests.define(make_spec(name=in_domain, uuid=in_domain.removeprefix("strata-"), vm_id="9"))
    pool = hv.host.connection.storagePoolLookupByName(hv.storage.pool_name)
    seeds = {os.path.basename(hv.storage.seed_path(name)) for name in (in_domain, lone)}
    for seed in seeds:
        pool.createXML(f"<volume><name>{seed}</name><capacity>1024</capacity></volume>", 0)
    return {in_domain, *seeds}


def present(hv: Hypervisor) -> set[str]:
    return {d.name for d in hv.guests.list()} | {v.name for v in hv.storage.list_volumes()}


def sweep(host_id: int) -> dict[str, int]:
    """Note orphans, then sweep as if the grace period had passed."""
    seen = reconcile_host(host_id)
    Orphan.objects.update(first_seen_at=timezone.now() - timedelta(hours=2))
    return {"seen": seen["orphans_seen"], "removed": reconcile_host(host_id)["orphans_removed"]}


def remove_all(hv: Hypervisor, names: set[str]) -> None:
    for domain in hv.guests.list():
        if domain.name in names:
            hv.guests.destroy(domain.name, domain.uuid)


def test_each_installation_sweeps_only_its_own(drivers, settings):
    """Finding 9.14: two installations on one libvirtd each remove only the orphans they
    made; an unmarked (pre-mark) domain or volume is nobody's to remove."""
    host = catalogue()[0]
    left = {name: leave_orphans(hv) for name, hv in drivers.items()}
    everything = set().union(*left.values())
    try:
        settings.STRATA_INSTALLATION_ID = "alpha"
        assert reconcile_host(host.pk)["orphans_seen"] == 3
        assert {o.name for o in Orphan.objects.all()} == left["alpha"]
        Orphan.objects.update(first_seen_at=timezone.now() - timedelta(hours=2))
        assert reconcile_host(host.pk)["orphans_removed"] == 3
        assert present(drivers["alpha"]) & everything == left["beta"] | left[None]

        settings.STRATA_INSTALLATION_ID = "beta"
        assert sweep(host.pk) == {"seen": 3, "removed": 3}
        assert present(drivers["beta"]) & everything == left[None]

        audited = AuditEvent.objects.filter(action="orphan.removed")
        assert {event.details["name"] for event in audited} == left["alpha"] | left["beta"]
        assert not Orphan.objects.exists()
    finally:
        remove_all(drivers[None], everything)


def test_an_orphan_not_named_like_a_vm_is_kept_logged_and_not_audited(drivers, settings, caplog):
    """Finding 9.14: an own orphan whose name is not a Strata VM's is left in place,
    logged as skipped, not audited as removed, and stays noted as an orphan."""
    settings.STRATA_INSTALLATION_ID = "alpha"
    host = catalogue()[0]
    odd = make_spec(name="hand-made", uuid=str(uuid.uuid4()), vm_id="9")
    drivers["alpha"].guests.define(odd)
    try:
        with caplog.at_level(logging.WARNING, logger="workers.jobs.reconcile"):
            assert sweep(host.pk) == {"seen": 1, "removed": 0}
        assert "hand-made" in present(drivers["alpha"])
        assert not AuditEvent.objects.filter(action="orphan.removed").exists()
        assert Orphan.objects.filter(kind="domain", name="hand-made").exists()
        assert "skipped orphan domain hand-made" in caplog.text
    finally:
        drivers["alpha"].guests.destroy("hand-made", odd.uuid)


def test_an_orphan_that_cannot_be_removed_is_not_audited(drivers, settings, caplog, monkeypatch):
    """Finding 9.14: a removal libvirt refuses is logged and retried next pass, never
    audited; the other orphans of the pass still go."""
    settings.STRATA_INSTALLATION_ID = "alpha"
    host = catalogue()[0]
    stuck, fine = (f"strata-{uuid.uuid4()}" for _ in range(2))
    for name in (stuck, fine):
        drivers["alpha"].guests.define(make_spec(name=name, uuid=name.removeprefix("strata-")))
    real_destroy = Guests.destroy

    def destroy(guests, vm_name, vm_uuid):
        if vm_name == stuck:
            raise HypervisorError("Requested operation is not valid: domain is locked")
        return real_destroy(guests, vm_name, vm_uuid)

    monkeypatch.setattr(Guests, "destroy", destroy)
    try:
        with caplog.at_level(logging.WARNING, logger="workers.jobs.reconcile"):
            assert sweep(host.pk) == {"seen": 2, "removed": 1}
        assert stuck in present(drivers["alpha"]) and fine not in present(drivers["alpha"])
        assert [e.details["name"] for e in AuditEvent.objects.filter(action="orphan.removed")] == [
            fine
        ]
        assert Orphan.objects.filter(name=stuck).exists()
        assert f"cannot remove orphan domain {stuck}" in caplog.text
    finally:
        monkeypatch.undo()
        real_destroy(drivers["alpha"].guests, stuck, stuck.removeprefix("strata-"))
    with pytest.raises(NotFound):
        drivers["alpha"].guests.state(stuck.removeprefix("strata-"))


def network_of(environment_id: str, subnet: str) -> NetworkSpec:
    return NetworkSpec(
        environment_id=environment_id,
        uuid=str(uuid.uuid4()),
        environment_name="dev",
        team_name="acme",
        subnet=subnet,
        dhcp_range=default_dhcp_range(subnet),
    )


def test_each_installation_sweeps_only_its_own_unwanted_networks(drivers, settings):
    """A network this installation made for an environment with no live VM on the host
    is an orphan; one a live (or still provisioning) VM's environment wants, another
    installation's and an unmarked one are not."""
    settings.STRATA_INSTALLATION_ID = "alpha"
    host = catalogue()[0]
    team = Team.objects.create(name="acme")
    wanted = Environment.objects.create(
        team=team, name="dev", kind="dev", subnet="10.241.1.0/24", network_uuid=uuid.uuid4()
    )
    VirtualMachine.objects.create(
        environment=wanted,
        name="vm1",
        host=host,
        flavor=catalogue()[1],
        image=catalogue()[2],
        state=VMState.SCHEDULED,
        segment_ip="10.241.1.2",
    )
    networks = {
        "orphan": (drivers["alpha"], network_of(uuid.uuid4().hex, "10.241.2.0/24")),
        "wanted": (drivers["alpha"], network_of(wanted.network_uuid.hex, "10.241.1.0/24")),
        "beta": (drivers["beta"], network_of(uuid.uuid4().hex, "10.241.3.0/24")),
        "unmarked": (drivers[None], network_of(uuid.uuid4().hex, "10.241.4.0/24")),
    }
    for hv, spec in networks.values():
        hv.networks.ensure(spec)
    names = {key: spec.name for key, (_, spec) in networks.items()}
    try:
        marks = {n.name: n.installation_id for n in drivers[None].networks.list()}
        assert marks[names["orphan"]] == "alpha" and marks[names["unmarked"]] is None
        assert sweep(host.pk) == {"seen": 1, "removed": 1}
        left = {network.name for network in drivers[None].networks.list()}
        assert names["orphan"] not in left
        assert {names["wanted"], names["beta"], names["unmarked"]} <= left
        audited = AuditEvent.objects.get(action="orphan.removed")
        assert audited.details == {"kind": "network", "name": names["orphan"]}
        # Once its last VM is gone, the wanted network is an orphan too.
        VirtualMachine.objects.filter(environment=wanted).update(state=VMState.DELETED)
        assert sweep(host.pk) == {"seen": 1, "removed": 1}
        assert names["wanted"] not in {n.name for n in drivers[None].networks.list()}
    finally:
        for network in drivers[None].networks.list():
            if network.name in names.values():
                drivers[None].networks.remove(network.name)
