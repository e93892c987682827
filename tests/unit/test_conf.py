"""The settings object: every key declared once with its type and default, checked once."""

import pytest
from django.core.exceptions import ImproperlyConfigured
from pytest_django.fixtures import Settings as SettingsFixture

from pgbinding.conf import DEFAULTS, Settings, channel_layers, pgbinding_settings


def test_defaults_come_from_the_declaration() -> None:
    assert DEFAULTS["BATCH_SIZE"] == Settings().BATCH_SIZE == 500
    assert set(DEFAULTS) == {name for name in Settings.__dataclass_fields__}


def test_values_are_checked_with_a_message_that_quotes_them() -> None:
    assert Settings.load({"LEASE": 3}).LEASE == 3.0
    with pytest.raises(ImproperlyConfigured, match=r"Unknown key\(s\).*'LEASES'"):
        Settings.load({"LEASES": 3})
    with pytest.raises(ImproperlyConfigured, match=r"'BATCH_SIZE'\] is '500'; expected a whole"):
        Settings.load({"BATCH_SIZE": "500"})
    with pytest.raises(ImproperlyConfigured, match=r"'RETENTION'\] is -1; expected a number"):
        Settings.load({"RETENTION": -1})
    with pytest.raises(ImproperlyConfigured, match="must be a dict"):
        Settings.load(["LEASE"])


def test_the_settings_object_follows_setting_changes(settings: SettingsFixture) -> None:
    settings.PGBINDING = {"MAX_REPLAY": 7}
    assert pgbinding_settings.MAX_REPLAY == 7
    assert pgbinding_settings.current.MAX_REPLAY == 7
    with pytest.raises(AttributeError, match="no setting 'NOPE'"):
        pgbinding_settings.NOPE  # noqa: B018


def test_channel_layers_avoid_the_known_pitfalls() -> None:
    memory = channel_layers(None)["default"]
    assert memory["BACKEND"] == "channels.layers.InMemoryChannelLayer"
    redis = channel_layers("redis://r:6379/0")["default"]
    assert redis["CONFIG"]["hosts"] == [{"address": "redis://r:6379/0", "socket_timeout": None}]
    assert redis["CONFIG"]["capacity"] >= 100_000


def test_capture_backend_and_slot_names_are_checked() -> None:
    assert Settings().CAPTURE == "trigger"
    assert Settings.load({"CAPTURE": "logical", "SLOT_NAME": "app_1"}).SLOT_NAME == "app_1"
    with pytest.raises(ImproperlyConfigured, match=r"'CAPTURE'\] is 'wal'; expected 'trigger'"):
        Settings.load({"CAPTURE": "wal"})
    with pytest.raises(ImproperlyConfigured, match=r"'SLOT_NAME'\] is 'My-Slot'; expected lower"):
        Settings.load({"SLOT_NAME": "My-Slot"})
    with pytest.raises(ImproperlyConfigured, match=r"'PUBLICATION_NAME'\] is 'x y'"):
        Settings.load({"PUBLICATION_NAME": "x y"})
