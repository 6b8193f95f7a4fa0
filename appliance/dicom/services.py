"""The DIMSE services the server offers: one declaration each (issue 11.7).

A :class:`DimseService` says everything the server needs to know about a
service: its SOP classes and transfer syntaxes (the presentation contexts
``dicom/scp.py`` accepts, with SCP/SCU role selection for C-GET's storage
sub-operations, PS3.7 D.3.3.4), the permissions of ``dicom/policy.py`` that let
an AE use it, and the handler of each DIMSE event it answers.
``DicomHandlers`` binds each event once and dispatches it by the request's
Affected SOP Class UID (PS3.7 9.1), so one event (EVT_C_FIND) serves the
Modality Worklist and both Query/Retrieve roots.

A handler is ``handler(event, caller)``: :class:`Caller` names the peer and
says whether the policy allows it (the handler answers the refusal itself, in
its own service's terms). To add a service, see docs/DESIGN.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from copy import copy
from dataclasses import dataclass, field
from typing import Any

import pydicom.uid
from pynetdicom import evt
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification, _STORAGE_CLASSES

from appliance.dicom.policy import Service
from appliance.dicom.status import Status
from appliance.lazyclasses import lazy_dataclass

__all__ = ["ALL_TRANSFER_SYNTAXES", "UNCOMPRESSED", "Caller", "DimseService", "ServiceRegistry",
           "storage_sop_classes", "VERIFICATION"]

# Uncompressed first, so that a requestor proposing several in one context gets
# a cheap one.
UNCOMPRESSED = (
    pydicom.uid.ExplicitVRLittleEndian,
    pydicom.uid.ImplicitVRLittleEndian,
    pydicom.uid.DeflatedExplicitVRLittleEndian,
    pydicom.uid.ExplicitVRBigEndian,
)
#: Every transfer syntax pydicom knows: what storage accepts (stored as received).
ALL_TRANSFER_SYNTAXES = UNCOMPRESSED + tuple(
    ts for ts in pydicom.uid.AllTransferSyntaxes if ts not in UNCOMPRESSED)

VERIFICATION = str(Verification)


def storage_sop_classes() -> tuple[str, ...]:
    """Every storage SOP class pynetdicom knows."""
    return tuple(sorted(set(_STORAGE_CLASSES.values())))


Handler = Callable[[Any, "Caller"], Any]


@lazy_dataclass(frozen=True)
class Caller:
    """Who sent a request, and whether the service's access rule lets them."""

    host: str
    peer: str          # "host:port", first in every log line
    calling_aet: str
    allowed: bool


@dataclass(frozen=True)
class DimseService:
    """One DIMSE service as the server offers it.

    ``access``: the permissions of which any one lets an AE use the service
    (empty: everyone). ``fallback``: the service also takes its events' requests
    for SOP classes nobody declared (storage under UnknownSopClassAccepted).
    ``scp_role``/``scu_role``: the roles accepted in SCP/SCU Role Selection
    negotiation (None: no role selection for these contexts).
    """

    name: str
    sop_classes: tuple[str, ...]
    transfer_syntaxes: tuple[str, ...]
    access: tuple[Service, ...]
    handlers: Mapping[Any, Handler]  # pynetdicom event -> handler
    scp_role: bool | None = None
    scu_role: bool | None = None
    fallback: bool = False


# What a request for a SOP class no service of its event declares is answered
# (PS3.7 C.5.6 "SOP Class Not Supported"), in each event handler's return shape.
def _unsupported(event_type) -> Any:
    status = int(Status.SOP_CLASS_NOT_SUPPORTED)
    if event_type is evt.EVT_C_FIND or event_type is evt.EVT_C_GET or event_type is evt.EVT_C_MOVE:
        return iter([(status, None)])
    if event_type in (evt.EVT_C_ECHO, evt.EVT_C_STORE):
        return status
    return status, None  # N-services: (status, data set)


@dataclass
class ServiceRegistry:
    """The declared services, indexed for negotiation and dispatch."""

    services: tuple[DimseService, ...]
    _by_event: dict[Any, dict[str, DimseService]] = field(init=False, default_factory=dict)
    _fallback: dict[Any, DimseService] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        for service in self.services:
            for event_type in service.handlers:
                table = self._by_event.setdefault(event_type, {})
                for uid in service.sop_classes:
                    if uid in table:
                        raise ValueError(f"{uid} declared twice for {event_type.name}: "
                                         f"{table[uid].name} and {service.name}")
                    table[uid] = service
                if service.fallback:
                    self._fallback[event_type] = service

    @classmethod
    def of(cls, services: Iterable[DimseService | None]) -> "ServiceRegistry":
        """The registry of the given services (None entries: services not configured)."""
        return cls(tuple(s for s in services if s is not None))

    def events(self) -> list[Any]:
        """The DIMSE events some service handles."""
        return list(self._by_event)

    def service_for(self, event_type, sop_class_uid: str) -> DimseService | None:
        """The service answering ``event_type`` for this SOP class, if any."""
        found = self._by_event.get(event_type, {}).get(sop_class_uid)
        return found if found is not None else self._fallback.get(event_type)

    def contexts(self) -> list:
        """Every service's presentation contexts, one per SOP class (the first service
        declaring it wins), as pynetdicom's acceptor takes them
        (``AE.make_server(contexts=...)``), sorted as ``AE.supported_contexts`` lists them.

        pynetdicom validates each transfer syntax of each context it is given (170
        storage classes x 39 syntaxes: ~40 ms of every start). The contexts of one
        service differ only in their abstract syntax, so its first is built and
        validated, and the others are copies of it sharing its UIDs (pydicom's UID is an
        immutable str) with lists of their own, as the fast path copies them for each
        association (``deepcopy`` took ~8 ms of every start walking those UIDs).
        """
        built: dict[str, PresentationContext] = {}
        for service in self.services:
            first = None
            for uid in service.sop_classes:
                if uid in built:  # e.g. a SOP class a former service declared
                    continue
                if first is None:
                    context = PresentationContext()
                    context.abstract_syntax = uid
                    context.transfer_syntax = list(service.transfer_syntaxes)
                    context.scu_role = service.scu_role
                    context.scp_role = service.scp_role
                    first = context
                else:
                    context = copy(first)
                    for name, value in vars(first).items():
                        if type(value) is list:  # the transfer syntaxes: a list of its own
                            setattr(context, name, list(value))
                    context.abstract_syntax = uid
                built[uid] = context
        return sorted(built.values(), key=lambda context: context.abstract_syntax)

    def dispatch(self, event_type, event, caller_of: Callable[[Any, DimseService], Caller]) -> Any:
        """Run the handler of the service the request's Affected SOP Class UID names
        (the negotiated context's abstract syntax when the request has none)."""
        request = event.request
        asked = (getattr(request, "AffectedSOPClassUID", None)
                 or getattr(request, "RequestedSOPClassUID", None))
        service = self.service_for(event_type, str(asked)) if asked else None
        if service is None:  # a class the request names wrongly: the negotiated one decides
            service = self.service_for(event_type, str(event.context.abstract_syntax))
        if service is None:
            return _unsupported(event_type)
        return service.handlers[event_type](event, caller_of(event, service))
