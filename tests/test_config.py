"""Tests for appliance.config: real files in tmp_path, no mocks."""

from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
from collections.abc import Mapping
from pathlib import Path

import pytest

from appliance import config as cfg
from appliance.config import (
    BackupsConfig,
    Config,
    ConfigError,
    DicomWebConfig,
    DiskMonitorConfig,
    MppsConfig,
    Modality,
    Section,
    WorklistsConfig,
    declarations,
    default_config,
    load_config,
    parse_config,
    reference,
    strip_json_comments,
)

# Verbatim from /work/shared/DESIGN.md, section "Config".
CLINIC_ORTHANC_JSON = """\
{ "Name": "Clinic Orthanc", "StorageDirectory": "/var/lib/orthanc/db", "IndexDirectory": "/var/lib/orthanc/db",
  "TemporaryDirectory": "/var/lib/orthanc/tmp", "AuthenticationEnabled": true,
  "RegisteredUsers": {"orthanc": "change-this-password"}, "RemoteAccessAllowed": false,
  "HttpPort": 8042, "DicomAet": "ORTHANC", "DicomPort": 4242, "DicomCheckCalledAet": true,
  "DicomWeb": {"Enable": true, "Root": "/dicom-web/"},
  "Worklists": {"Enable": true, "Database": "/var/lib/orthanc/worklists"},
  "Plugins": ["/usr/share/orthanc/plugins"], "ConcurrentJobs": 2, "StorageCompression": false }
"""

# A minimal valid base for error tests, so that each test changes one thing.
BASE = {"StorageDirectory": "/srv/pacs/storage"}


def write(tmp_path: Path, content: str | dict, name: str = "config.json") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


def load(tmp_path: Path, content: str | dict, name: str = "config.json") -> Config:
    return load_config(write(tmp_path, content, name))


def error(tmp_path: Path, content: str | dict, name: str = "config.json") -> ConfigError:
    path = write(tmp_path, content, name)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.path == str(path)
    assert str(info.value) == f"{path}: {info.value.key}: {info.value.why}"
    return info.value


def with_base(**keys) -> dict:
    return {**BASE, **keys}


# --------------------------------------------------------------------------- clinic file


def test_clinic_orthanc_json_loads_unchanged(tmp_path):
    path = write(tmp_path, CLINIC_ORTHANC_JSON, "orthanc.json")
    config = load_config(path)

    assert config.source == str(path)
    assert config.embedded_defaults is False
    assert config.name == "Clinic Orthanc"
    assert config.storage_directory == Path("/var/lib/orthanc/db")
    assert config.index_directory == Path("/var/lib/orthanc/db")  # same folder is fine
    assert config.temporary_directory == Path("/var/lib/orthanc/tmp")
    assert config.authentication_enabled is True
    assert dict(config.registered_users) == {"orthanc": "change-this-password"}
    assert config.remote_access_allowed is False
    assert config.http_port == 8042
    assert config.dicom_aet == "ORTHANC"
    assert config.dicom_port == 4242
    assert config.dicom_check_called_aet is True
    assert config.dicom_web.enable is True
    assert config.dicom_web.root == "/dicom-web/"
    assert config.dicom_web.enable_wado is True
    assert config.dicom_web.wado_root == "/wado"
    assert config.worklists.enable is True
    assert config.worklists.database == Path("/var/lib/orthanc/worklists")
    assert config.storage_compression is False
    assert config.ignored == ("Plugins", "ConcurrentJobs")
    # The deliberate difference from Orthanc: scanners get their worklist with this file.
    assert config.dicom_always_allow_find_worklist is True
    # Orthanc defaults for everything the file does not say.
    assert config.dicom_modalities == ()
    assert config.dicom_always_allow_echo is True
    assert config.dicom_always_allow_store is True
    assert config.dicom_always_allow_find is False
    assert config.dicom_always_allow_get is False
    assert config.dicom_always_allow_move is False
    assert config.dicom_check_modality_host is False
    assert config.overwrite_instances is False
    assert config.maximum_pdu_length == 16384
    assert config.dicom_scp_timeout == 30
    assert config.maximum_storage_size == 0
    assert config.maximum_patient_count == 0
    assert config.maximum_storage_mode == "Recycle"
    assert config.dicom_threads_count == 10
    assert config.worklists.filter_issuer_aet is False
    assert config.worklists.limit_answers == 0


def test_config_is_frozen(tmp_path):
    config = load(tmp_path, CLINIC_ORTHANC_JSON)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.dicom_port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.registered_users["eve"] = "x"  # type: ignore[index]
    assert isinstance(config.dicom_modalities, tuple)


def test_debian_orthanc_json_loads_unchanged():
    # The orthanc.json Debian's "orthanc" package installs (1.10; tests/run.sh installs it).
    path = Path("/etc/orthanc/orthanc.json")
    assert path.is_file(), f"{path} is missing: tests/run.sh installs orthanc"
    config = load_config(path)
    assert "Plugins" in config.ignored and "LuaScripts" in config.ignored
    assert config.storage_directory.is_absolute()


# --------------------------------------------------------------------------- comments


def test_comments_are_stripped_but_not_inside_strings(tmp_path):
    config = load(
        tmp_path,
        """\
// leading line comment
{
  /* a block comment
     over "two" lines, with a // inside */
  "StorageDirectory": "/srv/pacs/storage", // trailing comment
  "Name": "http://x/y // not a comment /* nor this */",
  "DicomWeb": { "Host": "pacs.example:443" /* inline */ }
}
""",
    )
    assert config.name == "http://x/y // not a comment /* nor this */"
    assert config.dicom_web.host == "pacs.example:443"


def test_strip_json_comments_keeps_positions_and_escapes():
    text = '{"a": "q\\"//x", // c\n "b": /* x\ny */ 1}'
    stripped = strip_json_comments(text)
    assert len(stripped) == len(text)
    assert stripped.count("\n") == text.count("\n")
    assert json.loads(stripped) == {"a": 'q"//x', "b": 1}
    assert strip_json_comments('"http://x"') == '"http://x"'


def test_trailing_commas_are_accepted_like_jsoncpp(tmp_path):
    config = load(tmp_path, '{"StorageDirectory": "/srv/s", "Worklists": {"Enable": false,},\n "Name": "x",}')
    assert config.name == "x"


def test_json_error_reports_line_and_column_after_comments(tmp_path):
    e = error(tmp_path, '{\n  /* comment */ "StorageDirectory": "/srv/s"\n  "Name": "x"\n}')
    assert e.key == "(file)"
    assert e.why == "not valid JSON at line 3, column 3: Expecting ',' delimiter"


def test_unterminated_block_comment(tmp_path):
    e = error(tmp_path, '{"StorageDirectory": "/srv/s"\n  /* oops\n}')
    assert (e.key, e.why) == ("(file)", "unterminated /* comment starting at line 2, column 3")


# --------------------------------------------------------------------------- file errors


def test_missing_file(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: (file): no such file"


@pytest.mark.parametrize(
    ("content", "kind"), [("[1, 2]", "list"), ('"text"', "str"), ("42", "int"), ("null", "NoneType")]
)
def test_top_level_must_be_an_object(tmp_path, content, kind):
    e = error(tmp_path, content)
    assert (e.key, e.why) == ("(file)", f"expected a JSON object at the top level, got {kind}")


def test_not_utf8(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(b'{"Name": "caf\xe9"}')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (info.value.key, info.value.why) == ("(file)", "not UTF-8 text (byte 13)")


def test_utf8_bom_is_skipped(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(b'\xef\xbb\xbf{"StorageDirectory": "/srv/s"}')
    assert load_config(path).storage_directory == Path("/srv/s")


def test_duplicate_key(tmp_path):
    e = error(tmp_path, '{"StorageDirectory": "/a", "DicomPort": 1, "DicomPort": 2}')
    assert (e.key, e.why) == ("DicomPort", "defined twice in the same object")


def test_nan_is_not_json(tmp_path):
    e = error(tmp_path, '{"StorageDirectory": "/a", "StableAge": NaN}')
    assert e.key == "(file)" and "NaN" in e.why


def test_parse_config_rejects_non_object():
    with pytest.raises(ConfigError) as info:
        parse_config([1], "x.json")  # type: ignore[arg-type]
    assert str(info.value) == "x.json: (file): expected a JSON object at the top level, got list"


def test_config_error_attributes_and_pickle():
    e = ConfigError("config.json", "DicomPort", 'expected 0-65535, got "abc"')
    assert (e.path, e.key, e.why) == ("config.json", "DicomPort", 'expected 0-65535, got "abc"')
    assert str(e) == 'config.json: DicomPort: expected 0-65535, got "abc"'
    again = pickle.loads(pickle.dumps(e))
    assert str(again) == str(e) and again.key == "DicomPort"


# --------------------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    ("extra", "key", "why"),
    [
        ({"DicomPrt": 4242}, "DicomPrt", 'unknown key; did you mean "DicomPort"?'),
        ({"dicomport": 4242}, "dicomport", 'unknown key; did you mean "DicomPort"?'),
        ({"Backup": {}}, "Backup", 'unknown key; did you mean "Backups"?'),
        ({"RemoteAccesAllowed": True}, "RemoteAccesAllowed", 'unknown key; did you mean "RemoteAccessAllowed"?'),
        ({"DicomWeb": {"Rot": "/x/"}}, "DicomWeb.Rot", 'unknown key; did you mean "Root"?'),
        ({"Worklists": {"Databse": "/w"}}, "Worklists.Databse", 'unknown key; did you mean "Database"?'),
        (
            {"DicomModalities": {"us1": {"AET": "US1", "Host": "10.0.0.5", "Port": 104, "AllowEko": False}}},
            "DicomModalities.us1.AllowEko",
            'unknown key; did you mean "AllowEcho"?',
        ),
    ],
)
def test_unknown_keys(tmp_path, extra, key, why):
    e = error(tmp_path, with_base(**extra))
    assert (e.key, e.why) == (key, why)


def test_unknown_key_message_format(tmp_path):
    path = write(tmp_path, with_base(DicomPrt=1))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f'{path}: DicomPrt: unknown key; did you mean "DicomPort"?'


# --------------------------------------------------------------------------- ignored keys


def test_ignored_keys_are_reported_with_dotted_names(tmp_path):
    config = load(
        tmp_path,
        with_base(
            LuaScripts=[],
            HttpThreadsCount=50,
            PostgreSQL={"EnableIndex": True},
            DicomWeb={"StowMaxInstances": 10, "Servers": {}},
            Worklists={"Enable": False, "LogMatchedWorklistIds": True},
            DicomModalities={"us1": {"AET": "US1", "Host": "h", "Port": 104, "RetrieveMethod": "C-GET"}},
        ),
    )
    assert config.ignored == (
        "LuaScripts",
        "HttpThreadsCount",
        "PostgreSQL",
        "DicomModalities.us1.RetrieveMethod",
        "DicomWeb.StowMaxInstances",
        "Worklists.LogMatchedWorklistIds",
    )


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("DicomServerEnabled", False, "false is not supported: receiving DICOM is this daemon's purpose"),
        ("HttpServerEnabled", False, "false is not supported: DICOMweb needs the HTTP server"),
        ("SslEnabled", True, "true is not supported: terminate HTTPS in the nginx proxy"),
        ("DicomTlsEnabled", True, "true is not supported yet"),
        ("DicomModalitiesInDatabase", True,
         "true is not supported: modalities are read from DicomModalities in this file"),
        ("StoreDicom", False, "false (index-only mode) is not supported"),
        ("ReadOnly", True, "true is not supported"),
    ],
)
def test_unsupported_values_of_orthanc_keys(tmp_path, key, value, why):
    e = error(tmp_path, with_base(**{key: value}))
    assert (e.key, e.why) == (key, why)
    # With the value this daemon implements, the key is accepted and not "ignored".
    config = load(tmp_path, with_base(**{key: not value}))
    assert key not in config.ignored


def test_storage_compression_true_is_accepted(tmp_path):
    # An Orthanc archive stored compressed is adopted (decompressed once); the
    # daemon logs that new objects are stored uncompressed (issue 14).
    assert load(tmp_path, with_base(StorageCompression=True)).storage_compression is True
    e = error(tmp_path, with_base(StorageCompression="yes"))
    assert e.key == "StorageCompression"


# --------------------------------------------------------------------------- wrong types


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("DicomCheckCalledAet", "yes", 'expected boolean, got "yes"'),
        ("RemoteAccessAllowed", 1, "expected boolean, got 1"),  # int is not a boolean
        ("DicomAlwaysAllowStore", None, "expected boolean, got null"),
        ("DicomThreadsCount", "4", 'expected integer, got "4"'),
        ("MaximumStorageSize", False, "expected integer, got false"),  # bool is not an integer
        ("StableAge", 1.5, "expected integer, got 1.5"),
        ("DicomScpTimeout", 30.0, "expected integer, got 30.0"),
        ("Name", 5, "expected string, got 5"),
        ("StorageDirectory", ["/a"], 'expected string, got ["/a"]'),
        ("DicomWeb", True, "expected object, got true"),
        ("Worklists", "on", 'expected object, got "on"'),
        ("RegisteredUsers", [], "expected object, got []"),
        ("DicomModalities", [], "expected object, got []"),
        ("HttpBindAddresses", "127.0.0.1", 'expected a list of IP addresses, got "127.0.0.1"'),
    ],
)
def test_wrong_types(tmp_path, key, value, why):
    e = error(tmp_path, {**BASE, key: value})
    assert (e.key, e.why) == (key, why)


@pytest.mark.parametrize(
    ("section", "key", "value", "why"),
    [
        ("DicomWeb", "Enable", "true", 'expected boolean, got "true"'),
        ("DicomWeb", "Root", 1, "expected string, got 1"),
        ("Worklists", "LimitAnswers", True, "expected integer, got true"),
        ("Worklists", "FilterIssuerAet", 0, "expected boolean, got 0"),
    ],
)
def test_wrong_types_in_sections_use_dotted_keys(tmp_path, section, key, value, why):
    e = error(tmp_path, with_base(**{section: {key: value}}))
    assert (e.key, e.why) == (f"{section}.{key}", why)


# --------------------------------------------------------------------------- ports


@pytest.mark.parametrize("key", ["DicomPort", "HttpPort"])
@pytest.mark.parametrize(
    ("value", "shown"),
    [("abc", '"abc"'), ("4242", '"4242"'), (True, "true"), (65536, "65536"), (-1, "-1"), (4242.0, "4242.0")],
)
def test_bad_ports(tmp_path, key, value, shown):
    path = write(tmp_path, with_base(**{key: value}))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: {key}: expected 0-65535, got {shown}"


def test_port_zero_means_os_assigned_and_is_accepted(tmp_path):
    config = load(tmp_path, with_base(DicomPort=0, HttpPort=0))
    assert (config.dicom_port, config.http_port) == (0, 0)


def test_http_and_dicom_ports_must_differ(tmp_path):
    e = error(tmp_path, with_base(DicomPort=8042, HttpPort=8042))
    assert (e.key, e.why) == ("HttpPort", "same port as DicomPort (8042)")


# --------------------------------------------------------------------------- ranges


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("MaximumPduLength", 4095, "expected 4096-131072, got 4095"),
        ("MaximumPduLength", 131073, "expected 4096-131072, got 131073"),
        ("DicomScpTimeout", -1, "expected integer >= 0, got -1"),
        ("DicomThreadsCount", 0, "expected integer >= 1, got 0"),
        ("MaximumStorageSize", -5, "expected integer >= 0, got -5"),
        ("MaximumPatientCount", -1, "expected integer >= 0, got -1"),
        ("MaximumStorageMode", "Delete", 'expected one of Recycle, Reject, got "Delete"'),
        ("MaximumStorageMode", "reject", 'expected one of Recycle, Reject, got "reject"; did you mean "Reject"?'),
        ("Name", "  ", "must not be empty"),
        ("StorageDirectory", "", "must not be empty"),
        ("DefaultEncoding", "Latn1", 'expected one of Ascii, Utf8, Latin1, Latin2, Latin3, Latin4, Latin5, '
         'Cyrillic, Windows1251, Arabic, Greek, Hebrew, Thai, Japanese, Chinese, JapaneseKanji, Korean, '
         'SimplifiedChinese, got "Latn1"; did you mean "Latin1"?'),
    ],
)
def test_impossible_values(tmp_path, key, value, why):
    e = error(tmp_path, {**BASE, key: value})
    assert (e.key, e.why) == (key, why)


def test_accepted_range_edges(tmp_path):
    config = load(
        tmp_path,
        with_base(MaximumPduLength=4096, DicomScpTimeout=0, MaximumStorageMode="Reject", DefaultEncoding="utf8"),
    )
    assert config.maximum_pdu_length == 4096
    assert config.dicom_scp_timeout == 0  # Orthanc: 0 = no timeout
    assert config.maximum_storage_mode == "Reject"
    assert config.default_encoding == "Utf8"  # case-insensitive as in Orthanc, canonical spelling kept
    assert load(tmp_path, with_base(MaximumPduLength=131072)).maximum_pdu_length == 131072


@pytest.mark.parametrize(("value", "expected"), [(True, True), (False, False), ("Always", True), ("Never", False)])
def test_overwrite_instances_boolean_and_new_string_forms(tmp_path, value, expected):
    assert load(tmp_path, with_base(OverwriteInstances=value)).overwrite_instances is expected


@pytest.mark.parametrize(
    ("value", "why"),
    [("IfChanged", '"IfChanged" is not supported yet'), (1, 'expected boolean, "Never" or "Always", got 1')],
)
def test_overwrite_instances_refused_values(tmp_path, value, why):
    e = error(tmp_path, with_base(OverwriteInstances=value))
    assert (e.key, e.why) == ("OverwriteInstances", why)


# --------------------------------------------------------------------------- AE titles


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("", "must not be empty"),
        ("A" * 17, 'at most 16 characters, got 17 ("AAAAAAAAAAAAAAAAA")'),
        ("    ", "must not be all spaces (PS3.5 6.2)"),
        ("OR\\THANC", 'must not contain a backslash, got "OR\\\\THANC"'),
        ("ORT\nHANC", 'only printable ASCII characters are allowed (PS3.5 6.2), got "ORT\\nHANC"'),
        ("ÖRTHANC", 'only printable ASCII characters are allowed (PS3.5 6.2), got "ÖRTHANC"'),
        (42, "expected string, got 42"),
    ],
)
def test_bad_dicom_aet(tmp_path, value, why):
    e = error(tmp_path, with_base(DicomAet=value))
    assert (e.key, e.why) == ("DicomAet", why)


def test_aet_padding_spaces_are_not_significant(tmp_path):
    assert load(tmp_path, with_base(DicomAet=" PACS ")).dicom_aet == "PACS"
    assert load(tmp_path, with_base(DicomAet="A" * 16)).dicom_aet == "A" * 16


# --------------------------------------------------------------------------- modalities


def test_modality_forms(tmp_path):
    config = load(
        tmp_path,
        with_base(
            DicomModalities={
                "us1": ["US1", "192.168.1.20", 104],
                "us-2": ["US2", "us2.local", "11112", "GE"],
                "ris_x": {
                    "AET": "RIS",
                    "Host": "10.0.0.9",
                    "Port": 4006,
                    "AllowStore": False,
                    "AllowFindWorklist": True,
                    "AllowNAction": False,
                    "LocalAet": "",
                    "Timeout": 20,
                },
                "sc": {"AET": "SC", "Host": "h", "Port": 1, "AllowNAction": False, "AllowStorageCommitment": True,
                       "LocalAet": "PACS2"},
            }
        ),
    )
    us1, us2, ris, sc = config.dicom_modalities
    assert us1 == Modality(name="us1", aet="US1", host="192.168.1.20", port=104)
    assert (us2.aet, us2.port, us2.manufacturer) == ("US2", 11112, "GE")  # port as string: Orthanc accepts it
    assert ris.allow_store is False and ris.allow_echo is True and ris.allow_find_worklist is True
    assert ris.allow_storage_commitment is False  # N-ACTION refused -> no storage commitment
    assert ris.local_aet is None  # "" is Orthanc's serialisation of "unset"
    assert ris.timeout == 20
    assert sc.allow_storage_commitment is True  # AllowStorageCommitment overrides both (Orthanc)
    assert sc.local_aet == "PACS2"


@pytest.mark.parametrize(
    ("value", "key", "why"),
    [
        (["US1", "h"], "DicomModalities.us1",
         "expected [AET, host, port] or [AET, host, port, manufacturer], got a list of 2 item(s)"),
        (["US1", "h", 104, "GE", "x"], "DicomModalities.us1",
         "expected [AET, host, port] or [AET, host, port, manufacturer], got a list of 5 item(s)"),
        (["US1", "h", "abc"], "DicomModalities.us1[2]", 'expected 1-65535, got "abc"'),
        (["US1", "h", 0], "DicomModalities.us1[2]", "expected 1-65535, got 0"),
        (["US1", "h", True], "DicomModalities.us1[2]", "expected 1-65535, got true"),
        ([104, "h", 104], "DicomModalities.us1[0]", "expected string, got 104"),
        (["THIS-AET-IS-TOO-LONG", "h", 104], "DicomModalities.us1[0]",
         'at most 16 characters, got 20 ("THIS-AET-IS-TOO-LONG")'),
        (["US1", "", 104], "DicomModalities.us1[1]", 'expected a host name or IP address, got ""'),
        (["US1", "h", 104, "Generik"], "DicomModalities.us1[3]",
         'unknown manufacturer "Generik"; did you mean "Generic"?'),
        ("US1 h 104", "DicomModalities.us1",
         'expected [AET, host, port], [AET, host, port, manufacturer] or an object with AET, Host and Port, '
         'got "US1 h 104"'),
        ({"AET": "US1", "Host": "h"}, "DicomModalities.us1.Port", "required in a modality object"),
        ({"AET": "US1", "Host": "h", "Port": 70000}, "DicomModalities.us1.Port", "expected 1-65535, got 70000"),
        ({"AET": "US1", "Host": "h", "Port": 104, "AllowEcho": "no"}, "DicomModalities.us1.AllowEcho",
         'expected boolean, got "no"'),
        ({"AET": "US1", "Host": "h", "Port": 104, "UseDicomTls": True}, "DicomModalities.us1.UseDicomTls",
         "true is not supported yet"),
        ({"AET": "US1", "Host": "h", "Port": 104, "Timeout": -1}, "DicomModalities.us1.Timeout",
         "expected integer >= 0, got -1"),
        ({"AET": "US\\1", "Host": "h", "Port": 104}, "DicomModalities.us1.AET",
         'must not contain a backslash, got "US\\\\1"'),
    ],
)
def test_bad_modalities(tmp_path, value, key, why):
    e = error(tmp_path, with_base(DicomModalities={"us1": value}))
    assert (e.key, e.why) == (key, why)


def test_modality_name_follows_orthanc_rule(tmp_path):
    e = error(tmp_path, with_base(DicomModalities={"us 1": ["US1", "h", 104]}))
    assert e.key == "DicomModalities.us 1"
    assert e.why == 'a modality name may only contain letters, digits, "-" and "_" (as in Orthanc)'


# --------------------------------------------------------------------------- HTTP security


def test_authentication_defaults_follow_remote_access(tmp_path):
    # Orthanc >= 1.5.8: absent AuthenticationEnabled equals RemoteAccessAllowed.
    local = load(tmp_path, with_base())
    assert (local.remote_access_allowed, local.authentication_enabled) == (False, False)
    remote = load(tmp_path, with_base(RemoteAccessAllowed=True, RegisteredUsers={"emr": "s3cret"}))
    assert (remote.remote_access_allowed, remote.authentication_enabled) == (True, True)
    explicit = load(tmp_path, with_base(RemoteAccessAllowed=True, AuthenticationEnabled=False))
    assert explicit.authentication_enabled is False


def test_authentication_without_users_is_refused(tmp_path):
    e = error(tmp_path, with_base(RemoteAccessAllowed=True))
    assert e.key == "RegisteredUsers"
    assert e.why.startswith("authentication is enabled but no user is declared")


@pytest.mark.parametrize(
    ("users", "key", "why"),
    [
        ({"emr": 1234}, "RegisteredUsers.emr", "expected string (the password), got 1234"),
        ({"emr": ""}, "RegisteredUsers.emr", "empty password"),
        ({"e:mr": "x"}, "RegisteredUsers.e:mr",
         'a user name must be non-empty and must not contain ":" (HTTP Basic, RFC 7617)'),
    ],
)
def test_bad_registered_users(tmp_path, users, key, why):
    e = error(tmp_path, with_base(RegisteredUsers=users))
    assert (e.key, e.why) == (key, why)


def test_http_bind_addresses(tmp_path):
    config = load(tmp_path, with_base(HttpBindAddresses=["127.0.0.1", "::1"]))
    assert config.http_bind_addresses == ("127.0.0.1", "::1")


# --------------------------------------------------------------------------- DicomWeb


def test_dicomweb_normalisation(tmp_path):
    web = load(
        tmp_path,
        with_base(DicomWeb={"Root": "pacs/dicom-web", "WadoRoot": "wado/", "Host": "pacs.clinic:443", "Ssl": True,
                            "StudiesMetadata": "MainDicomTags"}),
    ).dicom_web
    assert web.root == "/pacs/dicom-web/"
    assert web.public_root == "/pacs/dicom-web/"  # defaults to Root (plugin semantics)
    assert web.wado_root == "/wado"
    assert (web.host, web.ssl) == ("pacs.clinic:443", True)
    assert (web.studies_metadata, web.series_metadata) == ("MainDicomTags", "Full")
    assert load(tmp_path, with_base()).dicom_web == DicomWebConfig()


def test_maximum_stow_body_size(tmp_path):
    assert load(tmp_path, with_base()).dicom_web.maximum_stow_body_size == 4096  # MB
    web = load(tmp_path, with_base(DicomWeb={"MaximumStowBodySize": 0})).dicom_web
    assert web.maximum_stow_body_size == 0  # no limit
    e = error(tmp_path, with_base(DicomWeb={"MaximumStowBodySize": -1}))
    assert (e.key, e.why) == ("DicomWeb.MaximumStowBodySize", "expected integer >= 0, got -1")
    e = error(tmp_path, with_base(DicomWeb={"MaximumStowBodySize": "1GB"}))
    assert (e.key, e.why) == ("DicomWeb.MaximumStowBodySize", 'expected integer, got "1GB"')


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("Host", "https://pacs.clinic", 'expected host or host:port (no scheme, no path), got "https://pacs.clinic"'),
        ("Root", "/dicom web/", 'expected a plain URL path like "/dicom-web/", got "/dicom web/"'),
        ("WadoRoot", "/", 'expected a URL path below "/", like "/wado"'),
        ("StudiesMetadata", "full", 'expected one of Full, MainDicomTags, Extrapolate, Experimental, got "full"; '
         'did you mean "Full"?'),
    ],
)
def test_bad_dicomweb_values(tmp_path, key, value, why):
    e = error(tmp_path, with_base(DicomWeb={key: value}))
    assert (e.key, e.why) == (f"DicomWeb.{key}", why)


# --------------------------------------------------------------------------- Worklists


def test_worklists_directory_is_a_synonym_of_database(tmp_path):
    wl = load(tmp_path, with_base(Worklists={"Enable": True, "Directory": "/w", "LimitAnswers": 50,
                                             "FilterIssuerAet": True, "DeleteWorklistsOnStableStudy": True})).worklists
    assert wl == WorklistsConfig(enable=True, database=Path("/w"), filter_issuer_aet=True, limit_answers=50,
                                 delete_worklists_on_stable_study=True)
    both = load(tmp_path, with_base(Worklists={"Enable": True, "Directory": "/w", "Database": "/w/"})).worklists
    assert both.database == Path("/w")
    assert load(tmp_path, with_base()).worklists == WorklistsConfig()  # disabled by default, as in Orthanc


def test_worklist_cleanup_and_mpps_options(tmp_path):
    # DeleteWorklistsDelay: Orthanc's key (hours), applied to the folder here.
    wl = load(tmp_path, with_base(Worklists={"Enable": True, "Directory": "/w",
                                             "DeleteWorklistsDelay": 24})).worklists
    assert wl.delete_worklists_delay == 24
    assert load(tmp_path, with_base()).mpps == MppsConfig(enable=True, archive_finished_worklists=True)
    mpps = load(tmp_path, with_base(Mpps={"Enable": False, "ArchiveFinishedWorklists": False})).mpps
    assert mpps == MppsConfig(enable=False, archive_finished_worklists=False)
    e = error(tmp_path, with_base(Mpps={"ArchiveFinished": True}))
    assert (e.key, e.why) == ("Mpps.ArchiveFinished", 'unknown key; did you mean "ArchiveFinishedWorklists"?')
    e = error(tmp_path, with_base(Mpps={"Enable": "yes"}))
    assert (e.key, e.why) == ("Mpps.Enable", 'expected boolean, got "yes"')
    e = error(tmp_path, with_base(Mpps=[]))
    assert (e.key, e.why) == ("Mpps", "expected object, got []")


@pytest.mark.parametrize(
    ("section", "key", "why"),
    [
        ({"DeleteWorklistsDelay": -1}, "Worklists.DeleteWorklistsDelay", "expected integer >= 0, got -1"),
        ({"Enable": True}, "Worklists.Database", 'required when Worklists.Enable is true ("Directory" also accepted)'),
        ({"Database": "/a", "Directory": "/b"}, "Worklists.Directory",
         'differs from Worklists.Database ("/a"); keep one'),
        ({"SaveInOrthancDatabase": True}, "Worklists.SaveInOrthancDatabase",
         "true is not supported: worklists are served from the Database/Directory folder"),
        ({"LimitAnswers": -1}, "Worklists.LimitAnswers", "expected integer >= 0, got -1"),
        ({"HousekeepingInterval": 0}, "Worklists.HousekeepingInterval", "expected integer >= 1, got 0"),
        ({"Database": ""}, "Worklists.Database", "must not be empty"),
    ],
)
def test_bad_worklists(tmp_path, section, key, why):
    e = error(tmp_path, with_base(Worklists=section))
    assert (e.key, e.why) == (key, why)


# --------------------------------------------------------------------------- paths


def test_relative_paths_are_relative_to_the_config_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the process's folder must not matter
    etc = tmp_path / "etc" / "pacs"
    path = write(
        etc,
        {"StorageDirectory": "data/storage", "IndexDirectory": "../index",
         "Worklists": {"Enable": True, "Database": "./wl"}},
    )
    config = load_config(path)
    assert config.storage_directory == etc / "data" / "storage"
    assert config.index_directory == tmp_path / "etc" / "index"
    assert config.worklists.database == etc / "wl"
    # Same rule when the config path itself is relative.
    monkeypatch.chdir(etc)
    assert load_config("config.json").storage_directory == etc / "data" / "storage"


def test_directory_defaults(tmp_path):
    config = load(tmp_path, {})
    # Orthanc's default "OrthancStorage", next to the file; index defaults to the storage.
    assert config.storage_directory == tmp_path / "OrthancStorage"
    assert config.index_directory == config.storage_directory
    # Temporary files live inside the storage folder: same filesystem, atomic rename.
    assert config.temporary_directory == tmp_path / "OrthancStorage" / ".tmp"


@pytest.mark.parametrize(
    ("tmp", "why"),
    [
        ("/srv/pacs/storage", 'must not contain StorageDirectory ("/srv/pacs/storage"): it is emptied at start-up'),
        ("/srv/pacs", 'must not contain StorageDirectory ("/srv/pacs/storage"): it is emptied at start-up'),
    ],
)
def test_temporary_directory_must_not_contain_data(tmp_path, tmp, why):
    e = error(tmp_path, with_base(TemporaryDirectory=tmp))
    assert (e.key, e.why) == ("TemporaryDirectory", why)


def test_temporary_directory_must_not_contain_index(tmp_path):
    e = error(tmp_path, with_base(IndexDirectory="/srv/tmp/index", TemporaryDirectory="/srv/tmp"))
    assert e.why == 'must not contain IndexDirectory ("/srv/tmp/index"): it is emptied at start-up'


# --------------------------------------------------------------------------- folder of files


def test_folder_of_json_files_is_merged_like_orthanc(tmp_path):
    folder = tmp_path / "orthanc"
    write(folder, '{"StorageDirectory": "db", "DicomAet": "CLINIC"}', "orthanc.json")
    write(folder, '{"DicomWeb": {"Root": "/dw/"}} // plugin file', "dicomweb.json")
    write(folder, '{"Worklists": {"Enable": true, "Database": "wl"}}', "worklists.json")
    write(folder, "not json, but not .json either", "README")
    config = load_config(folder)
    assert config.source == str(folder)
    assert config.dicom_aet == "CLINIC"
    assert config.dicom_web.root == "/dw/"
    assert config.storage_directory == folder / "db"  # relative to the folder itself
    assert config.worklists.database == folder / "wl"


def test_folder_errors_name_the_right_file(tmp_path):
    folder = tmp_path / "orthanc"
    write(folder, '{"StorageDirectory": "db"}', "a.json")
    write(folder, '{"DicomPort": "x"}', "b.json")
    with pytest.raises(ConfigError) as info:
        load_config(folder)
    assert str(info.value) == f'{folder / "b.json"}: DicomPort: expected 0-65535, got "x"'

    write(folder, '{"StorageDirectory": "other"}', "b.json")
    with pytest.raises(ConfigError) as info:
        load_config(folder)
    assert str(info.value) == f'{folder / "b.json"}: StorageDirectory: also defined in {folder / "a.json"}'


def test_empty_folder(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value) == f"{tmp_path}: (file): no .json file in this folder"


def test_copy_of_debian_folder_loads(tmp_path):
    # Debian runs "Orthanc /etc/orthanc/": the shipped orthanc.json, dicomweb.json and
    # worklists.json together must load unchanged.
    names = ["orthanc.json", "dicomweb.json", "worklists.json"]
    missing = [n for n in names if not (Path("/etc/orthanc") / n).is_file()]
    assert not missing, f"/etc/orthanc lacks {missing}: tests/run.sh installs orthanc and orthanc-dicomweb"
    for name in names:
        shutil.copy(Path("/etc/orthanc") / name, tmp_path / name)
    config = load_config(tmp_path)
    assert config.dicom_web.enable is True
    assert config.dicom_web.host == "localhost"


# --------------------------------------------------------------------------- embedded defaults


def test_default_config(tmp_path):
    config = default_config(tmp_path)
    data = tmp_path / "pacs-data"
    assert config.source is None
    assert config.embedded_defaults is True
    assert config.storage_directory == data / "storage"
    assert config.index_directory == data / "index"
    assert config.temporary_directory == data / "tmp"
    assert config.worklists.enable is True and config.worklists.database == data / "worklists"
    assert config.remote_access_allowed is False  # HTTP on localhost only
    assert config.authentication_enabled is False
    assert dict(config.registered_users) == {}
    assert (config.dicom_aet, config.dicom_port, config.http_port) == ("ORTHANC", 4242, 8042)
    assert config.ignored == ()


def test_default_config_uses_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert default_config().storage_directory == tmp_path / "pacs-data" / "storage"


def test_temporary_directory_must_not_contain_worklists(tmp_path):
    e = error(tmp_path, with_base(TemporaryDirectory="/srv/tmp", Worklists={"Database": "/srv/tmp/wl"}))
    assert (e.key, e.why) == (
        "TemporaryDirectory", 'must not contain Worklists.Database ("/srv/tmp/wl"): it is emptied at start-up'
    )


def test_http_bind_addresses_must_be_ip_addresses(tmp_path):
    e = error(tmp_path, with_base(HttpBindAddresses=["127.0.0.1", "localhost"]))
    assert (e.key, e.why) == ("HttpBindAddresses[1]", 'expected an IP address, got "localhost"')


# --------------------------------------------------------------------------- DiskMonitor, Backups


def test_disk_monitor_and_backups_defaults(tmp_path):
    config = load(tmp_path, with_base(IndexDirectory="/srv/pacs/index"))
    assert config.disk_monitor.interval_seconds == 30
    assert (config.disk_monitor.warn_percent, config.disk_monitor.critical_percent) == (80, 90)
    assert config.disk_monitor.minimum_free_mb == 500
    b = config.backups
    assert b.directory == Path("/srv/pacs/index/backups") and b.directory_is_default
    assert (b.interval_hours, b.at, b.keep, b.storage_mirror) == (24, None, 7, None)


def test_disk_monitor_and_backups_sections(tmp_path):
    config = load(tmp_path, with_base(
        DiskMonitor={"IntervalSeconds": 5, "WarnPercent": 70, "CriticalPercent": 70,
                     "MinimumFreeMB": 0},
        Backups={"Directory": "backups", "IntervalHours": 0.5, "At": "02:30", "Keep": 3,
                 "StorageMirror": "/mnt/usb/mirror"}))
    assert config.disk_monitor.interval_seconds == 5
    assert config.disk_monitor.minimum_free_mb == 0
    b = config.backups
    assert b.directory == tmp_path / "backups" and not b.directory_is_default
    assert (b.interval_hours, b.at, b.keep) == (0.5, (2, 30), 3)
    assert b.storage_mirror == Path("/mnt/usb/mirror")
    assert load(tmp_path, with_base(Backups={"At": None})).backups.at is None


@pytest.mark.parametrize("section, value, key, why", [
    ("DiskMonitor", {"WarnPercent": 0}, "DiskMonitor.WarnPercent", "expected 1-100, got 0"),
    ("DiskMonitor", {"CriticalPercent": 101}, "DiskMonitor.CriticalPercent", "expected 1-100, got 101"),
    ("DiskMonitor", {"WarnPercent": 95}, "DiskMonitor.CriticalPercent",
     "must not be below WarnPercent (95), got 90"),
    ("DiskMonitor", {"IntervalSeconds": 0}, "DiskMonitor.IntervalSeconds", "expected 1-3600, got 0"),
    ("DiskMonitor", {"MinimumFreeMB": -1}, "DiskMonitor.MinimumFreeMB", "expected integer >= 0, got -1"),
    ("DiskMonitor", {"MinimumFreeMb": 1}, "DiskMonitor.MinimumFreeMb",
     'unknown key; did you mean "MinimumFreeMB"?'),
    ("DiskMonitor", 5, "DiskMonitor", "expected object, got 5"),
    ("Backups", {"IntervalHours": "24"}, "Backups.IntervalHours", 'expected a number of hours, got "24"'),
    ("Backups", {"IntervalHours": -1}, "Backups.IntervalHours",
     "expected 0 (no scheduled backups) to 8784, got -1"),
    ("Backups", {"At": "2:30"}, "Backups.At", 'expected a time of day "HH:MM" (00:00-23:59), got "2:30"'),
    ("Backups", {"At": "24:00"}, "Backups.At", 'expected a time of day "HH:MM" (00:00-23:59), got "24:00"'),
    ("Backups", {"At": "02:00", "IntervalHours": 0}, "Backups.At",
     "has no effect with IntervalHours 0 (no scheduled backups)"),
    ("Backups", {"Keep": 0}, "Backups.Keep", "expected 1-1000, got 0"),
    ("Backups", {"Directory": ""}, "Backups.Directory", "must not be empty"),
    ("Backups", {"StorageMirror": "/srv/pacs/storage/mirror"}, "Backups.StorageMirror",
     'must be outside StorageDirectory ("/srv/pacs/storage")'),
    ("Backups", {"Directory": "/mnt/usb", "StorageMirror": "/mnt/usb/mirror"}, "Backups.StorageMirror",
     'must be outside Backups.Directory ("/mnt/usb")'),
    ("Backups", {"Interval": 1}, "Backups.Interval", 'unknown key; did you mean "IntervalHours"?'),
])
def test_bad_disk_monitor_and_backups(tmp_path, section, value, key, why):
    e = error(tmp_path, with_base(**{section: value}))
    assert (e.key, e.why) == (key, why)


def test_temporary_directory_must_not_contain_backups(tmp_path):
    e = error(tmp_path, with_base(TemporaryDirectory="/srv/tmp", Backups={"Directory": "/srv/tmp/b"}))
    assert (e.key, e.why) == (
        "TemporaryDirectory", 'must not contain Backups.Directory ("/srv/tmp/b"): it is emptied at start-up'
    )


def test_validated_keys_without_effect_are_reported_ignored(tmp_path):
    config = load(tmp_path, {"DefaultEncoding": "Utf8", "DicomScuTimeout": 5,
                             "DicomWeb": {"StudiesMetadata": "MainDicomTags"}})
    assert {"DefaultEncoding", "DicomWeb.StudiesMetadata"} <= set(config.ignored)
    assert "DicomScuTimeout" not in config.ignored  # the send queue's associations use it
    with pytest.raises(ConfigError):
        load(tmp_path, {"DicomScuTimeout": "soon"})


def test_shipped_config_template_loads(tmp_path):
    """etc/config.json (the package's config, password placeholder filled in)."""
    template = Path(__file__).resolve().parent.parent / "etc" / "config.json"
    text = template.read_text().replace("@EMR_PASSWORD@", "s3cret-from-postinst")
    config = load(tmp_path, text)
    assert config.authentication_enabled and dict(config.registered_users) == {"emr": "s3cret-from-postinst"}
    assert config.ignored == ()
    assert config.worklists.enable and config.backups.keep == 7


# --------------------------------------------------------------------------- declarations


def test_every_key_and_field_is_declared_with_a_doc():
    """Each key is declared once, on its field: no field without a declaration, no key
    without a doc, no key both declared and ignored (the import refuses them too)."""
    sections = declarations()
    assert {s.cls for s in sections} == {Config, DicomWebConfig, WorklistsConfig, MppsConfig,
                                         DiskMonitorConfig, BackupsConfig, Modality,
                                         cfg.DicomWebServer, cfg.ForwardingConfig,
                                         cfg.ForwardingRule}
    for section in sections:
        assert section.problems() == [], section.cls
        assert section.undeclared == ()
        for key in section.keys:
            assert key.doc.strip() and "|" not in key.doc, (section.cls, key.name)  # a table cell
        assert not set(section.names) & section.ignored


def test_declaration_problems_are_found():
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Bad:
        port: int = cfg._key("Port", 1, cfg._port, "The port.")
        host: str = cfg._key("Host", "h", cfg._host, " ")
        again: str = cfg._key("Port", "x", cfg._text, "The same name twice.")
        root: str = cfg._key("Root", cfg._COMPUTED, cfg._text, "A default computed, not described.",
                             default_from=lambda obj: "/")
        forgotten: int = 0
        plugins: tuple = cfg._key("Plugins", (), cfg._text, "Declared, and ignored too.")

    problems = Section.declare(Bad, ignored=frozenset({"Plugins"})).problems()
    assert problems == [
        "test_declaration_problems_are_found.<locals>.Bad.forgotten: a field without a declaration "
        "(_key, _section or _derived)",
        "test_declaration_problems_are_found.<locals>.Bad: Host: no doc",
        "test_declaration_problems_are_found.<locals>.Bad: Port: declared twice",
        "test_declaration_problems_are_found.<locals>.Bad: Root: a computed default without default_doc",
        "test_declaration_problems_are_found.<locals>.Bad: Plugins: both declared and ignored",
    ]
    with pytest.raises(TypeError, match="config declarations: .*forgotten"):
        cfg._declared(ignored=frozenset({"Plugins"}))(Bad)


def _json_default(key):
    value = key.default
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return dict(value) if isinstance(value, Mapping) else value


def test_keys_given_at_their_declared_defaults_change_nothing(tmp_path):
    """The parser's defaults are the declared ones, and every declared key is accepted."""
    written = dict(BASE)
    for key in cfg.declaration(Config).keys:
        if key.section is not None or key.default_from is not None or key.default is None:
            continue
        written.setdefault(key.name, _json_default(key))
    for name, cls in [("DicomWeb", DicomWebConfig), ("Worklists", WorklistsConfig), ("Mpps", MppsConfig),
                      ("DiskMonitor", DiskMonitorConfig), ("Backups", BackupsConfig),
                      ("Forwarding", cfg.ForwardingConfig)]:
        written[name] = {key.name: _json_default(key) for key in cfg.declaration(cls).keys
                         if key.default_from is None and key.default is not None
                         and not (key.section is not None and key.each)}
    written["DicomModalities"] = {"us1": {
        **{key.name: _json_default(key) for key in cfg.declaration(Modality).keys
           if not key.required and key.default_from is None and key.default is not None},
        "AET": "US1", "Host": "h", "Port": 104}}
    given = load(tmp_path, written)
    assert dataclasses.replace(given, dicom_modalities=(), ignored=()) == load(tmp_path, BASE)
    assert given.dicom_modalities == (Modality(name="us1", aet="US1", host="h", port=104),)
    assert given.ignored == ("DicomWeb.StudiesMetadata", "DicomWeb.SeriesMetadata",
                             "DefaultEncoding", "HttpRequestTimeout")  # validated, no effect yet


def test_sections_read_as_their_dataclass_defaults(tmp_path):
    config = load(tmp_path, BASE)
    assert (config.dicom_web, config.worklists, config.mpps, config.disk_monitor) == (
        DicomWebConfig(), WorklistsConfig(), MppsConfig(), DiskMonitorConfig())
    # Backups.Directory's default depends on IndexDirectory; the dataclass's is None.
    assert dataclasses.replace(config.backups, directory=None) == BackupsConfig()


def test_reference_lists_every_key():
    text = reference()
    for name in ["DicomPort", "DicomWeb.Root", "Worklists.Database", "Worklists.SaveInOrthancDatabase",
                 "DicomModalities.<name>.AllowNAction", "Backups.StorageMirror", "Mpps.Enable"]:
        assert f"`{name}`" in text
    assert "| `DicomPort` | 4242 | integer 0-65535 |" in text
    assert "| `IndexDirectory` | StorageDirectory |" in text
    assert "`Plugins`" in text and "`DicomWeb.StowMaxSize`" in text
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(rows) == sum(len(section.keys) for section in declarations())


def test_view_is_the_slice_a_component_reads(tmp_path):
    @dataclasses.dataclass(frozen=True)
    class Slice:
        dicom_aet: str
        dicom_web: DicomWebConfig

    config = load(tmp_path, with_base(DicomAet="PACS"))
    assert config.view(Slice) == Slice(dicom_aet="PACS", dicom_web=config.dicom_web)


def test_component_views_name_config_fields():
    """The views the daemon builds with Config.view have Config's names and types."""
    from appliance.ops.backup import BackupSettings
    from appliance.web.common import WebConfig

    types = {f.name: f.type for f in dataclasses.fields(Config)}
    for view in (WebConfig, BackupSettings):
        for f in dataclasses.fields(view):
            assert types.get(f.name) == f.type, (view.__name__, f.name)
