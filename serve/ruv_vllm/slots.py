"""Reading the slots under `RUV_HOME/slots` with the standard library only.

A slot's generation is the number in front of the version name its `active` link points at, so
one `readlink` per slot tells whether it changed and to what (`ruv_resources.slot_format`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

_VERSION_RE = re.compile(r"^versions/(\d{1,18})-([0-9a-f]{12})$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class ActiveVersion:
    slot: str
    generation: int
    version: str  # <generation>-<hash12>
    path: str  # the immutable version directory (never the moving `active` link)


def slot_names(slots_root: Path) -> list[str]:
    try:
        entries = sorted(os.listdir(slots_root))
    except FileNotFoundError:
        return []
    return [name for name in entries if _NAME_RE.match(name) and (slots_root / name).is_dir()]


def active_version(slots_root: Path, name: str) -> ActiveVersion | None:
    """The slot's active version, or None while it has none (being created, or not a slot)."""
    try:
        link = os.readlink(slots_root / name / "active")
    except OSError:
        return None
    match = _VERSION_RE.match(link)
    if match is None:
        return None
    version = link.split("/", 1)[1]
    return ActiveVersion(name, int(match.group(1)), version, str((slots_root / name / "versions" / version).resolve()))
