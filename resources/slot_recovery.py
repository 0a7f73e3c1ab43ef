"""Locking and crash recovery of a hot-swap slot.

Promoters serialise on `<slot>/.lock` (fcntl.flock, with the holder's pid in the file for the
"locked by" message); readers take no lock. Every mutation first repairs what a crashed one left.

Crash safety. A version is written under `versions/.tmp-<gen>-<random>/`, each file fsynced, its
checksums compared with the source's, loaded back (shapes, finiteness), the directory fsynced, then
renamed to its final name and `versions/` fsynced. Only then is a link created under a temporary
name and renamed over `standby`/`active`. A SIGKILL or power loss at any instant therefore leaves
`active` pointing at a complete, verified version (the old or the new one). Leftovers (`.tmp-*`
directories, `.*.tmp-*` links, `.trash-*` directories of an interrupted gc, a torn last history
line, a swap missing from the history) are repaired by `recover`, run by the next promoter under
the lock.

`checkpoint` is called with the name of each step (the crash tests inject faults through it).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ruv_resources.errors import SlotError, SlotLockedError
from ruv_resources.slot_format import (
    ACTIVE,
    HISTORY,
    LOCK,
    STANDBY,
    TMP_PREFIX,
    TRASH_PREFIX,
    VERSIONS,
    append_history,
    last_history_generation,
    parse_version,
    point_link,
    read_history,
    read_link,
    read_manifest,
    timestamp,
)
from ruv_resources.store import fsync_dir


@contextmanager
def hold_lock(slot_dir: Path, slot_name: str, timeout: float | None, checkpoint: Callable[[str], None]) -> Iterator[None]:
    """Hold the slot's lock (waiting at most `timeout` seconds, None = forever) for the block."""
    fd = os.open(slot_dir / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        if timeout is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            deadline = time.monotonic() + timeout
            delay = 0.001
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                        raise SlotLockedError(
                            f"slot {slot_name} is locked by another promoter (pid {holder}) for more than "
                            f"{timeout:g}s; try again later"
                        ) from None
                    time.sleep(delay)
                    delay = min(delay * 2, 0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        checkpoint("locked")
        yield
    finally:
        os.close(fd)  # releases the flock


def recover(slot_dir: Path, checkpoint: Callable[[str], None]) -> tuple[str, ...]:
    """Under the lock: clean what a crashed promoter left behind; returns what was repaired."""
    versions_dir = slot_dir / VERSIONS
    cleaned = []
    for entry in os.listdir(versions_dir):
        if entry.startswith((TMP_PREFIX, TRASH_PREFIX)):
            shutil.rmtree(versions_dir / entry, ignore_errors=True)
            cleaned.append(f"{VERSIONS}/{entry}")
    for entry in os.listdir(slot_dir):
        if entry.startswith(".") and ".tmp-" in entry:
            try:
                os.unlink(slot_dir / entry)
            except IsADirectoryError:
                shutil.rmtree(slot_dir / entry, ignore_errors=True)
            except FileNotFoundError:
                pass
            cleaned.append(entry)
    if repair_torn_tail(slot_dir / HISTORY):
        cleaned.append(f"{HISTORY} (torn last line)")
    active = read_link(slot_dir, ACTIVE)
    if active is not None:
        generation = parse_version(active)[0]
        if last_history_generation(slot_dir) < generation:
            # The promoter died between the swap and writing its history line.
            try:
                manifest = read_manifest(versions_dir / active)
            except SlotError:
                manifest = {}
            append_history(
                slot_dir,
                {
                    "generation": generation,
                    "version": active,
                    "action": manifest.get("action", "promote"),
                    "time": manifest.get("promoted_at") or timestamp(),
                    "previous": None,
                    "source_version": manifest.get("source_version"),
                    "provenance": manifest.get("provenance", {}),
                    "recovered": True,
                },
            )
            cleaned.append(f"{HISTORY} (recorded generation {generation})")
        if read_link(slot_dir, STANDBY) == active:
            # Died between pointing `active` at the new version and `standby` at the old one.
            earlier = [e for e in read_history(slot_dir) if e["generation"] < generation]
            if earlier and (versions_dir / earlier[-1]["version"]).is_dir():
                point_link(slot_dir, STANDBY, earlier[-1]["version"], checkpoint)
                cleaned.append(f"{STANDBY} (pointed back at {earlier[-1]['version']})")
    if cleaned:
        fsync_dir(versions_dir)
        fsync_dir(slot_dir)
    return tuple(cleaned)


def repair_torn_tail(path: Path) -> bool:
    """Cut a partial last line (a writer died mid-append); True if something was cut."""
    try:
        handle = open(path, "r+b")
    except FileNotFoundError:
        return False
    with handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return False
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return False
        start = max(0, size - (1 << 16))
        while True:
            handle.seek(start)
            cut = handle.read(size - start).rfind(b"\n")
            if cut >= 0 or start == 0:
                keep = start + cut + 1 if cut >= 0 else 0
                break
            start = max(0, start - (1 << 16))
        handle.truncate(keep)
        os.fsync(handle.fileno())
    return True
