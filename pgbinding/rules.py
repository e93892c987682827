"""Read rules: which rows of a binding a user may see, decided on the row itself.

A binding's ``read_rule`` is evaluated three ways, and they always agree:

* as SQL, for ``list``, ``retrieve``, subscription snapshots and inbound writes
  (:meth:`Rule.q`);
* in Python, on the *logged* old and new row of each change, for live events and replays
  (:meth:`Rule.allows`), never on the row as it is now in the database;
* as delivery keys (:meth:`Rule.keys` / :meth:`Rule.user_keys`): the listener sends a change
  only to the channel-layer groups of the users who may see it, so authorized fan-out costs
  per socket that may see a change, not per socket.

Rules::

    read_rule = AllRows()                   # the default: every row (stream permission still
                                            # decides who may read at all)
    read_rule = Owner("owner")              # rows whose ``owner`` is the user
    read_rule = Owner("owner") | Staff()    # ... and staff see every row
    read_rule = Where(["team"], lambda user: {"team__in": user_team_ids(user)})

``Where`` takes the filter language of ``list``/``subscribe`` (see :mod:`pgbinding.filters`),
evaluated on the columns it names; it is checked socket by socket (no delivery keys).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from django.db import models
from django.db.models import Q

_KEY_SAFE = re.compile(r"^[A-Za-z0-9_.\-]{1,40}$")
#: Q that matches no row.
NOTHING = Q(pk__in=[])


def key_part(value: Any) -> str:
    """A value as a piece of a channel-layer group name (letters, digits, ``-_.``, short)."""
    text = str(value)
    if _KEY_SAFE.match(text):
        return text
    return "h" + hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:24]


def _authenticated(user: Any) -> bool:
    return bool(user is not None and getattr(user, "is_authenticated", False))


class Rule:
    """Base of read rules. ``bind()`` is called once with the binding's model."""

    #: Field names whose values the rule reads from a row.
    fields: Sequence[str] = ()

    def bind(self, model: type[models.Model]) -> Rule:
        """Check the rule against ``model`` (raise ValueError naming the problem)."""
        for name in self.fields:
            try:
                field = model._meta.get_field(name)
            except Exception:
                raise ValueError(
                    f"{self!r} names {name!r}, which is not a field of {model._meta.label}"
                ) from None
            if not getattr(field, "concrete", False) or getattr(field, "many_to_many", False):
                raise ValueError(f"{self!r} names {name!r}, which is not a column")
        self._attnames = {n: model._meta.get_field(n).attname for n in self.fields}  # type: ignore[union-attr]
        return self

    def attname(self, name: str) -> str:
        return self._attnames[name]

    def q(self, user: Any) -> Q:
        """The rows ``user`` may see, as a filter for querysets."""
        raise NotImplementedError

    def allows(self, user: Any, row: Mapping[str, Any]) -> bool:
        """May ``user`` see this row (``row``: attname -> value, as logged)?"""
        raise NotImplementedError

    def keys(self, row: Mapping[str, Any]) -> frozenset[str] | None:
        """The delivery keys of a row: the users whose sockets join one of them may see it.
        None: no keys (every socket allowed to read the stream gets it, and checks)."""
        return None

    def user_keys(self, user: Any) -> frozenset[str]:
        """The delivery keys ``user``'s sockets listen to."""
        return frozenset()

    def __or__(self, other: Rule) -> Rule:
        return AnyOf(self, other)


class AllRows(Rule):
    """Every row, for whoever the binding's ``has_permission`` lets read the stream."""

    def q(self, user: Any) -> Q:
        return Q()

    def allows(self, user: Any, row: Mapping[str, Any]) -> bool:
        return True

    def __repr__(self) -> str:
        return "AllRows()"


class Owner(Rule):
    """Rows whose ``field`` (a foreign key to the user model, or a column holding a user
    attribute) equals ``getattr(user, user_attr)``. Anonymous users see none."""

    def __init__(self, field: str, user_attr: str = "pk") -> None:
        self.field = field
        self.user_attr = user_attr
        self.fields = (field,)

    def _user_value(self, user: Any) -> Any:
        if not _authenticated(user):
            return None
        return getattr(user, self.user_attr, None)

    def q(self, user: Any) -> Q:
        value = self._user_value(user)
        return NOTHING if value is None else Q(**{self.attname(self.field): value})

    def allows(self, user: Any, row: Mapping[str, Any]) -> bool:
        value = self._user_value(user)
        return value is not None and row.get(self.attname(self.field)) == value

    def keys(self, row: Mapping[str, Any]) -> frozenset[str] | None:
        value = row.get(self.attname(self.field))
        if value is None:
            return frozenset()
        return frozenset({f"{self.field}.{key_part(value)}"})

    def user_keys(self, user: Any) -> frozenset[str]:
        value = self._user_value(user)
        return frozenset() if value is None else frozenset({f"{self.field}.{key_part(value)}"})

    def __repr__(self) -> str:
        return f"Owner({self.field!r})"


class Staff(Rule):
    """Every row, for staff users (``user.is_staff``)."""

    def q(self, user: Any) -> Q:
        return Q() if getattr(user, "is_staff", False) else NOTHING

    def allows(self, user: Any, row: Mapping[str, Any]) -> bool:
        return bool(getattr(user, "is_staff", False))

    def keys(self, row: Mapping[str, Any]) -> frozenset[str] | None:
        return frozenset({"staff"})

    def user_keys(self, user: Any) -> frozenset[str]:
        return frozenset({"staff"}) if getattr(user, "is_staff", False) else frozenset()

    def __repr__(self) -> str:
        return "Staff()"


class Where(Rule):
    """Rows matching a per-user filter in the filter language of ``list``/``subscribe``, on the
    named fields: ``Where(["team"], lambda user: {"team__in": [...]})``. The callable may
    return None for "every row" or False for "none". Checked socket by socket."""

    def __init__(self, fields: Sequence[str], condition: Callable[[Any], Any]) -> None:
        self.fields = tuple(fields)
        self.condition = condition
        self._model: type[models.Model] | None = None

    def bind(self, model: type[models.Model]) -> Rule:
        super().bind(model)
        self._model = model
        return self

    def _conditions(self, user: Any) -> list[Any] | None:
        from . import filters

        spec = self.condition(user)
        if spec is None:
            return []
        if spec is False:
            return None
        assert self._model is not None
        fields = [self._model._meta.get_field(n) for n in self.fields]
        return filters.parse(spec, fields)  # type: ignore[arg-type]

    def q(self, user: Any) -> Q:
        from . import filters

        conditions = self._conditions(user)
        return NOTHING if conditions is None else filters.to_q(conditions)

    def allows(self, user: Any, row: Mapping[str, Any]) -> bool:
        from . import filters

        conditions = self._conditions(user)
        return conditions is not None and filters.matches(conditions, row)

    def __repr__(self) -> str:
        return f"Where({list(self.fields)!r}, ...)"


class AnyOf(Rule):
    """A row any of ``rules`` lets the user see."""

    def __init__(self, *rules: Rule) -> None:
        self.rules = rules
        self.fields = tuple(dict.fromkeys(f for r in rules for f in r.fields))

    def bind(self, model: type[models.Model]) -> Rule:
        for rule in self.rules:
            rule.bind(model)
        return super().bind(model)

    def q(self, user: Any) -> Q:
        out = NOTHING
        for rule in self.rules:
            out |= rule.q(user)
        return out

    def allows(self, user: Any, row: Mapping[str, Any]) -> bool:
        return any(rule.allows(user, row) for rule in self.rules)

    def keys(self, row: Mapping[str, Any]) -> frozenset[str] | None:
        out: set[str] = set()
        for rule in self.rules:
            keys = rule.keys(row)
            if keys is None:
                return None
            out |= keys
        return frozenset(out)

    def user_keys(self, user: Any) -> frozenset[str]:
        return frozenset().union(*(rule.user_keys(user) for rule in self.rules))

    def __repr__(self) -> str:
        return " | ".join(map(repr, self.rules))
