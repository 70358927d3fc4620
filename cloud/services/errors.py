"""Errors the services raise; the interfaces map them to HTTP answers.

``ValidationError`` (Django's, with a field -> messages dict) is a 400 that
names the field; ``NotFound`` is a 404 also used for other teams' objects so
their existence is never confirmed; ``Forbidden`` is a 403 for a member whose
role is too low; ``Busy`` a 409 naming the job that holds the environment;
``Conflict`` a 409 naming the field whose resource ran out (a subnet pool).
"""

from django.core.exceptions import ValidationError

__all__ = ["Busy", "Conflict", "Forbidden", "NotFound", "QuotaExceeded", "ValidationError"]


class NotFound(Exception):
    pass


class Forbidden(Exception):
    pass


class QuotaExceeded(ValidationError):
    pass


class Busy(Exception):
    def __init__(self, job):
        super().__init__(f"environment is busy with job {job.id} ({job.kind})")
        self.job = job


class Conflict(ValidationError):
    """A valid request the current state refuses (a 409): ``field`` ran out.

    A ValidationError too, so a form shows it beside the field like any refusal."""

    def __init__(self, field: str, message: str):
        super().__init__({field: [message]})
