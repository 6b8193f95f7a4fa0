"""The ``pacs-appliance`` command line. ``main()`` returns an exit code."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import threading

from appliance import __version__
from appliance.ops import adopt_command
from appliance.ops import commands as ops_commands
from appliance.ops import manage as manage_commands
from appliance.outbound import commands as outbound_commands
from appliance.worklist import commands as worklist_commands

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_IN_USE = 2   # another pacs-appliance holds the data folders (appliance.ops.lock)

log = logging.getLogger("appliance")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pacs-appliance", description="A mini-PACS for small clinics.")
    p.add_argument("--version", action="version", version=f"pacs-appliance {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the daemon")
    serve.add_argument("--config", metavar="PATH",
                       help="Orthanc-format JSON config (default: embedded defaults, data in ./pacs-data)")
    serve.add_argument("--debug", action="store_true", help="log at DEBUG level")
    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("--config", metavar="PATH", help="the file to check")
    sub.add_parser("version", help="print the version")
    hashp = sub.add_parser("hash-password",
                           help="print a salted hash of a password (read from stdin) for RegisteredUsers")
    hashp.add_argument("--iterations", type=int, metavar="N", default=None,
                       help="PBKDF2 iterations (default 600000)")
    worklist_commands.add_parser(sub)
    ops_commands.add_parsers(sub)
    manage_commands.add_parsers(sub)
    outbound_commands.add_parsers(sub)
    adopt_command.add_parser(sub)
    return p


def _load(path: str | None):
    """The config at ``path``, or the embedded defaults."""
    from appliance.config import default_config, load_config

    return load_config(path) if path else default_config()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script and of ``python -m appliance``."""
    try:
        code = _main(argv)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # `status --json | head`: the reader left; what it did not read is not an
        # error to report. Python would complain once more flushing stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _main(argv: list[str] | None) -> int:
    from appliance import lazyimports
    from appliance.config import ConfigError

    # Every verb, not only serve: the pixel stack loads on first use, so `queue list` or
    # `status` does not pay ~0.2 s and ~20 MB for numpy that it never touches.
    lazyimports.install()
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return EXIT_FAILURE
    if args.command == "version":
        print(f"pacs-appliance {__version__}")
        return EXIT_OK
    if args.command == "hash-password":
        return _hash_password(args.iterations)
    try:
        config = _load(args.config)
    except ConfigError as e:
        print(f"pacs-appliance: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check-config":
        where = config.source or "embedded defaults"
        from appliance.ops.checks import missing_folders

        problems = missing_folders(config)
        for problem in problems:
            print(f"pacs-appliance: {where}: {problem}", file=sys.stderr)
        if problems:
            return EXIT_CONFIG
        print(f"{where}: OK ({len(config.dicom_modalities)} modalities, "
              f"{len(config.ignored)} Orthanc keys ignored)")
        return EXIT_OK
    if args.command == "worklist":
        return worklist_commands.run(args, config)
    if args.command in ops_commands.COMMANDS:
        return ops_commands.run(args, config)
    if args.command in manage_commands.COMMANDS:
        return manage_commands.run(args, config)
    if args.command in outbound_commands.COMMANDS:
        return outbound_commands.run(args, config)
    if args.command == adopt_command.COMMAND:
        return adopt_command.run(args, config)
    return _serve(config, debug=args.debug)


def _hash_password(iterations: int | None) -> int:
    """Read a password (no echo on a terminal) and print its RegisteredUsers hash."""
    import getpass

    from appliance.passwords import DEFAULT_ITERATIONS, hash_password

    iterations = DEFAULT_ITERATIONS if iterations is None else iterations
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("pacs-appliance: the passwords differ", file=sys.stderr)
            return EXIT_FAILURE
    else:
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    if not password:
        print("pacs-appliance: empty password", file=sys.stderr)
        return EXIT_FAILURE
    try:
        print(hash_password(password, iterations))
    except ValueError as e:
        print(f"pacs-appliance: --iterations: {e}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _serve(config, *, debug: bool) -> int:
    from appliance.ops.memory import hold_collection

    # No cyclic garbage collection until the daemon is ready (daemon.run settles it).
    # (lazyimports is installed by _main, before anything imports pydicom: issue 11.8.)
    hold_collection()
    from appliance.dicomfile.settings import quiet_pydicom

    # Before pynetdicom is imported, so that its tables' UIDs are not checked one by one.
    quiet_pydicom()
    from appliance.daemon import run
    from appliance.logs import setup_logging
    from appliance.ops.lock import FolderInUse

    setup_logging(logging.DEBUG if debug else logging.INFO)
    try:
        code = asyncio.run(run(config))
    except FolderInUse as e:
        # One line, as for a config error: nothing was started or touched.
        print(f"pacs-appliance: {e}", file=sys.stderr)
        return EXIT_IN_USE
    except KeyboardInterrupt:
        return EXIT_OK
    except OSError as e:
        log.error("cannot start: %s", e)
        return EXIT_FAILURE
    # "stopped" is logged: everything is closed, the index checkpointed, the lock
    # released. Python's own finalization (tearing down pydicom, numpy, aiohttp...)
    # would keep the process 0.3-1 s longer here, 2 s on a clinic's mini-PC, for
    # nothing: systemd and scripts waiting for the exit should not wait for it.
    # Unless a thread still finishes its work (a cancelled backup stopping at its
    # next step): then Python waits for it, as it should.
    main_thread = threading.main_thread()
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not main_thread):
        return code
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
