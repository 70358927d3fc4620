"""One VM: its console, its allocation, and the actions on it."""

from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST, require_safe

from cloud.interfaces.portal.forms import (
    VM_ACTION_FORMS,
    ResizeForm,
    SnapshotForm,
    show_service_errors,
)
from cloud.selectors import queries
from cloud.selectors.charts import vm_charts
from cloud.selectors.console import console_log_path, console_tail
from cloud.services.access import require_act
from cloud.services.environments import VM_ACTIONS, get_vm, vm_action
from cloud.services.errors import Busy, ValidationError

from .base import busy_redirect, job_started, report_errors, team_page


def render_vm(request, team, vm, *, bound=None, status=200):
    """The VM page; ``bound`` is a submitted action form with its errors, by action."""
    bound = bound or {}
    return render(
        request,
        "portal/vm.html",
        {
            "vm": vm,
            "environment": vm.environment,
            "console": console_tail(vm),
            "console_path": console_log_path(vm),
            "charts": vm_charts(team, vm),
            "snapshots": queries.vm_snapshots(team, vm),
            "snapshot_form": bound.get("snapshot") or SnapshotForm(),
            "snapshot_error_form": bound.get("revert") or bound.get("delete_snapshot"),
            "resize_form": bound.get("resize") or ResizeForm(initial={"flavor": vm.flavor.name}),
            "jobs": queries.vm_jobs(team, vm),
        },
        status=status,
    )


@require_safe
@team_page
def detail(request, team, vm_id):
    return render_vm(request, team, get_vm(request.user, team, vm_id))


@require_safe
@team_page
def console(request, team, vm_id):
    """The console tail alone, which the VM page polls."""
    vm = get_vm(request.user, team, vm_id)
    return render(
        request,
        "portal/partials/console.html",
        {
            "vm": vm,
            "console": console_tail(vm),
            "console_path": console_log_path(vm),
        },
    )


@require_POST
@team_page
def act(request, team, vm_id, action):
    """Start, stop, reboot, snapshot, revert, delete a snapshot, or resize."""
    if action not in VM_ACTIONS:
        raise Http404("no such action")
    vm = get_vm(request.user, team, vm_id)
    require_act(request.user, team, vm.environment.kind)
    form = VM_ACTION_FORMS[action](request.POST) if action in VM_ACTION_FORMS else None
    if form is None or form.is_valid():
        try:
            job = vm_action(
                user=request.user,
                team=team,
                vm_id=vm.pk,
                action=action,
                **(form.cleaned_data if form else {}),
            )
        except Busy as error:
            return busy_redirect(request, error, reverse("portal:vm", args=[team.name, vm.pk]))
        except ValidationError as error:
            if form is None:
                # start, stop, reboot: the only possible complaint is the VM's state
                report_errors(request, error)
                return redirect("portal:vm", team.name, vm.pk)
            show_service_errors(form, error)
        else:
            return job_started(request, job, f"{action.replace('_', ' ').capitalize()} {vm.name}")
    return render_vm(request, team, vm, bound={action: form}, status=400)
