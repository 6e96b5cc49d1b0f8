#!/usr/bin/env python3
"""Side-by-side: our libtorch LLaMA vs PyTorch eager (Meta-style reference model,
tests/golden/llama_reference.py) on the same configuration, weights and thread count.

Generation (the default mode):

    .venv/bin/python tests/bench/pytorch_eager.py [--preset small] [--threads 2] [--repeats 5]

Prints medians and the ratio ours/PyTorch for prefill, cached decode per token at batch 1, and
uncached decode per token.

Training (--train):

    .venv/bin/python tests/bench/pytorch_eager.py --train [--preset small] [--threads 2]
        [--batch 1] [--seq-len 256] [--steps 8] [--warmup 3] [--gc-reentrant on|off]
        [--interleave]

One fine-tuning step (forward, next-token cross entropy, backward, SGD step, gradients released)
on random tokens, for the matrix gradient checkpointing {off, on} x LoRA {off, on} (LoRA r 16,
alpha 32, dropout 0.05 on wq and wv, base frozen). Ours: a temporary spec run through
`build/harness run` (one worker process per configuration), reading step_time_p50_s from its
SQLite database. PyTorch: the reference model in a training variant (with grad, no KV cache),
LoRA as PEFT implements it, checkpointing with torch.utils.checkpoint per block; the median of
the same measured steps after the same warm-up steps. Prints s/step and the ratio ours/PyTorch
(medians, and minima: the less contention-sensitive figure). --interleave runs each
configuration's two sides back to back (ours from a one-cell spec) instead of ours' whole matrix
first.

Both sides run in this one invocation, so the ratios share the machine's state (the host is
noisy: compare ratios, not absolute times).
"""
import argparse
import json
import math
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

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


def ours(worker, preset, weights, prompt_len, new_tokens, repeats, threads, cache, attention):
    out = subprocess.run(
        [worker, "generate", "--model", preset, "--weights", weights, "--prompt-len",
         str(prompt_len), "--max-new-tokens", str(new_tokens), "--repeats", str(repeats),
         "--threads", str(threads), "--kv-cache", cache, "--attention", attention, "--json"],
        check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# Training (--train)
# ---------------------------------------------------------------------------------------------

class LoraLinear(torch.nn.Module):
    """PEFT's LoRA on a Linear: y = base(x) + (alpha / r) * B(A(dropout(x))); the base frozen,
    A kaiming-uniform (a = sqrt(5), as nn.Linear and PEFT initialise it), B zero."""

    def __init__(self, base, r, alpha, dropout):
        super().__init__()
        self.base = base
        self.base.weight.requires_grad_(False)
        self.lora_A = torch.nn.Linear(base.in_features, r, bias=False)
        self.lora_B = torch.nn.Linear(r, base.out_features, bias=False)
        torch.nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        torch.nn.init.zeros_(self.lora_B.weight)
        self.dropout = torch.nn.Dropout(dropout) if dropout > 0 else torch.nn.Identity()
        self.scaling = alpha / r

    def forward(self, x):
        return self.base(x) + self.lora_B(self.lora_A(self.dropout(x))) * self.scaling


class TrainingTransformer(ref.Transformer):
    """The reference model for training: the forward with autograd (the reference's forward is
    @torch.no_grad()), no KV cache (dropped), optional torch.utils.checkpoint per block."""

    def __init__(self, cfg, seq_len, checkpointing=False, reentrant=True):
        super().__init__(cfg, 1, seq_len)
        for layer in self.layers:
            del layer.attention.cache_k, layer.attention.cache_v  # never used in training
        self.checkpointing = checkpointing
        self.reentrant = reentrant

    def add_lora(self, targets, r, alpha, dropout):
        for p in self.parameters():
            p.requires_grad_(False)
        for layer in self.layers:
            for name in targets:
                owner = layer.attention if hasattr(layer.attention, name) else layer.feed_forward
                setattr(owner, name, LoraLinear(getattr(owner, name), r, alpha, dropout))

    def forward(self, tokens):
        """float32 logits (bsz, seqlen, vocab) of a causal forward from position 0."""
        seqlen = tokens.shape[1]
        h = self.tok_embeddings(tokens)
        freqs_cis = self.freqs_cis[:seqlen]
        mask = torch.triu(torch.full((seqlen, seqlen), float("-inf")), diagonal=1).type_as(h)
        if self.checkpointing and self.reentrant and not h.requires_grad:
            # Reentrant checkpointing only back-propagates into a block when one of its tensor
            # inputs requires grad; with a frozen embedding (LoRA) that is made so, as HF's
            # enable_input_require_grads() does for PEFT.
            h.requires_grad_(True)
        for layer in self.layers:
            if self.checkpointing:
                h = torch.utils.checkpoint.checkpoint(layer, h, 0, freqs_cis, mask, False,
                                                      use_reentrant=self.reentrant)
            else:
                h = layer(h, 0, freqs_cis, mask, False)
        h = self.norm(h)
        w_out = self.tok_embeddings.weight if self.tie else self.output.weight
        return ref._up(F.linear(h, w_out))


TRAIN_FIXED = dict(optimizer="sgd", lr=1e-5, lora_r=16, lora_alpha=32, lora_dropout=0.05,
                   lora_targets=["wq", "wv"])
TRAIN_CONFIGS = [(gc, lora) for gc in ("off", "on") for lora in ("off", "on")]


def init_like_ours(model, gen):
    """As init_random in model/llama.cpp: norms 1, every other weight N(0, 0.02)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)


def pytorch_train_times(cfg, gc, lora, batches, warmup, reentrant, gen):
    """Per-step seconds of forward + loss + backward + optimizer.step + zero_grad(set_to_none),
    the measured ones (after `warmup` steps); also the trainable parameter count, first loss."""
    model = TrainingTransformer(cfg, batches[0].shape[1], gc == "on", reentrant)
    init_like_ours(model, gen)
    if lora == "on":
        model.add_lora(TRAIN_FIXED["lora_targets"], TRAIN_FIXED["lora_r"],
                       TRAIN_FIXED["lora_alpha"], TRAIN_FIXED["lora_dropout"])
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=TRAIN_FIXED["lr"])
    times, losses = [], []
    for tokens in batches:
        t0 = time.perf_counter()
        logits = model(tokens)
        vocab = logits.shape[-1]
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, vocab), tokens[:, 1:].reshape(-1))
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return times[warmup:], sum(p.numel() for p in params), losses[0]


def ours_train(harness, preset, batch, seq_len, steps, warmup, threads, cells, tmp, attention):
    """Runs the gc x lora matrix of `cells` (all four, or one) through `harness run` in `tmp`;
    {(gc, lora): {metric name: value}} read from its database."""
    fixed = dict(batch_size=batch, threads=threads, max_steps=steps, warmup_steps=warmup,
                 attention=attention, **TRAIN_FIXED)
    fixed_yaml = ", ".join(
        f"{k}: [{', '.join(v)}]" if isinstance(v, list) else f"{k}: {v}"
        for k, v in fixed.items())
    gcs = sorted({gc for gc, _ in cells})
    loras = sorted({lora for _, lora in cells})
    spec = os.path.join(tmp, "spec.yaml")
    with open(spec, "w") as f:
        f.write(f"""name: bench_train
model: {{preset: {preset}, weights: random, seed: 0}}
device: cpu
workload: finetune
data: {{format: random, seq_len: {seq_len}}}
fixed: {{{fixed_yaml}}}
matrix:
  gc: [{', '.join(gcs)}]
  lora: [{', '.join(loras)}]
repeats: 1
timeout_s: 3600
""")
    db = os.path.join(tmp, "bench.db")
    proc = subprocess.run([harness, "run", spec, "--db", db, "--no-report"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"harness run failed ({proc.returncode}):\n{proc.stderr}")
    con = sqlite3.connect(db)
    out = {}
    for run_id, config, status, tail in con.execute(
            "SELECT run_id, config, status, stderr_tail FROM runs WHERE experiment = ?",
            ("bench_train",)):
        if status != "ok":
            sys.exit(f"run {config}: {status}\n{tail}")
        c = json.loads(config)
        metrics = dict(con.execute("SELECT name, value FROM metrics WHERE run_id = ?", (run_id,)))
        out[(c["gc"], c["lora"])] = metrics
    con.close()
    return out


def load_avg():
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def train_main(args, cfg, n_params):
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(3, cfg["vocab_size"], (args.batch, args.seq_len), generator=gen)
               for _ in range(args.steps)]
    reentrant = args.gc_reentrant == "on"
    measured = args.steps - args.warmup
    print(f"preset {args.preset} ({n_params:,} params), batch {args.batch} x seq {args.seq_len} "
          f"random tokens, {args.threads} threads, SGD lr 1e-5, {args.steps} steps of which "
          f"{args.warmup} warm-up, medians of {measured}; PyTorch GC: torch.utils.checkpoint "
          f"use_reentrant={reentrant}; " + ("interleaved per configuration" if args.interleave
                                             else "ours (one spec), then PyTorch"), flush=True)

    def ours(cells):
        with tempfile.TemporaryDirectory() as tmp:
            print(f"  ours {cells}: {load_avg()}", flush=True)
            return ours_train(args.harness, args.preset, args.batch, args.seq_len, args.steps,
                              args.warmup, args.threads, cells, tmp, args.attention)

    def pytorch(gc, lora):
        print(f"  PyTorch {(gc, lora)}: {load_avg()}", flush=True)
        return pytorch_train_times(cfg, gc, lora, batches, args.warmup, reentrant, gen)

    start = time.perf_counter()
    ours_m, pt = {}, {}
    if args.interleave:
        for cell in TRAIN_CONFIGS:
            ours_m.update(ours([cell]))
            pt[cell] = pytorch(*cell)
    else:
        ours_m = ours(TRAIN_CONFIGS)
        for cell in TRAIN_CONFIGS:
            pt[cell] = pytorch(*cell)
    print(f"  end: {load_avg()}, {time.perf_counter() - start:.0f} s in all")
    print()
    print(f"{'config':18} {'ours s/step':>11} {'PyTorch s/step':>14} {'ours/PyTorch':>12}"
          f" | {'min: ours':>9} {'PyTorch':>8} {'ratio':>6} | loss0 ours, PyTorch")
    for gc, lora in TRAIN_CONFIGS:
        m = ours_m[(gc, lora)]
        times, trainable, loss0 = pt[(gc, lora)]
        assert int(m["trainable_params"]) == trainable, (gc, lora, m["trainable_params"],
                                                         trainable)
        o50, p50 = m["step_time_p50_s"], statistics.median(times)
        omin, pmin = m["step_time_min_s"], min(times)
        print(f"{f'gc={gc} lora={lora}':18} {o50:11.3f} {p50:14.3f} {o50 / p50:12.3f}"
              f" | {omin:9.3f} {pmin:8.3f} {omin / pmin:6.3f} | {m['loss_first']:.3f}, {loss0:.3f}")

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small", choices=sorted(PRESETS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--worker", default=os.path.join(ROOT, "build", "harness-worker"))
    ap.add_argument("--train", action="store_true",
                    help="time fine-tuning steps (gc x lora) instead of generation")
    ap.add_argument("--harness", default=os.path.join(ROOT, "build", "harness"))
    ap.add_argument("--batch", type=int, default=1, help="--train: batch size")
    ap.add_argument("--seq-len", type=int, default=256, help="--train: tokens per sequence")
    ap.add_argument("--steps", type=int, default=8, help="--train: steps per configuration")
    ap.add_argument("--warmup", type=int, default=3, help="--train: untimed first steps")
    ap.add_argument("--gc-reentrant", default="on", choices=("on", "off"),
                    help="--train: torch.utils.checkpoint(use_reentrant=...) for PyTorch")
    ap.add_argument("--attention", default="sdpa", choices=("sdpa", "math"),
                    help="our attention: the fused kernel (default) or the explicit path")
    ap.add_argument("--interleave", action="store_true",
                    help="--train: per configuration, ours (a one-cell spec) then PyTorch, so "
                         "that the two sides of a ratio are measured minutes apart, not tens")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = PRESETS[args.preset]

    if args.train:
        if not 0 <= args.warmup < args.steps:
            ap.error("--warmup must be in [0, --steps)")
        shown = subprocess.run([args.worker, "model", args.preset], check=True,
                               capture_output=True, text=True).stdout
        ours_params = int([l for l in shown.splitlines()
                           if l.startswith("parameters")][0].split()[1])
        n_params = sum(p.numel() for p in TrainingTransformer(cfg, args.seq_len).parameters())
        assert ours_params == n_params, (ours_params, n_params)
        train_main(args, cfg, n_params)
        return

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
                          args.repeats, args.threads, cache, args.attention)
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
