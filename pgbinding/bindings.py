"""Bindings: which rows of a model go to which groups and users, and how they are serialized.

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
table; :meth:`Binding.build` turns a change into channel-layer messages: one event per group
(``group_names``) and one raw change per delivery key of its :mod:`read rule <pgbinding.rules>`
(for live subscriptions). Every message holds plain values only (str, int, float, bool, None,
lists and dicts of them), so every channel layer can carry it.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from django import forms
from django.apps import apps
from django.db import models
from django.db.models.fields import Field
from django.db.models.fields.json import JSONField

from . import rows
from .log import Change
from .permissions import BasePermission
from .registry import registry
from .rules import AllRows, Rule

__all__ = ["Binding", "Change", "WebsocketBinding"]

STREAM_NAME = re.compile(r"^[a-zA-Z0-9_.\-]{1,80}$")
#: The channel-layer message type of outbound events; consumers handle it as ``pgbinding_event``.
EVENT_TYPE = "pgbinding.event"
#: The channel-layer message type of raw changes for subscriptions (``pgbinding_change``).
CHANGE_TYPE = "pgbinding.change"

Message = tuple[str, dict[str, Any]]


def _short_group(name: str) -> str:
    """Channels' group names must stay under 100 characters."""
    if len(name) < 100:
        return name
    head = name[:70]
    return f"{head}.{hashlib.sha1(name.encode(), usedforsecurity=False).hexdigest()[:24]}"


@dataclass(slots=True)
class Built:
    """What one change means for one binding: group events, and raw changes for
    subscriptions (one per delivery key)."""

    events: list[Message] = field(default_factory=list)
    changes: list[Message] = field(default_factory=list)


class Binding:
    """Binds a model to a stream. Subclass it and set ``model``, ``stream`` and ``fields``."""

    model: ClassVar[type[models.Model]]
    stream: ClassVar[str]
    #: Field names sent to clients (and, inbound, the only ones written); ``["__all__"]`` for all
    #: (a user model's password is never among them).
    fields: ClassVar[Sequence[str] | None] = None
    #: Field names never sent or written; the rest of the model's concrete fields are.
    exclude: ClassVar[Sequence[str] | None] = None
    #: Whitelisted fields clients may read but not write (the primary key never is writable).
    read_only_fields: ClassVar[Sequence[str]] = ()
    #: Inbound fields outside the whitelist are an error unless this is True (then dropped).
    ignore_unknown_fields: ClassVar[bool] = False
    #: DRF-style permission classes; with none, and no own has_permission, nothing is allowed.
    permission_classes: ClassVar[Sequence[type[BasePermission]]] = ()
    #: Which rows a user may see (:mod:`pgbinding.rules`): judged on the logged row of each
    #: change for live events and replays, and as SQL for reads and writes.
    read_rule: ClassVar[Rule] = AllRows()
    #: Group events of this binding reach every socket in the group, signed in or not, with no
    #: permission or row check. Off by default: turn it on only for data anyone may read.
    send_to_everyone: ClassVar[bool] = False
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

    _serialized: ClassVar[list[Field[Any, Any]]]
    _rule: ClassVar[Rule]
    #: Fields whose exact values travel with each row (filters and the read rule need them).
    _exact: ClassVar[list[Field[Any, Any]]]

    def __init__(self, user: Any = None, scope: dict[str, Any] | None = None) -> None:
        self.user = user
        self.scope = scope or {}

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
        from .declaration import check

        check(cls)

    @classmethod
    def label(cls) -> str:
        return f"{cls.__module__}.{cls.__qualname__}"

    @classmethod
    def model_label(cls) -> str:
        return cls.model._meta.label_lower

    @classmethod
    def serialized_fields(cls) -> list[Field[Any, Any]]:
        return list(cls._serialized)

    @classmethod
    def rule(cls) -> Rule:
        """The binding's read rule, checked against its model."""
        return cls._rule

    # -- what users override -------------------------------------------------------------------

    @classmethod
    def group_names(cls, instance: models.Model) -> Iterable[str]:
        """The groups that should see ``instance`` as it is now. Default: one group per stream."""
        return [cls.stream_group()]

    @classmethod
    def stream_group(cls) -> str:
        return f"pgbinding.{cls.stream}"

    @classmethod
    def change_group(cls, key: str | None = None) -> str:
        """The group raw changes go to for live subscriptions: the stream's base group, or the
        group of one delivery key of the read rule."""
        base = f"pgbinding-changes.{cls.stream}"
        return base if key is None else _short_group(f"{base}.{key}")

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
        row ``pk`` (None for create, list and stream subscriptions)? ``subscribe`` also decides
        whether the socket receives the binding's group events. Default: what every
        ``permission_classes`` entry says; with none, no."""
        if not self.permission_classes:
            return False
        return all(p().has_permission(user, action, self) for p in self.permission_classes)

    def has_object_permission(self, user: Any, action: str, instance: models.Model) -> bool:
        """May ``user`` run ``action`` on this row (asked after ``has_permission``)? For update
        and delete ``instance`` is the row as stored; for create, the validated new row; for
        live events and replays, the logged row (only the binding's fields and the read rule's
        are set there)."""
        return all(
            p().has_object_permission(user, action, instance, self) for p in self.permission_classes
        )

    def pre_save(self, instance: models.Model, action: str) -> None:
        """Called with a validated, unsaved row before an inbound create or update is saved:
        set server-side fields here (``instance.owner = self.user``)."""

    def get_queryset(self, user: Any) -> models.QuerySet[Any]:
        """The base queryset of reads and writes (``select_related`` and the like). Which rows
        a user may see is the ``read_rule``'s to say: it is applied on top of this."""
        return self.model._default_manager.all()

    @classmethod
    def writable_fields(cls) -> list[Field[Any, Any]]:
        read_only = set(cls.read_only_fields)
        return [
            f
            for f in cls._serialized
            if f.editable and not f.primary_key and f.name not in read_only
        ]

    # -- reading: who sees what ----------------------------------------------------------------

    def readable_queryset(self, user: Any) -> models.QuerySet[Any]:
        """The rows ``user`` may read, on pgbinding's database."""
        from .conf import pgbinding_settings

        qs = self.get_queryset(user).using(pgbinding_settings.DATABASE)
        return qs.filter(self._rule.q(user))

    @classmethod
    def checks_rows(cls) -> bool:
        """Does each socket have to judge each row (a read rule, or an object permission)?"""
        return not isinstance(cls._rule, AllRows) or cls._checks_objects()

    @classmethod
    def _checks_objects(cls) -> bool:
        if type.__getattribute__(cls, "has_object_permission") is not (
            Binding.has_object_permission
        ):
            return True
        return any(
            p.has_object_permission is not BasePermission.has_object_permission
            for p in cls.permission_classes
        )

    @classmethod
    def judges_in_thread(cls) -> bool:
        """Does judging a row run user code that may query the database (an object
        permission, or a ``Where`` rule's condition)? Then consumers judge in a thread."""
        return cls._checks_objects() or _has_where(cls._rule)

    def sees(self, row: Mapping[str, Any] | None) -> bool:
        """May this binding's user see a row, from a row message (:meth:`row_message`)?"""
        if row is None:
            return False
        values = row_python(type(self), row)
        if not self._rule.allows(self.user, values):
            return False
        if type(self)._checks_objects():
            instance = rows.instance(self.model, values)
            return bool(self.has_object_permission(self.user, "retrieve", instance))
        return True

    # -- rows in, messages out -----------------------------------------------------------------

    @classmethod
    def instance_from_row(cls, row: Mapping[str, Any]) -> models.Model:
        """A model instance rebuilt from a row as the trigger logged it (no query)."""
        return rows.instance_from_row(cls.model, row)

    @classmethod
    def serialize(cls, instance: models.Model) -> dict[str, Any]:
        """The whitelisted fields of ``instance`` as JSON-ready values, as Django serializes."""
        return {f.name: rows.json_value(f, f.value_from_object(instance)) for f in cls._serialized}

    @classmethod
    def serialize_pk(cls, instance: models.Model) -> Any:
        pk_field = cls.model._meta.pk
        assert pk_field is not None
        return rows.json_value(pk_field, pk_field.value_from_object(instance))

    @classmethod
    def row_message(cls, instance: models.Model) -> dict[str, Any]:
        """One row as messages carry it: ``pk``, ``data`` (what clients get) and ``exact``
        (the exact values filters and the read rule judge it by)."""
        return {
            "pk": cls.serialize_pk(instance),
            "data": cls.serialize(instance),
            "exact": {
                f.attname: rows.wire_value(f.value_from_object(instance)) for f in cls._exact
            },
        }

    @classmethod
    def event(
        cls,
        action: str,
        row: Mapping[str, Any] | None,
        position: str,
        change_id: int | None = None,
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {"action": action, "model": cls.model_label()}
        if row is not None:
            payload["pk"] = row["pk"]
            payload["data"] = row["data"]
        payload["position"] = position
        message: dict[str, Any] = {"type": EVENT_TYPE, "stream": cls.stream, "payload": payload}
        if change_id is not None:
            message["id"] = change_id  # the log id, for consumers dropping repeats
        return message

    @classmethod
    def decode(
        cls, change: Change
    ) -> tuple[
        dict[str, Any] | None, dict[str, Any] | None, models.Model | None, models.Model | None
    ]:
        """The old and new row of a change as {attname: value} and as model instances."""
        table = cls.model._meta.db_table
        old_values = rows.row_values(cls.model, change.old, table) if change.old else None
        new_values = rows.row_values(cls.model, change.new, table) if change.new else None
        old = rows.instance(cls.model, old_values) if old_values is not None else None
        new = rows.instance(cls.model, new_values) if new_values is not None else None
        return old_values, new_values, old, new

    @classmethod
    def change_message(cls, change: Change) -> dict[str, Any] | None:
        """The raw change message subscriptions judge (None: nothing of it concerns them)."""
        if change.op == "T":
            return _change(cls, change, None, None)
        _, _, old, new = cls.decode(change)
        old_row = cls.row_message(old) if old is not None else None
        new_row = cls.row_message(new) if new is not None else None
        if old_row is not None and old_row == new_row:
            return None
        return _change(cls, change, old_row, new_row)

    @classmethod
    def build(cls, change: Change) -> Built:
        """Group events (by the group transitions of DESIGN §2) and raw changes for
        subscriptions, for one change.

        ``delete`` goes to groups(old) - groups(new), ``update`` to the intersection and
        ``create`` to groups(new) - groups(old). An update that changes none of this binding's
        fields, nor what its read rule reads, is sent to nobody. Events of a binding whose rows
        each socket must judge carry both rows (``rows``), so the consumer decides per user.
        """
        built = Built()
        if change.op == "T":
            event = cls.event("reload", None, change.position, change.id)
            event["payload"]["reason"] = "truncate"
            built.events = [(g, event) for g in dict.fromkeys(cls.reload_groups())]
            built.changes = [(cls.change_group(), _change(cls, change, None, None))]
            return built
        old_values, new_values, old, new = cls.decode(change)
        old_row = cls.row_message(old) if old is not None else None
        new_row = cls.row_message(new) if new is not None else None
        same = old_row is not None and old_row == new_row
        if not same:
            message = _change(cls, change, old_row, new_row)
            built.changes = [(g, message) for g in cls._change_groups(old_values, new_values)]
        built.events = cls._group_events(change, old, new, old_row, new_row, same)
        return built

    @classmethod
    def _change_groups(
        cls, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None
    ) -> list[str]:
        keys: set[str] = set()
        for values in (old, new):
            if values is None:
                continue
            row_keys = cls._rule.keys(values)
            if row_keys is None:
                return [cls.change_group()]
            keys |= row_keys
        return [cls.change_group(k) for k in sorted(keys)]

    @classmethod
    def _group_events(
        cls,
        change: Change,
        old: models.Model | None,
        new: models.Model | None,
        old_row: dict[str, Any] | None,
        new_row: dict[str, Any] | None,
        same: bool,
    ) -> list[Message]:
        old_groups = list(dict.fromkeys(cls.group_names(old))) if old is not None else []
        new_groups = list(dict.fromkeys(cls.group_names(new))) if new is not None else []
        both = (
            {"old": old_row, "new": new_row}
            if cls.checks_rows() and not cls.send_to_everyone
            else None
        )
        out: list[Message] = []

        def event(action: str, row: dict[str, Any] | None) -> dict[str, Any]:
            message = cls.event(action, row, change.position, change.id)
            if both is not None:
                message["rows"] = both
            return message

        # update first: a socket in several of these groups keeps the first event it gets
        # for a change, and one that saw the row before and after should see an update.
        kept = [g for g in new_groups if g in old_groups]
        if kept and new_row is not None and not same:
            message = event("update", new_row)
            out += [(g, message) for g in kept]
        gone = [g for g in old_groups if g not in new_groups]
        if gone and old_row is not None:
            message = event("delete", old_row)
            out += [(g, message) for g in gone]
        came = [g for g in new_groups if g not in old_groups]
        if came and new_row is not None:
            message = event("create", new_row)
            out += [(g, message) for g in came]
        return out

    @classmethod
    def messages_for_change(cls, change: Change) -> list[Message]:
        """The group events of one change (see :meth:`build`)."""
        return cls.build(change).events


class WebsocketBinding(Binding):
    """A binding served over WebSocket by pgbinding's demultiplexing consumer."""


def _change(
    binding: type[Binding],
    change: Change,
    old: dict[str, Any] | None,
    new: dict[str, Any] | None,
) -> dict[str, Any]:
    return {
        "type": CHANGE_TYPE,
        "stream": binding.stream,
        "id": change.id,
        "op": change.op,
        "old": old,
        "new": new,
        "position": change.position,
    }


def _has_where(rule: Rule) -> bool:
    from .rules import AnyOf, Where

    if isinstance(rule, AnyOf):
        return any(_has_where(r) for r in rule.rules)
    return isinstance(rule, Where)


def row_python(binding: type[Binding], row: Mapping[str, Any]) -> dict[str, Any]:
    """{attname: value} from a row message: exact values where carried, else the serialized
    data read back. Fields in neither are absent."""
    exact = row.get("exact") or {}
    data = row.get("data") or {}
    values: dict[str, Any] = {}
    for f in binding._serialized:
        if f.attname in exact:
            values[f.attname] = rows.from_wire(f, exact[f.attname])
        elif f.name in data:
            values[f.attname] = rows.from_wire(f, data[f.name])
    for f in binding._exact:
        if f.attname not in values and f.attname in exact:
            values[f.attname] = rows.from_wire(f, exact[f.attname])
    pk_field = binding.model._meta.pk
    assert pk_field is not None
    values.setdefault(pk_field.attname, rows.from_wire(pk_field, row.get("pk")))
    return values


def exact_fields(binding: type[Binding]) -> list[Field[Any, Any]]:
    """Fields whose exact values travel with rows: the whitelisted ones whose serialized form
    is lossy, and the ones the read rule reads."""
    out: list[Field[Any, Any]] = [f for f in binding._serialized if isinstance(f, rows.LOSSY)]
    for name in binding._rule.fields:
        f = binding.model._meta.get_field(name)
        if f not in out and isinstance(f, Field):
            out.append(f)
    return [f for f in out if not isinstance(f, JSONField)]


def bind_rule(binding: type[Binding]) -> None:
    rule = copy.deepcopy(binding.__dict__.get("read_rule", binding.read_rule))
    binding._rule = rule.bind(binding.model)
    binding._exact = exact_fields(binding)


def check_all() -> None:
    """Re-check every registered binding (after the app registry is ready)."""
    if not apps.models_ready:
        return
    for binding in registry.all():
        binding.check_declaration()
