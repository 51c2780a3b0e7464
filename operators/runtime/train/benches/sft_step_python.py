"""The PyTorch side of train/benches/sft_step.rs: one LoRA SFT optimizer step (forward,
backward, clip, AdamW) on the same model directory and tokens, on the CPU.

Run the Rust bench first (it writes target/sft-bench/{model,tokens.json}), then:
    /root/venv-ref/bin/python train/benches/sft_step_python.py [TARGET_DIR]
Versions used for the README figures: torch 2.15.0, transformers 5.23.0 (LoRA written by
hand as PEFT defines it: y = W x + (alpha / r) * B A x, A Kaiming-uniform, B zeros).
"""
import json
import math
import resource
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

THREADS = 2
torch.set_num_threads(THREADS)
target = Path(sys.argv[1] if len(sys.argv) > 1 else "target") / "sft-bench"
model = AutoModelForCausalLM.from_pretrained(target / "model", torch_dtype=torch.float32)
model.train()
for p in model.parameters():
    p.requires_grad_(False)

R, ALPHA = 16, 32.0
params = []


class Lora(torch.nn.Module):
    def __init__(self, base):
        super().__init__()
        self.base = base
        self.a = torch.nn.Parameter(torch.empty(R, base.in_features))
        torch.nn.init.kaiming_uniform_(self.a, a=math.sqrt(5))
        self.b = torch.nn.Parameter(torch.zeros(base.out_features, R))

    def forward(self, x):
        return self.base(x) + (ALPHA / R) * ((x @ self.a.T) @ self.b.T)


for layer in model.model.layers:
    for parent, names in ((layer.self_attn, ["q_proj", "k_proj", "v_proj", "o_proj"]), (layer.mlp, ["gate_proj", "up_proj", "down_proj"])):
        for n in names:
            w = Lora(getattr(parent, n))
            setattr(parent, n, w)
            params += [w.a, w.b]

tokens = torch.tensor(json.loads((target / "tokens.json").read_text()))
labels = tokens.clone()
labels[:, 0] = -100
opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)


def step():
    out = model(input_ids=tokens, labels=labels)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad()


for _ in range(3):
    step()
times = []
for _ in range(10):
    t = time.perf_counter()
    step()
    times.append(time.perf_counter() - t)
times.sort()
print(f"torch {torch.__version__}, {THREADS} threads, batch {tuple(tokens.shape)}")
print(f"median step {1000 * times[len(times) // 2]:.1f} ms (min {1000 * times[0]:.1f} ms)")
print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
