"""`adapted_adapter`: a captured role's live adapter, updated on the traffic it served.

Materialised by `adaptation_sensor` (or by hand) when the role's traffic log has new requests:
starting from what the role's slot serves, a few steps on the new requests (with a replay share
of the original corpus), judged against the live adapter on held-out traffic and on the corpus's
held-out windows (`ruv_assets.realmodel.adaptation`). Every update is stored with its figures;
only one that passed the guard becomes `LATEST` and passes the blocking checks, which is what
`promotion_sensor` promotes into the slot. The byte offset it read the log up to is recorded, so
the next update starts after it, whether this one was published or not.
"""

import json

import numpy as np

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetRecordsFilter,
    DataVersion,
    MetadataValue,
    Output,
    asset,
)

from ruv_resources import traffic_log
from ruv_resources.dagster_resources import SlotsResource, StoreResource
from ruv_resources.errors import StoreError
from ruv_resources.peft_format import load_adapter, save_adapter
from ruv_resources.store import default_root
from ruv_assets.catalogue import versions
from ruv_assets.catalogue.catalogue import current_catalogue
from ruv_assets.catalogue.config import AdapterMetadata
from ruv_assets.catalogue.geometry import GeometryResource
from ruv_assets.catalogue.partitions import adapter_partitions
from ruv_assets.judging.plots import adaptation_png, markdown_image, markdown_table
from ruv_assets.orchestration.worker import where_it_ran

# The guard's two checks do not block: an update they turn down is an expected outcome, stored and
# recorded, not a failed run; promotion_sensor requires every check here to have passed.
CHECKS = [
    AssetCheckSpec("weights_finite", asset="adapted_adapter", blocking=True, description="every A and B value is finite"),
    AssetCheckSpec("improves_heldout_traffic", asset="adapted_adapter",
                   description="on held-out traffic (requests never trained on), KL to the teacher below the live adapter's, "
                               "and not above it on the answers and corrections"),
    AssetCheckSpec("keeps_original_corpus", asset="adapted_adapter",
                   description="on the corpus's held-out windows, KL at most adapt.corpus_margin above the live adapter's"),
]


def last_update(instance, name: str) -> dict:
    """The metadata of the newest `adapted_adapter[name]` (empty before the first)."""
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey("adapted_adapter"), asset_partitions=[name]), limit=1).records
    if not records:
        return {}
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}


def traffic_start(instance, name: str) -> int:
    """The byte offset of the role's traffic log that the last update read up to."""
    return int(last_update(instance, name).get("traffic_end") or 0)


def trained_version(store, name: str):
    """`(adapter, data version)` of the role's trained `LATEST` (the role as first fitted), or None."""
    try:
        stored = store.store().get("trained_adapter", name)
    except StoreError:
        return None
    return load_adapter(stored.path).adapter.astype("float32"), stored.data_version


def _same(a, b) -> bool:
    return a.spec == b.spec and all(np.array_equal(a.A[k], b.A[k]) and np.array_equal(a.B[k], b.B[k]) for k in a.keys())


def history(instance, name: str, limit: int = 500) -> list[dict]:
    """The metadata of the partition's earlier updates, oldest first."""
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey("adapted_adapter"), asset_partitions=[name]), limit=limit).records
    return [{k: v.value for k, v in r.asset_materialization.metadata.items()} for r in reversed(records)]


def curve(points: list[dict], name: str) -> str:
    """Held-out traffic KL against requests seen, the live role after each update against the
    frozen one, as markdown with the PNG."""
    rows = [p for p in points if p.get("heldout_traffic_kl_frozen") is not None]
    if not rows:
        return "(no update yet)"
    png = adaptation_png({"frozen (as first fitted)": [(p["requests_seen"], p["heldout_traffic_kl_frozen"]) for p in rows],
                          "adapted (live after the update)": [(p["requests_seen"], p["heldout_traffic_kl_after"]) for p in rows]},
                         f"adapted_adapter[{name}]: held-out traffic KL")
    return markdown_image(png, "adaptation curve")


def live_adapter(store, slots, name: str, spec):
    """`(adapter, where it came from)`: the slot's active version, else the trained `LATEST`."""
    slot = slots.slot(name)
    state = slot.status() if slot.exists() else None
    if state is not None and state.active:
        path, origin = state.active_path, f"slot {name} generation {state.generation}"
    else:
        try:
            stored = store.store().get("trained_adapter", name)
        except StoreError:
            raise ValueError(f"{name}: nothing to adapt yet: no slot and no trained version passed its checks") from None
        path, origin = stored.path, f"trained_adapter {stored.data_version[:12]}"
    adapter = load_adapter(path).adapter
    if adapter.spec != spec:
        raise ValueError(f"{name}: the live adapter ({origin}) does not have the catalogue's shape; retrain the role first")
    return adapter.astype("float32"), origin


@asset(
    partitions_def=adapter_partitions,
    code_version=versions.ADAPTED_ADAPTER,
    io_manager_key="store_io",
    group_name="adapters",
    kinds={"pytorch", "safetensors"},
    deps=["traffic", "trained_adapter", "synthetic_dataset", "capture_teacher"],
    check_specs=CHECKS,
    description="A captured role's live adapter updated on its new traffic (replay of the corpus against forgetting); "
                "published only if held-out traffic KL falls and the corpus's held-out KL rises at most its margin.",
)
def adapted_adapter(context: AssetExecutionContext, store: StoreResource, slots: SlotsResource, geometry: GeometryResource):
    from ruv_assets.realmodel import adaptation

    name = context.partition_key
    catalogue = current_catalogue()
    entry = catalogue.adapter(name)
    if entry.capture is None:
        raise ValueError(f"{name}: only a captured role (capture: in the catalogue) learns from traffic; it has a teacher")
    if not entry.capture.adapt.enabled:
        raise ValueError(f"{name}: adapt is off for this role (capture.adapt.enabled: false)")
    spec = entry.spec(geometry.geometry())
    live, origin = live_adapter(store, slots, name, spec)
    path = traffic_log.log_path(default_root(), name)
    earlier = history(context.instance, name)  # the last one says where the log was read up to
    batch = adaptation.read_traffic(path, int(earlier[-1].get("traffic_end") or 0) if earlier else 0, entry.capture.adapt)
    for reason, count in sorted(batch.skipped.items()):
        context.log.info(f"{name}: skipped {count} requests: {reason}")
    dataset = store.store().get("synthetic_dataset", name)
    trained = trained_version(store, name)
    frozen = trained[0] if trained is not None and not _same(trained[0], live) else None
    candidate, figures, verdict = adaptation.update(name, entry.capture, live, dataset.path, catalogue.base_model,
                                                    batch, context.log.info, frozen=frozen)
    finite = candidate.is_finite()
    passed = bool(finite and verdict.passed)
    seen = int(earlier[-1].get("requests_seen", 0)) + len(batch.train) if earlier else len(batch.train)
    point = {"requests_seen": seen, "heldout_traffic_kl_frozen": verdict.frozen_traffic_kl,
             "heldout_traffic_kl_after": verdict.traffic_kl_new if passed else verdict.traffic_kl_live}
    metadata = AdapterMetadata(name=name, created_at_ms=0, modified_at_ms=0,
                               dataset_description=f"{name} adapted on traffic bytes {batch.start}-{batch.end} from {origin}",
                               n_examples=len(batch.train), tags=entry.tags,
                               custom={"adapted_from": origin, "traffic_start": batch.start, "traffic_end": batch.end,
                                       **{k: float(v) for k, v in verdict.figures().items()}})
    stored = store.store().write("adapted_adapter", name, lambda d: save_adapter(candidate, d, metadata=metadata.model_dump(mode="json"),
                                                                                 base_model=catalogue.base_model),
                                 set_latest=passed)
    context.log.info(f"{name}: adapted from {origin} on {len(batch.train)} requests: "
                     f"{'passed the guard' if passed else 'kept back (did not pass the guard)'}")
    yield Output(
        stored,
        data_version=DataVersion(stored.data_version),
        metadata={
            "path": MetadataValue.path(str(stored.path)),
            "adapted_from": origin,
            "published": passed,
            "traffic_start": batch.start,
            "traffic_end": batch.end,
            "traffic_records": batch.total,
            **point,
            "adaptation_curve": MetadataValue.md(curve(earlier + [point], name)),
            "skipped": MetadataValue.json(batch.skipped),
            **{k: (float(v) if isinstance(v, float) else v if isinstance(v, (int, str)) else json.dumps(v))
               for k, v in figures.items()},
            "guard": MetadataValue.md(markdown_table([
                {"measure": "held-out traffic KL", "live": f"{verdict.traffic_kl_live:.5f}", "adapted": f"{verdict.traffic_kl_new:.5f}",
                 "rule": "adapted < live"},
                *([{"measure": "held-out answers and corrections KL", "live": f"{verdict.answer_kl_live:.5f}",
                    "adapted": f"{verdict.answer_kl_new:.5f}", "rule": "adapted <= live"}] if verdict.answer_kl_live is not None else []),
                {"measure": "corpus held-out KL", "live": f"{verdict.corpus_kl_live:.5f}", "adapted": f"{verdict.corpus_kl_new:.5f}",
                 "rule": f"adapted <= {verdict.corpus_reference:.5f} (as first fitted) x {1 + verdict.margin:.2f}"}])),
            **where_it_ran(),
        },
    )
    yield AssetCheckResult(check_name="weights_finite", passed=bool(finite), severity=AssetCheckSeverity.ERROR)
    yield AssetCheckResult(check_name="improves_heldout_traffic", passed=bool(verdict.improves_traffic),
                           severity=AssetCheckSeverity.WARN,
                           metadata={"live": verdict.traffic_kl_live, "adapted": verdict.traffic_kl_new,
                                     "answers_live": verdict.answer_kl_live if verdict.answer_kl_live is not None else MetadataValue.null(),
                                     "answers_adapted": verdict.answer_kl_new if verdict.answer_kl_new is not None else MetadataValue.null()})
    yield AssetCheckResult(check_name="keeps_original_corpus", passed=bool(verdict.keeps_corpus), severity=AssetCheckSeverity.WARN,
                           metadata={"live": verdict.corpus_kl_live, "adapted": verdict.corpus_kl_new,
                                     "as_first_fitted": verdict.corpus_reference, "margin": verdict.margin})
