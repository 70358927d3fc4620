"""Typed failures of the image driver, so callers can tell a refused image from a
broken build or a tool that misbehaved."""


class ImageError(Exception):
    """Base class of every error raised by workers.drivers.images."""


class ImageRejected(ImageError):
    """An image failed the hostile-image checks; `reason` says which one."""

    def __init__(self, reason: str):
        super().__init__(f"image rejected: {reason}")
        self.reason = reason


class ChecksumMismatch(ImageError):
    def __init__(self, expected: str, actual: str):
        super().__init__(f"sha256 mismatch: expected {expected}, got {actual}")
        self.expected = expected
        self.actual = actual


class ImageBuildError(ImageError):
    """A build step failed; the message carries the step and the tool's output tail."""


class LimitedCommandError(ImageError):
    """A command run under resource limits failed, was killed or timed out."""

    def __init__(self, message: str, returncode: int | None, stderr: str = ""):
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr


class LimitedCommandTimeout(LimitedCommandError):
    pass
