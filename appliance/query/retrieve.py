"""What a retrieve (C-MOVE, C-GET) asks for: the instances under some UIDs at a level.

PS3.4 C.4.2.2.1 and C.4.3.2.1: a retrieve identifier holds the Query/Retrieve
Level and the unique keys of that level and of the levels above it, each a
single value or (for the UIDs of the retrieve level and below, C.2.2.2.2) a
list; no other key matches (relational retrieve is not offered, so only the
hierarchical form). Pure: no I/O, nothing of the appliance but the model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from appliance.query.model import Level

__all__ = ["Scope", "UNIQUE_KEYS", "scope_of"]

# The unique key of each level (PS3.4 C.6.1.1 Patient Root, C.6.2.1 Study Root).
UNIQUE_KEYS = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.IMAGE: "SOPInstanceUID",
}


@dataclass(frozen=True)
class Scope:
    """Every stored instance under these values; an empty tuple does not restrict."""

    level: Level
    patient_ids: tuple[str, ...] = ()
    study_uids: tuple[str, ...] = ()
    series_uids: tuple[str, ...] = ()
    sop_uids: tuple[str, ...] = ()


def scope_of(level: str, keys: Mapping[str, Sequence[str]], *, patient_root: bool) -> Scope:
    """The scope of a retrieve identifier given as its level and the values of its
    unique keys (keyword -> values, empty values left out).

    Raises ValueError (PS3.4 C.4.2.1.5 "Identifier does not match SOP Class")
    for an unknown level, a PATIENT level in the Study Root model, or no value
    of the retrieve level's unique key. The keys of the levels above, which
    C.4.2.2.1 requires, restrict the scope when present but are not demanded:
    viewers leave them out and Orthanc, which they are used with, retrieves
    without them.
    """
    try:
        lvl = Level(level.strip().upper())
    except ValueError:
        raise ValueError(f"Query/Retrieve Level {level!r} is not one of PS3.4 C.6") from None
    if lvl is Level.PATIENT and not patient_root:
        raise ValueError("the Study Root model has no PATIENT level")
    values = {kw: tuple(v for v in keys.get(kw, ()) if v) for kw in UNIQUE_KEYS.values()}
    if not values[UNIQUE_KEYS[lvl]]:
        raise ValueError(f"{lvl.value} level retrieve without {UNIQUE_KEYS[lvl]}")
    first = Level.PATIENT if patient_root else Level.STUDY
    # Keys below the level are not part of the identifier (C.4.2.2.1), nor is the
    # Patient ID in the Study Root model: ignored.
    kept = {kw: values[kw] if first.rank <= lv.rank <= lvl.rank else ()
            for lv, kw in UNIQUE_KEYS.items()}
    return Scope(lvl, kept["PatientID"], kept["StudyInstanceUID"],
                 kept["SeriesInstanceUID"], kept["SOPInstanceUID"])
