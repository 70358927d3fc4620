from django.contrib import admin
from django.db.models import Count
from django.utils.timesince import timesince

from cloud.models import (
    ConsoleTicket,
    Container,
    Deployment,
    DeploymentTarget,
    Environment,
    ExternalRegistry,
    Flavor,
    Host,
    Image,
    Job,
    JobStep,
    Orphan,
    PortForward,
    RegistryImage,
    RegistryTag,
    Release,
    Secret,
    Service,
    Template,
    VirtualMachine,
    VMSample,
)
from cloud.services import templates


class RecordAdmin(admin.ModelAdmin):
    """What happened or what another system reported: shown, never added or
    edited by hand, or the record would lie."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Host)
class HostAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "libvirt_uri",
        "status",
        "cpus",
        "memory_mb",
        "cpu_overcommit",
        "ram_overcommit",
        "effective_virt_type",
        "detected_virt_type",
        "virt_type_override",
        "cpu_mode",
        "last_seen_at",
    ]
    list_filter = ["status", "detected_virt_type", "virt_type_override"]
    search_fields = ["name", "libvirt_uri"]
    actions = ["enable", "disable", "drain"]
    # Detection is the reconciler's; the operator overrides it and picks the CPU.
    readonly_fields = [
        "effective_virt_type",
        "detected_virt_type",
        "virt_type_reason",
        "virt_checked_at",
    ]

    @admin.display(description="virt type")
    def effective_virt_type(self, host):
        return host.virt_type

    def _set_status(self, request, queryset, status):
        count = queryset.update(status=status)
        self.message_user(request, f"{count} host(s) now {status}.")

    @admin.action(description="Enable selected hosts")
    def enable(self, request, queryset):
        self._set_status(request, queryset, Host.Status.ENABLED)

    @admin.action(description="Disable selected hosts (no new VMs)")
    def disable(self, request, queryset):
        self._set_status(request, queryset, Host.Status.DISABLED)

    @admin.action(description="Drain selected hosts (no new VMs, move existing ones away)")
    def drain(self, request, queryset):
        self._set_status(request, queryset, Host.Status.DRAINING)


@admin.register(Image)
class ImageAdmin(admin.ModelAdmin):
    list_display = ["name", "os", "format", "source", "virtual_size_bytes", "created_at"]
    list_filter = ["format", "source", "os"]
    search_fields = ["name", "os", "sha256"]
    readonly_fields = ["sha256", "path", "size_bytes", "virtual_size_bytes", "created_at"]


@admin.register(Flavor)
class FlavorAdmin(admin.ModelAdmin):
    list_display = ["name", "vcpus", "memory_mb", "disk_gb"]
    search_fields = ["name"]


class VirtualMachineInline(admin.TabularInline):
    model = VirtualMachine
    extra = 0
    fields = ["name", "state", "host", "flavor", "ssh_port"]
    readonly_fields = fields
    show_change_link = True
    can_delete = False


@admin.register(Environment)
class EnvironmentAdmin(admin.ModelAdmin):
    list_display = ["name", "team", "kind", "created_at"]
    list_filter = ["kind", "team"]
    search_fields = ["name", "team__name"]
    inlines = [VirtualMachineInline]


@admin.register(VirtualMachine)
class VirtualMachineAdmin(admin.ModelAdmin):
    list_display = ["name", "environment", "state", "host", "flavor", "image", "ssh_port"]
    list_filter = ["state", "host", "environment__kind"]
    search_fields = ["name", "uuid", "environment__name", "environment__team__name"]
    list_select_related = ["environment__team", "host", "flavor", "image"]
    # State changes go through jobs; the private host key is never shown.
    readonly_fields = ["uuid", "state", "host_key_public", "error", "started_at", "created_at"]
    exclude = ["host_key_private"]


@admin.register(PortForward)
class PortForwardAdmin(admin.ModelAdmin):
    list_display = ["host", "host_port", "vm", "guest_port"]
    list_filter = ["host"]
    search_fields = ["vm__name"]


@admin.register(Secret)
class SecretAdmin(admin.ModelAdmin):
    list_display = ["name", "team", "scope", "environment", "created_at"]
    list_filter = ["team", "scope"]
    search_fields = ["name"]
    exclude = ["value"]

    def has_change_permission(self, request, obj=None):
        # Secrets are written by teams through the portal; operators see that they exist.
        return False


@admin.register(ExternalRegistry)
class ExternalRegistryAdmin(admin.ModelAdmin):
    list_display = ["host", "team", "username", "added_by", "created_at"]
    list_filter = ["team"]
    search_fields = ["host", "username"]
    exclude = ["password"]

    def has_change_permission(self, request, obj=None):
        # Team admins register logins through the API; operators see that they exist.
        return False

    def has_add_permission(self, request):
        return False


@admin.register(Service)
class ServiceAdmin(admin.ModelAdmin):
    list_display = ["name", "environment", "image", "replicas", "restart_policy"]
    list_filter = ["environment__kind", "restart_policy"]
    search_fields = ["name", "image", "environment__name"]


@admin.register(Release)
class ReleaseAdmin(admin.ModelAdmin):
    list_display = ["service", "version", "image_digest", "promoted_from", "created_at"]
    search_fields = ["service__name", "image_digest"]
    readonly_fields = [
        "service",
        "version",
        "image_digest",
        "spec",
        "promoted_from",
        "created_by",
        "created_at",
    ]


class DeploymentTargetInline(admin.TabularInline):
    model = DeploymentTarget
    extra = 0
    fields = ["vm", "outcome", "detail", "updated_at"]
    readonly_fields = fields
    can_delete = False


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin):
    list_display = ["release", "environment", "state", "created_at"]
    list_filter = ["state", "environment__kind"]
    search_fields = ["environment__name", "release__service__name"]
    readonly_fields = ["state", "reason"]
    inlines = [DeploymentTargetInline]


@admin.register(DeploymentTarget)
class DeploymentTargetAdmin(admin.ModelAdmin):
    """Each VM's outcome of a deployment: written by the deploy job only."""

    list_display = ["deployment", "vm", "outcome", "updated_at"]
    list_filter = ["outcome"]
    search_fields = ["vm__name", "deployment__release__service__name"]
    readonly_fields = ["deployment", "vm", "outcome", "detail", "updated_at"]


@admin.register(Container)
class ContainerAdmin(admin.ModelAdmin):
    list_display = ["name", "vm", "service", "release", "state", "health"]
    list_filter = ["state", "health"]
    search_fields = ["name", "engine_id", "service__name"]


class JobStepInline(admin.TabularInline):
    model = JobStep
    extra = 0
    fields = ["index", "name", "state", "started_at", "finished_at"]
    readonly_fields = fields
    can_delete = False


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ["id", "kind", "team", "state", "progress", "requested_by", "created_at"]
    list_filter = ["state", "kind", "team"]
    search_fields = ["id", "kind", "team__name"]
    readonly_fields = ["state", "progress", "error", "attempts", "started_at", "finished_at"]
    inlines = [JobStepInline]


@admin.register(JobStep)
class JobStepAdmin(admin.ModelAdmin):
    list_display = ["job", "index", "name", "state", "started_at", "finished_at"]
    list_filter = ["state", "name"]
    readonly_fields = ["log"]


@admin.register(Orphan)
class OrphanAdmin(admin.ModelAdmin):
    """What the reconciler found without a record; it removes these after the grace period."""

    list_display = ["kind", "name", "host", "first_seen_at"]
    list_filter = ["kind", "host"]
    search_fields = ["name"]
    readonly_fields = ["host", "kind", "name", "first_seen_at"]


@admin.register(VMSample)
class VMSampleAdmin(RecordAdmin):
    """CPU and memory readings the reconciler records; kept 24 hours, never edited."""

    list_display = ["vm", "at", "cpu_percent", "memory_mib"]
    list_filter = ["vm__host"]
    search_fields = ["vm__name", "vm__environment__name"]
    date_hierarchy = "at"


@admin.register(Template)
class TemplateAdmin(RecordAdmin):
    """Saved booted guests VMs are restored from; built by `manage.py
    build_template`, marked stale by a failed restore, never edited by hand
    (the saved memory must match what the row says)."""

    list_display = [
        "name",
        "host",
        "image",
        "flavor",
        "guest_config_version",
        "state",
        "progress",
        "size_on_disk",
        "memory_state_size",
        "age",
        "vms_made",
    ]
    list_filter = ["state", "host", "image", "flavor"]
    exclude = ["host_key_private"]
    actions = ["build_again"]

    @admin.action(description="Build again (a new template of the same host, image and flavor)")
    def build_again(self, request, queryset):
        kinds = {
            (t.host, t.image, t.flavor) for t in queryset.select_related("host", "image", "flavor")
        }
        for host, image, flavor in kinds:
            templates.request_build(host, image, flavor)
        self.message_user(request, f"{len(kinds)} template build(s) sent to the hosts' workers")

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(vms_made=Count("vms"))

    @admin.display(description="size on disk")
    def size_on_disk(self, template):
        return f"{template.disk_bytes / 2**20:.0f} MiB"

    @admin.display(description="memory state")
    def memory_state_size(self, template):
        return f"{template.memory_state_bytes / 2**20:.0f} MiB"

    @admin.display(description="age")
    def age(self, template):
        return timesince(template.built_at) if template.built_at else "not built"

    @admin.display(description="VMs made", ordering="vms_made")
    def vms_made(self, template):
        return template.vms_made


@admin.register(ConsoleTicket)
class ConsoleTicketAdmin(RecordAdmin):
    """Console sessions as evidence: who opened which VM's console, when, how it
    ended. Tickets are issued by the portal (only a key's digest is kept), never
    by hand, and not edited."""

    list_display = ["vm", "user", "created_at", "used_at", "can_type", "ended_at", "end_reason"]
    list_filter = ["can_type", "vm__environment__team"]
    search_fields = ["vm__name", "user__username", "end_reason"]
    date_hierarchy = "created_at"


class RegistryTagInline(admin.TabularInline):
    model = RegistryTag
    fields = ["tag"]
    readonly_fields = fields
    extra = 0
    can_delete = False


@admin.register(RegistryImage)
class RegistryImageAdmin(RecordAdmin):
    """Team images as the registry reported them; the registry holds the bytes, so
    an edit here would only make the record lie."""

    list_display = ["repository", "digest", "size", "team", "pushed_by", "pushed_at"]
    list_filter = ["team"]
    search_fields = ["repository", "digest"]
    inlines = [RegistryTagInline]


@admin.register(RegistryTag)
class RegistryTagAdmin(RecordAdmin):
    list_display = ["repository", "tag", "image"]
    search_fields = ["repository", "tag"]
