"""Django settings of the benchmarks' site: its models, bound by pgbinding and watched by peers.

Environment:

* ``BENCH_DATABASE_URL``: the Postgres database (the benchmark scripts start a private one).
* ``BENCH_PGBINDING``: JSON overrides of ``PGBINDING`` (listener settings under test).
* ``BENCH_LAYER``: ``memory`` (in-process listener, InMemoryChannelLayer), ``redis``
  (channels_redis.core) or ``pubsub`` (channels_redis.pubsub); the last two need
  ``BENCH_REDIS_URL``.
"""

import json
import os

import dj_database_url

from pgbinding.conf import channel_layers

SECRET_KEY = "pgbinding-bench-not-secret"
DEBUG = False
USE_TZ = True
ALLOWED_HOSTS = ["*"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
ROOT_URLCONF = "bench.site.urls"

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:1/bench")
    )
}

# BENCH_CONN_MAX_AGE: Django's CONN_MAX_AGE (unset: Django's default, 0, a new connection for
# every database_sync_to_async call). bench/fanout sets it to speed up connecting and
# subscribing 1,000 sockets; the events it measures touch no database.
if os.environ.get("BENCH_CONN_MAX_AGE"):
    DATABASES["default"]["CONN_MAX_AGE"] = int(os.environ["BENCH_CONN_MAX_AGE"])

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",  # signed-in sockets (bench/fanout): the sessionid cookie
    "channels",
    "pgbinding",
    "bench.site.benchapp",
]

ASGI_APPLICATION = "bench.site.asgi.application"

LAYER = os.environ.get("BENCH_LAYER", "memory")
REDIS_URL = os.environ.get("BENCH_REDIS_URL")
if LAYER == "memory":
    CHANNEL_LAYERS = channel_layers(None, capacity=1_000_000, expiry=600)
elif LAYER == "redis":
    CHANNEL_LAYERS = channel_layers(REDIS_URL, capacity=1_000_000, expiry=600)
elif LAYER == "redis-stock":
    # channels-redis's own core layer (not pgbinding.layers'), to measure the two side by side.
    CHANNEL_LAYERS = channel_layers(REDIS_URL, capacity=1_000_000, expiry=600)
    CHANNEL_LAYERS["default"]["BACKEND"] = "channels_redis.core.RedisChannelLayer"
elif LAYER == "pubsub":
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL]},
        }
    }
else:
    raise ValueError(f"BENCH_LAYER must be memory, redis, redis-stock or pubsub, not {LAYER!r}")

# BENCH_PGBINDING: JSON overrides of pgbinding's settings, e.g. '{"IDLE_LINGER": 0}', to
# measure a listener setting without editing code.
PGBINDING = {
    "LISTENER_NAME": os.environ.get("BENCH_LISTENER_NAME", "bench"),
    **json.loads(os.environ.get("BENCH_PGBINDING", "{}")),
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"pgbinding": {"handlers": ["console"], "level": "INFO"}},
}
