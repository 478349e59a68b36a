"""The shape of the rnnlm package, as the team agreed on it: modules that fit in a head, functions that fit on a
screen, and one seam between the backends."""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rnnlm.checks import one_of, positive_int, positive_number
from rnnlm.errors import UsageError, flag

PACKAGE = Path(__file__).resolve().parents[1] / "rnnlm"
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_and_functions_stay_small(path):
    source = path.read_text(encoding="utf-8")
    assert source.count("\n") <= MAX_MODULE_LINES
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            assert node.end_lineno - node.lineno + 1 <= MAX_FUNCTION_LINES, node.name


def test_only_backends_py_tells_the_backends_apart():
    """No `== "triton"`, `!= "cudnn"`, `in ("torch", ...)` on a backend outside rnnlm/backends.py (the report's
    columns are benchmark labels, not backends that run)."""
    pattern = re.compile(r"backend\w*\s*(==|!=|\bin\b)|(==|!=)\s*['\"](triton|torch|cudnn)['\"]")
    for path in MODULES:
        if path.name == "backends.py" or path.parent.name == "report":
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            assert not pattern.search(line), f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}"


def test_library_errors_name_parameters_and_clis_name_flags():
    err = UsageError("{batch_size} 64 is too large for 1000 tokens of seq_len 20: use {batch_size} 49",
                     params=("batch_size",))
    assert str(err) == "batch_size 64 is too large for 1000 tokens of seq_len 20: use batch_size 49"
    assert err.cli_message() == "--batch-size 64 is too large for 1000 tokens of seq_len 20: use --batch-size 49"
    assert flag("time_budget") == "--time-budget"
    with pytest.raises(UsageError) as info:
        positive_int("seq_len", 0)
    assert str(info.value) == "seq_len must be a positive integer, got 0"
    assert info.value.cli_message() == "--seq-len must be a positive integer, got 0"
    with pytest.raises(UsageError) as info:
        positive_int("batch size", True)                    # words, not a parameter: printed as they are
    assert info.value.cli_message() == "batch size must be a positive integer, got True"
    for bad in (0, -1.5, float("nan"), float("inf"), "1", None):
        with pytest.raises(UsageError, match="lr must be a positive number"):
            positive_number("lr", bad)
    assert positive_number("time_budget", None, allow_none=True) is None
    with pytest.raises(UsageError, match="backend must be one of torch, triton"):
        one_of("backend", "tpu", ("torch", "triton"))


def test_the_model_and_generating_ids_need_neither_tokenizer_nor_plots():
    """A GPU image has torch and triton but not jieba, tqdm, snownlp or matplotlib (benchmarks/gpu_check.py)."""
    code = ("import sys\n"
            "for name in ('jieba', 'tqdm', 'snownlp', 'matplotlib'):\n"
            "    sys.modules[name] = None\n"
            "import torch\n"
            "from rnnlm.model import ModelConfig, WordRNN\n"
            "from rnnlm.inference.generation import generate_ids\n"
            "model = WordRNN(ModelConfig(vocab_size=50, embed_size=8, hidden_size=16))\n"
            "assert generate_ids(model, [2, 3], 5, seed=0).shape == (1, 5)\n"
            "x = torch.randint(0, 50, (2, 3))\n"
            "model.loss(x, x)[0].backward()\n")
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
