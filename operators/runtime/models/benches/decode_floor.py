# The floor of greedy decoding at batch B for the generate bench's model (benches/generate.rs):
# every decode step multiplies B rows by every weight matrix of the model once, so a step
# cannot take less than the time to stream those weights from memory. This times exactly
# those products in PyTorch (the same f32 shapes as the model: per layer q, k, v, o, gate, up,
# down; then lm_head), with nothing else, on the same threads, and prints the time per step
# and for the bench's 64 steps, next to the bytes read and the bandwidth that implies.
# Run: OMP_NUM_THREADS=2 python models/benches/decode_floor.py [BATCH] [STEPS]
import os
import sys
import time

import torch

batch = int(sys.argv[1]) if len(sys.argv) > 1 else 8
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 64
threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
torch.set_num_threads(threads)
torch.manual_seed(0)

# benches/generate.rs's spec(): vocab 8,192, hidden 512, 8 layers, 8 heads of 64, 2 key/value
# heads, intermediate 1,536.
vocab, hidden, layers, heads, kv_heads, inter = 8192, 512, 8, 8, 2, 1536
head_dim = hidden // heads
shapes = []
for _ in range(layers):
    shapes += [
        (hidden, hidden),  # q
        (kv_heads * head_dim, hidden),  # k
        (kv_heads * head_dim, hidden),  # v
        (hidden, hidden),  # o
        (inter, hidden),  # gate
        (inter, hidden),  # up
        (hidden, inter),  # down
    ]
shapes.append((vocab, hidden))  # lm_head
weights = [torch.randn(o, i) * 0.02 for o, i in shapes]
nbytes = sum(w.numel() * 4 for w in weights)
xs = {i: torch.randn(batch, i) for i in {s[1] for s in shapes}}


def step():
    for w in weights:
        torch.nn.functional.linear(xs[w.shape[1]], w)


with torch.inference_mode():
    for _ in range(5):
        step()
    runs = []
    for _ in range(7):
        t = time.perf_counter()
        for _ in range(steps):
            step()
        runs.append((time.perf_counter() - t) / steps)
per_step = sorted(runs)[len(runs) // 2]
print(
    f"batch {batch}, {threads} threads: weights {nbytes / 1e6:.1f} MB; products only: "
    f"{per_step * 1e3:.2f} ms per step (median of 7), {per_step * steps:.3f} s for {steps} steps, "
    f"{nbytes / per_step / 1e9:.1f} GB/s"
)
