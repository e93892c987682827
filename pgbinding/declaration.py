"""Checking a binding's declaration: every mistake is an error at startup that names the
binding and says what to write instead."""

from __future__ import annotations

import copy
import re
from typing import TYPE_CHECKING, Any

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import models
from django.db.models.fields import Field
from django.db.models.fields.json import JSONField

from .exceptions import BindingConfigError
from .registry import registry
from .serialize import LOSSY

if TYPE_CHECKING:
    from .bindings import Binding

#: Channels 1.x binding hooks pgbinding does not call, and what to use instead.
CHANNELS_1X_HOOKS = {
    "serialize": "fields / exclude: events carry the whitelisted fields as Django's "
    "serializers write them",
    "serialize_data": "fields / exclude",
    "deserialize": "form_class or serializer_class for inbound validation",
    "create": "form_class, serializer_class, or pre_save(instance, action)",
    "update": "form_class, serializer_class, or pre_save(instance, action)",
    "delete": "has_object_permission(user, 'delete', instance)",
}
#: Columns ``["__all__"]`` never includes, and no binding may name: a user model's stored
#: password hash.
SECRET_FIELDS = ("password",)


STREAM_NAME = re.compile(r"^[a-zA-Z0-9_.\-]{1,80}$")


def check(cls: type[Binding], base: type[Binding]) -> None:
    """Raise :class:`BindingConfigError` naming ``cls`` if it is declared wrongly; else fill
    in what the declaration implies (the serialized fields, the bound read rule). ``base`` is
    pgbinding's own Binding, whose hooks are not Channels 1.x overrides."""

    name = cls.label()
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
    _check_hooks(cls, name, base)
    cls._serialized = _selected_fields(cls, name, model)
    selected_names = {f.name for f in cls._serialized}
    bad_ro = [f for f in cls.read_only_fields if f not in selected_names]
    if bad_ro:
        raise BindingConfigError(
            f"{name}.read_only_fields names {', '.join(map(repr, bad_ro))}, which are not "
            f"among the binding's fields ({', '.join(sorted(selected_names))})"
        )
    try:
        bind_rule(cls)
    except ValueError as exc:
        raise BindingConfigError(f"{name}.read_rule: {exc}") from None


def _check_hooks(cls: type[Binding], name: str, base: type[Binding]) -> None:
    for hook, instead in CHANNELS_1X_HOOKS.items():
        owner = next((k for k in cls.__mro__ if hook in k.__dict__), None)
        if owner is not None and owner not in base.__mro__:
            raise BindingConfigError(
                f"{name} defines {hook}(), a Channels 1.x binding hook that pgbinding does not "
                f"call; use {instead}"
            )
    overrides_queryset = cls.get_queryset is not base.get_queryset
    declares_rule = any("read_rule" in klass.__dict__ for klass in cls.__mro__ if klass is not base)
    if overrides_queryset and not declares_rule:
        raise BindingConfigError(
            f"{name} overrides get_queryset(), which pgbinding cannot evaluate on the logged "
            "row of a change (live events and replays are judged on the row as it was, never "
            "on the database now). Declare who may see which rows as a read_rule instead, "
            "e.g. read_rule = Owner('owner') from pgbinding.rules (or read_rule = AllRows() "
            "if get_queryset does not restrict rows)"
        )


def _selected_fields(cls: type[Binding], name: str, model: type[models.Model]) -> list[Any]:
    if cls.fields is None and cls.exclude is None:
        raise BindingConfigError(
            f"{name} must set fields (a whitelist, or ['__all__']) or exclude; "
            "pgbinding sends and accepts no field that is not named"
        )
    if cls.fields is not None and cls.exclude is not None:
        raise BindingConfigError(f"{name} sets both fields and exclude; set only one")
    if isinstance(cls.fields, str) or isinstance(cls.exclude, str):
        raise BindingConfigError(f"{name}.fields / exclude must be a list of names, not a str")
    if model._meta.pk is None or len(model._meta.pk_fields) != 1:
        raise BindingConfigError(
            f"{name}: {model._meta.label} must have a single-column primary key"
        )
    concrete = {f.name: f for f in model._meta.concrete_fields}
    secret = {f for f in SECRET_FIELDS if f in concrete} if _is_user_model(model) else set()
    valid = ", ".join(sorted(set(concrete) - secret))
    named = list(cls.fields if cls.fields is not None else cls.exclude or [])
    if cls.fields is not None and "__all__" in named:
        if named != ["__all__"]:
            raise BindingConfigError(f"{name}.fields: '__all__' must stand alone")
        return [f for n, f in concrete.items() if n not in secret]
    unknown = [f for f in named if f not in concrete]
    if unknown:
        raise BindingConfigError(
            f"{name} names unknown field(s) {', '.join(map(repr, unknown))} of "
            f"{model._meta.label}; concrete fields are: {valid}"
        )
    if cls.fields is not None:
        named_secret = [f for f in named if f in secret]
        if named_secret:
            raise BindingConfigError(
                f"{name}.fields names {', '.join(map(repr, named_secret))} of "
                f"{model._meta.label}: the stored password hash is never sent to clients or "
                "written from them (set passwords with set_password() in your own view)"
            )
        return [concrete[f] for f in named]
    return [f for n, f in concrete.items() if n not in set(named) and n not in secret]


def _is_user_model(model: type[models.Model]) -> bool:
    return issubclass(model, AbstractBaseUser)


def exact_fields(binding: type[Binding]) -> list[Field[Any, Any]]:
    """Fields whose exact values travel with rows: the whitelisted ones whose serialized form
    is lossy, and the ones the read rule reads."""
    out: list[Field[Any, Any]] = [f for f in binding._serialized if isinstance(f, LOSSY)]
    for name in binding._rule.fields:
        f = binding.model._meta.get_field(name)
        if f not in out and isinstance(f, Field):
            out.append(f)
    return [f for f in out if not isinstance(f, JSONField)]


def bind_rule(binding: type[Binding]) -> None:
    rule = copy.deepcopy(binding.__dict__.get("read_rule", binding.read_rule))
    binding._rule = rule.bind(binding.model)
    binding._exact = exact_fields(binding)
