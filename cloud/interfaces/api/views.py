"""REST API v1.  Every team-owned query goes through ``for_team``; every
change goes through a service, which checks the role and validates."""

from django.db.models import Count, Prefetch
from drf_spectacular.utils import extend_schema
from rest_framework import generics, mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import APIException
from rest_framework.permissions import SAFE_METHODS
from rest_framework.response import Response

from cloud.models import (
    Container,
    Deployment,
    DeploymentState,
    Environment,
    Flavor,
    Image,
    Job,
    PortForward,
    Release,
    Secret,
    Service,
    VirtualMachine,
)
from cloud.selectors import filtersets, queries
from cloud.services import containers, deployments, environments, job_control, secrets
from cloud.services.access import require_role
from cloud.services.errors import NotFound
from tenants.models import AuditEvent, Membership, Role, Team

from . import serializers


class ServiceUnavailable(APIException):
    """503 with Retry-After (DRF sends ``wait`` as that header)."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "the VM did not answer"

    def __init__(self, detail, wait: int):
        super().__init__(detail)
        self.wait = wait


class TeamScopedMixin:
    """The team named in the URL, only if the caller belongs to it (else 404)."""

    def scoped(self, model):
        """``model``'s rows of the URL's team (none while the schema is generated)."""
        if getattr(self, "swagger_fake_view", False):
            return model.objects.none()
        return model.objects.for_team(self.get_team())

    def initial(self, request, *args, **kwargs):
        # Scope before anything reads the request: another team is a 404, whatever the body.
        super().initial(request, *args, **kwargs)
        if getattr(self, "swagger_fake_view", False):
            return
        team = self.get_team()
        if request.method not in SAFE_METHODS:
            # Viewers read; whatever the body says, they act on nothing.
            require_role(request.user, team, Role.DEVELOPER)

    def get_team(self) -> Team:
        if not hasattr(self, "_team"):
            # One lookup for both cases: a team that does not exist and one the
            # caller is not in answer alike, so names cannot be enumerated.
            member = (
                Membership.objects.filter(user=self.request.user, team__name=self.kwargs["team"])
                .select_related("team")
                .first()
            )
            if member is None:
                raise NotFound("no such team")
            self._team = member.team
        return self._team


def job_accepted(request, job) -> Response:
    """202 with the job that does the work, also in the Location header."""
    body = serializers.JobSerializer(job, context={"request": request}).data
    return Response(body, status=status.HTTP_202_ACCEPTED, headers={"Location": body["url"]})


class TeamList(generics.ListAPIView):
    serializer_class = serializers.TeamSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Team.objects.none()
        return Team.objects.filter(membership__user=self.request.user).order_by("name")

    def get_serializer_context(self):
        roles = dict(Membership.objects.filter(user=self.request.user).values_list("team", "role"))
        return {**super().get_serializer_context(), "roles": roles}


class FlavorList(generics.ListAPIView):
    serializer_class = serializers.FlavorSerializer
    queryset = Flavor.objects.all()


class ImageList(generics.ListAPIView):
    serializer_class = serializers.ImageSerializer
    queryset = Image.objects.all()


class EnvironmentViewSet(
    TeamScopedMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    serializer_class = serializers.EnvironmentSerializer
    filterset_class = filtersets.EnvironmentFilterSet

    def get_queryset(self):
        return (
            self.scoped(Environment)
            .select_related("team", "lock_job")
            .prefetch_related(
                Prefetch("vms", queryset=VirtualMachine.objects.only("state", "environment"))
            )
            .annotate(vm_count=Count("vms"))
            .order_by("kind", "name")
        )

    @extend_schema(
        request=serializers.EnvironmentCreateSerializer, responses={202: serializers.JobSerializer}
    )
    def create(self, request, team):
        params = serializers.EnvironmentCreateSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        job = environments.create_environment(
            user=request.user, team=self.get_team(), **params.validated_data
        )
        return job_accepted(request, job)

    @extend_schema(
        parameters=[serializers.DestroyQuerySerializer], responses={202: serializers.JobSerializer}
    )
    def destroy(self, request, team, pk):
        query = serializers.DestroyQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        job = environments.destroy_environment(
            user=request.user, team=self.get_team(), env_id=pk, **query.validated_data
        )
        return job_accepted(request, job)

    def _operation(self, request, pk, serializer_class, operation):
        self.get_object()  # another team's environment is a 404 before the body is read
        params = serializer_class(data=request.data)
        params.is_valid(raise_exception=True)
        job = operation(user=request.user, team=self.get_team(), env_id=pk, **params.validated_data)
        return job_accepted(request, job)

    @extend_schema(request=serializers.DeploySerializer, responses={202: serializers.JobSerializer})
    @action(detail=True, methods=["post"])
    def deploy(self, request, team, pk):
        return self._operation(request, pk, serializers.DeploySerializer, deployments.deploy)

    @extend_schema(
        request=serializers.PromoteSerializer, responses={202: serializers.JobSerializer}
    )
    @action(detail=True, methods=["post"])
    def promote(self, request, team, pk):
        return self._operation(request, pk, serializers.PromoteSerializer, deployments.promote)

    @extend_schema(request=serializers.ScaleSerializer, responses={202: serializers.JobSerializer})
    @action(detail=True, methods=["post"])
    def scale(self, request, team, pk):
        return self._operation(request, pk, serializers.ScaleSerializer, deployments.scale)

    @extend_schema(
        request=serializers.RollbackSerializer, responses={202: serializers.JobSerializer}
    )
    @action(detail=True, methods=["post"])
    def rollback(self, request, team, pk):
        return self._operation(request, pk, serializers.RollbackSerializer, deployments.rollback)

    @extend_schema(responses={200: serializers.ServiceSerializer(many=True)})
    @action(detail=True, methods=["get"])
    def services(self, request, team, pk):
        env = self.get_object()
        services = Service.objects.filter(environment=env).prefetch_related(
            Prefetch("containers", queryset=Container.objects.select_related("vm", "release"))
        )
        context = {
            "request": request,
            "deployments": Deployment.objects.filter(
                environment=env, state=DeploymentState.SUCCEEDED
            ).select_related("release"),
            "forwards": PortForward.objects.filter(vm__environment=env).select_related("vm"),
        }
        return Response(serializers.ServiceSerializer(services, many=True, context=context).data)


class VirtualMachineViewSet(
    TeamScopedMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    serializer_class = serializers.VirtualMachineSerializer
    filterset_class = filtersets.VirtualMachineFilterSet

    def get_queryset(self):
        return (
            self.scoped(VirtualMachine)
            .select_related("environment__team", "host", "flavor", "image")
            .order_by("environment__name", "name")
        )

    @extend_schema(
        request=serializers.VMActionSerializer, responses={202: serializers.JobSerializer}
    )
    @action(detail=True, methods=["post"])
    def actions(self, request, team, pk):
        self.get_object()
        params = serializers.VMActionSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        job = environments.vm_action(
            user=request.user, team=self.get_team(), vm_id=pk, **params.validated_data
        )
        return job_accepted(request, job)


class ReleaseViewSet(
    TeamScopedMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    """Every release of the team's services, newest first; ``current`` marks the
    one each service runs."""

    serializer_class = serializers.ReleaseSerializer
    filterset_class = filtersets.ReleaseFilterSet

    def get_queryset(self):
        return (
            self.scoped(Release)
            .select_related(
                "service__environment", "created_by", "promoted_from__service__environment"
            )
            .order_by("service__environment__name", "service__name", "-version")
        )

    def get_serializer_context(self):
        context = super().get_serializer_context()
        if not getattr(self, "swagger_fake_view", False):
            context["current"] = queries.current_release_ids(self.get_team())
        return context


class JobViewSet(
    TeamScopedMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    serializer_class = serializers.JobSerializer
    filterset_class = filtersets.JobFilterSet

    def get_queryset(self):
        return (
            self.scoped(Job)
            .select_related("team", "environment", "requested_by")
            .prefetch_related("steps", "children__team")
            .order_by("-created_at")
        )

    @extend_schema(request=None, responses={200: serializers.JobSerializer})
    @action(detail=True, methods=["post"])
    def cancel(self, request, team, pk):
        job = job_control.cancel_job(user=request.user, team=self.get_team(), job_id=pk)
        return Response(self.get_serializer(job).data)


class AuditEventList(TeamScopedMixin, generics.ListAPIView):
    serializer_class = serializers.AuditEventSerializer
    filterset_class = filtersets.AuditEventFilterSet

    def get_queryset(self):
        return self.scoped(AuditEvent).select_related("actor")


class ContainerViewSet(TeamScopedMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """A container's logs and a stats sample, read live from its VM's engine."""

    serializer_class = serializers.ContainerSerializer

    def get_queryset(self):
        return self.scoped(Container).select_related("vm", "release")

    @extend_schema(
        parameters=[serializers.LogsQuerySerializer], responses={200: serializers.LogsSerializer}
    )
    @action(detail=True, methods=["get"])
    def logs(self, request, team, pk):
        self.get_object()
        query = serializers.LogsQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        text = self._live(containers.logs, pk, **query.validated_data)
        return Response({"logs": text})

    @extend_schema(responses={200: serializers.StatsSerializer})
    @action(detail=True, methods=["get"])
    def stats(self, request, team, pk):
        return Response(self._live(containers.stats, pk))

    def _live(self, read, pk, **params):
        try:
            return read(user=self.request.user, team=self.get_team(), container_id=pk, **params)
        except containers.Unavailable as exc:
            raise ServiceUnavailable(str(exc), exc.retry_after) from exc


class SecretViewSet(TeamScopedMixin, mixins.ListModelMixin, viewsets.GenericViewSet):
    """The team's secrets by scope and name; create replaces a value, DELETE removes.

    A scope is an environment kind (``scope``) or one environment
    (``environment``); DELETE names it in the query string.
    """

    serializer_class = serializers.SecretSerializer
    filterset_class = filtersets.SecretFilterSet
    lookup_field = "name"
    lookup_value_regex = "[^/]+"

    def get_queryset(self):
        return self.scoped(Secret).select_related("environment").order_by("scope", "name")

    @extend_schema(
        request=serializers.SecretWriteSerializer, responses={201: serializers.SecretSerializer}
    )
    def create(self, request, team):
        params = serializers.SecretWriteSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        secret = secrets.set_secret(
            user=request.user, team=self.get_team(), **params.validated_data
        )
        return Response(self.get_serializer(secret).data, status=status.HTTP_201_CREATED)

    @extend_schema(parameters=[serializers.SecretScopeSerializer])
    def destroy(self, request, team, name):
        where = serializers.SecretScopeSerializer(data=request.query_params)
        where.is_valid(raise_exception=True)
        secrets.delete_secret(
            user=request.user, team=self.get_team(), name=name, **where.validated_data
        )
        return Response(status=status.HTTP_204_NO_CONTENT)
