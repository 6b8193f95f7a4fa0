"""How an Orthanc adoption's progress (and an import's) reads: one text for
``pacs-appliance status``, the status page and the ``import-orthanc`` command,
and its ``/metrics`` families. Pure: it formats the ``adoption`` part of a status
snapshot (appliance.ops.adopt.Progress.snapshot)."""

from __future__ import annotations

from appliance.ops.disk import human_bytes

# Why an instance adopted by reference is listed although kept (appliance.ops.adopt).
MISSING = "Orthanc's file is missing"

# States of a pass that is not over yet.
RUNNING = ("reading", "adopting", "verifying")


def adopted_count(n: dict[str, int]) -> int:
    """The instances a pass made part of the archive, from its counts by outcome."""
    return sum(n.get(k, 0) for k in ("linked", "referenced", "copied", "decompressed"))


def adoption_text(a: dict | None) -> str | None:
    """One line on the adoption, or None when there is no Orthanc archive."""
    if not a or a.get("state") in (None, "none", "idle"):
        return None
    n, b = a["instances"], a["bytes"]
    adopted = adopted_count(n)
    if a["state"] == "verifying":
        text = (f"every instance of Orthanc's archive visible; comparing with Orthanc's MD5: "
                f"{a.get('verified', 0)} files")
    elif a["state"] in ("reading", "adopting"):
        eta = a.get("eta_seconds")
        text = (f"adopting Orthanc's archive: {a['done']}/{a['total']} ({a['percent']:.0f}%)"
                + (f", {a['rate']:.0f}/s" if a.get("rate") else "")
                + (f", ETA {eta:.0f} s" if eta is not None else ""))
    elif a["state"] == "failed":
        text = f"adopting Orthanc's archive FAILED: {a.get('error')}"
    elif a["state"] == "stopped":
        text = f"adoption of Orthanc's archive stopped at {a['done']}/{a['total']}"
    else:
        text = f"Orthanc's archive adopted: {adopted} new instance(s) this pass"
    text += (f"; {n['linked']} linked ({human_bytes(b['linked'])}), "
             f"{n['referenced']} referenced ({human_bytes(b['referenced'])}), {n['copied']} copied, "
             f"{n['decompressed']} decompressed ({human_bytes(b['decompressed'])}), "
             f"{n['duplicate']} already here, {n['unreadable']} unreadable")
    if a.get("gone"):
        text += f"; {a['gone']} forgotten (Orthanc deleted their files since)"
    if a.get("missing"):
        text += f"; {a['missing']} with Orthanc's file missing (kept, not served)"
    return text


def import_texts(runs: list[dict] | None) -> list[str]:
    """One line per ``pacs-appliance import`` run feeding the daemon (the
    ``imports`` part of a status snapshot, appliance.web.instances.ImportRuns)."""
    return [f"import: {r['done']}/{r['total'] or '?'} files, {r['stored']} stored, "
            f"{r['duplicates']} already here, {r['refused']} refused "
            f"({human_bytes(r['bytes'])}, {r['rate']:.0f} files/s)" for r in runs or ()]


def adoption_metrics(a: dict | None) -> list[tuple[str, str, str, list[tuple[dict | None, float | int | None]]]]:
    """(name, type, help, samples) of the adoption's /metrics families."""
    if not a or a.get("state") in (None, "none"):
        return []
    return [
        ("pacs_adoption_total", "gauge", "Orthanc attachments the current adoption pass has to adopt.",
         [(None, a["total"])]),
        ("pacs_adoption_done", "gauge", "Orthanc attachments the current adoption pass has done.",
         [(None, a["done"])]),
        ("pacs_adoption_rate", "gauge", "Attachments adopted per second in the current pass.",
         [(None, a.get("rate") or 0)]),
        ("pacs_adoption_eta_seconds", "gauge", "Seconds left in the current adoption pass (NaN: none).",
         [(None, a.get("eta_seconds"))]),
        ("pacs_adoption_running", "gauge", "1 while an adoption pass runs.",
         [(None, 1 if a["state"] in RUNNING else 0)]),
        ("pacs_adoption_instances", "gauge", "Attachments of the current pass by outcome.",
         [({"outcome": k}, v) for k, v in sorted(a["instances"].items())]),
        ("pacs_adoption_bytes", "gauge", "Bytes of the current pass by outcome.",
         [({"outcome": k}, v) for k, v in sorted(a["bytes"].items())]),
        ("pacs_adoption_references_without_file", "gauge",
         "Instances adopted by reference whose Orthanc file is gone: forgotten this pass "
         "(Orthanc deleted them) or kept (Orthanc still lists them).",
         [({"what": "forgotten"}, a.get("gone", 0)), ({"what": "kept"}, a.get("missing", 0))]),
    ]
