"""``pacs-appliance send --to NAME UID...`` and ``pacs-appliance queue [list|retry|cancel]``.

Both open the index's queue themselves (``appliance.store.open_outbox``), so they
work whether the daemon runs or not: a running daemon's workers pick up what
``send`` queued within a second; a stopped one sends it when it starts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from appliance.config import Config

COMMANDS = ("send", "queue")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``send`` and ``queue`` to the CLI's sub-parsers."""
    send = sub.add_parser("send", help="queue studies, series or instances for a destination")
    send.add_argument("--config", metavar="PATH", help="the daemon's config file")
    send.add_argument("--to", required=True, metavar="NAME",
                      help="a DicomModalities or DicomWeb.Servers name")
    send.add_argument("uids", nargs="+", metavar="UID", help="study, series or SOP instance UIDs")
    queue = sub.add_parser("queue", help="show, retry or cancel what is queued for sending")
    actions = queue.add_subparsers(dest="queue_command", metavar="ACTION")
    for name, text in (("list", "what is queued, per destination"),
                       ("retry", "try the queued items again now (cancelled ones too)"),
                       ("cancel", "cancel queued items")):
        p = actions.add_parser(name, help=text)
        p.add_argument("--config", metavar="PATH", help="the daemon's config file")
        if name == "list":
            p.add_argument("--items", action="store_true", help="also list the queued items")
            p.add_argument("--json", action="store_true", help="print JSON")
        else:
            p.add_argument("--to", metavar="NAME", help="only this destination")
            p.add_argument("--task", type=int, metavar="ID", help="only this task")
            p.add_argument("--item", type=int, metavar="ID",
                           help="only this item (the #ID of queue list --items)")
    queue.set_defaults(queue_command="list", items=False, json=False, config=None)


def _destinations(config: Config) -> list[str]:
    return [m.name for m in config.dicom_modalities] + [s.name for s in config.dicom_web.servers]


def run(args: argparse.Namespace, config: Config) -> int:
    """Run ``send`` or ``queue``; the exit code (0 done, 1 failed, 2 bad destination)."""
    from appliance.store import UnknownResources, open_outbox

    if args.command == "send" and args.to not in _destinations(config):
        print(f"pacs-appliance: send: unknown destination {args.to!r} (neither a DicomModalities "
              f"nor a DicomWeb.Servers name)", file=sys.stderr)
        return 2
    with open_outbox(config.index_directory) as outbox:
        if args.command == "send":
            try:
                task, count = outbox.request(args.to, args.uids)
            except UnknownResources as e:
                print(f"pacs-appliance: send: nothing stored with UID {', '.join(e.uids)}",
                      file=sys.stderr)
                return 1
            print(f"task {task}: {count} instance(s) queued for {args.to}")
            return 0
        if args.queue_command == "list":
            summary = outbox.summary()
            items = outbox.items(limit=1000) if args.items else []
            if args.json:
                print(json.dumps({"destinations": summary, "items": items}, indent=2))
            else:
                print(_text(summary, items, _destinations(config)))
            return 0
        change = outbox.retry if args.queue_command == "retry" else outbox.cancel
        n = change(args.to, args.task, args.item)
        print(f"{n} item(s) {'due now' if args.queue_command == 'retry' else 'cancelled'}")
        return 0


def _ago(t: float | None, now: float) -> str:
    return "-" if t is None else f"{max(0.0, now - t):.0f} s"


def _text(summary: list[dict], items: list[dict], configured: list[str]) -> str:
    now = time.time()
    lines = []
    for d in summary:
        unknown = "" if d["destination"] in configured else " (not configured)"
        line = (f"{d['destination']}{unknown}: {d['pending']} pending, {d['failing']} failing, "
                f"{d['sent']} sent, {d['dropped']} dropped, {d['cancelled']} cancelled")
        if d["waiting_stable"]:
            line += f", {d['waiting_stable']} waiting for a stable study"
        if d.get("held"):
            line += f", {d['held']} held behind a failing instance of their study"
        if d["pending"]:
            line += f"; oldest {_ago(d['oldest'], now)}"
            if d["failing"]:
                line += (f", attempt {d['attempts']} failed, next in "
                         f"{max(0.0, d['next_attempt'] - now):.0f} s: {d['last_error']}")
        lines.append(line)
    if not lines:
        lines.append("nothing queued")
    for i in items:
        when = (f"waits for #{i['held_by']} (order per study)" if i.get("held_by") else
                f"next in {max(0.0, i['next_attempt'] - now):.0f} s")
        lines.append(f"  #{i['id']} {i['destination']} {i['kind']} {i['origin']} "
                     f"{i['sop_instance_uid']} attempts {i['attempts']}, {when}"
                     + (f": {i['last_error']}" if i["last_error"] else ""))
    return "\n".join(lines)
