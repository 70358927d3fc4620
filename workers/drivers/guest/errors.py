"""Typed failures of the remote driver layer.

Jobs decide on retries by type: ``transient`` errors (the machine is not
reachable yet, a connection dropped) are worth retrying with backoff; the
others need a human or a changed input.
"""


class RemoteError(Exception):
    """Base of every error raised by ``workers.drivers.guest``."""

    transient = False


class SSHUnreachable(RemoteError):
    """No SSH session could be set up: refused, timed out, or dropped."""

    transient = True


class HostKeyMismatch(RemoteError):
    """The server's host key is not the pinned one (changed or unknown)."""


class SSHAuthFailed(RemoteError):
    """The server refused the manager's key."""


class CommandFailed(RemoteError):
    """A remote command exited with a non-zero status."""

    def __init__(self, argv: list[str], exit_status: int, stderr_tail: str):
        self.argv = argv
        self.exit_status = exit_status
        self.stderr_tail = stderr_tail
        super().__init__(f"{argv[0]!r} exited with {exit_status}: {stderr_tail.strip()}")


class CommandTimeout(RemoteError):
    """A remote command did not finish within its timeout."""

    transient = True

    def __init__(self, argv: list[str], timeout: float):
        self.argv = argv
        self.timeout = timeout
        super().__init__(f"{argv[0]!r} did not finish within {timeout:g} s")


class InvalidSpec(RemoteError, ValueError):
    """A service spec field is invalid; ``field`` names it."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class ImageShipFailed(RemoteError):
    """An image could not be pulled into or pushed to the remote engine."""


class HealthCheckFailed(RemoteError):
    """A container never became healthy; carries what is needed to debug it."""

    def __init__(
        self,
        container: str,
        reason: str,
        last_output: str,
        logs_tail: str,
        out_of_time: bool = False,  # the caller's deadline came before the retries ran out
    ):
        self.container = container
        self.reason = reason
        self.out_of_time = out_of_time
        self.last_output = last_output
        self.logs_tail = logs_tail
        super().__init__(f"container {container} unhealthy: {reason}")


class RolloutFailed(RemoteError):
    """A rollout stopped at ``step``; ``serving_release`` is what serves now."""

    def __init__(
        self,
        step: str,
        reason: str,
        serving_release: str | None,
        health: HealthCheckFailed | None = None,
    ):
        self.step = step
        self.reason = reason
        self.serving_release = serving_release
        self.health = health
        super().__init__(f"rollout failed at {step}: {reason}; serving: {serving_release}")
