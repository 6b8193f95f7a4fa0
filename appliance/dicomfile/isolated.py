"""Decode frames with GDCM in a worker process, so that GDCM cannot take the daemon down.

GDCM is the only decoder installed here for JPEG Lossless and JPEG-LS (the others are
GPL or not installed), and on data it finds inconsistent it does not raise: it calls
``std::terminate`` and the process dies (``gdcmImageCodec.cxx: PF.GetBitsAllocated() ==
PF.GetBitsStored()`` for a JPEG Lossless whose Bits Stored was changed, found by
tests/fuzz). The archive cannot refuse every such object at ingest - compressed pixel
data is not decoded there - so a stored one must not kill the daemon when a viewer asks
for its thumbnail. Its frames are decoded by one worker process (spawned on first use,
a fresh one after a crash); a frame that kills it is a :class:`DecodeFailed`.

Blocking code for the web layer's worker threads, like :mod:`appliance.dicomfile.pixels`.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # multiprocessing loads with the first worker, not with the daemon
    from concurrent.futures import ProcessPoolExecutor

__all__ = ["DecodeFailed", "decode_frame", "shutdown"]

log = logging.getLogger(__name__)

# A frame of a clinic's largest images decodes in well under a second; a worker that
# takes this long is stuck, and is killed.
FRAME_TIMEOUT = 60.0

_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None


class DecodeFailed(Exception):
    """The frame could not be decoded; ``str(e)`` says why."""


def _decode_in_worker(path: str, transfer_syntax: str, value_offset: int, index: int,
                      as_rgb: bool, options: dict[str, Any]):
    """(array, info) of frame ``index`` of the file at ``path`` (in the worker)."""
    from pydicom.pixels import get_decoder

    with open(path, "rb") as f:
        f.seek(value_offset)
        return get_decoder(transfer_syntax).as_array(
            f, index=index, as_rgb=as_rgb, decoding_plugin="gdcm", **options)


def _executor() -> ProcessPoolExecutor:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    global _pool
    with _lock:
        if _pool is None:
            # spawn: a fork of the daemon would copy its threads' locks mid-use.
            _pool = ProcessPoolExecutor(max_workers=1,
                                        mp_context=multiprocessing.get_context("spawn"))
        return _pool


def _discard(pool: ProcessPoolExecutor, *, kill: bool) -> None:
    global _pool
    with _lock:
        if _pool is pool:
            _pool = None
    if kill:
        for process in list(getattr(pool, "_processes", {}).values()):
            process.kill()
    pool.shutdown(wait=False, cancel_futures=True)


def decode_frame(path: str, transfer_syntax: str, value_offset: int, index: int, *,
                 as_rgb: bool, options: dict[str, Any]):
    """Frame ``index`` decoded by GDCM in the worker: (array, info) as pydicom's
    ``Decoder.as_array`` gives. DecodeFailed if it raises, kills the worker or hangs."""
    from concurrent.futures.process import BrokenProcessPool

    pool = _executor()
    try:
        future = pool.submit(_decode_in_worker, str(path), str(transfer_syntax), value_offset,
                             index, as_rgb, options)
        return future.result(timeout=FRAME_TIMEOUT)
    except BrokenProcessPool:
        _discard(pool, kill=False)
        log.warning("the GDCM decoder process died on frame %d of %s", index + 1, path)
        raise DecodeFailed("the decoder stopped on this frame (GDCM aborted)") from None
    except FutureTimeout:
        _discard(pool, kill=True)
        log.warning("the GDCM decoder process took over %.0f s on frame %d of %s: killed",
                    FRAME_TIMEOUT, index + 1, path)
        raise DecodeFailed(f"decoding took over {FRAME_TIMEOUT:.0f} s") from None
    except Exception as e:  # noqa: BLE001 - whatever the decoder raised in the worker
        raise DecodeFailed(f"{type(e).__name__}: {e}") from None


def shutdown() -> None:
    """Stop the worker, if one runs: killed, since it holds nothing to finish and
    the daemon's exit would otherwise wait for it to wind down (spawned, it has
    pydicom, numpy and GDCM to tear down)."""
    with _lock:
        pool = _pool
    if pool is not None:
        _discard(pool, kill=True)
