"""The serving side of a hot-swap slot: the current generation and adapter, reloaded only when
`active` changed, without any lock.

```python
reader = SlotReader(os.path.join(os.environ["RUV_HOME"], "slots", "coder"))
generation, adapter = reader.current()   # ~1-2 us when nothing changed: one readlink + compare
```

How it stays consistent while promoters swap under it:
- The check is `os.readlink("<slot>/active")` compared with the link text of the cached version.
  The link text is `versions/<generation>-<hash12>`, so it names the generation too.
- On a change the link text is turned into `<slot>/versions/<name>` ONCE and every file is read
  from that directory, never again through `active`; versions are immutable, so a swap in the
  middle of a load cannot mix two versions.
- The manifest's checksums are verified (`verify=True`, the default), the manifest's generation
  and name must match the link, and the adapter must load (shapes, finiteness).
- If the version vanished meanwhile (a gc after several promotions) or fails to load while
  `active` has already moved on, it re-reads the link and loads the newer one.
- Generations only increase: every swap, rollbacks included, gets a new, larger generation.

For vLLM/LoRAX, hand out `active_path()` (the resolved version directory) with the generation in
the adapter name; see `resources.slot` for the exact calls.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ruv_kernels.adapter import LoraAdapter
from ruv_resources.slot import ACTIVE, VERSIONS, SlotError, check_version, is_version_name, parse_version


@dataclass(frozen=True)
class ActiveVersion:
    """One loaded version: what `current()` returns, plus where it came from."""

    generation: int
    version: str
    path: Path
    adapter: LoraAdapter
    manifest: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)  # the `ruv.metadata` saved in the safetensors header
    dtype: str = "float32"


class SlotReader:
    """Reads `<slot>/active` for a serving process. Not thread-safe; one per thread or a lock.

    `verify`: check manifest checksums on every load (default on). `geometry`: enforce the base
    model's shapes (`hidden_size`, `intermediate_size`, `num_layers` mapping). `keep_last_good`:
    when a newly active version cannot be loaded, keep returning the last good one (the error is
    in `last_error`) instead of raising.
    """

    def __init__(
        self,
        slot_dir: str | os.PathLike,
        *,
        verify: bool = True,
        geometry: dict | None = None,
        keep_last_good: bool = False,
        retries: int = 8,
    ):
        self.slot_dir = Path(slot_dir)
        self._active = os.fspath(self.slot_dir / ACTIVE)  # a str: the hot path does no Path work
        self.verify = verify
        self.geometry = dict(geometry or {})
        self.keep_last_good = keep_last_good
        self.retries = retries
        self._target: str | None = None
        self._pair: tuple[int, LoraAdapter] | None = None
        self._loaded: ActiveVersion | None = None
        self._failed: tuple[str, SlotError] | None = None
        self.loads = 0  # versions loaded so far (for tests and metrics)
        self.last_error: SlotError | None = None

    # ---- the hot path -------------------------------------------------------------------------

    def current(self) -> tuple[int, LoraAdapter]:
        """`(generation, adapter)` of the active version; loads only when `active` changed."""
        try:
            target = os.readlink(self._active)
        except FileNotFoundError:
            target = None
        if target == self._target and target is not None:
            return self._pair
        return self._refresh(target).generation, self._loaded.adapter

    def changed(self) -> bool:
        """Whether `active` points elsewhere than the version last loaded (no loading)."""
        try:
            return os.readlink(self._active) != self._target
        except FileNotFoundError:
            return self._target is not None

    # ---- the rest -----------------------------------------------------------------------------

    def snapshot(self) -> ActiveVersion:
        """Like `current()`, with the version name, path, manifest and header metadata."""
        self.current()
        return self._loaded

    @property
    def generation(self) -> int | None:
        """The generation last loaded (None before the first load)."""
        return self._loaded.generation if self._loaded else None

    def active_path(self) -> Path:
        """The resolved directory of the active version: what to give vLLM/LoRAX. Resolved once
        from the link, so it keeps naming one immutable version whatever is swapped later."""
        try:
            target = os.readlink(self._active)
        except FileNotFoundError:
            raise SlotError(f"slot {self.slot_dir} has no active version yet") from None
        return self.slot_dir / VERSIONS / self._version_of(target)

    def _version_of(self, target: str) -> str:
        head, _, name = target.partition("/")
        if head != VERSIONS or not is_version_name(name):
            raise SlotError(f"{self._active} -> {target!r}: not a link into {VERSIONS}/")
        return name

    def _refresh(self, target: str | None) -> ActiveVersion:
        error: SlotError | None = None
        for _ in range(max(1, self.retries)):
            if target is None:
                error = SlotError(f"slot {self.slot_dir} has no active version yet (nothing promoted)")
                break
            if self._failed is not None and self._failed[0] == target:
                error = self._failed[1]  # known bad: do not re-read it on every request
                break
            try:
                loaded = self._load(target)
            except SlotError as exc:
                error = exc
                try:
                    newer = os.readlink(self._active)
                except FileNotFoundError:
                    newer = None
                if newer != target:
                    target = newer  # it moved on while we were loading: try the new one
                    continue
                self._failed = (target, exc)
                break
            if self._loaded is not None and loaded.generation < self._loaded.generation:
                error = SlotError(
                    f"slot {self.slot_dir}: generation went backwards ({self._loaded.generation} -> "
                    f"{loaded.generation}); was the slot edited by hand?"
                )
                self._failed = (target, error)
                break
            self._target = target
            self._loaded = loaded
            self._pair = (loaded.generation, loaded.adapter)
            self._failed = None
            self.last_error = None
            self.loads += 1
            return loaded
        self.last_error = error
        if self.keep_last_good and self._loaded is not None:
            return self._loaded
        raise error

    def _load(self, target: str) -> ActiveVersion:
        name = self._version_of(target)
        generation = parse_version(name)[0]
        path = self.slot_dir / VERSIONS / name
        try:
            loaded, manifest, problems = check_version(path, checksums=self.verify, geometry=self.geometry)
        except OSError as exc:
            raise SlotError(f"{path}: cannot be read ({exc})") from None
        if problems:
            raise SlotError(f"active version {name} of {self.slot_dir} is unusable: " + "; ".join(problems))
        return ActiveVersion(
            generation=generation,
            version=name,
            path=path,
            adapter=loaded.adapter,
            manifest=manifest,
            metadata=loaded.metadata,
            dtype=loaded.dtype,
        )
