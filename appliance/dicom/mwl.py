"""DIMSE adapters of the worklist services: Modality Worklist C-FIND (PS3.4 K) and Modality
Performed Procedure Step N-CREATE / N-SET (PS3.4 F.7).

Thin: decode what pynetdicom gives, call the worklist catalog or the MPPS manager, map the
outcome to a named status. Runs on pynetdicom's association threads. Logs name the peer
first; patient names and IDs never appear at INFO.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

from pydicom.dataset import Dataset

from appliance.dicom.find_answers import DirectAnswers
from appliance.dicom.find_answers import status_dataset as _status
from appliance.dicom.status import FindStatus, MppsStatus
from appliance.worklist.encoded import Headers, answer_bytes
from appliance.worklist.matching import QueryError, answer, attrs_from_dataset, compile_query, restrict_to_station
from appliance.worklist.mpps import MppsManager, Outcome
from appliance.worklist.source import WorklistFolder

log = logging.getLogger(__name__)

# How long a C-FIND arriving during the start-up read of a large folder waits.
_LOAD_WAIT = 120.0

MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
MODALITY_PERFORMED_PROCEDURE_STEP = "1.2.840.10008.3.1.2.3.3"


@dataclass(frozen=True)
class MwlOptions:
    """The C-FIND options of ``Worklists`` (replace the object whole to reload)."""

    filter_issuer_aet: bool = False
    limit_answers: int = 0  # 0 = no limit


class WorklistDimse:
    """The C-FIND MWL, N-CREATE and N-SET handlers (wired by ``DicomHandlers``)."""

    def __init__(self, worklists: WorklistFolder | None, mpps: MppsManager | None,
                 options: MwlOptions) -> None:
        self.worklists = worklists
        self.mpps = mpps
        self.options = options

    def set_options(self, options: MwlOptions) -> None:
        """Swap the C-FIND options (SIGHUP reload); new queries use them."""
        self.options = options

    # -- C-FIND ------------------------------------------------------------

    def find(self, event, *, allowed: bool, peer: str, calling: str) -> Iterator[tuple]:
        """C-FIND on the Modality Worklist Information Model (PS3.4 K.4.1.3): one Pending
        answer per matching item, then Success; or a failure status."""
        started = time.monotonic()
        if event.context.abstract_syntax != MODALITY_WORKLIST_FIND or self.worklists is None:
            yield _status(FindStatus.SOP_CLASS_NOT_SUPPORTED, "only Modality Worklist C-FIND"), None
            return
        if not allowed:
            log.warning("%s: MWL C-FIND from %s refused: not allowed to query the worklist",
                        peer, calling)
            yield _status(FindStatus.REFUSED_NOT_AUTHORIZED, "this AE may not query the worklist"), None
            return
        try:
            attrs = attrs_from_dataset(event.identifier)
        except Exception as e:  # noqa: BLE001 - pydicom's many decoding errors
            log.warning("%s: MWL C-FIND from %s: identifier not decodable: %s", peer, calling, e)
            yield _status(FindStatus.UNABLE_TO_PROCESS, "identifier not decodable"), None
            return
        options = self.options
        try:
            if options.filter_issuer_aet:
                attrs = restrict_to_station(attrs, calling)
            query = compile_query(attrs)
        except QueryError as e:
            log.warning("%s: MWL C-FIND from %s refused: %s", peer, calling, e)
            yield _status(FindStatus.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, e.why,
                          offending=(e.tag,)), None
            return
        if not self.worklists.loaded.wait(_LOAD_WAIT):
            log.warning("%s: MWL C-FIND from %s refused: worklist folder still loading", peer, calling)
            yield _status(FindStatus.UNABLE_TO_PROCESS, "worklist still loading, try again"), None
            return
        # Every change made to the folder before this query, then the items as they are
        # now for the whole query (appliance.worklist.source: read-your-writes).
        catalog = self.worklists.current()
        direct, implicit = DirectAnswers.open(event)
        headers = Headers(implicit)
        sent = 0
        ending, final = "complete", None
        for item, attrs, values in catalog.matches(query):
            if event.is_cancelled:
                ending, final = "cancelled (C-CANCEL)", FindStatus.CANCEL
                break
            if options.limit_answers and sent >= options.limit_answers:
                ending = f"capped by LimitAnswers ({options.limit_answers})"
                final = _status(FindStatus.CANCEL, "more matches than Worklists.LimitAnswers")
                break
            data = None
            if direct is not None:
                data = answer_bytes(query, attrs, values, item.charset, implicit, headers)
            if data is not None:
                direct.send(data)
                if direct.failed:
                    return
            else:
                if direct is not None:
                    direct.queued()  # keeps its place behind what was sent directly
                yield FindStatus.PENDING, answer(query, attrs, item.charset)
            sent += 1
        if direct is not None:
            direct.flush()
            if direct.failed or not event.assoc.is_established:
                return  # aborted meanwhile: nobody to answer
        # Logged before the final status: pynetdicom stops reading the generator after it.
        log.info("%s: MWL C-FIND from %s: %d answer(s) of %d item(s), %s, %.1f ms", peer, calling,
                 sent, len(catalog), ending, (time.monotonic() - started) * 1000,
                 extra={"PEER": peer, "CALLING_AET": calling, "ANSWERS": sent})
        if final is not None:
            yield final, None

    # -- MPPS --------------------------------------------------------------

    def n_create(self, event, *, allowed: bool, peer: str, calling: str) -> tuple[Dataset, Dataset | None]:
        """N-CREATE of a Modality Performed Procedure Step (PS3.4 F.7.2.1)."""
        if self.mpps is None:
            return _status(FindStatus.SOP_CLASS_NOT_SUPPORTED), None
        if not allowed:
            log.warning("%s: MPPS N-CREATE from %s refused: not allowed", peer, calling)
            return _status(MppsStatus.REFUSED_NOT_AUTHORIZED, "this AE may not send MPPS"), None
        requested = event.request.AffectedSOPInstanceUID
        outcome = self.mpps.create(str(requested) if requested else None, event.attribute_list,
                                   calling_aet=calling, peer=peer)
        if not outcome.ok:
            return self._failure(outcome, with_attributes=False), None
        if requested:
            return _status(outcome.status), None
        # PS3.7 10.1.5.1.3: the SCP assigned the UID; pynetdicom moves it into the response.
        created = Dataset()
        created.AffectedSOPInstanceUID = outcome.sop_instance_uid
        return _status(outcome.status), created

    def n_set(self, event, *, allowed: bool, peer: str, calling: str) -> tuple[Dataset, Dataset | None]:
        """N-SET of a Modality Performed Procedure Step (PS3.4 F.7.2.2)."""
        if self.mpps is None:
            return _status(FindStatus.SOP_CLASS_NOT_SUPPORTED), None
        if not allowed:
            log.warning("%s: MPPS N-SET from %s refused: not allowed", peer, calling)
            return _status(MppsStatus.REFUSED_NOT_AUTHORIZED, "this AE may not send MPPS"), None
        outcome = self.mpps.update(str(event.request.RequestedSOPInstanceUID or ""),
                                   event.modification_list, calling_aet=calling, peer=peer)
        if not outcome.ok:
            return self._failure(outcome, with_attributes=True), None
        return _status(outcome.status), None

    @staticmethod
    def _failure(outcome: Outcome, *, with_attributes: bool) -> Dataset:
        # N-CREATE responses have no Attribute Identifier List in pynetdicom's primitive.
        return _status(outcome.status, outcome.comment, error_id=outcome.error_id,
                       attribute_list=outcome.tags if with_attributes else ())
