"""pydicom's process-wide settings as the daemon runs it."""

from __future__ import annotations

from pydicom import config as pydicom_config


def quiet_pydicom() -> None:
    """Turn off pydicom's value checks on read and on set.

    They warn, never refuse, about values the archive keeps as received anyway
    (stored byte-exact, answered as they are); where we must refuse a value
    (worklist authoring) we validate explicitly. The checks cost about a
    quarter of each received header's parse and of each response's encoding,
    and, set before pynetdicom is imported, the check of each of the ~3,000 UIDs
    its tables build at import (~3% of the daemon's start-up instructions).
    """
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
