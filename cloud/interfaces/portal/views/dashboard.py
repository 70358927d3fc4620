"""The landing page: which team, and that team's dashboard."""

from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.views.decorators.http import require_safe

from cloud.selectors import queries
from tenants.models import Membership

from .base import CURRENT_TEAM_KEY, team_page


@require_safe
@login_required
def home(request):
    """The dashboard of the team last used, else of the caller's first team."""
    teams = Membership.objects.teams_of(request.user).order_by("name")
    team = teams.filter(name=request.session.get(CURRENT_TEAM_KEY)).first() or teams.first()
    if team is None:
        return render(request, "portal/no_teams.html")
    return redirect("portal:dashboard", team.name)


@require_safe
@team_page
def dashboard(request, team):
    return render(
        request,
        "portal/dashboard.html",
        {
            "environments_by_kind": queries.environments_by_kind(team),
            "quota": queries.quota_usage(team),
            "active_jobs": queries.active_jobs(team),
            "hosts": queries.host_utilisation(),
        },
    )


@require_safe
@team_page
def active_jobs(request, team):
    """The running-jobs panel alone, which the dashboard polls."""
    return render(
        request, "portal/partials/active_jobs.html", {"active_jobs": queries.active_jobs(team)}
    )
