#pragma once
// Pretrained checkpoints in the two layouts people download, read strictly, and written in HF's.
//
// - Hugging Face: config.json + model.safetensors, or shards listed in
//   model.safetensors.index.json. Names go through one rename table (hf_names()); the rows of
//   q_proj/k_proj are permuted back from HF's rotary layout (rotate-half) to Meta's interleaved
//   pairs, which is what our attention computes.
// - Meta: params.json + consolidated.NN.pth (one file per model-parallel rank), merged along the
//   dimension each layer is split on: wq/wk/wv/w1/w3/output along dim 0 (column-parallel),
//   wo/w2 along dim 1 (row-parallel), tok_embeddings along dim 1 in Llama 2 (ParallelEmbedding)
//   and dim 0 in Llama 3 (VocabParallelEmbedding; told apart by the shapes), norms replicated.
//
// Strict (docs/architecture.md, "Loading is strict"): every parameter found exactly once with its
// shape; a missing, extra, duplicate (same key in two files) or mis-shaped tensor is a
// std::invalid_argument naming the key, the file(s) and the shapes. Explicitly ignored:
// Meta's `rope.freqs` and HF's `model.layers.N.self_attn.rotary_emb.inv_freq` (buffers that some
// old files carry). Values are converted to the model's dtype and device while copying.
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "model/checkpoint_config.h"
#include "model/llama.h"

namespace hx {

enum class CheckpointFormat { kHuggingFace, kMeta };
const char* format_name(CheckpointFormat format);  // "huggingface", "meta"

// From the directory's contents: config.json + *.safetensors -> HF; params.json +
// consolidated.*.pth -> Meta. Throws std::invalid_argument saying what was found otherwise.
CheckpointFormat detect_checkpoint_format(const std::string& dir);

// LlamaConfig -> HF config.json (the reverse of config_from_hf_json, model/checkpoint_config.h,
// where params.json is read too).
nlohmann::json hf_config_json(const LlamaConfig& config, torch::Dtype dtype);

// The one rename table, HF -> ours; "{L}" stands for a layer index.
struct NamePair {
  std::string_view hf, ours;
};
const std::vector<NamePair>& hf_names();
// "model.layers.3.self_attn.q_proj.weight" -> "layers.3.attention.wq.weight"; nullopt when the
// name is not in the table.
std::optional<std::string> our_name_from_hf(const std::string& hf);
std::optional<std::string> hf_name_from_ours(const std::string& ours);

// HF's rotary permutation of the rows of wq / wk (convert_llama_weights_to_hf.py's `permute`:
// w.view(n_heads, rows / n_heads / 2, 2, cols).transpose(1, 2).reshape(rows, cols)) and its
// inverse; w: (n_heads * head_dim, cols), n_heads = n_kv_heads for wk.
torch::Tensor permute_to_hf(const torch::Tensor& w, int64_t n_heads);
torch::Tensor permute_from_hf(const torch::Tensor& w, int64_t n_heads);

// The config of a checkpoint directory. HF: config.json alone. Meta: params.json and the shards,
// which alone tell whether `output` is tied and, when params.json says vocab_size -1, the
// vocabulary.
LlamaConfig read_checkpoint_config(const std::string& dir);

// Copies a checkpoint directory into `model` (strictly); the model's shapes must be the
// checkpoint's (else the first mis-shaped tensor is named).
void load_checkpoint_weights(Transformer& model, const std::string& dir);

// A checkpoint directory (format detected) -> its config and weights; otherwise a preset name ->
// random weights drawn from `seed` (init_random).
Transformer load_model(const std::string& path_or_preset, const ModelOptions& options,
                       uint64_t seed = 0);

// A PEFT LoRA adapter directory as PeftModel.save_pretrained writes it: adapter_config.json
// (peft_type LORA; r, lora_alpha, lora_dropout; target_modules by HF module name with PEFT's
// matching: q_proj -> wq, ..., down_proj -> w2, full names, a regex, or "all-linear") +
// adapter_model.safetensors (base_model.model.<HF name of the linear>.lora_{A,B}.weight). Read
// strictly: what the model cannot compute (DoRA, rsLoRA, rank/alpha patterns, biases,
// modules_to_save, other targets in some blocks) is refused, naming the file and the key.
struct PeftAdapterConfig {
  LoraOptions options;
  std::vector<std::string> targets;  // ours, in lora_target_names() order: wq, wv, ...
};
// `n_layers`: the blocks the targets are resolved in (every one must get the same targets).
PeftAdapterConfig read_peft_adapter_config(const std::string& dir, int64_t n_layers);
// Adds the adapter to `model` (apply_lora: base weights frozen) and copies its weights in; the
// rows of q_proj's / k_proj's lora_B are permuted from HF's rotary layout as the base weights
// are. Every adapter tensor must be in the file once with its shape, and nothing else.
void load_peft_adapter(Transformer& model, const std::string& dir);

struct HfExportOptions {
  std::optional<torch::Dtype> dtype;  // of the written tensors; the model's when unset
  bool merge_lora = false;            // fold adapters into the base weights first (in place)
};
// Writes `model` as an HF directory: config.json + model.safetensors (lm_head left out when
// tied, q/k rows permuted to HF's layout, __metadata__ {"format": "pt"}). A model with LoRA
// adapters is refused unless merge_lora. `dir` is created; it may hold only a previous export.
void save_hf_checkpoint(Transformer& model, const std::string& dir,
                        const HfExportOptions& options = {});

}  // namespace hx
