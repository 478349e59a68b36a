"""The compile report: every kernel configuration builds for sm_80 and sm_90 without spills, within shared
memory, with tensor-core instructions where the configuration expects them, cp.async where it is pipelined and
a grid barrier's release/acquire instructions where it has one (issues 3, 10 and 11), each specialised and
compiled as Triton compiles the launch it stands for (launch options included).

The machinery is tested on tiny kernels defined here (a tf32 tl.dot that must emit mma/wgmma, an ieee one, a
pipelined loop that must emit cp.async, one that spills on purpose, a cooperative grid barrier, and one whose
relaxed atomics must be flagged); the specialization rule is checked against
the installed Triton's own; the real kernels are compiled once per session, and every kernel module that exists on
disk must pass. A module that does not exist yet is skipped with a reason naming it.
"""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from kernels import _utils
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


@triton.jit
def loop_dot_kernel(a_ptr, b_ptr, c_ptr, K, BLOCK: tl.constexpr):
    # (16, K) @ (K, BLOCK) in BLOCK-wide K tiles: the loop whose loads the pipeliner turns into cp.async
    rm = tl.arange(0, 16)
    rn = tl.arange(0, BLOCK)
    acc = tl.zeros((16, BLOCK), tl.float32)
    for k0 in range(0, K, BLOCK):
        a = tl.load(a_ptr + rm[:, None] * K + k0 + rn[None, :])
        b = tl.load(b_ptr + (k0 + rn[:, None]) * BLOCK + rn[None, :])
        acc = tl.dot(a, b, acc)
    tl.store(c_ptr + rm[:, None] * BLOCK + rn[None, :], acc)


@triton.jit
def barrier_kernel(counter_ptr, x_ptr, ORDERED: tl.constexpr):
    # a one-step grid barrier: arrive with release, wait with acquire (or, unordered, with relaxed atomics)
    tl.store(x_ptr + tl.program_id(0), 1.0)
    tl.debug_barrier()
    if ORDERED:
        count = tl.atomic_add(counter_ptr, 1, sem="acq_rel", scope="gpu") + 1
        while count < tl.num_programs(0):
            count = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
    else:
        count = tl.atomic_add(counter_ptr, 1, sem="relaxed", scope="gpu") + 1
        while count < tl.num_programs(0):
            count = tl.atomic_add(counter_ptr, 0, sem="relaxed", scope="gpu")
    tl.debug_barrier()


def gpu_compile_configs():
    from kernels.compile_report import CompileConfig
    sig = {"a_ptr": "*fp32", "b_ptr": "*fp32", "c_ptr": "*fp32", "stride": "i32"}
    loop_sig = {"a_ptr": "*fp16", "b_ptr": "*fp16", "c_ptr": "*fp32", "K": "i32"}
    aligned = {"a_ptr": [["tt.divisibility", 16]], "b_ptr": [["tt.divisibility", 16]], "K": [["tt.divisibility", 16]]}
    return [
        CompileConfig("dot_tf32", dot_kernel, sig, {"BLOCK": 64, "PRECISION": "tf32"}, True),
        CompileConfig("dot_ieee", dot_kernel, sig, {"BLOCK": 32, "PRECISION": "ieee"}, False),
        # says it expects tensor cores but computes in exact fp32: must be flagged
        CompileConfig("dot_ieee_claims_tc", dot_kernel, sig, {"BLOCK": 32, "PRECISION": "ieee"}, True),
        CompileConfig("spill", spill_kernel, {"x_ptr": "*fp32", "y_ptr": "*fp32"}, {"BLOCK": 128}, False,
                      num_warps=2),
        CompileConfig("loop_pipelined", loop_dot_kernel, loop_sig, {"BLOCK": 64}, True, num_stages=3,
                      attrs=aligned, expect_cp_async=True),
        # one stage: nothing is prefetched, so a config that claims cp.async must be flagged
        CompileConfig("loop_unpipelined", loop_dot_kernel, loop_sig, {"BLOCK": 64}, True, num_stages=1,
                      attrs=aligned, expect_cp_async=True),
        CompileConfig("barrier", barrier_kernel, {"counter_ptr": "*i32", "x_ptr": "*fp32"}, {"ORDERED": True},
                      False, options={"launch_cooperative_grid": True}, expect_barrier=True),
        # relaxed atomics order nothing: a config that claims a barrier must be flagged
        CompileConfig("barrier_relaxed", barrier_kernel, {"counter_ptr": "*i32", "x_ptr": "*fp32"},
                      {"ORDERED": False}, False, expect_barrier=True),
    ]
'''


def test_compile_config_is_plain_dataclass():
    cfg = cr.CompileConfig(name="x", fn=None, signature={"a": "*fp32"}, constexprs={}, expect_tensor_cores=False)
    assert (cfg.num_warps, cfg.num_stages, cfg.attrs, cfg.expect_cp_async, cfg.maxnreg, cfg.options,
            cfg.expect_barrier) == (4, 1, {}, False, None, {}, False)
    assert [f.name for f in __import__("dataclasses").fields(cfg)] == [
        "name", "fn", "signature", "constexprs", "expect_tensor_cores", "num_warps", "num_stages", "attrs",
        "expect_cp_async", "maxnreg", "options", "expect_barrier"]
    assert cr.CompileConfig is _utils.CompileConfig  # the report re-exports the ops' own class


def test_cp_async_instruction_parser():
    ptx = textwrap.dedent("""
        cp.async.cg.shared.global [ %r1 + 0 ], [ %rd1 + 0 ], 0x10, %r2;
        @%p3 cp.async.ca.shared.global [ %r3 + 0 ], [ %rd2 + 0 ], 0x4, 0x4;
        cp.async.commit_group;
        cp.async.wait_group 0x1;
        ld.global.v4.b32 { %r4, %r5, %r6, %r7 }, [ %rd3 + 0 ];
    """)
    assert cr.cp_async_instructions(ptx) == {"cp.async.cg.shared.global": 1, "cp.async.ca.shared.global": 1}


def test_barrier_instruction_parser():
    """A grid barrier's arrive (release) and wait (acquire), as Triton 3.5 to 3.9 write them (atom.acq_rel,
    ld.acquire), or with an acquire atomic; plain and relaxed atomics are not ordered instructions."""
    ptx = textwrap.dedent("""
        @%p1 atom.global.gpu.acq_rel.add.u32 %r1, [ %rd1 + 0 ], %r2;
        ld.global.gpu.acquire.b32 %r3, [ %rd1 + 0 ];
        atom.global.gpu.relaxed.add.u32 %r4, [ %rd2 + 0 ], 0;
        atom.global.add.u32 %r5, [ %rd2 + 0 ], 1;
    """)
    found = cr.ordered_memory_instructions(ptx)
    assert found == {"atom.global.gpu.acq_rel.add.u32": 1, "ld.global.gpu.acquire.b32": 1}
    assert cr.barrier_problem(found) is None
    assert cr.barrier_problem({"atom.global.gpu.acquire.add.u32": 2, "atom.global.gpu.acq_rel.add.u32": 1}) is None
    assert "release" in cr.barrier_problem({"ld.global.gpu.acquire.b32": 1})
    assert "acquire" in cr.barrier_problem({"atom.global.gpu.acq_rel.add.u32": 1})
    row = {"num_warps": 8, "num_stages": 1, "cooperative": True, "expect_barrier": True, "barrier_instructions": found}
    assert cr._stages_cell(row) == "8/1, cooperative, barrier atom.acq_rel ×1 ld.acquire ×1"


def _triton_specialize(value, specialize: bool, align: bool):
    """The installed Triton's own specialization of a launch argument (native from 3.6 on, Python in 3.5)."""
    from triton.backends.compiler import BaseBackend

    try:
        from triton._C.libtriton import native_specialize_impl
    except ImportError:  # Triton 3.5
        from triton.runtime.jit import create_specialize_impl

        return create_specialize_impl(BaseBackend.get_arg_specialization)(value, False, specialize, align)
    return native_specialize_impl(BaseBackend, value, False, specialize, align)


@pytest.mark.parametrize("value", [0, 1, 2, 16, 17, 64, 10_000, 10_001, -16, -17, 2**31 - 1, 2**31, 2**32 + 16,
                                   2**63, 0.5, 1.0, True, False])
@pytest.mark.parametrize("specialize,align", [(True, True), (False, True), (True, False)])
def test_specialization_rule_is_tritons(value, specialize, align):
    """kernels._utils.specialization (which the compile configurations use) gives what the installed Triton's
    launcher gives for ints, floats and bools, and for tensors aligned to 16 bytes or not."""
    ty, key = _utils.specialization(value, specialize, align)
    t_ty, t_key = _triton_specialize(value, specialize, align)
    def normal(t, k):  # Triton's "" and None both mean: no attribute
        return t, k if t == "constexpr" else (k or None)

    assert normal(ty, key) == normal(t_ty, t_key)


@pytest.mark.parametrize("offset", [0, 1, 4])
@pytest.mark.parametrize("specialize,align", [(True, True), (False, True), (True, False)])
def test_specialization_rule_is_tritons_for_tensors(offset, specialize, align):
    t = torch.empty(64, dtype=torch.float32)[offset:]
    assert _utils.specialization(t, specialize, align)[0] == _triton_specialize(t, specialize, align)[0]
    key, t_key = _utils.specialization(t, specialize, align)[1], _triton_specialize(t, specialize, align)[1]
    assert (key or None) == (t_key or None)


def test_ptxas_of_every_supported_triton():
    """get_ptxas takes the architecture from Triton 3.6 on and nothing in 3.5; the report works with both."""
    path = cr._ptxas_path(90)
    assert Path(path).name.startswith("ptxas") and Path(path).is_file()


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
    assert report["modules"]["tiny_cr_kernels"].startswith("ok (8 configurations)")
    rows = {(r["config"], r["arch"]): r for r in report["rows"]}
    assert len(rows) == 16 and [r["arch"] for r in report["rows"][:2]] == ["sm_80", "sm_90"]

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

        piped = rows[("loop_pipelined", arch)]
        assert piped["ok"], piped["problems"]
        assert any(i.startswith("cp.async") for i in piped["cp_async_instructions"])
        assert piped["divisible_by_16"] == ["K", "a_ptr", "b_ptr"]
        flat = rows[("loop_unpipelined", arch)]
        assert not flat["ok"] and any("cp.async" in p for p in flat["problems"])

        barrier = rows[("barrier", arch)]
        assert barrier["ok"] and barrier["cooperative"], barrier["problems"]
        assert any("acq_rel" in i for i in barrier["barrier_instructions"])
        assert any(".acquire" in i for i in barrier["barrier_instructions"])
        relaxed = rows[("barrier_relaxed", arch)]
        assert not relaxed["ok"] and not relaxed["cooperative"] and any("release arrive" in p
                                                                        for p in relaxed["problems"])

    out = tmp_path / "out"
    cr.write_report(report, out)
    data = json.loads((out / "compile_report.json").read_text())
    assert len(data["rows"]) == 16
    md = (out / "compile_report.md").read_text()
    assert "tiny_cr_not_there" in md and "| dot_kernel | dot_tf32 | sm_90 |" in md and "wgmma" in md
    assert "| 4/3, cp.async ×" in md  # the pipelined configuration's copies, beside warps/stages

    again = cr.compile_report((90,), modules)  # from the cache: no compilation
    assert again["cached"] and [r["config"] for r in again["rows"]] == [
        "dot_tf32", "dot_ieee", "dot_ieee_claims_tc", "spill", "loop_pipelined", "loop_unpipelined", "barrier",
        "barrier_relaxed"]


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
        if r["expect_cp_async"]:
            assert r["cp_async_instructions"], f"{r['config']} {r['arch']}: no cp.async"


@pytest.mark.slow
def test_tiled_recurrence_kernels_are_pipelined(real_report):
    """Issue 10's proof: the tiled recurrence kernels (and the step kernel), at the num_stages they are launched
    with, show cp.async, no spills, and shared memory within sm_80's and sm_90's limits."""
    rows = [r for r in real_report["rows"] if r["module"] == "kernels.rnn"
            and r["kernel"] in ("_rnn_fwd_tiled_kernel", "_rnn_bwd_tiled_kernel", "_rnn_step_kernel")]
    assert {r["arch"] for r in rows} == {"sm_80", "sm_90"} and len(rows) >= 40
    for r in rows:
        assert r["num_stages"] > 1 and r["expect_cp_async"], r["config"]
        assert sum(r["cp_async_instructions"].values()) > 0, r["config"]
        assert r["spill_stores"] == 0 and r["local_bytes"] == 0 and r["shared_bytes"] <= cr.SHARED_LIMIT[r["cc"]]


@pytest.mark.slow
def test_persistent_recurrence_configurations(real_report):
    """Issue 11's proof: every persistent configuration the launcher can choose (forward and backward x tanh/relu x
    ieee/tf32/bf16/fp16 x padded H 256/512/1024, and H = 300 for ieee/tf32), for sm_80 and sm_90, compiled with the
    cooperative-launch flag and its register cap: no spills, shared memory within the limit, mma for the
    tensor-core precisions, the barrier's release arrive and acquire wait in the PTX; and, from these figures,
    two programs an SM up to padded H 512 (what lets an A100's 108 SMs hold the default model's 128 programs)."""
    from kernels import _rnn_persistent as P

    rows = [r for r in real_report["rows"] if r["module"] == "kernels._rnn_persistent"]
    configs = {c.name: c for c in P.gpu_compile_configs()}
    assert {(r["config"], r["arch"]) for r in rows} == {(n, a) for n in configs for a in ("sm_80", "sm_90")}
    precisions = {r["constexprs"]["PRECISION"] for r in rows}
    assert precisions == {"ieee", "tf32", "bf16", "fp16"}
    for r in rows:
        cfg = configs[r["config"]]
        assert r["ok"], (r["config"], r["arch"], r["problems"])
        assert r["cooperative"] and r["expect_barrier"] and r["maxnreg"] == cfg.maxnreg
        assert r["spill_stores"] == 0 and r["local_bytes"] == 0 and r["shared_bytes"] <= r["shared_limit"]
        assert any(".acquire" in i for i in r["barrier_instructions"]), r["config"]
        assert any("acq_rel" in i for i in r["barrier_instructions"]), r["config"]
        if r["constexprs"]["PRECISION"] != "ieee":
            assert any(i.startswith("mma.sync") for i in r["tensor_core_instructions"]), r["config"]
        res = P.KernelResources(r["registers"], r["shared_bytes"], r["num_warps"])
        assert P.programs_per_sm(res, r["cc"]) >= (2 if r["constexprs"]["BLOCK_K"] <= 512 else 1), r["config"]
