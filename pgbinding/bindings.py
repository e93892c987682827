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

import hashlib
import inspect
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

from django import forms
from django.apps import apps
from django.db import models
from django.db.models.fields import Field

from . import rows
from .declaration import check
from .delivery.changelog import Change
from .permissions import BasePermission
from .registry import registry
from .rules import AllRows, Rule
from .serialize import from_wire, json_value, wire_value

__all__ = ["Binding", "Change", "WebsocketBinding"]

Message = tuple[str, dict[str, Any]]
_ABSENT = object()


def _short_group(name: str) -> str:
    """Channels' group names must stay under 100 characters."""
    if len(name) < 100:
        return name
    head = name[:70]
    return f"{head}.{hashlib.sha1(name.encode(), usedforsecurity=False).hexdigest()[:24]}"


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
    #: :meth:`reads_values` as far as the declaration decides it (None: not worked out yet).
    _plain_reads: ClassVar[bool | None] = None

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
        check(cls, Binding)
        cls._plain_reads = None  # the fields may have changed: see reads_values

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
        if not type(self).checks_rows():
            return True  # every row, no object permission: nothing to read back
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
        return {f.name: json_value(f, f.value_from_object(instance)) for f in cls._serialized}

    @classmethod
    def serialize_pk(cls, instance: models.Model) -> Any:
        pk_field = cls.model._meta.pk
        assert pk_field is not None
        return json_value(pk_field, pk_field.value_from_object(instance))

    @classmethod
    def row_message(cls, instance: models.Model) -> dict[str, Any]:
        """One row as messages carry it: ``pk``, ``data`` (what clients get) and ``exact``
        (the exact values filters and the read rule judge it by)."""
        return {
            "pk": cls.serialize_pk(instance),
            "data": cls.serialize(instance),
            "exact": {f.attname: wire_value(f.value_from_object(instance)) for f in cls._exact},
        }

    @classmethod
    def row_message_from_values(
        cls,
        values: Mapping[str, Any],
        like: tuple[Mapping[str, Any], Mapping[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """:meth:`row_message` of ``rows.instance(cls.model, values)``, without making the
        instance. Only when :meth:`reads_values` says the two agree.

        ``like``: other values of the model and their row message (an update's old row, for
        the new one); a field holding the very same immutable value object there (an unchanged
        column, see :func:`rows.row_values`) is not serialized again."""
        pk_field = cls.model._meta.pk
        assert pk_field is not None
        get = values.get
        if like is None:
            return {
                "pk": json_value(pk_field, get(pk_field.attname)),
                "data": {f.name: json_value(f, get(f.attname)) for f in cls._serialized},
                "exact": {f.attname: wire_value(get(f.attname)) for f in cls._exact},
            }
        like_values, like_row = like
        like_get = like_values.get
        like_data, like_exact = like_row["data"], like_row["exact"]
        immutable = rows.IMMUTABLE
        data: dict[str, Any] = {}
        for f in cls._serialized:
            value = get(f.attname)
            if value is like_get(f.attname, _ABSENT) and type(value) in immutable:
                data[f.name] = like_data[f.name]
            else:
                data[f.name] = json_value(f, value)
        exact: dict[str, Any] = {}
        for f in cls._exact:
            value = get(f.attname)
            if value is like_get(f.attname, _ABSENT) and type(value) in immutable:
                exact[f.attname] = like_exact[f.attname]
            else:
                exact[f.attname] = wire_value(value)
        pk = get(pk_field.attname)
        same_pk = pk is like_get(pk_field.attname, _ABSENT) and type(pk) in immutable
        return {
            "pk": like_row["pk"] if same_pk else json_value(pk_field, pk),
            "data": data,
            "exact": exact,
        }

    @classmethod
    def reads_values(cls) -> bool:
        """Is :meth:`row_message_from_values` the same as :meth:`row_message` of an instance
        made from the values (see :func:`pgbinding.rows.plain_reads`)? What the declaration
        decides is worked out once per binding class (and again when it is checked again)."""
        plain = cls.__dict__.get("_plain_reads")
        if plain is None:
            pk_field = cls.model._meta.pk
            assert pk_field is not None
            # A subclass that serializes rows its own way is served through instances.
            own = any(
                inspect.getattr_static(cls, name) is not inspect.getattr_static(Binding, name)
                for name in ("row_message", "serialize", "serialize_pk")
            )
            plain = not own and rows.plain_reads(
                cls.model, [pk_field, *cls._serialized, *cls._exact]
            )
            cls._plain_reads = plain
        return plain and not rows.init_receivers(cls.model)


class WebsocketBinding(Binding):
    """A binding served over WebSocket by pgbinding's demultiplexing consumer."""


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
            values[f.attname] = from_wire(f, exact[f.attname])
        elif f.name in data:
            values[f.attname] = from_wire(f, data[f.name])
    for f in binding._exact:
        if f.attname not in values and f.attname in exact:
            values[f.attname] = from_wire(f, exact[f.attname])
    pk_field = binding.model._meta.pk
    assert pk_field is not None
    values.setdefault(pk_field.attname, from_wire(pk_field, row.get("pk")))
    return values


def check_all() -> None:
    """Re-check every registered binding (after the app registry is ready)."""
    if not apps.models_ready:
        return
    for binding in registry.all():
        binding.check_declaration()
