#!/usr/bin/env python3
"""Peak memory and time of tokenizing a large generated Chinese corpus (a script, not a test).

    .venv/bin/python benchmarks/memory_stream.py                 # 100 MB, as in issue 6 (limit: 1.5 GB)
    .venv/bin/python benchmarks/memory_stream.py --size-mb 10    # quick

The corpus is a seeded mix of clauses of the default corpus (People's Daily, January 1998), 1 to 8 clauses
a line, written into a temporary folder. rnnlm.data.load_corpus tokenizes it in a fresh subprocess with an
empty cache (every core), then a second subprocess loads it again from the cache. Each subprocess reports
its own peak RSS (resource.getrusage(RUSAGE_SELF)) and that of its largest worker process
(RUSAGE_CHILDREN; a forked worker shares most of its pages with the parent, so the sum is an upper bound).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LIMIT_MB = 1536

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from rnnlm.data import TokenizerSettings, load_corpus
corpus = load_corpus(sys.argv[1], TokenizerSettings(), cache_dir=sys.argv[2], workers=None, progress=False)
seconds = time.perf_counter() - t0
print(json.dumps({
    "seconds": seconds, "cached": corpus.cached, "tokens": corpus.n_tokens, "lines": corpus.n_lines,
    "lexicon": len(corpus.lexicon), "ids_mb": corpus.ids.nbytes / 2**20,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
}))
"""


def generate(path: Path, size_mb: float, seed: int) -> int:
    """Writes about size_mb MiB of UTF-8 Chinese text: random clauses of the default corpus, 1-8 a line."""
    from rnnlm.data import default_corpus_path
    clauses: list[str] = []
    with open(default_corpus_path(), encoding="utf-8") as f:
        for line in f:
            clauses.extend(c for c in re.findall(r"[^，。；！？]+[，。；！？]?", line.strip()) if c)
    rng = random.Random(seed)
    target = int(size_mb * 2**20)
    written = 0
    with open(path, "wb") as f:
        while written < target:            # whole lines, 1,000 at a time: overshoots by at most one batch
            block = "".join("".join(rng.choices(clauses, k=rng.randint(1, 8))) + "\n"
                            for _ in range(1_000)).encode("utf-8")
            f.write(block)
            written += len(block)
    return written


def run_child(corpus: Path, cache: Path) -> dict:
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", CHILD, str(corpus), str(cache)], capture_output=True, text=True,
                         env=env)
    if out.returncode != 0:
        sys.exit(f"tokenizing subprocess failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=float, default=100.0, help="corpus size in MiB")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="rnnlm-memory-") as tmp:
        corpus = Path(tmp) / "generated.txt"
        t0 = time.perf_counter()
        size = generate(corpus, args.size_mb, args.seed)
        print(f"generated {size / 2**20:.1f} MiB in {time.perf_counter() - t0:.1f} s: {corpus}")
        for label in ("first run (tokenize)", "second run (cache)"):
            r = run_child(corpus, Path(tmp) / "cache")
            total = r["peak_rss_mb"] + r["worker_peak_rss_mb"]
            print(f"{label}: {r['seconds']:.1f} s, {r['tokens']:,} tokens, {r['lines']:,} lines, "
                  f"{r['lexicon']:,} distinct words, ids {r['ids_mb']:.0f} MiB; peak RSS {r['peak_rss_mb']:.0f} MiB "
                  f"(largest worker {r['worker_peak_rss_mb']:.0f} MiB, sum {total:.0f} MiB; limit {LIMIT_MB} MiB: "
                  f"{'ok' if r['peak_rss_mb'] < LIMIT_MB else 'OVER'})")


if __name__ == "__main__":
    main()
