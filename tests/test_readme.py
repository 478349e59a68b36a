"""The README's promises that code can check: its Python-API example runs, and every function that the walk-through
"How a batch flows" names exists."""
from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    """The README's text under the heading `title`, up to the next heading of the same or a higher level."""
    heading = re.search(rf"^(#+) {re.escape(title)}$", README, re.M)
    assert heading, f"the README has no section {title!r}"
    rest = README[heading.end():]
    end = re.search(rf"^#{{1,{len(heading.group(1))}}} ", rest, re.M)
    return rest[:end.start()] if end else rest


def resolve(dotted: str):
    """The object a dotted name such as rnnlm.data.Vocab.build names (ImportError / AttributeError if none)."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def test_walkthrough_names_functions_that_exist():
    names = re.findall(r"`((?:rnnlm|kernels)\.[\w.]+)`", section("How a batch flows"))
    assert len(names) >= 15
    for name in names:
        assert callable(resolve(name)), name


@pytest.mark.slow
def test_python_api_example_runs(tiny_corpus, tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", section("Python API"), re.S)
    assert len(blocks) == 1
    (tmp_path / "my.txt").write_bytes(Path(tiny_corpus).read_bytes())
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", blocks[0]], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines[-3].startswith("我们") and len(lines[-3]) > len("我们")
    assert re.fullmatch(r"perplexity of a sentence: [0-9.]+", lines[-2])
    assert re.fullmatch(r"test perplexity: [0-9.]+", lines[-1])
    assert (tmp_path / "runs" / "demo" / "best.pt").is_file()
