#!/usr/bin/env python3
"""A QLoRA step's adapter gradients are PEFT-on-bitsandbytes': the same base weights (preset tiny,
random from a seed, `harness-worker export`), quantised NF4 with double quantisation, the same
LoRA adapter (saved by PEFT, lora_B non-zero, loaded by us with --lora-adapter), one forward and
backward on the same tokens give the same loss and the same gradient of every lora_A / lora_B
(`harness-worker lora-grads`), fp32 compute, train mode on both sides.

usage: test_qlora_grads.py HARNESS_WORKER WORK_DIR

Which weights are quantised: v_proj, o_proj, gate_proj, up_proj, down_proj (our wv, wo, w1, w2,
w3, via --quant-targets; bitsandbytes skips q_proj, k_proj and lm_head through
llm_int8_skip_modules), not q_proj / k_proj. Their rows are in HF's rotary layout there and in
Meta's interleaved layout here, and quantising permuted rows does not give permuted blocks
exactly: double quantisation's offset is the mean of every absmax of the weight, summed in
another order (bitsandbytes on a random 128 x 128 weight, tiny's q_proj shape, rows permuted:
the offset differed in its last bit in 1 of 2 seeds, moving 10865 of 16384 dequantised values by
up to 7.5e-9), and where a head's rows span more than one group of 256 absmax values the
second-level groups hold other values (a 576 x 576 weight of 9 heads: codes differ, up to
4.8e-4). Those would be differences of the quantisation, not of the step; every
other linear has the same layout on both sides, and there the dequantised weights are checked
to be bitsandbytes' exactly (torch.equal) before the gradients are compared. The adapters sit on
all seven linears, so gradients flow through quantised and unquantised bases alike.

Tolerance: |loss difference| < 1e-5 and, per adapter tensor, max |gradient difference| <
1e-4 x max |PEFT's gradient| in fp32. The two models compute the same sums in different orders
(HF rotates halves, we rotate interleaved pairs of permuted rows), which test_hf_interop.py
measures as a few fp32 ulps; the measured figures are printed. Negative control: our gradients
without quantisation differ from PEFT-on-bitsandbytes' by far more than the tolerance, so the
comparison sees the 4-bit base.
One thread on both sides (double quantisation's offset is a torch mean whose summation order
depends on the thread count); Linear4bit in train mode (in eval mode on an AVX512-BF16 CPU
bitsandbytes uses a fused bf16 kernel: docs/bitsandbytes-4bit.md). Offline.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch  # noqa: E402
import bitsandbytes as bnb  # noqa: E402
import bitsandbytes.functional as bnbf  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import BitsAndBytesConfig, LlamaForCausalLM  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

WORKER, WORK = sys.argv[1:3] if len(sys.argv) == 3 else (None, None)
SEED = 7
LOSS_TOLERANCE = 1e-5
GRAD_TOLERANCE = 1e-4  # relative to the tensor's max |gradient|
NEGATIVE_FACTOR = 100  # the unquantised base must be this many tolerances away
LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
UNQUANTISED = ["q_proj", "k_proj"]  # rotary row layouts differ: see the docstring
OUR_QUANT_TARGETS = "wv,wo,w1,w2,w3"
# Inside tiny's vocabulary (512); inputs and labels (the shifted next-token loss).
TOKENS = [1, 17, 250, 3, 99, 42, 280, 7, 7, 123, 64, 201, 5, 150, 33, 260, 511, 0, 2, 300, 18,
          77, 404, 9, 9, 9, 128, 256, 31, 64, 500, 4]


def run(*args):
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))}: exit {proc.returncode}\n{proc.stderr}")
    return proc.stdout


def hf_qlora(base_dir):
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                               bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32,
                               llm_int8_skip_modules=UNQUANTISED + ["lm_head"])
    model = LlamaForCausalLM.from_pretrained(base_dir, quantization_config=quant,
                                             dtype=torch.float32, device_map="cpu",
                                             attn_implementation="sdpa")
    kinds = {name.rsplit(".", 1)[-1]: type(m).__name__ for name, m in model.named_modules()
             if name.rsplit(".", 1)[-1] in LINEARS}
    assert all(kinds[n] == "Linear" for n in UNQUANTISED), kinds
    assert all(kinds[n] == "Linear4bit" for n in LINEARS if n not in UNQUANTISED), kinds
    return model


def our_grads(base_dir, adapter, out, quant):
    args = [WORKER, "lora-grads", "--model", base_dir, "--lora-adapter", adapter, "--threads", 1,
            "--prompt-ids", ",".join(map(str, TOKENS)), "--out", out]
    if quant:
        args += ["--quant", "nf4", "--double-quant", "on", "--compute-dtype", "fp32",
                 "--quant-targets", OUR_QUANT_TARGETS]
    info = json.loads(run(*args))
    return load_file(out), info


def main():
    if WORK is None:
        sys.exit(__doc__)
    hf_logging.set_verbosity_error()
    torch.set_num_threads(1)
    os.makedirs(WORK, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="qlora_grads_", dir=WORK)
    start = time.monotonic()
    measured = {}
    try:
        base = os.path.join(tmp, "base")
        run(WORKER, "export", "--model", "tiny", "--seed", SEED, "--out", base)

        peft = get_peft_model(hf_qlora(base), LoraConfig(
            r=8, lora_alpha=16, lora_dropout=0.0, target_modules=LINEARS))
        torch.manual_seed(3)
        with torch.no_grad():
            for n, p in peft.named_parameters():
                if "lora_B" in n:  # PEFT starts B at zero: A's gradient would be zero
                    p.copy_(0.05 * torch.randn_like(p))
        adapter = os.path.join(tmp, "adapter")
        peft.save_pretrained(adapter)

        peft.train()  # bitsandbytes' reference path on the CPU (see the docstring)
        ids = torch.tensor([TOKENS])
        loss = peft(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        theirs = {n.replace(".default.", "."): p.grad for n, p in peft.named_parameters()
                  if p.requires_grad}
        assert len(theirs) == 2 * len(LINEARS) * peft.config.num_hidden_layers, len(theirs)

        ours, info = our_grads(base, adapter, os.path.join(tmp, "ours.safetensors"), quant=True)

        # The 4-bit bases are bitsandbytes' exactly (else the gradients would compare two
        # quantisations).
        dequantized = {k[len("dequantized."):]: v for k, v in ours.items()
                       if k.startswith("dequantized.")}
        expected = {}
        for name, module in peft.named_modules():
            if isinstance(module, bnb.nn.Linear4bit):
                w = module.weight
                hf = name.replace("base_model.model.", "", 1).replace(".base_layer", "")
                expected[hf + ".weight"] = bnbf.dequantize_4bit(w.data, w.quant_state).float()
        assert sorted(dequantized) == sorted(expected), (sorted(dequantized), sorted(expected))
        for name, w in expected.items():
            assert torch.equal(dequantized[name], w), f"{name}: dequantised weights differ"
        measured["4-bit weights equal to bitsandbytes'"] = len(expected)

        loss_diff = abs(ours["loss"].item() - loss.item())
        measured["loss (PEFT)"] = loss.item()
        measured["|loss difference|"] = loss_diff
        assert loss_diff < LOSS_TOLERANCE, f"loss: ours {ours['loss'].item()}, PEFT {loss.item()}"
        grads = {k: v for k, v in ours.items() if ".lora_" in k}
        assert sorted(grads) == sorted(theirs), (sorted(grads)[:4], sorted(theirs)[:4])
        worst_abs = worst_rel = 0.0
        worst_name = None
        for name, g in theirs.items():
            scale = g.abs().max().item()
            assert scale > 0, f"{name}: zero gradient (the comparison would be blind)"
            diff = (grads[name] - g).abs().max().item()
            worst_abs = max(worst_abs, diff)
            if diff / scale >= worst_rel:
                worst_rel, worst_name = diff / scale, name
            assert diff < GRAD_TOLERANCE * scale, \
                f"{name}: max |diff| {diff:.3g} >= {GRAD_TOLERANCE} x {scale:.3g}"
        measured["adapter tensors compared"] = len(theirs)
        measured["max |gradient difference|"] = worst_abs
        measured["max relative (to max |grad|)"] = worst_rel
        measured["  in"] = worst_name

        # Negative control: without the 4-bit base our gradients are far from PEFT-on-bnb's.
        plain, _ = our_grads(base, adapter, os.path.join(tmp, "plain.safetensors"), quant=False)
        off = max((plain[n] - g).abs().max().item() / g.abs().max().item()
                  for n, g in theirs.items())
        measured["unquantised base: max relative"] = off
        assert off > NEGATIVE_FACTOR * GRAD_TOLERANCE, \
            f"an unquantised base still matches ({off:.3g}): the test is blind"
        assert info["trainable_params"] == peft.get_nb_trainable_parameters()[0]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for name, value in measured.items():
        print(f"{name:36s} {value:.3g}" if isinstance(value, float) else f"{name:36s} {value}")
    print(f"ok ({time.monotonic() - start:.1f} s after imports)")


if __name__ == "__main__":
    main()
