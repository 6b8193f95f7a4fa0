"""The query parameters of rendered resources (PS3.18 8.3.5.1), parsed.

Each parser raises ValueError with a message for the client; the handlers
answer 400 with it. The rendering itself is appliance.dicomfile.render.
"""

from __future__ import annotations

import re

from appliance.dicomfile.render import MAX_SIDE

__all__ = ["parse_number", "parse_quality", "parse_viewport", "parse_window"]

_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def parse_number(text: str) -> float:
    """A decimal number (DS-like); ValueError otherwise."""
    text = text.strip()
    if not _NUMBER.match(text):
        raise ValueError(f"not a number: {text[:20]!r}")
    return float(text)


def _count(text: str) -> int:
    text = text.strip()
    if not text.isdigit() or len(text) > 6:
        raise ValueError(f"not a size: {text[:20]!r}")
    return int(text)


def parse_viewport(text: str) -> tuple[tuple[int, int], tuple[int, int, int, int] | None]:
    """PS3.18 8.3.5.1.3 ``viewport=vw,vh[,sx,sy,sw,sh]``; vw or vh may be empty.

    Raises ValueError (the caller answers 400)."""
    parts = text.split(",")
    if len(parts) not in (2, 6):
        raise ValueError("viewport is vw,vh or vw,vh,sx,sy,sw,sh")
    vw = _count(parts[0]) if parts[0].strip() else 0
    vh = _count(parts[1]) if parts[1].strip() else 0
    if not (vw or vh) or vw > MAX_SIDE or vh > MAX_SIDE:
        raise ValueError(f"viewport sides must be 1-{MAX_SIDE}")
    source = None
    if len(parts) == 6:
        sx, sy, sw, sh = (_count(p) for p in parts[2:])
        if not (sw and sh):
            raise ValueError("viewport source width and height must be positive")
        source = (sx, sy, sw, sh)
    return (vw, vh), source


def parse_window(text: str) -> tuple[float, float, str]:
    """PS3.18 8.3.5.1.4 ``window=center,width[,function]`` (linear, linear-exact, sigmoid)."""
    parts = text.split(",")
    if len(parts) not in (2, 3):
        raise ValueError("window is center,width[,function]")
    center, width = parse_number(parts[0]), parse_number(parts[1])
    function = parts[2].strip().lower() if len(parts) == 3 else "linear"
    if function not in ("linear", "linear-exact", "sigmoid"):
        raise ValueError("window function is linear, linear-exact or sigmoid")
    if not width > 0 or (function == "linear" and width < 1):
        raise ValueError("window width must be positive (>= 1 for linear)")
    return center, width, function


def parse_quality(text: str) -> int:
    """PS3.18 8.3.5.1.1 ``quality=1..100``."""
    value = _count(text) if text.strip() else -1
    if not 1 <= value <= 100:
        raise ValueError("quality is 1-100")
    return value
