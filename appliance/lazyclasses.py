"""Dataclasses whose methods are generated when the class is first used, not at import.

``dataclasses.dataclass`` writes the source of each class's ``__init__``, ``__repr__``,
``__eq__`` (and, frozen, ``__setattr__``, ``__delattr__``, ``__hash__``) and compiles
it: ~0.15 ms per method, 21 % of the instructions the daemon ran before READY (callgrind,
94 classes, 513 methods), most of them for classes that only a request instantiates
(an index record, a retrieval, a backup report). ``@lazy_dataclass(...)`` takes the same
arguments and gives the same class object, processed by ``dataclass`` itself the first
time it is needed: instantiated (``__init__``), unpickled (``__setstate__``), subclassed
(``__init_subclass__``) or read as a dataclass (``__dataclass_fields__``: ``fields()``,
``is_dataclass()``, ``asdict()``); ``materialize(cls)`` does it at once (issue 11 point 8;
docs/DESIGN.md "Start-up").

Until it is processed, a ``field()`` default is still the Field on the class. A class
that defines one of those four names itself, or asks for ``slots`` (a new class), is
processed at once.
"""

from __future__ import annotations

import dataclasses
import threading
import typing

_PARAMS = "__lazy_dataclass_params__"  # on a class still to be processed: dataclass()'s kwargs
_FIELDS = "__dataclass_fields__"  # what dataclasses reads to know a dataclass
_LOCK = threading.RLock()


@typing.dataclass_transform()
def lazy_dataclass(cls=None, /, **params):
    """``dataclasses.dataclass`` (same arguments), run when the class is first used."""

    def wrap(cls):
        if params.get("slots") or any(name in vars(cls) for name in _TRIGGERS):
            return dataclasses.dataclass(cls, **params)
        for base in cls.__mro__[1:]:
            materialize(base)  # its fields come before ours
        setattr(cls, _PARAMS, params)
        setattr(cls, _FIELDS, _FieldsOnFirstRead())
        cls.__init__ = _first_init(cls)
        cls.__setstate__ = _first_setstate
        cls.__init_subclass__ = classmethod(_first_subclass)
        return cls

    return wrap if cls is None else wrap(cls)


_TRIGGERS = ("__init__", "__setstate__", "__init_subclass__", _FIELDS)


def materialize(cls: type) -> None:
    """Process ``cls`` as the dataclass it was declared, if it still waits (thread-safe)."""
    if _PARAMS not in vars(cls):
        return
    with _LOCK:
        params = vars(cls).get(_PARAMS)
        if params is None:
            return  # another thread did it meanwhile
        for name in (*_TRIGGERS, _PARAMS):
            delattr(cls, name)
        dataclasses.dataclass(cls, **params)


class _FieldsOnFirstRead:
    """``__dataclass_fields__`` of a waiting class: reading it processes the class."""

    def __get__(self, obj, owner):
        for klass in owner.__mro__:
            materialize(klass)
        return getattr(owner, _FIELDS)


def _first_init(owner: type):
    """The waiting ``__init__`` of ``owner``: process it, then run the generated one."""

    def __init__(self, *args, **kwargs):
        materialize(owner)
        owner.__init__(self, *args, **kwargs)

    __init__.__qualname__ = f"{owner.__qualname__}.__init__"
    return __init__


def _first_setstate(self, state) -> None:
    """Unpickling an instance of a waiting class (no ``__init__`` runs): process the
    class, then set the state as pickle does for a class without ``__setstate__``."""
    for klass in type(self).__mro__:
        materialize(klass)
    if isinstance(state, tuple) and len(state) == 2:
        state, slots = state
        for name, value in (slots or {}).items():
            object.__setattr__(self, name, value)
    if state:
        self.__dict__.update(state)


def _first_subclass(cls, **kwargs):
    for base in cls.__mro__[1:]:
        materialize(base)
    super(cls, cls).__init_subclass__(**kwargs)
