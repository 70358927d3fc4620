"""The team's audit log, newest first."""

from django.core.paginator import Paginator
from django.shortcuts import render
from django.views.decorators.http import require_safe

from tenants.models import AuditEvent

from .base import team_page

EVENTS_PER_PAGE = 50


@require_safe
@team_page
def audit_log(request, team):
    events = AuditEvent.objects.for_team(team).select_related("actor")
    page = Paginator(events, EVENTS_PER_PAGE).get_page(request.GET.get("page"))
    return render(request, "portal/audit.html", {"page": page})
