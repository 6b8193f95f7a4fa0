"""A helper process that reads part of a first start's worklist files.

A first start (no parse cache yet, or one of another parser version) parses every file:
about 85 us of interpreter time each, 0.85 s for 10,000, on one core because of the GIL.
The folder hands part of them, in chunks, to one helper process on the machine's other
core (:meth:`appliance.worklist.source.WorklistFolder`), and reads the rest itself.

The helper is spawned (a fork of the daemon would copy its threads' locks mid-use), and
this module is what it imports first: light, so that the helper installs the daemon's lazy
imports before pydicom loads (no pixel stack, as in the daemon) and sets pydicom's value
checks as the daemon does, so that both read a file into the same values.
"""

from __future__ import annotations


def start(parent: int) -> None:
    """The helper's initializer: the daemon's lazy imports and pydicom settings, and be
    killed when the daemon (process ``parent``) dies. A SIGKILL gives the daemon no time
    to stop its helper, which would otherwise wait for work forever, and keep
    multiprocessing's resource tracker alive too: Linux's PR_SET_PDEATHSIG, then a check
    that the daemon did not die before it was set."""
    import ctypes
    import os
    import signal

    pr_set_pdeathsig = 1  # <linux/prctl.h>
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)
    from appliance import lazyimports

    lazyimports.install()  # before pydicom loads
    from appliance.dicomfile.settings import quiet_pydicom

    quiet_pydicom()


def read_files(folder: str, names: list[str]) -> list:
    """[(name, what :func:`appliance.worklist.reading.read_file` returns)] (in the helper)."""
    from appliance.worklist.reading import read_file

    return [(name, read_file(folder, name)) for name in names]
