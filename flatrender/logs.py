"""Process-wide logging: one line per event, ``key=value`` context, level changeable at run time."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure(level: str) -> None:
    root = logging.getLogger()
    if not any(getattr(h, "_flatrender", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT))
        handler._flatrender = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    set_level(level)
    # Hypercorn logs every request at INFO through its own loggers; keep them at WARNING.
    logging.getLogger("hypercorn.access").setLevel(logging.WARNING)


def set_level(level: str) -> None:
    logging.getLogger().setLevel(level.upper())
