"""The traffic log: acknowledged records survive concurrent writers, a writer killed mid-line, a
full disk and the size bound; bad requests are refused with their reason."""

import json
import multiprocessing
import os
import resource
import signal
import subprocess
import sys
import time

import pytest

from ruv_resources import traffic_log as tl
from ruv_resources.traffic_log import Record, TrafficError


def _writer(path: str, worker: int, batches: int, queue) -> None:
    for i in range(batches):
        ids = tl.append(path, [Record(prompt=f"w{worker} r{i} " + "x" * (i % 50), answer="a", quality=0.5)])
        queue.put(ids[0])


def test_round_trip_and_checksum(tmp_path):
    path = tmp_path / "traffic" / "coder.jsonl"
    ids = tl.append(path, [Record(prompt="p1", answer="a1", quality=1.0), Record(prompt="p2", correction="c2")])
    got = tl.read(path)
    assert [r.id for r in got.records] == ids
    assert [(r.prompt, r.answer, r.quality, r.correction) for r in got.records] == [("p1", "a1", 1.0, None), ("p2", None, None, "c2")]
    assert got.bad_lines == 0 and got.end == path.stat().st_size
    assert got.records[1].offset > 0 and tl.read(path, got.records[1].offset).records[0].id == ids[1]
    # a line whose text was changed on disk fails its checksum and is skipped, the others stay
    text = path.read_text().replace('"p1"', '"P1"')
    path.write_text(text)
    again = tl.read(path)
    assert [r.id for r in again.records] == ids[1:] and again.bad_lines == 1


def test_concurrent_writers_lose_and_duplicate_nothing(tmp_path):
    path = str(tmp_path / "reviewer.jsonl")
    queue = multiprocessing.Queue()
    workers = [multiprocessing.Process(target=_writer, args=(path, w, 150, queue)) for w in range(4)]
    for w in workers:
        w.start()
    acknowledged = [queue.get(timeout=60) for _ in range(600)]
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    got = tl.read(path)
    ids = [r.id for r in got.records]
    assert len(ids) == 600 and set(ids) == set(acknowledged) and got.bad_lines == 0


KILLED_WRITER = """
import sys
from ruv_resources import traffic_log as tl
from ruv_resources.traffic_log import Record
path = sys.argv[1]
big = "y" * 60000
while True:
    ids = tl.append(path, [Record(prompt=f"{i} " + big) for i in range(40)])
    print(" ".join(ids), flush=True)
"""


def test_writer_killed_mid_append_loses_nothing_acknowledged(tmp_path):
    path = tmp_path / "security.jsonl"
    acknowledged: set[str] = set()
    for round_ in range(6):
        child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        time.sleep(0.3 + 0.13 * round_)
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate()
        acknowledged.update(out.split())
    # what a killed writer can leave: a line without its newline
    with open(path, "ab") as f:
        f.write(b'{"id": "torn", "prompt": "half a li')
    after = tl.append(path, [Record(prompt="after the crash")])
    got = tl.read(path)
    ids = [r.id for r in got.records]
    assert acknowledged <= set(ids), "an acknowledged record was lost"
    assert len(ids) == len(set(ids)), "a record was duplicated"
    assert ids[-1] == after[0] and got.records[-1].prompt == "after the crash"
    assert got.bad_lines >= 1  # the torn line, sealed by the next writer, is skipped


def test_size_bound_refuses_the_batch_and_keeps_the_log(tmp_path):
    path = tmp_path / "architect.jsonl"
    tl.append(path, [Record(prompt="first")], max_bytes=4096)
    before = path.read_bytes()
    with pytest.raises(TrafficError, match="full"):
        tl.append(path, [Record(prompt="z" * 5000)], max_bytes=4096)
    assert path.read_bytes() == before


FULL_DISK_WRITER = """
import resource, signal, sys
from ruv_resources import traffic_log as tl
from ruv_resources.traffic_log import Record, TrafficError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
try:
    tl.append(sys.argv[1], [Record(prompt="q" * 3000) for _ in range(4)])
except TrafficError as exc:
    print(exc)
    sys.exit(3)
"""


def test_full_disk_cuts_the_partial_write_back(tmp_path):
    path = tmp_path / "coder.jsonl"
    first = tl.append(path, [Record(prompt="kept")])
    before = path.read_bytes()
    # a file size limit makes the kernel stop the write part way, as a full filesystem does
    done = subprocess.run([sys.executable, "-c", FULL_DISK_WRITER, str(path), str(len(before) + 5000)],
                          capture_output=True, text=True)
    assert done.returncode == 3, done.stderr
    assert "nothing was appended" in done.stdout
    assert path.read_bytes() == before
    assert [r.id for r in tl.read(path).records] == first


def test_short_write_is_cut_back(tmp_path, monkeypatch):
    path = tmp_path / "coder.jsonl"
    tl.append(path, [Record(prompt="kept")])
    before = path.read_bytes()
    real_write = os.write

    def half(fd, data):
        real_write(fd, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tl.os, "write", half)
    with pytest.raises(TrafficError, match="No space left"):
        tl.append(path, [Record(prompt="lost")])
    monkeypatch.undo()
    assert path.read_bytes() == before


@pytest.mark.parametrize("obj, reason", [
    ([1, 2], "not a JSON object"),
    ({"answer": "a"}, "prompt missing"),
    ({"prompt": "   "}, "prompt missing or empty"),
    ({"prompt": "p", "quality": 1.5}, "quality outside"),
    ({"prompt": "p", "quality": -0.1}, "quality outside"),
    ({"prompt": "p", "quality": True}, "quality outside"),
    ({"prompt": "p", "answer": 3}, "answer is not a string"),
    ({"prompt": "p", "score": 1}, "unknown field 'score'"),
    ({"prompt": "p" * (tl.MAX_RECORD_BYTES + 1)}, "larger than"),
])
def test_bad_requests_are_refused_with_their_reason(obj, reason):
    record, why = tl.validate(obj)
    assert record is None and reason in why


def test_role_names_cannot_leave_the_directory(tmp_path):
    for bad in ("../x", "a/b", "..", ""):
        with pytest.raises(TrafficError, match="not a role name"):
            tl.log_path(tmp_path, bad)
    assert tl.log_path(tmp_path, "code_review") == tmp_path / "traffic" / "code_review.jsonl"


def test_version_moves_with_complete_lines_only(tmp_path):
    path = tmp_path / "r.jsonl"
    assert tl.version(path) == "empty"
    tl.append(path, [Record(prompt="one")])
    v1 = tl.version(path)
    with open(path, "ab") as f:
        f.write(b'{"half')  # a write under way
    assert tl.version(path) == v1
    tl.append(path, [Record(prompt="two")])
    assert tl.version(path) not in (v1, "empty")
