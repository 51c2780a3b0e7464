# sentence-transformers on the sentences of benches/embed.rs (same formula), batch 32.
# Versions used: sentence-transformers 6.2.0, torch 2.15.0, transformers 5.23.0.
# Run: OMP_NUM_THREADS=2 /root/venv-ref/bin/python encoders/benches/embed_python.py [model_dir]
import os
import sys
import time

import torch
from sentence_transformers import SentenceTransformer

WORDS = [
    "the", "experiment", "measures", "boiling", "point", "of", "water", "student", "heats",
    "flask", "over", "small", "flame", "carbon", "monoxide", "burns", "blue", "valve", "gas",
    "cylinder", "slowly", "safety", "goggles", "window", "solution", "turns", "red", "acid",
    "never", "reverse", "record", "temperature", "table", "compare", "results", "video",
]


def sentences(n):
    out = []
    for i in range(n):
        length = 5 + (11 * i) % 30
        out.append(" ".join(WORDS[(7 * i + 13 * j) % len(WORDS)] for j in range(length)))
    return out


model_dir = (
    sys.argv[1]
    if len(sys.argv) > 1
    else os.environ.get("EXPFLOW_MINILM_DIR") or os.path.expanduser("~/.cache/expflow-models/all-minilm-l6-v2")
)
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
model = SentenceTransformer(model_dir, device="cpu")
texts = sentences(512)
model.encode(texts[:64], batch_size=32)  # warm-up
runs = []
for _ in range(5):
    t = time.perf_counter()
    model.encode(texts, batch_size=32)
    runs.append(time.perf_counter() - t)
best = min(runs)
median = sorted(runs)[len(runs) // 2]
print(f"sentence-transformers: {len(texts)} sentences, batch 32: best {best:.3f} s = {len(texts) / best:.1f} sent/s, "
      f"median {median:.3f} s = {len(texts) / median:.1f} sent/s "
      f"(runs: {', '.join(f'{r:.3f}' for r in runs)})")
