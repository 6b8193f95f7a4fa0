"""Removing worklist items that are done, as Orthanc's Worklists plugin does.

Two rules, checked every ``Worklists.HousekeepingInterval`` seconds:

* ``Worklists.DeleteWorklistsDelay`` (hours): an item whose file is older than that is deleted.
* ``Worklists.DeleteWorklistsOnStableStudy``: an item is deleted once a study with its Study
  Instance UID (or, failing that, its Accession Number) has been received and has had no new
  instance for ``StableAge`` seconds (Orthanc's "stable study").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from appliance.store import Archive
from appliance.worklist.source import WorklistFolder, WorklistItem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CleanupRules:
    """The housekeeping options of one configuration (replace it whole to reload)."""

    delete_on_stable_study: bool = False
    stable_age: int = 60  # seconds
    delete_delay_hours: int = 0  # 0 = never
    interval: int = 60  # seconds between passes

    @property
    def active(self) -> bool:
        """True if any rule can remove an item."""
        return self.delete_on_stable_study or self.delete_delay_hours > 0


def due_for_removal(items: Iterable[WorklistItem], rules: CleanupRules, *, now: float,
                    stable_uids: set[str], stable_accessions: set[str]) -> list[tuple[WorklistItem, str]]:
    """(item, reason) for every item a rule removes. Pure: the caller found which Study
    Instance UIDs and Accession Numbers belong to stable studies."""
    due = []
    for item in items:
        if rules.delete_delay_hours and now - item.mtime > rules.delete_delay_hours * 3600:
            due.append((item, f"older than {rules.delete_delay_hours} h"))
        elif rules.delete_on_stable_study:
            study, accession, _ = item.link_keys()
            if (study and study in stable_uids) or (accession and accession in stable_accessions):
                due.append((item, "its study was received and is stable"))
    return due


class Housekeeper:
    """Runs the cleanup rules on a worklist folder, as an asyncio task."""

    def __init__(self, folder: WorklistFolder, archive: Archive, rules: CleanupRules) -> None:
        self.folder = folder
        self.archive = archive
        self.rules = rules

    def set_rules(self, rules: CleanupRules) -> None:
        """Swap the rules (SIGHUP reload); the next pass uses them."""
        self.rules = rules

    async def run_forever(self) -> None:
        """One pass every ``interval`` seconds until cancelled; a failing pass is logged."""
        while True:
            await asyncio.sleep(self.rules.interval)
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the next pass may succeed
                log.error("worklist housekeeping failed: %s", e)

    def _due(self, rules: CleanupRules, now: float) -> list[tuple[WorklistItem, str]]:
        items = self.folder.snapshot.items
        uids: set[str] = set()
        accessions: set[str] = set()
        if rules.delete_on_stable_study and items:
            keys = [item.link_keys() for item in items]
            uids, accessions = self.archive.studies_quiet_since(
                {k[0] for k in keys if k[0]}, {k[1] for k in keys if k[1]},
                now - rules.stable_age)
        return due_for_removal(items, rules, now=now, stable_uids=uids,
                               stable_accessions=accessions)

    async def run_once(self) -> int:
        """One pass; returns the number of items removed."""
        rules = self.rules
        if not rules.active:
            return 0
        # In a worker thread: thousands of items are unpacked, and the index is read.
        due = await asyncio.to_thread(self._due, rules, time.time())
        for item, reason in due:
            await asyncio.to_thread(self.folder.take_out, item.name, archive=False)
            log.debug("worklist item %s deleted: %s", item.name, reason)
        if due:
            log.info("worklist housekeeping: %d item(s) deleted", len(due))
        return len(due)
