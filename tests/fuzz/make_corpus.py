#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/) from the project's own
files: specs, checkpoint configs, the quickstart baseline, and small synthetic files in each
binary format (safetensors, tiktoken and SentencePiece tokenizers, torch.save dicts). Regression
inputs that fuzzing found live beside them (crash-*, named after what they caught) and are kept.

    .venv/bin/python tests/fuzz/make_corpus.py     # torch from the venv for the .pth seeds

Deterministic: a second run writes the same bytes. Every seed is small (< 8 KB), so that the
fuzzer's default maximum input length stays small and executions fast.
"""
import base64
import json
import os
import pickle
import shutil
import struct
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests/fuzz/corpus"


def target(name):
    d = CORPUS / name
    d.mkdir(parents=True, exist_ok=True)
    return d


def write(d, name, data):
    if isinstance(data, str):
        data = data.encode()
    assert len(data) < 8192, (name, len(data))
    (d / name).write_bytes(data)


def copy_files(d, files, prefix=""):
    for f in files:
        if f.stat().st_size < 8192:
            shutil.copyfile(f, d / (prefix + f.name))


# ---- specs ----
def specs():
    d = target("fuzz_spec")
    copy_files(d, sorted((ROOT / "tests/specs").glob("*.yaml")), "specs_")
    copy_files(d, sorted((ROOT / "tests/bad_specs").glob("*.yaml")), "bad_")
    copy_files(d, sorted((ROOT / "experiments").glob("*.yaml")), "experiments_")


# ---- safetensors ----
SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
         "BOOL": 1}


def safetensors(tensors, metadata=None, pad=True):
    header, offset, data = {}, 0, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape in tensors:
        n = SIZES[dtype]
        for s in shape:
            n *= s
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        data += bytes((offset + i) % 251 for i in range(n))
        offset += n
    text = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


def safetensors_seeds():
    d = target("fuzz_safetensors")
    write(d, "one_f32.safetensors", safetensors([("a", "F32", [2, 3])]))
    write(d, "llama_names.safetensors", safetensors(
        [("model.embed_tokens.weight", "BF16", [8, 4]),
         ("model.layers.0.self_attn.q_proj.weight", "F16", [4, 4]),
         ("model.norm.weight", "F32", [4]), ("lm_head.weight", "BF16", [8, 4])],
        metadata={"format": "pt"}))
    write(d, "all_dtypes.safetensors",
          safetensors([(f"t_{k.lower()}", k, [3]) for k in SIZES]))
    write(d, "empty_and_scalar.safetensors",
          safetensors([("empty", "F32", [0, 5]), ("scalar", "I64", [])]))
    write(d, "unpadded.safetensors", safetensors([("x", "I32", [5])], pad=False))
    write(d, "no_tensors.safetensors", safetensors([], metadata={}))
    # The real checkpoint's header, its data cut off (every offset then runs past the end).
    real = (ROOT / "tests/golden/checkpoints/tiny_llama3_hf/model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", real[:8])
    if 8 + n < 8192:
        write(d, "tiny_llama3_header.safetensors", real[:8 + n] + real[8 + n:8 + n + 64])


# ---- config.json / params.json ----
def config_seeds():
    d = target("fuzz_checkpoint_config")
    for f in sorted((ROOT / "tests/golden/checkpoints").glob("*/*.json")):
        if f.name in ("config.json", "params.json"):
            shutil.copyfile(f, d / f"{f.parent.name}_{f.name}")
    hf = json.loads((ROOT / "tests/golden/checkpoints/tiny_llama3_hf/config.json").read_text())
    v5 = dict(hf)
    v5.pop("rope_scaling", None)
    v5["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                             "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 8192}
    write(d, "transformers5_config.json", json.dumps(v5, indent=1))
    write(d, "meta_llama31_params.json", json.dumps(
        {"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256,
         "ffn_dim_multiplier": 1.3, "multiple_of": 1024, "norm_eps": 1e-05,
         "rope_theta": 500000.0, "use_scaled_rope": True}))
    write(d, "meta_llama2_params.json", json.dumps(
        {"dim": 4096, "multiple_of": 256, "n_heads": 32, "n_layers": 32, "norm_eps": 1e-05,
         "vocab_size": -1}))


# ---- tokenizers ----
def tiktoken_seeds():
    d = target("fuzz_tokenizer_tiktoken")
    tokens = [bytes([b]) for b in range(256)]
    for merge in [b"ab", b"bc", b"cd", b"aa", b"xyz", b" w", b"he", b"ll", b"hell", b"hello",
                  b"12", b"23", b"45", b"  ", b"\xc3\xa9", b" the", b"in", b"er", b"\n\n"]:
        tokens.append(merge)
    lines = [f"{base64.b64encode(t).decode()} {rank}" for rank, t in enumerate(tokens)]
    write(d, "bytes_and_merges.model", "\n".join(lines) + "\n")
    write(d, "crlf_shuffled.model", "\r\n".join(reversed(lines)) + "\r\n")


class Proto:
    """A protobuf writer, enough for a SentencePiece ModelProto (as tests/core/test_tokenizer.cpp)."""

    def __init__(self):
        self.b = b""

    def varint(self, v):
        while True:
            byte = v & 0x7F
            v >>= 7
            if v:
                self.b += bytes([byte | 0x80])
            else:
                self.b += bytes([byte])
                return

    def tag(self, field, wire):
        self.varint(field << 3 | wire)

    def num(self, field, v):
        self.tag(field, 0)
        self.varint(v)
        return self

    def bytes_(self, field, s):
        if isinstance(s, str):
            s = s.encode()
        self.tag(field, 2)
        self.varint(len(s))
        self.b += s
        return self

    def f32(self, field, f):
        self.tag(field, 5)
        self.b += struct.pack("<f", f)
        return self


def sentencepiece_model(model_type, byte_fallback, normal):
    model = Proto()

    def piece(s, score, kind):
        model.bytes_(1, Proto().bytes_(1, s).f32(2, score).num(3, kind).b)

    piece("<unk>", 0, 2)
    piece("<s>", 0, 3)
    piece("</s>", 0, 3)
    if byte_fallback:
        for b in range(256):
            piece(f"<0x{b:02X}>", 0, 6)
    for i, s in enumerate(normal):
        piece(s, -float(i + 1), 1)
    size = 3 + (256 if byte_fallback else 0) + len(normal)
    trainer = Proto().num(3, model_type).num(4, size).num(35, 1 if byte_fallback else 0)
    model.bytes_(2, trainer.b)
    model.bytes_(3, Proto().bytes_(1, "identity").num(3, 1).num(4, 0).num(5, 1).b)
    return model.b


def sentencepiece_seeds():
    d = target("fuzz_tokenizer_sentencepiece")
    normal = ["\u2581a", "ab", "\u2581ab", "\u2581", "a", "b", "\u2581the", "he", "l", "o"]
    write(d, "bpe_byte_fallback.model", sentencepiece_model(2, True, normal))  # BPE
    write(d, "unigram.model", sentencepiece_model(1, False, normal + ["c", "e", "t", "h"]))


# ---- result.json ----
def result_seeds():
    d = target("fuzz_result_json")
    env = {"host": "h", "cpu": "AMD EPYC", "gpu_name": "", "gpu_mem_mb": 0, "driver": "",
           "cuda": "", "libtorch": "2.11.0", "compiler": "GNU 12.2.0", "build_type": "Release",
           "git_commit": "84c86ef", "threads": 2}
    write(d, "finetune_ok.json", json.dumps({
        "status": "ok", "error": "",
        "metrics": [{"name": "peak_mem_mb", "value": 12.5, "unit": "MB"},
                    {"name": "step_time_s", "value": 0.0123}, {"name": "loss_last", "value": None}],
        "steps": [{"step": 0, "seconds": 0.12, "loss": 5.6, "tokens": 128, "mem_mb": 40.1},
                  {"step": 1, "seconds": 0.11, "loss": None, "tokens": 128, "mem_mb": None}],
        "env": env,
        "texts": [{"name": "before/0", "text": "hello", "ids": [1, 2, 3]}]}, indent=1))
    write(d, "generate_ok.json", json.dumps({
        "status": "ok", "metrics": [{"name": "prefill_s", "value": 0.004},
                                    {"name": "decode_s", "value": 0.02}],
        "steps": [{"step": 0, "seconds": 0.001}], "env": env}))
    write(d, "oom.json", json.dumps({"status": "oom", "error": "CUDA out of memory",
                                     "metrics": [], "env": None}))
    write(d, "error.json", json.dumps({"status": "error", "error": "bad data", "texts": []}))


# ---- baseline CSV ----
def baseline_seeds():
    d = target("fuzz_baseline_csv")
    lines = (ROOT / "results/baselines/quickstart-cpu.csv").read_text().splitlines(keepends=True)
    write(d, "quickstart_head.csv", "".join(lines[:12]))
    header = lines[0]
    runs = {}
    for line in lines[1:]:
        runs.setdefault(line.split(",", 1)[0], []).append(line)
    # One line of each run: every configuration of the quickstart meets its stored run.
    write(d, "quickstart_each_run.csv", header + "".join(v[0] for v in runs.values()))
    write(d, "no_metrics.csv", header + "0123456789abcdef,0,x,generate,{},crashed,,,,,\r\n")


# ---- Alpaca data ----
def alpaca_seeds():
    d = target("fuzz_alpaca_data")
    records = json.loads((ROOT / "experiments/data/synthetic_alpaca.json").read_text())
    write(d, "synthetic_head.json", json.dumps(records[:6], indent=1))
    write(d, "input_and_unicode.json", json.dumps(
        [{"instruction": "Translate", "input": "caf\u00e9 \U0001F600 <|eot_id|>", "output": "x"},
         {"instruction": "", "output": ""}], ensure_ascii=False))


# ---- torch.save dicts (Meta .pth) ----
def pth_seeds():
    try:
        import torch
    except ImportError:
        print("make_corpus: no torch here: fuzz_torch_pth seeds left as they are", file=sys.stderr)
        return
    d = target("fuzz_torch_pth")
    g = torch.Generator().manual_seed(0)
    dicts = {
        "fp32.pth": {"tok_embeddings.weight": torch.randn(4, 2, generator=g),
                     "norm.weight": torch.ones(2)},
        "bf16.pth": {"layers.0.attention.wq.weight": torch.randn(2, 2, generator=g).bfloat16(),
                     "rope.freqs": torch.arange(3, dtype=torch.float32)},
        "int_and_bool.pth": {"a": torch.arange(5), "b": torch.tensor([True, False])},
        "view.pth": {"v": torch.arange(12, dtype=torch.float32).view(3, 4)[:, 1]},
    }
    pickles = target("fuzz_torch_pickle")
    for name, tensors in dicts.items():
        path = d / name
        torch.save(tensors, path)
        data = path.read_bytes()
        assert len(data) < 8192, (name, len(data))
        with zipfile.ZipFile(path) as z:
            pkl = [n for n in z.namelist() if n.endswith("/data.pkl")][0]
            write(pickles, name.replace(".pth", ".pkl"), z.read(pkl))
    # Other protocols' opcodes (FRAME, MEMOIZE, SHORT_BINUNICODE, BINBYTES8...), as Python writes
    # them for plain values.
    value = {"a": [1, -2, 3.5, None, True], "b": ("x" * 300, b"\x00\x01", 2**70), "c": {1, 2}}
    for protocol in (0, 2, 4, 5):
        write(pickles, f"python_protocol{protocol}.pkl", pickle.dumps(value, protocol=protocol))


def main():
    specs()
    safetensors_seeds()
    config_seeds()
    tiktoken_seeds()
    sentencepiece_seeds()
    result_seeds()
    baseline_seeds()
    alpaca_seeds()
    pth_seeds()
    for d in sorted(CORPUS.iterdir()):
        files = list(d.iterdir())
        print(f"{d.name}: {len(files)} files, {sum(f.stat().st_size for f in files)} bytes")


if __name__ == "__main__":
    main()
