"""Matching of Modality Worklist queries against worklist items (PS3.4 K.6.1.2, C.2.2.2).

Pure: no I/O, no logging, no module state.

Datasets are flattened once into *attribute maps*, ``{tag: (VR, values, keys)}`` where
``values`` is a tuple of plain Python values (``str`` for every text VR, ``PersonName`` as its
full ``"Alphabetic=Ideographic=Phonetic"`` string) and, for a sequence, a tuple of attribute
maps, one per item; ``keys`` holds the values normalised for comparison (padding stripped,
names case-folded, dates and times in a fixed-width form). A worklist item is flattened when
its file is parsed, a query when it arrives; matching then compares prepared strings only, so
a C-FIND over thousands of items needs no pydicom decoding and little Python work. A compiled
:class:`Query` also lists its exact-value keys (:attr:`Query.lookups`) so that a snapshot can
pick candidate items from an index before testing them.

The matching types are the functions named after them:

* :func:`universal_match`        PS3.4 C.2.2.2.3 (and a lone ``*``, C.2.2.2.4)
* :func:`single_value_match`     PS3.4 C.2.2.2.1
* :func:`uid_list_match`         PS3.4 C.2.2.2.2
* :func:`wildcard_match`         PS3.4 C.2.2.2.4
* :func:`range_match`            PS3.4 C.2.2.2.5
* :func:`combined_date_time_match`  PS3.4 C.2.2.2.5, a DA and a TM key matched as one date-time
* :func:`sequence_match`         PS3.4 C.2.2.2.6

Where the standard leaves a choice, this follows what scanners expect from Orthanc and
DCMTK's ``wlmscpfs``: Patient's Name matches case-insensitively; an attribute that holds
several values (``ScheduledStationAETitle`` = ``AA32\\AA33``) matches when any value does;
a lone ``*`` is universal for every VR (scanners send it for dates too); an item without the
attribute never matches a non-universal key.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from pydicom import charset as dicom_charset
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

from appliance.lazyclasses import lazy_dataclass
from appliance.query.grammar import DT_BODY, PATTERNS, UTC_OFFSET

__all__ = [
    "NORMALISERS",
    "Attrs",
    "Query",
    "QueryError",
    "ReturnKey",
    "answer",
    "answer_charset",
    "attrs_from_dataset",
    "combined_date_time_match",
    "compile_query",
    "range_match",
    "restrict_to_station",
    "sequence_match",
    "single_value_match",
    "uid_list_match",
    "universal_match",
    "values_of",
    "wildcard_match",
]

Attr = tuple[str, tuple, tuple]
"""(VR, values, keys) of one attribute; for SQ the values are the items' attribute maps and
there are no keys."""
Attrs = Mapping[int, Attr]
Predicate = Callable[[Attrs], bool]

SPECIFIC_CHARACTER_SET = 0x00080005
SCHEDULED_PROCEDURE_STEP_SEQUENCE = 0x00400100
SCHEDULED_STATION_AE_TITLE = 0x00400001

# PS3.4 C.2.2.2.5: a date key and its time key are matched together as one date-time.
DATE_TIME_PAIRS = (
    (0x00400002, 0x00400003),  # Scheduled Procedure Step Start Date / Time
    (0x00080020, 0x00080030),  # Study Date / Time
)

# PS3.4 C.2.2.2.4: the VRs on which "*" and "?" are wildcards.
_WILDCARD_VRS = frozenset("AE CS LO LT PN SH ST UC UR UT".split())
# PS3.5 6.2: text VRs whose leading spaces are significant.
_LEADING_SPACES_KEPT = frozenset({"LT", "ST", "UT", "UC"})
_TEXT_VRS = frozenset("LO LT PN SH ST UC UT".split())  # those a character set applies to
_MAX_DEPTH = 8  # sequences nested deeper than this in a query are refused

# The grammars every matcher shares (appliance.query.grammar).
_DA = re.compile(PATTERNS["DA"] + r"\Z")
_TM = re.compile(PATTERNS["TM"] + r"\Z")
_DT = re.compile(f"({DT_BODY})({UTC_OFFSET})?\\Z")
_TM_LOW, _TM_HIGH = "000000.000000", "235959.999999"
_DT_LOW, _DT_HIGH = "00000101000000.000000", "99991231235959.999999"


class QueryError(ValueError):
    """A query identifier that cannot be matched (answered 0xA900, PS3.4 C.4.1.1.4)."""

    def __init__(self, tag: int, why: str) -> None:
        super().__init__(f"({tag >> 16:04X},{tag & 0xFFFF:04X}): {why}")
        self.tag = tag
        self.why = why


# --------------------------------------------------------------------------- flattening


def attrs_from_dataset(ds: Dataset) -> dict[int, Attr]:
    """Flatten ``ds`` into an attribute map (see the module docstring).

    Text is decoded with the dataset's Specific Character Set by pydicom; whatever pydicom
    raises for an undecodable element propagates (the caller decides what that means).
    Group lengths, File Meta (0002) and command (0000) elements are left out.
    """
    out: dict[int, Attr] = {}
    for elem in ds:  # iterating converts raw elements with the dataset's character set
        tag = int(elem.tag)
        if tag >> 16 in (0x0000, 0x0002, 0xFFFE) or tag & 0xFFFF == 0:
            continue
        if elem.VR == "SQ":
            out[tag] = ("SQ", tuple(attrs_from_dataset(item) for item in elem.value or ()), ())
        else:
            vr = str(elem.VR)
            values = _values(elem.value)
            out[tag] = (vr, values, comparison_keys(vr, values))
    return out


def comparison_keys(vr: str, values: tuple) -> tuple:
    """The values of an attribute normalised for matching (see the module docstring)."""
    if not values or isinstance(values[0], bytes):
        return ()
    norm = NORMALISERS.get(vr) or _normaliser(vr)
    return tuple(norm(v) for v in values)


def values_of(value: Any) -> tuple:
    """A pydicom element value as the ``values`` of an attribute map (see the module
    docstring): a tuple of plain values, empty for an empty value."""
    return _values(value)


def _values(value: Any) -> tuple:
    if value is None or value == "" or value == b"":
        return ()
    if isinstance(value, (list, tuple, MultiValue)):
        return tuple(_plain(v) for v in value)
    return (_plain(value),)


def _plain(v: Any) -> Any:
    if isinstance(v, PersonName):
        return str(v)
    original = getattr(v, "original_string", None)  # DS / IS keep their text
    if isinstance(original, str):
        return original
    if isinstance(v, str):
        return str(v)  # UID and other str subclasses become plain str
    return v


def _item_values(item: Attrs, tag: int) -> tuple:
    attr = item.get(tag)
    if attr is None or attr[0] == "SQ":
        return ()
    return attr[1]


def _item_keys(item: Attrs, tag: int) -> tuple:
    attr = item.get(tag)
    return () if attr is None else attr[2]


def _texts(attrs: Attrs) -> Iterator[str]:
    for vr, values, _ in attrs.values():
        if vr == "SQ":
            for sub in values:
                yield from _texts(sub)
        elif vr in _TEXT_VRS:
            yield from (v for v in values if isinstance(v, str))


# --------------------------------------------------------------------------- normalising


def _uid_key(value: Any) -> str:
    return str(value).strip(" \0")


def _normaliser(vr: str) -> Callable[[Any], str]:
    if vr == "UI":
        return _uid_key
    if vr == "PN":
        # Case-insensitive Patient's Name, as Orthanc (CaseSensitivePN false) and scanners do.
        return _pn_key
    if vr == "DA":
        return _date_key
    if vr == "TM":
        return _tm_key
    if vr == "DT":
        return _dt_key
    return _text_key_leading_kept if vr in _LEADING_SPACES_KEPT else _text_key


def _pn_key(value: Any) -> str:
    return str(value).strip(" ").casefold()


def _tm_key(value: Any) -> str:
    return _time_bound(str(value).strip(), upper=False) or str(value)


def _dt_key(value: Any) -> str:
    return _datetime_bound(str(value).strip(), upper=False) or str(value)


def _text_key(value: Any) -> str:
    return str(value).strip(" ")


def _text_key_leading_kept(value: Any) -> str:
    return str(value).rstrip(" ")


def _date_key(value: Any) -> str:
    # PS3.5 6.2 note: ACR-NEMA dates "YYYY.MM.DD" are still written by old tools.
    return str(value).strip().replace(".", "")


def _time_bound(text: str, *, upper: bool) -> str | None:
    """A TM value as a fixed-width comparable key; a partial time is padded to the start or
    the end of the period it names. None if ``text`` is not a TM value."""
    text = text.replace(":", "")  # ACR-NEMA "HH:MM:SS"
    if not _TM.match(text):
        return None
    template = _TM_HIGH if upper else _TM_LOW
    if len(text) == 6:
        text += "."
    return text + template[len(text):]


def _datetime_bound(text: str, *, upper: bool) -> str | None:
    m = _DT.match(text)
    if not m:
        return None
    body = m.group(1)  # the UTC offset is not compared: worklist times are local
    template = _DT_HIGH if upper else _DT_LOW
    if len(body) == 14:
        body += "."
    return body + template[len(body):]


# The normaliser of every text VR (the comparison key of one value), looked up once per
# attribute when items are read.
NORMALISERS = {vr: _normaliser(vr) for vr in (
    "AE AS CS DA DS DT IS LO LT PN SH ST TM UC UI UR UT".split())}


def _bound(tag: int, vr: str, text: str, *, upper: bool) -> str:
    if vr == "DA":
        key = _date_key(text)
        ok = bool(_DA.match(key))
    elif vr == "TM":
        key = _time_bound(text, upper=upper) or ""
        ok = bool(key)
    else:
        key = _datetime_bound(text, upper=upper) or ""
        ok = bool(key)
    if not ok:
        raise QueryError(tag, f"not a valid {vr} value: {text[:32]!r}")
    return key


def _split_range(tag: int, vr: str, text: str) -> tuple[str | None, str | None]:
    """``"a-b"``, ``"-b"`` or ``"a-"`` as (a or None, b or None), PS3.4 C.2.2.2.5."""
    text = text.strip()
    if vr == "DT" and text.count("-") > 1:
        # A UTC offset may also hold a "-": the range "-" is the one before a date.
        cut = next((i for i in range(len(text)) if text[i] == "-"
                    and re.match(r"\d{8}", text[i + 1:])), -1)
    else:
        cut = text.find("-")
    if cut < 0:
        raise QueryError(tag, f"not a {vr} range: {text[:32]!r}")
    low, high = text[:cut].strip(), text[cut + 1:].strip()
    if not low and not high:
        raise QueryError(tag, f"empty {vr} range")
    return low or None, high or None


def _is_range(vr: str, text: str) -> bool:
    if vr != "DT":
        return "-" in text
    # A DT single value may end with a negative UTC offset ("...-0500").
    return "-" in text and not re.fullmatch(r"[\d.]+-\d{4}", text.strip())


# --------------------------------------------------------------------------- matching types


def universal_match(vr: str, values: tuple) -> bool:
    """True if a key with these values matches everything.

    PS3.4 C.2.2.2.3: a zero-length value. PS3.4 C.2.2.2.4: a value of a single ``*`` is
    equivalent to universal matching; it is accepted for every VR because scanners send
    ``*`` for dates too (Orthanc's default manufacturer behaviour).
    """
    if not values:
        return True
    if vr == "SQ":
        return len(values) == 1 and not values[0]
    return all(isinstance(v, str) and v.strip(" ") in ("", "*") for v in values)


def single_value_match(tag: int, vr: str, value: Any) -> Predicate:
    """PS3.4 C.2.2.2.1: the item's value equals the key's.

    Padding spaces are not significant (PS3.5 6.2); Patient's Name compares
    case-insensitively; a partial TM value equals the same instant written in full.
    """
    want = _normaliser(vr)(value)

    def test(item: Attrs) -> bool:
        attr = item.get(tag)
        return attr is not None and want in attr[2]

    return test


def uid_list_match(tag: int, values: tuple) -> Predicate:
    """PS3.4 C.2.2.2.2: the item's UID is one of the key's backslash-separated UIDs."""
    wanted = frozenset(_uid_key(v) for v in values)

    def test(item: Attrs) -> bool:
        attr = item.get(tag)
        return attr is not None and not wanted.isdisjoint(attr[2])

    return test


def wildcard_match(tag: int, vr: str, pattern: str) -> Predicate:
    """PS3.4 C.2.2.2.4: ``*`` matches any run of characters (including none), ``?`` any
    single character; the rest matches itself. On decoded text, so ``?`` is one character
    even in a multi-byte character set."""
    text = _normaliser(vr)(pattern)  # the items' keys are normalised the same way
    match = re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c)
                               for c in text), re.DOTALL).fullmatch

    def test(item: Attrs) -> bool:
        attr = item.get(tag)
        if attr is not None:
            for key in attr[2]:
                if match(key):
                    return True
        return False

    return test


def range_match(tag: int, vr: str, text: str) -> Predicate:
    """PS3.4 C.2.2.2.5: ``a-b`` matches a <= value <= b, ``-b`` up to b, ``a-`` from a on
    (DA, TM, DT; inclusive; a partial time bound covers the whole period it names)."""
    low, high = _split_range(tag, vr, text)
    lo = _bound(tag, vr, low, upper=False) if low else None
    hi = _bound(tag, vr, high, upper=True) if high else None

    def test(item: Attrs) -> bool:
        for key in _item_keys(item, tag):
            if (lo is None or key >= lo) and (hi is None or key <= hi):
                return True
        return False

    return test


def combined_date_time_match(date_tag: int, time_tag: int, date_text: str,
                             time_text: str) -> Predicate:
    """PS3.4 C.2.2.2.5: a date key and its time key (Scheduled Procedure Step Start Date and
    Time) matched as one date-time range: ``20240105-20240107`` with ``0800-1800`` means
    from 5 January 08:00 to 7 January 18:00, not 08:00-18:00 on each day. A single value
    counts as a range of one. An item without a time covers its whole day."""
    d_low, d_high = (_split_range(date_tag, "DA", date_text) if _is_range("DA", date_text)
                     else (date_text, date_text))
    t_low, t_high = (_split_range(time_tag, "TM", time_text) if _is_range("TM", time_text)
                     else (time_text, time_text))
    lo = hi = None
    if d_low:
        lo = _bound(date_tag, "DA", d_low, upper=False) + (
            _bound(time_tag, "TM", t_low, upper=False) if t_low else _TM_LOW)
    if d_high:
        hi = _bound(date_tag, "DA", d_high, upper=True) + (
            _bound(time_tag, "TM", t_high, upper=True) if t_high else _TM_HIGH)

    def test(item: Attrs) -> bool:
        times = [t for t in _item_keys(item, time_tag) if len(t) == len(_TM_LOW)]
        for day in _item_keys(item, date_tag):
            # the item's moment, or its whole day when it has no time: does it meet the range?
            spans = [(day + t, day + t) for t in times] or [(day + _TM_LOW, day + _TM_HIGH)]
            for start, end in spans:
                if (hi is None or start <= hi) and (lo is None or end >= lo):
                    return True
        return False

    return test


def sequence_match(tag: int, sub: "Query") -> Predicate:
    """PS3.4 C.2.2.2.6: the item matches when at least one item of its sequence matches
    every key of the query's (single) sequence item."""

    def test(item: Attrs) -> bool:
        attr = item.get(tag)
        return attr is not None and attr[0] == "SQ" and any(sub.matches(i) for i in attr[1])

    return test


# --------------------------------------------------------------------------- queries


@lazy_dataclass(frozen=True)
class ReturnKey:
    """One key of a query, answered whether or not it constrains the match."""

    tag: int
    vr: str
    sub: "Query | None" = None  # SQ with a non-empty item: its keys; None = whole sequence


Lookup = tuple[tuple[int, ...], frozenset]
"""(attribute path, keys): a matching item has one of these keys at that path (the path is
the tag, or a sequence tag then the tag inside its items)."""


@lazy_dataclass(frozen=True)
class Query:
    """A compiled query: its return keys, the tests an item must pass, and the exact-value
    conditions among those tests (for an index to pre-select candidates)."""

    keys: tuple[ReturnKey, ...]
    tests: tuple[Predicate, ...]
    lookups: tuple[Lookup, ...] = ()

    def matches(self, item: Attrs) -> bool:
        """True if ``item`` passes every matching key."""
        for test in self.tests:
            if not test(item):
                return False
        return True


def compile_query(query: Attrs, *, _depth: int = 0) -> Query:
    """Compile a flattened C-FIND identifier into a :class:`Query`.

    Raises :class:`QueryError` for an identifier that cannot be matched: a sequence key
    with more than one item (PS3.4 C.2.2.2.6), a malformed date, time or range, sequences
    nested absurdly deep.
    """
    if _depth > _MAX_DEPTH:
        raise QueryError(SCHEDULED_PROCEDURE_STEP_SEQUENCE, "sequences nested too deep")
    keys: list[ReturnKey] = []
    tests: list[Predicate] = []
    lookups: list[Lookup] = []
    paired: set[int] = set()
    for date_tag, time_tag in DATE_TIME_PAIRS:
        date, time = query.get(date_tag), query.get(time_tag)
        if (date and time and date[0] == "DA" and time[0] == "TM"
                and len(date[1]) == 1 and len(time[1]) == 1
                and not universal_match("DA", date[1]) and not universal_match("TM", time[1])):
            date_text = str(date[1][0])
            tests.append(combined_date_time_match(date_tag, time_tag, date_text, str(time[1][0])))
            paired.update((date_tag, time_tag))
            if not _is_range("DA", date_text):  # one day: an exact key of the date
                lookups.append(((date_tag,), frozenset({_date_key(date_text)})))
    for tag in sorted(query):
        vr, values, _ = query[tag]
        if tag == SPECIFIC_CHARACTER_SET:
            continue  # describes the query; answered from the item (PS3.4 C.4.1.1.3.2)
        if vr == "SQ":
            if len(values) > 1:
                raise QueryError(tag, "a sequence key must hold exactly one item (PS3.4 C.2.2.2.6)")
            if not values or not values[0]:
                keys.append(ReturnKey(tag, "SQ"))  # universal: the whole sequence is returned
                continue
            sub = compile_query(values[0], _depth=_depth + 1)
            keys.append(ReturnKey(tag, "SQ", sub))
            if sub.tests:
                tests.append(sequence_match(tag, sub))
                lookups.extend(((tag, *path), wanted) for path, wanted in sub.lookups)
            continue
        keys.append(ReturnKey(tag, vr))
        if tag in paired or universal_match(vr, values):
            continue
        test, exact = _value_test(tag, vr, values)
        tests.append(test)
        if exact is not None:
            lookups.append(((tag,), exact))
    return Query(tuple(keys), tuple(tests), tuple(lookups))


def _value_test(tag: int, vr: str, values: tuple) -> tuple[Predicate, frozenset | None]:
    """The test of one key, and the keys an item must hold if it is an exact match."""
    if vr == "UI":
        return uid_list_match(tag, values), frozenset(_uid_key(v) for v in values)
    alternatives = [_single_test(tag, vr, v) for v in values
                    if not (isinstance(v, str) and v.strip(" ") in ("", "*"))]
    tests = [test for test, _ in alternatives]
    exact = [key for _, key in alternatives]
    wanted = frozenset(exact) if None not in exact else None
    if len(tests) == 1:
        return tests[0], wanted
    # Several values in a key: an item matching any of them matches (as a UID list does).
    return (lambda item: any(test(item) for test in tests)), wanted


def _single_test(tag: int, vr: str, value: Any) -> tuple[Predicate, str | None]:
    if isinstance(value, bytes):
        raise QueryError(tag, f"matching on a {vr} value is not supported")
    text = str(value)
    if vr in ("DA", "TM", "DT"):
        if _is_range(vr, text):
            return range_match(tag, vr, text), None
        _bound(tag, vr, text, upper=False)  # validates the syntax
    elif vr in _WILDCARD_VRS and ("*" in text or "?" in text):
        return wildcard_match(tag, vr, text), None
    return single_value_match(tag, vr, text), _normaliser(vr)(text)


def restrict_to_station(query: Attrs, calling_aet: str) -> dict[int, Attr]:
    """Orthanc's ``Worklists.FilterIssuerAet``: unless the query already asks for a
    Scheduled Station AE Title, ask for the calling AE's (adding the Scheduled Procedure
    Step Sequence key when absent)."""
    out = dict(query)
    sps = out.get(SCHEDULED_PROCEDURE_STEP_SEQUENCE)
    if sps is None or sps[0] != "SQ" or not sps[1]:
        item: dict[int, Attr] = {}
    elif len(sps[1]) > 1:
        raise QueryError(SCHEDULED_PROCEDURE_STEP_SEQUENCE,
                         "a sequence key must hold exactly one item (PS3.4 C.2.2.2.6)")
    else:
        item = dict(sps[1][0])
    aet = item.get(SCHEDULED_STATION_AE_TITLE)
    if aet is None or universal_match("AE", aet[1]):
        item[SCHEDULED_STATION_AE_TITLE] = ("AE", (calling_aet,), comparison_keys("AE", (calling_aet,)))
    out[SCHEDULED_PROCEDURE_STEP_SEQUENCE] = ("SQ", (item,), ())
    return out


# --------------------------------------------------------------------------- answers


def answer_charset(item: Attrs) -> str | None:
    """The Specific Character Set to answer ``item`` in, never losing a character.

    The item's own single character set when every text value of the item encodes in it
    (always true for what was decoded from it, unless a byte was invalid); UTF-8
    (``ISO_IR 192``) for ISO 2022 code extensions and anything else. An item without a
    character set that holds non-ASCII text is read as Latin-1 (pydicom's and Orthanc's
    default) and answered as ``ISO_IR 100``. None: the default repertoire suffices.
    """
    terms = [str(t).strip() for t in _item_values(item, SPECIFIC_CHARACTER_SET)]
    terms = [t for t in terms if t] or [""]
    texts = list(_texts(item))
    if terms == [""]:
        if all(t.isascii() for t in texts):
            return None
        terms = ["ISO_IR 100"]
    if len(terms) > 1 or terms[0].startswith("ISO 2022"):
        return "ISO_IR 192"
    codec = dicom_charset.python_encoding.get(terms[0])
    if codec is None:
        return "ISO_IR 192"
    try:
        for text in texts:
            text.encode(codec)
    except (UnicodeEncodeError, LookupError):
        return "ISO_IR 192"
    return terms[0]


def answer(query: Query, item: Attrs, charset: str | None) -> Dataset:
    """The C-FIND response identifier for a matching ``item``: every key of the query, with
    the item's value or empty when the item lacks it; in a sequence key with an item, only
    the sequence items that match it, each holding only the keys asked for; plus the
    Specific Character Set ``charset`` (see :func:`answer_charset`)."""
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    _fill(ds, query.keys, item)
    return ds


def _fill(ds: Dataset, keys: tuple[ReturnKey, ...], item: Attrs) -> None:
    for key in keys:
        have = item.get(key.tag)
        if key.vr == "SQ":
            if have is None or have[0] != "SQ":
                ds.add(DataElement(key.tag, "SQ", []))
            elif key.sub is None:
                ds.add(DataElement(key.tag, "SQ", [_dataset(i) for i in have[1]]))
            else:
                sub = key.sub
                ds.add(DataElement(key.tag, "SQ", [_restricted(i, sub) for i in have[1]
                                                   if sub.matches(i)]))
        elif have is None or have[0] == "SQ":
            ds.add(DataElement(key.tag, key.vr, None))
        else:
            ds.add(DataElement(key.tag, have[0], _element_value(have[1])))


def _restricted(item: Attrs, sub: Query) -> Dataset:
    ds = Dataset()
    _fill(ds, sub.keys, item)
    return ds


def _dataset(attrs: Attrs) -> Dataset:
    ds = Dataset()
    for tag in sorted(attrs):
        vr, values, _ = attrs[tag]
        if vr == "SQ":
            ds.add(DataElement(tag, "SQ", [_dataset(i) for i in values]))
        elif tag != SPECIFIC_CHARACTER_SET:  # only the top level carries one
            ds.add(DataElement(tag, vr, _element_value(values)))
    return ds


def _element_value(values: tuple) -> Any:
    if not values:
        return None
    return values[0] if len(values) == 1 else list(values)
