"""Errors a user can cause with files: each message names the file or tensor and what is wrong."""

import json
from pathlib import Path


class AdapterFormatError(ValueError):
    """An adapter directory is missing, partial, corrupt, or holds the wrong tensors."""


class StoreError(ValueError):
    """A store name is unsafe or a stored object is missing."""


def read_json_object(path: Path, error: type[Exception]) -> dict:
    """The JSON object in `path`, or `error` naming the file: unreadable, not JSON, not an object."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise error(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise error(f"{path}: expected a JSON object")
    return value
class SlotError(ValueError):
    """A slot operation was refused or found the slot in a state it cannot use; says why."""


class SlotConflictError(SlotError):
    """Compare-and-swap failed: the slot is not at the generation the caller expected."""


class SlotLockedError(SlotError):
    """Another promoter held the slot's lock for longer than the lock timeout."""
