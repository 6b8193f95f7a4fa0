"""Load and validate the daemon's JSON configuration (Orthanc's ``orthanc.json`` format).

The file uses Orthanc's key names and, unless a key's declaration below says otherwise,
Orthanc's meanings and defaults, so that a clinic can point this daemon at its existing
``orthanc.json``. The references checked while writing this module are Orthanc's
``OrthancServer/Resources/Configuration.json`` (1.10 to 1.12 mainline),
``OrthancServer/Sources/OrthancConfiguration.cpp`` and ``main.cpp``,
``RemoteModalityParameters.cpp``, the DICOMweb plugin's ``Plugin/Configuration.cpp`` and the
Orthanc Book pages of the DICOMweb and Worklists plugins.

Each key is declared once, on the dataclass field that keeps its value (see "declarations"
below): its JSON name, default, validator and documentation. The keys each object of the
file accepts, the defaults and the parse itself are derived from those declarations, and
:func:`reference` prints them as a table.

Where this module is stricter than Orthanc (Orthanc silently ignores unknown keys; here an
unknown key, a wrong type or an impossible value is a :class:`ConfigError`), it is on
purpose: a typo in a clinic's config must stop start-up with one clear line instead of
silently falling back to a default.

Nothing here logs or touches the disk except :func:`load_config` reading the file(s) it is
given; the caller logs ``Config.ignored`` and any :class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import os
import re
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping, NoReturn, TypeVar

from appliance.passwords import password_entry_problem

__all__ = [
    "BackupsConfig",
    "Config",
    "ConfigError",
    "DicomWebConfig",
    "DicomWebServer",
    "DiskMonitorConfig",
    "ForwardingConfig",
    "ForwardingRule",
    "Key",
    "Modality",
    "MppsConfig",
    "Section",
    "WorklistsConfig",
    "declaration",
    "declarations",
    "default_config",
    "load_config",
    "parse_config",
    "reference",
    "strip_json_comments",
]

FILE_KEY = "(file)"
"""The ``key`` of a :class:`ConfigError` about the file as a whole (missing, not JSON...)."""


class ConfigError(Exception):
    """A configuration problem, reported as one line: ``<path>: <key>: <why>``.

    ``key`` is dotted for nested keys (``DicomWeb.Root``, ``DicomModalities.us1.Port``) and is
    ``"(file)"`` when the file as a whole is at fault (missing, unreadable, not JSON).
    """

    def __init__(self, path: str, key: str, why: str):
        super().__init__(f"{path}: {key}: {why}")
        self.path = path
        self.key = key
        self.why = why

    def __reduce__(self):  # keep it picklable despite the 3-argument constructor
        return (type(self), (self.path, self.key, self.why))


# --------------------------------------------------------------------------- declarations
#
# A key is declared on the field that keeps its value, for instance
#
#     dicom_port: int = _key("DicomPort", 4242, _port, "The DICOM port; ...")
#
# (the field's name is ours, "DicomPort" is the JSON name, 4242 the default, _port the
# validator, then the documentation). Sections ("DicomWeb"...) are fields declared with
# _section(); fields that no key sets (Config.source...) with _derived(). Keys without a
# field (Orthanc keys accepted with one value only, inputs of another key) and the keys a
# section accepts without effect are given to @_declared, which checks the whole
# declaration at import (Section.problems) and registers it for the parser (_read).
#
# An object's keys are read in declaration order (inputs first, then the fields), after
# its unknown keys were refused: a computed default or a check may use the keys declared
# before it, and the first error found is the one reported.


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_REQUIRED: Any = _Marker("REQUIRED")  # _key(): the key must be given (no default)
_COMPUTED: Any = _Marker("COMPUTED")  # _key(): the default comes from default_from only
_NO_DEFAULT: Any = _Marker("NO_DEFAULT")  # Key.default of a required or computed key
_KEY = "appliance.config.key"  # field metadata: the Key declared on the field
_DERIVED = "appliance.config.derived"  # field metadata: the Derived declared on the field


class Reader:
    """A validator: ``reader(obj, where, raw)`` returns the value kept for ``raw``, the JSON
    value of the key ``where`` (dotted), or stops with ``obj.fail(where, why)``.

    ``accepts`` says in a few words what is accepted (for :func:`reference`).
    """

    __slots__ = ("accepts", "_read")

    def __init__(self, accepts: str, read: Callable[[_Object, str, Any], Any]) -> None:
        self.accepts = accepts
        self._read = read

    def __call__(self, obj: _Object, where: str, raw: Any) -> Any:
        return self._read(obj, where, raw)

    def __repr__(self) -> str:
        return f"Reader({self.accepts!r})"


def _reader(accepts: str) -> Callable[[Callable[[_Object, str, Any], Any]], Reader]:
    """Decorator: a function ``(obj, where, raw) -> value`` becomes a :class:`Reader`."""
    return lambda read: Reader(accepts, read)


@dataclass(frozen=True)
class Key:
    """One key of the file, declared once: everything the parser and the reference know of it.

    ``name`` is the JSON name: Orthanc's (or its plugin's), unless ``ours``. When the key is
    absent its value is ``default_from(obj)`` if given (computed from keys read before it,
    described by ``default_doc``), else ``default``; a ``required`` key has no default.
    ``check(obj, value)`` runs once the value is known (a rule between keys). ``synonyms``
    are other names of the same key (both given: they must agree). A key without ``effect``
    is validated but listed in ``Config.ignored`` when given. ``section`` is the dataclass of
    a nested object (of each entry of a named map when ``each``).
    """

    name: str
    read: Reader
    doc: str
    default: Any = _NO_DEFAULT
    default_from: Callable[[_Object], Any] | None = None
    default_doc: str = ""
    required: bool = False
    synonyms: tuple[str, ...] = ()
    check: Callable[[_Object, Any], None] | None = None
    effect: bool = True
    ours: bool = False
    section: type | None = None
    each: bool = False

    def value(self, obj: _Object) -> Any:
        """The value of this key in ``obj``: validated when given, else its default."""
        if self.name in obj.data:
            value = self.read(obj, obj.key(self.name), obj.data[self.name])
        elif self.default_from is not None:
            value = self.default_from(obj)
        else:
            value = self.default
        for synonym in self.synonyms:
            if synonym in obj.data:
                other = self.read(obj, obj.key(synonym), obj.data[synonym])
                if self.name in obj.data and other != value:
                    obj.fail(obj.key(synonym), f'differs from {obj.key(self.name)} ("{value}"); keep one')
                value = other
        return value


@dataclass(frozen=True)
class Derived:
    """A field that no key sets: given by the caller (``Config.source``), or computed by
    ``compute(obj)`` once every key of its object was read."""

    doc: str
    compute: Callable[[_Object], Any] | None = None


@dataclass(frozen=True)
class Section:
    """The declarations of one JSON object of the file and of the dataclass that keeps it."""

    cls: type
    fields: tuple[tuple[str, Key], ...]  # (attribute, key), in field order
    inputs: tuple[Key, ...] = ()  # keys without a field, read before the fields
    derived: tuple[tuple[str, Derived], ...] = ()
    undeclared: tuple[str, ...] = ()  # fields with no declaration (a problem)
    ignored: frozenset[str] = frozenset()  # Orthanc keys accepted without effect here
    checks: tuple[Callable[[_Object], None], ...] = ()  # rules run after every key
    noun: str = "this object"  # in "required in <noun>"

    @classmethod
    def declare(
        cls,
        target: type,
        *,
        inputs: tuple[Key, ...] = (),
        ignored: frozenset[str] = frozenset(),
        checks: tuple[Callable[[_Object], None], ...] = (),
        noun: str = "this object",
    ) -> Section:
        """Collect the declarations of the dataclass ``target`` (without checking them)."""
        fields, derived, undeclared = [], [], []
        for f in dataclasses.fields(target):
            if _KEY in f.metadata:
                fields.append((f.name, f.metadata[_KEY]))
            elif _DERIVED in f.metadata:
                derived.append((f.name, f.metadata[_DERIVED]))
            else:
                undeclared.append(f.name)
        return cls(target, tuple(fields), tuple(inputs), tuple(derived), tuple(undeclared),
                   frozenset(ignored), tuple(checks), noun)

    @property
    def keys(self) -> tuple[Key, ...]:
        """Every key, in the order they are read."""
        return self.inputs + tuple(key for _, key in self.fields)

    @property
    def names(self) -> list[str]:
        """The JSON names accepted with an effect (synonyms included)."""
        return [name for key in self.keys for name in (key.name, *key.synonyms)]

    def key(self, name: str) -> Key:
        """The key declared with this JSON name."""
        return next(key for key in self.keys if key.name == name)

    def problems(self) -> list[str]:
        """What is wrong with these declarations (empty when nothing is)."""
        where = self.cls.__qualname__
        found = [f"{where}.{attr}: a field without a declaration (_key, _section or _derived)"
                 for attr in self.undeclared]
        seen: set[str] = set()
        for key in self.keys:
            if not key.doc.strip():
                found.append(f"{where}: {key.name}: no doc")
            if key.default is _NO_DEFAULT and key.default_from is None and not key.required:
                found.append(f"{where}: {key.name}: no default, and not required")
            if key.default_from is not None and not key.default_doc.strip():
                found.append(f"{where}: {key.name}: a computed default without default_doc")
            for name in (key.name, *key.synonyms):
                if name in seen:
                    found.append(f"{where}: {name}: declared twice")
                seen.add(name)
        found += [f"{where}.{attr}: no doc" for attr, derived in self.derived if not derived.doc.strip()]
        found += [f"{where}: {name}: both declared and ignored" for name in sorted(seen & self.ignored)]
        return found


_SECTIONS: dict[type, Section] = {}


def _declared(
    *,
    inputs: tuple[Key, ...] = (),
    ignored: frozenset[str] = frozenset(),
    checks: tuple[Callable[[_Object], None], ...] = (),
    noun: str = "this object",
) -> Callable[[type], type]:
    """Class decorator, above ``@dataclass``: register the class's declarations for the
    parser; a problem in them (Section.problems) stops the import."""

    def declare(cls: type) -> type:
        section = Section.declare(cls, inputs=inputs, ignored=ignored, checks=checks, noun=noun)
        problems = section.problems()
        if problems:
            raise TypeError("config declarations: " + "; ".join(problems))
        _SECTIONS[cls] = section
        return cls

    return declare


def declarations() -> list[Section]:
    """Every declared object of the file (Config's sections first, Config last)."""
    return list(_SECTIONS.values())


def declaration(cls: type) -> Section:
    """The declarations of one of the config's dataclasses (``declaration(DicomWebConfig)``)."""
    return _SECTIONS[cls]


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The keys (dotted JSON names) whose values differ between two configurations
    (or two sections of the same class): what a reload changes."""
    changed = []
    for attr, key in _SECTIONS[type(old)].fields:
        a, b = getattr(old, attr), getattr(new, attr)
        if a == b:
            continue
        if type(a) in _SECTIONS and type(a) is type(b):
            changed += changed_keys(a, b, f"{prefix}{key.name}.")
        else:
            changed.append(prefix + key.name)
    return changed


def _key(name: str, default: Any, read: Reader, doc: str, *, hash: bool | None = None, **options: Any) -> Any:
    """Declare the field's key: JSON ``name``, ``default`` (or _REQUIRED, or _COMPUTED with a
    ``default_from``), validator ``read``, ``doc``; ``options`` are the other Key fields."""
    if default is _REQUIRED:
        key = Key(name, read, doc, required=True, **options)
    elif default is _COMPUTED:
        key = Key(name, read, doc, **options)
    else:
        key = Key(name, read, doc, default=default, **options)
    metadata = {_KEY: key}
    if key.default is _NO_DEFAULT:
        return field(hash=hash, metadata=metadata)
    if type(default).__hash__ is None:
        # An immutable mapping (MappingProxyType) that dataclasses cannot tell from a
        # mutable one: the same object is shared, as a factory.
        return field(default_factory=lambda: default, hash=hash, metadata=metadata)
    return field(default=default, hash=hash, metadata=metadata)


def _section(name: str, cls: type, doc: str, *, ours: bool = False) -> Any:
    """Declare a field that keeps the nested object ``name``, read by ``cls``'s declarations
    (absent: as if empty)."""

    @_reader("object (keys below)")
    def read(obj: _Object, where: str, raw: Any) -> Any:
        if not isinstance(raw, dict):
            obj.fail(where, f"expected object, got {_show(raw)}")
        return _read_object(cls, raw, where + ".", obj)

    key = Key(name, read, doc, default_from=lambda obj: read(obj, obj.key(name), {}),
              default_doc="{}", ours=ours, section=cls)
    return field(default_factory=cls, metadata={_KEY: key})


def _derived(doc: str, default: Any = MISSING, *, compute: Callable[[_Object], Any] | None = None) -> Any:
    """Declare a field that no key sets (see :class:`Derived`)."""
    return field(default=default, metadata={_DERIVED: Derived(doc, compute)})


def _fixed_key(name: str, supported: bool, why: str, doc: str) -> Key:
    """An Orthanc key honoured only with the value this daemon implements; any other value
    is an error (``why``) rather than being silently ignored."""
    return Key(name, _fixed(supported, why), doc, default=supported)


class _Object:
    """One JSON object of the file being read: its data, its dotted prefix, the values of its
    keys read so far (``got``, by JSON name) and the object it is in (``parent``)."""

    def __init__(
        self,
        section: Section,
        data: Mapping[str, Any],
        prefix: str,
        fail: Callable[[str, str], NoReturn],
        ignored_out: list[str],
        base: Path,
        parent: _Object | None = None,
    ):
        self.section = section
        self.data = data
        self.prefix = prefix
        self.fail = fail
        self.ignored_out = ignored_out
        self.base = base  # relative paths are relative to this folder
        self.parent = parent
        # Ignored keys that ask for something this daemon does not do (the
        # daemon warns about these; the others are logged at DEBUG).
        self.unperformed_out: list[str] = parent.unperformed_out if parent else []
        self.got: dict[str, Any] = {}
        # Unknown keys first, so a typo is reported before any consequence of it.
        accepted = section.names
        known = accepted + sorted(section.ignored)
        for key in data:
            if key in section.ignored:
                ignored_out.append(self.key(key))
                if self.key(key) in _NOT_PERFORMED and data[key]:
                    self.unperformed_out.append(self.key(key))
            elif key not in accepted:
                fail(self.key(key), "unknown key" + _suggest(key, known))

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"


def _read(obj: _Object, given: Mapping[str, Any]) -> Any:
    """Read every key of ``obj`` as declared and build its dataclass; ``given`` sets derived
    fields (``Config.source``, ``Modality.name``)."""
    section = obj.section
    for key in section.keys:
        if key.required and key.name not in obj.data:
            obj.fail(obj.key(key.name), f"required in {section.noun}")
    for key in section.keys:
        value = obj.got[key.name] = key.value(obj)
        if key.check is not None:
            key.check(obj, value)
        if not key.effect and key.name in obj.data:
            # Validated (a wrong value is still an error) but without effect yet: say so at
            # start-up rather than pretend.
            obj.ignored_out.append(obj.key(key.name))
    for check in section.checks:
        check(obj)
    values = {attr: obj.got[key.name] for attr, key in section.fields}
    for attr, derived in section.derived:
        if attr in given:
            values[attr] = given[attr]
        elif derived.compute is not None:
            values[attr] = derived.compute(obj)
    return section.cls(**values)


def _read_object(cls: type, data: Mapping[str, Any], prefix: str, parent: _Object, **given: Any) -> Any:
    """Read a nested object (a section, a modality) with ``cls``'s declarations."""
    obj = _Object(_SECTIONS[cls], data, prefix, parent.fail, parent.ignored_out, parent.base, parent)
    return _read(obj, given)


# --------------------------------------------------------------------------- validators


def _show(value: Any) -> str:
    """A value as it would appear in JSON, shortened for a one-line message."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _suggest(key: str, known: list[str]) -> str:
    lowered = {k.lower(): k for k in known}
    if key.lower() in lowered:
        return f'; did you mean "{lowered[key.lower()]}"?'
    match = difflib.get_close_matches(key.lower(), list(lowered), n=1, cutoff=0.75)
    return f'; did you mean "{lowered[match[0]]}"?' if match else ""


def _aet_problem(value: str) -> str | None:
    """Why ``value`` is not a usable AE title (PS3.5 6.2, VR AE), or None."""
    if not value:
        return "must not be empty"
    if len(value) > 16:
        return f"at most 16 characters, got {len(value)} ({_show(value)})"
    if value.strip(" ") == "":
        return "must not be all spaces (PS3.5 6.2)"
    if "\\" in value:
        return f"must not contain a backslash, got {_show(value)}"
    if any(not (" " <= c <= "~") for c in value):
        return f"only printable ASCII characters are allowed (PS3.5 6.2), got {_show(value)}"
    return None


def _absolute(base: Path, value: str) -> Path:
    # Orthanc interprets relative paths against the folder of the configuration file
    # (OrthancConfiguration::InterpretStringParameterAsPath). normpath, not resolve():
    # no disk access, symlinks left alone.
    return Path(os.path.normpath(base / value))


def _is_within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


@_reader("true or false")
def _boolean(obj: _Object, where: str, raw: Any) -> bool:
    if not isinstance(raw, bool):
        obj.fail(where, f"expected boolean, got {_show(raw)}")
    return raw


def _integer(lo: int = 0, hi: int | None = None) -> Reader:
    expected = f"{lo}-{hi}" if hi is not None else f"integer >= {lo}"

    @_reader(f"integer {expected}" if hi is not None else expected)
    def read(obj: _Object, where: str, raw: Any) -> int:
        # bool is an int in Python, but "DicomPort": true is not a number in JSON.
        if not isinstance(raw, int) or isinstance(raw, bool):
            obj.fail(where, f"expected integer, got {_show(raw)}")
        if raw < lo or (hi is not None and raw > hi):
            obj.fail(where, f"expected {expected}, got {_show(raw)}")
        return raw

    return read


_PORT_RANGE = "0-65535"


@_reader(f"integer {_PORT_RANGE}")
def _port(obj: _Object, where: str, raw: Any) -> int:
    # Orthanc reads DicomPort/HttpPort as JSON integers only ("4242" is refused there
    # too). 0 is accepted for OS-assigned ports in tests.
    if not isinstance(raw, int) or isinstance(raw, bool) or not 0 <= raw <= 65535:
        obj.fail(where, f"expected {_PORT_RANGE}, got {_show(raw)}")
    return raw


def _string(*, empty_ok: bool = True) -> Reader:
    @_reader("string" if empty_ok else "non-empty string")
    def read(obj: _Object, where: str, raw: Any) -> str:
        if not isinstance(raw, str):
            obj.fail(where, f"expected string, got {_show(raw)}")
        if not empty_ok and not raw.strip():
            obj.fail(where, "must not be empty")
        return raw

    return read


_text = _string()
_non_empty_text = _string(empty_ok=False)


def _choice(*choices: str) -> Reader:
    @_reader("one of " + ", ".join(choices))
    def read(obj: _Object, where: str, raw: Any) -> str:
        value = _text(obj, where, raw)
        if value not in choices:
            obj.fail(
                where,
                f"expected one of {', '.join(choices)}, got {_show(value)}" + _suggest(value, list(choices)),
            )
        return value

    return read


@_reader("AE title: 1-16 printable ASCII characters, no backslash")
def _aet(obj: _Object, where: str, raw: Any) -> str:
    value = _text(obj, where, raw)
    problem = _aet_problem(value)
    if problem:
        obj.fail(where, problem)
    # PS3.5 6.2: leading and trailing spaces of an AE title are not significant.
    return value.strip(" ")


@_reader("folder (relative: to the config file's folder)")
def _path(obj: _Object, where: str, raw: Any) -> Path:
    value = _non_empty_text(obj, where, raw)
    if "\0" in value:
        obj.fail(where, "must not contain a NUL character")
    return _absolute(obj.base, value)


@_reader("file path, or empty (relative: to the config file's folder)")
def _optional_path(obj: _Object, where: str, raw: Any) -> Path | None:
    # Orthanc's empty string means "not set" (HttpsCACertificates: "").
    if raw is None or raw == "":
        return None
    return _path(obj, where, raw)


def _fixed(supported: bool, why: str) -> Reader:
    @_reader(f"{_show(supported)} only")
    def read(obj: _Object, where: str, raw: Any) -> bool:
        if _boolean(obj, where, raw) != supported:
            obj.fail(where, why)
        return raw

    return read


def _optional(reader: Reader) -> Reader:
    @_reader(f"{reader.accepts}, or null")
    def read(obj: _Object, where: str, raw: Any) -> Any:
        return None if raw is None else reader(obj, where, raw)

    return read


def _check_url_path(obj: _Object, where: str, value: str) -> None:
    if re.search(r"[\s?#%\\]", value) or "//" in value or "/../" in value or "/./" in value:
        obj.fail(where, f"expected a plain URL path like \"/dicom-web/\", got {_show(value)}")


@_reader('URL path, like "/dicom-web/"')
def _url_root(obj: _Object, where: str, raw: Any) -> str:
    value = _text(obj, where, raw)
    # The DICOMweb plugin's GetRootPath: make sure the root starts and ends with "/".
    if not value.startswith("/"):
        value = "/" + value
    if not value.endswith("/"):
        value += "/"
    _check_url_path(obj, where, value)
    return value


@_reader('URL path below "/", like "/wado"')
def _wado_root(obj: _Object, where: str, raw: Any) -> str:
    value = _text(obj, where, raw)
    # The plugin's GetWadoRoot: leading "/" added, trailing "/" removed.
    if not value.startswith("/"):
        value = "/" + value
    value = value.rstrip("/")
    if not value:
        obj.fail(where, 'expected a URL path below "/", like "/wado"')
    _check_url_path(obj, where, value)
    return value


@_reader('URL or path with {StudyInstanceUID}, like "/ohif/viewer?StudyInstanceUIDs={StudyInstanceUID}"')
def _viewer_url(obj: _Object, where: str, raw: Any) -> str:
    value = _text(obj, where, raw).strip()
    if ("{StudyInstanceUID}" not in value or re.search(r"[\s<>\"']", value)
            or not re.match(r"^(https?://|/)", value)):
        obj.fail(where, "expected a URL (http://, https://) or a path (/...) containing "
                        f"{{StudyInstanceUID}}, got {_show(value)}")
    return value


@_reader("host or host:port, or empty")
def _url_host(obj: _Object, where: str, raw: Any) -> str:
    value = _text(obj, where, raw).strip()
    if re.search(r"[\s/?#@]", value):
        obj.fail(where, f"expected host or host:port (no scheme, no path), got {_show(value)}")
    return value


@_reader('true, false, "Always" or "Never"')
def _overwrite(obj: _Object, where: str, raw: Any) -> bool:
    # Orthanc <= 1.12.11: boolean. Later: "Never" | "Always" | "IfChanged" (booleans kept).
    if isinstance(raw, bool):
        return raw
    if raw == "Never":
        return False
    if raw == "Always":
        return True
    if raw == "IfChanged":
        obj.fail(where, '"IfChanged" is not supported yet')
    obj.fail(where, f'expected boolean, "Never" or "Always", got {_show(raw)}')


@_reader("list of IP addresses")
def _ip_addresses(obj: _Object, where: str, raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list):
        obj.fail(where, f"expected a list of IP addresses, got {_show(raw)}")
    for i, address in enumerate(raw):
        try:
            ipaddress.ip_address(address)
        except ValueError:
            obj.fail(f"{where}[{i}]", f"expected an IP address, got {_show(address)}")
    return tuple(raw)


# Orthanc's StringToEncoding (case-insensitive there, so here too); canonical spelling kept.
_ENCODINGS = (
    "Ascii Utf8 Latin1 Latin2 Latin3 Latin4 Latin5 Cyrillic Windows1251 Arabic Greek Hebrew "
    "Thai Japanese Chinese JapaneseKanji Korean SimplifiedChinese"
).split()


@_reader("Orthanc encoding name (Latin1, Utf8...; any case)")
def _encoding(obj: _Object, where: str, raw: Any) -> str:
    value = _text(obj, where, raw)
    canonical = {e.lower(): e for e in _ENCODINGS}.get(value.lower())
    if canonical is None:
        obj.fail(
            where,
            f"expected one of {', '.join(_ENCODINGS)}, got {_show(value)}" + _suggest(value, _ENCODINGS),
        )
    return canonical


_PLACEHOLDER = re.compile(r"@[A-Z][A-Z0-9_]*@")


@_reader("object: user name to password (or a hash from pacs-appliance hash-password)")
def _users(obj: _Object, where: str, raw: Any) -> Mapping[str, str]:
    if not isinstance(raw, dict):
        obj.fail(where, f"expected object, got {_show(raw)}")
    result: dict[str, str] = {}
    for username, password in raw.items():
        key = f"{where}.{username}"
        if not username or ":" in username:
            # RFC 7617: the user-id of HTTP Basic authentication cannot contain a colon.
            obj.fail(key, 'a user name must be non-empty and must not contain ":" (HTTP Basic, RFC 7617)')
        if not isinstance(password, str):
            obj.fail(key, f"expected string (the password), got {_show(password)}")
        if not password:
            obj.fail(key, "empty password")
        if _PLACEHOLDER.fullmatch(password):
            # etc/config.json's "@EMR_PASSWORD@", which the package's postinst replaces: a
            # copy of the template used as is would let anyone who read it log in.
            obj.fail(key, f"{password} is the template's placeholder, not a password: put a "
                          "password here (or what `pacs-appliance hash-password` prints)")
        if (problem := password_entry_problem(password)) is not None:
            obj.fail(key, f"unusable password hash: {problem}")
        result[username] = password
    return MappingProxyType(result)


# Orthanc's StringToModalityManufacturer (case-sensitive). The last six are obsolete names
# Orthanc still accepts (mapped to Generic / GenericNoWildcardInDates with a warning).
_MANUFACTURERS = (
    "Generic GenericNoWildcardInDates GenericNoUniversalWildcard Vitrea GE SiemensSyngoCT "
    "AgfaImpax SyngoVia EFilm2 MedInria ClearCanvas Dcm4Chee"
).split()


@_reader("Orthanc manufacturer name (Generic, GE...)")
def _manufacturer(obj: _Object, where: str, raw: Any) -> str:
    value = _text(obj, where, raw)
    if value not in _MANUFACTURERS:
        obj.fail(where, f"unknown manufacturer {_show(value)}" + _suggest(value, _MANUFACTURERS))
    return value


@_reader("integer 1-65535, or a string of one")
def _modality_port(obj: _Object, where: str, raw: Any) -> int:
    # Orthanc's ReadPortNumber accepts an integer or a string holding one for modalities
    # (configs generated with "${PORT}" templates rely on it). Orthanc stops at 65534.
    port = raw
    if isinstance(raw, str) and re.fullmatch(r"\s*\d{1,5}\s*", raw):
        port = int(raw)
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        obj.fail(where, f"expected 1-65535, got {_show(raw)}")
    return port


@_reader("host name or IP address")
def _host(obj: _Object, where: str, raw: Any) -> str:
    value = _text(obj, where, raw)
    if not value.strip() or re.search(r"\s", value):
        obj.fail(where, f"expected a host name or IP address, got {_show(value)}")
    return value


@_reader('AE title, or "" for none')
def _optional_aet(obj: _Object, where: str, raw: Any) -> str | None:
    # Orthanc serialises an unset LocalAet as "" (REST API exports), so "" means unset.
    value = _text(obj, where, raw)
    return _aet(obj, where, value) if value else None


_TIME_OF_DAY = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])\Z")


@_reader('time of day "HH:MM"')
def _time_of_day(obj: _Object, where: str, raw: Any) -> tuple[int, int]:
    text = _text(obj, where, raw)
    m = _TIME_OF_DAY.match(text)
    if not m:
        obj.fail(where, f'expected a time of day "HH:MM" (00:00-23:59), got {_show(text)}')
    return (int(m.group(1)), int(m.group(2)))


@_reader("number of hours 0-8784 (0: none)")
def _hours(obj: _Object, where: str, raw: Any) -> float:
    if not isinstance(raw, (int, float)) or isinstance(raw, bool):
        obj.fail(where, f"expected a number of hours, got {_show(raw)}")
    if not 0 <= raw <= 24 * 366:
        obj.fail(where, f"expected 0 (no scheduled backups) to 8784, got {_show(raw)}")
    return raw


_MODALITY_NAME = re.compile(r"[A-Za-z0-9_-]+\Z")  # Orthanc's CheckAlphanumeric


def _named(entry: Callable[[_Object, str, str, Any], Any]) -> Callable[[_Object, str, Any], tuple]:
    """A reader of an object of named entries (DicomModalities, DicomWeb.Servers):
    ``entry(obj, where, name, value)`` reads each one."""
    def read(obj: _Object, where: str, raw: Any) -> tuple:
        if not isinstance(raw, dict):
            obj.fail(where, f"expected object, got {_show(raw)}")
        return tuple(entry(obj, f"{where}.{name}", name, value) for name, value in raw.items())
    return read


@_reader("object: modality name to [AET, host, port], [AET, host, port, manufacturer] or an object")
def _modalities(obj: _Object, where: str, raw: Any) -> tuple[Modality, ...]:
    return _named(_modality)(obj, where, raw)


def _modality(obj: _Object, where: str, name: str, value: Any) -> Modality:
    if not _MODALITY_NAME.match(name):
        obj.fail(where, 'a modality name may only contain letters, digits, "-" and "_" (as in Orthanc)')
    if isinstance(value, list):
        if len(value) not in (3, 4):
            obj.fail(
                where,
                "expected [AET, host, port] or [AET, host, port, manufacturer], "
                f"got a list of {len(value)} item(s)",
            )
        declared = _SECTIONS[Modality]

        def item(i: int, key: str) -> Any:
            return declared.key(key).read(obj, f"{where}[{i}]", value[i])

        return Modality(
            name=name,
            aet=item(0, "AET"),
            host=item(1, "Host"),
            port=item(2, "Port"),
            manufacturer=item(3, "Manufacturer") if len(value) == 4 else declared.key("Manufacturer").default,
        )
    if not isinstance(value, dict):
        obj.fail(
            where,
            "expected [AET, host, port], [AET, host, port, manufacturer] or an object "
            f"with AET, Host and Port, got {_show(value)}",
        )
    return _read_object(Modality, value, where + ".", obj, name=name)


# --------------------------------------------------------------------------- outbound (issue 13)


_SERVER_NAME = _MODALITY_NAME  # the DICOMweb plugin checks server names the same way


@_reader("object: server name to [URL], [URL, user, password] or an object with Url")
def _dicomweb_servers(obj: _Object, where: str, raw: Any) -> tuple[DicomWebServer, ...]:
    return _named(_dicomweb_server)(obj, where, raw)


def _dicomweb_server(obj: _Object, where: str, name: str, value: Any) -> DicomWebServer:
    # The plugin's DicomWebServers::Configure: a list [url] or [url, user, password],
    # or an object with Url and optional Username, Password, HttpHeaders...
    if not _SERVER_NAME.match(name):
        obj.fail(where, 'a server name may only contain letters, digits, "-" and "_"')
    if isinstance(value, list):
        if len(value) not in (1, 3):
            obj.fail(where, f"expected [URL] or [URL, user, password], got a list of {len(value)} item(s)")
        declared = _SECTIONS[DicomWebServer]
        items = {k: declared.key(k).read(obj, f"{where}[{i}]", value[i])
                 for i, k in enumerate(("Url", "Username", "Password")[:len(value)])}
        return DicomWebServer(name=name, url=items["Url"], username=items.get("Username"),
                              password=items.get("Password"))
    if not isinstance(value, dict):
        obj.fail(where, f"expected [URL], [URL, user, password] or an object with Url, got {_show(value)}")
    return _read_object(DicomWebServer, value, where + ".", obj, name=name)


@_reader("http:// or https:// URL")
def _http_url(obj: _Object, where: str, raw: Any) -> str:
    value = _non_empty_text(obj, where, raw)
    if not re.match(r"https?://[^/\s]+", value):
        obj.fail(where, f"expected an http:// or https:// URL, got {_show(value)}")
    return value if value.endswith("/") else value + "/"


@_reader("object: header name to value")
def _http_headers(obj: _Object, where: str, raw: Any) -> Mapping[str, str]:
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        obj.fail(where, f"expected an object of strings, got {_show(raw)}")
    return MappingProxyType(dict(raw))


@_reader("list of non-empty strings")
def _names(obj: _Object, where: str, raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list):
        obj.fail(where, f"expected a list, got {_show(raw)}")
    return tuple(_non_empty_text(obj, f"{where}[{i}]", v).strip() for i, v in enumerate(raw))


@_reader("list of AE titles")
def _aets(obj: _Object, where: str, raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list):
        obj.fail(where, f"expected a list, got {_show(raw)}")
    return tuple(_aet(obj, f"{where}[{i}]", v) for i, v in enumerate(raw))


@_reader("list of rule objects (Destination, Trigger, Modalities, CallingAets)")
def _rules(obj: _Object, where: str, raw: Any) -> tuple[ForwardingRule, ...]:
    if not isinstance(raw, list):
        obj.fail(where, f"expected a list, got {_show(raw)}")
    rules = []
    for i, value in enumerate(raw):
        if not isinstance(value, dict):
            obj.fail(f"{where}[{i}]", f"expected an object, got {_show(value)}")
        rules.append(_read_object(ForwardingRule, value, f"{where}[{i}].", obj))
    return tuple(rules)


def _known_destination(obj: _Object, destination: str) -> None:
    top = obj.parent.parent
    names = [m.name for m in top.got["DicomModalities"]] + [s.name for s in top.got["DicomWeb"].servers]
    if destination not in names:
        obj.fail(obj.key("Destination"), f'unknown destination "{destination}" (neither a '
                 "DicomModalities nor a DicomWeb.Servers name)" + _suggest(destination, names))


# --------------------------------------------------------------------------- ignored keys

# Orthanc core keys accepted without effect here (the caller logs them once). Each is either
# about a feature this appliance does not have (Lua, jobs, peers, WebDAV, Orthanc Explorer,
# outgoing HTTP, transcoding, custom dictionaries), or about a mechanism it replaces
# (HTTP threads and keep-alive: aiohttp; SyncStorageArea: we always fsync; TLS: nginx).
_IGNORED_CORE = frozenset(
    """
    LuaScripts LuaHeartBeatPeriod Plugins ConcurrentJobs JobsEngineThreadsCount
    MaximumStorageCacheSize StorageLoaderThreadsCount StorageMemoryCapacity
    OrthancExplorerEnabled HttpDescribeErrors HttpCompressionEnabled
    WebDavEnabled WebDavDeleteAllowed WebDavUploadAllowed
    AcceptedTransferSyntaxes DeflatedTransferSyntaxAccepted JpegTransferSyntaxAccepted
    Jpeg2000TransferSyntaxAccepted JpegLosslessTransferSyntaxAccepted JpipTransferSyntaxAccepted
    Mpeg2TransferSyntaxAccepted RleTransferSyntaxAccepted Mpeg4TransferSyntaxAccepted
    H265TransferSyntaxAccepted DicomGetScuProposesAcceptedTransferSyntaxes
    AcceptedSopClasses RejectedSopClasses
    SslCertificate SslMinimumProtocolVersion SslCiphersAccepted SslVerifyPeers
    SslTrustedClientCertificates
    DicomTlsCertificate DicomTlsPrivateKey DicomTlsTrustedCertificates
    DicomTlsRemoteCertificateRequired DicomTlsMinimumProtocolVersion DicomTlsCiphersAccepted
    DicomEchoChecksFind DicomDefaultRetrieveMethod DicomScuPreferredTransferSyntax
    OrthancPeers OrthancPeersInDatabase
    HttpProxy HttpVerbose HttpTimeout Pkcs11
    UserMetadata UserContentType StoreMD5ForAttachments LogExportedResources
    KeepAlive KeepAliveTimeout TcpNoDelay HttpThreadsCount
    DicomAssociationCloseDelay QueryRetrieveSize
    LoadPrivateDictionary Locale Dictionary ExternalDictionaries DefaultPrivateCreator
    SynchronousCMove JobsHistorySize SaveJobs LimitJobs MediaArchiveSize
    StorageAccessOnFind MetricsEnabled ExecuteLuaEnabled RestApiWriteToFileSystemEnabled
    StorageCommitmentReportsSize TranscodeDicomProtocol BuiltinDecoderTranscoderOrder
    IngestTranscoding IngestTranscodingOfUncompressed IngestTranscodingOfCompressed
    DicomLossyTranscodingQuality SyncStorageArea MallocArenaMax
    DeidentifyLogs DeidentifyLogsDicomVersion DatabaseServerIdentifier CheckRevisions
    SynchronousZipStream ZipLoaderThreads ZipUseUtf8 ExtraMainDicomTags Warnings
    """.split()
)

# Ignored keys (dotted) that, given a value (not empty, not false), ask for a function this
# daemon does not perform: a clinic relying on one must hear it at start-up (one WARNING
# line). The other ignored keys are tuning of mechanisms replaced here, or plugin
# loading whose useful plugins (DICOMweb, worklists) are built in: DEBUG.
_NOT_PERFORMED = frozenset(
    """
    LuaScripts ExecuteLuaEnabled OrthancPeers OrthancPeersInDatabase
    WebDavEnabled WebDavUploadAllowed WebDavDeleteAllowed
    AcceptedSopClasses RejectedSopClasses IngestTranscoding
    DicomTlsCertificate DicomTlsPrivateKey DicomTlsTrustedCertificates
    UserMetadata UserContentType RestApiWriteToFileSystemEnabled
    DicomWeb.ServersInDatabase
    ServeFolders WebViewer StoneWebViewer OrthancExplorer2 Ohif VolView Wsi
    PostgreSQL MySQL Odbc Transfers Authorization Python PythonScript
    Housekeeper DelayedDeletion MultitenantDicom Tcia Indexer
    AzureBlobStorage AwsS3Storage GoogleCloudStorage AdvancedStorage
    """.split()
)

# Sections read by Orthanc plugins that this daemon does not emulate (viewers, database
# and storage back-ends, Python/Lua hosts...). Accepted so a clinic's file loads unchanged.
_IGNORED_PLUGIN_SECTIONS = frozenset(
    """
    ServeFolders WebViewer StoneWebViewer OrthancExplorer2 Ohif VolView Wsi
    PostgreSQL MySQL Odbc Gdcm Transfers Authorization Python PythonScript PythonVerbose
    Housekeeper DelayedDeletion MultitenantDicom Tcia Indexer ConnectivityChecks
    AzureBlobStorage AwsS3Storage GoogleCloudStorage AdvancedStorage Education
    """.split()
)

# DICOMweb client features this daemon does not have (servers kept in the database) and
# plugin performance knobs.
_DICOMWEB_IGNORED = frozenset(
    """
    ServersInDatabase StowMaxInstances StowMaxSize EnableMetadataCache
    EnablePerformanceLogs MetadataWorkerThreadsCount WadoRsLoaderThreadsCount
    StudiesMetadataExtrapolatedTags SeriesMetadataExtrapolatedTags
    """.split()
)

# A debug log switch of the plugin.
_WORKLISTS_IGNORED = frozenset({"LogMatchedWorklistIds"})
_MODALITY_IGNORED = frozenset({"RetrieveMethod"})  # Orthanc as Q/R SCU only

_METADATA_MODES = ("Full", "MainDicomTags", "Extrapolate", "Experimental")


# --------------------------------------------------------------------------- rules between keys


def _not_dicom_port(obj: _Object, http_port: int) -> None:
    dicom_port = obj.got["DicomPort"]
    if dicom_port and dicom_port == http_port:
        obj.fail(obj.key("HttpPort"), f"same port as DicomPort ({dicom_port})")


def _users_if_authenticating(obj: _Object, users: Mapping[str, str]) -> None:
    if obj.got["AuthenticationEnabled"] and not users:
        # Orthanc then creates the well-known user orthanc/orthanc (remote access) or serves
        # nobody (localhost); this appliance never runs with a default password.
        obj.fail(
            obj.key("RegisteredUsers"),
            "authentication is enabled but no user is declared "
            "(Orthanc would create the default user orthanc/orthanc; this daemon refuses to)",
        )


def _temporary_holds_no_data(obj: _Object) -> None:
    temporary = obj.got["TemporaryDirectory"]
    worklists, backups = obj.got["Worklists"], obj.got["Backups"]
    for other_key, other in (
        ("StorageDirectory", obj.got["StorageDirectory"]),
        ("IndexDirectory", obj.got["IndexDirectory"]),
        ("Worklists.Database", worklists.database),
        ("Backups.Directory", backups.directory),
        ("Backups.StorageMirror", backups.storage_mirror),
    ):
        # Temporary files are swept at start-up: that sweep must never reach kept data.
        if other is not None and _is_within(other, temporary):
            obj.fail("TemporaryDirectory", f'must not contain {other_key} ("{other}"): it is emptied at start-up')


def _folder_if_enabled(obj: _Object, folder: Path | None) -> None:
    if obj.got["Enable"] and folder is None:
        obj.fail(obj.key("Database"), 'required when Worklists.Enable is true ("Directory" also accepted)')


def _not_below_warn(obj: _Object, critical: int) -> None:
    warn = obj.got["WarnPercent"]
    if critical < warn:
        obj.fail(obj.key("CriticalPercent"), f"must not be below WarnPercent ({warn}), got {critical}")


def _at_needs_interval(obj: _Object, at: tuple[int, int] | None) -> None:
    if at is not None and obj.got["IntervalHours"] == 0:
        obj.fail(obj.key("At"), "has no effect with IntervalHours 0 (no scheduled backups)")


def _mirror_apart(obj: _Object, mirror: Path | None) -> None:
    if mirror is None:
        return
    storage = obj.parent.got["StorageDirectory"]
    if _is_within(mirror, storage) or _is_within(storage, mirror):
        obj.fail(obj.key("StorageMirror"), f'must be outside StorageDirectory ("{storage}")')
    directory = obj.got["Directory"]
    if _is_within(mirror, directory) or _is_within(directory, mirror):
        obj.fail(obj.key("StorageMirror"), f'must be outside Backups.Directory ("{directory}")')


# --------------------------------------------------------------------------- the keys


@_declared(
    inputs=(
        Key("AllowNAction", _boolean, "Accept N-ACTION from this modality (storage commitment).",
            default=True),
        Key("AllowEventReport", _boolean, "Accept N-EVENT-REPORT from this modality (storage commitment).",
            default=True),
        _fixed_key("UseDicomTls", False, "true is not supported yet",
                   "Talk to this modality over DICOM TLS: only false is supported."),
    ),
    ignored=_MODALITY_IGNORED,
    noun="a modality object",
)
@dataclass(frozen=True)
class Modality:
    """One entry of ``DicomModalities`` (Orthanc's ``RemoteModalityParameters``).

    Orthanc accepts two forms, both supported: ``[AET, host, port]`` /
    ``[AET, host, port, manufacturer]``, and an object with ``AET``, ``Host``, ``Port`` and
    optional ``Manufacturer``, ``Allow*``, ``LocalAet``, ``Timeout``... Every ``Allow*``
    defaults to true, as in Orthanc.
    """

    name: str = _derived("The entry's JSON key (Orthanc's \"symbolic name\").")
    aet: str = _key("AET", _REQUIRED, _aet, "The modality's AE title.")
    host: str = _key("Host", _REQUIRED, _host, "The modality's host name or IP address.")
    port: int = _key("Port", _REQUIRED, _modality_port, "The modality's DICOM port.")
    manufacturer: str = _key("Manufacturer", "Generic", _manufacturer,
                             "Orthanc's manufacturer quirks for this modality.")
    allow_echo: bool = _key("AllowEcho", True, _boolean, "Accept C-ECHO from this modality.")
    allow_store: bool = _key("AllowStore", True, _boolean, "Accept C-STORE from this modality.")
    allow_find: bool = _key("AllowFind", True, _boolean, "Accept C-FIND from this modality.")
    allow_find_worklist: bool = _key("AllowFindWorklist", True, _boolean,
                                     "Accept worklist C-FIND from this modality.")
    allow_get: bool = _key("AllowGet", True, _boolean, "Accept C-GET from this modality.")
    allow_move: bool = _key("AllowMove", True, _boolean, "Accept C-MOVE from this modality.")
    # Orthanc: "AllowStorageCommitment" is an alias for "AllowNAction" & "AllowEventReport";
    # storage commitment needs both, so this is their conjunction.
    allow_storage_commitment: bool = _key(
        "AllowStorageCommitment", True, _boolean,
        "Accept storage commitment (N-ACTION and N-EVENT-REPORT) from this modality; when "
        "given, it overrides AllowNAction and AllowEventReport (Orthanc).",
        default_from=lambda obj: obj.got["AllowNAction"] and obj.got["AllowEventReport"],
        default_doc="AllowNAction and AllowEventReport",
    )
    allow_transcoding: bool = _key("AllowTranscoding", True, _boolean,
                                   "Allow transcoding what is sent to this modality.")
    # Used when this daemon is the SCU towards the modality (C-MOVE destination).
    local_aet: str | None = _key("LocalAet", None, _optional_aet,
                                 "Our calling AE title towards this modality; unset (or \"\"): DicomAet.")
    timeout: int = _key("Timeout", 0, _integer(),
                        "Seconds, when we are the SCU towards this modality; 0: DicomScuTimeout (Orthanc).")


@_declared(
    ignored=frozenset({"HasDelete", "ChunkedTransfers", "HasWadoRsUniversalTransferSyntax",
                       "CertificateFile", "CertificateKeyFile", "CertificateKeyPassword",
                       "Pkcs11", "Timeout"}),
    noun="a DICOMweb server object",
)
@dataclass(frozen=True)
class DicomWebServer:
    """One entry of ``DicomWeb.Servers`` (the DICOMweb plugin's client side): a STOW-RS
    destination. Forms as the plugin reads them: ``[URL]``, ``[URL, user, password]`` or
    an object with ``Url``, ``Username``, ``Password``, ``HttpHeaders``."""

    name: str = _derived("The entry's JSON key.")
    url: str = _key("Url", _REQUIRED, _http_url, "The server's DICOMweb root URL (STOW-RS goes to <Url>studies).")
    username: str | None = _key("Username", None, _optional(_text), "HTTP Basic user name, if any.")
    password: str | None = _key("Password", None, _optional(_text), "HTTP Basic password, if any.")
    http_headers: Mapping[str, str] = _key("HttpHeaders", MappingProxyType({}), _http_headers,
                                           "Extra HTTP headers sent with each request.", hash=False)


@_declared(noun="a forwarding rule")
@dataclass(frozen=True)
class ForwardingRule:
    """One rule of ``Forwarding.Rules``: send what it matches to ``Destination``."""

    destination: str = _key("Destination", _REQUIRED, _non_empty_text,
                            "A DicomModalities or DicomWeb.Servers name.", check=_known_destination, ours=True)
    trigger: str = _key("Trigger", "Instance", _choice("Instance", "StableStudy"),
                        "Instance: each instance once stored; StableStudy: the study once it had no "
                        "new instance for StableAge seconds (persisted across restarts).", ours=True)
    modalities: tuple[str, ...] = _key("Modalities", (), _names,
                                       "Only series of these modalities (empty: any).", ours=True)
    calling_aets: tuple[str, ...] = _key("CallingAets", (), _aets,
                                         "Only instances received from these AE titles (empty: any).", ours=True)


@_declared()
@dataclass(frozen=True)
class ForwardingConfig:
    """The ``Forwarding`` section (ours): automatic forwarding through the durable queue."""

    rules: tuple[ForwardingRule, ...] = _key("Rules", (), _rules, "The forwarding rules.",
                                             ours=True, section=ForwardingRule)
    max_retry_seconds: int = _key("MaxRetrySeconds", 300, _integer(lo=1),
                                  "Longest pause between two attempts to send (capped exponential backoff).",
                                  ours=True)


@_declared(ignored=_DICOMWEB_IGNORED)
@dataclass(frozen=True)
class DicomWebConfig:
    """The ``DicomWeb`` section (options of Orthanc's DICOMweb plugin that matter here)."""

    enable: bool = _key("Enable", True, _boolean, "Serve DICOMweb (QIDO-RS, WADO-RS, STOW-RS) under Root.")
    root: str = _key("Root", "/dicom-web/", _url_root,
                     "URL path of DICOMweb; made to start and end with \"/\" (as the plugin does).")
    enable_wado: bool = _key("EnableWado", True, _boolean, "Serve WADO-URI under WadoRoot.")
    wado_root: str = _key("WadoRoot", "/wado", _wado_root,
                          "URL path of WADO-URI; made to start with \"/\" and not end with one (as the plugin does).")
    public_root: str = _key(
        "PublicRoot", "/dicom-web/", _url_root,
        "The root advertised in the URLs we generate (RetrieveURL...) when a proxy maps another path.",
        default_from=lambda obj: obj.got["Root"], default_doc="Root (plugin)",
    )
    host: str = _key(
        "Host", "", _url_host,
        "Host (and port) put in generated URLs; empty: from the Forwarded / X-Forwarded-Host / "
        "Host request headers, as the plugin does since 1.13.",
    )
    ssl: bool = _key("Ssl", False, _boolean,
                     "Scheme https in generated URLs when no X-Forwarded-Proto or Forwarded says otherwise.")
    qido_case_sensitive: bool = _key("QidoCaseSensitive", True, _boolean,
                                     "QIDO-RS matches text attributes case-sensitively.")
    studies_metadata: str = _key("StudiesMetadata", "Full", _choice(*_METADATA_MODES),
                                 "How the plugin builds study metadata.", effect=False)
    series_metadata: str = _key("SeriesMetadata", "Full", _choice(*_METADATA_MODES),
                                "How the plugin builds series metadata.", effect=False)
    servers: tuple[DicomWebServer, ...] = _key(
        "Servers", (), _dicomweb_servers,
        "The remote DICOMweb servers, by name: destinations of STOW-RS (send, forwarding).",
        section=DicomWebServer, each=True,
    )
    maximum_stow_body_size: int = _key(
        "MaximumStowBodySize", 4096, _integer(),
        "MB: the largest STOW-RS request body accepted (413 past it); 0: no limit. Orthanc has "
        "no such limit; its StowMaxSize is for its STOW-RS client and stays ignored.",
        ours=True,
    )


@_declared(
    inputs=(
        _fixed_key("SaveInOrthancDatabase", False,
                   "true is not supported: worklists are served from the Database/Directory folder",
                   "The new plugin's worklists kept in Orthanc's database: only false is supported."),
    ),
    ignored=_WORKLISTS_IGNORED,
)
@dataclass(frozen=True)
class WorklistsConfig:
    """The ``Worklists`` section (Orthanc's Worklists plugin, legacy sample and new one)."""

    enable: bool = _key("Enable", False, _boolean, "Serve the worklists (C-FIND MWL) of Database (Orthanc default: off).")
    # The worklist plugins take "Database" as given (relative to Orthanc's working
    # directory); like every other path here it is relative to the config file instead.
    database: Path | None = _key(
        "Database", None, _path,
        "The folder of .wl worklist files; Directory is the new plugin's name for it (give "
        "one, or both the same). Required when Enable is true.",
        synonyms=("Directory",), check=_folder_if_enabled,
    )
    filter_issuer_aet: bool = _key(
        "FilterIssuerAet", False, _boolean,
        "Answer only the worklists whose ScheduledStationAETitle is the calling AE title.",
    )
    limit_answers: int = _key("LimitAnswers", 0, _integer(), "Most worklists in one answer; 0: no limit.")
    # The new Worklists plugin (Nov 2025) defaults this to true, but the plugin that Debian
    # ships with Orthanc (the legacy sample plugin) never deletes anything: a clinic moving
    # from it must not see its .wl files disappear, so we keep false unless asked.
    delete_worklists_on_stable_study: bool = _key(
        "DeleteWorklistsOnStableStudy", False, _boolean,
        "Delete a worklist once a study that matches it is stable (StableAge). The new plugin "
        "defaults to true; false here, as the legacy plugin that Debian ships never deletes.",
    )
    housekeeping_interval: int = _key("HousekeepingInterval", 60, _integer(lo=1),
                                      "Seconds between two housekeeping passes (plugin default).")
    set_study_instance_uid_if_missing: bool = _key(
        "SetStudyInstanceUidIfMissing", True, _boolean,
        "Give a worklist authored through the REST API or the CLI a StudyInstanceUID when it has none.",
    )
    # The new Orthanc plugin only honours this when worklists are kept in its database and
    # refuses to start with a folder; here it applies to the folder.
    delete_worklists_delay: int = _key(
        "DeleteWorklistsDelay", 0, _integer(),
        "Hours after which a worklist file is deleted (its modification time); 0: never.",
    )


@_declared()
@dataclass(frozen=True)
class MppsConfig:
    """The ``Mpps`` section (our own: Orthanc has no Modality Performed Procedure Step)."""

    enable: bool = _key("Enable", True, _boolean, "Accept MPPS N-CREATE / N-SET from the scanners.", ours=True)
    archive_finished_worklists: bool = _key(
        "ArchiveFinishedWorklists", True, _boolean,
        "Once a procedure step linked to a worklist is COMPLETED or DISCONTINUED, stop answering "
        "that worklist and move its .wl file into the \"archive\" sub-folder.",
        ours=True,
    )


@_declared()
@dataclass(frozen=True)
class DiskMonitorConfig:
    """The ``DiskMonitor`` section (ours): free space of the storage, index, temporary
    and backup filesystems, watched with psutil."""

    interval_seconds: int = _key("IntervalSeconds", 30, _integer(1, 3600),
                                 "Seconds between two measurements.", ours=True)
    # psutil's percent: used over what non-root users can use.
    warn_percent: int = _key("WarnPercent", 80, _integer(1, 100),
                             "A filesystem this full (percent) is logged once at WARNING on the way up.", ours=True)
    critical_percent: int = _key(
        "CriticalPercent", 90, _integer(1, 100),
        "A filesystem this full (percent) is logged once at CRITICAL on the way up; not below WarnPercent.",
        check=_not_below_warn, ours=True,
    )
    minimum_free_mb: int = _key(
        "MinimumFreeMB", 500, _integer(),
        "MB: below this much free space on the storage or index filesystem new objects are refused "
        "(C-STORE 0xA700, HTTP 507) until space returns; leaves room for the index to commit and "
        "for the system itself.",
        ours=True,
    )


@_declared()
@dataclass(frozen=True)
class BackupsConfig:
    """The ``Backups`` section (ours): online backups of the index, and a storage mirror."""

    directory: Path | None = _key(  # None only on a Config not built by parse_config
        "Directory", None, _path,
        "Where backups go; created when missing only at its default place: a Directory given "
        "must exist (a backup disk that is not mounted must not be silently replaced by a folder "
        "on the system disk).",
        default_from=lambda obj: obj.parent.got["IndexDirectory"] / "backups",
        default_doc="IndexDirectory/backups", ours=True,
    )
    directory_is_default: bool = _derived("True when Directory was not given.", True,
                                          compute=lambda obj: "Directory" not in obj.data)
    interval_hours: float = _key("IntervalHours", 24, _hours,
                                 "Hours between two scheduled backups; 0: no scheduled backups.", ours=True)
    at: tuple[int, int] | None = _key("At", None, _optional(_time_of_day),
                                      "The local time of day the schedule is anchored to.",
                                      check=_at_needs_interval, ours=True)
    keep: int = _key("Keep", 7, _integer(1, 1000), "Complete backups kept; older ones are deleted.", ours=True)
    storage_mirror: Path | None = _key(
        "StorageMirror", None, _optional(_path),
        "A folder (an external disk) that receives a copy of every stored file not yet there, so "
        "that a backup plus the mirror can restore everything; outside StorageDirectory and Directory.",
        check=_mirror_apart, ours=True,
    )


_FIXED_KEYS = (
    _fixed_key("DicomServerEnabled", True, "false is not supported: receiving DICOM is this daemon's purpose",
               "Run the DICOM server: only true is supported."),
    _fixed_key("HttpServerEnabled", True, "false is not supported: DICOMweb needs the HTTP server",
               "Run the HTTP server: only true is supported."),
    _fixed_key("SslEnabled", False, "true is not supported: terminate HTTPS in the nginx proxy",
               "HTTPS in the server itself: only false is supported (nginx terminates HTTPS)."),
    _fixed_key("DicomTlsEnabled", False, "true is not supported yet",
               "DICOM TLS: only false is supported for now."),
    _fixed_key("DicomModalitiesInDatabase", False,
               "true is not supported: modalities are read from DicomModalities in this file",
               "Modalities kept in Orthanc's database: only false is supported."),
    _fixed_key("StoreDicom", True, "false (index-only mode) is not supported",
               "Keep the DICOM files (false: Orthanc's index-only mode): only true is supported."),
    _fixed_key("ReadOnly", False, "true is not supported", "Orthanc's read-only mode: only false is supported."),
)


_View = TypeVar("_View")


@_declared(
    inputs=_FIXED_KEYS,
    ignored=_IGNORED_CORE | _IGNORED_PLUGIN_SECTIONS,
    checks=(_temporary_holds_no_data,),
)
@dataclass(frozen=True, kw_only=True)
class Config:
    """The whole validated configuration. Paths are absolute.

    Built by :func:`load_config` / :func:`parse_config` / :func:`default_config`; keyword-only
    so that field order never matters to callers.
    """

    source: str | None = _derived("The file or folder loaded; None for the embedded defaults.")
    name: str = _key("Name", "pacs-appliance", _non_empty_text, "The server's name (/system, the status).")
    storage_directory: Path = _key(
        "StorageDirectory", _COMPUTED, _path, "Where the received DICOM files are kept.",
        default_from=lambda obj: _absolute(obj.base, "OrthancStorage"),
        default_doc='"OrthancStorage" next to the config file (Orthanc)',
    )
    # Orthanc's defaults: the index defaults to the storage folder (they may be the same
    # folder, as in Debian's orthanc.json).
    index_directory: Path = _key(
        "IndexDirectory", _COMPUTED, _path, "Where the index (SQLite) is kept; may be the storage folder.",
        default_from=lambda obj: obj.got["StorageDirectory"], default_doc="StorageDirectory",
    )
    # Orthanc's default is the system temporary folder. Ours must be on the same filesystem
    # as the storage so that a received file is renamed into place atomically (the store
    # contract); a sibling folder is not (a storage folder is often a mount point), a
    # sub-folder always is. The leading dot lets a walk of the storage tree skip it.
    temporary_directory: Path = _key(
        "TemporaryDirectory", _COMPUTED, _path,
        "Where files being received are written before they are renamed into the storage; emptied "
        "at start-up. Orthanc's default is the system's temporary folder: ours is inside the "
        "storage, on its filesystem, so that the rename is atomic.",
        default_from=lambda obj: _absolute(obj.base, str(obj.got["StorageDirectory"] / ".tmp")),
        default_doc="StorageDirectory/.tmp",
    )
    dicom_aet: str = _key("DicomAet", "ORTHANC", _aet,
                          "Our AE title; leading and trailing spaces are not significant (PS3.5 6.2).")
    dicom_port: int = _key("DicomPort", 4242, _port, "The DICOM port; 0 lets the OS choose (tests).")
    dicom_check_called_aet: bool = _key("DicomCheckCalledAet", False, _boolean,
                                        "Refuse associations whose called AE title is not DicomAet.")
    dicom_modalities: tuple[Modality, ...] = _key(
        "DicomModalities", (), _modalities,
        "The known modalities, by symbolic name (letters, digits, \"-\" and \"_\").",
        section=Modality, each=True,
    )
    dicom_always_allow_echo: bool = _key("DicomAlwaysAllowEcho", True, _boolean,
                                         "Accept C-ECHO from any AE, not only from DicomModalities.")
    dicom_always_allow_store: bool = _key("DicomAlwaysAllowStore", True, _boolean,
                                          "Accept C-STORE from any AE, not only from DicomModalities.")
    dicom_always_allow_find: bool = _key("DicomAlwaysAllowFind", False, _boolean,
                                         "Accept C-FIND from any AE, not only from DicomModalities.")
    # DELIBERATELY differs from Orthanc >= 1.10 (false). Orthanc's worklist guide has the
    # clinic declare no DicomModalities; with Orthanc's default, every scanner would then get
    # an empty/refused worklist query. C-FIND MWL discloses only the day's schedule, the
    # scanners' whole purpose here, so we allow it unless the file says otherwise.
    dicom_always_allow_find_worklist: bool = _key(
        "DicomAlwaysAllowFindWorklist", True, _boolean,
        "Accept worklist C-FIND from any AE. Differs from Orthanc >= 1.10 (false): with the "
        "clinic setup (no DicomModalities) scanners would get no worklist.",
    )
    dicom_always_allow_get: bool = _key("DicomAlwaysAllowGet", False, _boolean,
                                        "Accept C-GET from any AE, not only from DicomModalities.")
    dicom_always_allow_move: bool = _key("DicomAlwaysAllowMove", False, _boolean,
                                         "Accept C-MOVE from any AE, not only from DicomModalities.")
    # Orthanc has no such key: there, only DicomModalities entries may ask for storage
    # commitment. Off by default: a report goes back to the AE's DicomModalities entry anyway.
    dicom_always_allow_storage_commitment: bool = _key(
        "DicomAlwaysAllowStorageCommitment", False, _boolean,
        "Accept storage commitment requests (N-ACTION) from any AE declared in DicomModalities, "
        "whatever its AllowStorageCommitment.", ours=True)
    dicom_check_modality_host: bool = _key(
        "DicomCheckModalityHost", False, _boolean,
        "A DicomModalities entry applies only to connections from its Host.",
    )
    # Orthanc: number of threads running DIMSE operations (default 4), extra associations
    # wait. Here: maximum concurrent associations; extra ones get a transient A-ASSOCIATE-RJ
    # (the SCU retries), so the default is higher than Orthanc's to avoid refusing a busy
    # morning of scanners.
    dicom_threads_count: int = _key(
        "DicomThreadsCount", 10, _integer(lo=1),
        "Most concurrent associations; more are refused (transient A-ASSOCIATE-RJ, the SCU "
        "retries). Orthanc: DIMSE threads, default 4, extra associations wait.",
    )
    overwrite_instances: bool = _key(
        "OverwriteInstances", False, _overwrite,
        "An instance received again replaces the stored one (true, \"Always\") or not (false, "
        "\"Never\"); \"IfChanged\" is not supported yet.",
    )
    maximum_pdu_length: int = _key("MaximumPduLength", 16384, _integer(4096, 131072),
                                   "Largest PDU we receive, in bytes (Orthanc's range).")
    dicom_scp_timeout: int = _key("DicomScpTimeout", 30, _integer(),
                                  "Seconds without DIMSE message before an association is closed; 0: no timeout.")
    http_port: int = _key("HttpPort", 8042, _port,
                          "The HTTP port; 0 lets the OS choose (tests). Not DicomPort.", check=_not_dicom_port)
    remote_access_allowed: bool = _key(
        "RemoteAccessAllowed", False, _boolean,
        "HTTP on every interface; false: loopback only, and other peers are refused (403).",
    )
    authentication_enabled: bool = _key(
        "AuthenticationEnabled", _COMPUTED, _boolean, "HTTP Basic authentication against RegisteredUsers.",
        default_from=lambda obj: obj.got["RemoteAccessAllowed"],
        default_doc="RemoteAccessAllowed (Orthanc >= 1.5.8)",
    )
    registered_users: Mapping[str, str] = _key(
        "RegisteredUsers", MappingProxyType({}), _users,
        "The HTTP users. Required when authentication is enabled: no default user "
        "(Orthanc's orthanc/orthanc) is ever created.",
        check=_users_if_authenticating, hash=False,
    )
    storage_compression: bool = _key(
        "StorageCompression", False, _boolean,
        "Orthanc's compression of stored files. Accepted either way: an Orthanc archive's "
        "compressed files are decompressed once when adopted; new objects are stored uncompressed.")
    maximum_storage_size: int = _key("MaximumStorageSize", 0, _integer(),
                                     "MB the storage may hold; 0: unlimited.")
    maximum_patient_count: int = _key("MaximumPatientCount", 0, _integer(),
                                      "Patients the storage may hold; 0: unlimited.")
    maximum_storage_mode: str = _key(
        "MaximumStorageMode", "Recycle", _choice("Recycle", "Reject"),
        "Past a maximum: delete the oldest patients (Recycle) or refuse new objects (Reject; Orthanc >= 1.11.2).",
    )
    dicom_web: DicomWebConfig = _section("DicomWeb", DicomWebConfig, "Orthanc's DICOMweb plugin.")
    worklists: WorklistsConfig = _section("Worklists", WorklistsConfig, "Orthanc's Worklists plugin.")
    mpps: MppsConfig = _section("Mpps", MppsConfig, "Modality Performed Procedure Step.", ours=True)
    disk_monitor: DiskMonitorConfig = _section("DiskMonitor", DiskMonitorConfig,
                                               "Free space of the data filesystems.", ours=True)
    backups: BackupsConfig = _section("Backups", BackupsConfig, "Online backups and the storage mirror.", ours=True)
    forwarding: ForwardingConfig = _section("Forwarding", ForwardingConfig,
                                            "Forwarding rules and the send queue's retries.", ours=True)
    # Orthanc keys parsed for later modules (same meaning and default as Orthanc).
    stable_age: int = _key("StableAge", 60, _integer(),
                           "Seconds without a new instance before a study is stable.")
    strict_aet_comparison: bool = _key("StrictAetComparison", False, _boolean,
                                       "Compare AE titles case-sensitively (false: case-insensitively).")
    dicom_scu_timeout: int = _key("DicomScuTimeout", 10, _integer(),
                                  "Seconds, when we are the SCU (sending, storage commitment reports).")
    # Orthanc's HTTP client settings (HttpClient::ConfigureSsl), read here by the STOW-RS
    # client of the outbound queue: the same names, defaults and meaning.
    https_verify_peers: bool = _key(
        "HttpsVerifyPeers", True, _boolean,
        "Check the certificate (chain and host name) of the HTTPS servers we send to "
        "(DicomWeb.Servers). false accepts any certificate: a security risk, logged at start-up.")
    https_ca_certificates: Path | None = _key(
        "HttpsCACertificates", None, _optional_path,
        "PEM file of the CA certificates trusted for HTTPS servers we send to (relative: to the "
        "config file's folder), replacing the system's (as curl --cacert does in Orthanc); "
        "empty: the system's trusted certificates. Read at each connection.",
        default_doc='""')
    unknown_sop_class_accepted: bool = _key("UnknownSopClassAccepted", False, _boolean,
                                            "Accept C-STORE of SOP classes we do not know.")
    default_encoding: str = _key("DefaultEncoding", "Latin1", _encoding,
                                 "Character set of data sets without SpecificCharacterSet.", effect=False)
    limit_find_results: int = _key("LimitFindResults", 0, _integer(),
                                   "Most patient, study or series answers to a search; 0: no limit.")
    limit_find_instances: int = _key("LimitFindInstances", 0, _integer(),
                                     "Most instance answers to a search; 0: no limit.")
    case_sensitive_pn: bool = _key("CaseSensitivePN", False, _boolean, "Match person names case-sensitively.")
    http_request_timeout: int = _key("HttpRequestTimeout", 30, _integer(),
                                     "Seconds, server-side HTTP socket timeout.", effect=False)
    http_bind_addresses: tuple[str, ...] = _key(
        "HttpBindAddresses", (), _ip_addresses,
        "The addresses HTTP listens on; empty: decided by RemoteAccessAllowed.",
    )
    viewer_url_template: str | None = _key(
        "ViewerUrlTemplate", None, _optional(_viewer_url),
        "The web UI's \"open in viewer\" link for a study (e.g. OHIF behind the same nginx): "
        "a URL or path with {StudyInstanceUID}; null: no such link.", ours=True,
    )
    ignored: tuple[str, ...] = _derived(
        "Keys accepted without effect here, dotted (the daemon logs them).", (),
        compute=lambda obj: tuple(obj.ignored_out),
    )
    unperformed: tuple[str, ...] = _derived(
        "Of ``ignored``, the keys given a value that asks for a function not performed here "
        "(OrthancPeers, LuaScripts, WebDAV, plugin sections...).", (),
        compute=lambda obj: tuple(obj.unperformed_out),
    )
    embedded_defaults: bool = _derived("True for the embedded defaults (no file).", False)

    def view(self, cls: type[_View]) -> _View:
        """This configuration seen through ``cls``, a dataclass whose fields are named like
        Config's: the slice one component reads, built by the composition root."""
        return cls(**{f.name: getattr(self, f.name) for f in dataclasses.fields(cls)})



# --------------------------------------------------------------------------- comments


_COMMENT_TOKENS = re.compile(r'"(?:[^"\\\n]|\\.)*"|//[^\n]*|/\*.*?(?:\*/|\Z)', re.S)
_TRAILING_COMMA_TOKENS = re.compile(r'"(?:[^"\\\n]|\\.)*"|,(?=\s*[}\]])', re.S)
_NOT_NEWLINE = re.compile(r"[^\r\n]")


def _strip_comments(text: str) -> tuple[str, int | None]:
    """Blank out comments; return the text and the offset of an unterminated ``/*``."""
    unterminated: list[int] = []

    def blank(m: re.Match[str]) -> str:
        token = m.group()
        if token.startswith('"'):
            return token  # a string: "http://x" keeps its slashes
        if token.startswith("/*") and (len(token) < 4 or not token.endswith("*/")):
            unterminated.append(m.start())
        # Spaces instead of deletion: JSON error positions (line and column) stay right.
        return _NOT_NEWLINE.sub(" ", token)

    stripped = _COMMENT_TOKENS.sub(blank, text)
    return stripped, (unterminated[0] if unterminated else None)


def strip_json_comments(text: str) -> str:
    """Replace ``//`` and ``/* */`` comments by spaces, leaving strings untouched.

    Newlines (and every other character's column) are preserved, so a JSON parser's line
    and column numbers still point into the original text. An unterminated ``/*`` comment
    runs to the end of the text.
    """
    return _strip_comments(text)[0]


def _strip_trailing_commas(text: str) -> str:
    # Orthanc parses with jsoncpp's CharReaderBuilder defaults, which allow a trailing comma
    # before "}" or "]"; a file Orthanc loads must load here.
    return _TRAILING_COMMA_TOKENS.sub(lambda m: " " if m.group() == "," else m.group(), text)


# --------------------------------------------------------------------------- public API


def parse_config(
    data: dict,
    source: str,
    *,
    base_dir: Path | str | None = None,
    origins: Mapping[str, str] | None = None,
) -> Config:
    """Validate the decoded JSON ``data`` and build a :class:`Config`.

    ``source`` names the file in error messages and becomes ``Config.source``. Relative
    paths are taken relative to ``base_dir``, by default the folder of ``source`` (Orthanc's
    rule). ``origins`` maps top-level keys to the file that defined them when a folder of
    files was loaded, so that an error names the right file.

    Raises :class:`ConfigError` for an unknown key, a wrong type or an impossible value.
    """

    def fail(key: str, why: str) -> NoReturn:
        top = re.split(r"[.\[]", key, maxsplit=1)[0]
        path = origins.get(top, source) if origins else source
        raise ConfigError(path, key, why)

    if not isinstance(data, dict):
        fail(FILE_KEY, f"expected a JSON object at the top level, got {type(data).__name__}")
    base = Path(os.path.abspath(base_dir if base_dir is not None else os.path.dirname(source) or "."))
    top = _Object(_SECTIONS[Config], data, "", fail, [], base)
    return _read(top, {"source": source, "embedded_defaults": False})


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def _read_json_file(path: Path, shown: str) -> dict:
    """Read one config file; every problem becomes a ConfigError about ``shown``."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(shown, FILE_KEY, "no such file") from None
    except IsADirectoryError:
        raise ConfigError(shown, FILE_KEY, "is a folder") from None
    except OSError as e:
        raise ConfigError(shown, FILE_KEY, f"cannot read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8-sig")  # jsoncpp skips a UTF-8 BOM too
    except UnicodeDecodeError as e:
        raise ConfigError(shown, FILE_KEY, f"not UTF-8 text (byte {e.start})") from None

    text, unterminated = _strip_comments(text)
    if unterminated is not None:
        line = text.count("\n", 0, unterminated) + 1
        column = unterminated - (text.rfind("\n", 0, unterminated) + 1) + 1
        raise ConfigError(
            shown, FILE_KEY, f"unterminated /* comment starting at line {line}, column {column}"
        )
    text = _strip_trailing_commas(text)
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise ConfigError(
            shown, FILE_KEY, f"not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}"
        ) from None
    except _DuplicateKey as e:
        # jsoncpp keeps the last one silently; one of the two values would be lost here.
        raise ConfigError(shown, str(e), "defined twice in the same object") from None
    except (ValueError, RecursionError) as e:
        raise ConfigError(shown, FILE_KEY, f"not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(
            shown, FILE_KEY, f"expected a JSON object at the top level, got {type(data).__name__}"
        )
    return data


def load_config(path: str | os.PathLike) -> Config:
    """Read, decode and validate the configuration at ``path``.

    ``path`` is a JSON file with ``//`` and ``/* */`` comments allowed (and trailing commas,
    as Orthanc's jsoncpp allows), or, as with Orthanc (Debian starts it on ``/etc/orthanc/``),
    a folder whose ``*.json`` files are merged; a top-level key defined in two files is an
    error there as in Orthanc. Relative paths inside are relative to the file's folder (or to
    the folder itself).

    Raises :class:`ConfigError`; ``key`` is ``"(file)"`` when the file itself is the problem.
    """
    shown = os.fspath(path)
    target = Path(shown)
    if not target.is_dir():
        data = _read_json_file(target, shown)
        return parse_config(data, shown, base_dir=os.path.dirname(os.path.abspath(shown)))

    try:
        files = sorted(p for p in target.iterdir() if p.suffix.lower() == ".json" and not p.is_dir())
    except OSError as e:
        raise ConfigError(shown, FILE_KEY, f"cannot list the folder: {e.strerror or e}") from None
    if not files:
        raise ConfigError(shown, FILE_KEY, "no .json file in this folder")
    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for file in files:
        file_shown = os.path.join(shown, file.name)
        for key, value in _read_json_file(file, file_shown).items():
            if key in merged:
                raise ConfigError(file_shown, key, f"also defined in {origins[key]}")
            merged[key] = value
            origins[key] = file_shown
    return parse_config(merged, shown, base_dir=os.path.abspath(shown), origins=origins)


def default_config(base: Path | None = None) -> Config:
    """The embedded defaults used when there is no configuration file.

    Data lives under ``<base>/pacs-data`` (``base`` defaults to the current directory) in
    ``storage``, ``index``, ``tmp`` and ``worklists``; HTTP listens on localhost only, so
    authentication is off, as Orthanc does for a localhost-only server.
    """
    root = Path(os.path.abspath(base if base is not None else Path.cwd())) / "pacs-data"
    data = {
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "index"),
        "TemporaryDirectory": str(root / "tmp"),
        "RemoteAccessAllowed": False,
        "Worklists": {"Enable": True, "Directory": str(root / "worklists")},
    }
    config = parse_config(data, "(embedded defaults)", base_dir=root)
    return dataclasses.replace(config, source=None, embedded_defaults=True)


def _default_text(key: Key) -> str:
    if key.required:
        return "(required)"
    if key.default_from is not None:
        return key.default_doc
    value = key.default
    if isinstance(value, Mapping):
        value = dict(value)
    elif isinstance(value, tuple):
        value = list(value)
    return _show(value)


def reference() -> str:
    """Every key, drawn from the declarations, as a Markdown table (JSON name, dotted in
    sections; default; what is accepted; meaning), then the keys accepted without effect."""
    rows = ["| Key | Default | Accepts | Meaning |", "| --- | --- | --- | --- |"]
    ignored: list[str] = []

    def walk(cls: type, prefix: str) -> None:
        section = _SECTIONS[cls]
        for key in section.keys:
            name = f"`{prefix}{key.name}`" + "".join(f" (or `{s}`)" for s in key.synonyms)
            meaning = key.doc
            if key.ours:
                meaning += " Ours, not Orthanc's."
            if not key.effect:
                meaning += " Validated, no effect yet."
            rows.append(f"| {name} | {_default_text(key)} | {key.read.accepts} | {meaning} |")
            if key.section is not None:
                walk(key.section, f"{prefix}{key.name}.{'<name>.' if key.each else ''}")
        ignored.extend(prefix + name for name in sorted(section.ignored))

    walk(Config, "")
    return ("\n".join(rows) + "\n\nAccepted without effect (Orthanc options with no meaning here): "
            + ", ".join(f"`{name}`" for name in ignored) + ".\n")


if __name__ == "__main__":  # python -m appliance.config: the key reference
    print(reference(), end="")
