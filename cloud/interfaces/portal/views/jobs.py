"""Jobs: the list with filters, one job live, cancelling."""

from django.contrib import messages
from django.core.paginator import Paginator
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST, require_safe

from cloud.selectors import queries
from cloud.selectors.filtersets import JobFilterSet
from cloud.services.errors import ValidationError
from cloud.services.job_control import cancel_job, get_job

from .base import report_errors, team_page

JOBS_PER_PAGE = 30


@require_safe
@team_page
def job_list(request, team):
    filters = request.GET.copy()
    # The list shows the jobs people started unless asked for the per-VM ones too.
    filters.setdefault("top_level", "true")
    jobs = JobFilterSet(filters, queryset=queries.team_jobs(team))
    page = Paginator(jobs.qs, JOBS_PER_PAGE).get_page(request.GET.get("page"))
    # The filters again, for the page links (which add their own page number).
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request, "portal/jobs.html", {"form": jobs.form, "page": page, "query": query.urlencode()}
    )


def job_context(team, job) -> dict:
    return {
        "job": job,
        "progress": job.overall_progress,
        "steps": queries.job_steps(team, job),
        "children": queries.job_children(team, job),
    }


@require_safe
@team_page
def job_detail(request, team, job_id):
    job = get_job(request.user, team, job_id)
    return render(request, "portal/job.html", job_context(team, job))


@require_safe
@team_page
def job_live(request, team, job_id):
    """The progress, steps and logs alone, which the job page polls while it runs."""
    job = get_job(request.user, team, job_id)
    return render(request, "portal/partials/job_live.html", job_context(team, job))


@require_POST
@team_page
def job_cancel(request, team, job_id):
    try:
        cancel_job(user=request.user, team=team, job_id=job_id)
    except ValidationError as error:
        report_errors(request, error)
    else:
        messages.success(request, "Cancellation requested: the job stops at its next step.")
    return redirect("portal:job", team.name, job_id)
