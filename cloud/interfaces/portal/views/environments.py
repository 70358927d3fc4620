"""Environments: create, look at, destroy; deploy, promote, scale and roll back
their services."""

from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST, require_safe

from cloud.interfaces.portal.forms import (
    CreateEnvironmentForm,
    DeployForm,
    DestroyEnvironmentForm,
    PromoteForm,
    ScaleForm,
    show_service_errors,
)
from cloud.models import Flavor, Image, Service
from cloud.selectors import queries
from cloud.selectors.segment_map import segment_map
from cloud.services import deployments
from cloud.services.access import require_act
from cloud.services.environments import (
    create_environment,
    destroy_environment,
    get_environment,
)
from cloud.services.errors import Busy, ValidationError

from .base import busy_redirect, job_started, report_errors, require_some_act_role, team_page


@team_page
def create(request, team):
    require_some_act_role(request, team)
    form = CreateEnvironmentForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            job = create_environment(user=request.user, team=team, **form.cleaned_data)
        except ValidationError as error:
            show_service_errors(form, error)
        else:
            return job_started(request, job, f"Creating {job.environment.name}")
    catalogue_ready = Flavor.objects.exists() and Image.objects.exists()
    return render(
        request,
        "portal/environment_create.html",
        {"form": form, "catalogue_ready": catalogue_ready},
        status=400 if form.errors else 200,
    )


def render_environment(request, team, env, *, bound=None, deploy_form=None, status=200):
    """The environment page; ``bound`` holds a submitted service form with its
    errors, keyed by (action, service name), to show in place of the blank one."""
    bound = bound or {}
    promote_targets = queries.promotion_targets(team, env)
    services = [
        {
            "release": row,
            "scale_form": bound.get(("scale", row.service.name))
            or ScaleForm(initial={"replicas": row.service.replicas}),
            "promote_form": bound.get(("promote", row.service.name))
            or PromoteForm(targets=promote_targets),
        }
        for row in queries.service_releases(team, env)
    ]
    return render(
        request,
        "portal/environment.html",
        {
            "environment": env,
            "vms": queries.environment_vms(team, env),
            "segment_map": segment_map(team, env),
            "services": services,
            "promote_targets": promote_targets,
            "holding_job": queries.holding_job(env),
            "deploy_form": deploy_form or DeployForm(),
        },
        status=status,
    )


@require_safe
@team_page
def detail(request, team, env_id):
    env = get_environment(request.user, team, env_id)
    return render_environment(request, team, env)


@team_page
def destroy(request, team, env_id):
    """GET asks for confirmation (the name typed again); POST destroys."""
    env = get_environment(request.user, team, env_id)
    require_act(request.user, team, env.kind)
    form = DestroyEnvironmentForm(request.POST or None, environment=env)
    if request.method == "POST" and form.is_valid():
        try:
            job = destroy_environment(user=request.user, team=team, env_id=env.pk)
        except Busy as error:
            return busy_redirect(request, error, env_url(team, env))
        return job_started(request, job, f"Destroying {env.name}")
    return render(
        request,
        "portal/environment_destroy.html",
        {
            "environment": env,
            "form": form,
            "vm_count": queries.environment_vms(team, env).count(),
        },
        status=400 if form.errors else 200,
    )


def env_url(team, env) -> str:
    return reverse("portal:environment", args=[team.name, env.pk])


@require_POST
@team_page
def deploy(request, team, env_id):
    env = get_environment(request.user, team, env_id)
    require_act(request.user, team, env.kind)
    form = DeployForm(request.POST)
    if form.is_valid():
        try:
            job = deployments.deploy(
                user=request.user, team=team, env_id=env.pk, **form.mentioned()
            )
        except Busy as error:
            return busy_redirect(request, error, env_url(team, env))
        except ValidationError as error:
            show_service_errors(form, error)
        else:
            return job_started(request, job, f"Deploying {form.cleaned_data['service_name']}")
    return render_environment(request, team, env, deploy_form=form, status=400)


@require_POST
@team_page
def service_action(request, team, env_id, service_name, action):
    """Scale, promote or roll back one service of the environment."""
    env = get_environment(request.user, team, env_id)
    require_act(request.user, team, env.kind)
    if not Service.objects.filter(environment=env, name=service_name).exists():
        raise Http404("no such service")  # named by the URL, not by a form field
    names = {"service_name": service_name, "env_id": env.pk, "user": request.user, "team": team}
    if action == "scale":
        form = ScaleForm(request.POST)
        call = deployments.scale
    elif action == "promote":
        form = PromoteForm(request.POST, targets=queries.promotion_targets(team, env))
        call = deployments.promote
    else:
        form, call = None, deployments.rollback
    if form is None or form.is_valid():
        try:
            job = call(**names, **(form.cleaned_data if form else {}))
        except Busy as error:
            return busy_redirect(request, error, env_url(team, env))
        except ValidationError as error:
            if form is None:
                report_errors(request, error)
                return redirect(env_url(team, env))
            show_service_errors(form, error)
        else:
            return job_started(request, job, f"{action.capitalize()} {service_name}")
    return render_environment(request, team, env, bound={(action, service_name): form}, status=400)
