"""Defer the pixel stack (numpy, Pillow, GDCM, pylibjpeg), and aiohttp's CA loading,
until they are used.

pydicom 3.0 imports its pixel data handlers when ``pydicom.config`` is imported, and they
import numpy, Pillow, GDCM and pylibjpeg at once (``try: import numpy`` and friends), so
every ``import pydicom`` costs ~0.2 s and ~40 MB of resident memory although the daemon
only needs pixels for WADO rendering, frames and transcoding. ``install()`` puts a finder
first on ``sys.meta_path`` that gives those modules a lazy loader: the module is *found*
at import (so pydicom's ``except ImportError`` still sees what is installed) but *executed*
only when one of its attributes is first read, i.e. on the first request that decodes
pixels (issue 11 point 8; docs/DESIGN.md "Start-up").

Two more pieces keep pydicom from loading them anyway: its pixel coders' plugin
registration (which imports and probes every plugin) is queued until a coder's tables are
first read, and its writer's ``isinstance(value, numpy.ndarray)`` is answered without
numpy while numpy is not loaded. Both are checked against pydicom 3.0.x.

aiohttp's client is imported with ``aiohttp.web`` and builds two TLS contexts at import,
each reading the system's CA bundle; they read it on the first HTTPS request instead
(checked against aiohttp 3.x).

pydicom's private dictionaries (GDCM's, ~1.8 MB) are read on the first private tag lookup.

pynetdicom.status's seven ranged status tables (29,000 dict entries, 3.5 MB) keep their
code ranges as spans (checked against the exact source of the pinned pynetdicom; not with
PACS_APPLIANCE_STOCK_PYNETDICOM=1).

The lazy module is a backport of Python 3.12's thread-safe ``importlib.util._LazyModule``
(3.11's flips the module to loaded before executing it, so a second thread could read a
half-initialised numpy): the first reader executes the module under a lock, the others
wait for it.

Only ``cli serve`` installs it (an import-time side effect would change every importer,
tests included); ``loaded()`` says which deferred modules have been executed since.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import sys
import threading
import types

# Modules whose execution is deferred. Top-level names cover what pydicom's handlers and
# pixel modules import; the PIL submodules are listed one by one because PIL's own
# ``__init__`` is light and ``from PIL import Image`` needs PIL's ``__path__``. Four of
# pydicom's legacy handlers are deferred themselves because they read an attribute at import
# (``from gdcm import DataElement``, ``from pylibjpeg.utils import ...``).
DEFERRED = frozenset({
    "numpy",
    "PIL.Image", "PIL.ImageCms", "PIL.features",
    "gdcm", "pylibjpeg", "openjpeg", "rle", "libjpeg", "jpeg_ls",
    "requests",  # pydicom.data's downloader of test files
    # ... and urllib.request, which it imports for its functions only (with http.client
    # and email: ~7 ms), and uuid, which pydicom.uid imports for generate_uid() (with
    # platform). aiohttp, the first real user, is imported once the DICOM side listens.
    "urllib.request", "uuid",
    # pydicom's documentation examples: 13 test-file look-ups at ``import pydicom``.
    "pydicom.examples",
    "pydicom.pixel_data_handlers.gdcm_handler",
    "pydicom.pixel_data_handlers.pylibjpeg_handler",
    "pydicom.pixel_data_handlers.pillow_handler",
    "pydicom.pixel_data_handlers.jpeg_ls_handler",
})


# pydicom tests every string value it writes and every element it compares with
# ``isinstance(value, numpy.ndarray)``: that would load numpy on the first C-ECHO
# response. While numpy is not loaded no ndarray can exist, so these callers get a class
# nothing is an instance of, which answers the same.
_TYPE_PROBES = {("numpy", "ndarray"): frozenset({"pydicom.filewriter", "pydicom.dataelem"})}


class _NoInstanceYet:
    """Stands for a class of a module not loaded yet: nothing is an instance of it."""


class _LazyModule(types.ModuleType):
    """A module executed on its first attribute read (Python 3.12's, thread-safe)."""

    def __getattribute__(self, attr):
        spec = object.__getattribute__(self, "__spec__")
        state = spec.loader_state
        callers = _TYPE_PROBES.get((spec.name, attr))
        if callers and sys._getframe(1).f_globals.get("__name__") in callers:
            return _NoInstanceYet
        with state["lock"]:
            # The first thread to get the lock executes the module and resets its class;
            # the others then just read the attribute.
            if object.__getattribute__(self, "__class__") is _LazyModule:
                cls = state["__class__"]
                # The import system reads ``__spec__`` of every module it finds in
                # sys.modules (is it still initialising?): that is no use of the module.
                if attr == "__spec__":
                    return spec
                # Re-entrant reads from the executing thread (the module's own code, a
                # self-referential import) must not trigger the load again.
                if state["is_loading"]:
                    return cls.__getattribute__(self, attr)
                state["is_loading"] = True
                mod_dict = cls.__getattribute__(self, "__dict__")
                original_name = spec.name
                # What importers set on the module before it was loaded (a submodule
                # bound as an attribute, for example) is kept over the fresh values.
                then = state["__dict__"]
                updated = {k: v for k, v in mod_dict.items()
                           if k not in then or then[k] is not v}
                spec.loader.exec_module(self)
                if original_name in sys.modules and sys.modules[original_name] is not self:
                    raise ValueError(f"module object for {original_name!r} "
                                     "substituted in sys.modules during a lazy load")
                mod_dict.update(updated)
                self.__class__ = cls
        return getattr(self, attr)

    def __delattr__(self, attr):
        self.__getattribute__(attr)
        delattr(self, attr)


class _LazyLoader(importlib.util.LazyLoader):
    """``importlib.util.LazyLoader`` with the thread-safe module above."""

    def exec_module(self, module):
        module.__spec__.loader = self.loader
        module.__loader__ = self.loader
        module.__spec__.loader_state = {
            "__dict__": module.__dict__.copy(),
            "__class__": module.__class__,
            "lock": threading.RLock(),
            "is_loading": False,
        }
        module.__class__ = _LazyModule


# pydicom's pixel coders register their plugins when pydicom.pixels.decoders.base and
# .encoders.base are imported (which pydicom.dataset does): ``CoderBase.add_plugin``
# imports each plugin module and asks ``is_available(uid)``, which runs GDCM's version
# check, pylibjpeg's entry-point scan (loading openjpeg and rle) and Pillow's codec check.
# The patch below queues the plugins instead and registers them, in the same order with
# the same code, the first time a coder's plugin tables are read (any decode, encode or
# availability question). Verified against pydicom 3.0.x; any other version, or a
# CoderBase without these members, is left alone (eager, as stock pydicom).
_VERIFIED_PYDICOM = "3.0."
_PLUGIN_LOCK = threading.RLock()


def _defer_plugin_registration(common: types.ModuleType) -> bool:
    """Make ``common.CoderBase`` register its plugins on first use; False if not verified."""
    from pydicom._version import __version__  # pydicom itself is still initialising

    coder = getattr(common, "CoderBase", None)
    if (not __version__.startswith(_VERIFIED_PYDICOM) or coder is None
            or not callable(getattr(coder, "add_plugin", None))
            or "_available" in vars(coder) or "_unavailable" in vars(coder)):
        return False
    eager_add = coder.add_plugin

    def add_plugin(self, label, import_path):
        self.__dict__.setdefault("_deferred_plugins", []).append((label, import_path))

    def _flush(self):
        with _PLUGIN_LOCK:
            # Taken out first: registering reads the tables, and must find them as the
            # eager registration would, not register the next plugins ahead of itself.
            for label, import_path in self.__dict__.pop("_deferred_plugins", ()):
                eager_add(self, label, import_path)

    def table(name):
        def get(self):
            if _read_by_initialising_pydicom(sys._getframe(1)):
                # The coders' modules build their docstrings from the plugin labels at
                # import; they get every label (as registered they would: available +
                # unavailable) without registering anything.
                if name == "_unavailable":
                    return {}
                labels = [*self.__dict__[name], *self.__dict__["_unavailable"],
                          *(label for label, _ in self.__dict__.get("_deferred_plugins", ()))]
                return dict.fromkeys(labels)
            _flush(self)
            return self.__dict__[name]

        def set_(self, value):
            self.__dict__[name] = value
        return property(get, set_, doc=f"{name}, with the queued plugins registered first")

    coder.add_plugin = add_plugin
    coder._available = table("_available")
    coder._unavailable = table("_unavailable")
    return True


_CODER_MODULES = ("pydicom.pixels.decoders.base", "pydicom.pixels.encoders.base")


def _read_by_initialising_pydicom(frame) -> bool:
    """True if ``frame`` runs in a coder module of pydicom that is still being imported."""
    name = frame.f_globals.get("__name__")
    module = sys.modules.get(name) if name in _CODER_MODULES else None
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def _pydicom_plugins(module: types.ModuleType, execute) -> None:
    """Execute pydicom.pixels.common, then defer its plugin registration."""
    execute()
    if not _defer_plugin_registration(module):
        logging.getLogger(__name__).debug(
            "pydicom's pixel plugins register eagerly: version not verified")


# aiohttp.connector builds two TLS client contexts at import (_SSL_CONTEXT_VERIFIED and
# _UNVERIFIED), and each loads the system's CA bundle: ~60 ms of CPU and ~2 MB at every
# start, although the daemon only opens HTTPS connections to a DICOMweb peer configured
# with an https:// URL. While the module executes, contexts skip loading the default
# verify paths and are noted; the connector's one accessor of them,
# TCPConnector._get_ssl_context, loads them before handing one out (the first HTTPS
# request), so every handshake verifies as with stock aiohttp. Verified against aiohttp
# 3.x with those two globals and that accessor; otherwise the CAs load at once (stock).
_VERIFIED_AIOHTTP = "3."
_TLS_GLOBALS = ("_SSL_CONTEXT_VERIFIED", "_SSL_CONTEXT_UNVERIFIED")
_TLS_LOCK = threading.Lock()


def _aiohttp_tls(module: types.ModuleType, execute) -> None:
    """Execute aiohttp.connector with its TLS contexts' CA loading put off to first use."""
    try:
        import ssl
    except ImportError:  # a Python without TLS: aiohttp builds no context either
        execute()
        return
    owed: list = []

    def note(context):
        owed.append(context)

    plain = ssl.SSLContext.__dict__.get("set_default_verify_paths")
    ssl.SSLContext.set_default_verify_paths = note
    try:
        execute()
    finally:
        if plain is None:
            del ssl.SSLContext.set_default_verify_paths
        else:
            ssl.SSLContext.set_default_verify_paths = plain
    package = sys.modules.get("aiohttp")
    connector = getattr(module, "TCPConnector", None)
    accessor = getattr(connector, "_get_ssl_context", None)
    if (not str(getattr(package, "__version__", "")).startswith(_VERIFIED_AIOHTTP)
            or not callable(accessor)
            or sorted(map(id, owed)) != sorted(id(getattr(module, name, None))
                                               for name in _TLS_GLOBALS)):
        for context in owed:
            context.set_default_verify_paths()
        logging.getLogger(__name__).debug(
            "aiohttp's TLS contexts load their CAs at import: version not verified")
        return

    def _get_ssl_context(self, req):
        context = accessor(self, req)
        # None: a plain http:// request, which needs no CA. Cleared only once every
        # context is loaded: another thread finding the list empty may use them.
        if context is not None and owed:
            with _TLS_LOCK:
                for noted in owed:
                    noted.set_default_verify_paths()
                owed.clear()
        return context

    _get_ssl_context.__doc__ = accessor.__doc__
    connector._get_ssl_context = _get_ssl_context


def tls_pending(module: types.ModuleType) -> list[str]:
    """Which of ``module``'s (aiohttp.connector's) TLS contexts have no CA loaded yet."""
    return [name for name in _TLS_GLOBALS
            if getattr(module, name).cert_store_stats()["x509_ca"] == 0]


# pynetdicom.status fills seven status tables with every code of the ranges PS3.4 gives
# to a meaning ("Cxxx: Unable to process", "A7xx: Out of resources": PS3.4 C.4.1.1.4,
# GG.4.1.1...), one dict entry per code: 29,000 entries, 3.5 MB of ints, tuples and dict
# tables that stay for the process's life, and ~10 ms at every start; pynetdicom only
# asks them ``code in table`` and ``table[code]`` for the status of a response. While
# the module executes, ``range`` in its namespace gives those loops one _Span key
# instead of 256-4,096 codes; the tables are then _StatusTable dicts that keep the
# single codes as entries and answer for the spans. Verified against the exact source
# (SHA-256 of status.py) of the pinned pynetdicom; any other file is executed as it is.
# PACS_APPLIANCE_STOCK_PYNETDICOM=1 leaves the module alone, like every other change to
# pynetdicom (appliance/dicom/transport.py).
STOCK_PYNETDICOM_ENV = "PACS_APPLIANCE_STOCK_PYNETDICOM"
_VERIFIED_STATUS_SOURCES = frozenset({
    "e28a142a0e02790a2eef81debc5866ce8084712400d08c856e79d434061f16ed",  # pynetdicom 3.0.4
})
_SPAN_MIN = 256  # the shortest of status.py's ranged loops (0xA700-0xA7FF; Cxxx is 4,096)


class _Span:
    """``range(start, stop)`` as the one key a status table's loop writes."""

    __slots__ = ("start", "stop")

    def __init__(self, start: int, stop: int) -> None:
        self.start, self.stop = start, stop


def _span_range(*args):
    """``range`` for pynetdicom.status's loops: a long range is one _Span."""
    codes = range(*args)
    if len(codes) >= _SPAN_MIN and codes.step == 1:
        return (_Span(codes.start, codes.stop),)
    return codes


class _StatusTable(dict):
    """A status table: its single codes are the dict's entries (they win, as they were
    written after the ranges in status.py), ``spans`` answers for the code ranges.

    Reads (``in``, ``[]``, ``get``, ``len``, iteration, ``==``, ``copy``) answer as the
    stock dict of every code does; an insert is an entry, so it wins as the latest write
    does; a removal first turns the spans into entries (what stock holds), then removes.
    """

    def __init__(self, entries: dict, spans: tuple[tuple[int, int, tuple], ...]) -> None:
        super().__init__(entries)
        self.spans = spans  # (start, stop, value), disjoint, sorted

    def _span_value(self, code):
        if type(code) is int:
            for start, stop, value in self.spans:
                if start <= code < stop:
                    return value
        return _NOT_IN_SPAN

    def __contains__(self, code) -> bool:
        return dict.__contains__(self, code) or self._span_value(code) is not _NOT_IN_SPAN

    def __missing__(self, code):
        value = self._span_value(code)
        if value is _NOT_IN_SPAN:
            raise KeyError(code)
        return value

    def get(self, code, default=None):
        return self[code] if code in self else default

    def _span_codes(self):
        return (code for start, stop, _ in self.spans for code in range(start, stop)
                if not dict.__contains__(self, code))

    def __len__(self) -> int:
        return dict.__len__(self) + sum(1 for _ in self._span_codes())

    def __iter__(self):
        yield from dict.__iter__(self)
        yield from self._span_codes()

    def keys(self):
        return list(self)

    def values(self):
        return [self[code] for code in self]

    def items(self):
        return [(code, self[code]) for code in self]

    def __eq__(self, other):
        return dict(self.items()) == other if isinstance(other, dict) else NotImplemented

    def __ne__(self, other):
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = None

    def __repr__(self) -> str:
        return repr(dict(self.items()))

    def copy(self):
        return _StatusTable(dict(self), self.spans)

    def _to_entries(self) -> None:
        for start, stop, value in self.spans:
            for code in range(start, stop):
                self.setdefault(code, value)
        self.spans = ()

    def _removing(name):
        def remove(self, *args):
            self._to_entries()
            return getattr(dict, name)(self, *args)
        remove.__name__ = name
        return remove

    __delitem__ = _removing("__delitem__")
    pop = _removing("pop")
    popitem = _removing("popitem")
    clear = _removing("clear")
    del _removing


_NOT_IN_SPAN = object()


def _file_verified(module: types.ModuleType, digests: frozenset) -> bool:
    """True if the source file of ``module`` (being imported) has one of these SHA-256s."""
    import hashlib

    try:
        with open(module.__spec__.origin, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest() in digests
    except (OSError, TypeError):
        return False


def _pynetdicom_status(module: types.ModuleType, execute) -> None:
    """Execute pynetdicom.status with its ranged status codes kept as spans."""
    import os

    if os.environ.get(STOCK_PYNETDICOM_ENV, "") not in ("", "0") \
            or not _file_verified(module, _VERIFIED_STATUS_SOURCES):
        execute()
        return
    module.range = _span_range
    try:
        execute()
    finally:
        del module.range
    tables: dict[int, _StatusTable] = {}
    for name, value in list(vars(module).items()):
        if type(value) is not dict or not any(type(k) is _Span for k in value):
            continue
        if id(value) not in tables:  # an alias of a table stays one
            entries = {k: v for k, v in value.items() if type(k) is not _Span}
            spans = tuple(sorted((k.start, k.stop, v) for k, v in value.items()
                                 if type(k) is _Span))
            tables[id(value)] = _StatusTable(entries, spans)
        setattr(module, name, tables[id(value)])


# pydicom.datadict binds GDCM's private dictionaries (pydicom._private_dict: 1,500 private
# creators, ~1.8 MB and ~8 ms at every start) at import, and only reads them to name or
# type a private tag (get_private_entry) or to add entries (add_private_dict_entries).
# While datadict executes, the import finds a stand-in module whose private_dictionaries
# is a _PrivateDictionaries: empty until any of its methods is first called, which
# imports the real module, takes its entries and becomes its private_dictionaries, so
# the two names stay one dict as in stock pydicom. Verified against the exact source of
# datadict.py (its two uses); any other file is executed as it is.
_VERIFIED_DATADICT_SOURCES = frozenset({
    "c722d4ac075a0df5016aaef828dd058e253f21162e3722ee95e1dacf5d0e3e01",  # pydicom 3.0.2
})
_PRIVATE_DICT = "pydicom._private_dict"
_PRIVATE_LOCK = threading.Lock()


class _PrivateDictionaries(dict):
    """pydicom's ``private_dictionaries``, read from pydicom._private_dict on first use."""

    __slots__ = ("loaded",)

    def __init__(self) -> None:
        super().__init__()
        self.loaded = False

    def load(self) -> None:
        """Take the real module's entries (once) and become its ``private_dictionaries``."""
        if self.loaded:
            return
        with _PRIVATE_LOCK:
            if self.loaded:
                return
            real = importlib.import_module(_PRIVATE_DICT)
            if real.private_dictionaries is not self:
                dict.update(self, real.private_dictionaries)
                real.private_dictionaries = self
            self.loaded = True

    __hash__ = None


def _loading(name: str):
    """dict's method ``name``, run once the private dictionaries are loaded."""
    method = getattr(dict, name)

    def loading(self, *args, **kwargs):
        self.load()
        return method(self, *args, **kwargs)
    loading.__name__ = loading.__qualname__ = name
    return loading


for _name in ("__getitem__", "__setitem__", "__delitem__", "__contains__", "__iter__",
              "__len__", "__eq__", "__ne__", "__repr__", "__or__", "__ior__", "__reversed__",
              "get", "keys", "values", "items", "setdefault", "update", "pop", "popitem",
              "clear", "copy"):
    setattr(_PrivateDictionaries, _name, _loading(_name))
del _name


def _pydicom_private_dictionaries(module: types.ModuleType, execute) -> None:
    """Execute pydicom.datadict with its private dictionaries loaded on first use."""
    if _PRIVATE_DICT in sys.modules or not _file_verified(module, _VERIFIED_DATADICT_SOURCES):
        execute()
        return
    stand_in = types.ModuleType(_PRIVATE_DICT)
    stand_in.private_dictionaries = _PrivateDictionaries()
    _executed_with(_PRIVATE_DICT, stand_in, execute)


def _executed_with(name: str, stand_in: types.ModuleType, execute) -> None:
    """``execute()`` with ``stand_in`` as ``sys.modules[name]``, taken out again after
    (unless the real module replaced it meanwhile)."""
    sys.modules[name] = stand_in
    try:
        execute()
    finally:
        if sys.modules.get(name) is stand_in:
            del sys.modules[name]


def private_dictionaries_loaded() -> bool:
    """True once pydicom's private dictionaries have been read (or were never deferred)."""
    datadict = sys.modules.get("pydicom.datadict")
    table = getattr(datadict, "private_dictionaries", None)
    return not isinstance(table, _PrivateDictionaries) or table.loaded


# pydicom._version and pynetdicom._version each ask ``importlib.metadata.version()`` for
# their own version at import. importlib.metadata (with the email, zipfile and csv
# modules it imports) is ~9 ms of every start, for two strings that the package's
# dist-info directory beside it also holds: while they execute, ``importlib.metadata``
# is a stand-in whose ``version(name)`` reads the ``Version:`` line of that directory's
# METADATA, the field importlib.metadata reads; anything else (no such directory, two of
# them, no such line) goes to the real function.
_VERSIONED = ("pydicom._version", "pynetdicom._version")
_METADATA = "importlib.metadata"


def _dist_version(site: str, name: str) -> str | None:
    """The Version field of ``name``'s one dist-info directory in ``site`` (None: not so)."""
    import os

    try:
        found = [entry for entry in os.listdir(site)
                 if entry.startswith(f"{name}-") and entry.endswith(".dist-info")]
        if len(found) != 1:
            return None
        with open(os.path.join(site, found[0], "METADATA"), encoding="utf-8") as f:
            for line in f:
                if line.startswith("Version:"):
                    return line[len("Version:"):].strip() or None
                if not line.strip():
                    return None  # the end of the headers
    except OSError:
        return None
    return None


def _versioned(module: types.ModuleType, execute) -> None:
    """Execute a package's _version module with the stand-in importlib.metadata."""
    import os

    if _METADATA in sys.modules:
        execute()
        return
    site = os.path.dirname(os.path.dirname(module.__spec__.origin or ""))

    def version(name: str) -> str:
        found = _dist_version(site, name)
        if found is None:
            if sys.modules.get(_METADATA) is stand_in:
                del sys.modules[_METADATA]  # the real module from now on
            return importlib.import_module(_METADATA).version(name)
        return found

    stand_in = types.ModuleType(_METADATA)
    stand_in.version = version
    _executed_with(_METADATA, stand_in, execute)


# Modules executed by a patching function ``patch(module, execute)``.
_PATCHED = {
    "pydicom.pixels.common": _pydicom_plugins,
    "pydicom.datadict": _pydicom_private_dictionaries,
    "aiohttp.connector": _aiohttp_tls,
    "pynetdicom.status": _pynetdicom_status,
    **{name: _versioned for name in _VERSIONED},
}


class _PatchingLoader:
    """Executes a _PATCHED module through its patching function."""

    def __init__(self, loader, patch):
        self.loader = loader
        self.patch = patch

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.patch(module, lambda: self.loader.exec_module(module))


class _DeferringFinder:
    """Finds the DEFERRED modules with the other finders and makes their loader lazy."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in DEFERRED and fullname not in _PATCHED:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None  # not installed: the importer's ImportError, as without us
        if fullname in _PATCHED:
            if spec.loader is not None:
                spec.loader = _PatchingLoader(spec.loader, _PATCHED[fullname])
            return spec
        # Extension modules execute in create_module(); deferring them gains nothing.
        if spec.loader is None or not isinstance(spec.loader, importlib.machinery.SourceFileLoader
                                                 | importlib.machinery.SourcelessFileLoader):
            return spec
        spec.loader = _LazyLoader(spec.loader)
        return spec


_FINDER = _DeferringFinder()


def install() -> None:
    """Defer the DEFERRED modules imported from now on (idempotent). Call it before
    anything imports pydicom."""
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def loaded() -> list[str]:
    """The DEFERRED modules that have been executed (imported and then used)."""
    return sorted(name for name in DEFERRED
                  if name in sys.modules and type(sys.modules[name]) is not _LazyModule)
