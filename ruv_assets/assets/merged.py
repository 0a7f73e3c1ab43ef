"""`merged_adapter`: a composite merged from the trained adapters the catalogue names, with what
it keeps of each source task (retention) measured on that task's validation data."""

import numpy as np
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AllPartitionMapping,
    AssetDep,
    AssetExecutionContext,
    DataVersion,
    MetadataValue,
    Output,
    asset,
)

from ruv_kernels.merge import merge
from ruv_resources.dagster_resources import StoreResource
from ruv_resources.dataset_format import load_dataset
from ruv_resources.errors import StoreError
from ruv_resources.peft_format import load_adapter, save_adapter
from ruv_assets.catalogue import versions
from ruv_assets.judging.composite import merge_sources, merged_adapter_from
from ruv_assets.catalogue.config import AdapterMetadata
from ruv_assets.judging.evaluation import problems_for, validation_loss, zero_validation_loss
from ruv_assets.catalogue.partitions import composite_partitions
from ruv_assets.judging.plots import markdown_table
from ruv_assets.catalogue.catalogue import current_catalogue
from ruv_assets.catalogue.geometry import GeometryResource
from ruv_assets.orchestration.worker import where_it_ran

CHECKS = [
    AssetCheckSpec("weights_finite", asset="merged_adapter", blocking=True, description="every A and B value is finite"),
    AssetCheckSpec("beats_zero_adapter", asset="merged_adapter", blocking=True,
                   description="on every source task the composite's validation loss is below the zero adapter's"),
    AssetCheckSpec("retention_within_bounds", asset="merged_adapter", blocking=True,
                   description="each source keeps at least the composite's min_retention of its own improvement over zero"),
]


@asset(
    partitions_def=composite_partitions,
    # Which adapters a composite names is catalogue data that changes at run time: the dependency is
    # declared on every trained partition, and the composite reads the ones it names from the store.
    deps=["composite_entry", AssetDep("trained_adapter", partition_mapping=AllPartitionMapping())],
    code_version=versions.MERGED_ADAPTER,
    io_manager_key="store_io",
    group_name="adapters",
    kinds={"numba", "safetensors"},
    check_specs=CHECKS,
    description="A composite of trained adapters merged on their deltas (method and sources from the catalogue).",
)
def merged_adapter(context: AssetExecutionContext, store: StoreResource, geometry: GeometryResource):
    name = context.partition_key
    composite = current_catalogue().composite(name)
    by_name, missing = {}, []
    for source in composite.sources:
        try:
            by_name[source] = store.store().get("trained_adapter", source)  # the newest that passed its checks, verified
        except StoreError as exc:
            if "nothing stored" not in str(exc):
                raise
            missing.append(source)
    if missing:
        raise ValueError(f"composite {name}: no trained_adapter for {', '.join(missing)}; materialise them first")
    geo = geometry.geometry()
    loaded = [load_adapter(by_name[s].path, **geo.dims()) for s in composite.sources]
    sources = [item.adapter.astype(np.float32) for item in loaded]
    result = merge(composite.method, merge_sources(sources), weights=composite.weights, density=composite.density,
                   lam=composite.lam, t=composite.t, rank=composite.rank, seed=composite.seed,
                   dare_combine=composite.dare_combine if composite.method == "dare" else "linear")
    merged = merged_adapter_from(result, sources)

    retention_rows = []
    for source_name, own, item in zip(composite.sources, sources, loaded):
        # the dataset this source was trained on, not whatever was generated since
        trained_on = item.metadata.get("custom", {}).get("dataset_version") or None
        dataset_obj = store.store().get("synthetic_dataset", source_name, trained_on)
        entry = current_catalogue().adapter(source_name)
        if entry.capture is not None:
            retention_rows.append(_captured_retention(context, source_name, entry, item, merged, dataset_obj))
            continue
        dataset = load_dataset(dataset_obj.path)
        keys = [k for k in own.keys() if k in dataset.targets]
        problems, q_val = problems_for(dataset, keys), dataset.quality[dataset.val_idx]
        own_loss = validation_loss(own, problems, q_val)
        zero_loss = zero_validation_loss(problems, q_val)
        merged_loss = validation_loss(merged, problems, q_val)
        gain = zero_loss - own_loss
        retention_rows.append({
            "task": source_name, "merged_val_loss": merged_loss, "own_val_loss": own_loss, "zero_val_loss": zero_loss,
            "retention": float((zero_loss - merged_loss) / gain) if gain > 0 else 0.0,
        })

    meta = AdapterMetadata(name=name, dataset_description=f"{composite.method} merge of {', '.join(composite.sources)}",
                           created_at_ms=0, modified_at_ms=0,  # reproducible, as trained_adapter
                           custom={"method": composite.method, "sources": ",".join(composite.sources)})
    source_rows = [{"source": f"trained_adapter[{s}]", "data_version": by_name[s].data_version} for s in composite.sources]
    params = {k: v for k, v in result.params.items() if v is not None}
    finite = merged.is_finite()
    beats = all(r["merged_val_loss"] < r["zero_val_loss"] for r in retention_rows)
    worst = min(r["retention"] for r in retention_rows)
    retained = bool(worst >= composite.min_retention)
    stored = store.store().write("merged_adapter", name, lambda d: save_adapter(merged, d, metadata=meta.model_dump(mode="json")),
                                 set_latest=finite and beats and retained)
    yield Output(
        stored,
        data_version=DataVersion(stored.data_version),
        metadata={
            "path": MetadataValue.path(str(stored.path)),
            "method": composite.method,
            "parameters": MetadataValue.json({k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()}),
            "sources": MetadataValue.md(markdown_table(source_rows)),
            "rank": int(result.rank),
            "params": merged.spec.param_count(),
            "reconstruction_error": float(result.reconstruction_error),
            "retention": MetadataValue.md(markdown_table(retention_rows)),
            "min_retention_observed": float(worst),
            "mean_retention": float(np.mean([r["retention"] for r in retention_rows])),
            **where_it_ran(),
        },
    )
    yield AssetCheckResult(check_name="weights_finite", passed=bool(finite), severity=AssetCheckSeverity.ERROR)
    yield AssetCheckResult(check_name="beats_zero_adapter", passed=bool(beats), severity=AssetCheckSeverity.ERROR,
                           metadata={"tasks": ", ".join(f"{r['task']}={r['merged_val_loss']:.4g}<{r['zero_val_loss']:.4g}" for r in retention_rows)})
    yield AssetCheckResult(check_name="retention_within_bounds", passed=retained,
                           severity=AssetCheckSeverity.ERROR,
                           metadata={"min_retention_observed": float(worst), "bound": composite.min_retention})


def _captured_retention(context, source_name, entry, item, merged, dataset_obj) -> dict:
    """A captured source's task on the merge, judged on the model: KL to its teacher on its held-out
    text with the merge loaded by PEFT, against its own adapter's (recorded when it was trained) and
    the base model's. Retention is the share of the source's own KL reduction the merge keeps."""
    from ruv_assets.realmodel import captured

    scores = captured.judge(source_name, entry.capture, dataset_obj.path, merged, current_catalogue().base_model, context.log.info)
    own = item.metadata.get("custom", {})
    base_kl, own_kl, merged_kl = scores["teacher_kl_base"], float(own.get("teacher_kl", scores["teacher_kl_base"])), scores["teacher_kl"]
    gain = base_kl - own_kl
    # the val-loss columns carry KL here, so the shared checks (beats zero, retention) read them alike
    return {"task": source_name, "merged_val_loss": merged_kl, "own_val_loss": own_kl, "zero_val_loss": base_kl,
            "retention": float((base_kl - merged_kl) / gain) if gain > 0 else 0.0, "teacher_top1": scores["teacher_top1"],
            "measure": "teacher KL on held-out text"}
