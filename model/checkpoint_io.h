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
// Strict (STYLE.md "Loading is strict"): every parameter found exactly once with its shape; a
// missing, extra, duplicate (same key in two files) or mis-shaped tensor is a
// std::invalid_argument naming the key, the file(s) and the shapes. Explicitly ignored:
// Meta's `rope.freqs` and HF's `model.layers.N.self_attn.rotary_emb.inv_freq` (buffers that some
// old files carry). Values are converted to the model's dtype and device while copying.
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "model/llama.h"

namespace hx {

enum class CheckpointFormat { kHuggingFace, kMeta };
const char* format_name(CheckpointFormat format);  // "huggingface", "meta"

// From the directory's contents: config.json + *.safetensors -> HF; params.json +
// consolidated.*.pth -> Meta. Throws std::invalid_argument saying what was found otherwise.
CheckpointFormat detect_checkpoint_format(const std::string& dir);

// HF config.json <-> LlamaConfig. `source` names the file in errors. Rejects what the model
// cannot compute (biases, another activation, a head_dim other than hidden/heads, rope scaling
// other than "llama3").
LlamaConfig config_from_hf_json(const nlohmann::json& j, const std::string& source);
nlohmann::json hf_config_json(const LlamaConfig& config, torch::Dtype dtype);

// Meta params.json -> LlamaConfig. vocab_size <= 0 (Llama 2's files say -1) is left 0 for the
// caller to take from the embedding's shape. use_scaled_rope gives Llama 3.1's scaling with
// factor `rope_scaling_factor` (8 when absent, as in Meta's code; Llama 3.2 1B/3B use 32 but
// their params.json does not say so: add "rope_scaling_factor": 32 to it).
LlamaConfig config_from_meta_params(const nlohmann::json& j, const std::string& source);
// Meta's FeedForward size: int(2 * 4 * dim / 3), times ffn_dim_multiplier, rounded up to a
// multiple of multiple_of.
int64_t meta_ffn_hidden(int64_t dim, int64_t multiple_of, std::optional<double> ffn_dim_multiplier);

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
