"""The on-disk format of a hot-swap slot, and checking a slot against it.

One slot per adapter or composite name, `<slots_root>/<name>/`:

```
versions/<generation>-<hash12>/   immutable: adapter_model.safetensors, adapter_config.json,
                                  manifest.json (sha256 and size of each file, geometry, source
                                  asset key, partition, data version, run id, provenance,
                                  generation, action, promoted_at)
active  -> versions/...           relative symlink, replaced atomically (os.replace of a new link)
standby -> versions/...           the previous active after a swap (the rollback target), or the
                                  prepared next version before a swap
history.jsonl                     one JSON line per swap (generation, version, action, time, ...)
.lock                             fcntl.flock'ed by promoters; readers take no lock
```

Generations. Every swap makes `active` point at a version directory whose name starts with a
generation number larger than any used before in the slot, so the generation a reader sees is
simply the prefix of `os.readlink(active)`: one system call gives both "has it changed" and "which
generation", atomically. The next number is one more than the largest in `versions/` and
`history.jsonl`, and gc always keeps the newest version, so a published generation is never
reused (only the number of a crashed, never-published temp directory may be).

Here: the names, the manifest and the check of a version against it (`check_version`, and of a
whole slot, `verify_slot`), the links and the history lines. The lock and crash recovery are in
`slot_recovery`, the operations that change a slot in `slot` (`Slot`), the reader in `slot_reader`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ruv_resources.errors import AdapterFormatError, SlotError, StoreError
from ruv_resources.peft_format import CONFIG_NAME, GEOMETRY_FIELDS, WEIGHTS_NAME, LoadedAdapter, load_adapter
from ruv_resources.store import check_name, sha256_and_size

VERSIONS = "versions"
ACTIVE = "active"
STANDBY = "standby"
LOCK = ".lock"
HISTORY = "history.jsonl"
MANIFEST = "manifest.json"
ADAPTER_FILES = (WEIGHTS_NAME, CONFIG_NAME)
MANIFEST_FORMAT = 1
TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
_VERSION_RE = re.compile(r"^(\d{1,18})-([0-9a-f]{12})$")
_GEN_WIDTH = 8


# --------------------------------------------------------------------------------------------
# Names and manifests


def is_version_name(name: str) -> bool:
    """Whether `name` has the form of a slot version directory (<generation>-<hash12>)."""
    return isinstance(name, str) and _VERSION_RE.match(name) is not None


def parse_version(name: str) -> tuple[int, str]:
    """`00000017-0123456789ab` -> `(17, "0123456789ab")`; anything else is refused."""
    match = _VERSION_RE.match(name) if isinstance(name, str) else None
    if match is None:
        try:
            check_name("version", name)  # a clear message for names that would escape the slot
        except StoreError as exc:
            raise SlotError(str(exc)) from None
        raise SlotError(f"version {name!r} is not a slot version name (<generation>-<hash12>)")
    return int(match.group(1)), match.group(2)


def version_name(generation: int, hash12: str) -> str:
    return f"{generation:0{_GEN_WIDTH}d}-{hash12}"


def tmp_version_name(generation: int) -> str:
    """Where a version of `generation` is written before it is published (renamed)."""
    return f"{TMP_PREFIX}{generation:0{_GEN_WIDTH}d}-{secrets.token_hex(4)}"


def content_hash(file_hashes: Mapping[str, str]) -> str:
    """sha256 over sorted file names and their sha256 (the store's `hash_directory` formula), so a
    version made from a store object with exactly these files has hash12 == data_version[:12]."""
    digest = hashlib.sha256()
    for name in sorted(file_hashes):
        digest.update(name.encode() + b"\0")
        digest.update(file_hashes[name].encode() + b"\0")
    return digest.hexdigest()


def timestamp() -> str:
    """Now, as the manifests and history lines record it."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def read_manifest(version_dir: str | os.PathLike) -> dict:
    path = Path(version_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise SlotError(f"{path}: missing") from None
    except (OSError, ValueError) as exc:
        raise SlotError(f"{path}: unreadable or not JSON ({exc})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise SlotError(f"{path}: not a slot manifest (no 'files' table)")
    return manifest


def check_version(
    version_dir: str | os.PathLike,
    *,
    checksums: bool = True,
    load: bool = True,
    geometry: Mapping | None = None,
) -> tuple[LoadedAdapter | None, dict, list[str]]:
    """Check one version directory: `(loaded adapter or None, manifest, problems)`.

    Problems name the file and what is wrong: a missing manifest, a name that disagrees with the
    manifest's generation or hash, a missing/extra/resized file, a sha256 mismatch, or anything
    `load_adapter` refuses (partial file, wrong shapes, NaN/inf). Reads only below `version_dir`.
    """
    version_dir = Path(version_dir)
    problems: list[str] = []
    try:
        manifest = read_manifest(version_dir)
    except SlotError as exc:
        return None, {}, [str(exc)]
    name = version_dir.name
    match = _VERSION_RE.match(name)
    if match is None:
        problems.append(f"{name}: not a version name (<generation>-<hash12>)")
    else:
        if manifest.get("generation") != int(match.group(1)):
            problems.append(f"{MANIFEST}: generation {manifest.get('generation')!r} but the directory is {name}")
        if manifest.get("version") != name:
            problems.append(f"{MANIFEST}: version {manifest.get('version')!r} but the directory is {name}")
    files = manifest["files"]
    for required in ADAPTER_FILES:
        if required not in files:
            problems.append(f"{MANIFEST}: lists no {required}")
    hashes = {}
    for fname, entry in sorted(files.items()):
        if fname not in ADAPTER_FILES or not isinstance(entry, dict):
            problems.append(f"{MANIFEST}: unexpected entry {fname!r}")
            continue
        hashes[fname] = entry.get("sha256", "")
        path = version_dir / fname
        if not path.is_file():
            problems.append(f"{fname}: missing")
            continue
        if checksums:
            digest, size = sha256_and_size(path)
            if size != entry.get("bytes"):
                problems.append(f"{fname}: {size} bytes, manifest says {entry.get('bytes')}")
            if digest != entry.get("sha256"):
                problems.append(f"{fname}: sha256 mismatch (file {digest[:16]}..., manifest {str(entry.get('sha256'))[:16]}...)")
    if match is not None and len(hashes) == len(ADAPTER_FILES) and content_hash(hashes)[:12] != match.group(2):
        problems.append(f"{MANIFEST}: file hashes give content hash {content_hash(hashes)[:12]}, the name says {match.group(2)}")
    try:
        extra = sorted(p.name for p in version_dir.iterdir() if p.name not in files and p.name != MANIFEST)
    except OSError as exc:
        extra = []
        problems.append(f"{version_dir}: cannot list ({exc})")
    for fname in extra:
        problems.append(f"{fname}: not listed in the manifest")
    loaded = None
    if load and not any(p.endswith(": missing") for p in problems):
        wanted = dict(manifest.get("geometry") or {})
        wanted.update({k: v for k, v in (geometry or {}).items() if v is not None})
        try:
            loaded = load_adapter(version_dir, **{k: wanted.get(k) for k in GEOMETRY_FIELDS})
        except AdapterFormatError as exc:
            problems.append(f"does not load: {exc}")
        else:
            spec = loaded.adapter.spec
            for key, value in (("rank", spec.rank), ("targets", list(spec.targets))):
                if key in manifest and manifest[key] != value:
                    problems.append(f"{MANIFEST}: {key} {manifest[key]!r} but the adapter has {value!r}")
    return (loaded if not problems else None), manifest, problems


def check_tmp_version(tmp: Path, name: str, geometry: dict | None) -> tuple[LoadedAdapter | None, dict, list[str]]:
    """`check_version` of a temp directory as if it already had its final `name`."""
    loaded, manifest, problems = check_version(tmp, geometry=geometry)
    # The temp name is not a version name: drop that complaint and check the manifest's own.
    problems = [p for p in problems if "not a version name" not in p]
    gen, hash12 = parse_version(name)
    if manifest.get("generation") != gen or manifest.get("version") != name:
        problems.append(f"{MANIFEST}: generation/version {manifest.get('generation')!r}/{manifest.get('version')!r}, expected {gen}/{name}")
    hashes = {k: v.get("sha256", "") for k, v in manifest.get("files", {}).items() if isinstance(v, dict)}
    if content_hash(hashes)[:12] != hash12:
        problems.append(f"{MANIFEST}: content hash does not match {hash12}")
    return loaded, manifest, problems


def version_names(slot_dir: Path) -> list[str]:
    """Published versions, oldest generation first (leftovers of crashes are not versions)."""
    try:
        names = [n for n in os.listdir(slot_dir / VERSIONS) if _VERSION_RE.match(n)]
    except FileNotFoundError:
        return []
    return sorted(names, key=lambda n: parse_version(n)[0])


# --------------------------------------------------------------------------------------------
# Links and history


def read_link(slot_dir: Path, which: str) -> str | None:
    """The version a link points at, or None; refuses a link that leaves `versions/`."""
    try:
        target = os.readlink(slot_dir / which)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            raise SlotError(f"{slot_dir / which}: is not a symlink") from None
        raise
    head, _, name = target.partition("/")
    if head != VERSIONS or not _VERSION_RE.match(name):
        raise SlotError(f"{slot_dir / which} -> {target!r}: not a link into {VERSIONS}/ (edited by hand?)")
    return name


def point_link(slot_dir: Path, which: str, version: str, checkpoint: Callable[[str], None]) -> None:
    """Atomically (re)point a link: new link under a temporary name, renamed over the old."""
    tmp = slot_dir / f".{which}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    os.symlink(f"{VERSIONS}/{version}", tmp)
    checkpoint(f"link-{which}-created")
    os.replace(tmp, slot_dir / which)
    checkpoint(f"link-{which}-replaced")


def read_history(slot_dir: Path) -> list[dict]:
    """Every complete history line, oldest generation first (a torn last line is skipped)."""
    entries = []
    try:
        text = (slot_dir / HISTORY).read_text()
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a torn last line of a crashed promoter; repaired under the lock
        if isinstance(entry, dict) and isinstance(entry.get("generation"), int):
            entries.append(entry)
    entries.sort(key=lambda e: e["generation"])
    return entries


def append_history(slot_dir: Path, entry: dict) -> None:
    line = json.dumps(entry, sort_keys=True) + "\n"
    fd = os.open(slot_dir / HISTORY, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def last_history_generation(slot_dir: Path) -> int:
    """The generation of the last complete history line (lines are appended in order)."""
    try:
        with open(slot_dir / HISTORY, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            tail_size = min(size, 1 << 16)
            handle.seek(size - tail_size)
            tail = handle.read()
    except FileNotFoundError:
        return 0
    for line in reversed(tail.splitlines()):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("generation"), int):
            return entry["generation"]
    return 0 if tail_size == size else max((e["generation"] for e in read_history(slot_dir)), default=0)


# --------------------------------------------------------------------------------------------
# Verifying a whole slot


@dataclass
class VersionReport:
    version: str
    generation: int | None
    ok: bool
    problems: list[str] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)  # "active", "standby"


@dataclass
class VerifyReport:
    """`ok` is false when any version or link has a problem; `bad` names the broken versions."""

    slot: str
    path: Path
    versions: list[VersionReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # about links and stray entries
    notes: list[str] = field(default_factory=list)  # harmless: crash leftovers awaiting cleanup

    @property
    def ok(self) -> bool:
        return not self.problems and all(v.ok for v in self.versions)

    @property
    def bad(self) -> list[str]:
        return [v.version for v in self.versions if not v.ok]

    def to_dict(self) -> dict:
        return {
            "slot": self.slot,
            "path": str(self.path),
            "ok": self.ok,
            "problems": list(self.problems),
            "notes": list(self.notes),
            "versions": [asdict(v) for v in self.versions],
        }


def verify_slot(slot_dir: Path, slot_name: str, version: str | None = None) -> VerifyReport:
    """Check every version (or one) of an existing slot: checksums against the manifest, names,
    geometry, and that the adapter loads (shapes, finiteness); and that `active`/`standby` point
    at versions."""
    versions_dir = slot_dir / VERSIONS
    report = VerifyReport(slot_name, slot_dir)
    roles: dict[str, list[str]] = {}
    for which in (ACTIVE, STANDBY):
        try:
            target = read_link(slot_dir, which)
        except SlotError as exc:
            report.problems.append(str(exc))
            continue
        if target is None:
            if which == ACTIVE and read_history(slot_dir):
                report.problems.append(f"{ACTIVE}: missing, but the history has swaps")
            continue
        roles.setdefault(target, []).append(which)
        if not (versions_dir / target).is_dir():
            report.problems.append(f"{which} -> {VERSIONS}/{target}: no such version")
    if version is not None:
        parse_version(version)
        if not (versions_dir / version).is_dir():
            raise SlotError(f"slot {slot_name} has no version {version}")
        names = [version]
    else:
        names = version_names(slot_dir)
        try:
            for entry in sorted(os.listdir(versions_dir)):
                if _VERSION_RE.match(entry):
                    continue
                if entry.startswith((TMP_PREFIX, TRASH_PREFIX)):
                    report.notes.append(f"{VERSIONS}/{entry}: leftover of an interrupted promoter (cleaned by the next one)")
                else:
                    report.problems.append(f"{VERSIONS}/{entry}: unexpected entry")
        except FileNotFoundError:
            pass
    for name in names:
        path = versions_dir / name
        _, _, problems = check_version(path)
        if problems and not path.exists():
            continue  # removed by a concurrent gc while we looked
        report.versions.append(VersionReport(name, parse_version(name)[0], not problems, problems, roles.get(name, [])))
    return report
