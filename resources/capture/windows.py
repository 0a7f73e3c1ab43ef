"""Token windows: the corpus cut into equal sequences, the student's and the teacher's views of each.

Two ways to cut: `first_windows` takes each text's first `window` tokens (one sequence per text,
starting where the text starts, as a served request does after its system prompt); `cut_windows`
packs the texts into one stream and cuts it anywhere (uses all of the corpus, but a sequence may
start mid-text and span two texts).

The student reads `[BOS] + window`; the teacher reads `[BOS] + prefix + window`, where the prefix
is a system prompt followed by a blank line (tokenised separately, so the window's positions
align) or empty. BOS goes first even where the tokenizer does not add it itself: served requests
start with it too, as chat templates do. Equal lengths mean no padding and no attention mask.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


@dataclass
class Windows:
    """`student [N, 1+T]` and `teacher [N, P+T]` token ids; teacher column `offset + j` is aligned
    with student column `1 + j`. `train` and `heldout` index the windows."""

    student: np.ndarray
    teacher: np.ndarray
    offset: int
    train: np.ndarray
    heldout: np.ndarray

    @property
    def window(self) -> int:
        return int(self.student.shape[1] - 1)

    def subset(self, rows: np.ndarray) -> "Windows":
        rows = np.asarray(rows)
        everything = np.arange(len(rows))
        return Windows(self.student[rows], self.teacher[rows], self.offset, everything, everything[:0])


def cut_windows(token_lists: list[list[int]], separator: list[int], window: int, max_tokens: int) -> np.ndarray:
    """Documents joined by `separator`, cut into `[N, window]` full windows, at most `max_tokens` in all."""
    stream: list[int] = []
    limit = (max_tokens // window) * window
    for i, tokens in enumerate(token_lists):
        if i:
            stream.extend(separator)
        stream.extend(tokens)
        if len(stream) >= limit:
            break
    n = min(len(stream), limit) // window
    return np.asarray(stream[: n * window], dtype=np.int64).reshape(n, window)


def first_windows(token_lists: Iterable[list[int]], window: int, max_tokens: int) -> tuple[np.ndarray, int]:
    """`([N, window] the first `window` tokens of each text long enough, skipped)`, at most
    `max_tokens` in all; `skipped` counts the texts shorter than one window. `token_lists` is
    read only until the windows are full (a generator tokenises no more than is used)."""
    rows: list[list[int]] = []
    skipped = 0
    for tokens in token_lists if window <= max_tokens else ():
        if len(tokens) < window:
            skipped += 1
            continue
        rows.append(tokens[:window])
        if (len(rows) + 1) * window > max_tokens:
            break
    return np.asarray(rows, dtype=np.int64).reshape(len(rows), window), skipped


def make_windows(body: np.ndarray, bos: int, prefix: list[int], heldout_fraction: float, seed: int) -> Windows:
    """Student and teacher sequences for each window, and a seeded train / held-out split."""
    n = body.shape[0]
    bos_column = np.full((n, 1), bos, dtype=np.int64)
    student = np.concatenate([bos_column, body], axis=1)
    prefix_block = np.tile(np.asarray([bos] + list(prefix), dtype=np.int64), (n, 1))
    teacher = np.concatenate([prefix_block, body], axis=1)
    order = np.random.default_rng(seed).permutation(n)
    n_held = max(1, int(round(n * heldout_fraction)))
    return Windows(student, teacher, 1 + len(prefix), np.sort(order[n_held:]), np.sort(order[:n_held]))
