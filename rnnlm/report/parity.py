"""The report's parity section: the triton recurrence against torch.nn.RNN in float64, for every recurrence
shape the benchmarks ran (taken from the benchmark JSON where it recorded parity, else computed here)."""
from __future__ import annotations

import torch

from rnnlm.report.benchmarks import Row, _finite

PARITY_TOL_FP64 = 1e-12
INTRO = ("kernels.rnn.rnn (precision \"ieee\") against torch.nn.RNN, both in float64, tanh, with random "
         "upstream gradients on the output and h_n. Relative error = ‖triton − torch‖/‖torch‖, the largest over "
         "the outputs (output, h_n) and over the gradients (input, h0, every weight and bias).")


def parity_shapes(rows: list[Row]) -> list[dict]:
    """Distinct recurrence shapes in the JSON (label and sizes), in order of appearance."""
    seen: dict[tuple, dict] = {}
    for r in rows:
        i = r.info
        if not all(isinstance(i.get(k), int) for k in ("batch_size", "seq_len", "hidden_size")):
            continue
        sizes = {"shape": r.shape, "batch_size": i["batch_size"], "seq_len": i["seq_len"],
                 "input_size": i.get("embed_size") or i["hidden_size"], "hidden_size": i["hidden_size"],
                 "num_layers": i.get("num_layers") or 1}
        key = tuple(sizes.values())
        if key not in seen:
            seen[key] = sizes
        if r.backend == "triton" and isinstance(i.get("parity"), dict):
            seen[key].setdefault("recorded", i["parity"])
    return list(seen.values())


def rnn_parity(batch_size: int, seq_len: int, input_size: int, hidden_size: int, num_layers: int,
               seed: int = 0) -> dict:
    """kernels.rnn.rnn against torch.nn.RNN in fp64: forward (output, h_n) and gradients (input, h0, weights)."""
    from kernels.rnn import rnn  # deferred: only this path of the report imports triton

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    ref = torch.nn.RNN(input_size, hidden_size, num_layers, batch_first=True).double()
    x = torch.randn(batch_size, seq_len, input_size, dtype=torch.float64, generator=g, requires_grad=True)
    h0 = torch.randn(num_layers, batch_size, hidden_size, dtype=torch.float64, generator=g, requires_grad=True)
    g_out = torch.randn(batch_size, seq_len, hidden_size, dtype=torch.float64, generator=g)
    g_h = torch.randn(num_layers, batch_size, hidden_size, dtype=torch.float64, generator=g)
    weights = list(ref._flat_weights)
    out_r, hn_r = ref(x, h0)
    grads_r = torch.autograd.grad((out_r, hn_r), [x, h0, *weights], (g_out, g_h))
    out_t, hn_t = rnn(x, h0, weights, num_layers=num_layers, nonlinearity="tanh", bias=True, batch_first=True,
                      precision="ieee")
    grads_t = torch.autograd.grad((out_t, hn_t), [x, h0, *weights], (g_out, g_h))

    @torch.no_grad()
    def errs(pairs):
        max_abs = max(float((a - b).abs().max()) for a, b in pairs)
        rel = max(float((a - b).norm() / b.norm().clamp_min(1e-300)) for a, b in pairs)
        return max_abs, rel

    fa, fr = errs([(out_t, out_r), (hn_t, hn_r)])
    ga, gr = errs(list(zip(grads_t, grads_r)))
    return {"forward_max_abs": fa, "forward_rel": fr, "grad_max_abs": ga, "grad_rel": gr}


class _Checker:
    """Computes parity for the shapes that need it: the kernels imported once, capped sizes in the interpreter,
    each distinct size checked once (capped, default, b16 and b256 are all B 16 T 10 H 512)."""

    def __init__(self, max_batch: int, max_steps: int):
        self.max_batch, self.max_steps = max_batch, max_steps
        self.available: bool | None = None
        self.interpreted = False
        self.results: dict[tuple, dict] = {}
        self.problems: list[str] = []

    def importable(self) -> bool:
        if self.available is None:
            try:
                import kernels
                import kernels.rnn  # noqa: F401

                self.available, self.interpreted = True, bool(kernels.INTERPRETED)
            except Exception as err:  # noqa: BLE001 (the report still goes out)
                self.available = False
                self.problems.append(f"parity not computed: kernels.rnn cannot be imported "
                                     f"({type(err).__name__}: {err})")
        return self.available

    def sizes(self, s: dict) -> tuple[tuple, str]:
        """(B, T, I, H, L) to check shape s at, and a note when B or T were capped for the interpreter."""
        b, t = s["batch_size"], s["seq_len"]
        note = ""
        if self.interpreted and (b > self.max_batch or t > self.max_steps):
            b, t = min(b, self.max_batch), min(t, self.max_steps)
            note = " (capped: interpreter)"
        return (b, t, s["input_size"], s["hidden_size"], s["num_layers"]), note

    def check(self, sizes: tuple) -> dict:
        if sizes not in self.results:
            self.results[sizes] = rnn_parity(*sizes)
        return self.results[sizes]


def _checked(sizes: tuple) -> str:
    return "B {} T {} I {} H {} L {}".format(*sizes)


def _row(shape: str, checked: str, res: dict, problems: list[str]) -> str:
    vals = [_finite(res.get(k)) for k in ("forward_max_abs", "forward_rel", "grad_max_abs", "grad_rel")]
    ok = all(v is not None for v in vals) and vals[1] <= PARITY_TOL_FP64 and vals[3] <= PARITY_TOL_FP64
    if not ok:
        problems.append(f"parity at shape {shape}: relative error above {PARITY_TOL_FP64:g} "
                        f"(forward {vals[1]}, gradients {vals[3]})")
    fmt = [f"{v:.2e}" if v is not None else "?" for v in vals]
    return f"| {shape} | {checked} | {fmt[0]} | {fmt[1]} | {fmt[2]} | {fmt[3]} | {'yes' if ok else '**no**'} |"


def parity_section(rows: list[Row], compute: bool, max_batch: int, max_steps: int) -> tuple[str, list[str]]:
    """(markdown, problems): recorded parity where the JSON has it, else computed (when `compute`)."""
    shapes = parity_shapes(rows)
    if not shapes:
        return ("No benchmark records the recurrence sizes (extra_info batch_size, seq_len, hidden_size), so "
                "there is no shape to check.", [])
    checker = _Checker(max_batch, max_steps)
    lines = []
    for s in shapes:
        sizes = (s["batch_size"], s["seq_len"], s["input_size"], s["hidden_size"], s["num_layers"])
        if s.get("recorded") is not None:
            lines.append(_row(s["shape"], _checked(sizes) + " (from the benchmark)", s["recorded"], checker.problems))
            continue
        if not compute:
            continue
        if not checker.importable():
            break
        sizes, note = checker.sizes(s)
        try:
            res = checker.check(sizes)
        except Exception as err:  # noqa: BLE001
            checker.problems.append(f"parity at shape {s['shape']} failed to run: {type(err).__name__}: {err}")
            lines.append(f"| {s['shape']} | {_checked(sizes)} | error: {type(err).__name__} | | | | **no** |")
            continue
        lines.append(_row(s["shape"], _checked(sizes) + note, res, checker.problems))
    if not lines:
        return "Parity not computed (" + ("--no-parity" if not compute else "; ".join(checker.problems)) + ").", \
            checker.problems
    intro = INTRO
    if checker.interpreted:
        intro += (f" Triton runs in its interpreter here: batch and sequence length are capped at {max_batch} and "
                  f"{max_steps} (sizes H, I and L as benchmarked).")
    table = ["| shape | checked at | forward max abs | forward rel | gradients max abs | gradients rel | "
             "fp64 ≤ 1e-12 |", "|---|---|---|---|---|---|---|"] + lines
    return intro + "\n\n" + "\n".join(table), checker.problems
