"""The reconciler: compares what the database wants with what a host has.

- A VM whose domain vanished is marked ``lost`` (kept, with its history).
- A VM that should run but whose domain is shut off is started again.
- A VM that an unfinished job acts on (it targets the VM or holds its
  environment) is left alone: the job is changing it and records the outcome.
- A domain, volume or environment network with this installation's marks
  and no live record is an orphan: noted when first seen, removed after the
  grace period, audited.
- A container recorded for a running VM but gone from its engine is marked
  missing; one the engine runs with Strata's labels but no record is an
  orphan (removed after the grace period, like domains and volumes).
- A running VM whose services publish ports gets its HAProxy back when it
  is not running (killed, or the guest rebooted: audited as
  ``proxy.restarted``) or fronts other replicas than the VM runs (reloaded).
- Each environment segment on the host gets back the DHCP and DNS records
  the database wants (``steps.segment.repair_records``).
- A job whose message was lost (not updated for a long time) is sent again.
- Each running VM gets a CPU and memory sample (``VMSample``); samples older
  than a day are deleted in the same pass.
"""

import logging
import re
from datetime import timedelta

import docker
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.db.models.functions import Now
from django.utils import timezone

from cloud.models import (
    Container,
    Host,
    Job,
    JobState,
    Orphan,
    Service,
    VirtualMachine,
    VMSample,
    VMState,
)
from cloud.models.states import JOB_MACHINE
from tenants.models import AuditEvent
from workers.drivers.guest import RemoteError, list_containers, remove_container
from workers.drivers.guest.guest_proxy import UNCHANGED
from workers.drivers.hypervisor import DomainState, Hypervisor, HypervisorError, VolumeKind
from workers.drivers.hypervisor.spec import NETWORK_NAME_PREFIX
from workers.jobs.adapters import connect, guest_proxy, host_hypervisor
from workers.jobs.host_support import record_virt_support
from workers.jobs.queue import enqueue
from workers.jobs.steps.deploy import note_proxy_restart
from workers.jobs.steps.segment import repair_records
from workers.jobs.steps.vm_ops import STATE_OF_DOMAIN, record_state
from workers.jobs.templates import collect_templates

log = logging.getLogger(__name__)

# Volumes and domains of a Strata VM are named after its UUID.
VM_DOMAIN_NAME = re.compile(
    r"strata-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
)
ALIVE_ON_HOST = [VMState.RUNNING, VMState.STOPPED, VMState.STOPPING, VMState.ERROR]
SAMPLES_KEPT = timedelta(hours=24)


def reconcile_host(host_id: int) -> dict[str, int]:
    host = Host.objects.get(pk=host_id)
    counts = {"lost": 0, "restarted": 0, "orphans_seen": 0, "orphans_removed": 0, "unchanged": 0}
    with host_hypervisor(host) as hv:
        counts["virt_changed"] = _refresh_virtualisation(host, hv)
        domains = {d.uuid: d for d in hv.guests.list()}
        hv.storage.ensure_pools()
        volumes = [
            v for v in hv.storage.list_volumes() if v.kind in (VolumeKind.DISK, VolumeKind.SEED)
        ]
        vms = {
            str(vm.uuid): vm
            for vm in VirtualMachine.objects.filter(host=host)
            .exclude(state__in=[VMState.DELETED, VMState.SCHEDULED])
            .select_related("environment__team")
        }

        busy = vms_a_job_acts_on(host.pk)
        counts["busy"] = sum(vm.pk in busy for vm in vms.values())
        for uuid, vm in vms.items():
            if vm.pk not in busy:
                counts[_reconcile_vm(hv, vm, domains.get(uuid))] += 1

        found = _own_orphans(hv, domains, volumes, vms)
        found.update(_own_orphan_networks(hv, host))
        running = [vm for vm in vms.values() if vm.state == VMState.RUNNING and vm.ssh_port]
        counts["containers_missing"] = counts["proxies_restarted"] = 0
        for vm in running:
            counts["containers_missing"] += _reconcile_containers(vm, found)
            if vm.pk not in busy:
                counts["proxies_restarted"] += _reconcile_proxy(vm)
        counts["orphans_seen"] = len(found)
        counts["orphans_removed"] = _sweep_orphans(host, hv, found)
        counts["samples"] = _record_samples(hv, vms, domains)
        counts["segments_repaired"] = repair_records(hv, host, busy)
        counts["templates_collected"] = collect_templates(host, hv)
    return counts


def _refresh_virtualisation(host: Host, hv: Hypervisor) -> int:
    """Detect again what the host can do (a BIOS switch, a kernel module or the
    /dev/kvm mode may have changed); store and audit a change. 1 if changed."""
    support = hv.host.detect_virtualisation()
    before = host.virt_type
    changed = record_virt_support(host, support)
    Host.objects.filter(pk=host.pk).update(
        detected_virt_type=host.detected_virt_type,
        virt_type_reason=host.virt_type_reason,
        virt_checked_at=host.virt_checked_at,
    )
    if not changed:
        return 0
    AuditEvent.record(
        "host.virt_detected",
        target=host,
        detected=support.virt_type,
        reason=support.reason,
        effective_before=before,
        effective=host.virt_type,
    )
    return 1


def vms_a_job_acts_on(host_id: int) -> set[int]:
    """Ids of the host's VMs that an unfinished job targets or whose environment it holds.

    Such a VM is in the middle of a change (stopping, reverting, resizing...):
    what libvirt shows is not drift, and the job settles the record itself.
    """
    unfinished = Job.objects.exclude(state__in=Job.machine.final_states)
    return set(
        VirtualMachine.objects.filter(host=host_id)
        .filter(
            Q(jobs__in=unfinished.filter(vm__host=host_id))
            | Q(environment__lock_job__in=unfinished)
        )
        .values_list("pk", flat=True)
    )


def _reconcile_vm(hv: Hypervisor, vm: VirtualMachine, domain) -> str:
    """Bring one VM's record and its domain together; returns what was done."""
    if domain is None and vm.state in ALIVE_ON_HOST:
        vm.move_to(VMState.LOST, error="its libvirt domain has vanished")
        AuditEvent.record("vm.lost", team=vm.environment.team, target=vm)
        return "lost"
    if domain is not None and vm.state == VMState.LOST:
        vm.move_to(VMState.RUNNING if domain.state == DomainState.RUNNING else VMState.STOPPED)
        return "unchanged"
    if domain is not None and vm.state == VMState.STOPPING:
        # A stop whose job ended without recording the outcome: record libvirt's.
        if domain.state in STATE_OF_DOMAIN:
            record_state(vm, STATE_OF_DOMAIN[domain.state])
        return "unchanged"
    if (
        domain is not None
        and vm.state == VMState.RUNNING
        and domain.state in (DomainState.SHUTOFF, DomainState.CRASHED)
    ):
        return _restart(hv, vm)
    return "unchanged"


def _restart(hv: Hypervisor, vm: VirtualMachine) -> str:
    """Start a VM that should run, unless a job took it over since the host was read."""
    # The row lock is the one every VM operation writes its state under: held
    # from the re-check to the start, no stop can slip in between.
    with transaction.atomic():
        # Only the VM's row (its ordering joins the environment and team rows).
        locked = VirtualMachine.objects.select_for_update(skip_locked=True, of=("self",)).filter(
            pk=vm.pk
        )
        current = locked.values_list("state", flat=True).first()
        if current != VMState.RUNNING or vm.pk in vms_a_job_acts_on(vm.host_id):
            return "unchanged"
        uuid = str(vm.uuid)
        state = hv.guests.state(uuid)
        if state not in (DomainState.SHUTOFF, DomainState.CRASHED):
            return "unchanged"
        hv.guests.start(uuid)
        AuditEvent.record(
            "vm.restarted",
            team=vm.environment.team,
            target=vm,
            reason=f"domain was {state.value}",
        )
    return "restarted"


def _record_samples(hv: Hypervisor, vms: dict, domains: dict) -> int:
    """A CPU and memory sample per running VM; drops samples older than a day."""
    now = timezone.now()
    VMSample.objects.filter(at__lt=now - SAMPLES_KEPT).delete()
    # A delta over a long silence (the worker was down) would be a misleading average.
    recent = now - timedelta(seconds=max(settings.STRATA_RECONCILE_SECONDS * 5, 300))
    samples = []
    for uuid, vm in vms.items():
        domain = domains.get(uuid)
        if vm.state != VMState.RUNNING or domain is None or domain.state != DomainState.RUNNING:
            continue
        try:
            stats = hv.guests.stats(uuid)
        except HypervisorError as exc:
            log.warning("cannot read the stats of %s: %s", vm, exc)
            continue
        # One indexed lookup (vm, at) per running VM.
        previous = VMSample.objects.filter(vm=vm, at__gte=recent).order_by("-at").first()
        samples.append(
            VMSample(
                vm=vm,
                at=now,
                cpu_percent=cpu_percent(previous, stats.cpu_time_ns, stats.vcpus, now),
                cpu_time_ns=stats.cpu_time_ns,
                memory_mib=stats.rss_mib if stats.rss_mib is not None else stats.memory_mib,
            )
        )
    VMSample.objects.bulk_create(samples)
    return len(samples)


def cpu_percent(previous: VMSample | None, cpu_time_ns: int, vcpus: int, at) -> float:
    """CPU use since ``previous`` as a percentage of all the VM's vCPUs (0 to 100).

    0 for the first sample (or the first after a silence), or when the counter
    went back (the domain restarted).
    """
    if previous is None or cpu_time_ns < previous.cpu_time_ns:
        return 0.0
    wall_ns = (at - previous.at).total_seconds() * 1e9
    if wall_ns <= 0:
        return 0.0
    used = (cpu_time_ns - previous.cpu_time_ns) / (wall_ns * max(vcpus, 1)) * 100
    return round(min(max(used, 0.0), 100.0), 2)


def _reconcile_containers(vm: VirtualMachine, found: dict) -> int:
    """Sync the VM's container records with its engine; returns how many went missing."""
    try:
        engine = connect(vm).docker()
        running = list_containers(engine)
    except RemoteError as exc:
        log.warning("cannot reach the engine of %s: %s", vm, exc)
        return 0
    by_id = {info.id: info for info in running}
    services = set(
        Service.objects.filter(environment=vm.environment_id).values_list("pk", flat=True)
    )
    missing = 0
    for record in Container.objects.filter(vm=vm).exclude(state=Container.State.MISSING):
        info = by_id.get(record.engine_id)
        if info is None:
            record.state, record.health = Container.State.MISSING, Container.Health.UNHEALTHY
            record.save(update_fields=["state", "health", "updated_at"])
            AuditEvent.record("container.missing", team=vm.environment.team, target=record)
            missing += 1
        elif record.state != (state := "running" if info.state == "running" else "exited"):
            record.state = state
            record.save(update_fields=["state", "updated_at"])
    for info in running:
        if not info.service_id.isdigit() or int(info.service_id) not in services:
            found[(Orphan.Kind.CONTAINER, f"{vm.uuid}/{info.id}")] = (vm, info.id)
    return missing


def _reconcile_proxy(vm: VirtualMachine) -> int:
    """The guest's HAProxy runs and fronts what the VM runs; 1 if it had to be
    started again (it was killed or the guest rebooted), which is audited."""
    try:
        ssh = connect(vm)
        engine = ssh.docker()
        if not any(info.proxy for info in list_containers(engine)):
            return 0  # no published port on this VM: no proxy to keep
        outcome = guest_proxy().sync(ssh, engine)
    except RemoteError as exc:
        log.warning("cannot bring back the proxy of %s: %s", vm, exc)
        return 0
    if outcome == UNCHANGED:
        return 0
    log.warning("proxy of %s: %s", vm, outcome)
    return int(note_proxy_restart(vm, outcome))


def _own_orphans(hv: Hypervisor, domains: dict, volumes: list, vms: dict) -> dict:
    """This installation's domains and VM volumes that no VM record claims.

    Another Strata's (or an unmarked one's, made before marks existed) are
    never orphans here, however alone they look: that Strata sweeps its own.
    """
    found = {
        (Orphan.Kind.DOMAIN, domain.name): uuid
        for uuid, domain in domains.items()
        if uuid not in vms and domain.metadata.installation_id == hv.installation_id
    }
    for volume in volumes:
        match = VM_DOMAIN_NAME.fullmatch(volume.owner or "")
        if match and match.group(1) not in vms and volume.installation_id == hv.installation_id:
            found[(Orphan.Kind.VOLUME, volume.name)] = match.group(1)
    return found


def _own_orphan_networks(hv: Hypervisor, host: Host) -> dict:
    """This installation's networks that no environment with a VM on this host
    (being provisioned included) still wants."""
    wanted = {
        uuid.hex
        for uuid in VirtualMachine.objects.filter(host=host)
        .exclude(state=VMState.DELETED)
        .exclude(segment_ip=None)
        .values_list("environment__network_uuid", flat=True)
        if uuid is not None
    }
    return {
        (Orphan.Kind.NETWORK, network.name): None
        for network in hv.networks.list()
        if network.installation_id == hv.installation_id
        and network.installation_id is not None
        and network.name.removeprefix(NETWORK_NAME_PREFIX) not in wanted
    }


def _sweep_orphans(host: Host, hv: Hypervisor, found: dict) -> int:
    """Note new orphans and remove those past the grace period; returns how many
    were removed. Only what really went is audited; what could not go is logged
    and kept as an orphan."""
    # Whatever is no longer found was removed or claimed meanwhile.
    known = {(o.kind, o.name): o for o in Orphan.objects.filter(host=host)}
    for key, orphan in known.items():
        if key not in found:
            orphan.delete()
    grace = timezone.now() - timedelta(seconds=settings.STRATA_ORPHAN_GRACE_SECONDS)
    removed = 0
    for (kind, name), owner in found.items():
        orphan = known.get((kind, name)) or Orphan.objects.create(host=host, kind=kind, name=name)
        if orphan.first_seen_at > grace:
            continue
        try:
            gone = _remove_orphan(hv, kind, name, owner)
        except (HypervisorError, RemoteError, docker.errors.DockerException) as exc:
            log.warning("cannot remove orphan %s %s on %s: %s", kind, name, host.name, exc)
            continue
        if not gone:
            log.warning(
                "skipped orphan %s %s on %s: not named like a Strata VM, so what goes "
                "with it is unknown; remove it by hand",
                kind,
                name,
                host.name,
            )
            continue
        AuditEvent.record("orphan.removed", target=host, kind=kind, name=name)
        log.warning("removed orphan %s %s on %s", kind, name, host.name)
        orphan.delete()
        removed += 1
    return removed


def _remove_orphan(hv: Hypervisor, kind: str, name: str, owner) -> bool:
    """Remove one orphan; False when it is not Strata-named and was left alone.

    ``owner`` is a VM uuid for domains and volumes, (vm, engine id) for containers.
    """
    if kind == Orphan.Kind.NETWORK:
        hv.networks.remove(name)
        return True
    if kind == Orphan.Kind.CONTAINER:
        vm, container_id = owner
        remove_container(connect(vm).docker(), container_id)
        return True
    # A domain and its volumes all go with the VM name they carry.
    vm_name = name if kind == Orphan.Kind.DOMAIN else f"strata-{owner}"
    if not VM_DOMAIN_NAME.fullmatch(vm_name):
        return False
    hv.guests.destroy(vm_name, owner)
    return True


def resend_stuck_jobs() -> int:
    """Send again the jobs whose message was lost.  A job whose run is alive
    (its lease renewed) is not stuck, however long its step; a duplicate
    delivery would run nothing anyway (the lease admits one run)."""
    cutoff = timezone.now() - timedelta(seconds=settings.STRATA_STUCK_JOB_SECONDS)
    # A waiter is sent when the job it waits for finishes, and is then due like any other.
    sent = Q(waits_for=None) | Q(waits_for__state__in=JOB_MACHINE.final_states)
    stuck = (
        Job.objects.filter(sent, updated_at__lt=cutoff)
        .filter(state__in=[JobState.QUEUED, JobState.RUNNING])
        .exclude(children__isnull=False)
        .exclude(lease_expires_at__gt=Now())
    )
    count = 0
    with transaction.atomic():
        for job in stuck.select_for_update(skip_locked=True, of=("self",)):
            Job.objects.filter(pk=job.pk).update(updated_at=timezone.now())
            enqueue(job)
            count += 1
    return count
