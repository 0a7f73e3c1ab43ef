"""The Dagster UI for real: `dagster dev` on a free loopback port, the definitions checked through
GraphQL, a run launched through GraphQL, and the asset graph page rendered by headless Chromium.
See docs/ui-test.md."""

from __future__ import annotations

import json
import shutil
import time
import urllib.parse

import pytest
from PIL import Image

from tests.e2e.conftest import REPO, LOCATION_NAME, DagsterUI, open_browser

EXPECTED_ASSETS = ["preset_adapter", "synthetic_dataset", "trained_adapter", "merged_adapter", "served_adapter"]
EXPECTED_CHECKS = {
    "trained_adapter": ["weights_finite", "beats_zero_adapter", "near_noise_floor"],
    "merged_adapter": ["weights_finite", "beats_zero_adapter", "retention_within_bounds"],
}
EXPECTED_SENSOR = "promotion_sensor"
EXPECTED_SCHEDULE = "retrain_schedule"
EXPECTED_JOBS = ["train_job", "merge_job", "promote_job"]

RUN_ASSET, RUN_PARTITION = "preset_adapter", "coder"
RUN_TIMEOUT = 300.0
RENDER_TIMEOUT = 60.0
ASSET_GRAPH_ROUTE = "/asset-groups"  # "Global asset lineage" in Dagster 1.13 (sidebar: Lineage)
SCREENSHOT_COPY = REPO / "bench" / "out" / "ui-asset-graph.png"
IMPLICIT_ASSET_JOB = "__ASSET_JOB"

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def repository(ui: DagsterUI) -> dict:
    data = ui.gql("""{ repositoriesOrError { __typename
        ... on RepositoryConnection { nodes { name location { name } jobs { name } } }
        ... on PythonError { message } } }""")["repositoriesOrError"]
    assert data["__typename"] == "RepositoryConnection", data
    [repo] = [r for r in data["nodes"] if r["location"]["name"] == LOCATION_NAME]
    return repo


def selector(repo: dict) -> dict:
    return {"repositoryName": repo["name"], "repositoryLocationName": repo["location"]["name"]}


def test_definitions_are_served(dagster_ui: DagsterUI):
    ui = dagster_ui
    assert ui.gql("{ shouldShowNux }")["shouldShowNux"] is False, "dagster.yaml must set `nux: enabled: false`"

    nodes = ui.gql("""{ assetNodes { assetKey { path } jobNames
        assetChecksOrError { __typename ... on AssetChecks { checks { name } } } } }""")["assetNodes"]
    by_key = {"/".join(n["assetKey"]["path"]): n for n in nodes}
    missing = [a for a in EXPECTED_ASSETS if a not in by_key]

    checks: dict[str, list[str]] = {}
    for asset, node in by_key.items():
        result = node["assetChecksOrError"]
        assert result["__typename"] == "AssetChecks", f"{asset}: {result}"
        checks[asset] = sorted(c["name"] for c in result["checks"])
    missing_checks = {a: sorted(set(names) - set(checks.get(a, []))) for a, names in EXPECTED_CHECKS.items()}
    missing_checks = {a: names for a, names in missing_checks.items() if names}

    repo = repository(ui)
    jobs = {j["name"] for j in repo["jobs"]}
    missing_jobs = [j for j in EXPECTED_JOBS if j not in jobs]

    instigators = ui.gql("""query($s: RepositorySelector!) {
        sensorsOrError(repositorySelector: $s) { __typename
            ... on Sensors { results { name sensorState { status } } } ... on PythonError { message } }
        schedulesOrError(repositorySelector: $s) { __typename
            ... on Schedules { results { name cronSchedule scheduleState { status } } } ... on PythonError { message } } }""",
                         {"s": selector(repo)})
    assert instigators["sensorsOrError"]["__typename"] == "Sensors", instigators
    assert instigators["schedulesOrError"]["__typename"] == "Schedules", instigators
    sensors = {s["name"]: s for s in instigators["sensorsOrError"]["results"]}
    schedules = {s["name"]: s for s in instigators["schedulesOrError"]["results"]}

    problems = []
    if missing:
        problems.append(f"assets missing from the graph: {missing} (served: {sorted(by_key)})")
    if missing_checks:
        problems.append(f"asset checks missing: {missing_checks} (served: {checks})")
    if missing_jobs:
        problems.append(f"jobs missing: {missing_jobs} (served: {sorted(jobs)})")
    if EXPECTED_SENSOR not in sensors:
        problems.append(f"sensor {EXPECTED_SENSOR!r} missing (served: {sorted(sensors)})")
    if EXPECTED_SCHEDULE not in schedules:
        problems.append(f"schedule {EXPECTED_SCHEDULE!r} missing (served: {sorted(schedules)})")
    elif schedules[EXPECTED_SCHEDULE]["scheduleState"]["status"] != "STOPPED":
        problems.append(f"{EXPECTED_SCHEDULE} must be stopped by default: {schedules[EXPECTED_SCHEDULE]}")
    assert not problems, "\n".join(problems)


def test_launched_run_materialises_a_partition(dagster_ui: DagsterUI):
    ui = dagster_ui
    repo = repository(ui)
    [node] = ui.gql("""query($k: [AssetKeyInput!]) { assetNodes(assetKeys: $k) { jobNames } }""",
                    {"k": [{"path": [RUN_ASSET]}]})["assetNodes"]
    implicit = [j for j in node["jobNames"] if j.startswith(IMPLICIT_ASSET_JOB)]
    assert implicit, f"{RUN_ASSET} is in no implicit asset job: {node['jobNames']}"

    launched = ui.gql("""mutation($p: ExecutionParams!) { launchRun(executionParams: $p) { __typename
        ... on LaunchRunSuccess { run { runId status } }
        ... on PythonError { message stack }
        ... on InvalidSubsetError { message }
        ... on PipelineNotFoundError { message }
        ... on RunConfigValidationInvalid { errors { message } } } }""", {"p": {
        "selector": {**selector(repo), "jobName": implicit[0], "assetSelection": [{"path": [RUN_ASSET]}]},
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": RUN_PARTITION}]},
    }})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", json.dumps(launched, indent=1)
    run_id = launched["run"]["runId"]

    deadline, status = time.monotonic() + RUN_TIMEOUT, None
    while time.monotonic() < deadline:
        status = ui.gql("""query($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status } } }""",
                        {"id": run_id})["runOrError"].get("status")
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(1)
    if status != "SUCCESS":
        events = ui.gql("""query($id: ID!) { logsForRun(runId: $id, limit: 500) { __typename
            ... on EventConnection { events { __typename ... on MessageEvent { message level }
                ... on ErrorEvent { error { message stack } } } } } }""", {"id": run_id})["logsForRun"]
        lines = [f"{e.get('level')} {e['__typename']}: {e.get('message')}"
                 + (f"\n{e['error']['message']}{''.join(e['error']['stack'])}" if e.get("error") else "")
                 for e in events.get("events", [])]
        pytest.fail(f"run {run_id} ended {status} (waited at most {RUN_TIMEOUT:.0f}s):\n" + "\n".join(lines[-40:]))

    asset = ui.gql("""query($k: AssetKeyInput!, $p: [String!]) { assetOrError(assetKey: $k) { __typename
        ... on Asset { assetMaterializations(partitions: $p) { partition runId
            metadataEntries { label ... on PathMetadataEntry { path } } } } } }""",
                   {"k": {"path": [RUN_ASSET]}, "p": [RUN_PARTITION]})["assetOrError"]
    assert asset["__typename"] == "Asset", asset
    ours = [m for m in asset["assetMaterializations"] if m["runId"] == run_id]
    assert ours and ours[0]["partition"] == RUN_PARTITION, asset
    partition_dir = ui.ruv_home / RUN_ASSET / RUN_PARTITION
    files = sorted(partition_dir.rglob("*.safetensors"))
    assert files, f"no safetensors file under {partition_dir}"
    paths = [e["path"] for e in ours[0]["metadataEntries"] if e.get("path")]
    for path in paths:  # a recorded path points into this RUV_HOME
        assert path.startswith(str(partition_dir)), paths


def expanded_groups_query(ui: DagsterUI) -> str:
    """With more than one asset group the global graph starts with every group collapsed to a box;
    the page keeps its expanded groups in the `expanded` query parameter (group ids are
    `global@global:<group>`, or `<repo>@<location>:<group>` under a per-location feature flag)."""
    repo = repository(ui)
    groups = sorted({n["groupName"] for n in ui.gql("{ assetNodes { groupName } }")["assetNodes"]})
    ids = [f"global@global:{g}" for g in groups] + [f"{repo['name']}@{repo['location']['name']}:{g}" for g in groups]
    return "?" + urllib.parse.urlencode({"expanded": ",".join(ids)}, safe="@:,")


GRAPH_STATE_JS = """(() => {
  const nodes = Array.from(document.querySelectorAll('svg foreignObject'));
  const names = [];
  for (const n of nodes) {
    names.push(n.textContent || '');  // an SVG element has no innerText
    for (const e of n.querySelectorAll('[title],[data-tooltip]')) names.push(e.getAttribute('title') || '', e.getAttribute('data-tooltip') || '');
  }
  return {graph: names.join('\\n'), nodes: nodes.length, body: document.body ? document.body.innerText : '',
          dialogs: document.querySelectorAll('[role="dialog"], [aria-modal="true"]').length, title: document.title};
})()"""


def test_asset_graph_page_renders(dagster_ui: DagsterUI, tmp_path):
    url = dagster_ui.url + ASSET_GRAPH_ROUTE + expanded_groups_query(dagster_ui)
    # Wait for every asset the server has (not only the expected ones), so a missing asset fails fast.
    served = [n["assetKey"]["path"][-1] for n in dagster_ui.gql("{ assetNodes { assetKey { path } } }")["assetNodes"]]
    with open_browser(tmp_path) as browser:
        browser.navigate(url)
        deadline, state, seen = time.monotonic() + RENDER_TIMEOUT, {}, 0
        while time.monotonic() < deadline:
            state = browser.evaluate(GRAPH_STATE_JS) or {}
            complete = state.get("nodes") and all(a in state.get("graph", "") for a in served)
            seen = seen + 1 if complete else 0
            if seen >= 3:  # the graph stayed complete for ~1 s: layout and zoom-to-fit have settled
                break
            time.sleep(0.4)
        time.sleep(0.5)
        png = browser.screenshot(tmp_path / "ui-asset-graph.png")
        state = browser.evaluate(GRAPH_STATE_JS) or state
    SCREENSHOT_COPY.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(png, SCREENSHOT_COPY)

    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert len(data) > 10_000, f"suspiciously small screenshot: {len(data)} bytes"
    with Image.open(png) as image:
        assert image.size == (browser.width, browser.height), image.size
        gray = image.convert("L")
        low, high = gray.getextrema()
        assert high - low > 64, f"screenshot is (nearly) uniform: {low}..{high}"
        assert len(gray.getcolors(maxcolors=256 * 256) or range(257)) > 16, "screenshot has almost no detail"

    assert state.get("dialogs") == 0, f"a dialog (welcome pop-up?) covers the page: {state.get('body', '')[:500]}"
    missing_in_graph = [a for a in dict.fromkeys(EXPECTED_ASSETS + served) if a not in state.get("graph", "")]
    assert not missing_in_graph, (
        f"asset names not drawn in the graph of {url}: {missing_in_graph} (served by GraphQL: {served}); "
        f"{state.get('nodes')} graph nodes; screenshot {SCREENSHOT_COPY}; page text: {state.get('body', '')[:800]!r}")
