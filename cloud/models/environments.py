"""A team's environments and what runs them: VMs, their port forwards and
their CPU and memory samples."""

import uuid

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from cloud.models.catalogue import Flavor, Host, Image
from cloud.models.crypto import EncryptedTextField
from cloud.models.states import VM_MACHINE, StatefulModel, VMState, state_check
from tenants.models import Team, TeamScopedQuerySet, scoped_queryset, slug_name
from workers.drivers.hypervisor.spec import mac_address_for, network_name_for

port_number = [MinValueValidator(1), MaxValueValidator(65535)]


class EnvironmentKind(models.TextChoices):
    DEV = "dev"
    STAGING = "staging"
    PROD = "prod"


class Egress(models.TextChoices):
    """Traffic beyond the segment: none (isolated), or libvirt's ``nat`` / ``route``."""

    ISOLATED = "isolated", "isolated"
    NAT = "nat", "nat"
    ROUTE = "route", "route"


class Environment(models.Model):
    Kind = EnvironmentKind
    Egress = Egress

    team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="environments")
    name = models.CharField(max_length=40, validators=[slug_name])
    kind = models.CharField(max_length=10, choices=Kind.choices)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # The job that holds this environment: operations on one environment run one
    # at a time.  A lock whose job has finished is free, so no crash leaves it stuck.
    lock_job = models.ForeignKey(
        "Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # The segment: a subnet from STRATA_SUBNET_POOL, held while the row lives.
    # Empty for an environment made while the pool was unset (user-mode NIC only).
    subnet = models.CharField(max_length=18, null=True, blank=True, unique=True, editable=False)
    # The libvirt network's UUID; its name and bridge are derived from it, so two
    # Strata installations on one libvirtd never share a network.
    network_uuid = models.UUIDField(null=True, blank=True, unique=True, editable=False)
    egress = models.CharField(max_length=8, choices=Egress.choices, default=Egress.ISOLATED)

    objects = TeamScopedQuerySet.as_manager()

    class Meta:
        ordering = ["team", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["team", "name"], name="environment_name_unique_in_team"
            ),
            state_check("kind", EnvironmentKind, "environment_kind_valid"),
            state_check("egress", Egress, "environment_egress_valid"),
        ]

    def __str__(self):
        return f"{self.team.name}/{self.name}"

    @property
    def network_name(self) -> str | None:
        """The libvirt network of the segment on each host the environment uses."""
        return network_name_for(self.network_uuid.hex) if self.network_uuid else None


class VirtualMachine(StatefulModel):
    machine = VM_MACHINE

    # Also the libvirt domain UUID, so a re-run job finds what an earlier run made.
    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    environment = models.ForeignKey(Environment, on_delete=models.PROTECT, related_name="vms")
    name = models.CharField(max_length=40, validators=[slug_name])
    host = models.ForeignKey(
        Host, null=True, blank=True, on_delete=models.PROTECT, related_name="vms"
    )
    flavor = models.ForeignKey(Flavor, on_delete=models.PROTECT)
    image = models.ForeignKey(Image, on_delete=models.PROTECT)
    state = models.CharField(max_length=12, choices=VMState.choices, default=VMState.SCHEDULED)
    ssh_host = models.CharField(max_length=255, blank=True)
    ssh_port = models.PositiveIntegerField(null=True, blank=True, validators=port_number)
    host_key_public = models.TextField(blank=True, help_text="pinned before first boot")
    host_key_private = EncryptedTextField(blank=True)
    # The VM's address on its environment's segment (a static DHCP entry keyed
    # by ``mac_address``, which is derived from ``uuid``): kept across reboots.
    segment_ip = models.GenericIPAddressField(protocol="IPv4", null=True, blank=True)
    mac_address = models.CharField(max_length=17, blank=True, editable=False)
    # The template it was restored from; None: cold-booted.
    template = models.ForeignKey(
        "cloud.Template", null=True, blank=True, on_delete=models.SET_NULL, related_name="vms"
    )
    error = models.TextField(blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = scoped_queryset("environment__team").as_manager()

    class Meta:
        ordering = ["environment", "name"]
        constraints = [
            models.UniqueConstraint(fields=["environment", "name"], name="vm_name_unique_in_env"),
            models.UniqueConstraint(
                fields=["environment", "segment_ip"],
                condition=models.Q(segment_ip__isnull=False),
                name="vm_segment_ip_unique_in_env",
            ),
            models.UniqueConstraint(
                fields=["environment", "mac_address"],
                condition=~models.Q(mac_address=""),
                name="vm_mac_unique_in_env",
            ),
            state_check("state", VMState, "vm_state_valid"),
        ]

    def __str__(self):
        return f"{self.environment}/{self.name}"

    @property
    def domain_name(self) -> str:
        return f"strata-{self.uuid}"

    @property
    def derived_mac_address(self) -> str:
        return mac_address_for(self.uuid.hex)


class PortForward(models.Model):
    """A loopback port on a host forwarded into a guest (``user`` networking)."""

    host = models.ForeignKey(Host, on_delete=models.CASCADE)
    host_port = models.PositiveIntegerField(validators=port_number)
    vm = models.ForeignKey(VirtualMachine, on_delete=models.CASCADE, related_name="forwards")
    guest_port = models.PositiveIntegerField(validators=port_number)

    objects = scoped_queryset("vm__environment__team").as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["host", "host_port"], name="host_port_used_once"),
            models.UniqueConstraint(fields=["vm", "guest_port"], name="guest_port_forwarded_once"),
            models.CheckConstraint(
                condition=models.Q(host_port__gte=1, host_port__lte=65535)
                & models.Q(guest_port__gte=1, guest_port__lte=65535),
                name="forward_ports_in_range",
            ),
        ]

    def __str__(self):
        return f"127.0.0.1:{self.host_port} -> {self.vm}:{self.guest_port}"


class VMSample(models.Model):
    """One CPU and memory reading of a running VM, taken by the reconciler.

    ``cpu_time_ns`` is the domain's cumulative CPU time, kept so the next
    sample's ``cpu_percent`` is an exact delta; the first sample has 0.
    """

    vm = models.ForeignKey(VirtualMachine, on_delete=models.CASCADE, related_name="samples")
    at = models.DateTimeField(db_index=True, default=timezone.now)
    cpu_percent = models.FloatField(validators=[MinValueValidator(0)])
    cpu_time_ns = models.PositiveBigIntegerField()
    memory_mib = models.PositiveIntegerField()

    objects = scoped_queryset("vm__environment__team").as_manager()

    class Meta:
        ordering = ["vm", "at"]
        indexes = [models.Index(fields=["vm", "at"], name="vmsample_vm_at")]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(cpu_percent__gte=0), name="vmsample_cpu_percent_not_negative"
            ),
        ]

    def __str__(self):
        return f"{self.vm} at {self.at:%Y-%m-%d %H:%M:%S}"
