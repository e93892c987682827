"""The listener's connections to Postgres: where to connect (Django's settings for a database,
as a libpq connection string), how (autocommit, named in ``pg_stat_activity``), and which
errors mean the connection is gone."""

from __future__ import annotations

from typing import Any

import psycopg

#: Errors that mean "the connection to Postgres is gone": reconnect, or try again later.
DISCONNECTS = (psycopg.OperationalError, psycopg.InterfaceError, OSError)


def conninfo_from_django(alias: str = "default") -> str:
    """A libpq connection string for Django database ``alias``."""
    from django.db import connections

    params = connections[alias].get_connection_params()
    for key in ("cursor_factory", "context", "prepare_threshold", "pool", "server_side_binding"):
        params.pop(key, None)
    clean: dict[str, Any] = {k: v for k, v in params.items() if isinstance(v, str | int)}
    return psycopg.conninfo.make_conninfo("", **clean)


async def connect(conninfo: str, role: str, name: str) -> psycopg.AsyncConnection[Any]:
    """An autocommit connection, named for pg_stat_activity (``pgbinding ROLE NAME``)."""
    return await psycopg.AsyncConnection.connect(
        conninfo, autocommit=True, application_name=f"pgbinding {role} {name}"[:63]
    )
