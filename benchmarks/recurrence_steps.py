"""Where the recurrence's time goes on a GPU: forward time against the number of time steps T.

    PYTHONPATH=. python benchmarks/recurrence_steps.py [--batch 64] [--hidden 512]

One layer, fp32 and tf32, T in {1, 2, 5, 20, 80}: rnn() (the launcher's own choice of kernels) against nn.RNN
(cuDNN), CUDA events after warm-up (benchmarks/cuda_bench.py). The slope between T = 20 and T = 80 is the cost of
one time step, the intercept what a launch costs whatever T is: together they say whether a slow recurrence pays
per step (the grid barrier, the step's loads) or per launch. Needs CUDA.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

import kernels  # noqa: E402,F401  (settles Triton's mode before triton is imported)
import torch  # noqa: E402

import cuda_bench  # noqa: E402
from gpu_check import _median, precision_mode  # noqa: E402

STEPS = (1, 2, 5, 20, 80)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=512)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("recurrence_steps: needs a CUDA device", file=sys.stderr)
        return 2
    from kernels.rnn import rnn

    device, B, H = torch.device("cuda"), args.batch, args.hidden
    print(f"{torch.cuda.get_device_name()}: forward, 1 layer, B {B}, I {H}, H {H}; ms per call (median of 20)")
    print("precision | T | cuDNN ms | triton ms")
    for precision in ("fp32", "tf32"):
        fits = {}
        for T in STEPS:
            torch.manual_seed(0)
            m = torch.nn.RNN(H, H, 1, batch_first=True).to(device)
            x = torch.randn(B, T, H, device=device)
            with torch.no_grad(), precision_mode(precision, device):
                t = {name: _median(cuda_bench.measure(fn, device, rounds=20, warmup=3)) for name, fn in (
                    ("cudnn", lambda: m(x)),
                    ("triton", lambda: rnn(x, None, m._flat_weights, num_layers=1, batch_first=True)))}
            fits[T] = t
            print(f"{precision} | {T} | {t['cudnn'] * 1e3:.3f} | {t['triton'] * 1e3:.3f}")
        for name in ("cudnn", "triton"):
            per_step = (fits[80][name] - fits[20][name]) / 60
            print(f"{precision} {name}: {per_step * 1e6:.2f} us per step, "
                  f"{(fits[20][name] - 20 * per_step) * 1e6:.1f} us per launch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
