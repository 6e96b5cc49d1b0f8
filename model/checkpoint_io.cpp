#include "model/checkpoint_io.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <stdexcept>

#include "model/lora.h"
#include "model/safetensors.h"
#include "model/weights.h"

namespace hx {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

constexpr const char* kHfConfig = "config.json";
constexpr const char* kHfSingle = "model.safetensors";
constexpr const char* kHfIndex = "model.safetensors.index.json";
constexpr const char* kMetaParams = "params.json";

// Tensors some files carry that are not weights (rotary tables); skipped by name, explicitly.
constexpr std::string_view kIgnoredHf[] = {"model.layers.{L}.self_attn.rotary_emb.inv_freq"};
constexpr std::string_view kIgnoredMeta[] = {"rope.freqs"};

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// `name` against a pattern with one "{L}" (a layer index without leading zeros): the pattern
// `to` with the same index, or nullopt.
std::optional<std::string> translate(const std::string& name, std::string_view from,
                                     std::string_view to) {
  const auto at = from.find("{L}");
  if (at == std::string_view::npos) {
    if (name != from) return std::nullopt;
    return std::string(to);
  }
  const std::string_view prefix = from.substr(0, at), suffix = from.substr(at + 3);
  if (name.size() <= prefix.size() + suffix.size() || name.compare(0, prefix.size(), prefix) != 0 ||
      !ends_with(name, suffix))
    return std::nullopt;
  const std::string layer = name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
  if (!std::all_of(layer.begin(), layer.end(), [](char ch) { return ch >= '0' && ch <= '9'; }) ||
      (layer.size() > 1 && layer[0] == '0'))
    return std::nullopt;
  std::string out(to);
  out.replace(out.find("{L}"), 3, layer);
  return out;
}

template <size_t N>
bool ignored(const std::string& name, const std::string_view (&patterns)[N]) {
  for (auto pattern : patterns)
    if (translate(name, pattern, pattern)) return true;
  return false;
}

Json read_json_file(const fs::path& path) {
  std::ifstream in(path);
  if (!in) throw std::invalid_argument(path.string() + ": cannot open");
  try {
    return Json::parse(in);
  } catch (const Json::exception& e) {
    throw std::invalid_argument(path.string() + ": bad JSON: " + e.what());
  }
}

using checked_json::field;
using checked_json::field_or;
using checked_json::object_of;

std::string checkpoint_name(const fs::path& dir) {
  auto p = dir;
  if (!p.has_filename()) p = p.parent_path();  // "dir/"
  return p.filename().string();
}

bool floating(const torch::Tensor& t) { return torch::isFloatingType(t.scalar_type()); }

// ---- what a directory holds, read but not yet copied ----

constexpr int64_t kReplicated = -1;  // every piece is the whole tensor (norms of Meta shards)
constexpr int64_t kByShape = -2;     // tok_embeddings: dim 0 or 1, told by the shapes

struct Piece {
  torch::Tensor tensor;
  std::string file;  // path
  std::string key;   // the name in that file
};

struct Source {
  std::vector<Piece> pieces;        // one (HF, a single Meta file) or one per Meta shard
  int64_t split_dim = kReplicated;  // Meta shards: the dim they are concatenated along
  int64_t hf_heads = 0;             // HF q/k: heads whose rows are un-permuted (0: none)
};

struct Checkpoint {
  CheckpointFormat format = CheckpointFormat::kHuggingFace;
  std::string dir;
  LlamaConfig config;
  std::map<std::string, Source> sources;  // by our name
};

// How a key reads in errors: HF's name with ours in brackets, or Meta's (= ours).
std::string key_text(const Piece& piece, const std::string& ours) {
  return piece.key == ours ? ours : piece.key + " (" + ours + ")";
}

void set_hf_heads(Checkpoint& ck) {
  for (auto& [name, source] : ck.sources) {
    if (ends_with(name, ".attention.wq.weight")) source.hf_heads = ck.config.n_heads;
    if (ends_with(name, ".attention.wk.weight")) source.hf_heads = ck.config.n_kv_heads;
  }
}

std::vector<fs::path> hf_files(const fs::path& dir, const Json* index,
                               const std::string& index_path) {
  std::vector<fs::path> files;
  if (index != nullptr) {
    if (!index->contains("weight_map") || !index->at("weight_map").is_object())
      throw std::invalid_argument(index_path + ": missing \"weight_map\" (an object)");
    std::set<std::string> names;
    for (const auto& [key, file] : index->at("weight_map").items()) {
      if (!file.is_string())
        throw std::invalid_argument(index_path + ": weight_map." + key + ": expected a file name");
      names.insert(file.get<std::string>());
    }
    for (const auto& name : names) {
      if (name.find('/') != std::string::npos || !fs::is_regular_file(dir / name))
        throw std::invalid_argument(index_path + ": lists " + name + ", which is not a file in " +
                                    dir.string());
      files.push_back(dir / name);
    }
    return files;
  }
  if (fs::is_regular_file(dir / kHfSingle)) return {dir / kHfSingle};
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file() && e.path().extension() == ".safetensors") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  if (files.empty()) throw std::invalid_argument(dir.string() + ": no *.safetensors file");
  return files;
}

Checkpoint read_hf(const fs::path& dir, bool with_tensors) {
  Checkpoint ck;
  ck.format = CheckpointFormat::kHuggingFace;
  ck.dir = dir.string();
  const std::string config_path = (dir / kHfConfig).string();
  ck.config = config_from_hf_json(read_json_file(config_path), config_path);
  ck.config.name = checkpoint_name(dir);
  validate_config(ck.config);
  if (!with_tensors) return ck;

  const std::string index_path = (dir / kHfIndex).string();
  std::optional<Json> index;
  if (fs::is_regular_file(index_path)) index = object_of(read_json_file(index_path), index_path);
  const auto files = hf_files(dir, index ? &*index : nullptr, index_path);

  // Every key of every file, each once (a key in two files is an error naming both).
  std::map<std::string, Piece> pieces;
  for (const auto& path : files) {
    auto file = read_safetensors(path.string());
    for (auto& [key, tensor] : file.tensors) {
      auto [it, fresh] = pieces.emplace(key, Piece{tensor, path.string(), key});
      if (!fresh)
        throw std::invalid_argument("duplicate tensor " + key + ": in " + it->second.file +
                                    " and in " + path.string());
    }
  }
  if (index) {
    const auto& map = index->at("weight_map");
    for (const auto& [key, piece] : pieces) {
      if (!map.contains(key))
        throw std::invalid_argument(piece.file + ": tensor " + key + " is not listed in " +
                                    index_path);
      if ((dir / map.at(key).get<std::string>()).string() != piece.file)
        throw std::invalid_argument(piece.file + ": tensor " + key + " is listed in " + index_path +
                                    " under " + map.at(key).get<std::string>());
    }
    for (const auto& [key, file] : map.items())
      if (!pieces.count(key))
        throw std::invalid_argument(index_path + ": lists " + key + " in " +
                                    file.get<std::string>() + ", which does not hold it");
  }

  for (auto& [key, piece] : pieces) {
    if (ignored(key, kIgnoredHf)) continue;
    const auto ours = our_name_from_hf(key);
    if (!ours)
      throw std::invalid_argument(piece.file + ": unexpected tensor " + key +
                                  " (not a LLaMA weight name)");
    ck.sources[*ours].pieces.push_back(std::move(piece));
  }
  // Tied models: lm_head may be left out, or saved equal to the embedding.
  if (ck.config.tie_embeddings && ck.sources.count("output.weight")) {
    const auto& head = ck.sources.at("output.weight").pieces.front();
    auto emb = ck.sources.find("tok_embeddings.weight");
    if (emb == ck.sources.end() ||
        emb->second.pieces.front().tensor.sizes() != head.tensor.sizes() ||
        emb->second.pieces.front().tensor.scalar_type() != head.tensor.scalar_type() ||
        !torch::equal(emb->second.pieces.front().tensor, head.tensor))
      throw std::invalid_argument(head.file + ": " + head.key +
                                  " differs from model.embed_tokens.weight although " +
                                  config_path + " says tie_word_embeddings");
    ck.sources.erase("output.weight");
  }
  set_hf_heads(ck);
  return ck;
}

std::vector<fs::path> meta_shards(const fs::path& dir) {
  static const std::regex pattern(R"(consolidated\.(\d+)\.pth)");
  std::map<int, fs::path> by_rank;
  for (const auto& e : fs::directory_iterator(dir)) {
    std::smatch m;
    const std::string name = e.path().filename().string();
    if (e.is_regular_file() && std::regex_match(name, m, pattern))
      by_rank.emplace(std::stoi(m[1].str()), e.path());
  }
  std::vector<fs::path> shards;
  for (const auto& [rank, path] : by_rank) {
    if (rank != static_cast<int>(shards.size()))
      throw std::invalid_argument(dir.string() + ": consolidated shards are not numbered 00.." +
                                  std::to_string(by_rank.size() - 1) + " (found " +
                                  path.filename().string() + " in place of rank " +
                                  std::to_string(shards.size()) + ")");
    shards.push_back(path);
  }
  if (shards.empty()) throw std::invalid_argument(dir.string() + ": no consolidated.NN.pth");
  return shards;
}

// The dim Meta's model-parallel layers are split on.
int64_t meta_split_dim(const std::string& name) {
  for (auto column : {".attention.wq.weight", ".attention.wk.weight", ".attention.wv.weight",
                      ".feed_forward.w1.weight", ".feed_forward.w3.weight"})
    if (ends_with(name, column)) return 0;
  if (name == "output.weight") return 0;
  if (ends_with(name, ".attention.wo.weight") || ends_with(name, ".feed_forward.w2.weight"))
    return 1;
  if (name == "tok_embeddings.weight") return kByShape;
  return kReplicated;  // norms
}

Checkpoint read_meta(const fs::path& dir, bool with_tensors) {
  Checkpoint ck;
  ck.format = CheckpointFormat::kMeta;
  ck.dir = dir.string();
  const std::string params_path = (dir / kMetaParams).string();
  ck.config = config_from_meta_params(read_json_file(params_path), params_path);
  ck.config.name = checkpoint_name(dir);
  // Even for the config alone the shards are read: only they tell whether `output` is tied.
  (void)with_tensors;
  const auto shards = meta_shards(dir);
  for (const auto& path : shards) {
    for (auto& [key, tensor] : read_torch_dict(path.string())) {
      if (ignored(key, kIgnoredMeta)) continue;
      if (!hf_name_from_ours(key))
        throw std::invalid_argument(path.string() + ": unexpected tensor " + key +
                                    " (not a LLaMA weight name)");
      ck.sources[key].pieces.push_back(Piece{tensor, path.string(), key});
    }
  }
  for (auto& [name, source] : ck.sources) {
    if (source.pieces.size() != shards.size()) {
      // Name the first shard that lacks it.
      std::set<std::string> holding;
      for (const auto& p : source.pieces) holding.insert(p.file);
      for (const auto& path : shards)
        if (!holding.count(path.string()))
          throw std::invalid_argument(path.string() + ": missing tensor " + name + " (present in " +
                                      source.pieces.front().file + ")");
    }
    source.split_dim = meta_split_dim(name);
  }
  // Llama 2 splits the embedding along dim 1 (ParallelEmbedding), Llama 3 along dim 0
  // (VocabParallelEmbedding): with several shards, the shapes tell which.
  if (auto emb = ck.sources.find("tok_embeddings.weight"); emb != ck.sources.end()) {
    auto& pieces = emb->second.pieces;
    const bool whole_rows = std::all_of(pieces.begin(), pieces.end(), [&](const Piece& p) {
      return p.tensor.dim() == 2 && p.tensor.size(1) == ck.config.dim;
    });
    emb->second.split_dim = pieces.size() == 1 || whole_rows ? 0 : 1;
    if (ck.config.vocab_size <= 0 && pieces.front().tensor.dim() == 2) {
      int64_t vocab = 0;
      if (emb->second.split_dim == 0) {
        for (const auto& p : pieces) vocab += p.tensor.size(0);
      } else {
        vocab = pieces.front().tensor.size(0);
      }
      ck.config.vocab_size = vocab;
    }
  }
  if (ck.config.vocab_size <= 0)
    throw std::invalid_argument(params_path + ": vocab_size is " +
                                std::to_string(ck.config.vocab_size) +
                                " and no tok_embeddings.weight tells it");
  // Meta's files have no tie flag: a file without `output` ties it to the embedding.
  ck.config.tie_embeddings = !ck.sources.count("output.weight");
  validate_config(ck.config);
  return ck;
}

Checkpoint read_checkpoint(const std::string& dir, bool with_tensors) {
  const auto format = detect_checkpoint_format(dir);
  return format == CheckpointFormat::kHuggingFace ? read_hf(dir, with_tensors)
                                                  : read_meta(dir, with_tensors);
}

// Copies `piece` into `dest` (same shape), undoing HF's rotary permutation of the rows when
// `hf_heads` > 0, without an intermediate copy: dest viewed as (heads, head_dim/2, 2, cols)
// takes the source viewed as (heads, 2, head_dim/2, cols), transposed.
void copy_piece(torch::Tensor dest, const torch::Tensor& src, int64_t hf_heads) {
  if (hf_heads == 0) {
    dest.copy_(src);
    return;
  }
  const int64_t rows = dest.size(0), cols = dest.size(1), half = rows / hf_heads / 2;
  dest.view({hf_heads, half, 2, cols}).copy_(src.view({hf_heads, 2, half, cols}).transpose(1, 2));
}

void copy_into(Transformer& model, Checkpoint& ck) {
  std::set<std::string> used;
  fill_parameters(model, [&](const std::string& name, torch::Tensor& param) {
    if (is_lora_param(name)) return;
    auto it = ck.sources.find(name);
    if (it == ck.sources.end()) {
      const std::string key = ck.format == CheckpointFormat::kHuggingFace
                                  ? hf_name_from_ours(name).value_or(name) + " (" + name + ")"
                                  : name;
      throw std::invalid_argument(ck.dir + ": missing tensor " + key);
    }
    used.insert(name);
    auto& source = it->second;
    for (const auto& p : source.pieces)
      if (!floating(p.tensor))
        throw std::invalid_argument(p.file + ": " + key_text(p, name) +
                                    ": expected floating-point values, got " +
                                    c10::toString(p.tensor.scalar_type()));
    if (source.pieces.size() == 1 || source.split_dim == kReplicated) {
      const Piece& first = source.pieces.front();
      for (const auto& p : source.pieces) {
        if (p.tensor.sizes() != param.sizes())
          throw std::invalid_argument(p.file + ": " + key_text(p, name) + ": shape " +
                                      shape_text(p.tensor.sizes()) + " where the model expects " +
                                      shape_text(param.sizes()));
        if (&p != &first && (p.tensor.scalar_type() != first.tensor.scalar_type() ||
                             !torch::equal(p.tensor, first.tensor)))
          throw std::invalid_argument(p.file + ": " + name + " differs from " + first.file +
                                      " (a replicated tensor must be equal in every shard)");
      }
      copy_piece(param, first.tensor, source.hf_heads);
      return;
    }
    // Shards concatenated along split_dim.
    const int64_t d = source.split_dim;
    bool fits = true;
    int64_t total = 0;
    for (const auto& p : source.pieces) {
      if (p.tensor.dim() != param.dim()) {
        fits = false;
        break;
      }
      for (int64_t k = 0; k < param.dim(); ++k)
        if (k != d && p.tensor.size(k) != param.size(k)) fits = false;
      total += p.tensor.size(d);
    }
    if (!fits || total != param.size(d)) {
      std::string shapes;
      for (const auto& p : source.pieces)
        shapes += (shapes.empty() ? "" : ", ") + fs::path(p.file).filename().string() + " " +
                  shape_text(p.tensor.sizes());
      std::string result = "do not concatenate";
      if (fits) {
        auto sizes = param.sizes().vec();
        sizes[static_cast<size_t>(d)] = total;
        result = "give " + shape_text(sizes);
      }
      throw std::invalid_argument(ck.dir + ": " + name + ": shards " + shapes +
                                  " concatenated along dim " + std::to_string(d) + " " + result +
                                  " where the model expects " + shape_text(param.sizes()));
    }
    int64_t offset = 0;
    for (const auto& p : source.pieces) {
      param.narrow(d, offset, p.tensor.size(d)).copy_(p.tensor);
      offset += p.tensor.size(d);
    }
  });
  for (const auto& [name, source] : ck.sources)
    if (!used.count(name)) {
      const auto& p = source.pieces.front();
      throw std::invalid_argument(p.file + ": unexpected tensor " + key_text(p, name) +
                                  " (the model " + model->config().name +
                                  " has no such parameter)");
    }
}

const char* hf_dtype_name(torch::Dtype dtype) {
  switch (dtype) {
    case torch::kFloat32:
      return "float32";
    case torch::kBFloat16:
      return "bfloat16";
    case torch::kFloat16:
      return "float16";
    case torch::kFloat64:
      return "float64";
    default:
      throw std::invalid_argument("export: unsupported dtype");
  }
}

}  // namespace

const char* format_name(CheckpointFormat format) {
  return format == CheckpointFormat::kHuggingFace ? "huggingface" : "meta";
}

CheckpointFormat detect_checkpoint_format(const std::string& dir_text) {
  const fs::path dir(dir_text);
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw std::invalid_argument(dir_text + ": not a directory");
  bool config = false, params = false, safetensors = false, consolidated = false;
  std::vector<std::string> found;
  static const std::regex shard(R"(consolidated\.\d+\.pth)");
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    found.push_back(name);
    config |= name == kHfConfig;
    params |= name == kMetaParams;
    safetensors |= e.path().extension() == ".safetensors";
    consolidated |= std::regex_match(name, shard);
  }
  const bool hf = config && safetensors, meta = params && consolidated;
  if (hf && meta)
    throw std::invalid_argument(dir_text +
                                ": holds both an HF checkpoint (config.json, "
                                "*.safetensors) and a Meta one (params.json, consolidated.*.pth)");
  if (hf) return CheckpointFormat::kHuggingFace;
  if (meta) return CheckpointFormat::kMeta;
  std::sort(found.begin(), found.end());
  std::string list;
  for (size_t i = 0; i < found.size() && i < 12; ++i) list += (i ? ", " : "") + found[i];
  if (found.size() > 12) list += ", ...";
  throw std::invalid_argument(
      dir_text +
      ": not a checkpoint directory: expected config.json with model.safetensors "
      "(or shards and model.safetensors.index.json), or params.json with "
      "consolidated.NN.pth; found: " +
      (list.empty() ? "nothing" : list) +
      (config && !safetensors ? " (only safetensors weights are read, not pytorch_model.bin)"
                              : ""));
}

Json hf_config_json(const LlamaConfig& c, torch::Dtype dtype) {
  Json rope = nullptr;
  if (c.rope_scaling) {
    rope = {{"rope_type", "llama3"},
            {"factor", c.rope_scaling->factor},
            {"low_freq_factor", c.rope_scaling->low_freq_factor},
            {"high_freq_factor", c.rope_scaling->high_freq_factor},
            {"original_max_position_embeddings", c.rope_scaling->original_max_pos}};
  }
  return {{"architectures", {"LlamaForCausalLM"}},
          {"model_type", "llama"},
          {"hidden_size", c.dim},
          {"intermediate_size", c.ffn_hidden},
          {"num_hidden_layers", c.n_layers},
          {"num_attention_heads", c.n_heads},
          {"num_key_value_heads", c.n_kv_heads},
          {"head_dim", c.head_dim()},
          {"vocab_size", c.vocab_size},
          {"max_position_embeddings", c.max_seq_len},
          {"rms_norm_eps", c.norm_eps},
          {"rope_theta", c.rope_theta},
          {"rope_scaling", rope},
          {"tie_word_embeddings", c.tie_embeddings},
          {"hidden_act", "silu"},
          {"attention_bias", false},
          {"attention_dropout", 0.0},
          {"mlp_bias", false},
          {"torch_dtype", hf_dtype_name(dtype)},
          {"use_cache", true}};
}

const std::vector<NamePair>& hf_names() {
  static const std::vector<NamePair> names{
      {"model.embed_tokens.weight", "tok_embeddings.weight"},
      {"model.layers.{L}.self_attn.q_proj.weight", "layers.{L}.attention.wq.weight"},
      {"model.layers.{L}.self_attn.k_proj.weight", "layers.{L}.attention.wk.weight"},
      {"model.layers.{L}.self_attn.v_proj.weight", "layers.{L}.attention.wv.weight"},
      {"model.layers.{L}.self_attn.o_proj.weight", "layers.{L}.attention.wo.weight"},
      {"model.layers.{L}.mlp.gate_proj.weight", "layers.{L}.feed_forward.w1.weight"},
      {"model.layers.{L}.mlp.down_proj.weight", "layers.{L}.feed_forward.w2.weight"},
      {"model.layers.{L}.mlp.up_proj.weight", "layers.{L}.feed_forward.w3.weight"},
      {"model.layers.{L}.input_layernorm.weight", "layers.{L}.attention_norm.weight"},
      {"model.layers.{L}.post_attention_layernorm.weight", "layers.{L}.ffn_norm.weight"},
      {"model.norm.weight", "norm.weight"},
      {"lm_head.weight", "output.weight"},
  };
  return names;
}

std::optional<std::string> our_name_from_hf(const std::string& hf) {
  for (const auto& pair : hf_names())
    if (auto out = translate(hf, pair.hf, pair.ours)) return out;
  return std::nullopt;
}

std::optional<std::string> hf_name_from_ours(const std::string& ours) {
  for (const auto& pair : hf_names())
    if (auto out = translate(ours, pair.ours, pair.hf)) return out;
  return std::nullopt;
}

torch::Tensor permute_to_hf(const torch::Tensor& w, int64_t n_heads) {
  const int64_t rows = w.size(0), cols = w.size(1);
  return w.reshape({n_heads, rows / n_heads / 2, 2, cols}).transpose(1, 2).reshape({rows, cols});
}

torch::Tensor permute_from_hf(const torch::Tensor& w, int64_t n_heads) {
  const int64_t rows = w.size(0), cols = w.size(1);
  return w.reshape({n_heads, 2, rows / n_heads / 2, cols}).transpose(1, 2).reshape({rows, cols});
}

LlamaConfig read_checkpoint_config(const std::string& dir) {
  return read_checkpoint(dir, /*with_tensors=*/false).config;
}

void load_checkpoint_weights(Transformer& model, const std::string& dir) {
  auto ck = read_checkpoint(dir, /*with_tensors=*/true);
  copy_into(model, ck);
}

Transformer load_model(const std::string& path_or_preset, const ModelOptions& options,
                       uint64_t seed) {
  std::error_code ec;
  if (fs::is_directory(path_or_preset, ec)) {
    auto ck = read_checkpoint(path_or_preset, /*with_tensors=*/true);
    Transformer model(ck.config, options);
    copy_into(model, ck);
    return model;
  }
  if (fs::exists(path_or_preset, ec))
    throw std::invalid_argument(path_or_preset +
                                ": a file; expected a checkpoint directory or a preset name");
  LlamaConfig config;
  try {
    config = config_from_name(path_or_preset);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(std::string(e.what()) + ", and no directory of that name");
  }
  Transformer model(config, options);
  init_random(model, seed);
  return model;
}

namespace {
constexpr const char* kPeftConfig = "adapter_config.json";
constexpr const char* kPeftWeights = "adapter_model.safetensors";
constexpr std::string_view kPeftPrefix = "base_model.model.";

// HF's module name of our target `target` (wq) in block `layer`: model.layers.3.self_attn.q_proj,
// from the one rename table.
std::string hf_module(int64_t layer, const std::string& target) {
  for (const auto& pair : hf_names()) {
    if (!ends_with(pair.ours, "." + target + ".weight")) continue;
    std::string module(pair.hf.substr(0, pair.hf.size() - std::strlen(".weight")));
    module.replace(module.find("{L}"), 3, std::to_string(layer));
    return module;
  }
  throw std::logic_error("no HF name for LoRA target " + target);
}
}  // namespace

PeftAdapterConfig read_peft_adapter_config(const std::string& dir, int64_t n_layers) {
  const std::string path = (fs::path(dir) / kPeftConfig).string();
  const Json j = object_of(read_json_file(path), path);
  const auto type = field<std::string>(j, "peft_type", path);
  if (type != "LORA")
    throw std::invalid_argument(path + ": peft_type \"" + type + "\" (expected LORA)");
  // What PEFT can configure but the model does not compute: refused rather than ignored.
  for (const char* flag : {"use_dora", "use_rslora", "fan_in_fan_out", "lora_bias"})
    if (field_or<bool>(j, flag, false, path))
      throw std::invalid_argument(path + ": " + flag + " is true (not supported)");
  if (const auto bias = field_or<std::string>(j, "bias", "none", path); bias != "none")
    throw std::invalid_argument(path + ": bias \"" + bias + "\" (only \"none\" is supported)");
  for (const char* key :
       {"rank_pattern", "alpha_pattern", "modules_to_save", "layers_to_transform", "layers_pattern",
        "exclude_modules", "target_parameters", "trainable_token_indices", "layer_replication"}) {
    if (j.contains(key) && !j.at(key).is_null() && !j.at(key).empty())
      throw std::invalid_argument(path + ": " + key + " is " + j.at(key).dump() +
                                  " (not supported: one r, alpha and set of targets for every "
                                  "block, no other trained modules)");
  }
  PeftAdapterConfig c;
  c.options.r = field<int64_t>(j, "r", path);
  if (c.options.r <= 0) throw std::invalid_argument(path + ": r must be positive");
  c.options.alpha = field<double>(j, "lora_alpha", path);
  c.options.dropout = field_or<double>(j, "lora_dropout", 0.0, path);
  // PEFT's rule: a module is a target when its name equals an entry of the list or ends with
  // "." + entry; a string is a regex the whole name must match, or "all-linear" (every linear
  // but the output layer). PeftModel.save_pretrained writes "all-linear" out as full names.
  const Json targets = j.contains("target_modules") ? j.at("target_modules") : Json();
  const std::string where = path + ": target_modules " + targets.dump();
  std::vector<std::string> entries;
  std::vector<bool> entry_used;
  std::optional<std::regex> pattern;
  if (targets.is_string() && targets != "all-linear") {
    try {
      pattern.emplace(targets.get<std::string>());
    } catch (const std::regex_error& e) {
      throw std::invalid_argument(where + ": not a regular expression: " + e.what());
    }
  } else if (targets.is_array() && !targets.empty()) {
    for (const auto& t : targets) {
      if (!t.is_string()) throw std::invalid_argument(where + ": expected module names");
      entries.push_back(t.get<std::string>());
    }
    entry_used.assign(entries.size(), false);
  } else if (!targets.is_string()) {
    throw std::invalid_argument(where + ": expected a list of module names, a regex or " +
                                "\"all-linear\"");
  }
  auto targeted = [&](const std::string& module) {
    if (pattern) return std::regex_match(module, *pattern);
    if (entries.empty()) return true;  // all-linear
    bool hit = false;
    for (size_t i = 0; i < entries.size(); ++i) {
      if (module == entries[i] || ends_with(module, "." + entries[i])) {
        entry_used[i] = true;
        hit = true;
      }
    }
    return hit;
  };
  for (int64_t layer = 0; layer < n_layers; ++layer) {
    std::vector<std::string> in_layer;
    for (const auto& target : lora_target_names())
      if (targeted(hf_module(layer, target))) in_layer.push_back(target);
    if (layer == 0) c.targets = in_layer;
    if (in_layer != c.targets)  // apply_lora puts the same adapters in every block
      throw std::invalid_argument(where + ": selects other linears in block " +
                                  std::to_string(layer) + " than in block 0 (not supported)");
  }
  for (size_t i = 0; i < entries.size(); ++i)
    if (!entry_used[i])
      throw std::invalid_argument(where + ": \"" + entries[i] +
                                  "\" is no linear layer of a LLaMA block (q_proj, k_proj, "
                                  "v_proj, o_proj, gate_proj, up_proj, down_proj)");
  if (c.targets.empty())
    throw std::invalid_argument(where + ": selects no linear layer of a LLaMA block");
  return c;
}

void load_peft_adapter(Transformer& model, const std::string& dir) {
  const auto config = read_peft_adapter_config(dir, model->config().n_layers);
  const std::string path = (fs::path(dir) / kPeftWeights).string();
  if (!fs::is_regular_file(path))
    throw std::invalid_argument(path + ": not found (only safetensors adapters are read)");
  auto file = read_safetensors(path);
  apply_lora(model, config.targets, config.options, /*seed=*/0);  // values overwritten below
  torch::NoGradGuard no_grad;
  const LlamaConfig& c = model->config();
  std::set<std::string> used;
  for (auto& item : model->named_parameters()) {
    const std::string& name = item.key();
    if (!is_lora_param(name)) continue;
    // layers.0.attention.wq.lora_b.weight -> base_model.model.model.layers.0.self_attn.q_proj
    // .lora_B.weight, through the base weight's HF name.
    const bool is_a = name.find(".lora_a.") != std::string::npos;
    const std::string base = name.substr(0, name.rfind(is_a ? ".lora_a." : ".lora_b.")) + ".weight";
    const auto hf = hf_name_from_ours(base);
    if (!hf) throw std::logic_error("load_peft_adapter: no HF name for " + base);
    const std::string key = std::string(kPeftPrefix) +
                            hf->substr(0, hf->size() - std::strlen(".weight")) +
                            (is_a ? ".lora_A.weight" : ".lora_B.weight");
    auto it = file.tensors.find(key);
    if (it == file.tensors.end())
      throw std::invalid_argument(path + ": missing tensor " + key + " (" + name + ")");
    const torch::Tensor& t = it->second;
    torch::Tensor param = item.value();
    if (!floating(t))
      throw std::invalid_argument(path + ": " + key + ": expected floating-point values, got " +
                                  c10::toString(t.scalar_type()));
    if (t.sizes() != param.sizes())
      throw std::invalid_argument(path + ": " + key + ": shape " + shape_text(t.sizes()) +
                                  " where the model expects " + shape_text(param.sizes()) + " (r " +
                                  std::to_string(config.options.r) + ")");
    // B's rows are q_proj's / k_proj's output rows: in HF's rotary layout like the base weight.
    int64_t heads = 0;
    if (!is_a && ends_with(base, ".attention.wq.weight")) heads = c.n_heads;
    if (!is_a && ends_with(base, ".attention.wk.weight")) heads = c.n_kv_heads;
    copy_piece(param, t, heads);
    used.insert(key);
  }
  for (const auto& [key, t] : file.tensors)
    if (!used.count(key))
      throw std::invalid_argument(path + ": unexpected tensor " + key +
                                  " (not a LoRA weight of the targets in " + kPeftConfig + ")");
}

void save_hf_checkpoint(Transformer& model, const std::string& dir_text,
                        const HfExportOptions& options) {
  bool adapters = false;
  for (const auto& item : model->named_parameters()) adapters |= is_lora_param(item.key());
  if (adapters) {
    if (!options.merge_lora)
      throw std::invalid_argument(
          "export: the model has LoRA adapters; merge them into the base weights (--lora-merge)");
    merge_and_unload_lora(model);
  }
  const fs::path dir(dir_text);
  fs::create_directories(dir);
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name != kHfConfig && name != kHfSingle && !ends_with(name, ".tmp"))
      throw std::invalid_argument(dir_text + ": holds " + name +
                                  "; export writes into an empty directory (or over an export)");
  }
  const torch::Dtype dtype = options.dtype.value_or(model->options().dtype);
  const LlamaConfig& c = model->config();
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (const auto& item : model->named_parameters()) {
    const auto hf = hf_name_from_ours(item.key());
    if (!hf) throw std::logic_error("export: no HF name for parameter " + item.key());
    auto t = item.value().detach().to(torch::kCPU);
    if (ends_with(item.key(), ".attention.wq.weight")) t = permute_to_hf(t, c.n_heads);
    if (ends_with(item.key(), ".attention.wk.weight")) t = permute_to_hf(t, c.n_kv_heads);
    tensors.emplace_back(*hf, t.to(dtype).contiguous());
  }
  write_safetensors((dir / kHfSingle).string(), tensors, {{"format", "pt"}});
  const std::string config_path = (dir / kHfConfig).string();
  const std::string tmp = config_path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << hf_config_json(c, dtype).dump(2) << "\n";
    if (!out) throw std::invalid_argument(tmp + ": write failed");
  }
  if (std::rename(tmp.c_str(), config_path.c_str()) != 0)
    throw std::invalid_argument(config_path + ": cannot rename from " + tmp + ": " +
                                std::strerror(errno));
}

}  // namespace hx
