"""Every import path the README and protocol document keeps working, and the package has no
import cycles between its steps."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

DOCUMENTED = [
    ("pgbinding", "WebsocketBinding"),
    ("pgbinding", "Binding"),
    ("pgbinding.consumers", "Demultiplexer"),
    ("pgbinding.consumers", "WebsocketDemultiplexer"),
    ("pgbinding.permissions", "IsAuthenticatedOrReadOnly"),
    ("pgbinding.permissions", "DjangoModelPermissions"),
    ("pgbinding.rules", "Owner"),
    ("pgbinding.rules", "AllRows"),
    ("pgbinding.asgi", "with_listener"),
    ("pgbinding.conf", "channel_layers"),
    ("pgbinding.dispatch", "unpack"),
    ("pgbinding.operations", "InstallBindingTrigger"),
    ("pgbinding.operations", "RemoveBindingTrigger"),
    ("pgbinding.operations", "RewriteCapturedChanges"),
]


@pytest.mark.parametrize(("module", "name"), DOCUMENTED)
def test_documented_names_import(module: str, name: str) -> None:
    assert getattr(importlib.import_module(module), name) is not None


def test_migration_files_keep_writing_the_stable_operation_path() -> None:
    from pgbinding.operations import InstallBindingTrigger

    assert InstallBindingTrigger.__module__ == "pgbinding.operations"


def test_settings_files_can_import_channel_layers_before_django_is_set_up() -> None:
    """``from pgbinding.conf import channel_layers`` runs while settings load: it must not import
    Django's models or forms (the package's __init__ is lazy)."""
    code = (
        "import sys; from pgbinding.conf import channel_layers; channel_layers(None);"
        " bad = [m for m in ('django.db.models', 'django.forms', 'pgbinding.bindings')"
        " if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_the_notify_channel_is_the_one_the_released_sql_uses() -> None:
    from pgbinding.capture.sql import NOTIFY_CHANNEL, schema_sql

    for version in ("v1", "v2"):
        assert f"pg_notify('{NOTIFY_CHANNEL}', '')" in schema_sql(version)[0]
