#!/usr/bin/env python3
"""rnnlm against the tutorial's script (../shared/baseline/tutorial_rnnlm.py): both sides, one run, one machine.

    .venv/bin/python benchmarks/compare_baseline.py [--json OUT] [--steps N] [--baseline-batches N] ...

Measures, on the same corpus (the default corpus unless --data):
- tokenize: the baseline's `tokenize:` seconds against rnnlm.data.load_corpus in a fresh process with an
  empty cache (RNNLM_CACHE_DIR is a new temporary folder), then again from the cache;
- train: the baseline's `train:` tokens/s against `python -m rnnlm.train --backend torch` (default
  hyperparameters, so windows batching like the baseline's), steady-state tokens/s after warm-up, in fp32 and in
  bf16; the bf16 run counts only if its validation perplexity after the same steps (and seed) is within 2% of
  the fp32 run's. A second fp32 run with another seed (--reference-seed) shows how far two fp32 runs fall apart
  anyway, so that the 2% can be read against run-to-run noise;
- generate: the baseline's `generate:` tokens/s (one sample, 500 tokens) against rnnlm's generation from the
  fp32 run's checkpoint;
- ceilings: in a fresh process after each of our training runs and after generation, the machine's GEMM
  throughput at the training step's shapes (fp32, bf16; the recurrence's sequential products at theirs) and its
  read bandwidth for a buffer of the generation step's weights (rnnlm.report.ceilings); each throughput is the
  best of those measurements (rnnlm.report.ceilings.best_of: a shared machine's speed drifts during a run) and
  the ceilings are the tokens/s they allow; each of our speeds is printed against its ceiling (the precision
  that ran), with the tutorial's ratio beside it;
- paired fractions: in a fresh process at the end, round after round, one unit of our work (a training step as
  the CLI runs it, at the precision and threads each run ran; a burst of the chosen generation plan's steps) and
  at once the ceiling's work for that unit, measured anew (rnnlm.report.ceilings.paired_fraction): the median of
  the rounds' ratios is our fraction with the host's drift taken out, and the ceiling targets are judged on it.
Prints a table (metric, baseline, ours, ratio, target, pass/fail) and the ceilings table; --json OUT also saves
them. Our runs choose their precision and threads as a user's would (rnnlm.tuning, timed in the run's own
fresh cache folder, so the timing is part of the run). The default budget takes about 4 minutes on a 2-core
CPU; --steps and --baseline-batches trade accuracy for time.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_BASELINE = REPO.parent / "shared" / "baseline" / "tutorial_rnnlm.py"

TARGETS = {  # metric -> target ratio (against the tutorial, or our fraction of the machine's ceiling)
    "tokenize (first run)": 1.8,
    "bf16 vs fp32": 0.95,          # bf16 never slower than fp32 (5%: the noise of two timed runs)
    "generate": 2.5,
    "train ceiling": 0.9,
    "generate ceiling": 0.7,
}
CACHED_LIMIT_S = 2.0
PPL_TOLERANCE = 0.02


# -- small helpers ---------------------------------------------------------------------------------------------

def log(msg: str) -> None:
    print(f"[compare {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], *, env: dict | None = None, timeout: float, cwd: Path = REPO) -> str:
    """Runs cmd, returns stdout; a failure raises with the tail of stderr."""
    log("$ " + " ".join(str(c) for c in cmd))
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=cwd)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"{' '.join(map(str, cmd[:4]))} ... exited with {proc.returncode}:\n{tail}")
    return proc.stdout


def child_env(cache_dir: Path | None = None) -> dict:
    env = dict(os.environ)
    env.setdefault("PYTHONHASHSEED", "0")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    if cache_dir is not None:
        env["RNNLM_CACHE_DIR"] = str(cache_dir)
    return env


# -- the baseline ----------------------------------------------------------------------------------------------

BASELINE_LINES = {
    "tokenize_s": re.compile(r"^tokenize:\s*([0-9.]+)\s*s for (\d+) tokens", re.M),
    "train_tokens_per_s": re.compile(r"^train:\s*([0-9.]+)\s*tokens/s over (\d+) batches", re.M),
    "generate_tokens_per_s": re.compile(r"^generate:\s*([0-9.]+)\s*tokens/s", re.M),
}


def run_baseline(script: Path, corpus: Path, batches: int, timeout: float) -> dict:
    out = run([sys.executable, script, "--data", corpus, "--max-batches", batches, "--seed", "0"],
              env=child_env(), timeout=timeout)
    result = {}
    for key, pattern in BASELINE_LINES.items():
        m = pattern.search(out)
        if not m:
            raise RuntimeError(f"the baseline printed no {key.split('_')[0]}: line; its output:\n{out[-2000:]}")
        result[key] = float(m.group(1))
        if key == "tokenize_s":
            result["tokens"] = int(m.group(2))
        if key == "train_tokens_per_s":
            result["train_batches"] = int(m.group(2))
    return result


# -- ours: measurements that run in a fresh child process (this file with --_measure) --------------------------

def measure_tokenize(corpus: str) -> dict:
    """load_corpus in this (fresh) process: tokenizes when RNNLM_CACHE_DIR is empty, else reads the cache."""
    from rnnlm.data import TokenizerSettings, load_corpus

    t0 = time.perf_counter()
    loaded = load_corpus(corpus, TokenizerSettings(), progress=False)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "tokens": int(len(loaded.ids)), "cached": bool(getattr(loaded, "cached", False))}


def measure_generate(checkpoint: str, length: int, repeats: int) -> dict:
    """rnnlm's generation (prompt 你好, temperature 0.8, one sample) from the checkpoint, on the torch backend.

    Like the baseline's timing it includes tokenizing and priming on the prompt; jieba's dictionary is loaded
    before (the baseline had loaded it for the corpus) by a short warm-up sample.
    """
    import rnnlm
    from rnnlm import tuning
    from rnnlm.inference.precision import TASK, StepPlan

    lm = rnnlm.load(checkpoint, backend="torch", device="cpu")
    lm.generate("你好", 10, temperature=0.8, seed=1)  # jieba loaded, first-call set-up
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        text = lm.generate("你好", length, temperature=0.8, seed=i)
        times.append(time.perf_counter() - t0)
    choice = tuning.last_choices.get(TASK)
    plan = StepPlan.parse(choice.picked) if choice else StepPlan("?", None)
    return {"times": times, "tokens_per_s": length / statistics.median(times),
            "first_tokens_per_s": length / times[0], "sample": text[:60], "output_precision": plan.precision,
            "matvec": plan.matvec, "threads": plan.threads, "plan": plan.name,
            "choice": choice.describe() if choice else None}


def measure_ceilings(checkpoint: str) -> dict:
    """The machine's ceilings (rnnlm.report.ceilings) at the shapes of the checkpoint's model and training."""
    import torch

    from rnnlm.report.ceilings import measure_ceilings as measure

    payload = torch.load(checkpoint, map_location="cpu", weights_only=False)
    cfg, vocab = payload["train_config"], len(payload["vocab"])
    return measure(batch_size=cfg["batch_size"], seq_len=cfg["seq_len"], vocab_size=vocab,
                   embed_size=cfg["embed_size"], hidden_size=cfg["hidden_size"], num_layers=cfg["num_layers"])


def measure_paired(checkpoint: str, runs_json: str) -> dict:
    """Our fractions of the ceilings with the host's drift taken out (rnnlm.report.ceilings.paired_fraction), at
    the shapes of the checkpoint's model and training: for each training run in runs_json ({name: [precision ran,
    threads]}), a training step as the CLI runs it (rnnlm.training.step.TrainStep: loss, backward, clipping,
    fused AdamW) against the GEMM ceiling of that precision; for "generate" ([output precision, plan name]), a
    burst of the plan's decoding steps (as rnnlm.tuning times it, from the state after <unk>: the prompt 你好 is
    out of the vocabulary) against the bandwidth ceiling; each round against the ceilings measured anew. Each
    entry loads the checkpoint afresh, so that no entry times a model another one's optimizer steps changed."""
    import torch

    import rnnlm
    from rnnlm import tuning
    from rnnlm.inference.precision import TIMED_BURST, StepPlan, decoding_burst
    from rnnlm.inference.sampling import Sampling
    from rnnlm.inference.stepper import prime
    from rnnlm.report import ceilings as C
    from rnnlm.training.step import TrainStep, keep_freed_memory, make_optimizer

    keep_freed_memory()  # as the CLI's training process does
    full = measure_ceilings(checkpoint)
    cfg = torch.load(checkpoint, map_location="cpu", weights_only=False)["train_config"]
    tokens, cpu = full["tokens"], torch.device("cpu")
    out = {"ceilings": full}
    for name, (precision, value) in json.loads(runs_json).items():
        lm = rnnlm.load(checkpoint, backend="torch", device="cpu")
        model = lm.model
        if name == "generate":
            sampling, plan = Sampling(temperature=0.8), StepPlan.parse(value)
            model.eval()
            with torch.inference_mode():
                hidden = prime(model, [lm.vocab.unk_id], cpu)[1]
            ours = decoding_burst(model, hidden, sampling, plan)
            per = C.remeasurer(full, "generate")
            with torch.inference_mode():
                out[name] = C.paired_fraction(
                    ours, lambda p=precision, per=per: TIMED_BURST / per()["generate_tokens_per_s"][p])
            continue
        model.train()
        step = TrainStep(model, make_optimizer(list(model.parameters()), cfg["lr"], cfg["weight_decay"]),
                         clip=cfg["clip"], precision=precision, device=cpu)
        gen = torch.Generator().manual_seed(0)
        x, y = (torch.randint(0, model.config.vocab_size, (cfg["batch_size"], cfg["seq_len"]), generator=gen)
                for _ in range(2))
        state = {"hidden": None, "number": 0}

        def ours(step=step, x=x, y=y, state=state, threads=value) -> None:
            with tuning.torch_threads(threads):
                _, hidden = step(x, y, state["hidden"], state["number"])
            state["hidden"], state["number"] = hidden.detach(), state["number"] + 1

        per = C.remeasurer(full, "train")
        out[name] = C.paired_fraction(ours, lambda p=precision, per=per: tokens / per()["train_tokens_per_s"][p])
    return out


def child_measure(what: str, *args: str) -> dict:
    """Runs a measurement in a fresh process; adds its wall time (start-up and imports included)."""
    t0 = time.perf_counter()
    out = run([sys.executable, Path(__file__).resolve(), "--_measure", what, *args],
              env=child_env(Path(os.environ["RNNLM_CACHE_DIR"])), timeout=1800)
    result = json.loads(out.strip().splitlines()[-1])
    result["process_wall_s"] = time.perf_counter() - t0
    return result


# -- ours: training through the CLI ----------------------------------------------------------------------------

def train_ours(corpus: Path, out: Path, steps: int, log_every: int, skip_windows: int, precision: str,
               cache_dir: Path, seed: int = 0) -> dict:
    """python -m rnnlm.train --backend torch (defaults otherwise) for `steps` steps; steady-state tokens/s from
    metrics.jsonl, leaving out the first `skip_windows` windows of `log_every` steps (warm-up)."""
    cmd = [sys.executable, "-m", "rnnlm.train", "--data", corpus, "--backend", "torch", "--device", "cpu",
           "--max-steps", steps, "--eval-every", steps, "--log-every", log_every, "--seed", seed,
           "--precision", precision, "--out", out, "--overwrite", "--no-progress", "--sample-length", "0"]
    t0 = time.perf_counter()
    stdout = run(cmd, env=child_env(cache_dir), timeout=3600)
    wall = time.perf_counter() - t0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    windows = [r for r in records if "tokens_per_s" in r]
    steady = windows[skip_windows:] or windows[-1:]
    if not steady:
        raise RuntimeError(f"{out / 'metrics.jsonl'} has no tokens_per_s records")
    # each window's tokens = its steps x B x T; time = tokens / rate
    prev_step = {id(r): (windows[i - 1]["step"] if i else 0) for i, r in enumerate(windows)}
    tokens = [(r["step"] - prev_step[id(r)]) * 64 * 20 for r in steady]
    seconds = sum(t / r["tokens_per_s"] for t, r in zip(tokens, steady))
    valid = [r["valid_ppl"] for r in records if "valid_ppl" in r and r["step"] == steps]
    if not valid:
        raise RuntimeError(f"{out / 'metrics.jsonl'} has no validation perplexity at step {steps}")
    m = re.search(r"test perplexity:\s*([0-9.]+)", stdout)
    ran = re.search(r"precision (\w+), (\d+) CPU threads", stdout)
    return {"tokens_per_s": sum(tokens) / seconds, "steps_timed": sum(r["step"] - prev_step[id(r)] for r in steady),
            "valid_ppl": valid[-1], "test_ppl": float(m.group(1)) if m else None, "wall_s": wall,
            "precision_ran": ran.group(1) if ran else precision, "threads": int(ran.group(2)) if ran else None}


# -- the table --------------------------------------------------------------------------------------------------

def row(metric: str, baseline, ours, ratio, target: str, ok: bool | None, note: str = "") -> dict:
    return {"metric": metric, "baseline": baseline, "ours": ours, "ratio": ratio, "target": target,
            "pass": ok, "note": note}


def fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_grid(lines: list[tuple]) -> None:
    """A header line, a rule, then the lines: the first column left-aligned, the others right-aligned."""
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(lines[0]))]
    for i, line in enumerate(lines):
        print("  ".join(str(c).ljust(w) if j == 0 else str(c).rjust(w) for j, (c, w) in enumerate(zip(line, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def print_table(rows: list[dict]) -> None:
    header = ("metric", "baseline", "ours", "ratio", "target", "result")
    lines = [header]
    for r in rows:
        unit_spec = ",.2f" if r["metric"].startswith("tokenize") else ",.0f"
        if r["metric"].startswith("valid ppl"):
            unit_spec = ",.2f"
        lines.append((r["metric"], fmt(r["baseline"], unit_spec), fmt(r["ours"], unit_spec),
                      "-" if r["ratio"] is None else f"{r['ratio']:.2f}x", r["target"],
                      {True: "PASS", False: "FAIL", None: "-"}[r["pass"]]))
    print_grid(lines)
    for r in rows:
        if r["note"]:
            print(f"  {r['metric']}: {r['note']}")


def paired_runs(fp32: dict, bf16: dict | None, gen: dict) -> dict:
    """What measure_paired times: {name: [precision that ran, threads]} per training run, and the generation's
    [output precision, plan name]."""
    runs = {"train fp32": [fp32["precision_ran"], fp32["threads"]]}
    if bf16 is not None:
        runs["train bf16"] = [bf16["precision_ran"], bf16["threads"]]
    runs["generate"] = [gen["output_precision"], gen["plan"]]
    return runs


def ceiling_rows(ceilings: dict, base: dict, fp32: dict, bf16: dict | None, gen: dict,
                 paired: dict | None = None) -> list[dict]:
    """Per speed: ours, the ceiling for the precision that ran, our fraction of it, the paired fraction
    (measure_paired, where measured), the tutorial's ratio. The target is judged on the paired fraction where there
    is one: the other divides a run-long average by the best moment's ceiling, so a drifting host fails it."""
    paired = paired or {}
    out = []
    runs = [("train fp32", fp32)] + ([("train bf16", bf16)] if bf16 is not None else [])
    for name, run in runs:
        ran = run["precision_ran"]
        ceiling = ceilings["train_tokens_per_s"].get(ran)
        out.append(_ceiling_row(f"{name} (ran {ran})", run["tokens_per_s"], ceiling,
                                run["tokens_per_s"] / base["train_tokens_per_s"], TARGETS["train ceiling"],
                                paired.get(name)))
    ceiling = ceilings["generate_tokens_per_s"].get(gen["output_precision"])
    out.append(_ceiling_row(f"generate (ran {gen['output_precision']})", gen["tokens_per_s"], ceiling,
                            gen["tokens_per_s"] / base["generate_tokens_per_s"], TARGETS["generate ceiling"],
                            paired.get("generate")))
    return out


def _ceiling_row(metric: str, ours: float, ceiling: float | None, vs_tutorial: float, target: float,
                 paired: dict | None = None) -> dict:
    fraction = ours / ceiling if ceiling else None
    judged = paired["fraction"] if paired else fraction
    return {"metric": metric, "ours": ours, "ceiling": ceiling, "fraction": fraction, "vs_tutorial": vs_tutorial,
            "paired": paired and {k: paired[k] for k in ("fraction", "fractions", "ours_s", "allowed_s")},
            "target": f">= {target:.0%}", "pass": None if judged is None else judged >= target}


def print_ceilings(rows: list[dict], ceilings: dict) -> None:
    gemm = ", ".join(f"{p} {g['flop_per_s'] / 1e9:,.1f} GFLOP/s ({g['by']} threads)"
                     for p, g in ceilings["gemm"].items())
    step = ceilings.get("step_gemm")
    if step:
        gemm += (f"; the recurrence's sequential (B, H) x (H, H) product fp32 {step['flop_per_s'] / 1e9:,.1f} "
                 f"GFLOP/s ({step['by']} threads)")
    bw = ceilings["bandwidth"]
    load = ceilings.get("load_average")
    print(f"\nceilings, measured in this run: GEMM at the training step's shapes {gemm}; read bandwidth "
          f"{bw['bytes_per_s'] / 1e9:,.1f} GB/s over {bw['bytes'] / 1e6:,.1f} MB ({bw['by']} threads)"
          + (f"; load average {load:.1f} on {ceilings['cpus']} CPUs" if load is not None else ""))
    lines = [("speed", "ours tokens/s", "ceiling tokens/s", "fraction", "paired fraction (range)", "vs tutorial",
              "target", "result")]
    for r in rows:
        p = r.get("paired")
        lines.append((r["metric"], fmt(r["ours"], ",.0f"), fmt(r["ceiling"], ",.0f"),
                      "-" if r["fraction"] is None else f"{r['fraction']:.0%}",
                      f"{p['fraction']:.0%} ({p['fractions'][0]:.0%}-{p['fractions'][-1]:.0%})" if p else "-",
                      f"{r['vs_tutorial']:.2f}x", r["target"], {True: "PASS", False: "FAIL", None: "-"}[r["pass"]]))
    print_grid(lines)
    if any(r.get("paired") for r in rows):
        rounds = max(len(r["paired"]["fractions"]) for r in rows if r.get("paired"))
        print(f"paired fraction: the median over {rounds} rounds of (the ceiling's time for a unit of work, measured "
              f"anew) / (ours for that unit, timed just before); fraction: the run's tokens/s over the best-of "
              f"ceiling. The target is judged on the paired fraction.")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="rnnlm against the tutorial's baseline script, in one run",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--baseline", type=Path, default=DEFAULT_BASELINE, help="the baseline script")
    ap.add_argument("--data", type=Path, default=None,
                    help="corpus (default: rnnlm's default corpus, rnnlm.data.default_corpus_path())")
    ap.add_argument("--baseline-batches", type=int, default=40,
                    help="batches the baseline times (after its own 5 warm-up batches)")
    ap.add_argument("--baseline-runs", type=int, default=2, choices=(1, 2, 3),
                    help="baseline runs: one before ours, the others after (their mean is compared)")
    ap.add_argument("--steps", type=int, default=300,
                    help="training steps of each of our runs (fp32, bf16); validation perplexity compared there")
    ap.add_argument("--log-every", type=int, default=10, help="steps per metrics.jsonl window")
    ap.add_argument("--warmup-windows", type=int, default=2,
                    help="first metrics windows left out of our steady-state tokens/s")
    ap.add_argument("--gen-length", type=int, default=500, help="generated words (the baseline's is 500)")
    ap.add_argument("--gen-repeats", type=int, default=3, help="timed samples of ours (median reported)")
    ap.add_argument("--no-bf16", action="store_true", help="skip the --precision bf16 run")
    ap.add_argument("--reference-seed", type=int, default=1,
                    help="seed of one more fp32 run, to compare the fp32 runs' validation perplexities "
                         "(run-to-run noise); -1 skips it")
    ap.add_argument("--keep", type=Path, default=None, help="keep our runs and caches in this folder")
    ap.add_argument("--json", type=Path, default=None, metavar="OUT", help="also save the table as JSON")
    ap.add_argument("--_measure", nargs="+", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args._measure:
        what, *rest = args._measure
        if what == "tokenize":
            result = measure_tokenize(rest[0])
        elif what == "generate":
            result = measure_generate(rest[0], int(rest[1]), int(rest[2]))
        elif what == "ceilings":
            result = measure_ceilings(rest[0])
        elif what == "paired":
            result = measure_paired(rest[0], rest[1])
        else:
            raise SystemExit(f"unknown measurement {what}")
        print(json.dumps(result))
        return 0

    if not args.baseline.is_file():
        print(f"compare_baseline: the baseline script {args.baseline} is not there (give --baseline PATH)",
              file=sys.stderr)
        return 2
    work = args.keep or Path(tempfile.mkdtemp(prefix="rnnlm-compare-"))
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    started = time.perf_counter()
    try:
        if args.data is None:
            from rnnlm.data import default_corpus_path

            corpus = default_corpus_path(work / "corpus-cache")  # the plain text both sides read
        else:
            corpus = args.data.resolve()
        log(f"corpus {corpus} ({corpus.stat().st_size / 1e6:.1f} MB)")

        # 1. the baseline: tokenize, train, generate in one process
        base_runs = [run_baseline(args.baseline, corpus, args.baseline_batches, timeout=3600)]
        log(f"baseline: {base_runs[0]}")

        # 2. our tokenization: first run with an empty cache, then cached, each in a fresh process
        cache = work / "cache"
        if cache.exists():
            shutil.rmtree(cache)
        cache.mkdir()
        os.environ["RNNLM_CACHE_DIR"] = str(cache)
        first = child_measure("tokenize", str(corpus))
        cached = child_measure("tokenize", str(corpus))
        log(f"ours tokenize: first {first}, cached {cached}")

        # 3. our training, fp32 then bf16, same steps and seed
        fp32 = train_ours(corpus, work / "run-fp32", args.steps, args.log_every, args.warmup_windows, "fp32", cache)
        log(f"ours train fp32: {fp32}")
        measured = [child_measure("ceilings", str(work / "run-fp32" / "last.pt"))]
        bf16 = None
        if not args.no_bf16:
            bf16 = train_ours(corpus, work / "run-bf16", args.steps, args.log_every, args.warmup_windows, "bf16",
                              cache)
            log(f"ours train bf16: {bf16}")
            measured.append(child_measure("ceilings", str(work / "run-fp32" / "last.pt")))
        reference = None
        if args.reference_seed >= 0:
            reference = train_ours(corpus, work / "run-fp32-reference", args.steps, args.log_every,
                                   args.warmup_windows, "fp32", cache, seed=args.reference_seed)
            log(f"ours train fp32, seed {args.reference_seed}: {reference}")

        # 4. our generation from the fp32 run's checkpoint
        gen = child_measure("generate", str(work / "run-fp32" / "last.pt"), str(args.gen_length),
                            str(args.gen_repeats))
        log(f"ours generate: {gen}")
        # the machine's ceilings, measured between the phases (below) and at the end: each throughput the best
        measured.append(child_measure("ceilings", str(work / "run-fp32" / "last.pt")))
        from rnnlm.report.ceilings import best_of

        ceilings = best_of(measured)
        log(f"ceilings (best of {len(measured)}): {ceilings}")
        # our fractions with the host's drift taken out: our units and the ceilings' work in turn
        paired = child_measure("paired", str(work / "run-fp32" / "last.pt"), json.dumps(paired_runs(fp32, bf16, gen)))
        log(f"paired fractions: { {k: v for k, v in paired.items() if k != 'ceilings'} }")

        # 5. the baseline again, so that a change of load on the machine during the run hits both sides
        for _ in range(args.baseline_runs - 1):
            base_runs.append(run_baseline(args.baseline, corpus, args.baseline_batches, timeout=3600))
            log(f"baseline again: {base_runs[-1]}")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)

    base = {k: statistics.mean(r[k] for r in base_runs) for k in base_runs[0]}
    base["runs"] = base_runs

    def each(key: str, spec: str) -> str:
        if len(base_runs) < 2:
            return ""
        return f"; baseline = mean of {len(base_runs)} runs (before and after ours): " + \
            ", ".join(format(r[key], spec) for r in base_runs)

    rows = []
    ratio = base["tokenize_s"] / first["seconds"]
    rows.append(row("tokenize (first run) s", base["tokenize_s"], first["seconds"], ratio, ">= 1.8x",
                    ratio >= TARGETS["tokenize (first run)"],
                    f"{first['tokens']:,} tokens ours, {base['tokens']:,.0f} baseline; ratio = baseline s / ours s"
                    + each("tokenize_s", ".2f")))
    rows.append(row("tokenize (cached) s", None, cached["seconds"], None, f"< {CACHED_LIMIT_S:g} s",
                    cached["seconds"] < CACHED_LIMIT_S and cached["cached"],
                    (f"load_corpus from the cache; the whole process (start-up, imports) took "
                     f"{cached['process_wall_s']:.2f} s" if cached["cached"]
                     else "the second run did not read the cache")))
    ratio = fp32["tokens_per_s"] / base["train_tokens_per_s"]
    rows.append(row("train fp32 tokens/s", base["train_tokens_per_s"], fp32["tokens_per_s"], ratio, "(ceilings)",
                    None,
                    f"ours over {fp32['steps_timed']} steps after warm-up; baseline over {base['train_batches']:.0f} batches"
                    + each("train_tokens_per_s", ",.0f")))
    if bf16 is not None:
        ratio = bf16["tokens_per_s"] / base["train_tokens_per_s"]
        drift = abs(bf16["valid_ppl"] / fp32["valid_ppl"] - 1)
        rows.append(row("train bf16 tokens/s", base["train_tokens_per_s"], bf16["tokens_per_s"], ratio, "(ceilings)",
                        None, f"--precision bf16 ran {bf16['precision_ran']} on {bf16['threads']} threads; valid ppl "
                        f"after {args.steps} steps: bf16 {bf16['valid_ppl']:.2f}, fp32 {fp32['valid_ppl']:.2f} "
                        f"({drift:.2%} apart; must be <= {PPL_TOLERANCE:.0%})"))
        ratio = bf16["tokens_per_s"] / fp32["tokens_per_s"]
        rows.append(row("train bf16 vs fp32 tokens/s", fp32["tokens_per_s"], bf16["tokens_per_s"], ratio,
                        f">= {TARGETS['bf16 vs fp32']:.2f}x", ratio >= TARGETS["bf16 vs fp32"],
                        "--precision bf16 must never be slower than fp32 (it runs fp32 where bf16 is slower)"))
        rows.append(row(f"valid ppl @{args.steps} bf16 vs fp32", fp32["valid_ppl"], bf16["valid_ppl"],
                        bf16["valid_ppl"] / fp32["valid_ppl"], "within 2%", drift <= PPL_TOLERANCE))
    if reference is not None:
        spread = abs(reference["valid_ppl"] / fp32["valid_ppl"] - 1)
        rows.append(row(f"valid ppl @{args.steps} fp32 seed {args.reference_seed} vs 0", fp32["valid_ppl"],
                        reference["valid_ppl"], reference["valid_ppl"] / fp32["valid_ppl"], "(noise)", None,
                        f"two fp32 runs that differ only in the seed are {spread:.2%} apart: the scale of "
                        f"run-to-run noise against which the bf16 run's difference is read"))
    ratio = gen["tokens_per_s"] / base["generate_tokens_per_s"]
    rows.append(row("generate tokens/s", base["generate_tokens_per_s"], gen["tokens_per_s"], ratio,
                    f">= {TARGETS['generate']:g}x", ratio >= TARGETS["generate"],
                    f"{args.gen_length} words, one sample, output precision {gen['output_precision']}, "
                    f"{gen.get('matvec', 'torch')}'s fp32 mat-vecs, on {gen['threads']} thread"
                    f"{'' if gen['threads'] == 1 else 's'}; ours: median of "
                    f"{args.gen_repeats} "
                    f"(first {gen['first_tokens_per_s']:,.0f} tokens/s)" + each("generate_tokens_per_s", ",.0f")))
    ceiling_table = ceiling_rows(ceilings, base, fp32, bf16, gen, paired)

    import torch

    from rnnlm.tuning import cpu_name

    machine = {"platform": platform.platform(), "processor": cpu_name(),
               "cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "corpus": str(corpus),
               "command": " ".join([Path(sys.executable).name, *sys.argv])}
    print(f"rnnlm vs baseline ({args.baseline.name}) on {machine['processor']}, {machine['cpus']} CPUs, "
          f"torch {machine['torch']}, {machine['date']}; {time.perf_counter() - started:.0f} s in all")
    print_table(rows)
    print_ceilings(ceiling_table, ceilings)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, "rows": rows, "ceiling_rows": ceiling_table,
                                         "ceilings": ceilings, "baseline": base,
                                         "ours": {"tokenize_first": first, "tokenize_cached": cached,
                                                  "train_fp32": fp32, "train_bf16": bf16,
                                                  "train_fp32_reference": reference, "generate": gen}},
                                        indent=2, ensure_ascii=False) + "\n")
        print(f"saved {args.json}")
    return 0 if all(r["pass"] is not False for r in rows + ceiling_table) else 1


if __name__ == "__main__":
    sys.exit(main())
