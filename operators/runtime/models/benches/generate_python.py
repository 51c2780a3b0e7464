# transformers' greedy `generate` on the model directory and prompt ids that benches/generate.rs
# writes (run that bench first), at the same batch sizes and max_new_tokens; checks that the
# generated tokens equal the Rust runtime's (bench_greedy_rust.json) and prints new tokens/s.
# Versions used: torch 2.15.0, transformers 5.23.0.
# Run: OMP_NUM_THREADS=2 /root/venv-ref/bin/python models/benches/generate_python.py [model_dir]
import json
import os
import sys
import tempfile
import time

import torch
from transformers import AutoModelForCausalLM

model_dir = (
    sys.argv[1]
    if len(sys.argv) > 1
    else os.environ.get("EXPFLOW_GEN_BENCH_DIR") or os.path.join(tempfile.gettempdir(), "expflow-bench-qwen2-small")
)
threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
torch.set_num_threads(threads)
with open(os.path.join(model_dir, "bench_prompts.json")) as f:
    prompts = json.load(f)
with open(os.path.join(model_dir, "bench_greedy_rust.json")) as f:
    rust = json.load(f)
max_new = prompts["max_new_tokens"]
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
eos = model.generation_config.eos_token_id
eos = set(eos if isinstance(eos, list) else [eos])
pad = model.generation_config.pad_token_id
print(f"model {model_dir}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
      f"{threads} threads, max_new_tokens {max_new}, eos {sorted(eos)}")


def batch_inputs(rows):
    width = max(len(r) for r in rows)
    ids = [[pad] * (width - len(r)) + r for r in rows]
    mask = [[0] * (width - len(r)) + [1] * len(r) for r in rows]
    return torch.tensor(ids), torch.tensor(mask)


def generated(out, width):
    # Tokens after the prompt, up to (not including) the first end-of-sequence token.
    rows = []
    for row in out[:, width:].tolist():
        kept = []
        for t in row:
            if t in eos:
                break
            kept.append(t)
        rows.append(kept)
    return rows


for batch, rows in prompts["batches"].items():
    ids, mask = batch_inputs(rows)

    def run():
        with torch.inference_mode():
            return model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new,
                do_sample=False,
                eos_token_id=sorted(eos),
                pad_token_id=pad,
            )

    tokens = generated(run(), ids.shape[1])  # also the warm-up
    same = tokens == rust["batches"][batch]
    produced = sum(len(t) for t in tokens)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    best = min(times)
    median = sorted(times)[len(times) // 2]
    print(f"batch {batch}: {produced} new tokens per run; tokens equal to the Rust runtime's: {same}; "
          f"best {best * 1000:.1f} ms = {produced / best:.1f} tokens/s, median {median * 1000:.1f} ms = "
          f"{produced / median:.1f} tokens/s (runs: {', '.join(f'{x * 1000:.0f}' for x in times)} ms)")
    if not same:
        for i, (a, b) in enumerate(zip(tokens, rust["batches"][batch])):
            if a != b:
                print(f"  row {i}: transformers {a}\n  row {i}: expflow      {b}")
