#!/usr/bin/env python3
"""Our harness against what users run today: Hugging Face transformers + PEFT.

Same machine, same torch (the project venv's: the libtorch our binaries link), same thread
count, same shapes (`harness-worker model PRESET --json` gives the HF config), one invocation:

    .venv/bin/python tests/bench/peers.py [--preset small|tiny|llama3.2-1b] [--threads 1]
        [--device cpu|cuda] [--optimizers adamw,sgd] [--mp off,bf16]
        [--techniques full,lora,gc,gc+lora[,qlora,gc+qlora]]
        [--skip GLOB]... [--batch 1] [--seq-len 256] [--steps 6] [--warmup 2]
        [--gen-batches 1,8] [--kv-cache on,off] [--prompt-len 128] [--new-tokens 32]
        [--gen-repeats 3] [--gen-repeats-nocache N] [--gen-dtype fp32|bf16] [--no-train]
        [--no-generate] [--wait-load 1.5] [--wait-max 1500] [--profile]
        [--out reports/peers-cpu.md]

Fine-tuning: one step (forward with the shifted next-token cross entropy, backward,
optimizer.step(), gradients released with zero_grad(set_to_none=True)) for every cell of
optimizer x mixed precision x technique (full, LoRA r 16 alpha 32 dropout 0.05 on q/v, gradient
checkpointing, both; on request QLoRA: the same LoRA over NF4 base weights with double
quantisation, computing in the cell's precision, with or without checkpointing), on the same
random tokens shape; medians of the measured steps after the same warm-up. `--skip` drops
cells by glob on their name `OPTIMIZER/PRECISION/TECHNIQUE` (`--skip 'adamw/bf16/*' --skip
'adamw/*/gc*'`).
  - Ours: a one-cell spec (`workload: finetune`, `data: {format: random, seq_len}`) per cell,
    run by `build/harness run SPEC --db TMP --no-report`; metrics read from its SQLite database.
    QLoRA: `quant: nf4, double_quant: on, compute_dtype: fp32|bf16` (quant_targets' default:
    every linear of the blocks).
  - HF: `LlamaForCausalLM(LlamaConfig(...))` with attn_implementation="sdpa", `peft`'s
    get_peft_model(LoraConfig(...)), activation (gradient) checkpointing as transformers enables
    it, `torch.autocast(device, bfloat16)` for bf16; each cell in its own fresh Python process.
    QLoRA: transformers quantises only in from_pretrained, so a first process saves the random
    model (save_pretrained, fp32) to a temporary directory, and the measured process loads it
    with BitsAndBytesConfig(load_in_4bit, nf4, double quant, compute dtype = the cell's
    precision) on the CPU, dtype float32 for what stays unquantised (as ours), then
    get_peft_model as for LoRA. Not prepare_model_for_kbit_training: on this fp32 load its cast
    to fp32 is a no-op and it turns gradient checkpointing on by default, which would make the
    qlora cell a gc+qlora one; gc+qlora enables checkpointing as the gc cells do.
  The two sides of each cell run back to back (ours, then HF), so that their ratio is taken
  seconds apart on this noisy machine.

Generation: greedy, batch sizes x KV cache on/off, the same prompt length and new tokens.
Prefill = time to the first new token; decode = the remaining new tokens, as tokens/s over the
batch. Ours: a one-cell `workload: generate` spec (`--gen-repeats` runs, medians); HF:
`model.generate(do_sample=False, use_cache=..., max_new_tokens=N, min_new_tokens=N)` in a fresh
process, after the same kind of untimed warm-up (a 2-token generation), the first token's time
taken by a streamer; medians of `--gen-repeats` generations.

Memory, measured alike on both sides: the peak resident set of the process that does the work
(getrusage ru_maxrss): our harness-worker's `peak_rss_mb` (its value from the database; where
the worker binary predates that metric, os.wait4's rusage of `harness run`, which covers the
worker it waited for) and the HF subprocess's own RUSAGE_SELF. Beside it: our counting
allocator's tensor-byte peak (`peak_mem_mb`) and categories; HF's parameter, gradient and
optimizer-state tensor bytes counted from the tensors (PyTorch keeps no allocator statistics on
CPU, so HF's tensor-byte peak is not available there); on CUDA, torch.cuda.max_memory_allocated.

Prints one Markdown report (command, machine, load, tables, targets); `--out` also writes it.
"""
import argparse
import fnmatch
import json
import os
import platform
import shlex
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
RESULT_MARK = "PEERS_RESULT "

LORA = dict(r=16, alpha=32, dropout=0.05, ours_targets=["wq", "wv"],
            hf_targets=["q_proj", "v_proj"])
LR = 1e-5
TECHNIQUES = {  # name -> (gc, lora, quant)
    "full": ("off", "off", "off"), "lora": ("off", "on", "off"), "gc": ("on", "off", "off"),
    "gc+lora": ("on", "on", "off"), "qlora": ("off", "on", "nf4"), "gc+qlora": ("on", "on", "nf4")}
DEFAULT_TECHNIQUES = ["full", "lora", "gc", "gc+lora"]  # QLoRA cells on request (--techniques)
PRECISION = {"off": "fp32", "bf16": "bf16"}

# Targets of issue 14 (reported, not asserted).
TARGET_STEP_RATIO = 0.8      # ours s/step <= 0.8 x HF's, every cell
TARGET_QLORA_STEP_RATIO = 1.0  # issue 16: ours QLoRA s/step <= HF + PEFT + bitsandbytes'
TARGET_DECODE_SPEEDUP = 1.5  # ours cached decode tokens/s >= 1.5 x HF's at batch 1
MB = 1024.0 * 1024.0


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def load_avg():
    return os.getloadavg()


def fmt_load(la):
    return "%.2f %.2f %.2f" % la


def ru_maxrss_mb(usage):
    return usage.ru_maxrss / 1024.0  # Linux: kilobytes


# =============================================================================================
# The HF side: one configuration in a fresh process (`peers.py --hf-child JSON`)
# =============================================================================================

def hf_child(job):
    import resource
    import warnings
    warnings.filterwarnings("ignore")
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    if job["kind"] == "train" and job["lora"] == "on":
        import peft  # noqa: F401  (imported before the baseline, as a user's script does)
    torch.set_num_threads(job["threads"])
    device = torch.device(job["device"])
    cuda = device.type == "cuda"
    out = {"rss_after_import_mb": ru_maxrss_mb(resource.getrusage(resource.RUSAGE_SELF)),
           "torch_threads": torch.get_num_threads()}

    torch.manual_seed(job["seed"])
    config = LlamaConfig(**job["hf_config"])
    config._attn_implementation = "sdpa"
    if job["kind"] == "save":
        model = LlamaForCausalLM(config)
        model.save_pretrained(job["model_dir"])
        print(RESULT_MARK + json.dumps(
            {"base_params": sum(p.numel() for p in model.parameters())}), flush=True)
        return
    if job.get("quant", "off") != "off":
        from transformers import BitsAndBytesConfig
        quant = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=job["quant"],
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if job["mp"] == "bf16" else torch.float32)
        model = LlamaForCausalLM.from_pretrained(
            job["model_dir"], quantization_config=quant, dtype=torch.float32,
            device_map=job["device"], attn_implementation="sdpa")
        out["base_params"] = job["base_params"]  # numel of packed 4-bit weights is halved
    else:
        model = LlamaForCausalLM(config)  # initializer_range 0.02, norms 1: as ours' weights
        out["base_params"] = sum(p.numel() for p in model.parameters())
    out["attn_implementation"] = model.config._attn_implementation
    gen = torch.Generator().manual_seed(job["seed"])

    def sync():
        if cuda:
            torch.cuda.synchronize()

    if job["kind"] == "train":
        out.update(hf_train(job, torch, model, device, gen, sync))
    else:
        out.update(hf_generate(job, torch, model, device, gen, sync))
    if cuda:
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / MB
    out["peak_rss_mb"] = ru_maxrss_mb(resource.getrusage(resource.RUSAGE_SELF))
    print(RESULT_MARK + json.dumps(out), flush=True)


def hf_train(job, torch, model, device, gen, sync):
    if job["gc"] == "on":
        # transformers 5 renamed gradient_checkpointing_enable (now a deprecated alias).
        enable = getattr(model, "activation_checkpointing_enable", None) or \
            model.gradient_checkpointing_enable
        enable()
    if job["lora"] == "on":
        from peft import LoraConfig, get_peft_model
        if job["gc"] == "on" and not getattr(model, "_require_grads_hooks", None):
            # Frozen embeddings: checkpointed blocks must still back-propagate.
            model.enable_input_require_grads()
        model = get_peft_model(model, LoraConfig(
            r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
            target_modules=LORA["hf_targets"], task_type="CAUSAL_LM"))
    if job.get("quant", "off") == "off":
        model.to(device)  # a quantised model is placed by from_pretrained's device_map
    model.train()  # also bitsandbytes' Linear4bit: its CPU eval path is a fused bf16 kernel
    params = [p for p in model.parameters() if p.requires_grad]
    if job["optimizer"] == "sgd":
        optimizer = torch.optim.SGD(params, lr=LR)
    else:
        optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)  # ours: weight_decay 0
    batches = [torch.randint(3, job["vocab"], (job["batch"], job["seq_len"]), generator=gen)
               for _ in range(job["steps"])]
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    def step(tokens, stats=None):
        tokens = tokens.to(device)
        before = torch.cuda.memory_allocated() if cuda else 0
        if job["mp"] == "bf16":
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = model(input_ids=tokens, labels=tokens, use_cache=False).loss
        else:
            loss = model(input_ids=tokens, labels=tokens, use_cache=False).loss
        if stats is not None and cuda:
            stats["act"] = max(stats.get("act", 0), torch.cuda.memory_allocated() - before)
        value = loss.item()
        loss.backward()
        if stats is not None:
            stats["grads"] = max(stats.get("grads", 0),
                                 sum(p.grad.nbytes for p in params if p.grad is not None))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return value

    times, losses, stats = [], [], {}
    for tokens in batches:
        sync()
        t0 = time.perf_counter()
        losses.append(step(tokens, stats))
        sync()
        times.append(time.perf_counter() - t0)
    measured = times[job["warmup"]:]
    opt_bytes = sum(t.nbytes for s in optimizer.state.values() for t in s.values()
                    if torch.is_tensor(t) and t.dim() > 0)
    out = {"step_times": measured, "step_time_p50_s": statistics.median(measured),
           "step_time_min_s": min(measured), "loss_first": losses[0],
           "trainable_params": sum(p.numel() for p in params),
           "mem_params_mb": sum(p.nbytes for p in model.parameters()) / MB,
           "mem_grads_mb": stats.get("grads", 0) / MB, "mem_optimizer_mb": opt_bytes / MB}
    if cuda:
        out["mem_activations_mb"] = stats.get("act", 0) / MB
    if job.get("profile"):
        from torch.profiler import ProfilerActivity, profile
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=acts) as prof:
            sync()
            step(batches[0])
            sync()
        key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        out["profile"] = prof.key_averages().table(sort_by=key, row_limit=15)
    return out


def hf_generate(job, torch, model, device, gen, sync):
    from transformers.generation.streamers import BaseStreamer

    class Stamps(BaseStreamer):
        """Times of generate's put() calls: the prompt, then each new token (its .cpu() synced)."""

        def __init__(self):
            self.times = []

        def put(self, value):
            self.times.append(time.perf_counter())

        def end(self):
            pass

    if job["dtype"] == "bf16":
        model.to(torch.bfloat16)
    model.to(device)
    model.eval()
    model.generation_config.eos_token_id = None  # random weights: never stop early
    model.generation_config.pad_token_id = 0
    prompt = torch.randint(3, job["vocab"], (job["batch"], job["prompt_len"]),
                           generator=gen).to(device)
    mask = torch.ones_like(prompt)
    n = job["new_tokens"]

    def generate(tokens, streamer=None):
        return model.generate(prompt, attention_mask=mask, do_sample=False,
                              use_cache=job["kv_cache"] == "on", max_new_tokens=tokens,
                              min_new_tokens=tokens, streamer=streamer)

    generate(min(n, 2))  # untimed warm-up, as ours
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    prefills, decodes = [], []
    for _ in range(job["repeats"]):
        stamps = Stamps()
        sync()
        t0 = time.perf_counter()
        ids = generate(n, stamps)
        sync()
        assert ids.shape == (job["batch"], job["prompt_len"] + n), ids.shape
        assert len(stamps.times) == n + 1, len(stamps.times)
        prefills.append(stamps.times[1] - t0)
        decodes.append(stamps.times[-1] - stamps.times[1])
    decode_s = statistics.median(decodes)
    return {"prefill_s": statistics.median(prefills), "decode_s": decode_s,
            "decode_tokens_per_s": job["batch"] * (n - 1) / decode_s if n > 1 else float("nan"),
            "mem_params_mb": sum(p.nbytes for p in model.parameters()) / MB}


# =============================================================================================
# Our side: a one-cell spec through `harness run`
# =============================================================================================

def run_harness(harness, spec, db, cwd):
    """`harness run SPEC --db DB --no-report`; its exit code, stderr and the peak RSS of it and
    the workers it waited for (os.wait4's rusage: the fallback for workers without peak_rss_mb)."""
    err_path = os.path.join(cwd, "harness.stderr")
    with open(err_path, "w") as err:
        proc = subprocess.Popen([harness, "run", spec, "--db", db, "--no-report"], cwd=cwd,
                                stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    with open(err_path) as f:
        return proc.returncode, f.read(), ru_maxrss_mb(usage)


def ours_run(args, name, workload, fixed, repeats, data=None):
    """One cell; {metric: median over the repeats}, plus `_wait4_rss_mb`."""
    def yaml_value(v):
        return "[" + ", ".join(map(str, v)) + "]" if isinstance(v, list) else str(v)
    fixed = dict(fixed, threads=args.threads)
    # The first fixed key as a one-value matrix axis (a spec has a matrix).
    axis, value = next(iter(fixed.items()))
    rest = ", ".join(f"{k}: {yaml_value(v)}" for k, v in fixed.items() if k != axis)
    with tempfile.TemporaryDirectory(prefix="peers_") as tmp:
        spec = os.path.join(tmp, "spec.yaml")
        with open(spec, "w") as f:
            f.write(f"name: {name}\n"
                    f"model: {{preset: {args.preset}, weights: random, seed: 0}}\n"
                    f"device: {args.device}\n"
                    f"workload: {workload}\n"
                    + (f"data: {data}\n" if data else "") +
                    f"fixed: {{{rest}}}\n"
                    f"matrix: {{{axis}: [{yaml_value(value)}]}}\n"
                    f"repeats: {repeats}\n"
                    f"timeout_s: 7200\n")
        db = os.path.join(tmp, "peers.db")
        code, stderr, wait4_rss = run_harness(args.harness, spec, db, tmp)
        if code != 0:
            sys.exit(f"harness run failed ({code}) on\n{open(spec).read()}\n{stderr}")
        con = sqlite3.connect(db)
        rows = list(con.execute("SELECT run_id, status, stderr_tail FROM runs"))
        per_metric = {}
        for run_id, status, tail in rows:
            if status != "ok":
                sys.exit(f"{name}: run {run_id} {status}\n{tail}")
            for metric, v in con.execute("SELECT name, value FROM metrics WHERE run_id = ?",
                                         (run_id,)):
                per_metric.setdefault(metric, []).append(v)
        con.close()
    if len(rows) != repeats:
        sys.exit(f"{name}: {len(rows)} runs in the database, expected {repeats}")
    out = {k: statistics.median(v) for k, v in per_metric.items()}
    out["_wait4_rss_mb"] = wait4_rss
    return out


def hf_run(args, job):
    job = dict(job, threads=args.threads, device=args.device, seed=0,
               hf_config=args.hf_config, vocab=args.hf_config["vocab_size"])
    if job.get("quant", "off") == "off":
        return hf_child_run(job)
    # transformers quantises in from_pretrained only: the random model is saved by a process
    # of its own, so that building it in fp32 counts in neither side's measured peak.
    with tempfile.TemporaryDirectory(prefix="peers_hf_") as tmp:
        saved = hf_child_run(dict(job, kind="save", model_dir=tmp))
        return hf_child_run(dict(job, model_dir=tmp, base_params=saved["base_params"]))


def hf_child_run(job):
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--hf-child",
                           json.dumps(job)], capture_output=True, text=True,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"))
    lines = [l for l in proc.stdout.splitlines() if l.startswith(RESULT_MARK)]
    if proc.returncode != 0 or not lines:
        sys.exit(f"HF subprocess failed ({proc.returncode}) on {job['kind']} "
                 f"{ {k: v for k, v in job.items() if k != 'hf_config'} }:\n"
                 f"{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len(RESULT_MARK):])


# =============================================================================================
# The report
# =============================================================================================

def machine_lines(args):
    cpu, family, model = "unknown", "?", "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "model name" and cpu == "unknown":
                    cpu = value
                elif key == "cpu family" and family == "?":
                    family = value
                elif key == "model" and model == "?":
                    model = value
    except OSError:
        pass
    cpu += f" (family {family}, model {model})"
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        have = [x for x in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
                if f" {x}" in text]
        flags = ", ".join(have) if have else "no AVX2"
    except OSError:
        pass
    import torch
    import transformers
    import peft
    worker = subprocess.run([args.worker, "--version"], capture_output=True,
                            text=True).stdout.strip()
    lines = [f"- CPU: {cpu} ({os.cpu_count()} logical cores; {flags})",
             f"- threads: {args.threads} on both sides (ours: the spec's `threads`; HF: "
             f"torch.set_num_threads)",
             f"- torch {torch.__version__}, transformers {transformers.__version__}, peft "
             f"{peft.__version__}, Python {platform.python_version()}",
             f"- ours: {worker}"]
    if args.device == "cuda":
        lines.append(f"- GPU: {torch.cuda.get_device_name(0)}")
    return lines


def fnum(x, digits=3):
    if x is None or (isinstance(x, float) and x != x):
        return "n/a"
    return f"{x:.{digits}f}"


def train_table(args, rows):
    cuda = args.device == "cuda"
    head = ["config", "ours s/step", "HF s/step", "ours/HF", "min ours/HF", "ours peak RSS MB",
            "HF peak RSS MB", "RSS ours/HF"]
    if cuda:
        head += ["ours peak_mem_mb", "HF max_memory_allocated MB", "ours/HF"]
    else:
        head += ["ours peak_mem_mb (tensors)"]
    head += ["ours params/grads/optim/act MB", "HF params/grads/optim" +
             ("/act" if cuda else "") + " MB", "loss0 ours/HF", "load"]
    out = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        o, h = r["ours"], r["hf"]
        rss = ours_rss(o)
        cells = [r["name"], fnum(o["step_time_p50_s"]), fnum(h["step_time_p50_s"]),
                 fnum(o["step_time_p50_s"] / h["step_time_p50_s"]),
                 fnum(o["step_time_min_s"] / h["step_time_min_s"]),
                 fnum(rss, 0), fnum(h["peak_rss_mb"], 0), fnum(rss / h["peak_rss_mb"], 2)]
        if cuda:
            cells += [fnum(o["peak_mem_mb"], 0), fnum(h["cuda_max_allocated_mb"], 0),
                      fnum(o["peak_mem_mb"] / h["cuda_max_allocated_mb"], 2)]
        else:
            cells += [fnum(o["peak_mem_mb"], 0)]
        cells += ["/".join(fnum(o.get(k), 0) for k in ("mem_params_mb", "mem_grads_mb",
                                                      "mem_optimizer_mb", "mem_activations_mb")),
                  "/".join(fnum(h.get(k), 0) for k in ("mem_params_mb", "mem_grads_mb",
                                                      "mem_optimizer_mb") +
                           (("mem_activations_mb",) if cuda else ())),
                  f"{o['loss_first']:.3f}/{h['loss_first']:.3f}", "%.2f" % r["load"]]
        out.append("| " + " | ".join(cells) + " |")
    return out


def gen_table(args, rows):
    cuda = args.device == "cuda"
    head = ["batch", "KV cache", "ours prefill s", "HF prefill s", "prefill ours/HF",
            "ours decode tok/s", "HF decode tok/s", "decode speed-up", "ours peak RSS MB",
            "HF peak RSS MB", "RSS ours/HF"]
    head += ["ours peak_mem_mb", "HF max_memory_allocated MB"] if cuda else \
        ["ours peak_mem_mb (tensors)"]
    head += ["ours params/KV cache MB", "load"]
    out = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        o, h = r["ours"], r["hf"]
        rss = ours_rss(o)
        cells = [str(r["batch"]), r["kv_cache"], fnum(o["prefill_s"]), fnum(h["prefill_s"]),
                 fnum(o["prefill_s"] / h["prefill_s"]), fnum(o["decode_tokens_per_s"], 1),
                 fnum(h["decode_tokens_per_s"], 1),
                 fnum(o["decode_tokens_per_s"] / h["decode_tokens_per_s"], 2) + "x",
                 fnum(rss, 0), fnum(h["peak_rss_mb"], 0), fnum(rss / h["peak_rss_mb"], 2),
                 fnum(o["peak_mem_mb"], 0)]
        if cuda:
            cells += [fnum(h["cuda_max_allocated_mb"], 0)]
        cells += [f"{fnum(o.get('mem_params_mb'), 0)}/{fnum(o.get('mem_kv_cache_mb'), 1)}",
                  "%.2f" % r["load"]]
        out.append("| " + " | ".join(cells) + " |")
    return out


def ours_rss(o):
    return o.get("peak_rss_mb", o["_wait4_rss_mb"])


def targets(args, train_rows, gen_rows):
    lines = []

    def verdict(ok):
        return "**met**" if ok else "**missed**"
    if train_rows:
        ratios = [(r["ours"]["step_time_p50_s"] / r["hf"]["step_time_p50_s"], r["name"])
                  for r in train_rows]
        met = [x for x in ratios if x[0] <= TARGET_STEP_RATIO]
        worst = max(ratios)
        lines.append(f"- Fine-tuning step at most {TARGET_STEP_RATIO}x HF's in every cell: "
                     f"{verdict(len(met) == len(ratios))} ({len(met)} of {len(ratios)} cells; "
                     f"best {min(ratios)[0]:.3f} ({min(ratios)[1]}), worst {worst[0]:.3f} "
                     f"({worst[1]}))")
    qlora = [(r["ours"]["step_time_p50_s"] / r["hf"]["step_time_p50_s"],
              ours_rss(r["ours"]) / r["hf"]["peak_rss_mb"], r["name"])
             for r in train_rows if r["name"].endswith("qlora")]
    if qlora:
        slow = [q for q in qlora if q[0] > TARGET_QLORA_STEP_RATIO]
        big = [q for q in qlora if q[1] > 1.0]
        lines.append(f"- Issue 16: QLoRA step at most {TARGET_QLORA_STEP_RATIO}x HF's: "
                     f"{verdict(not slow)} (ours/HF "
                     + ", ".join(f"{q[0]:.3f} {q[2]}" for q in qlora) + ")")
        lines.append("- Issue 16: QLoRA peak RSS at most HF's: " + verdict(not big) +
                     " (ours/HF " + ", ".join(f"{q[1]:.2f} {q[2]}" for q in qlora) + ")")
    cached1 = [r for r in gen_rows if r["batch"] == 1 and r["kv_cache"] == "on"]
    if cached1:
        r = cached1[0]
        s = r["ours"]["decode_tokens_per_s"] / r["hf"]["decode_tokens_per_s"]
        lines.append(f"- Cached decode at batch 1 at least {TARGET_DECODE_SPEEDUP}x HF's "
                     f"tokens/s: {verdict(s >= TARGET_DECODE_SPEEDUP)} ({s:.2f}x)")
    else:
        lines.append("- Cached decode at batch 1: not measured (needs --gen-batches 1 and "
                     "--kv-cache on)")
    mem = [(ours_rss(r["ours"]) / r["hf"]["peak_rss_mb"], r.get("name") or
            f"generate batch {r['batch']} cache {r['kv_cache']}")
           for r in train_rows + gen_rows]
    if mem:
        over = [m for m in mem if m[0] > 1.0]
        lines.append(f"- Peak memory (peak RSS) at most HF's: {verdict(not over)} "
                     f"({len(mem) - len(over)} of {len(mem)} configurations; ours/HF from "
                     f"{min(mem)[0]:.2f} to {max(mem)[0]:.2f}"
                     + (f"; above 1: {', '.join(n for _, n in over)}" if over else "") + ")")
        if args.device == "cuda":
            dev = [(r["ours"]["peak_mem_mb"] / r["hf"]["cuda_max_allocated_mb"],
                    r.get("name") or f"generate batch {r['batch']} cache {r['kv_cache']}")
                   for r in train_rows + gen_rows]
            over = [m for m in dev if m[0] > 1.0]
            lines.append(f"- Peak device memory (ours peak_mem_mb vs HF max_memory_allocated) "
                         f"at most HF's: {verdict(not over)} (ours/HF from {min(dev)[0]:.2f} "
                         f"to {max(dev)[0]:.2f})")
    return lines


# =============================================================================================
# Main
# =============================================================================================

def wait_for_load(threshold, max_wait):
    """Polls the 1-minute load average every 30 s until below `threshold` (at most `max_wait`
    seconds); a sentence for the report."""
    start = time.monotonic()
    while True:
        la = load_avg()[0]
        waited = time.monotonic() - start
        if la < threshold:
            return (f"waited {waited:.0f} s for the 1-minute load average to fall below "
                    f"{threshold} (it was {la:.2f})")
        if waited >= max_wait:
            return (f"the 1-minute load average did not fall below {threshold} in "
                    f"{waited:.0f} s (it was {la:.2f}): measured anyway, under load")
        log(f"load {la:.2f} >= {threshold}: waiting ({waited:.0f} s of {max_wait} s)")
        time.sleep(30)


def csv_list(choices=None, kind=str):
    def parse(text):
        items = [kind(x) for x in text.split(",") if x]
        if choices:
            bad = [x for x in items if x not in choices]
            if bad:
                raise argparse.ArgumentTypeError(f"{bad}: expected some of {sorted(choices)}")
        return items
    return parse


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--hf-child":
        hf_child(json.loads(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="small", choices=("tiny", "small", "llama3.2-1b"))
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--optimizers", type=csv_list({"adamw", "sgd"}), default=["adamw", "sgd"])
    ap.add_argument("--mp", type=csv_list({"off", "bf16"}), default=["off", "bf16"])
    ap.add_argument("--techniques", type=csv_list(set(TECHNIQUES)), default=DEFAULT_TECHNIQUES)
    ap.add_argument("--skip", action="append", default=[],
                    help="drop fine-tuning cells whose OPTIMIZER/PRECISION/TECHNIQUE name "
                         "matches this glob (e.g. 'adamw/bf16/*'); repeatable")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--gen-batches", type=csv_list(kind=int), default=[1, 8])
    ap.add_argument("--kv-cache", type=csv_list({"on", "off"}), default=["on", "off"])
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--gen-repeats", type=int, default=3,
                    help="timed generations per side and configuration (ours: that many "
                         "worker runs); medians")
    ap.add_argument("--gen-repeats-nocache", type=int, default=None,
                    help="the same for generation without the KV cache (default: --gen-repeats; "
                         "one uncached generation of N tokens is already N forwards)")
    ap.add_argument("--gen-dtype", choices=("fp32", "bf16"), default=None,
                    help="weights' dtype for generation (default fp32 on CPU, bf16 on CUDA)")
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--no-generate", action="store_true")
    ap.add_argument("--wait-load", type=float, default=None,
                    help="first wait (polling every 30 s) until the 1-minute load average is "
                         "below this")
    ap.add_argument("--wait-max", type=float, default=1500, help="...for at most this many s")
    ap.add_argument("--profile", action="store_true",
                    help="also profile one HF fine-tuning step per cell (torch.profiler) and "
                         "print the top operators")
    ap.add_argument("--harness", default=os.path.join(ROOT, "build", "harness"))
    ap.add_argument("--worker", default=os.path.join(ROOT, "build", "harness-worker"))
    ap.add_argument("--out", help="also write the Markdown report to this file")
    args = ap.parse_args()
    if not 0 <= args.warmup < args.steps:
        ap.error("--warmup must be in [0, --steps)")
    if args.new_tokens < 2:
        ap.error("--new-tokens must be at least 2 (prefill plus decoded tokens)")
    if args.gen_repeats_nocache is None:
        args.gen_repeats_nocache = args.gen_repeats
    if args.gen_dtype is None:
        args.gen_dtype = "bf16" if args.device == "cuda" else "fp32"
    command = ".venv/bin/python tests/bench/peers.py " + " ".join(map(shlex.quote,
                                                                      sys.argv[1:]))

    shown = json.loads(subprocess.run([args.worker, "model", args.preset, "--json"], check=True,
                                      capture_output=True, text=True).stdout)
    args.hf_config = shown["hf_config"]

    cells = [(opt, mp, tech) for opt in args.optimizers for mp in args.mp
             for tech in args.techniques]
    cells = [c for c in cells
             if not any(fnmatch.fnmatch(f"{c[0]}/{PRECISION[c[1]]}/{c[2]}", g)
                        for g in args.skip)]
    if args.no_train:
        cells = []
    gens = [] if args.no_generate else [(b, c) for b in args.gen_batches for c in args.kv_cache]
    if not cells and not gens:
        ap.error("nothing to measure")

    waited = wait_for_load(args.wait_load, args.wait_max) if args.wait_load else None
    load_before = load_avg()
    log(f"load before: {fmt_load(load_before)}; {len(cells)} fine-tuning cells, "
        f"{len(gens)} generation configurations")
    start = time.monotonic()
    warnings = []

    train_rows = []
    for opt, mp, tech in cells:
        name = f"{opt}/{PRECISION[mp]}/{tech}"
        gc, lora, quant = TECHNIQUES[tech]
        la = load_avg()[0]
        log(f"[{time.monotonic() - start:5.0f} s] {name}: ours (load {la:.2f})")
        fixed = dict(gc=gc, lora=lora, mp=mp, optimizer=opt, batch_size=args.batch, lr=LR,
                     max_steps=args.steps, warmup_steps=args.warmup, lora_r=LORA["r"],
                     lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                     lora_targets=LORA["ours_targets"])
        if quant != "off":
            fixed.update(quant=quant, double_quant="on", compute_dtype=PRECISION[mp])
        ours = ours_run(args, "peers_train", "finetune", fixed, 1,
                        data=f"{{format: random, seq_len: {args.seq_len}}}")
        log(f"[{time.monotonic() - start:5.0f} s] {name}: HF")
        hf = hf_run(args, dict(kind="train", gc=gc, lora=lora, quant=quant, mp=mp,
                               optimizer=opt, batch=args.batch, seq_len=args.seq_len,
                               steps=args.steps, warmup=args.warmup, profile=args.profile))
        if hf["base_params"] != shown["parameters"]:
            warnings.append(f"{name}: HF has {hf['base_params']} parameters, ours "
                            f"{shown['parameters']}")
        if int(ours["trainable_params"]) != hf["trainable_params"]:
            warnings.append(f"{name}: trainable parameters differ: ours "
                            f"{int(ours['trainable_params'])}, HF {hf['trainable_params']}")
        if "peak_rss_mb" not in ours:
            warnings.append("our harness-worker does not write peak_rss_mb (the binary is older "
                            "than that metric): ours' peak RSS is os.wait4's rusage of "
                            "`harness run` (its own and the worker's peak)")
        row = dict(name=name, ours=ours, hf=hf, load=la)
        log(f"    ours {ours['step_time_p50_s']:.3f} s/step, HF {hf['step_time_p50_s']:.3f}: "
            f"{ours['step_time_p50_s'] / hf['step_time_p50_s']:.3f}; RSS {ours_rss(ours):.0f} "
            f"vs {hf['peak_rss_mb']:.0f} MB")
        if "profile" in hf:
            log(f"HF profile, {name}:\n{hf['profile']}")
        train_rows.append(row)

    gen_rows = []
    for batch, cache in gens:
        la = load_avg()[0]
        label = f"generate batch {batch} cache {cache}"
        repeats = args.gen_repeats if cache == "on" else args.gen_repeats_nocache
        log(f"[{time.monotonic() - start:5.0f} s] {label}: ours (load {la:.2f})")
        ours = ours_run(args, "peers_generate", "generate",
                        dict(kv_cache=cache, batch_size=batch, prompt_len=args.prompt_len,
                             new_tokens=args.new_tokens, dtype=args.gen_dtype),
                        repeats)
        log(f"[{time.monotonic() - start:5.0f} s] {label}: HF")
        hf = hf_run(args, dict(kind="generate", batch=batch, kv_cache=cache,
                               prompt_len=args.prompt_len, new_tokens=args.new_tokens,
                               repeats=repeats, dtype=args.gen_dtype))
        if "decode_tokens_per_s" not in ours:
            sys.exit(f"{label}: our worker wrote no decode_tokens_per_s")
        log(f"    prefill ours {ours['prefill_s']:.3f} s, HF {hf['prefill_s']:.3f}; decode "
            f"ours {ours['decode_tokens_per_s']:.1f} tok/s, HF {hf['decode_tokens_per_s']:.1f}")
        gen_rows.append(dict(batch=batch, kv_cache=cache, ours=ours, hf=hf, load=la))
    load_after = load_avg()
    elapsed = time.monotonic() - start

    md = [f"# Our harness vs Hugging Face transformers + PEFT ({args.device.upper()}, "
          f"preset {args.preset})", "",
          "Command (from the checkout's root):", "", "```bash", command, "```", "",
          f"Measured {time.strftime('%Y-%m-%d %H:%M %Z')}, {elapsed:.0f} s in all.", ""]
    md += machine_lines(args)
    md.append(f"- load average (1, 5, 15 min): {fmt_load(load_before)} before, "
              f"{fmt_load(load_after)} after" + (f"; {waited}" if waited else ""))
    hf_import = [r["hf"]["rss_after_import_mb"] for r in train_rows + gen_rows]
    md += ["", "Peak memory is measured alike on both sides: the peak resident set (getrusage "
           "ru_maxrss) of the process that does the work: our `harness-worker` (one per "
           "configuration; `peak_rss_mb` in the database) and a fresh Python subprocess per HF "
           "configuration (interpreter, torch, transformers and peft imports included: "
           f"{min(hf_import):.0f}-{max(hf_import):.0f} MB of HF's peak before its model is "
           "built). Our counting allocator's tensor-byte peak (`peak_mem_mb`) is shown beside "
           "it with its categories; "
           + ("HF's device peak is torch.cuda.max_memory_allocated (the same notion as ours "
              "on CUDA)." if args.device == "cuda" else
              "PyTorch keeps no allocator statistics on CPU, so HF's tensor-byte peak is not "
              "available there; its parameter, gradient and optimizer-state bytes, counted "
              "from the tensors, are shown instead (no activation figure)."), ""]
    if train_rows:
        md += [f"## Fine-tuning step (batch {args.batch} x {args.seq_len} random tokens, "
               f"{args.steps} steps of which {args.warmup} warm-up, medians of "
               f"{args.steps - args.warmup}; ours, then HF, per row)", "",
               f"Config = optimizer (lr {LR}, no weight decay) / precision (bf16: autocast) / "
               f"technique (LoRA r {LORA['r']}, alpha {LORA['alpha']}, dropout "
               f"{LORA['dropout']}, q/v projections; gc: every block checkpointed; qlora: "
               "that LoRA over NF4 base weights of every linear of the blocks, double "
               "quantisation, compute dtype = the precision). "
               "ours/HF below 1: ours is faster or smaller. `min ours/HF`: the ratio of the "
               "fastest steps (less sensitive to contention). `load`: the 1-minute load "
               "average when the row started.", ""]
        md += train_table(args, train_rows)
        md.append("")
    if gen_rows:
        md += [f"## Generation (greedy, prompt {args.prompt_len} random tokens, "
               f"{args.new_tokens} new tokens, weights {args.gen_dtype}, medians of "
               f"{args.gen_repeats}"
               + (f" with the cache, of {args.gen_repeats_nocache} without"
                  if args.gen_repeats_nocache != args.gen_repeats else "")
               + "; ours, then HF, per row)", "",
               "Prefill: the time to the first new token (HF: from the generate() call to "
               "the streamer's first token). Decode tok/s: batch x (new tokens - 1) over the "
               "time from the first to the last new token. Speed-up above 1: ours is faster.",
               ""]
        md += gen_table(args, gen_rows)
        md.append("")
    md += ["## Targets (issues 14 and 16; reported, not asserted)", ""]
    md += targets(args, train_rows, gen_rows)
    if warnings:
        md += ["", "## Warnings", ""] + [f"- {w}" for w in dict.fromkeys(warnings)]
    text = "\n".join(md) + "\n"
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text)
        log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
