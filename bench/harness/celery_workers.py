"""Shared by tests and benchmarks: how to start a real Celery worker process."""

import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


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


def database_url(settings_dict: dict) -> str:
    """The URL of the PostgreSQL database Django is connected to, for another process."""
    db = settings_dict
    host, port = db["HOST"] or "127.0.0.1", db["PORT"] or 5432
    return f"postgres://{db['USER']}:{db['PASSWORD']}@{host}:{port}/{db['NAME']}"


def start_worker(queue: str, name: str, env: dict[str, str], include=()) -> subprocess.Popen:
    """A worker process in its own session (so a kill takes its pool too)."""
    return subprocess.Popen(
        worker_argv(queue, name, include),
        cwd=REPO,
        start_new_session=True,
        env={**os.environ, **env},
    )


def kill_worker(proc: subprocess.Popen) -> None:
    """SIGKILL the worker with its pool, as a crash would."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
