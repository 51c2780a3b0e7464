#!/usr/bin/env python3
"""Times the Python reference packages on the pairs `benches/score.rs` generates (the same
generator, re-implemented here), one metric at a time; prints pairs per second as JSON.

    python score_python.py [N] [METEOR_N]

N defaults to 100000; METEOR, the slowest, runs on its first METEOR_N pairs (default N).
Needs sacrebleu, rouge-score, nltk (with WordNet 3.0 on NLTK_DATA) and pycocoevalcap.
"""
import json
import sys
import time

M64 = (1 << 64) - 1


class SplitMix64:
    def __init__(self, seed):
        self.s = seed & M64

    def next(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & M64
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)

    def below(self, n):
        return (self.next() * n) >> 64


WORDS = (
    "the a of to in on with by for from and add adds added adding pour poured heat heated "
    "mix mixing stir solution beaker flask yeast sucrose glucose ethanol water acid base salt "
    "sodium chloride copper sulfate reaction reacts quickly fast slowly large big small begin "
    "start observe watch color blue red green clear bubbles gas carbon dioxide oxygen "
    "temperature rises cools dissolve crystals form precipitate white running dogs cats "
    "kitten car children measure measured electrode battery current voltage safety goggles "
    "gloves wear careful avoid contact skin eyes , . ( ) : ; % 3.5 10ml 25 C6H12O6"
).split()


def pairs(n, seed=42):
    rng = SplitMix64(seed)
    hyps, refs = [], []
    for _ in range(n):
        k = 5 + rng.below(30)
        ref = [WORDS[rng.below(len(WORDS))] for _ in range(k)]
        hyp = []
        for w in ref:
            r = rng.below(8)
            if r == 0:
                continue
            if r == 1:
                hyp.append(WORDS[rng.below(len(WORDS))])
            else:
                hyp.append(w)
            if rng.below(16) == 0:
                hyp.append(WORDS[rng.below(len(WORDS))])
        hyps.append(" ".join(hyp))
        refs.append(" ".join(ref))
    return hyps, refs


def rate(n, f):
    t = time.perf_counter()
    f()
    dt = time.perf_counter() - t
    return {"pairs": n, "seconds": dt, "pairs_per_s": n / dt}


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100000
    mn = int(sys.argv[2]) if len(sys.argv) > 2 else n
    hyps, refs = pairs(n)
    out = {}
    import sacrebleu
    out["bleu"] = rate(n, lambda: sacrebleu.corpus_bleu(hyps, [refs]))
    from rouge_score import rouge_scorer
    sc = rouge_scorer.RougeScorer(["rougeL"])
    out["rouge_l"] = rate(n, lambda: [sc.score(r, h) for h, r in zip(hyps, refs)])
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
    t = Tokenizer13a()
    tok = lambda s: t(s.rstrip()).split()
    from nltk.translate.meteor_score import meteor_score
    from nltk.corpus import wordnet
    wordnet.ensure_loaded()
    out["meteor"] = rate(mn, lambda: [meteor_score([tok(r)], tok(h)) for h, r in zip(hyps[:mn], refs[:mn])])
    from pycocoevalcap.cider.cider import Cider
    def cider():
        gts = {i: [" ".join(tok(r))] for i, r in enumerate(refs)}
        res = {i: [" ".join(tok(h))] for i, h in enumerate(hyps)}
        Cider().compute_score(gts, res)
    out["cider_d"] = rate(n, cider)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
