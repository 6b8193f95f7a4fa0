"""Synthetic ultrasound data for the benchmarks, generated once into a cache folder.

What a clinic's scanners send: 640x480 RGB (8 bit, interleaved) US images, uncompressed,
Explicit VR Little Endian — single frames (US Image Storage) and cine loops (US Multi-frame
Image Storage). The pixels are a speckled fan-shaped sector over black, different for every
image, so nothing downstream can shortcut on constant data.

UIDs are derived deterministically from the index, so a cached set is identical from run to
run and the files can be reused (a stamp file records the parameters that produced them).

Run ``python -m tests.bench.datagen [DIR]`` to (re)generate by hand.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.synthetic import (  # noqa: F401 - re-exported for the benchmarks
    CINE_FRAMES, COLUMNS, FORMAT_VERSION, ROWS, SINGLE_COUNT, US_IMAGE_STORAGE,
    US_MULTIFRAME_STORAGE, base_dataset, generate_cine, generate_singles, uid, write_file,
)

log = logging.getLogger(__name__)

DEFAULT_CACHE = Path(__file__).resolve().parent / "results" / "data"


@dataclass(frozen=True)
class BenchData:
    """Paths of a generated data set."""

    singles: list[Path]
    cine: Path

    @property
    def single_bytes(self) -> int:
        """Total size of the single-frame files."""
        return sum(p.stat().st_size for p in self.singles)


def ensure_data(cache: Path = DEFAULT_CACHE, singles: int = SINGLE_COUNT,
                cine_frames: int = CINE_FRAMES) -> BenchData:
    """Return the cached data set in ``cache``, generating whatever is missing or stale."""
    stamp = cache / "stamp.json"
    wanted = {"version": FORMAT_VERSION, "singles": singles, "cine_frames": cine_frames,
              "rows": ROWS, "columns": COLUMNS}
    single_dir, cine_path = cache / "single", cache / "cine" / "cine_150.dcm"
    single_paths = [single_dir / f"us_{i:04d}.dcm" for i in range(singles)]
    current = None
    if stamp.exists():
        try:
            current = json.loads(stamp.read_text())
        except ValueError:
            current = None
    if current != wanted or not all(p.exists() for p in single_paths):
        log.info("generating %d single-frame images in %s", singles, single_dir)
        stamp.unlink(missing_ok=True)
        if single_dir.exists():
            for old in single_dir.glob("*.dcm"):
                old.unlink()
        single_paths = generate_singles(single_dir, singles)
        cine_path.unlink(missing_ok=True)
    if not cine_path.exists():
        log.info("generating the %d-frame cine at %s", cine_frames, cine_path)
        generate_cine(cine_path, cine_frames)
    stamp.write_text(json.dumps(wanted))
    return BenchData(singles=single_paths, cine=cine_path)


def main(argv: list[str] | None = None) -> int:
    """Generate (or verify) the cached benchmark data set; print where it is."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache", nargs="?", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data = ensure_data(args.cache)
    print(f"{len(data.singles)} single frames, {data.single_bytes / 1e6:.1f} MB, in "
          f"{data.singles[0].parent}")
    print(f"cine: {data.cine} ({data.cine.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
