"""Templates in the job layer: which one a VM may be restored from, building
one (a cold boot to Docker, saved with its memory state), and retiring one
whose restore failed."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from django.conf import settings
from django.db.models import F
from django.utils import timezone

from cloud.models import (
    Flavor,
    Host,
    Image,
    Template,
    TemplateState,
    VirtualMachine,
    VMState,
)
from workers.drivers.guest import CommandTimeout, Endpoint, load_private_key, wait_for_ssh
from workers.drivers.hypervisor import (
    DomainSpec,
    InvalidState,
    SeedConfig,
    SshKeyPair,
    UserNetwork,
    build_seed_iso,
    find_free_loopback_ports,
    generate_ed25519_keypair,
)
from workers.jobs.adapters import host_hypervisor, kernel_boot
from workers.jobs.keys import manager_keypair

# What a saved guest was set up with: the seed, the domain's devices (the
# generation ID device) and what re-identity expects. Raise it when any of
# them changes, so older templates are no longer used.
GUEST_CONFIG_VERSION = 1
DOCKER_POLL_SECONDS = 1.0

log = logging.getLogger(__name__)

Progress = Callable[[int, str], None]


def base_volume_name(image: Image) -> str:
    # Named by content: a rebuilt image under the same name is another base, so
    # disks made from the old one keep their backing file.
    return f"{image.name}-{image.sha256[:16]}"


def fresh_template(vm: VirtualMachine) -> tuple[Template | None, str]:
    """The template ``vm`` can be restored from, and why (or why not) in words."""
    if vm.segment_ip is not None:
        # The segment NIC's MAC is part of the saved machine; every VM needs its own.
        return None, "the VM has an environment segment NIC, which templates do not carry"
    candidates = Template.objects.filter(host=vm.host, image=vm.image, flavor=vm.flavor)
    template = current(candidates).first()
    if template is not None:
        return template, f"template {template.name} is ready (built {template.built_at:%F %T})"
    if not candidates.exists():
        return None, f"no template for {vm.image} / {vm.flavor} on {vm.host}"
    return None, (
        f"no ready template of image {vm.image.sha256[:12]} and guest configuration "
        f"v{GUEST_CONFIG_VERSION} for {vm.image} / {vm.flavor} on {vm.host}"
    )


def current(templates):
    """The ready templates of the image's present content and this guest
    configuration, newest first."""
    return templates.filter(
        state=TemplateState.READY,
        guest_config_version=GUEST_CONFIG_VERSION,
        image_sha256=F("image__sha256"),
    ).order_by("-built_at")


def collect_templates(host: Host, hv) -> int:
    """Remove the host's templates no new VM will be made from (stale, failed,
    outdated, or superseded by a newer one) once no VM's disk is backed by
    them; returns how many went."""
    newest = {
        (t.image_id, t.flavor_id): t.pk for t in current(Template.objects.filter(host=host))[::-1]
    }
    removed = 0
    for template in Template.objects.filter(host=host).exclude(state=TemplateState.BUILDING):
        if newest.get((template.image_id, template.flavor_id)) == template.pk:
            continue
        if template.vms.exclude(state=VMState.DELETED).exists():
            continue
        try:
            hv.templates.delete(template.name)
        except InvalidState as exc:
            log.warning("template %s kept: %s", template.name, exc)
            continue
        template.delete()
        removed += 1
    return removed


def mark_stale(template: Template, reason: str) -> None:
    Template.objects.filter(pk=template.pk).update(
        state=TemplateState.STALE, unusable_reason=reason
    )


def template_domain_spec(template: Template, hv, ssh_port: int) -> DomainSpec:
    """The template's own domain while it boots: a VM of its flavor and image
    with its disk and seed, and no environment."""
    return DomainSpec(
        name=template.name,
        uuid=str(template.uuid),
        vm_id=template.name,
        vcpus=template.flavor.vcpus,
        memory_mib=template.flavor.memory_mb,
        disk_path=hv.storage.template_disk_path(template.name),
        console_log_path=hv.storage.console_log_path(template.name),
        network=UserNetwork(ssh_host_port=ssh_port),
        seed_path=hv.storage.template_seed_path(template.name),
        virt_type=template.host.virt_type,
        cpu_mode=template.host.cpu_mode,
        kernel_boot=kernel_boot(template.image),
    )


def _wait_docker(connection, deadline: float) -> None:
    while True:
        try:
            # A client started while dockerd starts may wait on its socket: ask again.
            if connection.run(["docker", "info"], timeout=30, check=False).exit_status == 0:
                return
        except CommandTimeout:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("docker is not answering in the template guest")
        time.sleep(DOCKER_POLL_SECONDS)


def build_template(
    host: Host, image: Image, flavor: Flavor, progress: Progress = lambda _p, _m: None
) -> Template:
    """Boot a guest of ``image`` and ``flavor`` on ``host`` to Docker answering
    and save it with its memory state, its progress on the row as it goes. On
    any failure nothing of it is left on the host and the row says failed."""
    pair = generate_ed25519_keypair("strata-template")
    template = Template.objects.create(
        host=host,
        image=image,
        flavor=flavor,
        image_sha256=image.sha256,
        guest_config_version=GUEST_CONFIG_VERSION,
        host_key_public=pair.public_openssh,
        host_key_private=pair.private_openssh,
    )

    def record(percent: int, message: str) -> None:
        Template.objects.filter(pk=template.pk).update(
            progress=percent, progress_note=message[:200]
        )
        progress(percent, message)

    with host_hypervisor(host) as hv:
        try:
            _boot_and_save(template, hv, record)
        except BaseException as error:
            hv.guests.destroy(template.name, str(template.uuid))
            hv.templates.delete(template.name)
            Template.objects.filter(pk=template.pk).update(
                state=TemplateState.FAILED, unusable_reason=str(error)[:2000]
            )
            raise
    template.refresh_from_db()
    return template


def _boot_and_save(template: Template, hv, progress: Progress) -> None:
    base = base_volume_name(template.image)
    hv.storage.ensure_pools()
    hv.storage.import_base_image(base, template.image.path)
    disk = hv.storage.create_template_disk(template.name, base, template.flavor.disk_gb)
    seed = SeedConfig(
        instance_id=str(template.uuid),
        hostname="strata-template",
        authorized_keys=(manager_keypair().public_openssh,),
        host_key=SshKeyPair(template.host_key_private, template.host_key_public),
    ).validate()
    hv.storage.write_template_seed(template.name, build_seed_iso(seed))
    progress(10, f"disk {disk} over {base}; seed written")
    (port,) = find_free_loopback_ports(1)
    hv.guests.define(template_domain_spec(template, hv, port))
    started = time.monotonic()
    hv.guests.start(str(template.uuid))
    progress(20, "started, cold boot")
    endpoint = Endpoint("127.0.0.1", port, "root", template.host_key_public)
    key = load_private_key(manager_keypair().private_openssh)
    connection = wait_for_ssh(endpoint, key, timeout=settings.STRATA_SSH_READY_SECONDS)
    try:
        progress(60, f"ssh after {time.monotonic() - started:.0f} s")
        _wait_docker(connection, time.monotonic() + settings.STRATA_DOCKER_READY_SECONDS)
        progress(80, f"docker answering after {time.monotonic() - started:.0f} s")
        # What the guest wrote must be on its disk before the disk is frozen.
        connection.run(["sync"], timeout=60)
    finally:
        connection.close()
    state_bytes = hv.templates.save(template.name, str(template.uuid))
    Template.objects.filter(pk=template.pk).update(
        state=TemplateState.READY,
        memory_state_bytes=state_bytes,
        disk_bytes=hv.storage.volume_allocation(disk),
        built_at=timezone.now(),
    )
    progress(100, f"saved: memory state {state_bytes / 2**20:.0f} MiB")
