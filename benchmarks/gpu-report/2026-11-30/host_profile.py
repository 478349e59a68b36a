import sys, time
sys.path[:0] = ['.', 'benchmarks']
import kernels  # noqa
import torch
import kernels._rnn_persistent as P
from kernels.rnn import rnn
from torch.profiler import profile, ProfilerActivity

torch.manual_seed(0)
m = torch.nn.RNN(512, 512, 1, batch_first=True).cuda()
def bench(T, label):
    x = torch.randn(64, T, 512, device='cuda')
    f = lambda: rnn(x, None, m._flat_weights, num_layers=1, batch_first=True)
    with torch.no_grad():
        for _ in range(5):
            f()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(50):
            f()
        t1 = time.perf_counter(); torch.cuda.synchronize(); t2 = time.perf_counter()
        print(f"{label} T {T}: host {(t1 - t) / 50 * 1e6:.0f} us/call, host+gpu {(t2 - t) / 50 * 1e6:.0f} us/call")
    return f
f = bench(1, "as is")
with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
    for _ in range(10):
        f()
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=50))
bench(20, "as is")
orig = P._watch
P._watch = lambda err: None
bench(1, "no _watch"); bench(20, "no _watch")
P._watch = orig
t = time.perf_counter(); [torch.zeros(41, dtype=torch.int32, device='cuda') for _ in range(100)]; print('zeros us', (time.perf_counter()-t)*1e4)
