"""Jobs: the slow operations a team triggered, and their steps."""

import uuid

from django.conf import settings
from django.core.validators import MaxValueValidator
from django.db import models
from django.utils import timezone

from cloud.models.environments import Environment, VirtualMachine
from cloud.models.states import JOB_MACHINE, JobState, StatefulModel, state_check
from tenants.models import Team, TeamScopedQuerySet, scoped_queryset


class Job(StatefulModel):
    """A slow operation a team triggered: a named list of steps run by a worker."""

    machine = JOB_MACHINE

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="jobs")
    kind = models.CharField(max_length=40)
    environment = models.ForeignKey(
        Environment, null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs"
    )
    vm = models.ForeignKey(
        VirtualMachine, null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs"
    )
    params = models.JSONField(default=dict, blank=True)
    # A job of several VMs is a parent with one child per VM, each on its host's queue.
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="children"
    )
    # Set when the caller asked to queue behind the job holding the environment.
    waits_for = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="waiters"
    )
    queue = models.CharField(max_length=60, default="strata")
    state = models.CharField(max_length=10, choices=JobState.choices, default=JobState.QUEUED)
    progress = models.PositiveSmallIntegerField(default=0, validators=[MaxValueValidator(100)])
    error = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)
    attempts = models.PositiveSmallIntegerField(default=0)
    # The run that may execute the job's steps: one at a time.  The owner renews
    # ``lease_expires_at`` while it runs; every write it makes checks its token,
    # so a run whose lease another delivery took over stops without writing.
    lease_token = models.UUIDField(null=True, blank=True, editable=False)
    lease_owner = models.CharField(max_length=200, blank=True, editable=False)
    lease_expires_at = models.DateTimeField(null=True, blank=True, editable=False)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = TeamScopedQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            state_check("state", JobState, "job_state_valid"),
            models.CheckConstraint(
                condition=models.Q(progress__gte=0, progress__lte=100), name="job_progress_percent"
            ),
        ]
        indexes = [
            models.Index(fields=["team", "state"]),
            models.Index(fields=["team", "queue", "lease_expires_at"], name="job_team_queue_lease"),
        ]

    def __str__(self):
        return f"{self.kind} {str(self.id)[:8]} ({self.state})"

    @property
    def is_finished(self) -> bool:
        return self.state in self.machine.final_states

    @property
    def overall_progress(self) -> int:
        """The percent done that every interface shows.  A parent job has no steps
        of its own: its progress is its children's mean, a finished child counting
        as done."""
        children = list(self.children.all())
        if not children:
            return self.progress
        return sum(100 if c.is_finished else c.progress for c in children) // len(children)

    def move_to(self, target: str, save: bool = True, **fields) -> None:
        if target == JobState.RUNNING and self.started_at is None:
            fields.setdefault("started_at", timezone.now())
        if target in self.machine.final_states:
            fields.setdefault("finished_at", timezone.now())
        super().move_to(target, save=save, **fields)


class JobStepState(models.TextChoices):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


class JobStep(models.Model):
    State = JobStepState

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="steps")
    index = models.PositiveSmallIntegerField()
    name = models.CharField(max_length=60)
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    log = models.TextField(blank=True)

    objects = scoped_queryset("job__team").as_manager()

    class Meta:
        ordering = ["job", "index"]
        constraints = [
            models.UniqueConstraint(fields=["job", "index"], name="job_step_index_unique"),
            state_check("state", JobStepState, "job_step_state_valid"),
        ]

    def __str__(self):
        return f"{self.index}. {self.name} ({self.state})"
