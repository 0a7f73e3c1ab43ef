"""The real-model inputs as observable source assets, so lineage shows what captured data read:
the base model (one, from the catalogue's `base_model`), and per adapter its teacher, its
corpus and its traffic log. Each data version is the content hash of the files (sha256; a system
prompt's is the hash of its text; the traffic log's moves with every batch appended); "none"
where the catalogue names none."""

import hashlib

from dagster import DataVersion, DataVersionsByPartition, observable_source_asset

from ruv_resources import traffic_log
from ruv_resources.base_model import content_hash
from ruv_resources.store import default_root
from ruv_assets.catalogue.catalogue import current_catalogue
from ruv_assets.catalogue.partitions import adapter_partitions

NONE = "none"


def teacher_version(capture) -> str:
    if capture is None:
        return NONE
    if capture.system_prompt is not None:
        return hashlib.sha256(capture.system_prompt.encode()).hexdigest()
    return content_hash(capture.teacher_adapter or capture.teacher_model)


def corpus_version(capture) -> str:
    return NONE if capture is None else content_hash(capture.corpus)


@observable_source_asset(group_name="catalogue", description="The catalogue's base_model (a model directory or .gguf); its content hash.")
def base_model():
    path = current_catalogue().base_model
    return DataVersion(content_hash(path) if path else NONE)


@observable_source_asset(partitions_def=adapter_partitions, group_name="catalogue",
                         description="Each adapter's capture teacher (PEFT adapter, fine-tuned model or system prompt); its content hash.")
def capture_teacher():
    return DataVersionsByPartition({a.name: DataVersion(teacher_version(a.capture)) for a in current_catalogue().adapters()})


@observable_source_asset(partitions_def=adapter_partitions, group_name="catalogue",
                         description="Each adapter's capture corpus; its content hash.")
def capture_corpus():
    return DataVersionsByPartition({a.name: DataVersion(corpus_version(a.capture)) for a in current_catalogue().adapters()})


@observable_source_asset(partitions_def=adapter_partitions, group_name="catalogue",
                         description="Each role's traffic log ($RUV_HOME/traffic/<role>.jsonl: served requests and ruv feedback); "
                                     "its version moves as traffic arrives.")
def traffic():
    home = default_root()
    return DataVersionsByPartition({name: DataVersion(traffic_log.version(traffic_log.log_path(home, name)))
                                    for name in current_catalogue().adapter_names})
