"""Inbound actions: what a client may ask of a binding over the socket.

Each function runs synchronously (the consumer runs it on its database threads, :mod:`.threads`),
checks permissions before touching a row, validates with a ModelForm (or the binding's
``form_class``), writes inside ``transaction.atomic`` on pgbinding's database (``DATABASE``:
reads, locks and writes of one request all use it, whatever the routers say), and returns the
reply's ``data``. Any refusal is a :class:`~pgbinding.exceptions.RequestError` carrying the
reply's status and per-field errors. ``subscribe`` and ``unsubscribe`` are the consumer's own
(see :mod:`pgbinding.subscriptions`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

from django import forms
from django.core.exceptions import ObjectDoesNotExist, ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.db import DataError, IntegrityError, models, transaction
from django.db.models import JSONField
from django.forms.models import modelform_factory

from .. import filters
from ..bindings import Binding
from ..conf import pgbinding_settings
from ..exceptions import RequestError
from ..permissions import READ_ACTIONS

logger = logging.getLogger("pgbinding.actions")

#: Every action a client may send. Reads (``permissions.READ_ACTIONS``) get a reply even to
#: Channels 1.x frames (no request_id); writes answer those with events only.
ACTIONS = ("create", "update", "delete", "retrieve", "list", "subscribe", "unsubscribe")
READ = READ_ACTIONS

#: Kept for code written against earlier releases: requests are refused with RequestError.
ActionError = RequestError


def _row(binding: Binding, instance: models.Model) -> dict[str, Any]:
    return {"pk": binding.serialize_pk(instance), "data": binding.serialize(instance)}


def _check(binding: Binding, action: str, pk: Any) -> None:
    if not binding.has_permission(binding.user, action, pk):
        raise ActionError(403, f"You do not have permission to {action} on this stream.")


def _check_object(binding: Binding, action: str, instance: models.Model) -> None:
    if not binding.has_object_permission(binding.user, action, instance):
        raise ActionError(403, f"You do not have permission to {action} this row.")


def clean_pk(binding: Binding, pk: Any) -> Any:
    if pk is None:
        raise ActionError(400, {"pk": ["This action needs a pk."]})
    if isinstance(pk, bool) or not isinstance(pk, int | str):
        raise ActionError(400, {"pk": [f"must be a number or a string, got {pk!r}"]})
    pk_field = binding.model._meta.pk
    assert pk_field is not None
    try:
        return pk_field.to_python(pk)
    except ValidationError as exc:
        raise ActionError(400, {"pk": list(exc.messages)}) from None


def _get(binding: Binding, pk: Any, *, lock: bool = False) -> models.Model:
    """The row ``pk`` if the user may read it (a 404 otherwise, whether or not it exists)."""
    qs = binding.readable_queryset(binding.user)
    if lock:
        qs = qs.select_for_update(of=("self",))
    try:
        instance: models.Model = qs.get(pk=pk)
    except ObjectDoesNotExist:
        raise ActionError(404, f"No {binding.model._meta.verbose_name} with pk {pk!r}.") from None
    return instance


def _clean_data(binding: Binding, data: Any) -> dict[str, Any]:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ActionError(400, {"data": [f"must be an object of field values, got {data!r}"]})
    writable = {f.name: f for f in binding.writable_fields()}
    readable = {f.name for f in binding.serialized_fields()}
    errors: dict[str, list[str]] = {}
    clean: dict[str, Any] = {}
    for key, value in data.items():
        if key in writable:
            if isinstance(value, dict | list) and not _takes_structures(writable[key]):
                errors[key] = [f"Expected a single value, got {type(value).__name__}."]
                continue
            clean[key] = value
        elif key in readable or key in ("pk", "id"):
            errors[key] = ["This field is read-only."]
        elif not binding.ignore_unknown_fields:
            errors[key] = [f"Unknown field; writable fields: {', '.join(sorted(writable))}."]
    if errors:
        raise ActionError(400, errors)
    return clean


def _takes_structures(field: Any) -> bool:
    """Fields whose values are JSON arrays or objects (JSON, arrays, hstore, ranges)."""
    return isinstance(field, JSONField) or field.get_internal_type() in (
        "ArrayField",
        "HStoreField",
        "IntegerRangeField",
        "BigIntegerRangeField",
        "DecimalRangeField",
        "DateRangeField",
        "DateTimeRangeField",
    )


def _form_class(binding: Binding) -> type[forms.ModelForm[Any]]:
    if binding.form_class is not None:
        return binding.form_class
    names = [f.name for f in binding.writable_fields()]
    return modelform_factory(binding.model, fields=names)


def _save(binding: Binding, data: dict[str, Any], instance: models.Model | None) -> models.Model:
    if binding.serializer_class is not None:
        return _save_with_serializer(binding, data, instance)
    form_class = _form_class(binding)
    # Fields the client did not send keep their current values (update) or the model's
    # defaults (create).
    creating = instance is None
    instance = instance if instance is not None else binding.model()
    concrete = {f.name: f for f in instance._meta.concrete_fields}
    current = {
        name: concrete[name].value_from_object(instance)
        for name in form_class.base_fields
        if name in concrete
    }
    data = {**current, **data}
    # JSON columns reach a ModelForm as JSON text (as from an HTML form); a bare {} or [] would
    # read as "empty" and be saved as NULL.
    json_fields = {f.name for f in binding.model._meta.concrete_fields if isinstance(f, JSONField)}
    data = {
        k: json.dumps(v, cls=DjangoJSONEncoder) if k in json_fields else v for k, v in data.items()
    }
    form = form_class(data=data, instance=instance)
    if not form.is_valid():
        raise ActionError(
            400, {k: [str(e["message"]) for e in v] for k, v in form.errors.get_json_data().items()}
        )
    obj: models.Model = form.save(commit=False)
    binding.pre_save(obj, "create" if creating else "update")
    if creating:
        # Updates were checked against the row as stored, before the client's changes (a
        # check of the changed row could be passed by sending e.g. owner=<me>).
        _check_object(binding, "create", obj)
    obj.save(using=_db())
    form.save_m2m()
    obj.refresh_from_db(using=_db())  # reply with what is stored (decimals at the column's scale)
    return obj


@contextmanager
def _writing(binding: Binding) -> Iterator[None]:
    """A write transaction; a constraint the form could not check becomes a 409 reply."""
    try:
        with transaction.atomic(using=_db()):
            yield
    except IntegrityError as exc:
        # Postgres' own message can quote the whole row, unbound columns included: log it,
        # tell the client only which constraint.
        logger.info("Inbound write on %s refused by the database: %s", binding.stream, exc)
        diag = getattr(exc.__cause__, "diag", None)
        name = getattr(diag, "constraint_name", None)
        suffix = f" (constraint {name!r})." if name else "."
        raise ActionError(409, "The change conflicts with existing data" + suffix) from None
    except DataError as exc:
        logger.info("Inbound write on %s refused by the database: %s", binding.stream, exc)
        raise ActionError(400, "A value is not valid for the database.") from None


def _save_with_serializer(
    binding: Binding, data: dict[str, Any], instance: models.Model | None
) -> models.Model:
    """Validate and save with the binding's DRF serializer (partial on update)."""
    request = SimpleNamespace(user=binding.user)
    serializer = binding.serializer_class(
        instance=instance,
        data=data,
        partial=instance is not None,
        context={"user": binding.user, "binding": binding, "request": request},
    )
    if not serializer.is_valid():
        raise ActionError(
            400,
            {
                str(k): [str(m) for m in (v if isinstance(v, list) else [v])]
                for k, v in serializer.errors.items()
            },
        )
    obj: models.Model = serializer.save()
    if obj._state.db != _db():
        raise RequestError(
            500, "The serializer saved to another database than pgbinding's; see the log."
        )
    if instance is None:
        # Saved inside the action's transaction: refusing here rolls the create back.
        _check_object(binding, "create", obj)
    obj.refresh_from_db(using=_db())
    return obj


def create(binding: Binding, payload: dict[str, Any]) -> tuple[int, Any]:
    _check(binding, "create", None)
    data = _clean_data(binding, payload.get("data"))
    with _writing(binding):
        obj = _save(binding, data, None)
    return 201, _row(binding, obj)


def update(binding: Binding, payload: dict[str, Any]) -> tuple[int, Any]:
    pk = clean_pk(binding, payload.get("pk"))
    _check(binding, "update", pk)
    data = _clean_data(binding, payload.get("data"))
    with _writing(binding):
        instance = _get(binding, pk, lock=True)
        _check_object(binding, "update", instance)
        obj = _save(binding, data, instance)
    return 200, _row(binding, obj)


def delete(binding: Binding, payload: dict[str, Any]) -> tuple[int, Any]:
    pk = clean_pk(binding, payload.get("pk"))
    _check(binding, "delete", pk)
    with _writing(binding):
        instance = _get(binding, pk)
        _check_object(binding, "delete", instance)
        out_pk = binding.serialize_pk(instance)
        instance.delete(using=_db())
    return 200, {"pk": out_pk}


def retrieve(binding: Binding, payload: dict[str, Any]) -> tuple[int, Any]:
    pk = clean_pk(binding, payload.get("pk"))
    _check(binding, "retrieve", pk)
    instance = _get(binding, pk)
    _check_object(binding, "retrieve", instance)
    return 200, _row(binding, instance)


def _int(payload: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = payload.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ActionError(400, {key: [f"must be a whole number from {low} to {high}"]})
    return value


def _ordering(binding: Binding, spec: Any) -> list[str]:
    if spec is None:
        return ["pk"]
    if isinstance(spec, str):
        spec = [spec]
    names = {f.name for f in binding.serialized_fields() if filters.filterable(f)} | {"pk"}
    if not isinstance(spec, list) or not all(isinstance(s, str) for s in spec) or len(spec) > 5:
        raise ActionError(400, {"ordering": ["must be a field name or a list of up to 5"]})
    bad = [s for s in spec if not _ORDERING.match(s) or s.removeprefix("-") not in names]
    if bad:
        raise ActionError(400, {"ordering": [f"cannot order by {', '.join(map(repr, bad))}"]})
    return [*spec, "pk"]


_ORDERING = re.compile(r"^-?[A-Za-z_][A-Za-z0-9_]*$")


def conditions(binding: Binding, payload: dict[str, Any]) -> list[filters.Condition]:
    """The request's filter, checked against the binding's fields (a FilterError is a 400)."""
    return filters.parse(payload.get("filter"), binding.serialized_fields())


def list_(binding: Binding, payload: dict[str, Any]) -> tuple[int, Any]:
    _check(binding, "list", None)
    where = conditions(binding, payload)
    page = _int(payload, "page", 1, 1, 1_000_000)
    size = _int(payload, "page_size", binding.page_size, 1, binding.max_page_size)
    qs = binding.readable_queryset(binding.user).filter(filters.to_q(where))
    qs = qs.order_by(*_ordering(binding, payload.get("ordering")))
    count = qs.count()
    rows = [_row(binding, obj) for obj in qs[(page - 1) * size : page * size]]
    return 200, {"results": rows, "count": count, "page": page, "page_size": size}


def _db() -> str:
    return pgbinding_settings.current.DATABASE


#: The actions a client may run here, by name (the consumer adds subscribe/unsubscribe).
HANDLERS: dict[str, Callable[[Binding, dict[str, Any]], tuple[int, Any]]] = {
    "create": create,
    "update": update,
    "delete": delete,
    "retrieve": retrieve,
    "list": list_,
}
