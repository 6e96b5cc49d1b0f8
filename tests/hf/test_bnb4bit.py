#!/usr/bin/env python3
"""Our 4-bit quantisation is bitsandbytes': for the same weight, `harness-worker quantize` gives
bitsandbytes.functional.quantize_4bit's packed bytes and absmax (with double quantisation: the
8-bit absmax codes, the second-level scales and the offset) byte for byte, and dequantize_4bit's
weight exactly, for NF4 and FP4, fp32 and bf16 weights, sizes that are not a multiple of the block
(and odd sizes); our quantised linear gives bnb.nn.Linear4bit's output and input gradient.

usage: test_bnb4bit.py HARNESS_WORKER WORK_DIR

Exactness: torch.equal on every tensor (no tolerance): both sides run the same fp32 arithmetic
(docs/bitsandbytes-4bit.md). One thread on both sides: the double quantisation's offset is a
torch mean, whose summation order depends on the thread count for long vectors.
Linear4bit runs in train mode: in eval mode on a CPU with AVX512-BF16, bitsandbytes switches to a
fused bf16 kernel that is not its own reference (docs/bitsandbytes-4bit.md, section 5).
"""
import json
import os
import subprocess
import sys

# bitsandbytes dequantises an odd last dimension through torch.compile (~50 s to compile here);
# eager mode computes the same ops.
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch  # noqa: E402
import bitsandbytes as bnb  # noqa: E402
import bitsandbytes.functional as bnbf  # noqa: E402
from bitsandbytes.backends.default.ops import _dequantize_4bit_compute  # noqa: E402
from bitsandbytes.backends.utils import _get_4bit_code  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

WORKER, WORK = sys.argv[1:3] if len(sys.argv) == 3 else (None, None)
BLOCK = 64
failures = []
notes = []
checks = 0


def ours(name, weight, quant, double_quant, x=None, g=None, compute="fp32"):
    src = os.path.join(WORK, f"{name}.in.safetensors")
    dst = os.path.join(WORK, f"{name}.out.safetensors")
    tensors = {"weight": weight.contiguous()}
    if x is not None:
        tensors["x"] = x.contiguous()
    if g is not None:
        tensors["g"] = g.contiguous()
    save_file(tensors, src)
    proc = subprocess.run([WORKER, "quantize", "--in", src, "--out", dst, "--quant", quant,
                           "--double-quant", "on" if double_quant else "off",
                           "--quant-block", str(BLOCK), "--compute-dtype", compute,
                           "--threads", "1"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"harness-worker quantize: exit {proc.returncode}\n{proc.stderr}")
    return load_file(dst), json.loads(proc.stdout)


def expect_equal(what, mine, theirs):
    global checks
    checks += 1
    if mine.dtype != theirs.dtype or mine.shape != theirs.shape or not torch.equal(mine, theirs):
        diff = ""
        if mine.shape == theirs.shape and mine.is_floating_point():
            diff = f", max |diff| {(mine.float() - theirs.float()).abs().max().item():.3g}"
        elif mine.shape == theirs.shape:
            diff = f", {(mine != theirs).sum().item()} of {mine.numel()} differ"
        failures.append(f"{what}: ours {mine.dtype} {tuple(mine.shape)}, bitsandbytes "
                        f"{theirs.dtype} {tuple(theirs.shape)}{diff}")


def generic_dequantize(packed, state):
    """bitsandbytes' device-independent dequantisation (the one its CPU backend falls back to)."""
    absmax = state.absmax
    if state.nested:
        absmax = bnbf.dequantize_blockwise(state.absmax, state.state2) + state.offset
    return _dequantize_4bit_compute(packed.reshape(-1), absmax, _get_4bit_code(state.quant_type,
                                    packed.device), state.blocksize, state.shape, state.dtype)


def weights():
    gen = torch.Generator().manual_seed(11)
    heavy = torch.randn(48, 96, generator=gen) ** 3 * 0.05  # heavy tails: many tiny, some large
    heavy[5, :] = 0.0  # whole zero blocks (absmax 0)
    return [
        ("normal_64x64", torch.randn(64, 64, generator=gen) * 0.02),
        ("heavy_48x96", heavy),
        ("partial_10x70", torch.randn(10, 70, generator=gen)),  # 700: a partial last block
        ("partial_33x130", torch.randn(33, 130, generator=gen) * 30),
        ("odd_1001", torch.randn(1001, generator=gen)),  # an odd count: one padding nibble
        ("odd_7", torch.randn(7, generator=gen)),  # smaller than a block
        ("many_blocks_300x256", torch.randn(300, 256, generator=gen) * 1e-3),  # 1200 blocks: > 256
    ]


def test_quantize():
    for name, w32 in weights():
        for dtype in (torch.float32, torch.bfloat16):
            w = w32.to(dtype)
            for quant in ("nf4", "fp4"):
                for dq in (False, True):
                    case = f"{name} {str(dtype)[6:]} {quant} dq={'on' if dq else 'off'}"
                    packed, state = bnbf.quantize_4bit(w, blocksize=BLOCK, quant_type=quant,
                                                       compress_statistics=dq)
                    mine, info = ours(f"{name}_{dtype}_{quant}_{dq}", w, quant, dq)
                    expect_equal(f"{case}: packed", mine["packed"], packed)
                    expect_equal(f"{case}: absmax", mine["absmax"], state.absmax)
                    if dq:
                        expect_equal(f"{case}: offset", mine["offset"], state.offset.view(1))
                        expect_equal(f"{case}: absmax2", mine["absmax2"], state.state2.absmax)
                    deq = bnbf.dequantize_4bit(packed, state).reshape(w.shape)
                    if not torch.equal(deq, generic_dequantize(packed, state)):
                        # bitsandbytes' native CPU kernel (cdequantize_blockwise_cpu_*) takes the
                        # weight as rows and gives other values than its own generic path (and
                        # CUDA's flat blocks) when a row is not a whole number of blocks. Ours is
                        # the generic path; LLaMA's rows are whole blocks.
                        notes.append(f"{case}: bitsandbytes' native CPU dequantize_4bit differs "
                                     f"from its generic path (rows of {w.shape[-1]}); compared "
                                     f"with the generic path")
                        deq = generic_dequantize(packed, state)
                    expect_equal(f"{case}: dequantized", mine["dequantized"], deq)
                    bits = info["bits_per_weight"]
                    if name == "many_blocks_300x256":
                        # 4 bits + one fp32 absmax per 64 = 4.5; double quantisation: one byte per
                        # 64 and one fp32 per 64*256 (+ the offset) = 4.127.
                        expected = 4.127 if dq else 4.5
                        if abs(bits - expected) > 0.001:
                            failures.append(f"{case}: {bits:.4f} bits per weight, "
                                            f"expected {expected}")
                        print(f"{case}: {bits:.4f} bits per weight")


def test_linear():
    gen = torch.Generator().manual_seed(5)
    for quant in ("nf4", "fp4"):
        for dq in (False, True):
            for compute in ("fp32", "bf16"):
                case = f"Linear4bit {quant} dq={'on' if dq else 'off'} compute={compute}"
                w = torch.randn(96, 128, generator=gen) * 0.05
                x = torch.randn(2, 5, 128, generator=gen)
                g = torch.randn(2, 5, 96, generator=gen)
                layer = bnb.nn.Linear4bit(128, 96, bias=False, quant_type=quant,
                                          compress_statistics=dq,
                                          compute_dtype=getattr(torch, {"fp32": "float32",
                                                                         "bf16": "bfloat16"}[compute]))
                layer.weight = bnb.nn.Params4bit(w.clone(), requires_grad=False, quant_type=quant,
                                                 compress_statistics=dq, blocksize=BLOCK)
                layer = layer.to("cpu")  # Params4bit quantises on .to()
                layer.train()
                xr = x.clone().requires_grad_(True)
                y = layer(xr)
                y.backward(g)
                mine, _ = ours(f"linear_{quant}_{dq}_{compute}", w, quant, dq, x=x, g=g,
                               compute=compute)
                expect_equal(f"{case}: y", mine["y"], y.detach())
                expect_equal(f"{case}: x grad", mine["x_grad"], xr.grad)


def main():
    if WORKER is None:
        sys.exit(__doc__)
    os.makedirs(WORK, exist_ok=True)
    torch.set_num_threads(1)
    test_quantize()
    test_linear()
    print(f"bitsandbytes {bnb.__version__}, torch {torch.__version__}: {checks} comparisons, "
          f"{len(failures)} failed")
    for n in notes:
        print("note:", n)
    for f in failures:
        print("FAIL", f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
