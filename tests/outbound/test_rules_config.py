"""The Forwarding section, DicomWeb.Servers and the rules' decisions (no daemon)."""

from __future__ import annotations

import pytest

from appliance.config import ConfigError, parse_config
from appliance.outbound.rules import Rules
from appliance.store import Forward
from appliance.store.index.queue import backoff

BASE = {"DicomModalities": {"ARCHIVE": ["ARCH", "10.0.0.5", 104]},
        "DicomWeb": {"Servers": {"CLOUD": ["https://cloud/dicom-web", "user", "pw"],
                                 "OTHER": {"Url": "http://o/dw/", "HttpHeaders": {"X-Key": "k"},
                                           "HasDelete": True}}}}


def config(**forwarding):
    return parse_config({**BASE, "Forwarding": forwarding}, "/etc/pacs/config.json")


def test_servers_in_both_forms():
    servers = {s.name: s for s in config().dicom_web.servers}
    assert (servers["CLOUD"].url, servers["CLOUD"].username, servers["CLOUD"].password) == (
        "https://cloud/dicom-web/", "user", "pw")
    assert servers["OTHER"].http_headers == {"X-Key": "k"} and servers["OTHER"].username is None
    assert "DicomWeb.Servers.OTHER.HasDelete" in config().ignored


@pytest.mark.parametrize("rules, key, why", [
    ([{"Destination": "ARCHIVE"}, {"Destination": "PACS3"}], "Forwarding.Rules[1].Destination",
     'unknown destination "PACS3"'),
    ([{"Destination": "ARCHIVE", "Trigger": "Stable"}], "Forwarding.Rules[0].Trigger", "expected one of"),
    ([{"Destination": "ARCHIVE", "Modalities": "US"}], "Forwarding.Rules[0].Modalities", "expected a list"),
    ([{"Destination": "ARCHIVE", "CallingAets": ["X" * 17]}], "Forwarding.Rules[0].CallingAets[0]",
     "at most 16"),
    ([{"Trigger": "Instance"}], "Forwarding.Rules[0].Destination", "required"),
    ([{"Destination": "ARCHIVE", "Modality": ["US"]}], "Forwarding.Rules[0].Modality", "unknown key"),
])
def test_bad_rules_name_the_key(rules, key, why):
    with pytest.raises(ConfigError) as e:
        config(Rules=rules)
    assert e.value.key == key and why in e.value.why, str(e.value)


def test_unknown_destination_message():
    with pytest.raises(ConfigError) as e:
        config(Rules=[{"Destination": "ARCHIVE"}, {"Destination": "PACS3"}])
    assert str(e.value).startswith(
        '/etc/pacs/config.json: Forwarding.Rules[1].Destination: unknown destination "PACS3"')


class _Record:
    def __init__(self, modality, calling_aet):
        self.modality, self.calling_aet = modality, calling_aet


def test_rules_decide_per_destination_and_trigger():
    c = config(Rules=[{"Destination": "ARCHIVE"},
                      {"Destination": "CLOUD", "Trigger": "StableStudy", "Modalities": ["US"],
                       "CallingAets": ["US01"]},
                      {"Destination": "ARCHIVE", "Modalities": ["us"]}])
    rules = Rules(c.forwarding.rules, stable_age=60)
    assert rules(_Record("US", " us01 ")) == (Forward("ARCHIVE"), Forward("CLOUD", 60.0))
    assert rules(_Record("CT", "US01")) == (Forward("ARCHIVE"),)
    assert rules(_Record("US", "OTHER")) == (Forward("ARCHIVE"),)
    assert not Rules((), 60) and c.forwarding.max_retry_seconds == 300


def test_backoff_is_exponential_and_capped():
    assert [backoff(n, 300) for n in (1, 2, 3, 4, 9, 10, 30)] == [1, 2, 4, 8, 256, 300, 300]


def test_https_trust_keys_as_orthanc_reads_them(tmp_path):
    """HttpsVerifyPeers (default true) and HttpsCACertificates ("" = the system's CAs,
    a relative path = from the config file's folder) reach the STOW-RS client."""
    from appliance.outbound.stow import HttpsTrust

    default = parse_config(BASE, "/etc/pacs/config.json").view(HttpsTrust)
    assert default == HttpsTrust(https_verify_peers=True, https_ca_certificates=None)
    assert default.context().verify_mode.name == "CERT_REQUIRED"
    given = parse_config({**BASE, "HttpsVerifyPeers": False, "HttpsCACertificates": "tls/ca.pem"},
                         "/etc/pacs/config.json")
    assert "HttpsVerifyPeers" not in given.ignored and "HttpsCACertificates" not in given.ignored
    trust = given.view(HttpsTrust)
    assert str(trust.https_ca_certificates) == "/etc/pacs/tls/ca.pem"
    assert not trust.context().check_hostname and trust.context().verify_mode.name == "CERT_NONE"
    assert parse_config({**BASE, "HttpsCACertificates": ""}, "x").https_ca_certificates is None
    with pytest.raises(ConfigError, match="HttpsVerifyPeers"):
        parse_config({**BASE, "HttpsVerifyPeers": "yes"}, "x")
    missing = HttpsTrust(https_ca_certificates=tmp_path / "none.pem")
    with pytest.raises(OSError):
        missing.context()
