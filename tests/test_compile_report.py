"""The compile report: every kernel configuration builds for sm_80 and sm_90 without spills, within shared
memory, and with tensor-core instructions where the configuration expects them (issue 3, Proof 3).

The machinery is tested on tiny kernels defined here (a tf32 tl.dot that must emit mma/wgmma, an ieee one,
and one that spills on purpose); the real kernels are compiled once per session, and every kernel module
that exists on disk must pass. A module that does not exist yet is skipped with a reason naming it.
"""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from kernels import compile_report as cr

REPO = Path(__file__).resolve().parent.parent

TINY_MODULE = '''
"""Tiny kernels for testing kernels.compile_report (written by tests/test_compile_report.py)."""
from kernels import _runtime  # noqa: F401
import triton
import triton.language as tl


@triton.jit
def dot_kernel(a_ptr, b_ptr, c_ptr, stride, BLOCK: tl.constexpr, PRECISION: tl.constexpr):
    r = tl.arange(0, BLOCK)
    offs = r[:, None].to(tl.int64) * stride + r[None, :]
    c = tl.dot(tl.load(a_ptr + offs), tl.load(b_ptr + offs), input_precision=PRECISION)
    tl.store(c_ptr + offs, c)


@triton.jit
def spill_kernel(x_ptr, y_ptr, BLOCK: tl.constexpr):
    # two warps keep a (BLOCK, BLOCK) fp32 tile live across a reduction: BLOCK*BLOCK/64 values per thread
    r = tl.arange(0, BLOCK)
    offs = r[:, None] * BLOCK + r[None, :]
    x = tl.load(x_ptr + offs)
    m = tl.sum(x * x, 1)
    tl.store(y_ptr + offs, x / m[:, None] + tl.exp(x))


def gpu_compile_configs():
    from kernels.compile_report import CompileConfig
    sig = {"a_ptr": "*fp32", "b_ptr": "*fp32", "c_ptr": "*fp32", "stride": "i32"}
    return [
        CompileConfig("dot_tf32", dot_kernel, sig, {"BLOCK": 64, "PRECISION": "tf32"}, True),
        CompileConfig("dot_ieee", dot_kernel, sig, {"BLOCK": 32, "PRECISION": "ieee"}, False),
        # says it expects tensor cores but computes in exact fp32: must be flagged
        CompileConfig("dot_ieee_claims_tc", dot_kernel, sig, {"BLOCK": 32, "PRECISION": "ieee"}, True),
        CompileConfig("spill", spill_kernel, {"x_ptr": "*fp32", "y_ptr": "*fp32"}, {"BLOCK": 128}, False,
                      num_warps=2),
    ]
'''


def test_compile_config_is_plain_dataclass():
    cfg = cr.CompileConfig(name="x", fn=None, signature={"a": "*fp32"}, constexprs={}, expect_tensor_cores=False)
    assert (cfg.num_warps, cfg.num_stages) == (4, 1)
    assert [f.name for f in __import__("dataclasses").fields(cfg)] == [
        "name", "fn", "signature", "constexprs", "expect_tensor_cores", "num_warps", "num_stages"]


def test_tensor_core_instruction_parser():
    ptx = textwrap.dedent("""
        mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 { %r1 }, { %r2 }, { %r3 }, { %r1 };
        mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 { %r5 }, { %r2 }, { %r3 }, { %r5 };
        @%p1 wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%r1}, %rd1, %rd2, 0, 1, 1;
        wgmma.fence.sync.aligned;
        fma.rn.f32 %f1, %f2, %f3, %f4;
    """)
    got = cr.tensor_core_instructions(ptx)
    assert got == {"mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32": 2,
                   "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16": 1}


def test_resource_usage_parser():
    text = ("Resource usage:\n Common:\n  GLOBAL:0\n Function k:\n"
            "  REG:80 STACK:8 SHARED:1024 LOCAL:4 CONSTANT[0]:400 TEXTURE:0 SURFACE:0 SAMPLER:0\n")
    assert cr._parse_resource_usage(text)["k"] == {
        "REG": 80, "STACK": 8, "SHARED": 1024, "LOCAL": 4, "CONSTANT[0]": 400, "TEXTURE": 0, "SURFACE": 0,
        "SAMPLER": 0}


@pytest.mark.slow
def test_machinery_on_tiny_kernels(tmp_path, monkeypatch):
    (tmp_path / "tiny_cr_kernels.py").write_text(TINY_MODULE)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("RNNLM_CACHE_DIR", str(tmp_path / "cache"))
    modules = ("tiny_cr_kernels", "tiny_cr_not_there")
    report = cr.compile_report((80, 90), modules, jobs=2)
    assert not report["cached"]
    assert report["modules"]["tiny_cr_not_there"].startswith("missing")
    assert report["modules"]["tiny_cr_kernels"].startswith("ok (4 configurations)")
    rows = {(r["config"], r["arch"]): r for r in report["rows"]}
    assert len(rows) == 8 and [r["arch"] for r in report["rows"][:2]] == ["sm_80", "sm_90"]

    for arch in ("sm_80", "sm_90"):
        tf32 = rows[("dot_tf32", arch)]
        assert tf32["ok"], tf32["problems"]
        assert tf32["registers"] > 0 and tf32["local_bytes"] == 0 and tf32["spill_stores"] == 0
        assert 0 < tf32["shared_bytes"] <= cr.SHARED_LIMIT[int(arch[3:])]
        instrs = " ".join(tf32["tensor_core_instructions"])
        assert ("wgmma.mma_async" if arch == "sm_90" else "mma.sync") in instrs and "tf32" in instrs

        ieee = rows[("dot_ieee", arch)]
        assert ieee["ok"] and ieee["tensor_core_instructions"] == {}
        claims = rows[("dot_ieee_claims_tc", arch)]
        assert not claims["ok"] and any("tensor-core" in p for p in claims["problems"])

        spill = rows[("spill", arch)]
        assert spill["compiled"] and not spill["ok"]
        assert spill["spill_stores"] > 0 and any("spill" in p for p in spill["problems"])

    out = tmp_path / "out"
    cr.write_report(report, out)
    data = json.loads((out / "compile_report.json").read_text())
    assert len(data["rows"]) == 8
    md = (out / "compile_report.md").read_text()
    assert "tiny_cr_not_there" in md and "| dot_kernel | dot_tf32 | sm_90 |" in md and "wgmma" in md

    again = cr.compile_report((90,), modules)  # from the cache: no compilation
    assert again["cached"] and [r["config"] for r in again["rows"]] == [
        "dot_tf32", "dot_ieee", "dot_ieee_claims_tc", "spill"]


# ---------------------------------------------------------------------------------------------- real kernels
@pytest.fixture(scope="module")
def real_report():
    return cr.compile_report(cr.ARCHS, cr.KERNEL_MODULES)


def _module_path(name: str) -> Path:
    return REPO.joinpath(*name.split(".")).with_suffix(".py")


def test_some_kernel_module_exists():
    present = [m for m in cr.KERNEL_MODULES if _module_path(m).is_file()]
    assert present, f"none of {cr.KERNEL_MODULES} exists"


@pytest.mark.slow
@pytest.mark.parametrize("module", cr.KERNEL_MODULES)
def test_every_configuration_compiles_cleanly(module, real_report):
    if not _module_path(module).is_file():
        pytest.skip(f"{module} does not exist yet ({_module_path(module).relative_to(REPO)})")
    status = real_report["modules"][module]
    assert status.startswith("ok") and "duplicate" not in status, f"{module}: {status}"
    rows = [r for r in real_report["rows"] if r["module"] == module]
    assert rows, f"{module}: gpu_compile_configs() gave no configurations"
    assert {r["arch"] for r in rows} == {"sm_80", "sm_90"}
    bad = [f"{r['config']} {r['arch']}: {'; '.join(r['problems'])}" for r in rows if not r["ok"]]
    assert not bad, "\n".join(bad)
    for r in rows:  # the checks `ok` stands for, spelled out
        assert r["compiled"] and r["local_bytes"] == 0 and r["stack_bytes"] == 0
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0
        assert r["shared_bytes"] <= r["shared_limit"]
        if r["expect_tensor_cores"]:
            assert r["tensor_core_instructions"], f"{r['config']} {r['arch']}: no mma/wgmma"
