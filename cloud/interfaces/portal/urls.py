"""The web portal's URLs.  Every team page carries the team's name, so a link
says which team it is about and works for anyone in that team."""

from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path

from cloud.interfaces.portal.views import (
    audit,
    console,
    dashboard,
    environments,
    images,
    jobs,
    tokens,
    vms,
)

app_name = "portal"

team_urls = [
    path("", dashboard.dashboard, name="dashboard"),
    path("jobs/active/", dashboard.active_jobs, name="active-jobs"),
    path("environments/new/", environments.create, name="environment-create"),
    path("environments/<int:env_id>/", environments.detail, name="environment"),
    path("environments/<int:env_id>/destroy/", environments.destroy, name="environment-destroy"),
    path("environments/<int:env_id>/deploy/", environments.deploy, name="deploy"),
    re_path(
        r"^environments/(?P<env_id>[0-9]+)/services/(?P<service_name>[a-z0-9-]{1,40})/"
        r"(?P<action>scale|promote|rollback)/$",
        environments.service_action,
        name="service-action",
    ),
    path("vms/<int:vm_id>/", vms.detail, name="vm"),
    path("vms/<int:vm_id>/console/", vms.console, name="vm-console"),
    path("vms/<int:vm_id>/console/ticket/", console.ticket, name="vm-console-ticket"),
    path("vms/<int:vm_id>/<slug:action>/", vms.act, name="vm-action"),
    path("jobs/", jobs.job_list, name="jobs"),
    path("jobs/<uuid:job_id>/", jobs.job_detail, name="job"),
    path("jobs/<uuid:job_id>/live/", jobs.job_live, name="job-live"),
    path("jobs/<uuid:job_id>/cancel/", jobs.job_cancel, name="job-cancel"),
    path("audit/", audit.audit_log, name="audit"),
    path("images/", images.image_list, name="images"),
    path("images/<int:image_id>/delete/", images.image_delete, name="image-delete"),
]

urlpatterns = [
    path("", dashboard.home, name="home"),
    path(
        "login/",
        auth_views.LoginView.as_view(redirect_authenticated_user=True),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("tokens/", tokens.token_list, name="tokens"),
    path("tokens/<int:token_id>/revoke/", tokens.token_revoke, name="token-revoke"),
    path("t/<slug:team>/", include(team_urls)),
]
