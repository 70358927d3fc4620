"""Errors the services raise; the interfaces map them to HTTP answers.

``ValidationError`` (Django's, with a field -> messages dict) is a 400 that
names the field; ``NotFound`` is a 404 also used for other teams' objects so
their existence is never confirmed; ``Forbidden`` is a 403 for a member whose
role is too low; ``Busy`` a 409 naming the job that holds the environment.
"""

from django.core.exceptions import ValidationError

__all__ = ["Busy", "Forbidden", "NotFound", "QuotaExceeded", "ValidationError"]


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
