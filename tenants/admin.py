from django.contrib import admin

from tenants.models import ApiToken, AuditEvent, Membership, Quota, Team


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


class QuotaInline(admin.StackedInline):
    model = Quota
    can_delete = False


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ["name", "display_name", "member_count", "created_at"]
    search_fields = ["name", "display_name"]
    inlines = [QuotaInline, MembershipInline]

    @admin.display(description="members")
    def member_count(self, team):
        return team.membership_set.count()


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "team", "role", "created_at"]
    list_filter = ["role", "team"]
    search_fields = ["user__username", "team__name"]
    autocomplete_fields = ["user", "team"]


@admin.register(Quota)
class QuotaAdmin(admin.ModelAdmin):
    list_display = ["team", "vcpus", "memory_mb", "disk_gb", "vms"]
    search_fields = ["team__name"]


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Audit events are evidence: operators read them, nobody edits them."""

    list_display = ["created_at", "team", "actor", "action", "target_repr"]
    list_filter = ["action", "team"]
    search_fields = ["action", "target_repr", "actor__username"]
    date_hierarchy = "created_at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["name", "user", "prefix", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["revoked_at"]
    search_fields = ["name", "user__username", "prefix"]
    readonly_fields = ["user", "prefix", "digest", "created_at", "last_used_at"]

    def has_add_permission(self, request):
        return False  # keys are issued to users in the portal, shown to them once
