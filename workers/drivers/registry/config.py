"""The registry's configuration file, rendered from Strata's settings.

Written as JSON, which is YAML too: the values are serialised, never
formatted into text, so no setting can inject configuration.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RegistryConfig:
    addr: str  # host:port to listen on; loopback
    storage_dir: Path  # where blobs and manifests live
    realm: str  # Strata's token endpoint, as clients reach it
    service: str  # the token audience
    issuer: str  # the token issuer
    certificate_path: Path  # the certificate whose key signs the tokens
    notify_url: str  # where the registry posts its push and delete events
    notify_secret: str  # sent as the Bearer credential of those posts


def render_config(config: RegistryConfig) -> str:
    document = {
        "version": 0.1,
        "log": {"level": "info", "fields": {"service": "registry"}},
        "storage": {
            "filesystem": {"rootdirectory": str(config.storage_dir)},
            "delete": {"enabled": True},
        },
        "http": {"addr": config.addr, "headers": {"X-Content-Type-Options": ["nosniff"]}},
        "auth": {
            "token": {
                "realm": config.realm,
                "service": config.service,
                "issuer": config.issuer,
                "rootcertbundle": str(config.certificate_path),
            }
        },
        "health": {"storagedriver": {"enabled": True, "interval": "10s", "threshold": 3}},
        "notifications": {
            "events": {"includereferences": True},
            "endpoints": [
                {
                    "name": "strata",
                    "url": config.notify_url,
                    "headers": {"Authorization": [f"Bearer {config.notify_secret}"]},
                    "timeout": "5s",
                    "threshold": 3,
                    "backoff": "2s",
                    # Layer uploads are not images; only manifests are recorded.
                    "ignoredmediatypes": ["application/octet-stream"],
                }
            ],
        },
    }
    return json.dumps(document, indent=2) + "\n"


def write_config(config: RegistryConfig, path: Path) -> Path:
    """Write the rendered configuration to ``path`` atomically (0600: it holds
    the notification secret); returns it."""
    config.storage_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(render_config(config))
    os.replace(partial, path)
    return path
