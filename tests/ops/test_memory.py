"""appliance.ops.memory: freed heap inside glibc's arenas goes back to the system."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.support import REPO

# A thread fills its arena with 100 MB of 64 KiB blocks (below glibc's mmap threshold),
# a small live chunk after every eighth, and frees the blocks: the holes stay resident
# (they are not at the top of the heap) until malloc_trim gives their pages back. Run
# in a fresh interpreter with the unit's MALLOC_ARENA_MAX=2, so nothing else of the test
# process's heap is in the figures.
_SCRIPT = textwrap.dedent("""
    import threading
    from appliance.ops.memory import MemoryTrimmer, _resident_bytes

    keep = []

    def work():
        blocks = []
        for i in range(1600):
            blocks.append(bytearray(64 * 1024))
            if i % 8 == 7:
                keep.append(bytearray(600))
        del blocks

    t = threading.Thread(target=work)
    t.start()
    t.join()
    before = _resident_bytes()
    trimmer = MemoryTrimmer()
    released = trimmer.trim()
    print(before, released, _resident_bytes(), trimmer.trims, trimmer.released_bytes)
""")


def test_trim_gives_back_the_freed_holes_of_an_arena():
    out = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True,
                         check=True, cwd=REPO, env={"MALLOC_ARENA_MAX": "2",
                                                    "PYTHONPATH": str(REPO)}, timeout=60)
    before, released, after, trims, total = map(int, out.stdout.split())
    assert before - after > 60e6, out.stdout       # ~100 MB of holes were resident
    assert released > 60e6 and total == released and trims == 1, out.stdout
