"""Reading a text corpus: a `.jsonl` file of `{"text": ...}` lines, a `.txt` file, or a directory
of `.txt` files. Errors name the file and line; nothing here needs torch."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ruv_resources.errors import StoreError


class CorpusError(StoreError):
    """The corpus is missing, empty, or has a line that is not a JSON object with a "text" string."""


def read_corpus(path: str | os.PathLike) -> list[str]:
    """The documents of the corpus at `path`, in order, empty ones dropped."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".txt" and p.is_file())
        if not files:
            raise CorpusError(f"{path}: no .txt files")
        texts = [_read_text(f) for f in files]
    elif path.suffix == ".jsonl" and path.is_file():
        texts = _read_jsonl(path)
    elif path.suffix == ".txt" and path.is_file():
        texts = [_read_text(path)]
    elif not path.exists():
        raise CorpusError(f"{path}: no such corpus")
    else:
        raise CorpusError(f"{path}: a corpus is a .jsonl file, a .txt file or a directory of .txt files")
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise CorpusError(f"{path}: the corpus holds no text")
    return texts


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CorpusError(f"{path}: cannot read as UTF-8 text ({exc})") from None


def _read_jsonl(path: Path) -> list[str]:
    texts = []
    for number, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise CorpusError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise CorpusError(f'{path}:{number}: expected an object with a "text" string')
        texts.append(record["text"])
    return texts
