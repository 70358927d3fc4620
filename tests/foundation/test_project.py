"""Project-level checks: migrations complete, production settings sane."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.django_db
def test_migrations_are_complete():
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)


def manage(*args, env_overrides, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "SECRET_KEY", "STRATA_HTTPS"}}
    env.update({"STRATA_DATA_DIR": str(tmp_path / "data"), **env_overrides})
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_deploy_checks_pass_with_debug_off(tmp_path):
    result = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        env_overrides={"DEBUG": "false"},
        tmp_path=tmp_path,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    key = tmp_path / "data" / "secret_key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert len(key.read_text().strip()) >= 50


def test_debug_is_off_unless_asked(tmp_path):
    code = "from django.conf import settings; print(settings.DEBUG)"
    result = manage("shell", "-c", code, env_overrides={}, tmp_path=tmp_path)
    assert result.stdout.strip().splitlines()[-1] == "False", result.stderr


def test_bad_boolean_setting_names_the_variable(tmp_path):
    result = manage("check", env_overrides={"DEBUG": "maybe"}, tmp_path=tmp_path)
    assert result.returncode != 0
    assert "DEBUG must be true or false" in result.stderr


def test_bad_virt_type_names_the_variable(tmp_path):
    result = manage("check", env_overrides={"STRATA_VIRT_TYPE": "xen"}, tmp_path=tmp_path)
    assert result.returncode != 0
    assert "STRATA_VIRT_TYPE" in result.stderr
