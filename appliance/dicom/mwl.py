"""DIMSE adapters of the worklist services: Modality Worklist C-FIND (PS3.4 K) and Modality
Performed Procedure Step N-CREATE / N-SET (PS3.4 F.7).

Thin: decode what pynetdicom gives, call the worklist snapshot or the MPPS manager, map the
outcome to a named status. Runs on pynetdicom's association threads. Logs name the peer
first; patient names and IDs never appear at INFO.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from appliance.config import Config
from appliance.dicom.tuning import C_FIND_RSP, encoded_sender, response_command
from appliance.worklist.encoded import answer_bytes
from appliance.worklist.matching import QueryError, answer, attrs_from_dataset, compile_query, restrict_to_station
from appliance.worklist.mpps import MppsManager, Outcome
from appliance.worklist.source import WorklistFolder

log = logging.getLogger(__name__)

# How long a C-FIND arriving during the start-up parse of a large folder waits.
_LOAD_WAIT = 120.0

# Answers written straight to the DUL (see _DirectAnswers) up to this many bytes per query;
# the rest go one by one through pynetdicom, whose DUL reads the peer's C-CANCEL only when it
# has nothing queued to send.
_DIRECT_WINDOW = 64 * 1024

MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
MODALITY_PERFORMED_PROCEDURE_STEP = "1.2.840.10008.3.1.2.3.3"


class FindStatus(enum.IntEnum):
    """C-FIND statuses of the Modality Worklist SOP Class (PS3.4 K.4.1.1.4, C.4.1.1.4)."""

    SUCCESS = 0x0000
    PENDING = 0xFF00
    # Also how an answer capped by Worklists.LimitAnswers ends: Orthanc's choice (its
    # FindScp answers "matching terminated" once the plugin marks the answers incomplete).
    CANCEL = 0xFE00
    REFUSED_NOT_AUTHORIZED = 0x0124
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    OUT_OF_RESOURCES = 0xA700
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    UNABLE_TO_PROCESS = 0xC000


@dataclass(frozen=True)
class MwlOptions:
    """The C-FIND options of ``Worklists`` (replace the object whole to reload)."""

    filter_issuer_aet: bool = False
    limit_answers: int = 0  # 0 = no limit

    @classmethod
    def from_config(cls, config: Config) -> "MwlOptions":
        """The options of a loaded configuration."""
        return cls(filter_issuer_aet=config.worklists.filter_issuer_aet,
                   limit_answers=config.worklists.limit_answers)


def _status(code: int, comment: str = "", *, offending: tuple[int, ...] = (),
            error_id: int | None = None, attribute_list: tuple[int, ...] = ()) -> Dataset:
    ds = Dataset()
    ds.Status = int(code)
    if comment:
        ds.ErrorComment = comment[:64]  # LO
    if offending:
        ds.OffendingElement = list(offending)
    if error_id is not None:
        ds.ErrorID = error_id
    if attribute_list:
        ds.AttributeIdentifierList = list(attribute_list)
    return ds


def pending_command(message_id: int, sop_class_uid: str) -> bytes:
    """The command set of a Pending C-FIND-RSP (PS3.7 9.3.2.2), built directly because
    pynetdicom's primitive-to-message conversion and pydicom encoding take 0.3 ms."""
    return response_command(C_FIND_RSP, message_id, sop_class_uid, FindStatus.PENDING,
                            data_set=True)


class _DirectAnswers:
    """Pending C-FIND responses handed straight to the association's DUL as ready-made
    P-DATA primitives, instead of yielding a Dataset per answer to pynetdicom (on the
    fast path only: appliance.dicom.tuning.encoded_sender).

    pynetdicom turns every yielded identifier into a C-FIND-RSP by building and encoding a
    command set and the identifier with pydicom and queueing two PDUs: about 0.5 ms per
    answer, most of a 50-answer query. Here the Pending command set is encoded once per
    query (:func:`pending_command`), each identifier is
    bytes assembled from the item's cached element bytes (:mod:`appliance.worklist.encoded`),
    and each response travels as one P-DATA-TF PDU holding its command PDV and its data PDV
    (:meth:`appliance.dicom.tuning.FastDimse.send_encoded`; more PDUs only if it exceeds the
    peer's maximum PDU length). Never two
    responses in one PDU: the standard allows it, but pynetdicom's own receiver (and so
    every SCU built on it) keeps only the first message of a PDU and drops the rest.

    The PDUs are queued on the DUL exactly as pynetdicom's ``send_msg`` queues its own, from
    the same thread, so the final response pynetdicom sends after the handler follows them.
    """

    def __init__(self, send, context_id: int, command: bytes) -> None:
        self._send = send
        self._context_id = context_id
        self._command = command
        self.bytes = 0  # identifier bytes sent so far

    @classmethod
    def open(cls, event) -> tuple["_DirectAnswers | None", bool]:
        """(the writer for this C-FIND, implicit VR) or (None, _) on stock pynetdicom or
        when its transfer syntax is not Little Endian Implicit or Explicit VR (Big Endian
        and Deflated answers are left to pynetdicom)."""
        syntax = event.context.transfer_syntax
        send = encoded_sender(event.assoc)
        if send is None or syntax not in (ImplicitVRLittleEndian, ExplicitVRLittleEndian):
            return None, False
        request = event.request
        command = pending_command(request.MessageID, request.AffectedSOPClassUID)
        return cls(send, event.context.context_id, command), syntax == ImplicitVRLittleEndian

    def send(self, identifier: bytes) -> None:
        """Queue one Pending response with this identifier for sending."""
        self._send(self._context_id, self._command, identifier)
        self.bytes += len(identifier)


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

    def sop_classes(self) -> list[str]:
        """The SOP classes to accept in association negotiation."""
        return ([MODALITY_WORKLIST_FIND] if self.worklists is not None else []) + (
            [MODALITY_PERFORMED_PROCEDURE_STEP] if self.mpps is not None else [])

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
        snapshot = self.worklists.snapshot  # one immutable view for the whole query
        direct, implicit = _DirectAnswers.open(event)
        sent = 0
        ending, final = "complete", None
        for item in snapshot.search(query):
            if event.is_cancelled:
                ending, final = "cancelled (C-CANCEL)", FindStatus.CANCEL
                break
            if options.limit_answers and sent >= options.limit_answers:
                ending = f"capped by LimitAnswers ({options.limit_answers})"
                final = _status(FindStatus.CANCEL, "more matches than Worklists.LimitAnswers")
                break
            data = None
            if direct is not None and direct.bytes < _DIRECT_WINDOW:
                encoded = item.encoded(implicit)
                if encoded is not None:
                    data = answer_bytes(query, item.attrs, encoded, implicit)
            if data is not None:
                if not event.assoc.is_established:  # aborted meanwhile: nobody to answer
                    return
                direct.send(data)
            else:
                yield FindStatus.PENDING, answer(query, item.attrs, item.charset)
            sent += 1
        # Logged before the final status: pynetdicom stops reading the generator after it.
        log.info("%s: MWL C-FIND from %s: %d answer(s) of %d item(s), %s, %.1f ms", peer, calling,
                 sent, len(snapshot), ending, (time.monotonic() - started) * 1000,
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
            return _status(0x0124, "this AE may not send MPPS"), None
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
            return _status(0x0124, "this AE may not send MPPS"), None
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
