"""The team image registry's endpoints: its token service (``auth.token.realm``),
the receiver of its event notifications, and the team's image list.

The token endpoint:

Docker clients call it with Basic auth (any username, a Strata API token as
the password), ``service`` and zero or more ``scope`` parameters; see
cloud/services/registry_tokens.py for what is granted.  Errors carry both
Strata's ``detail`` and the registry protocol's ``errors`` list, which is
what ``docker login`` prints.
"""

import base64
import binascii
import hmac

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import authentication, exceptions, generics, serializers, status
from rest_framework.parsers import JSONParser
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from cloud.models import ExternalRegistry, RegistryImage
from cloud.selectors.registry_images import releases_by_image, team_images
from cloud.services.errors import ValidationError
from cloud.services.external_registries import (
    register_registry,
    remove_registry,
    team_registries,
)
from cloud.services.registry_images import delete_image, record_events
from cloud.services.registry_tokens import (
    InvalidCredentials,
    issue_registry_token,
    notification_secret,
)
from workers.drivers.registry import ImageNotInRegistry, ManifestInvalid, RegistryDown

from .serializers import KnownFieldsOnly, Text
from .views import ServiceUnavailable, TeamScopedMixin


def _basic_password(request) -> str | None:
    """The password of a Basic Authorization header, or None when there is none."""
    scheme, _, encoded = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    _, colon, password = decoded.partition(":")
    return password if colon else None


def _error(code: str, message: str, answer_status: int, **extra) -> Response:
    body = {"detail": message, "errors": [{"code": code, "message": message}], **extra}
    return Response(body, status=answer_status)


class RegistryToken(APIView):
    # The password is a Strata API token, checked by the service, not by DRF's schemes.
    authentication_classes = ()
    permission_classes = (AllowAny,)

    @extend_schema(
        parameters=[
            OpenApiParameter("service", str, required=True),
            OpenApiParameter("scope", str, many=True),
        ],
        responses={200: dict},
        description="A registry bearer token; Basic auth with an API token as the password.",
    )
    def get(self, request):
        try:
            answer = issue_registry_token(
                _basic_password(request),
                request.query_params.get("service"),
                request.query_params.getlist("scope"),
            )
        except InvalidCredentials as exc:
            response = _error("UNAUTHORIZED", str(exc), status.HTTP_401_UNAUTHORIZED)
            response["WWW-Authenticate"] = 'Basic realm="strata registry"'
            return response
        except ValidationError as exc:
            field, messages = next(iter(exc.message_dict.items()))
            return _error(
                "DENIED",
                f"{field}: {messages[0]}",
                status.HTTP_400_BAD_REQUEST,
                **exc.message_dict,
            )
        return Response(answer, headers={"Cache-Control": "no-store"})


class RegistryAddress(APIView):
    """Where Strata's registry is: what ``docker login`` and ``strata push`` talk to."""

    @extend_schema(responses={200: dict})
    def get(self, request):
        return Response(
            {"address": settings.STRATA_REGISTRY_ADDR, "service": settings.STRATA_REGISTRY_SERVICE}
        )


class RegistryEventsParser(JSONParser):
    media_type = "application/vnd.docker.distribution.events.v1+json"


class RegistryNotifier:
    """Who posts events: the registry, proving it with the shared notification secret."""

    is_authenticated = True


class NotificationSecretAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request):
        scheme, _, credential = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        if not hmac.compare_digest(credential.encode(), notification_secret().encode()):
            raise exceptions.AuthenticationFailed("not the registry's notification secret")
        return RegistryNotifier(), None

    def authenticate_header(self, request):
        return "Bearer"


class RegistryEvents(APIView):
    """The registry's notifications endpoint: pushes and deletes of manifests."""

    authentication_classes = (NotificationSecretAuthentication,)
    permission_classes = (IsAuthenticated,)
    parser_classes = (RegistryEventsParser, JSONParser)

    # Not part of the public API: only the registry calls it, with the shared secret
    # (so the hostile-input walk, which calls as a team member, leaves it to its own tests).
    @extend_schema(exclude=True)
    def post(self, request):
        try:
            recorded = record_events(request.data)
        except (RegistryDown, ImageNotInRegistry, ManifestInvalid) as exc:
            # A non-2xx answer makes the registry send the envelope again, with backoff.
            raise ServiceUnavailable(f"the pushed manifest could not be read: {exc}", 5) from exc
        return Response({"recorded": recorded})


class PinningReleaseSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    environment = serializers.CharField(source="service.environment.name")
    service = serializers.CharField(source="service.name")
    version = serializers.IntegerField()


class RegistryImageSerializer(serializers.ModelSerializer):
    tags = serializers.SlugRelatedField(many=True, read_only=True, slug_field="tag")
    pushed_by = serializers.SlugRelatedField(read_only=True, slug_field="username")
    releases = serializers.SerializerMethodField(help_text="the releases pinning this digest")

    @extend_schema_field(PinningReleaseSerializer(many=True))
    def get_releases(self, image):
        pinning = self.context["releases"].get((image.repository, image.digest), [])
        return PinningReleaseSerializer(pinning, many=True).data

    class Meta:
        model = RegistryImage
        fields = [
            "id",
            "repository",
            "digest",
            "tags",
            "size",
            "media_type",
            "pushed_by",
            "pushed_at",
            "releases",
        ]


class TeamImagesMixin(TeamScopedMixin):
    serializer_class = RegistryImageSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return RegistryImage.objects.none()
        return team_images(self.get_team())

    def get_serializer_context(self):
        fake = getattr(self, "swagger_fake_view", False)
        releases = {} if fake else releases_by_image(self.get_team())
        return {**super().get_serializer_context(), "releases": releases}


class TeamImageList(TeamImagesMixin, generics.ListAPIView):
    """The team's images in Strata's registry, newest push first per
    repository, each with the releases that pin it."""


class TeamImageDetail(TeamImagesMixin, generics.RetrieveDestroyAPIView):
    """One of the team's images; DELETE removes it from the registry unless a release pins it."""

    lookup_url_kwarg = "image_id"

    @extend_schema(responses={204: None, 409: dict})
    def delete(self, request, *args, **kwargs):
        try:
            delete_image(user=request.user, team=self.get_team(), image_id=kwargs["image_id"])
        except (RegistryDown, ManifestInvalid) as exc:
            raise ServiceUnavailable(f"the registry did not delete it: {exc}", 5) from exc
        return Response(status=status.HTTP_204_NO_CONTENT)


class ExternalRegistrySerializer(serializers.ModelSerializer):
    """A registered registry: its host and user name, never its password."""

    added_by = serializers.SlugRelatedField(read_only=True, slug_field="username")

    class Meta:
        model = ExternalRegistry
        fields = ["id", "host", "username", "added_by", "created_at"]


class ExternalRegistryWriteSerializer(KnownFieldsOnly):
    # Checked by the service, which names each bad field.
    host = Text()
    username = Text()
    password = Text(write_only=True)


class TeamRegistryList(TeamScopedMixin, generics.ListAPIView):
    """The external registries the team deploys from; POST registers one (or
    replaces its login), admins only."""

    serializer_class = ExternalRegistrySerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return ExternalRegistry.objects.none()
        return team_registries(self.request.user, self.get_team())

    @extend_schema(
        request=ExternalRegistryWriteSerializer, responses={201: ExternalRegistrySerializer}
    )
    def post(self, request, team):
        params = ExternalRegistryWriteSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        registry = register_registry(
            user=request.user, team=self.get_team(), **params.validated_data
        )
        return Response(self.get_serializer(registry).data, status=status.HTTP_201_CREATED)


class TeamRegistryDetail(TeamScopedMixin, generics.RetrieveDestroyAPIView):
    """One of the team's registries; DELETE forgets it unless a release pins an image from it."""

    serializer_class = ExternalRegistrySerializer
    lookup_url_kwarg = "registry_id"

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return ExternalRegistry.objects.none()
        return team_registries(self.request.user, self.get_team())

    @extend_schema(responses={204: None, 409: dict})
    def delete(self, request, *args, **kwargs):
        remove_registry(user=request.user, team=self.get_team(), registry_id=kwargs["registry_id"])
        return Response(status=status.HTTP_204_NO_CONTENT)
