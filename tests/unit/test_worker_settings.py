"""The settings the replay workers get (pgbinding/processes.py, ``_settings``): the ones this
process has set (its settings module's, and overrides), read without touching settings Django
deprecates. Django 6.1 warns on every read of a deprecated email setting (``EMAIL_BACKEND``...),
set or not: reading every setting made each worker start warn ten times (the clean-clone CI's
Django 6.1 pass, tests/e2e/test_replay_processes.py)."""

from __future__ import annotations

import warnings

import django
import pytest
from django.test import override_settings

from pgbinding import processes


def read_quietly() -> tuple[dict[str, object], list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        values = processes._settings()
    return values, [str(w.message) for w in caught]


def test_the_workers_get_what_is_set_and_nothing_warns() -> None:
    with override_settings(PGBINDING={"MAX_REPLAY": 1234}):
        values, warned = read_quietly()
    assert values["PGBINDING"] == {"MAX_REPLAY": 1234}
    assert "DATABASES" in values and "INSTALLED_APPS" in values
    assert warned == []


@pytest.mark.skipif(django.VERSION < (6, 1), reason="MAILERS is new in Django 6.1")
def test_a_project_with_mailers_gets_it_and_no_email_setting() -> None:
    mailers = {"default": {"BACKEND": "django.core.mail.backends.locmem.EmailBackend"}}
    with override_settings(MAILERS=mailers):
        values, warned = read_quietly()
    assert values["MAILERS"] == mailers
    assert "EMAIL_BACKEND" not in values
    assert warned == []
