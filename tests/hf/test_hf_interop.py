#!/usr/bin/env python3
"""Our model is Hugging Face's model: the same weights give the same logits and greedy tokens in
`harness` and in transformers' LlamaForCausalLM, and the same LoRA adapter in PEFT.

usage: test_hf_interop.py HARNESS HARNESS_WORKER WORK_DIR

1. `harness export` (presets tiny and small, random weights from a seed) loads in
   LlamaForCausalLM.from_pretrained with no missing or unexpected keys, gives our logits
   (`harness logits`) and, over 32 new tokens, our greedy tokens (`harness-worker generate`).
2. Directories written by transformers' save_pretrained (GQA untied, tied with llama3 rope
   scaling) load in the harness and give HF's logits; exported again by us, HF loads them back.
3. A PEFT adapter (q_proj/v_proj = our wq/wv, and all seven linears) saved by PEFT loads in the
   harness (`--lora-adapter`) and gives PEFT's logits and greedy tokens; LoRA's trainable
   parameter count equals PEFT's, on tiny, small and llama3.2-1b shapes (meta device).

Tolerance: max |logits difference| < 1e-4 in fp32. The two implementations compute the same sums
in different orders (HF rotates halves, we rotate interleaved pairs of permuted rows; different
matmul shapes for GQA), so they agree to a few fp32 ulps of the activations (logits of order 1:
~1e-6); 1e-4 leaves room for that and still fails on any layout error, which moves logits by
1e-2 or more (negative controls check that the comparisons can fail: q/k rows left unpermuted,
rope scaling dropped, the adapter left out).
Offline: everything comes from directories written here (HF_HUB_OFFLINE=1 under ctest).
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as hf_logging

TOLERANCE = 1e-4
NEW_TOKENS = 32
SEED = 7
# A fixed prompt inside every vocabulary used here (tiny: 512, the HF configs: 300).
PROMPT = [1, 17, 250, 3, 99, 42, 280, 7, 7, 123, 64, 201, 5, 150, 33, 260]

HARNESS, WORKER, WORK = sys.argv[1:4] if len(sys.argv) == 4 else (None, None, None)
measured = {}  # name -> max abs diff, printed at the end


def run(*args):
    """Runs a binary; its stdout, or the failure with its stderr."""
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))}: exit {proc.returncode}\n{proc.stderr}")
    return proc.stdout


def our_logits(tmp, model, seed=None, adapter=None, prompt=PROMPT):
    out = os.path.join(tmp, "logits.safetensors")
    args = [HARNESS, "logits", "--model", model, "--threads", 1, "--out", out,
            "--prompt-ids", ",".join(map(str, prompt))]
    if seed is not None:
        args += ["--seed", seed]
    if adapter is not None:
        args += ["--lora-adapter", adapter]
    info = json.loads(run(*args))
    logits = load_file(out)["logits"]
    assert logits.shape == (len(prompt), info["vocab"]), logits.shape
    return logits, info


def our_greedy(model_dir, adapter=None, prompt=PROMPT):
    args = [WORKER, "generate", "--model", model_dir, "--threads", 1, "--json",
            "--prompt-ids", ",".join(map(str, prompt)), "--max-new-tokens", NEW_TOKENS]
    if adapter is not None:
        args += ["--lora-adapter", adapter]
    return json.loads(run(*args))["new_ids"]


def hf_load(model_dir):
    model, info = LlamaForCausalLM.from_pretrained(model_dir, output_loading_info=True,
                                                   dtype=torch.float32)
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        assert not info.get(kind), f"{model_dir}: {kind}: {info[kind]}"
    return model.eval()


@torch.no_grad()
def hf_logits(model, prompt=PROMPT):
    return model(torch.tensor([prompt])).logits[0].float()


@torch.no_grad()
def hf_greedy(model, prompt=PROMPT):
    ids = torch.tensor([prompt])
    model.generation_config.eos_token_id = None  # LlamaConfig's default 2 would stop early
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         max_new_tokens=NEW_TOKENS, pad_token_id=0)
    assert out.shape[1] == len(prompt) + NEW_TOKENS, out.shape
    return out[0, len(prompt):].tolist()


def expect_close(name, ours, theirs):
    diff = (ours - theirs).abs().max().item()
    measured[name] = diff
    assert diff < TOLERANCE, f"{name}: max abs diff {diff:.3g} >= {TOLERANCE}"
    # Random weights must give logits worth comparing, not near-constant ones.
    assert theirs.std().item() > 0.05, f"{name}: logits std {theirs.std().item():.3g}"


def expect_same_tokens(name, ours, theirs, diverse=True):
    assert ours == theirs, f"{name}: greedy tokens differ\nours {ours}\nHF   {theirs}"
    measured[f"{name}: distinct greedy tokens"] = len(set(ours))
    # The presets' N(0, 0.02) weights make a near-constant greedy output (one token repeated):
    # a weak comparison, so the directories written by transformers (std 0.1) must not.
    assert not diverse or len(set(ours)) >= 3, f"{name}: few distinct tokens: {ours}"


def hf_rows_to_ours(w, heads):
    """HF's rotary row layout of q_proj/k_proj back to Meta's (our) interleaved pairs."""
    rows, cols = w.shape
    return w.reshape(heads, 2, rows // heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def test_export(tmp, preset):
    """1. harness export -> transformers: same logits, same greedy tokens."""
    out = os.path.join(tmp, f"export_{preset}")
    run(HARNESS, "export", "--model", preset, "--seed", SEED, "--out", out)
    hf = hf_load(out)
    theirs = hf_logits(hf)
    ours, _ = our_logits(tmp, preset, seed=SEED)  # the preset in memory, not the export
    expect_close(f"export {preset}", ours, theirs)
    expect_same_tokens(f"export {preset}", our_greedy(out), hf_greedy(hf), diverse=False)
    if preset == "tiny":
        # Negative control: without the rotary row permutation the logits are far apart.
        attn, config = hf.model.layers[0].self_attn, hf.config
        with torch.no_grad():
            q, k = attn.q_proj.weight, attn.k_proj.weight
            q.copy_(hf_rows_to_ours(q, config.num_attention_heads))
            k.copy_(hf_rows_to_ours(k, config.num_key_value_heads))
        off = (ours - hf_logits(hf)).abs().max().item()
        assert off > 100 * TOLERANCE, f"unpermuted q/k still match ({off:.3g}): the test is blind"
    return out


def hf_random_model(config, seed):
    """HF's own init (N(0, initializer_range)), with the norms moved off 1 so that their weights
    matter too."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
    return model


# initializer_range 0.1 (HF's default 0.02, like our presets, gives a one-token greedy output).
# transformers 5 writes theta and scaling only inside "rope_parameters": theta 500000 and llama3
# scaling fail a loader that reads the old top-level rope_theta / rope_scaling alone.
HF_CONFIGS = {
    "gqa_untied": dict(initializer_range=0.1, vocab_size=300, hidden_size=64, intermediate_size=160,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       rms_norm_eps=1e-5, tie_word_embeddings=False, max_position_embeddings=256,
                       rope_parameters={"rope_type": "default", "rope_theta": 500000.0}),
    # original_max_position_embeddings 64: the scaling changes frequencies that matter within the
    # prompt (with Meta's 8192 it would not show in 16 positions).
    "tied_llama3": dict(initializer_range=0.1, vocab_size=300, hidden_size=64,
                        intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                        tie_word_embeddings=True, max_position_embeddings=256,
                        rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0,
                                         "factor": 8.0, "low_freq_factor": 1.0,
                                         "high_freq_factor": 4.0,
                                         "original_max_position_embeddings": 64}),
}


def test_from_hf(tmp, name, kwargs):
    """2. transformers' save_pretrained -> harness: same logits; our re-export loads in HF."""
    hf = hf_random_model(LlamaConfig(**kwargs), seed=11)
    src = os.path.join(tmp, f"hf_{name}")
    hf.save_pretrained(src)
    theirs = hf_logits(hf)
    ours, info = our_logits(tmp, src)
    expect_close(f"HF {name} -> harness", ours, theirs)
    assert info["parameters"] == hf.num_parameters(), (info["parameters"], hf.num_parameters())
    expect_same_tokens(f"HF {name} -> harness", our_greedy(src), hf_greedy(hf))
    again = os.path.join(tmp, f"hf_{name}_exported")
    run(HARNESS, "export", "--model", src, "--out", again)
    expect_close(f"HF {name} -> harness -> HF", hf_logits(hf_load(again)), theirs)
    if kwargs["rope_parameters"]["rope_type"] == "llama3":
        # Negative control: the same weights without the scaling give other logits.
        plain = dict(kwargs, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
        unscaled = LlamaForCausalLM(LlamaConfig(**plain)).eval()
        unscaled.load_state_dict(hf.state_dict())
        off = (ours - hf_logits(unscaled)).abs().max().item()
        assert off > 100 * TOLERANCE, f"rope scaling does not show ({off:.3g}): the test is blind"
    return src


def test_peft(tmp, base_dir, name, targets):
    """3. A PEFT adapter on a GQA model: same logits and greedy tokens in the harness."""
    torch.manual_seed(3)
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=targets)
    base = hf_load(base_dir)
    without = hf_logits(base)
    peft = get_peft_model(base, config)
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:  # PEFT starts B at zero: the adapter would change nothing
                p.copy_(0.1 * torch.randn_like(p))
    peft.eval()  # dropout off, as in `harness logits`
    adapter = os.path.join(tmp, f"adapter_{name}")
    peft.save_pretrained(adapter)
    theirs = hf_logits(peft)
    ours, info = our_logits(tmp, base_dir, adapter=adapter)
    expect_close(f"PEFT {name}", ours, theirs)
    assert info["trainable_params"] == peft.get_nb_trainable_parameters()[0]
    assert (without - ours).abs().max().item() > 100 * TOLERANCE, "the adapter changes nothing"
    expect_same_tokens(f"PEFT {name}", our_greedy(base_dir, adapter=adapter), hf_greedy(peft))


def test_trainable_counts(preset, r, targets, ours_targets):
    """3. LoRA's trainable parameters: ours (apply_lora on the meta device, as a fine-tuning
    run counts trainable_params) == PEFT's get_nb_trainable_parameters(), on the preset's shapes."""
    ours = json.loads(run(HARNESS, "model", preset, "--json", "--lora-r", r,
                          "--lora-targets", ",".join(ours_targets)))
    config = LlamaConfig(**ours["hf_config"])
    with torch.device("meta"):
        hf = LlamaForCausalLM(config)
    peft = get_peft_model(hf, LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets))
    trainable, total = peft.get_nb_trainable_parameters()
    assert ours["lora"]["trainable_params"] == trainable, (preset, ours["lora"], trainable)
    assert ours["parameters"] + trainable == total, (preset, ours["parameters"], total)
    measured[f"trainable {preset} r{r} {'+'.join(ours_targets)}"] = trainable


def main():
    if WORK is None:
        sys.exit(__doc__)
    hf_logging.set_verbosity_error()  # progress bars and rope-length warnings
    os.makedirs(WORK, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="hf_interop_", dir=WORK)
    start = time.monotonic()
    try:
        shutil.rmtree(test_export(tmp, "tiny"))
        dirs = {name: test_from_hf(tmp, name, kwargs) for name, kwargs in HF_CONFIGS.items()}
        test_peft(tmp, dirs["gqa_untied"], "q_proj,v_proj", ["q_proj", "v_proj"])
        test_peft(tmp, dirs["gqa_untied"], "all-linear", "all-linear")
        for preset in ("tiny", "small", "llama3.2-1b"):
            test_trainable_counts(preset, 16, ["q_proj", "v_proj"], ["wq", "wv"])
        test_export(tmp, "small")  # ~100M parameters: last, once
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for name, value in measured.items():
        print(f"{name:42s} {value:.3g}" if isinstance(value, float) else f"{name:42s} {value}")
    print(f"ok ({time.monotonic() - start:.1f} s after imports)")


if __name__ == "__main__":
    main()
