"""Bindings: which rows of a model go to which groups, and how they are serialized.

A binding is declared like a Channels 1.x data binding::

    class IntegerValueBinding(WebsocketBinding):
        model = IntegerValue
        stream = "intval"
        fields = ["name", "value"]

        @classmethod
        def group_names(cls, instance):
            return ["intval-updates"]

        def has_permission(self, user, action, pk):
            return user.is_staff

Declaring the class registers it. The listener hands it every captured change of its model's
table; :meth:`Binding.messages_for_change` turns a change into one message per group.
"""

from __future__ import annotations

import datetime
import decimal
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from django import forms
from django.apps import apps
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.models.fields import Field
from django.db.models.fields.json import JSONField
from django.utils.encoding import is_protected_type

from .exceptions import BindingConfigError
from .permissions import BasePermission
from .registry import registry

STREAM_NAME = re.compile(r"^[a-zA-Z0-9_.\-]{1,80}$")
#: The channel-layer message type of outbound events; consumers handle it as ``pgbinding_event``.
EVENT_TYPE = "pgbinding.event"

_encoder = DjangoJSONEncoder()


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of the change log: a row change in ``table`` at log position ``id``."""

    id: int
    table: str
    op: str  # "I" insert, "U" update, "D" delete, "T" truncate
    pk: str | None
    old: dict[str, Any] | None
    new: dict[str, Any] | None
    #: The writing transaction's id (xid8, as text).
    txid: str = ""
    #: The resume token of the reader's cursor just after this change (see log.Cursor).
    position: str = ""


class Binding:
    """Binds a model to a stream. Subclass it and set ``model``, ``stream`` and ``fields``."""

    model: ClassVar[type[models.Model]]
    stream: ClassVar[str]
    #: Field names sent to clients (and, inbound, the only ones written); ``["__all__"]`` for all.
    fields: ClassVar[Sequence[str] | None] = None
    #: Field names never sent or written; the rest of the model's concrete fields are.
    exclude: ClassVar[Sequence[str] | None] = None
    #: Whitelisted fields clients may read but not write (the primary key never is writable).
    read_only_fields: ClassVar[Sequence[str]] = ()
    #: Inbound fields outside the whitelist are an error unless this is True (then dropped).
    ignore_unknown_fields: ClassVar[bool] = False
    #: DRF-style permission classes; with none, and no own has_permission, nothing is allowed.
    permission_classes: ClassVar[Sequence[type[BasePermission]]] = ()
    #: A ModelForm that validates inbound create/update (default: one built from the fields).
    form_class: ClassVar[type[forms.ModelForm[Any]] | None] = None
    #: A Django REST framework serializer class that validates and saves inbound writes instead
    #: of a form. Its context has ``user``, ``binding`` and ``request`` (with ``.user``, for
    #: ``CurrentUserDefault``); ``pre_save`` is not called on this path.
    serializer_class: ClassVar[Any] = None
    #: ``list`` page size when the client does not ask, and the most it may ask for.
    page_size: ClassVar[int] = 50
    max_page_size: ClassVar[int] = 500
    #: The most rows a subscription snapshot returns (a bigger result asks for a filter).
    max_subscription_rows: ClassVar[int] = 5000
    #: Channels 1.x spelling for routing: ``consumers = {"intval": IntegerValueBinding.consumer}``.
    consumer: ClassVar[type[Binding]]

    def __init__(self, user: Any = None, scope: dict[str, Any] | None = None) -> None:
        self.user = user
        self.scope = scope or {}

    _serialized: ClassVar[list[Field[Any, Any]]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "model" not in cls.__dict__ and not hasattr(cls, "model"):
            return  # an abstract base: no model, not registered
        cls.check_declaration()
        cls.consumer = cls
        registry.register(cls)

    # -- declaration ---------------------------------------------------------------------------

    @classmethod
    def check_declaration(cls) -> None:
        """Raise :class:`BindingConfigError` naming this binding if it is declared wrongly."""
        name = f"{cls.__module__}.{cls.__qualname__}"
        model = getattr(cls, "model", None)
        if not (isinstance(model, type) and issubclass(model, models.Model)):
            raise BindingConfigError(f"{name}.model must be a Django model class, got {model!r}")
        stream = getattr(cls, "stream", None)
        if not isinstance(stream, str) or not STREAM_NAME.match(stream):
            raise BindingConfigError(
                f"{name}.stream must be 1-80 letters, digits, '-', '_' or '.', got {stream!r}"
            )
        for other in registry.all():
            same = (other.__module__, other.__qualname__) == (cls.__module__, cls.__qualname__)
            if other.stream == stream and not same:
                raise BindingConfigError(
                    f"{name}.stream {stream!r} is already used by "
                    f"{other.__module__}.{other.__qualname__}; each binding needs its own stream"
                )
        if cls.fields is None and cls.exclude is None:
            raise BindingConfigError(
                f"{name} must set fields (a whitelist, or ['__all__']) or exclude; "
                "pgbinding sends and accepts no field that is not named"
            )
        if cls.fields is not None and cls.exclude is not None:
            raise BindingConfigError(f"{name} sets both fields and exclude; set only one")
        if model._meta.pk is None or len(model._meta.pk_fields) != 1:
            raise BindingConfigError(
                f"{name}: {model._meta.label} must have a single-column primary key"
            )
        concrete = {f.name: f for f in model._meta.concrete_fields}
        valid = ", ".join(sorted(concrete))
        named = list(cls.fields if cls.fields is not None else cls.exclude or [])
        if isinstance(cls.fields, str) or isinstance(cls.exclude, str):
            raise BindingConfigError(f"{name}.fields / exclude must be a list of names, not a str")
        if cls.fields is not None and "__all__" in named:
            if named != ["__all__"]:
                raise BindingConfigError(f"{name}.fields: '__all__' must stand alone")
            selected = list(concrete.values())
        else:
            unknown = [f for f in named if f not in concrete]
            if unknown:
                raise BindingConfigError(
                    f"{name} names unknown field(s) {', '.join(map(repr, unknown))} of "
                    f"{model._meta.label}; concrete fields are: {valid}"
                )
            if cls.fields is not None:
                selected = [concrete[f] for f in named]
            else:
                selected = [f for n, f in concrete.items() if n not in set(named)]
        cls._serialized = selected
        selected_names = {f.name for f in selected}
        bad_ro = [f for f in cls.read_only_fields if f not in selected_names]
        if bad_ro:
            raise BindingConfigError(
                f"{name}.read_only_fields names {', '.join(map(repr, bad_ro))}, which are not "
                f"among the binding's fields ({', '.join(sorted(selected_names))})"
            )

    @classmethod
    def label(cls) -> str:
        return f"{cls.__module__}.{cls.__qualname__}"

    @classmethod
    def model_label(cls) -> str:
        return cls.model._meta.label_lower

    @classmethod
    def serialized_fields(cls) -> list[Field[Any, Any]]:
        return list(cls._serialized)

    # -- what users override -------------------------------------------------------------------

    @classmethod
    def group_names(cls, instance: models.Model) -> Iterable[str]:
        """The groups that should see ``instance`` as it is now. Default: one group per stream."""
        return [cls.stream_group()]

    @classmethod
    def stream_group(cls) -> str:
        return f"pgbinding.{cls.stream}"

    @classmethod
    def change_group(cls) -> str:
        """The group every raw change of this binding goes to, for live subscriptions."""
        return f"pgbinding-changes.{cls.stream}"

    @classmethod
    def reload_groups(cls) -> Iterable[str]:
        """Groups told to reload when the table is truncated.

        The listener also tells every group it has sent this binding's events to since it
        started; declare here the groups it cannot know about (e.g. per-user groups whose rows
        it has not seen yet). Default: the stream group.
        """
        return [cls.stream_group()]

    def has_permission(self, user: Any, action: str, pk: Any) -> bool:
        """May ``user`` run ``action`` (create, update, delete, retrieve, list, subscribe) on
        row ``pk`` (None for create, list and stream subscriptions)? Default: what every
        ``permission_classes`` entry says; with none, no."""
        if not self.permission_classes:
            return False
        return all(p().has_permission(user, action, self) for p in self.permission_classes)

    def has_object_permission(self, user: Any, action: str, instance: models.Model) -> bool:
        """May ``user`` run ``action`` on this row (asked after ``has_permission``)? For update
        and delete ``instance`` is the row as stored; for create, the validated new row."""
        return all(
            p().has_object_permission(user, action, instance, self) for p in self.permission_classes
        )

    def pre_save(self, instance: models.Model, action: str) -> None:
        """Called with a validated, unsaved row before an inbound create or update is saved:
        set server-side fields here (``instance.owner = self.user``)."""

    def get_queryset(self, user: Any) -> models.QuerySet[Any]:
        """The rows ``user`` may see: reads, writes and live events are limited to these."""
        return self.model._default_manager.all()

    @classmethod
    def writable_fields(cls) -> list[Field[Any, Any]]:
        read_only = set(cls.read_only_fields)
        return [
            f
            for f in cls._serialized
            if f.editable and not f.primary_key and f.name not in read_only
        ]

    # -- rows in, messages out -----------------------------------------------------------------

    @classmethod
    def instance_from_row(cls, row: dict[str, Any]) -> models.Model:
        """A model instance rebuilt from a row as the trigger logged it (no query)."""
        return instance_from_row(cls.model, row)

    @classmethod
    def serialize(cls, instance: models.Model) -> dict[str, Any]:
        """The whitelisted fields of ``instance`` as JSON-ready values, as Django serializes."""
        return {f.name: json_value(f, instance) for f in cls._serialized}

    @classmethod
    def serialize_pk(cls, instance: models.Model) -> Any:
        pk_field = cls.model._meta.pk
        assert pk_field is not None
        return json_value(pk_field, instance)

    @classmethod
    def event(
        cls,
        action: str,
        instance: models.Model | None,
        data: Any,
        position: str,
        change_id: int | None = None,
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {"action": action, "model": cls.model_label()}
        if instance is not None:
            payload["pk"] = cls.serialize_pk(instance)
        if data is not None:
            payload["data"] = data
        payload["position"] = position
        message: dict[str, Any] = {"type": EVENT_TYPE, "stream": cls.stream, "payload": payload}
        if change_id is not None:
            message["id"] = change_id  # the log id, for consumers dropping repeats
        return message

    @classmethod
    def messages_for_change(cls, change: Change) -> list[tuple[str, dict[str, Any]]]:
        """(group, message) pairs for one change, by the group transitions of DESIGN §2.

        ``delete`` goes to groups(old) - groups(new), ``update`` to the intersection and
        ``create`` to groups(new) - groups(old). An update that changes none of this binding's
        fields sends ``update`` to nobody.
        """
        if change.op == "T":
            event = cls.event("reload", None, None, change.position, change.id)
            event["payload"]["reason"] = "truncate"
            return [(g, event) for g in dict.fromkeys(cls.reload_groups())]
        old = cls.instance_from_row(change.old) if change.old is not None else None
        new = cls.instance_from_row(change.new) if change.new is not None else None
        old_groups = list(dict.fromkeys(cls.group_names(old))) if old is not None else []
        new_groups = list(dict.fromkeys(cls.group_names(new))) if new is not None else []
        old_data = cls.serialize(old) if old is not None else None
        new_data = cls.serialize(new) if new is not None else None
        out: list[tuple[str, dict[str, Any]]] = []
        # update first: a socket in several of these groups keeps the first event it gets
        # for a change, and one that saw the row before and after should see an update.
        kept = [g for g in new_groups if g in old_groups]
        if kept and new is not None and (old_data != new_data or _pk_changed(old, new)):
            event = cls.event("update", new, new_data, change.position, change.id)
            out += [(g, event) for g in kept]
        gone = [g for g in old_groups if g not in new_groups]
        if gone and old is not None:
            event = cls.event("delete", old, old_data, change.position, change.id)
            out += [(g, event) for g in gone]
        came = [g for g in new_groups if g not in old_groups]
        if came and new is not None:
            event = cls.event("create", new, new_data, change.position, change.id)
            out += [(g, event) for g in came]
        return out


class WebsocketBinding(Binding):
    """A binding served over WebSocket by pgbinding's demultiplexing consumer."""


def _pk_changed(old: models.Model | None, new: models.Model | None) -> bool:
    return old is not None and new is not None and old.pk != new.pk


def instance_from_row(model: type[models.Model], row: dict[str, Any]) -> models.Model:
    """Rebuild a ``model`` instance from a row's ``to_jsonb`` form, as if loaded from the db."""
    attnames: list[str] = []
    values: list[Any] = []
    for field in model._meta.concrete_fields:
        column = field.column
        if column not in row:
            continue
        attnames.append(field.attname)
        values.append(python_value(field, row[column]))
    return model.from_db(None, attnames, values)


def _plain_json(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return (
            int(value)
            if value == value.to_integral_value() and "." not in str(value)
            else float(value)
        )
    if isinstance(value, dict):
        return {k: _plain_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_json(v) for v in value]
    return value


def python_value(field: Field[Any, Any], raw: Any) -> Any:
    """Turn one ``to_jsonb`` column value into what Django would load from the database."""
    if raw is None:
        return None
    if isinstance(field, JSONField):
        # The log is read with Decimal numbers (to keep decimal columns exact); inside a JSON
        # value they are plain JSON numbers, as json.loads would give them.
        return _plain_json(raw)
    if isinstance(field, models.BinaryField):
        text = str(raw)
        return bytes.fromhex(text[2:]) if text.startswith("\\x") else text.encode()
    if isinstance(field, models.ForeignKey):
        target = field.target_field
        return python_value(target, raw)
    return field.to_python(raw)


_PLAIN = (str, int, float, bool)
_ENCODED = (
    datetime.datetime,
    datetime.date,
    datetime.time,
    datetime.timedelta,
    decimal.Decimal,
    uuid.UUID,
)


def json_value(field: Field[Any, Any], instance: models.Model) -> Any:
    """One field of ``instance`` as a JSON-ready value, the way Django's serializers write it."""
    value = field.value_from_object(instance)
    if value is None or isinstance(value, _PLAIN):
        return value
    if isinstance(field, JSONField):
        return value
    if isinstance(value, _ENCODED):
        return _encoder.default(value)
    if is_protected_type(value):
        return value
    return field.value_to_string(instance)


def check_all() -> None:
    """Re-check every registered binding (after the app registry is ready)."""
    if not apps.models_ready:
        return
    for binding in registry.all():
        binding.check_declaration()
