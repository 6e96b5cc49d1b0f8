#!/usr/bin/env python3
"""Writes the golden tiny LLaMA weights (../tiny_llama3.weights.pt, ../tiny_llama2.weights.pt,
Meta names, whose golden logits are ../*.golden.pt) in the layouts real checkpoints come in, so
that the C++ checkpoint reader is tested against files written independently of it:

- tiny_llama3_hf/    Hugging Face, one model.safetensors, tied embeddings (no lm_head.weight)
- tiny_llama2_hf/    Hugging Face, two shards + model.safetensors.index.json, untied lm_head
- tiny_llama3_meta/  Meta, params.json + consolidated.00.pth / consolidated.01.pth (2 ranks)

Conventions followed (from the public descriptions of the formats, not from this repository's
C++ code):
- safetensors: 8-byte little-endian header length, a JSON header
  {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, padded with
  spaces to a multiple of 8, then the raw little-endian data. Written by hand below (the
  safetensors package is not installed here).
- HF names and the rotary permutation of q/k rows, as transformers'
  convert_llama_weights_to_hf.py does: permute(w) = w.view(n_heads, dim1 // n_heads // 2, 2,
  dim2).transpose(1, 2).reshape(dim1, dim2), with n_kv_heads for k.
- Meta's model parallelism: ColumnParallelLinear (wq, wk, wv, w1, w3, output) split along dim 0,
  RowParallelLinear (wo, w2) along dim 1, Llama 3's VocabParallelEmbedding along dim 0 (Llama 2's
  ParallelEmbedding would be dim 1), norms replicated in every rank. Each rank's file is a
  torch.save of a plain dict.

Regenerate (deterministic, < 1 s):  .venv/bin/python tests/golden/checkpoints/make_checkpoints.py
"""

import json
import os
import shutil
import struct

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.dirname(HERE)

ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def write_safetensors(path, tensors, metadata=None):
    """tensors: list of (name, tensor), written in that order."""
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    blobs = []
    offset = 0
    for name, t in tensors:
        t = t.detach().contiguous()
        if t.dtype in (torch.float16, torch.bfloat16):
            data = t.view(torch.int16).numpy().tobytes()
        else:
            data = t.numpy().tobytes()
        header[name] = {"dtype": ST_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for data in blobs:
            f.write(data)


def permute(w, n_heads):
    dim1, dim2 = w.shape
    return w.view(n_heads, dim1 // n_heads // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2)


def unpermute(w, n_heads):
    dim1, dim2 = w.shape
    return w.view(n_heads, 2, dim1 // n_heads // 2, dim2).transpose(1, 2).reshape(dim1, dim2)


def load_case(case):
    meta = torch.load(os.path.join(GOLDEN, case + ".weights.pt"))
    with open(os.path.join(GOLDEN, case + ".json")) as f:
        cfg = json.load(f)
    return meta, cfg


def hf_tensors(meta, cfg):
    """Meta names -> HF names, in HF's usual order."""
    out = [("model.embed_tokens.weight", meta["tok_embeddings.weight"])]
    for i in range(cfg["n_layers"]):
        p, q = f"layers.{i}.", f"model.layers.{i}."
        wq = meta[p + "attention.wq.weight"]
        wk = meta[p + "attention.wk.weight"]
        out += [
            (q + "self_attn.q_proj.weight", permute(wq, cfg["n_heads"])),
            (q + "self_attn.k_proj.weight", permute(wk, cfg["n_kv_heads"])),
            (q + "self_attn.v_proj.weight", meta[p + "attention.wv.weight"]),
            (q + "self_attn.o_proj.weight", meta[p + "attention.wo.weight"]),
            (q + "mlp.gate_proj.weight", meta[p + "feed_forward.w1.weight"]),
            (q + "mlp.down_proj.weight", meta[p + "feed_forward.w2.weight"]),
            (q + "mlp.up_proj.weight", meta[p + "feed_forward.w3.weight"]),
            (q + "input_layernorm.weight", meta[p + "attention_norm.weight"]),
            (q + "post_attention_layernorm.weight", meta[p + "ffn_norm.weight"]),
        ]
        # The permutation is a bijection: check the inverse on the way.
        assert torch.equal(unpermute(permute(wq, cfg["n_heads"]), cfg["n_heads"]), wq)
    out.append(("model.norm.weight", meta["norm.weight"]))
    if not cfg["tie_embeddings"]:
        out.append(("lm_head.weight", meta["output.weight"]))
    return out


def hf_config(cfg):
    rope = None
    if cfg["rope_scaling"] is not None:
        s = cfg["rope_scaling"]
        rope = {"factor": s["factor"], "low_freq_factor": s["low_freq_factor"],
                "high_freq_factor": s["high_freq_factor"],
                "original_max_position_embeddings": s["original_max_pos"], "rope_type": "llama3"}
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": cfg["dim"],
        "initializer_range": 0.02,
        "intermediate_size": cfg["ffn_hidden"],
        "max_position_embeddings": cfg["max_seq_len"],
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": cfg["n_heads"],
        "num_hidden_layers": cfg["n_layers"],
        "num_key_value_heads": cfg["n_kv_heads"],
        "pretraining_tp": 1,
        "rms_norm_eps": cfg["norm_eps"],
        "rope_scaling": rope,
        "rope_theta": cfg["rope_theta"],
        "tie_word_embeddings": cfg["tie_embeddings"],
        "torch_dtype": "float32",
        "transformers_version": "4.45.0",
        "use_cache": True,
        "vocab_size": cfg["vocab_size"],
    }


def fresh_dir(name):
    path = os.path.join(HERE, name)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def write_hf_single(case, name):
    meta, cfg = load_case(case)
    out = fresh_dir(name)
    write_json(os.path.join(out, "config.json"), hf_config(cfg))
    write_safetensors(os.path.join(out, "model.safetensors"), hf_tensors(meta, cfg),
                      {"format": "pt"})


def write_hf_sharded(case, name):
    meta, cfg = load_case(case)
    out = fresh_dir(name)
    write_json(os.path.join(out, "config.json"), hf_config(cfg))
    tensors = hf_tensors(meta, cfg)
    # Shard 1: the embedding and layer 0; shard 2: the rest (as HF splits by size, in order).
    first = [t for t in tensors if t[0] == "model.embed_tokens.weight"
             or t[0].startswith("model.layers.0.")]
    rest = [t for t in tensors if t not in first]
    files = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    weight_map = {}
    for file, part in zip(files, (first, rest)):
        write_safetensors(os.path.join(out, file), part, {"format": "pt"})
        for n, _ in part:
            weight_map[n] = file
    total = sum(t.numel() * t.element_size() for _, t in tensors)
    write_json(os.path.join(out, "model.safetensors.index.json"),
               {"metadata": {"total_size": total}, "weight_map": weight_map})


def meta_split_dim(name):
    if name.endswith(("attention.wq.weight", "attention.wk.weight", "attention.wv.weight",
                      "feed_forward.w1.weight", "feed_forward.w3.weight")) \
            or name == "output.weight":
        return 0  # ColumnParallelLinear
    if name.endswith(("attention.wo.weight", "feed_forward.w2.weight")):
        return 1  # RowParallelLinear
    if name == "tok_embeddings.weight":
        return 0  # Llama 3: VocabParallelEmbedding
    return None  # norms: replicated


def meta_ffn_hidden(dim, multiple_of, ffn_dim_multiplier):
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def write_meta(case, name, ranks, ffn_dim_multiplier, multiple_of):
    meta, cfg = load_case(case)
    assert meta_ffn_hidden(cfg["dim"], multiple_of, ffn_dim_multiplier) == cfg["ffn_hidden"]
    out = fresh_dir(name)
    params = {"dim": cfg["dim"], "n_layers": cfg["n_layers"], "n_heads": cfg["n_heads"],
              "n_kv_heads": cfg["n_kv_heads"], "vocab_size": cfg["vocab_size"],
              "ffn_dim_multiplier": ffn_dim_multiplier, "multiple_of": multiple_of,
              "norm_eps": cfg["norm_eps"], "rope_theta": cfg["rope_theta"],
              "use_scaled_rope": cfg["rope_scaling"] is not None}
    if cfg["rope_scaling"] is not None:
        # Meta's apply_scaling defaults to factor 8; ours is 32 (as Llama 3.2 1B/3B).
        params["rope_scaling_factor"] = cfg["rope_scaling"]["factor"]
    write_json(os.path.join(out, "params.json"), params)
    shards = [dict() for _ in range(ranks)]
    for key, t in meta.items():
        dim = meta_split_dim(key)
        parts = [t] * ranks if dim is None else t.chunk(ranks, dim=dim)
        assert all(p.shape == parts[0].shape for p in parts)
        for r in range(ranks):
            shards[r][key] = parts[r].clone()  # clone: torch.save would keep the whole storage
    for r in range(ranks):
        torch.save(shards[r], os.path.join(out, f"consolidated.{r:02d}.pth"))
    # Merged back the way HF's converter does, the shards give the original weights.
    for key, t in meta.items():
        dim = meta_split_dim(key)
        merged = shards[0][key] if dim is None else torch.cat([s[key] for s in shards], dim=dim)
        assert torch.equal(merged, t), key


def main():
    write_hf_single("tiny_llama3", "tiny_llama3_hf")
    write_hf_sharded("tiny_llama2", "tiny_llama2_hf")
    # 170 -> int(0.94 * 170) = 159 -> 160 (multiple of 32): the golden ffn_hidden.
    write_meta("tiny_llama3", "tiny_llama3_meta", ranks=2, ffn_dim_multiplier=0.94,
               multiple_of=32)


if __name__ == "__main__":
    main()
