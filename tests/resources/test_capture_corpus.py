"""Corpora and token windows: what capture reads before any model is loaded."""

import numpy as np
import pytest

from ruv_resources.capture.corpus import CorpusError, read_corpus
from ruv_resources.capture.windows import cut_windows, first_windows, make_windows


def test_jsonl_txt_and_directory(tmp_path):
    (tmp_path / "c.jsonl").write_text('{"text": "a b"}\n\n{"text": "c"}\n')
    assert read_corpus(tmp_path / "c.jsonl") == ["a b", "c"]
    d = tmp_path / "docs"
    d.mkdir()
    (d / "2.txt").write_text("second")
    (d / "1.txt").write_text("first")
    assert read_corpus(d) == ["first", "second"]
    assert read_corpus(d / "1.txt") == ["first"]


@pytest.mark.parametrize("content, message", [
    ('{"text": "ok"}\nnot json\n', r"c.jsonl:2: not JSON"),
    ('["a"]\n', r'c.jsonl:1: expected an object with a "text" string'),
    ('{"text": "  "}\n', "holds no text"),
])
def test_bad_corpora(tmp_path, content, message):
    (tmp_path / "c.jsonl").write_text(content)
    with pytest.raises(CorpusError, match=message):
        read_corpus(tmp_path / "c.jsonl")


def test_missing_and_wrong_kind(tmp_path):
    with pytest.raises(CorpusError, match="no such corpus"):
        read_corpus(tmp_path / "none.jsonl")
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(CorpusError, match="a corpus is a .jsonl file"):
        read_corpus(tmp_path / "x.csv")


def test_windows_align_teacher_and_student():
    body = cut_windows([[5, 6, 7], [8, 9, 10, 11, 12]], [0], window=3, max_tokens=7)
    assert body.tolist() == [[5, 6, 7], [0, 8, 9]]  # full windows only, at most max_tokens
    w = make_windows(body, bos=1, prefix=[40, 41], heldout_fraction=0.5, seed=0)
    assert w.student[:, 0].tolist() == [1, 1] and w.teacher[:, :3].tolist() == [[1, 40, 41]] * 2
    assert w.offset == 3 and np.array_equal(w.teacher[:, w.offset:], w.student[:, 1:])
    assert sorted(w.train.tolist() + w.heldout.tolist()) == [0, 1] and len(w.heldout) == 1


def test_first_windows_start_each_text_and_skip_short_ones():
    body, skipped = first_windows([[5, 6, 7, 8], [9], [10, 11, 12], [13, 14, 15]], window=3, max_tokens=7)
    assert body.tolist() == [[5, 6, 7], [10, 11, 12]] and skipped == 1  # at most max_tokens: two windows
    empty, skipped = first_windows([[1], [2]], window=3, max_tokens=9)
    assert empty.shape == (0, 3) and skipped == 2
