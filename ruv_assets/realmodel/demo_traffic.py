"""Traffic of another distribution than the demo's corpus (pydoc topics, prose): code review
requests built from the standard library's own Python source, as a team would send a reviewer
role. Every machine has them; the same `seed` gives the same requests in the same order."""

from __future__ import annotations

import ast
import importlib.util
import json
import textwrap
from pathlib import Path

import numpy as np

MODULES = ("textwrap", "shutil", "difflib", "fractions", "statistics", "heapq", "bisect", "calendar", "configparser",
           "csv", "argparse", "tempfile", "pathlib", "zipfile", "tarfile", "string", "glob", "fnmatch", "gettext",
           "ipaddress", "netrc", "pprint", "shlex", "smtplib", "socketserver", "tokenize", "uuid", "wave", "zipapp",
           "dataclasses", "enum", "functools", "inspect", "locale", "mimetypes", "optparse", "platform", "plistlib",
           "poplib", "quopri", "sched", "selectors", "subprocess", "sysconfig", "threading", "trace", "traceback")
ASKS = (
    "Review this Python function. Point out bugs, unclear names and missing tests.",
    "Please review the following code for correctness and readability.",
    "What would you change in this function before merging it?",
    "Code review request: is this function safe and clear? List concrete issues.",
)


def functions(min_lines: int = 4, max_lines: int = 30) -> list[str]:
    """Source of every top-level or method function of `MODULES` between the line bounds."""
    found = []
    for module in MODULES:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            continue
        source = Path(spec.origin).read_text(encoding="utf-8", errors="replace")
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if min_lines <= lines <= max_lines:
                    text = "\n".join(source.splitlines()[node.lineno - 1:node.end_lineno])
                    found.append(textwrap.dedent(text))
    return found


def code_review_requests(n: int, seed: int = 0) -> list[dict]:
    """`n` requests `{"prompt": ...}`: an ask and a function, drawn without repetition."""
    pool = functions()
    order = np.random.default_rng(seed).permutation(len(pool))[:n]
    if len(order) < n:
        raise ValueError(f"only {len(pool)} functions of the right size in the standard library modules listed")
    return [{"prompt": f"{ASKS[i % len(ASKS)]}\n\n```python\n{pool[k]}\n```"} for i, k in enumerate(order)]


def write_requests(path: Path, n: int, seed: int = 0) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in code_review_requests(n, seed)))
    return path
