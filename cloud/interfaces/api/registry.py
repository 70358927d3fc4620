"""The token endpoint of the team image registry (``auth.token.realm``).

Docker clients call it with Basic auth (any username, a Strata API token as
the password), ``service`` and zero or more ``scope`` parameters; see
cloud/services/registry_tokens.py for what is granted.  Errors carry both
Strata's ``detail`` and the registry protocol's ``errors`` list, which is
what ``docker login`` prints.
"""

import base64
import binascii

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from cloud.services.errors import ValidationError
from cloud.services.registry_tokens import InvalidCredentials, issue_registry_token


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
                "DENIED", f"{field}: {messages[0]}", status.HTTP_400_BAD_REQUEST,
                **exc.message_dict,
            )
        return Response(answer, headers={"Cache-Control": "no-store"})
