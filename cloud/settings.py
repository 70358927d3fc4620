"""Django settings for Strata.

Every setting a deployment may change is read from the environment here and
only here; README.md has the table.  Defaults are safe for a one-machine trial.
"""

import os
import re
import secrets
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from cloud.keyfiles import read_or_create

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off", ""}:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, not {value!r}")


def default_data_dir() -> Path:
    # libvirt's qemu runs as its own user and must reach the disks, so root keeps
    # them under /var/lib rather than in a home directory it cannot traverse.
    if os.geteuid() == 0:
        return Path("/var/lib/strata")
    return Path.home() / ".local" / "share" / "strata"


STRATA_DATA_DIR = Path(os.environ.get("STRATA_DATA_DIR") or default_data_dir())


def load_secret_key() -> str:
    """SECRET_KEY from the environment, else one generated on first run and kept
    in the data directory (mode 0600), never in the repository."""
    if os.environ.get("SECRET_KEY"):
        return os.environ["SECRET_KEY"]
    return read_or_create(STRATA_DATA_DIR / "secret_key", lambda: secrets.token_urlsafe(50)).strip()


SECRET_KEY = load_secret_key()
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = [
    h.strip()
    for h in os.environ.get("ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")
    if h.strip()
]
CSRF_TRUSTED_ORIGINS = [
    o.strip() for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()
]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "tenants",
    "cloud",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "cloud.urls"
WSGI_APPLICATION = "cloud.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "cloud.interfaces.portal.views.base.portal_context",
            ],
            # The portal's tags live with the portal, not at the app's top level.
            "libraries": {"portal": "cloud.interfaces.portal.templatetags.portal"},
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{STRATA_DATA_DIR / 'strata.sqlite3'}",
        conn_max_age=60,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Celery workers and the web server write at once: wait for the lock
    # instead of failing, and let readers go on during writes.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL;",
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = STRATA_DATA_DIR / "static"
LOGIN_URL = "portal:login"
LOGIN_REDIRECT_URL = "portal:home"
LOGOUT_REDIRECT_URL = "portal:login"

# Secure defaults whenever DEBUG is off.  TLS is usually terminated by a proxy
# in front of Strata; STRATA_HTTPS=false is for the plain-HTTP loopback trial.
STRATA_HTTPS = env_bool("STRATA_HTTPS", not DEBUG)
SESSION_COOKIE_SECURE = STRATA_HTTPS
CSRF_COOKIE_SECURE = STRATA_HTTPS
SECURE_SSL_REDIRECT = STRATA_HTTPS and env_bool("STRATA_SSL_REDIRECT", True)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_HSTS_SECONDS = 31536000 if STRATA_HTTPS else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = STRATA_HTTPS
SECURE_HSTS_PRELOAD = STRATA_HTTPS
SECURE_CONTENT_TYPE_NOSNIFF = True
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "cloud.interfaces.api.auth.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "cloud.interfaces.api.exceptions.handle",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Strata API",
    "DESCRIPTION": "Environments of KVM VMs with Docker services inside, per team.",
    "VERSION": "1",
    # Served from this server: no CDN is reachable from a private cloud.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    # Environments and secret scopes share the kinds: one schema name for both.
    "ENUM_NAME_OVERRIDES": {"EnvironmentKindEnum": "cloud.models.EnvironmentKind"},
}

# --- Celery -----------------------------------------------------------------
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND", CELERY_BROKER_URL)
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# A task is acknowledged only when it has finished, and re-queued when the process
# running it dies, so a killed worker's job is redelivered and resumes.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "strata"
CELERY_RESULT_EXPIRES = 3600
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {
    # When a whole worker dies, its unacknowledged jobs go back to the queue after
    # this long; it must exceed the longest single step, or a slow step would be
    # delivered twice.
    "visibility_timeout": int(os.environ.get("STRATA_VISIBILITY_TIMEOUT", "900")),
    # How often workers sweep for such abandoned messages.
    "unacked_restore_interval": int(os.environ.get("STRATA_UNACKED_RESTORE_SECONDS", "10")),
    "unacked_restore_throttle": 1,
}
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BEAT_SCHEDULE_FILENAME = str(STRATA_DATA_DIR / "celerybeat-schedule")

# --- Strata -------------------------------------------------------------------
# Each host's domain type is detected (CPU flags, /dev/kvm, libvirt's kvm
# domain capabilities) unless an operator overrides it on the host; this is
# only the type of a host not detected yet.  TCG ("qemu") works anywhere.
STRATA_VIRT_TYPE = os.environ.get("STRATA_VIRT_TYPE", "qemu")
if STRATA_VIRT_TYPE not in {"kvm", "qemu"}:
    raise ImproperlyConfigured("STRATA_VIRT_TYPE must be 'kvm' or 'qemu'")
# The guest CPU on KVM hosts: "host-passthrough" (fastest, the host's own CPU),
# or a libvirt CPU model name, the same on every host (e.g. "Skylake-Client-IBRS").
STRATA_CPU_MODEL = os.environ.get("STRATA_CPU_MODEL", "host-passthrough")
if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", STRATA_CPU_MODEL):
    raise ImproperlyConfigured(
        "STRATA_CPU_MODEL must be 'host-passthrough' or a CPU model name "
        f"(letters, digits, _ . -), not {STRATA_CPU_MODEL!r}"
    )
STRATA_LIBVIRT_URI = os.environ.get("STRATA_LIBVIRT_URI", "qemu:///system")
# The libvirt storage pool for disks and seeds (its console-log pool is
# "<name>-console"): another Strata on the same libvirtd, such as the test
# suite, uses its own.
STRATA_STORAGE_POOL = os.environ.get("STRATA_STORAGE_POOL", "strata")
# Environment segments: each environment gets a /STRATA_SUBNET_PREFIX subnet of
# these private ranges (comma- or space-separated) and a libvirt network per host.
# Empty: no segments, VMs keep only their user-mode NIC (the libvirt network's
# bridge and dnsmasq live in libvirtd's network namespace, so a test machine
# sets a pool only for a libvirtd inside a namespace of its own).
STRATA_SUBNET_POOL = os.environ.get("STRATA_SUBNET_POOL", "").replace(",", " ").split()
STRATA_SUBNET_PREFIX = os.environ.get("STRATA_SUBNET_PREFIX", "24")


# Marks this Strata's libvirt domains and VM volumes: the reconciler removes
# orphans only among its own, so another Strata on the same libvirtd (the test
# suite next to `make run`) keeps its VMs.
def load_installation_id(data_dir: Path) -> str:
    """STRATA_INSTALLATION_ID from the environment, else one generated on first
    run and kept in the data directory; processes starting at once agree on it."""
    value = (
        os.environ.get("STRATA_INSTALLATION_ID")
        or read_or_create(data_dir / "installation_id", lambda: secrets.token_hex(8) + "\n").strip()
    )
    # The driver's "Strata id", which volume names and domain metadata can carry.
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", value):
        raise ImproperlyConfigured(
            f"STRATA_INSTALLATION_ID must be 1-64 letters, digits, - or _, not {value!r}"
        )
    return value


STRATA_INSTALLATION_ID = load_installation_id(STRATA_DATA_DIR)
# Comma-separated Fernet keys for secrets at rest, the first encrypts and all
# decrypt; empty: one generated into the data directory (cloud.models.crypto).
STRATA_ENCRYPTION_KEYS = os.environ.get("STRATA_ENCRYPTION_KEYS", "")
# What `manage.py bootstrap` creates on first run; empty: the machine's hostname,
# and a generated password it prints once.
STRATA_HOST_NAME = os.environ.get("STRATA_HOST_NAME", "")
STRATA_TEAM = os.environ.get("STRATA_TEAM", "default")
STRATA_ADMIN_USER = os.environ.get("STRATA_ADMIN_USER", "admin")
STRATA_ADMIN_PASSWORD = os.environ.get("STRATA_ADMIN_PASSWORD", "")
STRATA_RECONCILE_SECONDS = int(os.environ.get("STRATA_RECONCILE_SECONDS", "60"))
# Transient failures (a host or connection gone) are retried with exponential backoff.
STRATA_JOB_MAX_ATTEMPTS = int(os.environ.get("STRATA_JOB_MAX_ATTEMPTS", "5"))
STRATA_JOB_BACKOFF_SECONDS = float(os.environ.get("STRATA_JOB_BACKOFF_SECONDS", "2"))
# A job's run renews its lease while it runs; another delivery may take the job
# over only once the lease has not been renewed for this long (its worker died).
STRATA_JOB_LEASE_SECONDS = float(os.environ.get("STRATA_JOB_LEASE_SECONDS", "30"))
# Running jobs one team may have at once on one queue (0: no limit), so a team's
# long jobs leave a host's other worker slots to other teams; a job over the
# limit goes back to its queue for this many seconds.
STRATA_TEAM_JOBS_PER_QUEUE = int(os.environ.get("STRATA_TEAM_JOBS_PER_QUEUE", "1"))
STRATA_TEAM_LIMIT_RETRY_SECONDS = float(os.environ.get("STRATA_TEAM_LIMIT_RETRY_SECONDS", "3"))
# Bounded waits for a new guest: a VM that is not ready by then fails its step.
STRATA_SSH_READY_SECONDS = int(os.environ.get("STRATA_SSH_READY_SECONDS", "300"))
STRATA_DOCKER_READY_SECONDS = int(os.environ.get("STRATA_DOCKER_READY_SECONDS", "120"))
# A VM restored from a template gets a Docker engine id of its own by a dockerd
# restart (about 15 s under TCG); "false" keeps the template's id for a faster start.
STRATA_TEMPLATE_RENEW_ENGINE_ID = (
    os.environ.get("STRATA_TEMPLATE_RENEW_ENGINE_ID", "true") != "false"
)
# The longest one rollout on one VM may wait for its containers to turn healthy,
# over all its replicas and checks: a release not healthy by then is rolled back.
STRATA_ROLLOUT_HEALTH_SECONDS = float(os.environ.get("STRATA_ROLLOUT_HEALTH_SECONDS", "180"))
# Each guest's HAProxy, which owns the published ports: its directory in the
# guest and the address the published ports face there (empty: the guest's
# own, /var/lib/strata-proxy and 0.0.0.0). Tests whose "guest" is this
# machine give a directory of their own and 127.0.0.1.
STRATA_GUEST_PROXY_DIR = os.environ.get("STRATA_GUEST_PROXY_DIR", "")
STRATA_GUEST_PUBLISH_ADDRESS = os.environ.get("STRATA_GUEST_PUBLISH_ADDRESS", "")
# Image references every team may deploy (fnmatch patterns such as busybox:* or
# mirror.example/*, separated by spaces or commas), besides the team's own <team>/...
STRATA_IMAGE_ALLOWLIST = os.environ.get("STRATA_IMAGE_ALLOWLIST", "").replace(",", " ").split()
# A graceful shutdown that takes longer than this is forced.
STRATA_SHUTDOWN_SECONDS = int(os.environ.get("STRATA_SHUTDOWN_SECONDS", "60"))
# The reconciler removes an orphan (a marked domain, volume or container with no
# record) only once it has been seen for this long.
STRATA_ORPHAN_GRACE_SECONDS = int(os.environ.get("STRATA_ORPHAN_GRACE_SECONDS", "600"))
# A job not updated for this long is sent to its queue again (its message was lost).
STRATA_STUCK_JOB_SECONDS = int(os.environ.get("STRATA_STUCK_JOB_SECONDS", "1800"))
# How long a web request waits for a host's worker to read a container's logs or
# stats before it answers 503 with Retry-After: a web worker is never held longer.
STRATA_LIVE_READ_SECONDS = float(os.environ.get("STRATA_LIVE_READ_SECONDS", "5"))
# The team image registry (issue 12): where it listens, where it keeps images,
# where clients fetch its tokens (Strata's own URL as they reach it) and where
# it posts its push and delete events.
STRATA_REGISTRY_ADDR = os.environ.get("STRATA_REGISTRY_ADDR", "127.0.0.1:5000")
STRATA_REGISTRY_DIR = Path(os.environ.get("STRATA_REGISTRY_DIR") or STRATA_DATA_DIR / "registry")
STRATA_REGISTRY_AUTH_DIR = Path(
    os.environ.get("STRATA_REGISTRY_AUTH_DIR") or STRATA_DATA_DIR / "registry-auth"
)
STRATA_REGISTRY_REALM = os.environ.get(
    "STRATA_REGISTRY_REALM",
    f"http://{os.environ.get('STRATA_BIND', '127.0.0.1:8000')}/api/v1/registry/token",
)
STRATA_REGISTRY_NOTIFY_URL = os.environ.get(
    "STRATA_REGISTRY_NOTIFY_URL",
    f"http://{os.environ.get('STRATA_BIND', '127.0.0.1:8000')}/api/v1/registry/events",
)
STRATA_REGISTRY_SERVICE = os.environ.get("STRATA_REGISTRY_SERVICE", "strata-registry")
STRATA_REGISTRY_TOKEN_SECONDS = int(os.environ.get("STRATA_REGISTRY_TOKEN_SECONDS", "300"))
# Garbage collection (manage.py registry_gc, and beat every STRATA_REGISTRY_GC_SECONDS):
# an image no tag names and no release pins is deleted once pushed this many days ago.
STRATA_REGISTRY_RETENTION_DAYS = float(os.environ.get("STRATA_REGISTRY_RETENTION_DAYS", "7"))
STRATA_REGISTRY_GC_SECONDS = int(os.environ.get("STRATA_REGISTRY_GC_SECONDS", "3600"))
CELERY_BEAT_SCHEDULE = {
    "reconcile": {"task": "strata.reconcile", "schedule": float(STRATA_RECONCILE_SECONDS)},
    "registry-gc": {"task": "strata.registry_gc", "schedule": float(STRATA_REGISTRY_GC_SECONDS)},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    # paramiko logs a traceback for every refused connection while a guest boots.
    "loggers": {"paramiko": {"level": "WARNING"}},
}

# --- Console (websockets) ----------------------------------------------------
# The portal is served by an ASGI server (uvicorn) so the serial console's
# websocket shares the login; consumers and the hosts' console relays talk
# over this channel layer, never to libvirt from a web process.
ASGI_APPLICATION = "cloud.asgi.application"
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            # redis-py's default read timeout (5 s) equals channels-redis' blocking
            # pop (5 s): an idle console's receive would fail; give it room.
            "hosts": [
                {
                    "address": os.environ.get("STRATA_CHANNELS_URL", CELERY_BROKER_URL),
                    "socket_timeout": 30,
                }
            ],
            "capacity": 200,
        },
    }
}
# A console ticket not used within this many seconds is refused.
STRATA_CONSOLE_TICKET_SECONDS = int(os.environ.get("STRATA_CONSOLE_TICKET_SECONDS", "60"))
# A console session with no input and no output for this long is ended.
STRATA_CONSOLE_IDLE_SECONDS = int(os.environ.get("STRATA_CONSOLE_IDLE_SECONDS", "900"))
