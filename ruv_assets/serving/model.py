"""Which stored `serving_model` a server serves: the newest export of the current base model,
materialised (a Dagster run on the instance, so lineage has it) when there is none yet."""

from __future__ import annotations

import time
from pathlib import Path

from dagster import AssetKey, DagsterInstance, materialize

from ruv_resources.base_model import content_hash
from ruv_resources.dagster_resources import StoreResource
from ruv_resources.store import ArtifactStore
from ruv_assets.assets.serving_model import PARTITION, serving_model, serving_source
from ruv_assets.cli import UserError


def served_name(source: str) -> str:
    """`.../SmolLM2-135M-Instruct.Q4_1.gguf` -> `SmolLM2-135M-Instruct`; a directory -> its name."""
    path = Path(source)
    return path.name.split(".")[0] if path.suffix == ".gguf" else path.name


def stored_serving_model(instance: DagsterInstance, source: str) -> Path | None:
    wanted = content_hash(source)
    for record in instance.fetch_materializations(AssetKey("serving_model"), limit=20).records:
        materialization = record.asset_materialization
        meta = {k: v.value for k, v in materialization.metadata.items()}
        version = (materialization.tags or {}).get("dagster/data_version")
        if meta.get("source_hash") != wanted or not version:
            continue
        try:
            return ArtifactStore().get("serving_model", PARTITION, version).path  # re-hashed: intact
        except Exception:
            continue
    return None


def ensure_serving_model(log=print) -> tuple[Path, str]:
    """(the HF directory to serve, its source). Exports the base model when no intact export exists."""
    source = serving_source()
    try:
        instance = DagsterInstance.get()
    except Exception as exc:
        raise UserError(f"no Dagster instance ({exc.__class__.__name__}): set DAGSTER_HOME (make serve does)") from None
    with instance:
        found = stored_serving_model(instance, source)
        if found is not None:
            log(f"serving model: {found} (stored export of {source})")
            return found, source
        log(f"serving model: exporting {source} as an HF safetensors directory (once per base model)")
        began = time.monotonic()
        try:
            import transformers  # noqa: F401
        except ImportError:
            raise UserError("exporting the base model needs the capture extra: pip install -e '.[capture]' (make serve does)") from None
        result = materialize([serving_model], instance=instance, resources={"store": StoreResource()}, raise_on_error=False)
        if not result.success:
            failure = next((e for e in result.all_events if e.is_step_failure), None)
            reason = failure.step_failure_data.error.message.strip().splitlines()[-1] if failure else "see the run in Dagster"
            raise UserError(f"exporting the serving model failed: {reason}")
        found = stored_serving_model(instance, source)
        if found is None:
            raise UserError("the serving model was materialised but its export is not in the store")
        log(f"serving model: {found} (exported in {time.monotonic() - began:.1f} s)")
        return found, source
