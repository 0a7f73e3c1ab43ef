"""The traffic log of one role: every request a server answered or a client sent back with
`ruv feedback`, appended to `<RUV_HOME>/traffic/<role>.jsonl`, one JSON object a line.

Append-only and crash-safe, with the standard library only (the `ruv_vllm` plugin writes it from
vLLM's own environment through the same file):

- a batch is appended under an exclusive `flock` of `<role>.lock`, in one `write` on an
  `O_APPEND` descriptor, then `fsync`ed; only then is it acknowledged (its ids returned), so two
  writers never interleave and what was acknowledged is on disk;
- a writer killed mid-line leaves a line without its newline: the next writer seals it with one
  before its own records, and readers skip it (it fails to parse or its checksum does not match);
- a write that fails part way (a full disk) is cut back to the size before it, and nothing of the
  batch is acknowledged;
- the log is bounded (`max_bytes`): a batch that would pass the bound is refused whole with one
  line, and nothing already in the log is dropped (what was acknowledged is never lost).

Each record carries `id` (fresh per append), `ts` (seconds), `prompt`, `answer`, `quality` (in
[0, 1] or null), `correction`, `source` (`server` / `feedback`) and `sum`, a checksum of the
rest. `key` (prompt, answer, correction) is what a flood of duplicates shares.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
MAX_RECORD_BYTES = 64 * 1024  # one request, its answer and correction, as stored
ROLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
FIELDS = ("prompt", "answer", "quality", "correction")


class TrafficError(ValueError):
    """A traffic log that cannot take a batch (full, a bad role name, a failed write); nothing
    of the batch is acknowledged and nothing already logged changed."""


@dataclass(frozen=True)
class Record:
    prompt: str
    answer: str | None = None
    quality: float | None = None
    correction: str | None = None
    source: str = "feedback"
    id: str = ""
    ts: float = 0.0
    offset: int = -1  # byte offset of its line in the log (when read)

    @property
    def key(self) -> str:
        """What two copies of the same request share (not its id or time)."""
        return hashlib.sha256(json.dumps([self.prompt, self.answer, self.correction]).encode()).hexdigest()[:24]


@dataclass
class ReadResult:
    records: list[Record] = field(default_factory=list)
    bad_lines: int = 0  # torn or garbled lines skipped
    end: int = 0  # byte offset just past the last complete line read


def validate(obj, *, source: str = "feedback") -> tuple[Record | None, str]:
    """`(record, "")` for a good request object, or `(None, reason)`: not an object, an empty or
    missing prompt, a field of the wrong type, a quality outside [0, 1], or too large."""
    if not isinstance(obj, dict):
        return None, "not a JSON object"
    unknown = sorted(set(obj) - set(FIELDS))
    if unknown:
        return None, f"unknown field {unknown[0]!r} (fields: {', '.join(FIELDS)})"
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return None, "prompt missing or empty"
    for name in ("answer", "correction"):
        if obj.get(name) is not None and not isinstance(obj[name], str):
            return None, f"{name} is not a string"
    quality = obj.get("quality")
    if quality is not None:
        if isinstance(quality, bool) or not isinstance(quality, (int, float)) or not 0.0 <= float(quality) <= 1.0:
            return None, "quality outside [0, 1]"
        quality = float(quality)
    record = Record(prompt=prompt, answer=obj.get("answer"), quality=quality, correction=obj.get("correction") or None,
                    source=source)
    if len(_line(record, "0" * 32, 0.0)) > MAX_RECORD_BYTES:
        return None, f"larger than {MAX_RECORD_BYTES // 1024} KiB"
    return record, ""


def log_path(home: Path, role: str) -> Path:
    """`<home>/traffic/<role>.jsonl`; a role name that could leave the directory is refused."""
    if not ROLE_NAME.match(role) or role in (".", ".."):
        raise TrafficError(f"traffic: {role!r} is not a role name (letters, digits, _ . -)")
    return Path(home) / "traffic" / f"{role}.jsonl"


def _body(record: Record, rid: str, ts: float) -> dict:
    return {"id": rid, "ts": round(ts, 3), "source": record.source, "prompt": record.prompt, "answer": record.answer,
            "quality": record.quality, "correction": record.correction}


def _checksum(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def _line(record: Record, rid: str, ts: float) -> bytes:
    body = _body(record, rid, ts)
    body["sum"] = _checksum(body)
    return (json.dumps(body, ensure_ascii=False) + "\n").encode()


def append(path: Path, records: list[Record], *, max_bytes: int = DEFAULT_MAX_BYTES) -> list[str]:
    """Append `records` as one batch; returns their ids once they are on disk."""
    if not records:
        return []
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    now = time.time()
    ids = [uuid.uuid4().hex for _ in records]
    data = b"".join(_line(r, rid, now) for r, rid in zip(records, ids))
    lock = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and _last_byte(path, size) != b"\n":
                data = b"\n" + data  # seal a line a killed writer left open
            if size + len(data) > max_bytes:
                raise TrafficError(f"traffic: {path.name} is full ({size} of {max_bytes} bytes; the batch needs "
                                   f"{len(data)}): raise the bound or start a new log; nothing was appended")
            _write_all(fd, data, size, path)
        finally:
            os.close(fd)
    finally:
        os.close(lock)  # releases the flock
    return ids


def _last_byte(path: Path, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(size - 1)
        return f.read(1)


def _write_all(fd: int, data: bytes, size: int, path: Path) -> None:
    """One write, fsynced; on any failure the file is cut back to `size`."""
    try:
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(errno.ENOSPC, f"short write ({written} of {len(data)} bytes)")
        os.fsync(fd)
    except OSError as exc:
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        except OSError:
            pass
        raise TrafficError(f"traffic: writing {path.name} failed ({exc.strerror or exc}); nothing was appended") from None


def read(path: Path, start: int = 0) -> ReadResult:
    """Every intact record from byte `start` on (a torn or garbled line is counted, not read);
    a last line still without its newline (a write under way, or a killed one) is left for later."""
    path = Path(path)
    out = ReadResult(end=start)
    if not path.exists():
        return out
    with open(path, "rb") as f:
        f.seek(start)
        offset = start
        for raw in f:
            if not raw.endswith(b"\n"):
                break
            record = _parse(raw, offset)
            if record is None:
                out.bad_lines += raw.strip() != b""
            else:
                out.records.append(record)
            offset += len(raw)
            out.end = offset
    return out


def _parse(raw: bytes, offset: int) -> Record | None:
    try:
        body = json.loads(raw.decode("utf-8"))
        claimed = body.pop("sum")
        if not isinstance(body, dict) or claimed != _checksum(body):
            return None
        return Record(prompt=body["prompt"], answer=body["answer"], quality=body["quality"], correction=body["correction"],
                      source=body["source"], id=body["id"], ts=float(body["ts"]), offset=offset)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def version(path: Path) -> str:
    """The log's data version: the length up to its last complete line, and that line (read from
    the tail only), so a write under way does not move it."""
    path = Path(path)
    if not path.exists():
        return "empty"
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(max(0, size - 2 * MAX_RECORD_BYTES))
        tail = f.read()
    complete = tail[: tail.rfind(b"\n") + 1]
    lines = complete.split(b"\n")
    last = lines[-2] if len(lines) >= 2 else b""
    end = size - (len(tail) - len(complete))
    return "empty" if end == 0 else hashlib.sha256(f"{end}:".encode() + last).hexdigest()[:32]
