"""Django settings for pgbinding's test suite.

The database comes from ``PGBINDING_TEST_DATABASE_URL`` (a Postgres server URL; the tests create
and drop their own ``test_*`` database on it). When it is unset, the ``tests.servers`` plugin
starts a private embedded Postgres and sets it.
"""

import json
import os
from typing import Any

import dj_database_url

from pgbinding.conf import channel_layers

SECRET_KEY = "pgbinding-tests-not-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "tests.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

DATABASES: dict[str, dict[str, Any]] = {
    "default": {
        **dj_database_url.parse(
            os.environ.get(
                "PGBINDING_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:1/pgbinding"
            )
        ),
        "TEST": {"NAME": os.environ.get("PGBINDING_TEST_DB_NAME", "test_pgbinding")},
    }
}
# A second database on the same server, for the tests where a router sends reads elsewhere
# (tests/integration/test_two_databases.py); created only for tests that ask for it.
DATABASES["replica"] = {
    **DATABASES["default"],
    "TEST": {"NAME": DATABASES["default"]["TEST"]["NAME"] + "_replica"},
}

INSTALLED_APPS = [
    "daphne",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.postgres",
    "channels",
    "pgbinding",
    "tests.testapp",
    "tests.fidelity",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]

ASGI_APPLICATION = "tests.asgi.application"

# Subprocesses (pglisten, daphne) of the multi-process tests get a Redis URL here, and
# PGBINDING_TEST_CHANNEL_LAYER_KIND=pubsub picks channels_redis's pub/sub layer instead of core.
CHANNEL_LAYERS = channel_layers(
    os.environ.get("PGBINDING_TEST_CHANNEL_LAYER_REDIS"), capacity=100_000, expiry=600
)
if (
    os.environ.get("PGBINDING_TEST_CHANNEL_LAYER_REDIS")
    and os.environ.get("PGBINDING_TEST_CHANNEL_LAYER_KIND") == "pubsub"
):
    CHANNEL_LAYERS["default"] = {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {
            "hosts": [
                {
                    "address": os.environ["PGBINDING_TEST_CHANNEL_LAYER_REDIS"],
                    "socket_timeout": None,
                }
            ]
        },
    }

PGBINDING = {
    "GAP_POLL_INTERVAL": 0.01,
    "STANDBY_RETRY": 0.5,
    "KEEPALIVE": 5.0,
    # Child processes of the fault tests get settings of their own (a JSON object).
    **json.loads(os.environ.get("PGBINDING_TEST_PGBINDING", "{}")),
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"pgbinding": {"handlers": ["console"], "level": "INFO"}},
}
