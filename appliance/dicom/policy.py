"""Who may associate and which DIMSE services they may use — Orthanc's rules.

Pure logic, no I/O: built from the config (by the daemon), asked by the
association and service handlers. The rules follow Orthanc's ``OrthancApplicationEntityFilter``:

* ``DicomCheckCalledAet``: the called AE title must be ours.
* An association is accepted from any AE as soon as one of the
  ``DicomAlwaysAllow*`` options is true; otherwise only from an AE listed in
  ``DicomModalities`` (and, with ``DicomCheckModalityHost``, only from the
  host configured for it).
* Each request is then allowed if its ``DicomAlwaysAllow<Service>`` is true,
  or if a ``DicomModalities`` entry for the calling AE (and host, when
  checked) has ``Allow<Service>``.

AE titles compare case-insensitively with surrounding spaces ignored, as
Orthanc does unless ``StrictAetComparison`` is true.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

from appliance.config import Modality


class Service(enum.Enum):
    """DIMSE services subject to access rules, with their modality flag."""

    ECHO = "allow_echo"
    STORE = "allow_store"
    FIND = "allow_find"
    FIND_WORKLIST = "allow_find_worklist"
    GET = "allow_get"
    MOVE = "allow_move"
    STORAGE_COMMITMENT = "allow_storage_commitment"  # N-ACTION, storage commitment (PS3.4 J)


class Rejection(enum.Enum):
    """Why an association is refused, with its A-ASSOCIATE-RJ (result, source,
    reason) from PS3.8 9.3.4: rejected-permanent by the service user."""

    CALLED_AET_NOT_RECOGNIZED = (0x01, 0x01, 0x07)
    CALLING_AET_NOT_RECOGNIZED = (0x01, 0x01, 0x03)


def same_aet(a: str | None, b: str | None, strict: bool = False) -> bool:
    """Orthanc's AE title comparison: exact when ``strict``, else ignoring
    case and surrounding spaces."""
    if strict:
        return (a or "") == (b or "")
    return (a or "").strip().upper() == (b or "").strip().upper()


def normalise_host(host: str) -> str:
    """An IP address in canonical form (IPv4-mapped IPv6 as IPv4); other text as is."""
    try:
        ip = ipaddress.ip_address(host.strip())
    except ValueError:
        return host.strip().lower()
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return str(ip)


@dataclass(frozen=True)
class AccessPolicy:
    """The access rules of one configuration (replace it whole to reload)."""

    our_aet: str
    check_called_aet: bool
    check_modality_host: bool
    modalities: tuple[Modality, ...]
    always: frozenset[Service]
    strict_aet: bool = False

    def _known(self, calling_aet: str, host: str) -> list[Modality]:
        """DicomModalities entries for this AE (and host, when checked)."""
        found = [m for m in self.modalities if same_aet(m.aet, calling_aet, self.strict_aet)]
        if self.check_modality_host:
            peer = normalise_host(host)
            found = [m for m in found if normalise_host(m.host) == peer]
        return found

    def check_association(self, calling_aet: str, called_aet: str, host: str) -> Rejection | None:
        """None to accept the association, else why it is refused."""
        if self.check_called_aet and not same_aet(called_aet, self.our_aet, self.strict_aet):
            return Rejection.CALLED_AET_NOT_RECOGNIZED
        if self.always:
            return None
        if not self._known(calling_aet, host):
            return Rejection.CALLING_AET_NOT_RECOGNIZED
        return None

    def modality_for(self, calling_aet: str, host: str) -> Modality | None:
        """The DicomModalities entry of this AE (and host, when checked), or None."""
        found = self._known(calling_aet, host)
        return found[0] if found else None

    def allows(self, service: Service, calling_aet: str, host: str) -> bool:
        """True if this AE, from this host, may use ``service``."""
        if service in self.always:
            return True
        return any(getattr(m, service.value) for m in self._known(calling_aet, host))

    def destination(self, aet: str) -> Modality | None:
        """The DicomModalities entry a C-MOVE Move Destination AE title names, or None
        (compared as calling AE titles are, StrictAetComparison included)."""
        return next((m for m in self.modalities if same_aet(m.aet, aet, self.strict_aet)), None)
