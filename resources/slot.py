"""The hot-swap slot's operations: what a serving process loads, replaced with zero downtime.

`Slot` reads a slot (status, history, manifests, verify: no lock) and changes it (prepare,
promote, swap, rollback, gc: under the slot's lock, after crash recovery). The on-disk layout,
the manifest and the checks are in `slot_format`; the lock and crash recovery in `slot_recovery`;
how a server loads a slot in docs/serving.md. The names callers use (`Slot`, `SlotState`,
`slots_root`, the errors, the layout names, `check_version`, `parse_version`) are importable from
here.

Compare-and-swap: `expected_generation` is compared with the generation of `active`.

Rollback (and `swap()` when `standby` is an older, previously active version) does not point
`active` back at the old directory: it makes a NEW version directory `<new gen>-<same hash12>`
whose files are hard links of the old version's files (copies where the filesystem has no hard
links) and whose manifest says `action: rollback`, `source_version: <old version>` and keeps the
old provenance. Readers see the old weights under a new, larger generation; a rollback of a
rollback rolls forward again. The content hash (`hash12`) is what identifies the weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from ruv_resources.errors import AdapterFormatError, SlotConflictError, SlotError, SlotLockedError, StoreError
from ruv_resources.peft_format import GEOMETRY_FIELDS, LoadedAdapter, full_geometry, load_adapter
from ruv_resources.slot_format import (
    ACTIVE,
    ADAPTER_FILES,
    HISTORY,
    LOCK,
    MANIFEST,
    MANIFEST_FORMAT,
    STANDBY,
    TMP_PREFIX,
    TRASH_PREFIX,
    VERSIONS,
    VerifyReport,
    VersionReport,
    append_history,
    check_tmp_version,
    check_version,
    content_hash,
    is_version_name,
    last_history_generation,
    parse_version,
    point_link,
    read_history,
    read_link,
    read_manifest,
    timestamp,
    tmp_version_name,
    verify_slot,
    version_name,
    version_names,
)
from ruv_resources.slot_recovery import hold_lock, recover
from ruv_resources.store import check_name, fsync_dir, sha256_and_size

__all__ = [
    "ACTIVE", "ADAPTER_FILES", "HISTORY", "LOCK", "MANIFEST", "MANIFEST_FORMAT", "STANDBY", "TMP_PREFIX",
    "TRASH_PREFIX", "VERSIONS", "Slot", "SlotConflictError", "SlotError", "SlotLockedError", "SlotState",
    "VerifyReport", "VersionReport", "check_version", "content_hash", "is_version_name", "parse_version",
    "read_manifest", "slots_root", "version_name",
]

_PROVENANCE_FIELDS = ("asset_key", "partition", "data_version", "run_id")

# Fault injection for the crash tests: called with the name of each step of a mutation.
_FAULT_HOOK: Callable[[str], None] | None = None


def _checkpoint(point: str) -> None:
    if _FAULT_HOOK is not None:
        _FAULT_HOOK(point)


def _geometry_dict(geometry) -> dict:
    if geometry is None:
        return {}
    if isinstance(geometry, Mapping):
        unknown = set(geometry) - set(GEOMETRY_FIELDS)
        if unknown:
            raise SlotError(f"geometry has unknown field(s) {sorted(unknown)}; expected {', '.join(GEOMETRY_FIELDS)}")
        values = {k: geometry.get(k) for k in GEOMETRY_FIELDS}
    else:
        values = {k: getattr(geometry, k, None) for k in GEOMETRY_FIELDS}
    for key, value in values.items():
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise SlotError(f"geometry {key} must be a positive integer, got {value!r}")
    return {k: v for k, v in values.items() if v is not None}



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
        return read_link(self.path, which)

    def version_names(self) -> list[str]:
        """Published versions, oldest generation first (leftovers of crashes are not versions)."""
        return version_names(self.path)

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
        self._require()
        entries = read_history(self.path)
        return entries[-limit:] if limit else entries

    def manifest(self, version: str) -> dict:
        parse_version(version)
        return read_manifest(self.versions_dir / version)

    def verify(self, version: str | None = None) -> VerifyReport:
        """Check every version (or one): checksums against the manifest, names, geometry, and that
        the adapter loads (shapes, finiteness); and that `active`/`standby` point at versions."""
        self._require()
        self._require()
        return verify_slot(self.path, self.name, version)

    # ---- mutating (under the lock) --------------------------------------------------------

    @contextmanager
    def _locked(self, *, create: bool = False) -> Iterator[None]:
        if create:
            self.versions_dir.mkdir(parents=True, exist_ok=True)
        else:
            self._require()
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        with hold_lock(self.path, self.name, self.lock_timeout, _checkpoint):
            self.last_recovered = recover(self.path, _checkpoint)
            yield

    def recover(self) -> list[str]:
        """Clean what a crashed promoter left behind (every mutation does it first); returns
        what was repaired."""
        with self._locked():
            return list(self.last_recovered)

    last_recovered: tuple[str, ...] = ()

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
        return last_history_generation(self.path)

    def _point(self, which: str, version: str) -> None:
        point_link(self.path, which, version, _checkpoint)

    def _append_history(self, entry: dict) -> None:
        append_history(self.path, entry)

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
        differs = [f"{k} {new[k]} (active has {current[k]})" for k in GEOMETRY_FIELDS if k in current and k in new and current[k] != new[k]]
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
        tmp = self.versions_dir / tmp_version_name(generation)
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
                "promoted_at": timestamp(),
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
            _, _, problems = check_tmp_version(tmp, name, geometry)
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
                "time": timestamp(),
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
    copied, copied_size = sha256_and_size(dest)
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