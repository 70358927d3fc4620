"""Service errors as JSON answers: 400 names the field, 403 the role needed,
404 for anything of another team, 409 the job holding the environment or
the field whose resource ran out."""

from django.core.exceptions import ValidationError as DjangoValidationError
from django.urls import reverse
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from cloud.services.errors import Busy, Conflict, Forbidden, NotFound


def handle(exc, context):
    if isinstance(exc, Conflict):
        return Response(exc.message_dict, status=status.HTTP_409_CONFLICT)
    if isinstance(exc, DjangoValidationError):
        body = exc.message_dict if hasattr(exc, "error_dict") else {"detail": exc.messages}
        return Response(body, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, NotFound):
        return Response({"detail": str(exc)}, status=status.HTTP_404_NOT_FOUND)
    if isinstance(exc, Forbidden):
        return Response({"detail": str(exc)}, status=status.HTTP_403_FORBIDDEN)
    if isinstance(exc, Busy):
        url = context["request"].build_absolute_uri(
            reverse("api:job-detail", args=[exc.job.team.name, exc.job.pk])
        )
        return Response(
            {"detail": str(exc), "job": url, "hint": "retry later or pass queue_if_busy=true"},
            status=status.HTTP_409_CONFLICT,
        )
    return exception_handler(exc, context)
