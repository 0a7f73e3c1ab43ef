"""The file-backed hot-swap slot: what a serving process loads, replaced with zero downtime.

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
reused (only the number of a crashed, never-published temp directory may be). `expected_generation`
(compare-and-swap) is compared with the generation of `active`.

Rollback (and `swap()` when `standby` is an older, previously active version) therefore does not
point `active` back at the old directory: it makes a NEW version directory `<new gen>-<same
hash12>` whose files are hard links of the old version's files (copies where the filesystem has
no hard links) and whose manifest says `action: rollback`, `source_version: <old version>` and
keeps the old provenance. Readers see the old weights under a new, larger generation; a rollback of
a rollback rolls forward again. The content hash (`hash12`) is what identifies the weights.

Crash safety. A version is written under `versions/.tmp-<gen>-<random>/`, each file fsynced, its
checksums compared with the source's, loaded back (shapes, finiteness), the directory fsynced, then
renamed to its final name and `versions/` fsynced. Only then is a link created under a temporary
name and renamed over `standby`/`active`. A SIGKILL or power loss at any instant therefore leaves
`active` pointing at a complete, verified version (the old or the new one). Leftovers (`.tmp-*`
directories, `.*.tmp-*` links, `.trash-*` directories of an interrupted gc, a torn last history
line, a swap missing from the history) are repaired by the next promoter under the lock.

Serving. Our own serving code uses `resources.slot_reader.SlotReader`. vLLM and LoRAX load a PEFT
directory by path: give them the resolved version directory of the moment (`SlotReader.
active_path()` or `os.path.realpath("<slot>/active")`), with the generation in the adapter's
name/id, rather than the literal `<slot>/active`: they read several files and cache by name, so a
path resolved once can neither mix two versions nor hide a new generation behind a cached name.
- vLLM (offline): `LoRARequest(f"{slot}-g{gen}", gen, str(version_dir))` on each request.
- vLLM (server, `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`): POST `/v1/load_lora_adapter` with
  `{"lora_name": "coder-g17", "lora_path": "<slot>/versions/00000017-..."}` when the generation
  changes, then `/v1/unload_lora_adapter` for the previous name. A static
  `--lora-modules coder=<slot>/active` is fine at start-up (only a swap during that very load could
  interleave two versions); it does not pick up later generations by itself.
- LoRAX: `adapter_id="<slot>/versions/<version>"`, `adapter_source="local"` per request.
Versions are immutable and gc keeps `active`, `standby` and the newest N, so a path handed out
stays readable across at least N-1 later promotions.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ruv_resources.errors import AdapterFormatError, StoreError
from ruv_resources.peft_format import CONFIG_NAME, GEOMETRY_FIELDS as _GEOMETRY_FIELDS, WEIGHTS_NAME, LoadedAdapter, full_geometry, load_adapter
from ruv_resources.store import check_name, fsync_dir
from ruv_resources.store import sha256_and_size as _sha256_and_size

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
_PROVENANCE_FIELDS = ("asset_key", "partition", "data_version", "run_id")


class SlotError(ValueError):
    """A slot operation was refused or found the slot in a state it cannot use; says why."""


class SlotConflictError(SlotError):
    """Compare-and-swap failed: the slot is not at the generation the caller expected."""


class SlotLockedError(SlotError):
    """Another promoter held the slot's lock for longer than the lock timeout."""


# Fault injection for the crash tests: called with the name of each step of a mutation.
_FAULT_HOOK: Callable[[str], None] | None = None


def _checkpoint(point: str) -> None:
    if _FAULT_HOOK is not None:
        _FAULT_HOOK(point)


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


def content_hash(file_hashes: Mapping[str, str]) -> str:
    """sha256 over sorted file names and their sha256 (the store's `hash_directory` formula), so a
    version made from a store object with exactly these files has hash12 == data_version[:12]."""
    digest = hashlib.sha256()
    for name in sorted(file_hashes):
        digest.update(name.encode() + b"\0")
        digest.update(file_hashes[name].encode() + b"\0")
    return digest.hexdigest()


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
            digest, size = _sha256_and_size(path)
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
            loaded = load_adapter(version_dir, **{k: wanted.get(k) for k in _GEOMETRY_FIELDS})
        except AdapterFormatError as exc:
            problems.append(f"does not load: {exc}")
        else:
            spec = loaded.adapter.spec
            for key, value in (("rank", spec.rank), ("targets", list(spec.targets))):
                if key in manifest and manifest[key] != value:
                    problems.append(f"{MANIFEST}: {key} {manifest[key]!r} but the adapter has {value!r}")
    return (loaded if not problems else None), manifest, problems


def _geometry_dict(geometry) -> dict:
    if geometry is None:
        return {}
    if isinstance(geometry, Mapping):
        unknown = set(geometry) - set(_GEOMETRY_FIELDS)
        if unknown:
            raise SlotError(f"geometry has unknown field(s) {sorted(unknown)}; expected {', '.join(_GEOMETRY_FIELDS)}")
        values = {k: geometry.get(k) for k in _GEOMETRY_FIELDS}
    else:
        values = {k: getattr(geometry, k, None) for k in _GEOMETRY_FIELDS}
    for key, value in values.items():
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise SlotError(f"geometry {key} must be a positive integer, got {value!r}")
    return {k: v for k, v in values.items() if v is not None}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


# --------------------------------------------------------------------------------------------
# Reports


@dataclass(frozen=True)
class SlotState:
    """Where a slot is: the active generation and version, the standby, all versions (oldest first)."""

    name: str
    path: Path
    generation: int
    active: str | None
    standby: str | None
    versions: tuple[str, ...] = ()

    @property
    def active_path(self) -> Path | None:
        return self.path / VERSIONS / self.active if self.active else None

    @property
    def standby_path(self) -> Path | None:
        return self.path / VERSIONS / self.standby if self.standby else None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["path"] = str(self.path)
        data["versions"] = list(self.versions)
        return data


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


# --------------------------------------------------------------------------------------------
# The slot


class Slot:
    """One hot-swap slot `<root>/<name>/`. Mutations take the slot's file lock; reads take none.

    `lock_timeout` (seconds, None = wait forever) bounds the wait for another promoter.
    """

    def __init__(self, root: str | os.PathLike, name: str, *, lock_timeout: float | None = 120.0):
        try:
            self.name = check_name("slot", name)
        except StoreError as exc:
            raise SlotError(str(exc)) from None
        self.root = Path(root)
        self.path = self.root / name
        self.versions_dir = self.path / VERSIONS
        self.lock_timeout = lock_timeout

    @classmethod
    def from_dir(cls, slot_dir: str | os.PathLike, **kwargs) -> "Slot":
        """The slot at `slot_dir` (= `<root>/<name>`), e.g. a CLI argument."""
        path = Path(os.path.abspath(os.fspath(slot_dir)))
        return cls(path.parent, path.name, **kwargs)

    def __repr__(self) -> str:
        return f"Slot({str(self.root)!r}, {self.name!r})"

    def exists(self) -> bool:
        return self.versions_dir.is_dir()

    # ---- reading (no lock) ----------------------------------------------------------------

    def _link(self, which: str) -> str | None:
        """The version a link points at, or None; refuses a link that leaves `versions/`."""
        try:
            target = os.readlink(self.path / which)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise SlotError(f"{self.path / which}: is not a symlink") from None
            raise
        head, _, name = target.partition("/")
        if head != VERSIONS or not _VERSION_RE.match(name):
            raise SlotError(f"{self.path / which} -> {target!r}: not a link into {VERSIONS}/ (edited by hand?)")
        return name

    def version_names(self) -> list[str]:
        """Published versions, oldest generation first (leftovers of crashes are not versions)."""
        try:
            names = [n for n in os.listdir(self.versions_dir) if _VERSION_RE.match(n)]
        except FileNotFoundError:
            return []
        return sorted(names, key=lambda n: parse_version(n)[0])

    def _require(self) -> None:
        if not self.exists():
            raise SlotError(f"no slot at {self.path} (it is created by the first promote)")

    def status(self) -> SlotState:
        self._require()
        active = self._link(ACTIVE)
        return SlotState(
            name=self.name,
            path=self.path,
            generation=parse_version(active)[0] if active else 0,
            active=active,
            standby=self._link(STANDBY),
            versions=tuple(self.version_names()),
        )

    @property
    def generation(self) -> int:
        """The generation of `active` (0 for a slot that has none yet)."""
        active = self._link(ACTIVE) if self.path.is_dir() else None
        return parse_version(active)[0] if active else 0

    def history(self, limit: int | None = None) -> list[dict]:
        """Swaps, oldest first: generation, version, action (promote/rollback), time, previous,
        source_version (rollbacks), provenance. `limit` keeps the newest ones."""
        self._require()
        entries = []
        try:
            text = (self.path / HISTORY).read_text()
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
        return entries[-limit:] if limit else entries

    def manifest(self, version: str) -> dict:
        parse_version(version)
        return read_manifest(self.versions_dir / version)

    def verify(self, version: str | None = None) -> VerifyReport:
        """Check every version (or one): checksums against the manifest, names, geometry, and that
        the adapter loads (shapes, finiteness); and that `active`/`standby` point at versions."""
        self._require()
        report = VerifyReport(self.name, self.path)
        roles: dict[str, list[str]] = {}
        for which in (ACTIVE, STANDBY):
            try:
                target = self._link(which)
            except SlotError as exc:
                report.problems.append(str(exc))
                continue
            if target is None:
                if which == ACTIVE and self.history():
                    report.problems.append(f"{ACTIVE}: missing, but the history has swaps")
                continue
            roles.setdefault(target, []).append(which)
            if not (self.versions_dir / target).is_dir():
                report.problems.append(f"{which} -> {VERSIONS}/{target}: no such version")
        if version is not None:
            parse_version(version)
            if not (self.versions_dir / version).is_dir():
                raise SlotError(f"slot {self.name} has no version {version}")
            names = [version]
        else:
            names = self.version_names()
            try:
                for entry in sorted(os.listdir(self.versions_dir)):
                    if _VERSION_RE.match(entry):
                        continue
                    if entry.startswith((TMP_PREFIX, TRASH_PREFIX)):
                        report.notes.append(f"{VERSIONS}/{entry}: leftover of an interrupted promoter (cleaned by the next one)")
                    else:
                        report.problems.append(f"{VERSIONS}/{entry}: unexpected entry")
            except FileNotFoundError:
                pass
        for name in names:
            path = self.versions_dir / name
            _, _, problems = check_version(path)
            if problems and not path.exists():
                continue  # removed by a concurrent gc while we looked
            report.versions.append(VersionReport(name, parse_version(name)[0], not problems, problems, roles.get(name, [])))
        return report

    # ---- mutating (under the lock) --------------------------------------------------------

    @contextmanager
    def _locked(self, *, create: bool = False) -> Iterator[None]:
        if create:
            self.versions_dir.mkdir(parents=True, exist_ok=True)
        else:
            self._require()
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            if self.lock_timeout is None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            else:
                deadline = time.monotonic() + self.lock_timeout
                delay = 0.001
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                            raise SlotLockedError(
                                f"slot {self.name} is locked by another promoter (pid {holder}) for more than "
                                f"{self.lock_timeout:g}s; try again later"
                            ) from None
                        time.sleep(delay)
                        delay = min(delay * 2, 0.05)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            _checkpoint("locked")
            self._recover()
            yield
        finally:
            os.close(fd)  # releases the flock

    def recover(self) -> list[str]:
        """Clean what a crashed promoter left behind (every mutation does it first); returns
        what was repaired."""
        with self._locked():
            return list(self.last_recovered)

    last_recovered: tuple[str, ...] = ()

    def _recover(self) -> None:
        cleaned = []
        for entry in os.listdir(self.versions_dir):
            if entry.startswith((TMP_PREFIX, TRASH_PREFIX)):
                shutil.rmtree(self.versions_dir / entry, ignore_errors=True)
                cleaned.append(f"{VERSIONS}/{entry}")
        for entry in os.listdir(self.path):
            if entry.startswith(".") and ".tmp-" in entry:
                try:
                    os.unlink(self.path / entry)
                except IsADirectoryError:
                    shutil.rmtree(self.path / entry, ignore_errors=True)
                except FileNotFoundError:
                    pass
                cleaned.append(entry)
        if _repair_torn_tail(self.path / HISTORY):
            cleaned.append(f"{HISTORY} (torn last line)")
        active = self._link(ACTIVE)
        if active is not None:
            generation = parse_version(active)[0]
            if self._last_history_generation() < generation:
                # The promoter died between the swap and writing its history line.
                try:
                    manifest = read_manifest(self.versions_dir / active)
                except SlotError:
                    manifest = {}
                self._append_history(
                    {
                        "generation": generation,
                        "version": active,
                        "action": manifest.get("action", "promote"),
                        "time": manifest.get("promoted_at") or _now(),
                        "previous": None,
                        "source_version": manifest.get("source_version"),
                        "provenance": manifest.get("provenance", {}),
                        "recovered": True,
                    }
                )
                cleaned.append(f"{HISTORY} (recorded generation {generation})")
            if self._link(STANDBY) == active:
                # Died between pointing `active` at the new version and `standby` at the old one.
                earlier = [e for e in self.history() if e["generation"] < generation]
                if earlier and (self.versions_dir / earlier[-1]["version"]).is_dir():
                    self._point(STANDBY, earlier[-1]["version"])
                    cleaned.append(f"{STANDBY} (pointed back at {earlier[-1]['version']})")
        if cleaned:
            fsync_dir(self.versions_dir)
            fsync_dir(self.path)
        self.last_recovered = tuple(cleaned)

    def _check_expected(self, expected_generation: int | None) -> int:
        current = self.generation
        if expected_generation is not None:
            if not isinstance(expected_generation, int) or isinstance(expected_generation, bool) or expected_generation < 0:
                raise SlotError(f"expected generation must be a non-negative integer, got {expected_generation!r}")
            if expected_generation != current:
                raise SlotConflictError(
                    f"slot {self.name} is at generation {current}, not the expected {expected_generation}: "
                    "another promoter got there first; read the status again and retry"
                )
        return current

    def _next_generation(self) -> int:
        """One more than any generation ever used here: version names (published or not yet)
        and the history. The newest version is never collected, so numbers never repeat."""
        largest = 0
        for entry in os.listdir(self.versions_dir):
            name = entry[len(TMP_PREFIX):] if entry.startswith(TMP_PREFIX) else entry
            head = name.split("-", 1)[0]
            if head.isdigit():
                largest = max(largest, int(head))
        return max(largest, self._last_history_generation()) + 1

    def _last_history_generation(self) -> int:
        """The generation of the last complete history line (lines are appended in order)."""
        try:
            with open(self.path / HISTORY, "rb") as handle:
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
        return 0 if tail_size == size else max((e["generation"] for e in self.history()), default=0)

    def _point(self, which: str, version: str) -> None:
        """Atomically (re)point a link: new link under a temporary name, renamed over the old."""
        tmp = self.path / f".{which}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        os.symlink(f"{VERSIONS}/{version}", tmp)
        _checkpoint(f"link-{which}-created")
        os.replace(tmp, self.path / which)
        _checkpoint(f"link-{which}-replaced")

    def _append_history(self, entry: dict) -> None:
        line = json.dumps(entry, sort_keys=True) + "\n"
        fd = os.open(self.path / HISTORY, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def _validate_source(self, adapter_dir, geometry: dict) -> LoadedAdapter:
        source = Path(adapter_dir)
        if not source.is_dir():
            raise SlotError(f"refusing to promote {source}: not a directory (expected an adapter in PEFT layout)")
        try:
            return load_adapter(source, **geometry)
        except AdapterFormatError as exc:
            raise SlotError(f"refusing to promote {source}: {exc}") from None

    def _check_geometry_against_active(self, loaded: LoadedAdapter, geometry: dict, source) -> None:
        """Without an explicit geometry, a new version must fit the base model the active one fits."""
        if geometry:
            return
        active = self._link(ACTIVE)
        if active is None:
            return
        try:
            current = read_manifest(self.versions_dir / active).get("geometry") or {}
        except SlotError:
            return
        new, current = full_geometry(loaded.adapter.spec.geometry()), full_geometry(current)
        differs = [f"{k} {new[k]} (active has {current[k]})" for k in _GEOMETRY_FIELDS if k in current and k in new and current[k] != new[k]]
        if differs:
            raise SlotError(
                f"refusing to promote {source}: geometry differs from the active version {active}: "
                + ", ".join(differs) + "; pass the intended geometry explicitly to change the base model"
            )

    def _write_version(
        self,
        files: dict[str, Path],
        manifest_fields: dict,
        *,
        link: bool = False,
        expected_hashes: dict[str, dict] | None = None,
        geometry: dict | None = None,
    ) -> str:
        """Publish a new version: temp dir, copy (or hard-link) files, fsync, verify, rename."""
        generation = self._next_generation()
        tmp = self.versions_dir / f"{TMP_PREFIX}{generation:0{_GEN_WIDTH}d}-{secrets.token_hex(4)}"
        os.mkdir(tmp)
        try:
            _checkpoint("tmp-created")
            entries = {}
            for fname, source in files.items():
                dest = tmp / fname
                if link:
                    try:
                        os.link(source, dest)
                    except OSError:
                        shutil.copyfile(source, dest)
                    entries[fname] = dict(expected_hashes[fname])
                else:
                    entries[fname] = _copy_hashed(source, dest)
                _checkpoint(f"copied-{fname}")
            hashes = {k: v["sha256"] for k, v in entries.items()}
            name = version_name(generation, content_hash(hashes)[:12])
            manifest = {
                "format": MANIFEST_FORMAT,
                "slot": self.name,
                "version": name,
                "generation": generation,
                "content_hash": content_hash(hashes),
                "files": entries,
                "promoted_at": _now(),
                **manifest_fields,
            }
            manifest_path = tmp / MANIFEST
            with open(manifest_path, "w") as handle:
                handle.write(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            _checkpoint("manifest-written")
            for fname in (*files, MANIFEST):
                os.chmod(tmp / fname, 0o444)  # immutable by convention and by mode
                if link or fname == MANIFEST:  # copies were fsynced as they were written
                    with open(tmp / fname, "rb") as handle:
                        os.fsync(handle.fileno())
            fsync_dir(tmp)
            _checkpoint("fsynced")
            # Verify what is on disk, under the final name's rules, before publishing it.
            _, _, problems = _check_tmp(tmp, name, geometry)
            if problems:
                raise SlotError(f"refusing to publish version {name}: " + "; ".join(problems))
            _checkpoint("verified")
            os.rename(tmp, self.versions_dir / name)
            _checkpoint("renamed")
            fsync_dir(self.versions_dir)
            _checkpoint("published")
            return name
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _prepare_locked(self, adapter_dir, loaded: LoadedAdapter, geometry: dict, provenance: dict | None) -> str:
        self._check_geometry_against_active(loaded, geometry, adapter_dir)
        spec = loaded.adapter.spec
        provenance = dict(provenance or {})
        source = Path(adapter_dir)
        fields = {
            "action": "promote",
            "source_dir": str(source.resolve()),
            "geometry": spec.geometry(),
            "rank": spec.rank,
            "alpha": spec.alpha,
            "targets": list(spec.targets),
            "dtype": loaded.dtype,
            "provenance": provenance,
            **{k: provenance.get(k) for k in _PROVENANCE_FIELDS},
        }
        fields["asset_key"] = fields["asset_key"] or provenance.get("source_asset")
        name = self._write_version({f: source / f for f in ADAPTER_FILES}, fields, geometry=geometry)
        self._point(STANDBY, name)
        return name

    def _activate(self, name: str, *, action: str, previous: str | None, source_version: str | None, provenance: dict) -> SlotState:
        """Switch `active` to a verified version; the old active becomes `standby`."""
        self._point(ACTIVE, name)
        if previous is not None:
            self._point(STANDBY, previous)
        else:
            try:
                os.unlink(self.path / STANDBY)
            except FileNotFoundError:
                pass
        fsync_dir(self.path)
        _checkpoint("swapped")
        self._append_history(
            {
                "generation": parse_version(name)[0],
                "version": name,
                "action": action,
                "time": _now(),
                "previous": previous,
                "source_version": source_version,
                "provenance": provenance,
                "pid": os.getpid(),
            }
        )
        _checkpoint("history-written")
        return self.status()

    def _verified(self, name: str, what: str) -> dict:
        """Full check of an existing version before anything points at it; refuses a broken one."""
        loaded, manifest, problems = check_version(self.versions_dir / name)
        if problems:
            raise SlotError(f"refusing to {what} {name}: it is corrupt: " + "; ".join(problems))
        return manifest

    def prepare(self, adapter_dir: str | os.PathLike, *, provenance: dict | None = None, geometry=None) -> str:
        """Write and verify a new version and point `standby` at it; `active` is untouched.
        Returns the version name; `swap()` makes it active."""
        geometry = _geometry_dict(geometry)
        provenance = _check_provenance(provenance)
        loaded = self._validate_source(adapter_dir, geometry)
        with self._locked(create=True):
            return self._prepare_locked(adapter_dir, loaded, geometry, provenance)

    def promote(
        self,
        adapter_dir: str | os.PathLike,
        *,
        provenance: dict | None = None,
        expected_generation: int | None = None,
        geometry=None,
    ) -> SlotState:
        """Prepare + swap under one lock: copy `adapter_dir` (PEFT layout) into a new verified
        version and make it active. Refused (slot unchanged) for an adapter that does not load,
        is non-finite or has the wrong geometry, and with `SlotConflictError` when
        `expected_generation` is given and the slot is at another generation."""
        geometry = _geometry_dict(geometry)
        provenance = _check_provenance(provenance)
        if expected_generation is not None and not self.exists():
            self._check_expected_missing(expected_generation)
        loaded = self._validate_source(adapter_dir, geometry)
        with self._locked(create=True):
            self._check_expected(expected_generation)
            previous = self._link(ACTIVE)
            name = self._prepare_locked(adapter_dir, loaded, geometry, provenance)
            return self._activate(name, action="promote", previous=previous, source_version=None, provenance=provenance)

    def _check_expected_missing(self, expected_generation: int) -> None:
        if expected_generation != 0:
            raise SlotConflictError(
                f"slot {self.name} does not exist yet (generation 0), not the expected generation {expected_generation}"
            )

    def swap(self, expected_generation: int | None = None) -> SlotState:
        """Make `standby` active and the old active the new standby, in a new generation.

        A prepared (never active) standby becomes active under its own generation; an older,
        previously active standby is re-activated as a rollback (see the module notes)."""
        with self._locked():
            self._check_expected(expected_generation)
            standby = self._link(STANDBY)
            if standby is None:
                raise SlotError(f"slot {self.name} has no standby version to swap to")
            return self._switch_to(standby, what="swap to")

    def rollback(self, expected_generation: int | None = None, *, to: str | None = None) -> SlotState:
        """Make the previously active version (or version `to`) active again, as a new generation.

        The target is `standby` when it is an older, previously active version, else the version
        active before the current one according to the history."""
        if to is not None:
            parse_version(to)
        with self._locked():
            self._check_expected(expected_generation)
            active = self._link(ACTIVE)
            if active is None:
                raise SlotError(f"slot {self.name} has no active version to roll back from")
            if to is None:
                to = self._rollback_target(active)
            elif not (self.versions_dir / to).is_dir():
                raise SlotError(f"slot {self.name} has no version {to}")
            if to == active:
                raise SlotError(f"version {to} is already active in slot {self.name}")
            if parse_version(to)[0] > parse_version(active)[0]:
                raise SlotError(f"version {to} was never active (it is newer than the active {active}); use swap to activate a prepared version")
            return self._switch_to(to, what="roll back to")

    def _rollback_target(self, active: str) -> str:
        active_gen = parse_version(active)[0]
        standby = self._link(STANDBY)
        if standby is not None and parse_version(standby)[0] < active_gen:
            return standby
        earlier = [e for e in self.history() if e["generation"] < active_gen]
        if not earlier:
            raise SlotError(f"slot {self.name} has nothing to roll back to: {active} is the first version")
        target = earlier[-1]["version"]
        if not (self.versions_dir / target).is_dir():
            raise SlotError(f"the previous version {target} of slot {self.name} was garbage-collected; pick one with to=")
        return target

    def _switch_to(self, target: str, *, what: str) -> SlotState:
        active = self._link(ACTIVE)
        active_gen = parse_version(active)[0] if active else 0
        manifest = self._verified(target, what)
        provenance = manifest.get("provenance") or {}
        if parse_version(target)[0] > active_gen:
            return self._activate(target, action="promote", previous=active, source_version=None, provenance=provenance)
        # An older version comes back under a new generation: hard-link its files into a new one.
        source_dir = self.versions_dir / target
        fields = {k: v for k, v in manifest.items() if k not in ("format", "slot", "version", "generation", "content_hash", "files", "promoted_at")}
        fields.update(action="rollback", source_version=target)
        fields["original_promoted_at"] = manifest.get("original_promoted_at") or manifest.get("promoted_at")
        name = self._write_version(
            {f: source_dir / f for f in ADAPTER_FILES},
            fields,
            link=True,
            expected_hashes={f: manifest["files"][f] for f in ADAPTER_FILES},
            geometry=manifest.get("geometry"),
        )
        return self._activate(name, action="rollback", previous=active, source_version=target, provenance=provenance)

    def gc(self, keep: int = 3) -> list[str]:
        """Remove versions other than `active`, `standby` and the newest `keep` (>= 1); returns
        the names removed. A version is renamed away before it is deleted, so a crash never leaves
        a half-deleted directory under a version name."""
        if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
            raise SlotError(f"gc keep must be an integer >= 1, got {keep!r}")
        with self._locked():
            names = self.version_names()
            protected = set(names[-keep:]) | {self._link(ACTIVE), self._link(STANDBY)}
            doomed = [n for n in names if n not in protected]
            trash = []
            for name in doomed:
                dest = self.versions_dir / f"{TRASH_PREFIX}{name}-{secrets.token_hex(4)}"
                os.rename(self.versions_dir / name, dest)
                trash.append(dest)
                _checkpoint("gc-renamed")
            if trash:
                fsync_dir(self.versions_dir)
            for dest in trash:
                shutil.rmtree(dest, ignore_errors=True)
            return doomed


def _check_tmp(tmp: Path, name: str, geometry: dict | None) -> tuple[LoadedAdapter | None, dict, list[str]]:
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


def _repair_torn_tail(path: Path) -> bool:
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


def slots_root(home: str | os.PathLike | None = None) -> Path:
    """Where the slots live: `RUV_SLOTS`, else `<RUV_HOME>/slots` (RUV_HOME defaults to `.ruv`)."""
    from ruv_resources.store import default_root

    if home is None and os.environ.get("RUV_SLOTS"):
        return Path(os.environ["RUV_SLOTS"])
    return (Path(home) if home is not None else default_root()) / "slots"


def _copy_hashed(source: Path, dest: Path) -> dict:
    """Copy a file, hashing the bytes read; then re-read the copy and compare."""
    digest = hashlib.sha256()
    size = 0
    try:
        with open(source, "rb") as src, open(dest, "xb") as dst:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
    except FileNotFoundError:
        raise SlotError(f"refusing to promote: {source} is missing") from None
    sha = digest.hexdigest()
    copied, copied_size = _sha256_and_size(dest)
    if (copied, copied_size) != (sha, size):
        raise SlotError(f"copy of {source} does not match its source (sha256 {copied[:16]}... vs {sha[:16]}...)")
    return {"sha256": sha, "bytes": size}


def _check_provenance(provenance) -> dict:
    if provenance is None:
        return {}
    if not isinstance(provenance, Mapping):
        raise SlotError(f"provenance must be a mapping, got {type(provenance).__name__}")
    try:
        return json.loads(json.dumps(dict(provenance), sort_keys=True))
    except (TypeError, ValueError) as exc:
        raise SlotError(f"provenance must be JSON-serialisable: {exc}") from None
