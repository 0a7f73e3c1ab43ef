"""The catalogue: the five presets plus the adapters, composites and geometry a user declares in
a YAML or TOML file (`RUV_CATALOGUE`, default the `catalogue.yaml` shipped in this package).

A bad catalogue fails at load with the file, the entry, the field and the reason.
"""

from __future__ import annotations

import os
import tomllib
from contextlib import contextmanager
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ruv_assets.catalogue.config import AdapterName, LoraConfig, ModelGeometry
from ruv_assets.catalogue.presets import PRESETS

DEFAULT_CATALOGUE = Path(__file__).with_name("catalogue.yaml")
MergeMethod = Literal["average", "weighted", "task_arithmetic", "slerp", "ties", "dare", "magnitude_prune", "prune_merged"]


class CatalogueError(ValueError):
    """The catalogue file is unreadable or declares something invalid."""


class CompositeConfig(BaseModel):
    """A merged adapter: which trained adapters, by which method, with which parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: AdapterName
    method: MergeMethod
    sources: tuple[AdapterName, ...] = Field(min_length=1)
    weights: tuple[float, ...] | None = None
    density: float | None = Field(None, gt=0.0, le=1.0)
    lam: float = Field(1.0, alias="lambda")
    t: float | None = Field(None, ge=0.0, le=1.0)
    rank: int | None = Field(None, ge=1)
    seed: int = 0
    dare_combine: Literal["linear", "ties"] = "linear"
    min_retention: float = Field(0.0, le=1.0, description="promotion gate: worst source retention allowed")
    description: str = ""

    @model_validator(mode="after")
    def _method_parameters(self) -> "CompositeConfig":
        if len(set(self.sources)) != len(self.sources):
            raise ValueError("sources lists an adapter twice")
        if self.weights is not None and len(self.weights) != len(self.sources):
            raise ValueError(f"weights has {len(self.weights)} values for {len(self.sources)} sources")
        if self.method == "weighted" and self.weights is not None and abs(sum(self.weights)) < 1e-12:
            raise ValueError("weights sum to zero; weighted merge normalises by their sum")
        if self.method == "slerp":
            if len(self.sources) != 2:
                raise ValueError(f"slerp merges exactly two adapters, got {len(self.sources)}")
            if self.t is None:
                raise ValueError("slerp needs t in [0, 1]")
        if self.method in ("ties", "dare", "magnitude_prune", "prune_merged") and self.density is None:
            raise ValueError(f"{self.method} needs density in (0, 1]")
        from ruv_kernels.merge import METHOD_PARAMS, REQUIRED_PARAMS  # the kernels' registry says what each method takes

        values = {"weights": self.weights, "density": self.density, "t": self.t}
        lacking = [p for p in REQUIRED_PARAMS[self.method] if p in values and values[p] is None]
        if lacking:
            raise ValueError(f"{self.method} needs {', '.join(lacking)}")

        given = {"weights": self.weights is not None, "density": self.density is not None, "t": self.t is not None,
                 "lam": self.lam != 1.0, "dare_combine": self.dare_combine != "linear"}
        extra = [p for p, is_set in given.items() if is_set and p not in METHOD_PARAMS[self.method]]
        if extra:
            raise ValueError(f"{self.method} does not take {', '.join('lambda' if p == 'lam' else p for p in extra)}")
        return self


class CatalogueFile(BaseModel):
    """The schema of a catalogue file."""

    model_config = ConfigDict(extra="forbid")

    base_model: str | None = Field(None, description="a local model directory (config.json + safetensors) or a .gguf file")
    geometry: ModelGeometry | None = None
    adapters: list[LoraConfig] = []
    composites: list[CompositeConfig] = []


class Catalogue:
    """Presets, custom adapters and composites, looked up by name or by domain tag."""

    def __init__(self, adapters: list[LoraConfig], composites: list[CompositeConfig], geometry: ModelGeometry, source: str,
                 base_model: str | None = None):
        self.geometry = geometry
        self.source = source
        self.base_model = base_model
        self._adapters = {a.name: a for a in adapters}
        self._composites = {c.name: c for c in composites}

    @cached_property
    def adapter_names(self) -> list[str]:
        return list(self._adapters)

    @cached_property
    def composite_names(self) -> list[str]:
        return list(self._composites)

    def adapters(self) -> list[LoraConfig]:
        return list(self._adapters.values())

    def composites(self) -> list[CompositeConfig]:
        return list(self._composites.values())

    def adapter(self, name: str) -> LoraConfig:
        try:
            return self._adapters[name]
        except KeyError:
            raise KeyError(f"unknown adapter {name!r}; known: {', '.join(self._adapters)}") from None

    def composite(self, name: str) -> CompositeConfig:
        try:
            return self._composites[name]
        except KeyError:
            raise KeyError(f"unknown composite {name!r}; known: {', '.join(self._composites) or 'none'}") from None

    def by_tag(self, tag: str) -> list[LoraConfig]:
        return [a for a in self._adapters.values() if tag in a.tags]


def load_catalogue(path: str | os.PathLike | None = None) -> Catalogue:
    """Read the catalogue at `path`, `$RUV_CATALOGUE`, or the shipped default, and validate it."""
    path = Path(path or os.environ.get("RUV_CATALOGUE") or DEFAULT_CATALOGUE)
    raw = _read(path)
    raw = _presets_with_capture(path, raw)
    try:
        parsed = CatalogueFile.model_validate(raw)
    except ValidationError as exc:
        raise CatalogueError(_describe(path, raw, exc)) from None
    geometry, base_model = _geometry_of(path, parsed)
    adapters = list(PRESETS)
    names = {a.name for a in adapters}
    for custom in parsed.adapters:
        if custom.name in names and custom.capture is not None and custom.name in _PRESET_NAMES:
            adapters[[a.name for a in adapters].index(custom.name)] = custom.model_copy(
                update={"capture": _resolve_capture(path, custom, base_model)})
            continue
        if custom.name in names:
            raise CatalogueError(f"{path}: adapters: {custom.name!r} is already declared (presets: {', '.join(p.name for p in PRESETS)})")
        names.add(custom.name)
        if custom.capture is not None:
            custom = custom.model_copy(update={"capture": _resolve_capture(path, custom, base_model)})
        adapters.append(custom)
    seen: set[str] = set()
    for composite in parsed.composites:
        if composite.name in seen or composite.name in names:
            raise CatalogueError(f"{path}: composites: {composite.name!r} is already the name of an adapter or composite")
        seen.add(composite.name)
        for source in composite.sources:
            if source not in names:
                raise CatalogueError(f"{path}: composites[{composite.name}]: sources: unknown adapter {source!r}")
    return Catalogue(adapters, parsed.composites, geometry, str(path), base_model)


_PRESET_NAMES = {p.name: p for p in PRESETS}


def _presets_with_capture(path: Path, raw: dict) -> dict:
    """An adapter entry that names a preset may add `capture:` to it (and nothing else): the
    preset's rank, alpha and targets are filled in, so a role is trained on a real model's data."""
    entries = raw.get("adapters")
    if not isinstance(entries, list):
        return raw
    out = []
    for entry in entries:
        if isinstance(entry, dict) and entry.get("name") in _PRESET_NAMES and "capture" in entry:
            extra = sorted(set(entry) - {"name", "capture"})
            if extra:
                raise CatalogueError(f"{path}: adapters[{entry['name']}]: {entry['name']} is a preset; only capture can be added to it, not {', '.join(extra)}")
            entry = {**_PRESET_NAMES[entry["name"]].model_dump(exclude={"capture"}), "capture": entry["capture"]}
        out.append(entry)
    return {**raw, "adapters": out}


def _resolve(path: Path, value: str) -> Path:
    """A path in the catalogue, relative to the catalogue file's folder unless absolute."""
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else (path.parent / p)


def _geometry_of(path: Path, parsed: CatalogueFile) -> tuple[ModelGeometry, str | None]:
    """The geometry in force: read from `base_model` when there is one, else the `geometry` block."""
    if parsed.base_model is None:
        return parsed.geometry or ModelGeometry(), None
    if parsed.geometry is not None:
        raise CatalogueError(f"{path}: geometry: give either base_model or geometry; with a base model the shapes come from it")
    from ruv_resources.base_model import BaseModelError, read_base_model

    model = _resolve(path, parsed.base_model)
    try:
        info = read_base_model(model)
    except BaseModelError as exc:
        raise CatalogueError(f"{path}: base_model: {exc}") from None
    return ModelGeometry(**info.geometry_fields()), str(model.resolve())


def _resolve_capture(path: Path, entry: LoraConfig, base_model: str | None):
    """Capture paths made absolute and checked to exist; capture needs a base model."""
    where = f"{path}: adapters[{entry.name}]: capture"
    if base_model is None:
        raise CatalogueError(f"{where}: needs base_model at the top of the catalogue (the model to capture from)")
    update = {}
    for field, value in entry.capture.paths().items():
        resolved = _resolve(path, value)
        if not resolved.exists():
            raise CatalogueError(f"{where}: {field}: {resolved} does not exist")
        update[field] = str(resolved.resolve())
    return entry.capture.model_copy(update=update)


def _read(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as exc:
        raise CatalogueError(f"{path}: cannot read catalogue ({exc.strerror})") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise CatalogueError(f"{path}: not valid {'TOML' if path.suffix == '.toml' else 'YAML'} ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CatalogueError(f"{path}: expected a mapping with adapters/composites/geometry at the top")
    return data


def _describe(path: Path, raw: dict, exc: ValidationError) -> str:
    """One line per problem: entry (by name where it has one), field, reason."""
    lines = []
    for error in exc.errors():
        loc = list(error["loc"])
        where = str(loc[0]) if loc else ""
        if len(loc) >= 2 and isinstance(loc[1], int):
            entries = raw.get(loc[0]) or []
            name = entries[loc[1]].get("name") if loc[1] < len(entries) and isinstance(entries[loc[1]], dict) else None
            where = f"{loc[0]}[{name or loc[1]}]"
            loc = loc[2:]
        else:
            loc = loc[1:]
        field = ".".join(str(p) for p in loc) or "(entry)"
        reason = error["msg"].removeprefix("Value error, ")
        lines.append(f"{path}: {where}: {field}: {reason}")
    return "\n".join(lines)


@lru_cache(maxsize=8)
def _cached(path: str | None, stamp: tuple[int, int] | None = None) -> Catalogue:
    return load_catalogue(path)


_handed_in: list[Catalogue] = []


@contextmanager
def using_catalogue(catalogue: Catalogue):
    """Within the block, `current_catalogue()` is `catalogue` (a catalogue handed in, e.g. an
    edited copy in a test) instead of the file's."""
    _handed_in.append(catalogue)
    try:
        yield catalogue
    finally:
        _handed_in.pop()


def current_catalogue() -> Catalogue:
    """The catalogue handed in by `using_catalogue`, else the one named by `RUV_CATALOGUE` (or the
    shipped one), read again when the file changes, so long-lived processes (daemon, workers) see
    an edited catalogue without a reload."""
    if _handed_in:
        return _handed_in[-1]
    path = os.environ.get("RUV_CATALOGUE") or None
    try:
        info = os.stat(path or DEFAULT_CATALOGUE)
        stamp = (info.st_mtime_ns, info.st_size)
    except OSError:
        stamp = None
    return _cached(path, stamp)


def current_geometry(**explicit: int | None) -> ModelGeometry:
    """The model geometry in force: explicit values (Dagster config), else `RUV_HIDDEN_SIZE`,
    `RUV_INTERMEDIATE_SIZE`, `RUV_NUM_LAYERS`, else the catalogue's `geometry`."""
    catalogue = current_catalogue()
    base = catalogue.geometry
    values = {}
    for field in ("hidden_size", "intermediate_size", "num_layers"):
        value = explicit.get(field)
        if value is None:
            env = os.environ.get(f"RUV_{field.upper()}")
            if env:
                try:
                    value = int(env)
                except ValueError:
                    raise CatalogueError(f"RUV_{field.upper()}={env!r} is not an integer") from None
            else:
                value = getattr(base, field)
        values[field] = value
    if catalogue.base_model is not None:
        differs = [f for f, v in values.items() if v != getattr(base, f)]
        if differs:
            raise CatalogueError(f"geometry: {', '.join(differs)} overridden, but the shapes come from base_model {catalogue.base_model}")
        return base
    try:
        return ModelGeometry(**values)
    except ValidationError as exc:
        raise CatalogueError(f"geometry: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}") from None
