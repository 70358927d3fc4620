"""``scripts/services.sh registry`` starts Strata's registry from the settings,
once; the health check tells Strata's registry from another one."""

import os
import subprocess
import sys

import pytest

from cloud.services.registry_tokens import registry_config
from tests.registry.conftest import free_loopback_port
from workers.drivers.registry import RegistryDown, check_health

pytestmark = pytest.mark.integration
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_services_starts_the_registry_once_from_the_settings(tmp_path):
    addr = f"127.0.0.1:{free_loopback_port()}"
    env = {
        **os.environ,
        "STRATA_DATA_DIR": str(tmp_path / "data"),
        "STRATA_REGISTRY_ADDR": addr,
        "STRATA_LOG_DIR": str(tmp_path / "log"),
        "STRATA_PYTHON": sys.executable,
    }
    auth_dir = tmp_path / "data" / "registry-auth"
    config = auth_dir / "config.yml"
    try:
        for _ in range(2):  # the second run finds it answering and starts nothing
            subprocess.run([f"{REPO}/scripts/services.sh", "registry"], env=env, check=True,
                           capture_output=True, timeout=120)
        running = subprocess.run(["pgrep", "-f", f"docker-registry serve {config}"],
                                 capture_output=True, text=True)
        assert len(running.stdout.split()) == 1
        assert config.stat().st_mode & 0o777 == 0o600
        assert (auth_dir / "token-signing.key").stat().st_mode & 0o777 == 0o600
        check_health(addr, "http://127.0.0.1:8000/api/v1/registry/token", "strata-registry")
    finally:
        # Only the registry this test started: its config path is this test's own.
        found = subprocess.run(["pgrep", "-f", f"docker-registry serve {config}"],
                               capture_output=True, text=True).stdout.split()
        for pid in found:
            os.kill(int(pid), 15)


@pytest.mark.django_db(transaction=True)
def test_the_health_check_names_what_is_wrong(registry, registry_settings):
    config = registry_config()
    check_health(config.addr, config.realm, config.service)
    with pytest.raises(RegistryDown, match="realm"):
        check_health(config.addr, "http://elsewhere/token", config.service)
    with pytest.raises(RegistryDown, match="does not answer"):
        check_health(f"127.0.0.1:{free_loopback_port()}", config.realm, config.service)
