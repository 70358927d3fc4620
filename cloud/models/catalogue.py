"""The shared catalogue the operator owns: hypervisor hosts, images, flavors,
and the orphans the reconciler finds on hosts."""

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models

from cloud.models.states import state_check
from tenants.models import slug_name

sha256_hex = RegexValidator(r"\A[0-9a-f]{64}\Z", "A sha256 is 64 lowercase hex digits.")


def default_virt_type() -> str:
    return settings.STRATA_VIRT_TYPE


def default_cpu_mode() -> str:
    return settings.STRATA_CPU_MODEL


VIRT_TYPE_CHOICES = [("kvm", "KVM"), ("qemu", "QEMU TCG (emulated)")]
cpu_mode_name = RegexValidator(
    r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z",
    "host-passthrough, or a CPU model name: letters, digits, _ . - (at most 64).",
)


class HostStatus(models.TextChoices):
    ENABLED = "enabled"
    DISABLED = "disabled"
    DRAINING = "draining"


class Host(models.Model):
    Status = HostStatus

    name = models.CharField(max_length=40, unique=True, validators=[slug_name])
    libvirt_uri = models.CharField(max_length=255)
    # What the host can do, detected at registration and on every reconcile.
    detected_virt_type = models.CharField(
        max_length=4, choices=VIRT_TYPE_CHOICES, blank=True, default="", editable=False
    )
    virt_type_reason = models.TextField(blank=True, default="", editable=False)
    virt_checked_at = models.DateTimeField(null=True, blank=True, editable=False)
    virt_type_override = models.CharField(
        max_length=4,
        choices=VIRT_TYPE_CHOICES,
        blank=True,
        default="",
        help_text="Blank: use the detected type.",
    )
    cpu_mode = models.CharField(
        max_length=64,
        default=default_cpu_mode,
        validators=[cpu_mode_name],
        help_text="The guest CPU on KVM: host-passthrough, or a libvirt CPU model name.",
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.ENABLED)
    cpus = models.PositiveIntegerField(help_text="physical CPUs")
    memory_mb = models.PositiveIntegerField()
    disk_gb = models.PositiveIntegerField(default=0)
    cpu_overcommit = models.FloatField(default=4.0, validators=[MinValueValidator(1.0)])
    ram_overcommit = models.FloatField(default=1.0, validators=[MinValueValidator(1.0)])
    last_seen_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(cpu_overcommit__gte=1.0, ram_overcommit__gte=1.0),
                name="host_overcommit_at_least_one",
            ),
            state_check("status", HostStatus, "host_status_valid"),
            models.CheckConstraint(
                condition=models.Q(virt_type_override__in=["", "kvm", "qemu"]),
                name="host_virt_type_override_valid",
            ),
            models.CheckConstraint(
                condition=models.Q(detected_virt_type__in=["", "kvm", "qemu"]),
                name="host_detected_virt_type_valid",
            ),
        ]

    def __str__(self):
        return self.name

    @property
    def virt_type(self) -> str:
        """The domain type used on this host: the operator's override, else the
        detected type, else STRATA_VIRT_TYPE for a host not detected yet."""
        return self.virt_type_override or self.detected_virt_type or default_virt_type()

    @virt_type.setter
    def virt_type(self, value: str) -> None:
        # Setting a type by hand (Host(virt_type=...), register_host) is an override.
        self.virt_type_override = value

    @property
    def queue(self) -> str:
        """The Celery queue served by the worker on (or near) this host."""
        return f"host.{self.name}"


class ImageFormat(models.TextChoices):
    QCOW2 = "qcow2"
    RAW = "raw"


class ImageSource(models.TextChoices):
    BUILT = "built"
    IMPORTED = "imported"


class Image(models.Model):
    Format = ImageFormat

    Source = ImageSource

    name = models.CharField(max_length=40, unique=True, validators=[slug_name])
    os = models.CharField(max_length=40, blank=True)
    format = models.CharField(max_length=8, choices=Format.choices, default=Format.QCOW2)
    sha256 = models.CharField(max_length=64, validators=[sha256_hex])
    path = models.CharField(max_length=500)
    kernel_path = models.CharField(max_length=500, blank=True)
    initrd_path = models.CharField(max_length=500, blank=True)
    kernel_cmdline = models.CharField(max_length=500, blank=True)
    virtual_size_bytes = models.PositiveBigIntegerField()
    size_bytes = models.PositiveBigIntegerField()
    source = models.CharField(max_length=10, choices=Source.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            state_check("format", ImageFormat, "image_format_valid"),
            state_check("source", ImageSource, "image_source_valid"),
        ]

    def __str__(self):
        return self.name


class Flavor(models.Model):
    name = models.CharField(max_length=40, unique=True, validators=[slug_name])
    vcpus = models.PositiveSmallIntegerField(
        validators=[MinValueValidator(1), MaxValueValidator(64)]
    )
    memory_mb = models.PositiveIntegerField(
        validators=[MinValueValidator(128), MaxValueValidator(512 * 1024)]
    )
    disk_gb = models.PositiveIntegerField(
        validators=[MinValueValidator(1), MaxValueValidator(4096)]
    )

    class Meta:
        ordering = ["vcpus", "memory_mb", "name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(vcpus__gte=1, memory_mb__gte=128, disk_gb__gte=1),
                name="flavor_sizes_positive",
            )
        ]

    def __str__(self):
        return f"{self.name} ({self.vcpus} vCPU, {self.memory_mb} MiB, {self.disk_gb} GiB)"


class OrphanKind(models.TextChoices):
    DOMAIN = "domain"
    VOLUME = "volume"
    CONTAINER = "container"
    NETWORK = "network"


class Orphan(models.Model):
    """Something on a host that carries Strata's marks but has no record.

    The reconciler notes it when first seen and removes it after a grace
    period, so a resource being made right now is never taken for one.
    """

    Kind = OrphanKind

    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="orphans")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    name = models.CharField(max_length=200)
    first_seen_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["host", "kind", "name"]
        constraints = [
            models.UniqueConstraint(fields=["host", "kind", "name"], name="orphan_once"),
            state_check("kind", OrphanKind, "orphan_kind_valid"),
        ]

    def __str__(self):
        return f"{self.kind} {self.name} on {self.host}"
