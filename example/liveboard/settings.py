"""Settings of the liveboard example.

Environment:

* ``DATABASE_URL`` -- a Postgres URL (``postgresql://user:password@host:port/dbname``). When it
  is unset, the URL of the private embedded Postgres that ``scripts/demo`` started
  (``PGBINDING_DEMO_DATABASE_URL``) is used.
* ``REDIS_URL`` -- use channels-redis as the channel layer (for several server processes, with
  ``manage.py pglisten`` running once); the default is the in-memory layer of one process.
* ``ALLOWED_HOSTS`` -- extra host names, comma-separated (default: localhost only).
* ``DJANGO_DEBUG`` -- ``0`` to turn debug pages off.
"""

import os
from pathlib import Path

import dj_database_url

from pgbinding.conf import channel_layers

BASE_DIR = Path(__file__).resolve().parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "liveboard-demo-only-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"] + [
    host.strip() for host in os.environ.get("ALLOWED_HOSTS", "").split(",") if host.strip()
]

INSTALLED_APPS = [
    "daphne",  # first: its runserver serves the ASGI application
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.staticfiles",  # serves pgbinding/pgbinding.js (see asgi.py)
    "channels",
    "pgbinding",
    "liveboard",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "liveboard.urls"
ASGI_APPLICATION = "liveboard.asgi.application"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/"
STATIC_URL = "static/"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
            ],
        },
    },
]


DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL")
        or os.environ.get("PGBINDING_DEMO_DATABASE_URL")
        or "postgresql://postgres@127.0.0.1:5432/liveboard"
    )
}
if DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
    raise ValueError("DATABASE_URL must be a postgresql:// URL")

# In-memory layer for one process; channels-redis (with the settings that avoid its known
# pitfalls) when REDIS_URL is set, for a separate pglisten and several servers.
CHANNEL_LAYERS = channel_layers(os.environ.get("REDIS_URL"))

PGBINDING = {}  # the defaults; see pgbinding.conf for the keys

USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

#: Shown on the page: a command that changes rows from outside Django (set by scripts/demo).
LIVEBOARD_PSQL_HINT = os.environ.get("PGBINDING_DEMO_PSQL", "")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"pgbinding": {"handlers": ["console"], "level": "INFO", "propagate": False}},
}
