"""Compile report: builds GPU code for every kernel configuration, for GPUs this machine doesn't have.

Each kernel module (KERNEL_MODULES) lists, in `gpu_compile_configs()`, every configuration its launcher can
choose on a GPU, as `CompileConfig`s (kernels/_utils.py) built from representative launches: the signature,
constants and `tt.divisibility` attributes are those Triton derives from that launch's very arguments (an int
equal to 1 becomes a constant, sizes, strides and addresses divisible by 16 get the attribute, arguments in the
kernel's do_not_specialize get neither), so what is compiled here is what those launches compile. This module
imports the op modules (they never import it) and compiles each configuration for sm_80 (A100) and sm_90 (H100)
with `triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", cc, 32),
options=dict(num_warps, num_stages))`, which needs no GPU, and reads what the kernel costs a streaming
multiprocessor:

- registers, stack frame and local memory: `cuobjdump --dump-resource-usage` on the cubin (the copy bundled
  with triton); spill stores/loads: `ptxas -v` rerun on the same PTX with triton's flags. Anything in local
  memory (a stack frame, LOCAL, spills) is a problem: the cost model in each kernel's docstring assumes
  state and tiles live in registers and shared memory.
- shared memory: triton's dynamic shared memory (metadata.shared) plus the cubin's static SHARED, against
  the most one block can use (sm_80: 163 KB, sm_90: 227 KB).
- tensor-core instructions: `mma.sync` (sm_80, and sm_90 when wgmma doesn't apply) / `wgmma.mma_async`
  (sm_90) in the PTX. Configurations with `expect_tensor_cores=True` (tf32, bf16, fp16 paths) must emit them.
- asynchronous copies: `cp.async` (global -> shared, what Triton's software pipeliner emits for a loop's
  loads at num_stages > 1) in the PTX. Configurations with `expect_cp_async=True` (the pipelined recurrence
  kernels) must emit them.
- grid barriers: configurations with `expect_barrier=True` (the persistent recurrence) must show, in the PTX,
  the arrive with release semantics (an `atom` with `.acq_rel` or `.release`) and the wait with acquire
  semantics (`ld.acquire` or `atom.acquire`); Triton's `options` of the launch (its `launch_cooperative_grid`)
  are compiled in, and the row says whether the kernel is launched cooperatively.

Under TRITON_INTERPRET=1 the kernels' @triton.jit objects are interpreter functions that cannot be
compiled, so compilation runs in subprocesses started with RNNLM_KERNELS_COMPILE_ONLY=1 and without
TRITON_INTERPRET (kernels/_runtime.py then keeps real JITFunctions), two at a time (sharded over the
configurations). Results are cached in $RNNLM_CACHE_DIR/compile_report (default ~/.cache/rnnlm), keyed by
every source file of kernels/, the listed module's file, the triton version and the architecture, so the test
and the benchmark report don't compile twice.

Triton versions: the calls here (ASTSource(fn, signature, constexprs, attrs) with attribute keys (index,),
triton.compile(src, target=, options=), GPUTarget(backend, arch, warp_size), metadata.shared/.name/
.enable_fp_fusion, asm["ptx"/"cubin"], triton.backends.nvidia.compiler.get_ptxas and sm_arch_from_capability)
exist in Triton 3.5, 3.6 and 3.9; get_ptxas takes the architecture from 3.6 on and nothing in 3.5.

CLI: `python -m kernels.compile_report [--out DIR] [--arch 80 90] [--modules M ...] [--jobs N] [--no-cache]`
writes DIR/compile_report.json and DIR/compile_report.md and prints the table; exit 1 when a configuration
fails a check. API: `run_compile_report(archs=(80, 90), out_dir=None) -> list[dict]` (one row per
configuration and architecture); `compile_report(...) -> dict` (rows plus the status of each module);
`markdown_table(report) -> str`.

This module imports neither triton nor any kernel module at import time: the compile workers import the
op modules in compile-only mode (their @triton.jit functions must not be interpreter functions).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

KERNEL_MODULES: tuple[str, ...] = ("kernels.rnn", "kernels._rnn_persistent", "kernels.softmax", "kernels.sample",
                                   "kernels.cross_entropy")
ARCHS: tuple[int, ...] = (80, 90)
# Most shared memory one block may use (cudaDevAttrMaxSharedMemoryPerBlockOptin): A100 163 KB, H100 227 KB.
SHARED_LIMIT: dict[int, int] = {80: 163 * 1024, 90: 227 * 1024}
REGISTERS_PER_SM = 65536  # 64K 32-bit registers per SM on both; one block must fit
REPORT_VERSION = 2  # bump when the row format changes (part of the cache key)

_REPO_ROOT = Path(__file__).resolve().parent.parent
_KERNELS_DIR = Path(__file__).resolve().parent




def __getattr__(name: str):
    """CompileConfig lives in kernels._utils (which imports triton); it is re-exported here lazily, for scripts
    that build configurations of their own (tests/test_compile_report.py's tiny module)."""
    if name == "CompileConfig":
        from kernels._utils import CompileConfig

        return CompileConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ------------------------------------------------------------------------------------------------ helpers
def _triton_version() -> str:
    try:
        return importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _triton_dir() -> Path:
    """site-packages/triton, found without importing triton."""
    spec = importlib.util.find_spec("triton")
    if spec is None or spec.origin is None:
        raise RuntimeError("triton is not installed")
    return Path(spec.origin).parent


def cuobjdump_path() -> Path:
    return _triton_dir() / "backends" / "nvidia" / "bin" / "cuobjdump"


def _module_file(name: str) -> Path | None:
    """Source file of a module, found without importing it (kernel modules must not be imported here)."""
    parts = name.split(".")
    roots = [_REPO_ROOT] + [Path(p) for p in sys.path if p] + \
        [Path(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    for root in roots:
        base = root.joinpath(*parts)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def _cache_dir() -> Path:
    return Path(os.environ.get("RNNLM_CACHE_DIR") or Path.home() / ".cache" / "rnnlm") / "compile_report"


def _source_files(module: str) -> list[Path]:
    """Every source file of kernels/ (the ops and what they share) and the module's own file."""
    files = set(_KERNELS_DIR.glob("*.py"))
    own = _module_file(module)
    if own is not None:
        files.add(own)
    return sorted(files)


def _cache_key(module: str, arch: int) -> str:
    """Changes when a kernels/ file, the module's file or the triton version changes."""
    h = hashlib.sha256()
    h.update(f"v{REPORT_VERSION} triton {_triton_version()} arch {arch} module {module}\n".encode())
    for f in _source_files(module):
        h.update(f"{f}\n".encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:32]


def _parse_resource_usage(text: str) -> dict[str, dict[str, int]]:
    """cuobjdump --dump-resource-usage output -> {function: {"REG": .., "STACK": .., "SHARED": .., "LOCAL": ..}}."""
    out: dict[str, dict[str, int]] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"\s*Function\s+(\S+?):\s*$", line)
        if m:
            current = m.group(1)
            continue
        if current is not None and "REG:" in line:
            out[current] = {k: int(v) for k, v in re.findall(r"(\w+(?:\[\d+\])?):(\d+)", line)}
            current = None
    return out


_PTXAS_RE = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_TC_RE = re.compile(r"^\s*(?:@%?\w+\s+)?((?:wgmma\.mma_async|mma\.sync)[\w.]*)", re.M)
_CP_ASYNC_RE = re.compile(r"^\s*(?:@%?\w+\s+)?(cp\.async\.(?:ca|cg|bulk)[\w.:]*)", re.M)
_ORDERED_RE = re.compile(r"^\s*(?:@%?\w+\s+)?((?:atom|ld|red|st)\.[\w.]*(?:acquire|release|acq_rel)[\w.]*)", re.M)


def tensor_core_instructions(ptx: str) -> dict[str, int]:
    """Distinct mma.sync / wgmma.mma_async instructions in PTX text, with how often each appears."""
    counts: dict[str, int] = {}
    for m in _TC_RE.finditer(ptx):
        counts[m.group(1)] = counts.get(m.group(1), 0) + 1
    return counts


def cp_async_instructions(ptx: str) -> dict[str, int]:
    """Distinct cp.async copy instructions (cp.async.ca/.cg/.bulk, not the commit/wait ones) in PTX text, counted."""
    counts: dict[str, int] = {}
    for m in _CP_ASYNC_RE.finditer(ptx):
        counts[m.group(1)] = counts.get(m.group(1), 0) + 1
    return counts


def ordered_memory_instructions(ptx: str) -> dict[str, int]:
    """Distinct memory instructions with acquire / release / acq_rel semantics in PTX text (a grid barrier's
    arrive and wait), counted."""
    counts: dict[str, int] = {}
    for m in _ORDERED_RE.finditer(ptx):
        counts[m.group(1)] = counts.get(m.group(1), 0) + 1
    return counts


def barrier_problem(instructions: dict[str, int]) -> str | None:
    """What a grid barrier's PTX lacks: a release arrive (atom.*acq_rel / *release) or an acquire wait."""
    names = list(instructions)
    if not any(n.startswith(("atom", "red", "st")) and ("acq_rel" in n or "release" in n) for n in names):
        return "expected a release arrive (atom/red/st with .acq_rel or .release), found none in the PTX"
    if not any(".acquire" in n for n in names):
        return "expected an acquire wait (ld/atom with .acquire), found none in the PTX"
    return None


def _ptxas_path(arch: int) -> str:
    """ptxas bundled with triton: get_ptxas(arch) from Triton 3.6 on, get_ptxas() in 3.5."""
    from triton.backends.nvidia.compiler import get_ptxas

    return (get_ptxas(arch) if inspect.signature(get_ptxas).parameters else get_ptxas()).path


# ------------------------------------------------------------------------------- worker (compile-only mode)
def _full_signature(cfg) -> dict[str, str]:
    sig = dict(cfg.signature)
    for name in cfg.constexprs:
        sig[name] = "constexpr"
    # keep the kernel's argument order (triton indexes arguments by position)
    order = {n: i for i, n in enumerate(cfg.fn.arg_names)}
    return dict(sorted(sig.items(), key=lambda kv: order.get(kv[0], 1 << 30)))


def _compile_and_measure(module: str, cfg, arch: int) -> dict:
    """Compiles one configuration for one architecture and measures it (runs in the worker process)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import sm_arch_from_capability

    row: dict[str, Any] = {
        "module": module, "kernel": getattr(cfg.fn, "__name__", repr(cfg.fn)), "config": cfg.name,
        "arch": f"sm_{arch}", "cc": arch, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages,
        "maxnreg": getattr(cfg, "maxnreg", None),
        "constexprs": {k: repr(v) if not isinstance(v, (int, float, str, bool)) else v
                       for k, v in cfg.constexprs.items()},
        "expect_tensor_cores": bool(cfg.expect_tensor_cores),
        "expect_cp_async": bool(getattr(cfg, "expect_cp_async", False)),
        "expect_barrier": bool(getattr(cfg, "expect_barrier", False)), "shared_limit": SHARED_LIMIT.get(arch),
        "signature": {k: v for k, v in cfg.signature.items() if v != "constexpr"},
        "divisible_by_16": sorted(getattr(cfg, "attrs", {})),
        "compiled": False, "problems": [],
    }
    if type(cfg.fn).__name__ == "InterpretedFunction" or not hasattr(cfg.fn, "arg_names"):
        row["problems"].append("not a real JITFunction (was TRITON_INTERPRET=1 set when it was decorated?)")
        row["ok"] = False
        return row
    t0 = time.perf_counter()
    try:
        signature = _full_signature(cfg)
        # the launch's own specialization (kernels/_utils.py: Launch.compile_config)
        attrs = {(cfg.fn.arg_names.index(k),): v for k, v in getattr(cfg, "attrs", {}).items()}
        src = triton.compiler.ASTSource(cfg.fn, signature, dict(cfg.constexprs), attrs)
        options = dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages, **getattr(cfg, "options", {}))
        if getattr(cfg, "maxnreg", None) is not None:
            options["maxnreg"] = cfg.maxnreg
        ck = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    except Exception as err:  # noqa: BLE001  (reported in the table, the test fails on it)
        msg = " ".join(str(err).split())
        row["problems"].append(f"compile failed: {type(err).__name__}: {msg[:400]}")
        row["compile_seconds"] = round(time.perf_counter() - t0, 2)
        row["ok"] = False
        return row
    row["compiled"] = True
    row["compile_seconds"] = round(time.perf_counter() - t0, 2)
    row["kernel"] = ck.metadata.name
    ptx = ck.asm["ptx"]
    with tempfile.TemporaryDirectory(prefix="rnnlm-cr-") as tmp:
        cubin = Path(tmp) / f"{ck.metadata.name}.cubin"
        cubin.write_bytes(ck.asm["cubin"])
        res = subprocess.run([str(cuobjdump_path()), "--dump-resource-usage", str(cubin)],
                             capture_output=True, text=True, check=True)
        usage = _parse_resource_usage(res.stdout)
        ptx_file = Path(tmp) / "k.ptx"
        ptx_file.write_text(ptx)
        fmad = [] if ck.metadata.enable_fp_fusion else ["--fmad=false"]
        res2 = subprocess.run([_ptxas_path(arch), "-lineinfo", *fmad, "-v", "--regAllocOptLevel=2",
                               f"--gpu-name={sm_arch_from_capability(arch)}", str(ptx_file), "-o",
                               str(Path(tmp) / "k.o")], capture_output=True, text=True)
    entry = usage.get(ck.metadata.name) or (next(iter(usage.values())) if usage else {})
    others = [u for name, u in usage.items() if name != ck.metadata.name]
    m = _PTXAS_RE.search(res2.stderr + res2.stdout)
    spill_stores, spill_loads = (int(m.group(2)), int(m.group(3))) if m else (None, None)
    threads = 32 * cfg.num_warps
    row.update({
        "registers": entry.get("REG"),
        "stack_bytes": max([entry.get("STACK", 0)] + [u.get("STACK", 0) for u in others]),
        "local_bytes": max([entry.get("LOCAL", 0)] + [u.get("LOCAL", 0) for u in others]),
        "spill_stores": spill_stores, "spill_loads": spill_loads,
        "shared_static": entry.get("SHARED", 0), "shared_dynamic": int(ck.metadata.shared),
        "global_scratch": int(getattr(ck.metadata, "global_scratch_size", 0) or 0),
        "tensor_core_instructions": tensor_core_instructions(ptx),
        "cp_async_instructions": cp_async_instructions(ptx),
        "barrier_instructions": ordered_memory_instructions(ptx),
        "cooperative": bool(getattr(ck.metadata, "launch_cooperative_grid", False)),
    })
    row["shared_bytes"] = row["shared_static"] + row["shared_dynamic"]
    problems = row["problems"]
    if not usage:
        problems.append("cuobjdump reported no function")
    if row["local_bytes"]:
        problems.append(f"local memory {row['local_bytes']} B/thread (register spills)")
    if row["stack_bytes"]:
        problems.append(f"stack frame {row['stack_bytes']} B/thread")
    if spill_stores is None:
        problems.append("ptxas -v gave no spill figures")
    elif spill_stores or spill_loads:
        problems.append(f"ptxas spills: {spill_stores} B stores, {spill_loads} B loads")
    if row["shared_limit"] is not None and row["shared_bytes"] > row["shared_limit"]:
        problems.append(f"shared memory {row['shared_bytes']} B > {row['shared_limit']} B usable on sm_{arch}")
    if row["registers"] is not None and row["registers"] * threads > REGISTERS_PER_SM:
        problems.append(f"{row['registers']} registers x {threads} threads > {REGISTERS_PER_SM} per SM")
    if row["global_scratch"]:
        problems.append(f"needs {row['global_scratch']} B of global scratch")
    if cfg.expect_tensor_cores and not row["tensor_core_instructions"]:
        problems.append("expected tensor-core instructions (mma/wgmma), found none in the PTX")
    if row["expect_cp_async"] and not row["cp_async_instructions"]:
        problems.append(f"expected cp.async (num_stages={cfg.num_stages}), found none in the PTX")
    if row["expect_barrier"]:
        missing = barrier_problem(row["barrier_instructions"])
        if missing:
            problems.append(missing)
        if getattr(cfg, "options", {}).get("launch_cooperative_grid") and not row["cooperative"]:
            problems.append("compiled with launch_cooperative_grid but its metadata does not say so")
    row["ok"] = not problems
    return row


def _worker(modules: Sequence[str], archs: Sequence[int], shard: int, nshards: int, result_file: str) -> None:
    """Entry of a compile subprocess: compiles every nshards-th (configuration, arch) job from `shard`."""
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ["RNNLM_KERNELS_COMPILE_ONLY"] = "1"
    status: dict[str, str] = {}
    jobs: list[tuple[int, str, int, Any, int]] = []
    for mi, name in enumerate(modules):
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:
                status[name] = "missing (module does not exist yet)"
                continue
            status[name] = f"import failed: {type(err).__name__}: {err}"
            continue
        except Exception as err:  # noqa: BLE001
            status[name] = f"import failed: {type(err).__name__}: {err}"
            continue
        if not hasattr(mod, "gpu_compile_configs"):
            status[name] = "no gpu_compile_configs()"
            continue
        try:
            configs = list(mod.gpu_compile_configs())
        except Exception as err:  # noqa: BLE001
            status[name] = f"gpu_compile_configs() failed: {type(err).__name__}: {err}"
            continue
        names = [c.name for c in configs]
        dups = sorted({n for n in names if names.count(n) > 1})
        status[name] = f"ok ({len(configs)} configurations)" + (f"; duplicate names {dups}" if dups else "")
        if not configs:
            status[name] = "gpu_compile_configs() returned no configurations"
        for ci, cfg in enumerate(configs):
            for arch in archs:
                jobs.append((mi, name, ci, cfg, arch))
    rows = []
    for j, (mi, name, ci, cfg, arch) in enumerate(jobs):
        if j % nshards != shard:
            continue
        row = _compile_and_measure(name, cfg, arch)
        row["_order"] = [mi, ci, list(archs).index(arch)]
        rows.append(row)
    Path(result_file).write_text(json.dumps({"status": status, "rows": rows}))


# --------------------------------------------------------------------------------------------- parent side
def _run_workers(modules: Sequence[str], archs: Sequence[int], jobs: int) -> tuple[dict[str, str], list[dict]]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["RNNLM_KERNELS_COMPILE_ONLY"] = "1"
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    paths = [str(_REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    with tempfile.TemporaryDirectory(prefix="rnnlm-compile-") as tmp:
        procs = []
        for shard in range(jobs):
            out = Path(tmp) / f"shard{shard}.json"
            cmd = [sys.executable, "-m", "kernels.compile_report", "--worker", "--modules", *modules,
                   "--arch", *map(str, archs), "--shard", str(shard), "--nshards", str(jobs), "--result", str(out)]
            procs.append((subprocess.Popen(cmd, env=env, cwd=str(_REPO_ROOT), stdout=subprocess.PIPE,
                                           stderr=subprocess.STDOUT, text=True), out))
        status: dict[str, str] = {}
        rows: list[dict] = []
        failures = []
        for proc, out in procs:
            log, _ = proc.communicate(timeout=3600)
            if proc.returncode != 0 or not out.exists():
                tail = "\n".join(log.strip().splitlines()[-15:])
                failures.append(f"compile worker exited with {proc.returncode}:\n{tail}")
                continue
            data = json.loads(out.read_text())
            status.update(data["status"])
            rows.extend(data["rows"])
        if failures:
            raise RuntimeError("\n".join(failures))
    rows.sort(key=lambda r: r.pop("_order"))
    return status, rows


def compile_report(archs: Iterable[int] = ARCHS, modules: Sequence[str] = KERNEL_MODULES, *,
                   jobs: int | None = None, use_cache: bool = True) -> dict:
    """Compiles every configuration of every module for each arch (or reads the cache).

    Returns {"triton": version, "archs": [...], "modules": {module: status}, "rows": [row, ...],
    "generated": ISO time, "cached": bool}. A row has module, kernel, config, arch, num_warps, num_stages,
    registers, stack_bytes, local_bytes, spill_stores, spill_loads, shared_static, shared_dynamic,
    shared_bytes, shared_limit, tensor_core_instructions ({instruction: count}), expect_tensor_cores,
    compiled, ok, problems (list of str).
    """
    archs = [int(a) for a in archs]
    for a in archs:
        if a not in SHARED_LIMIT:
            raise ValueError(f"arch must be one of {sorted(SHARED_LIMIT)}, got {a}")
    modules = list(modules)
    cache = _cache_dir()
    # cached per (module, arch): editing one kernel module recompiles only that module
    keys = {(m, a): _cache_key(m, a) for m in modules for a in archs}
    cached: dict[tuple[str, int], dict] = {}
    if use_cache:
        for ma, k in keys.items():
            f = cache / f"{k}.json"
            if f.is_file():
                try:
                    cached[ma] = json.loads(f.read_text())
                except (OSError, ValueError):
                    pass
    todo_modules = [m for m in modules if any((m, a) not in cached for a in archs)]
    todo_archs = [a for a in archs if any((m, a) not in cached for m in modules)]
    if todo_modules:
        print(f"kernels.compile_report: compiling {', '.join(todo_modules)} for "
              f"{', '.join(f'sm_{a}' for a in todo_archs)} (a few minutes; cached in {cache})", file=sys.stderr)
        n = jobs or max(1, min(2, os.cpu_count() or 1))
        status, new_rows = _run_workers(todo_modules, todo_archs, n)
        for m in todo_modules:
            for a in todo_archs:
                cached[(m, a)] = {"status": status.get(m, "?"),
                                  "rows": [r for r in new_rows if r["module"] == m and r["cc"] == a]}
                if use_cache:
                    try:
                        cache.mkdir(parents=True, exist_ok=True)
                        tmpf = cache / f".{keys[(m, a)]}.{os.getpid()}.tmp"
                        tmpf.write_text(json.dumps(cached[(m, a)]))
                        os.replace(tmpf, cache / f"{keys[(m, a)]}.json")
                    except OSError:
                        pass
    status = {m: cached[(m, archs[0])]["status"] for m in modules} if archs else {}
    rows = [r for m in modules for a in archs for r in cached[(m, a)]["rows"]]
    # order: module, configuration, arch (as the workers listed them)
    order = {m: i for i, m in enumerate(modules)}
    cfg_order: dict[tuple[str, str], int] = {}
    for r in rows:
        cfg_order.setdefault((r["module"], r["config"]), len(cfg_order))
    rows.sort(key=lambda r: (order.get(r["module"], 1 << 30), cfg_order[(r["module"], r["config"])], r["cc"]))
    return {"triton": _triton_version(), "archs": archs, "modules": status, "rows": rows,
            "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "cached": not todo_modules}


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1024:.1f} KB" if n >= 1024 else f"{n} B"


def _short_instr(instrs: dict[str, int]) -> str:
    if not instrs:
        return "—"
    parts = []
    for name, count in instrs.items():
        # wgmma.mma_async.sync.aligned.m64n64k8.f32.tf32.tf32 -> wgmma m64n64k8 f32.tf32.tf32
        kind = "wgmma" if name.startswith("wgmma") else "mma"
        shape = next((p for p in name.split(".") if re.fullmatch(r"m\d+n\d+k\d+", p)), "")
        types = ".".join(p for p in name.split(".") if p in {"f32", "f16", "bf16", "tf32", "f64", "s8", "e4m3", "e5m2"})
        parts.append(f"{kind} {shape} {types} ×{count}".replace("  ", " "))
    return "; ".join(parts)


def _stages_cell(row: dict) -> str:
    """warps/stages, with the cp.async copies the pipelined loops issue, and for a grid barrier the cooperative
    launch and its acquire/release instructions (rnnlm.report shows this table too: its columns stay)."""
    n = sum(row.get("cp_async_instructions", {}).values())
    cell = f"{row['num_warps']}/{row['num_stages']}" + (f", cp.async ×{n}" if n else "")
    if row.get("cooperative"):
        cell += ", cooperative"
    ordered = row.get("barrier_instructions") or {}
    if row.get("expect_barrier") or ordered:
        kinds = {}
        for name, count in ordered.items():
            sem = next(p for p in ("acq_rel", "acquire", "release") if p in name)
            kind = f"{name.split('.')[0]}.{sem}"
            kinds[kind] = kinds.get(kind, 0) + count
        cell += ", barrier " + (" ".join(f"{k} ×{c}" for k, c in kinds.items()) or "none")
    return cell


def markdown_table(report: dict) -> str:
    """The per-configuration table (markdown), with a line per module that was skipped or failed."""
    lines = [f"- `{module}`: {st}" for module, st in report.get("modules", {}).items()]
    if lines:
        lines.append("")
    lines += [
        "| kernel | config | arch | warps/stages | registers | stack | local/spills | shared (limit) "
        "| tensor-core instructions | expected | ok |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report.get("rows", []):
        if not r.get("compiled"):
            lines.append(f"| {r['kernel']} | {r['config']} | {r['arch']} | {r['num_warps']}/{r['num_stages']} "
                         f"| – | – | – | – | – | {'mma/wgmma' if r['expect_tensor_cores'] else '—'} "
                         f"| **no**: {'; '.join(r['problems'])} |")
            continue
        spills = f"{r['local_bytes']} B / {r['spill_stores'] if r['spill_stores'] is not None else '?'} B"
        ok = "yes" if r["ok"] else "**no**: " + "; ".join(r["problems"])
        lines.append(
            f"| {r['kernel']} | {r['config']} | {r['arch']} | {_stages_cell(r)} | {r['registers']} "
            f"| {r['stack_bytes']} B | {spills} | {_fmt_bytes(r['shared_bytes'])} ({_fmt_bytes(r['shared_limit'])}) "
            f"| {_short_instr(r['tensor_core_instructions'])} | {'mma/wgmma' if r['expect_tensor_cores'] else '—'} "
            f"| {ok} |")
    if not report.get("rows"):
        lines.append("| (no kernel configurations) | | | | | | | | | | |")
    return "\n".join(lines)


def write_report(report: dict, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Writes compile_report.json and compile_report.md into out_dir; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jpath, mpath = out / "compile_report.json", out / "compile_report.md"
    jpath.write_text(json.dumps(report, indent=1))
    mpath.write_text(
        f"# Compile report (triton {report['triton']}, {', '.join(f'sm_{a}' for a in report['archs'])})\n\n"
        f"Generated {report['generated']}. Registers/stack/local from `cuobjdump --dump-resource-usage`, spill "
        f"stores from `ptxas -v`, shared = triton's dynamic + static shared memory, against the most one block "
        f"can use; cp.async (beside warps/stages) = asynchronous global->shared copies in the PTX, which pipelined "
        f"configurations must show. Each configuration is specialised as "
        f"Triton specialises its representative launch (the config name gives the sizes).\n\n"
        + markdown_table(report) + "\n")
    return jpath, mpath


def run_compile_report(archs: Iterable[int] = ARCHS, out_dir: str | os.PathLike | None = None, *,
                       modules: Sequence[str] = KERNEL_MODULES, jobs: int | None = None,
                       use_cache: bool = True) -> list[dict]:
    """Compiles (or reads from the cache) every configuration; writes the JSON/markdown when out_dir is given."""
    report = compile_report(archs, modules, jobs=jobs, use_cache=use_cache)
    if out_dir is not None:
        write_report(report, out_dir)
    return report["rows"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernels.compile_report",
                                     description="Compile every kernel configuration for sm_80/sm_90 and report "
                                                 "registers, spills, shared memory and tensor-core instructions.")
    parser.add_argument("--out", default=None, help="write compile_report.json and .md here")
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHS), choices=sorted(SHARED_LIMIT))
    parser.add_argument("--modules", nargs="+", default=list(KERNEL_MODULES), help="kernel modules to compile")
    parser.add_argument("--jobs", type=int, default=None, help="compile subprocesses (default: up to 2)")
    parser.add_argument("--no-cache", action="store_true", help="recompile even when a cached result exists")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--shard", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--nshards", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args.modules, args.arch, args.shard, args.nshards, args.result)
        return 0
    if args.jobs is not None and args.jobs < 1:
        parser.error("--jobs must be >= 1")
    try:
        report = compile_report(args.arch, args.modules, jobs=args.jobs, use_cache=not args.no_cache)
    except RuntimeError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 1
    if args.out:
        jpath, mpath = write_report(report, args.out)
        print(f"wrote {jpath} and {mpath}", file=sys.stderr)
    print(markdown_table(report))
    bad = [r for r in report["rows"] if not r["ok"]]
    if bad:
        print(f"{len(bad)} configuration(s) failed a check", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
