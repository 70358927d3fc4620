"""What every portal page shares: the team named in the URL, checked against
the caller's memberships, and the services' errors turned into HTTP answers."""

from functools import wraps
from urllib.parse import urlsplit

from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.html import format_html

from cloud.services.access import require_act
from cloud.services.errors import Busy, Forbidden, NotFound
from tenants.models import Membership

CURRENT_TEAM_KEY = "portal_team"


def team_page(view):
    """Run ``view(request, team, **kwargs)`` for a member of the URL's team.

    A team the caller is not in answers 404, as if it did not exist; the
    services' NotFound and Forbidden become 404 and 403.
    """

    @wraps(view)
    def wrapper(request, team: str, **kwargs):
        if not request.user.is_authenticated:
            return login_redirect(request)
        member = (
            Membership.objects.filter(user=request.user, team__name=team)
            .select_related("team")
            .first()
        )
        if member is None:
            raise Http404("no such team")
        request.team, request.membership = member.team, member
        if request.session.get(CURRENT_TEAM_KEY) != member.team.name:
            # Only on a change: polled panels would otherwise write the session each time.
            request.session[CURRENT_TEAM_KEY] = member.team.name
        try:
            return view(request, member.team, **kwargs)
        except NotFound as error:
            raise Http404(str(error)) from error
        except Forbidden as error:
            raise PermissionDenied(str(error)) from error

    return wrapper


def login_redirect(request) -> HttpResponse:
    """To the login page, and back here after it.  A part of a page that htmx
    refreshes asks the browser to move the whole page, or the login form would
    land inside the panel."""
    if request.headers.get("HX-Request"):
        page = urlsplit(request.headers.get("HX-Current-URL", "")).path or request.path
        response = HttpResponse(status=204)
        response["HX-Redirect"] = redirect_to_login(page)["Location"]
        return response
    return redirect_to_login(request.get_full_path())


def require_some_act_role(request, team) -> None:
    """Refuse a viewer before reading the form: action URLs answer 403 to them
    whatever they send.  The service checks the exact role for the kind again."""
    require_act(request.user, team, "dev")


def busy_redirect(request, error: Busy, fallback: str):
    """Say which job holds the environment, with a link to it, and go back."""
    job_url = reverse("portal:job", args=[error.job.team.name, error.job.pk])
    messages.error(
        request,
        format_html(
            'The environment is busy with <a href="{}">job {} ({})</a>; try again when it'
            " has finished.",
            job_url,
            str(error.job.pk)[:8],
            error.job.kind,
        ),
    )
    return redirect(fallback)


def report_errors(request, error) -> None:
    """A service's complaint about a form-less action, shown at the top of the next page."""
    for message in error.messages:
        messages.error(request, message)


def job_started(request, job, what: str):
    messages.success(request, f"{what}: job {str(job.pk)[:8]} started.")
    return redirect("portal:job", request.team.name, job.pk)


def portal_context(request):
    """The caller's teams for the switcher, and the team the page is about."""
    if not request.user.is_authenticated:
        return {}
    return {
        "user_teams": Membership.objects.teams_of(request.user).order_by("name"),
        "current_team": getattr(request, "team", None),
        "membership": getattr(request, "membership", None),
    }
