#!/usr/bin/env python3
"""Side-by-side: our libtorch LLaMA vs PyTorch eager (Meta-style reference model,
tests/golden/llama_reference.py) on the same configuration, weights and thread count.

    /usr/bin/python3 tests/bench/pytorch_eager.py [--preset small] [--threads 2] [--repeats 5]

Prints medians and the ratio ours/PyTorch for prefill, cached decode per token at batch 1, and
uncached decode per token. Both sides run in this one invocation, so the ratios share the
machine's state (the host is noisy: compare ratios, not absolute times).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "golden"))
import llama_reference as ref  # noqa: E402

# Same shapes as model/config.cpp (checked against `harness-worker model` below).
SCALING = {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
           "original_max_pos": 8192}
PRESETS = {
    "tiny": dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=2, vocab_size=512, ffn_hidden=384,
                 norm_eps=1e-5, rope_theta=500000.0, rope_scaling=SCALING,
                 tie_embeddings=False),
    "small": dict(dim=768, n_layers=12, n_heads=12, n_kv_heads=4, vocab_size=32000,
                  ffn_hidden=2048, norm_eps=1e-5, rope_theta=500000.0, rope_scaling=SCALING,
                  tie_embeddings=False),
}


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def pytorch_times(model, prompt, new_tokens, repeats, use_cache):
    """Median prefill time and per-token decode time, greedy, as Meta's generate loop does."""
    prefills, tokens = [], []
    for r in range(repeats + 1):  # the first is a warm-up
        model.reset_cache()
        t0 = time.perf_counter()
        logits = model(prompt, start_pos=0, use_cache=use_cache)[:, -1]
        tok = logits.argmax(-1)
        t1 = time.perf_counter()
        seq = prompt
        for j in range(new_tokens - 1):
            pos = prompt.shape[1] + j
            seq = torch.cat([seq, tok[:, None]], dim=1)
            if use_cache:
                logits = model(tok[:, None], start_pos=pos, use_cache=True)[:, -1]
            else:
                logits = model(seq, start_pos=0, use_cache=False)[:, -1]
            tok = logits.argmax(-1)
        t2 = time.perf_counter()
        if r > 0:
            prefills.append(t1 - t0)
            tokens.append((t2 - t1) / (new_tokens - 1))
    return statistics.median(prefills), statistics.median(tokens)


def ours(worker, preset, weights, prompt_len, new_tokens, repeats, threads, cache):
    out = subprocess.run(
        [worker, "generate", "--model", preset, "--weights", weights, "--prompt-len",
         str(prompt_len), "--max-new-tokens", str(new_tokens), "--repeats", str(repeats),
         "--threads", str(threads), "--kv-cache", cache, "--json"],
        check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small", choices=sorted(PRESETS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--worker", default=os.path.join(ROOT, "build", "harness-worker"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = PRESETS[args.preset]

    model = ref.Transformer(cfg, 1, args.prompt_len + args.new_tokens + 1)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    n_params = sum(p.numel() for p in model.parameters())
    shown = subprocess.run([args.worker, "model", args.preset], check=True, capture_output=True,
                           text=True).stdout
    ours_params = int([l for l in shown.splitlines() if l.startswith("parameters")][0].split()[1])
    assert ours_params == n_params, (ours_params, n_params)

    prompt = torch.randint(3, cfg["vocab_size"], (1, args.prompt_len), generator=gen)
    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "weights.pt")
        torch.save(ref.meta_state_dict(model), weights)
        rows = []
        for cache in ("on", "off"):
            ours_j = ours(args.worker, args.preset, weights, args.prompt_len, args.new_tokens,
                          args.repeats, args.threads, cache)
            pt_prefill, pt_token = pytorch_times(model, prompt, args.new_tokens, args.repeats,
                                                 cache == "on")
            rows.append((cache, ours_j["prefill_s"], pt_prefill, ours_j["decode_token_s"],
                         pt_token))

    print(f"preset {args.preset} ({n_params:,} params), batch 1, prompt {args.prompt_len}, "
          f"{args.new_tokens} new tokens, {args.threads} threads, medians of {args.repeats}")
    print(f"{'':22} {'ours':>10} {'pytorch':>10} {'time ratio':>11} {'speed-up':>9}")
    for cache, op, pp, ot, pt in rows:
        if cache == "on":
            print(f"{'prefill':22} {op*1e3:9.2f}ms {pp*1e3:9.2f}ms {op/pp:11.3f} {pp/op:8.2f}x")
        label = "decode/token (cache)" if cache == "on" else "decode/token (no cache)"
        print(f"{label:22} {ot*1e3:9.2f}ms {pt*1e3:9.2f}ms {ot/pt:11.3f} {pt/ot:8.2f}x")


if __name__ == "__main__":
    main()
