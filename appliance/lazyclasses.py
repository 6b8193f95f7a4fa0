"""Dataclasses whose methods are generated when the class is first used, not at import.

``dataclasses.dataclass`` writes the source of each class's ``__init__``, ``__repr__``,
``__eq__`` (and, frozen, ``__setattr__``, ``__delattr__``, ``__hash__``) and compiles
it: ~0.15 ms per method, 21 % of the instructions the daemon ran before READY (callgrind,
94 classes, 513 methods), most of them for classes that only a request instantiates
(an index record, a retrieval, a backup report). ``@lazy_dataclass(...)`` takes the same
arguments and gives the same class object, processed by ``dataclass`` itself the first
time it is needed: instantiated (``__new__``, which unpickling and copying call too),
subclassed (``__init_subclass__``) or read as a dataclass (``__dataclass_fields__``:
``fields()``, ``is_dataclass()``, ``asdict()``); ``materialize(cls)`` does it at once
(issue 11 point 8; docs/DESIGN.md "Start-up"). A thread that needs the class while
another processes it waits for it: the placeholders stay until ``dataclass`` is done.

What differs from ``@dataclass``: the class keeps a ``__new__`` (``object.__new__``
without the arguments, ~0.2 us per instance) and a ``__signature__`` (read from
``__init__``, as ``inspect.signature`` reads a dataclass); until it is processed a
``field()`` default is still the Field on the class. A class that defines ``__new__``
(or has a base that does) or ``__init_subclass__``, or asks for ``slots`` (a new
class), is processed at once.
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
        if (params.get("slots") or "__init_subclass__" in vars(cls)
                or any(_own_new(klass) for klass in cls.__mro__[:-1])):
            return dataclasses.dataclass(cls, **params)
        for base in cls.__mro__[1:]:
            materialize(base)  # its fields come before ours
        setattr(cls, _PARAMS, params)
        setattr(cls, _FIELDS, _FieldsOnFirstRead())
        cls.__signature__ = _SignatureOfInit()
        cls.__new__ = staticmethod(_first_new)
        cls.__init_subclass__ = classmethod(_first_subclass)
        return cls

    return wrap if cls is None else wrap(cls)


_PROCESSING: set[type] = set()  # by the thread holding _LOCK


def materialize(cls: type) -> None:
    """Process ``cls`` as the dataclass it was declared, if it still waits (thread-safe)."""
    if _PARAMS not in vars(cls):
        return
    with _LOCK:
        params = vars(cls).get(_PARAMS)
        if params is None or cls in _PROCESSING:
            return  # done by another thread meanwhile, or being done by this one
        _PROCESSING.add(cls)
        try:
            # The placeholders stay meanwhile: another thread instantiating the class
            # waits in _first_new for the lock. dataclass() sets __dataclass_fields__.
            dataclasses.dataclass(cls, **params)
            # Not deleted: CPython would keep the class's __new__ slot, and its
            # object.__new__ would then refuse the arguments.
            cls.__new__ = staticmethod(_new)
            del cls.__init_subclass__
            delattr(cls, _PARAMS)
        finally:
            _PROCESSING.discard(cls)


class _FieldsOnFirstRead:
    """``__dataclass_fields__`` of a waiting class: reading it processes the class."""

    def __get__(self, obj, owner):
        if owner in _PROCESSING:
            raise AttributeError(_FIELDS)  # not a dataclass yet, for dataclass() itself
        for klass in owner.__mro__:
            materialize(klass)
        return getattr(owner, _FIELDS)


class _SignatureOfInit:
    """``__signature__`` of a lazy dataclass: its ``__init__``'s, as for a dataclass
    (``inspect.signature`` would otherwise read our ``__new__``)."""

    def __get__(self, obj, owner):
        import inspect  # loaded anyway (asyncio); only a signature needs it here

        for klass in owner.__mro__:
            materialize(klass)
        init = inspect.signature(owner.__init__)
        return init.replace(parameters=list(init.parameters.values())[1:])


def _own_new(cls: type) -> bool:
    """True if ``cls`` defines a ``__new__`` of its own (not one of ours)."""
    new = vars(cls).get("__new__")
    return new is not None and getattr(new, "__func__", None) not in (_new, _first_new)


def _new(cls, *args, **kwargs):
    return object.__new__(cls)


def _first_new(cls, *args, **kwargs):
    for klass in cls.__mro__:  # cls itself, or a plain subclass of a lazy dataclass
        materialize(klass)
    return object.__new__(cls)


def _first_subclass(cls, **kwargs):
    for base in cls.__mro__[1:]:
        materialize(base)
    super(cls, cls).__init_subclass__(**kwargs)
