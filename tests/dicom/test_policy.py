"""Orthanc's association and request rules (pure logic)."""

from __future__ import annotations

from appliance.config import parse_config
from appliance.daemon import access_policy
from appliance.dicom.policy import AccessPolicy, Rejection, Service


def policy(**cfg) -> AccessPolicy:
    base = {"StorageDirectory": "/tmp/s", "IndexDirectory": "/tmp/i"}
    return access_policy(parse_config({**base, **cfg}, "test.json"))


MODS = {"us1": ["US1", "10.0.0.5", 104],
        "us2": {"AET": "US2", "Host": "10.0.0.6", "Port": 104, "AllowStore": False}}


def test_defaults_accept_anyone_and_allow_store_echo_worklist():
    p = policy()
    assert p.check_association("ANY", "WHATEVER", "1.2.3.4") is None
    assert p.allows(Service.STORE, "ANY", "1.2.3.4")
    assert p.allows(Service.ECHO, "ANY", "1.2.3.4")
    assert p.allows(Service.FIND_WORKLIST, "ANY", "1.2.3.4")  # our deliberate default
    assert not p.allows(Service.FIND, "ANY", "1.2.3.4")
    assert not p.allows(Service.MOVE, "ANY", "1.2.3.4")


def test_called_aet_checked_case_insensitively():
    p = policy(DicomCheckCalledAet=True, DicomAet="PACS")
    assert p.check_association("X", "OTHER", "h") is Rejection.CALLED_AET_NOT_RECOGNIZED
    assert p.check_association("X", " pacs ", "h") is None


def test_nothing_always_allowed_means_known_aes_only():
    p = policy(DicomAlwaysAllowEcho=False, DicomAlwaysAllowStore=False,
               DicomAlwaysAllowFindWorklist=False, DicomModalities=MODS)
    assert p.check_association("STRANGER", "ORTHANC", "10.0.0.5") is Rejection.CALLING_AET_NOT_RECOGNIZED
    assert p.check_association("us1", "ORTHANC", "192.168.1.1") is None  # host not checked
    assert p.allows(Service.STORE, "US1", "10.0.0.5")
    assert not p.allows(Service.STORE, "US2", "10.0.0.6")  # AllowStore false
    assert p.allows(Service.ECHO, "US2", "10.0.0.6")


def test_modality_host_check():
    p = policy(DicomAlwaysAllowStore=False, DicomCheckModalityHost=True, DicomModalities=MODS)
    assert p.allows(Service.STORE, "US1", "10.0.0.5")
    assert p.allows(Service.STORE, "US1", "::ffff:10.0.0.5")  # IPv4-mapped IPv6
    assert not p.allows(Service.STORE, "US1", "10.0.0.99")


def test_strict_aet_comparison():
    p = policy(DicomCheckCalledAet=True, DicomAet="PACS", StrictAetComparison=True,
               DicomAlwaysAllowStore=False, DicomModalities=MODS)
    assert p.check_association("X", "pacs", "h") is Rejection.CALLED_AET_NOT_RECOGNIZED
    assert p.check_association("X", "PACS", "h") is None
    assert not p.allows(Service.STORE, "us1", "10.0.0.5")
    assert p.allows(Service.STORE, "US1", "10.0.0.5")
