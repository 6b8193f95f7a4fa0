"""A search of the archive, whatever protocol asked for it.

Levels are those of PS3.4 C.6 (Query/Retrieve Level); QIDO-RS's studies,
series and instances are STUDY, SERIES and IMAGE. Matching follows PS3.4
C.2.2.2; universal matching (C.2.2.2.3) is no match at all, only a key to
return.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

__all__ = ["Level", "Match", "MatchKind", "Row", "Search"]


class Level(enum.Enum):
    """Query/Retrieve Level (0008,0052) values, from the top of the hierarchy."""

    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"

    @property
    def rank(self) -> int:
        """0 for PATIENT ... 3 for IMAGE."""
        return _RANK[self]


_RANK = {level: rank for rank, level in enumerate(Level)}


#: The most alternatives one text match may list (PS3.4 C.2.2.2.8), each a
#: condition of its own in the store's query (SQLite bounds an expression's depth
#: at 1,000); an identifier listing more is refused, whatever protocol brought it.
#: Lists of UIDs and integers (exact matching) have no such bound.
MAX_ALTERNATIVES = 200


class MatchKind(enum.Enum):
    """How a match compares (PS3.4 C.2.2.2)."""

    # Any of ``values``, each a single value (C.2.2.2.1) or a wildcard pattern
    # with * and ? (C.2.2.2.4): multiple values (C.2.2.2.8) are alternatives.
    VALUES = "values"
    # Any of ``values`` exactly: a list of UIDs (C.2.2.2.2), or of integers.
    EXACT = "exact"
    # ``values`` is (low, high), either may be "": DA, TM, DT (C.2.2.2.5).
    RANGE = "range"


@dataclass(frozen=True)
class Match:
    """One matching condition on one attribute."""

    tag: int
    vr: str
    kind: MatchKind
    values: tuple
    fold_case: bool = False     # VALUES: case-insensitive, non-ASCII letters included


@dataclass(frozen=True)
class Search:
    """A validated search, ready for the store to run.

    ``study_uid``/``series_uid`` restrict it to one study or series (a QIDO-RS
    target resource, or the unique keys of the levels above a hierarchical
    C-FIND). ``computed``: computed keys to return (appliance.query.keys.COMPUTED);
    ``metadata_tags``: other attributes to return, from a representative
    instance of each result; ``whole_metadata``: IMAGE level, each instance's
    whole stored DICOM JSON too; ``charset``: the Specific Character Set of that
    representative instance (a C-FIND answer is written in it). ``newest_first``: STUDY
    level, by StudyDate and StudyTime descending (undated last) instead of storage order.
    """

    level: Level
    study_uid: str | None = None
    series_uid: str | None = None
    matches: tuple[Match, ...] = ()
    computed: tuple[int, ...] = ()
    metadata_tags: tuple[int, ...] = ()
    whole_metadata: bool = False
    limit: int = 100
    offset: int = 0
    newest_first: bool = False
    charset: bool = False       # also the representative instance's SpecificCharacterSet


@dataclass
class Row:
    """One matching resource: indexed and computed values, metadata fragments."""

    values: dict[int, Any]            # appliance.query.keys.INDEXED up to the level, computed
    metadata: dict[int, str | None]   # tag -> JSON text of that attribute, or None
    whole_metadata: str | None = None
    charset: str | None = None        # Search.charset: as stored, values joined by "\\"
