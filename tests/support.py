"""Shared by tests and benchmarks: how to start a real Celery worker process."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def worker_argv(queue: str, name: str, include=()) -> list[str]:
    """A one-process worker serving ``queue`` (comma-separated queues allowed)."""
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers",
        "worker",
        "-Q",
        queue,
        "-c",
        "1",
        "--without-gossip",
        "--without-mingle",
        "-n",
        f"{name}@%h",
        "--loglevel",
        "WARNING",
    ]
    for module in include:
        argv += ["--include", module]
    return argv
