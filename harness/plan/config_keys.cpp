#include "harness/plan/config_keys.h"

#include <algorithm>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>

#include "harness/plan/words.h"
#include "model/config.h"

namespace hx {
namespace {

using Json = nlohmann::json;

constexpr Bound kAtLeast0{0, false};
constexpr Bound kAtLeast1{1, false};
constexpr Bound kAbove0{0, true};

std::vector<std::string_view> lora_target_words() {
  return {std::begin(kLoraTargetNames), std::end(kLoraTargetNames)};
}

template <typename Range>
std::string join(const Range& range) {
  return join_words(range);
}

template <typename Range>
bool contains(const Range& range, std::string_view word) {
  return contains_word(range, word);
}

std::string show(const Json& value) { return value.dump(); }

std::string show_number(double value) {
  std::ostringstream out;
  out << value;
  return out.str();
}

bool in_bounds(const ConfigKey& key, double value) {
  if (key.lo && (key.lo->open ? value <= key.lo->value : value < key.lo->value)) return false;
  if (key.hi && (key.hi->open ? value >= key.hi->value : value > key.hi->value)) return false;
  return true;
}

std::string check_word_list(const ConfigKey& key, const Json& value) {
  if (!value.is_array()) return "expected " + describe(key) + ", got " + show(value);
  if (value.empty()) return "the list is empty (expected some of " + join(key.words) + ")";
  std::set<std::string> seen;
  for (const Json& item : value) {
    if (!item.is_string() || !contains(key.words, item.get<std::string>()))
      return "unknown value " + show(item) + " (expected " + join(key.words) + ")";
    if (!seen.insert(item.get<std::string>()).second) return "duplicate value " + show(item);
  }
  return "";
}

// The value of `name` in `config`, else its default; `what` names the expected type.
template <typename T>
T read(const Json& config, const char* name) {
  const auto it = config.find(name);
  const Json& value = it != config.end() ? *it : default_value(name);
  try {
    return value.get<T>();
  } catch (const Json::exception&) {
    throw std::invalid_argument(std::string("config key ") + name + ": " + show(value) +
                                " is not " + describe(*find_config_key(name)));
  }
}

// off | on, or a YAML boolean.
bool read_switch(const Json& config, const char* name) {
  const auto it = config.find(name);
  const Json& value = it != config.end() ? *it : default_value(name);
  if (value.is_boolean()) return value.get<bool>();
  return read<std::string>(config, name) == "on";
}

// A key whose default the run's data may give (data.max_seq_len, data.seq_len).
int64_t read_with_data(const Json& config, const Json& data, const char* name) {
  if (config.contains(name)) return read<int64_t>(config, name);
  if (data.is_object() && data.contains(name)) return read<int64_t>(data, name);
  return read<int64_t>(Json::object(), name);
}

std::string default_text(const ConfigKey& key) {
  if (key.default_json.empty()) return "";
  const Json value = Json::parse(key.default_json);
  if (value.is_string()) return value.get<std::string>();
  if (value.is_array()) {
    std::string out;
    for (const Json& item : value) out += (out.empty() ? "" : ", ") + item.get<std::string>();
    return "[" + out + "]";
  }
  return value.dump();
}

}  // namespace

// The registry is data, one initializer, not logic: its length is the number of keys. It is a
// function-local static so that static initializers elsewhere can read it in any order.
// NOLINTNEXTLINE(readability-function-size)
const std::vector<ConfigKey>& config_keys() {
  static const std::vector<ConfigKey> keys = {
      {.name = "batch_size",
       .lo = kAtLeast1,
       .default_json = "1",
       .label = "Batch",
       .unit = "sequences",
       .doc = "sequences per step (finetune: per micro-batch) or prompts per generation"},
      {.name = "seed", .default_json = "0", .doc = "data and sampling seed"},
      {.name = "dtype",
       .kind = Kind::kWord,
       .words = {"fp32", "fp16", "bf16"},
       .default_json = R"("fp32")",
       .label = "DType",
       .doc = "the weights' dtype (fp16 needs CUDA)"},
      {.name = "threads",
       .lo = kAtLeast1,
       .doc = "intra-op threads; default: the cores divided by `--jobs`"},
      {.name = "attention",
       .kind = Kind::kWord,
       .words = {"sdpa", "math"},
       .default_json = R"("sdpa")",
       .label = "Attention",
       .doc = "libtorch's fused scaled_dot_product_attention, or the explicit softmax path"},
      {.name = "quant",
       .kind = Kind::kWord,
       .words = {"off", "nf4", "fp4"},
       .default_json = R"("off")",
       .label = "Quant",
       .doc = "4-bit base weights of `quant_targets`, as bitsandbytes stores them (transformers' "
              "`load_in_4bit` with `bnb_4bit_quant_type`); finetune needs `lora: on` (QLoRA)"},
      {.name = "double_quant",
       .kind = Kind::kWord,
       .words = {"off", "on"},
       .default_json = R"("off")",
       .label = "Double quant",
       .doc = "with quant: the scales quantised again to 8 bits (`bnb_4bit_use_double_quant`)"},
      {.name = "compute_dtype",
       .kind = Kind::kWord,
       .words = {"fp32", "fp16", "bf16"},
       .default_json = R"("fp32")",
       .label = "Compute dtype",
       .doc = "with quant: the dtype a 4-bit weight is dequantised to for its product "
              "(`bnb_4bit_compute_dtype`; fp16 needs CUDA)"},
      {.name = "quant_block",
       .lo = Bound{2, false},
       .default_json = "64",
       .label = "Quant block",
       .unit = "weights",
       .doc = "with quant: weights per absmax scale (bitsandbytes' `blocksize`; even)"},
      {.name = "quant_targets",
       .kind = Kind::kWordList,
       .words = lora_target_words(),
       .default_json = R"(["wq", "wk", "wv", "wo", "w1", "w2", "w3"])",
       .doc = "with quant: the projections stored in 4 bits (QLoRA: every linear of the blocks; "
              "never the embedding or the output head)"},

      {.name = "ga",
       .scope = Scope::kFinetune,
       .lo = kAtLeast1,
       .default_json = "1",
       .label = "GA",
       .doc = "gradient accumulation: micro-batches per optimizer step"},
      {.name = "gc",
       .scope = Scope::kFinetune,
       .kind = Kind::kWord,
       .words = {"off", "on"},
       .default_json = R"("off")",
       .label = "GC",
       .doc = "gradient (activation) checkpointing of the transformer blocks"},
      {.name = "gc_every",
       .scope = Scope::kFinetune,
       .lo = kAtLeast1,
       .default_json = "1",
       .label = "GC every",
       .doc = "with gc on: checkpoint every n-th block"},
      {.name = "mp",
       .scope = Scope::kFinetune,
       .kind = Kind::kWord,
       .words = {"off", "fp16", "bf16"},
       .default_json = R"("off")",
       .label = "MP",
       .doc = "mixed precision: autocast to fp16 (with loss scaling; CUDA) or bf16"},
      {.name = "lora",
       .scope = Scope::kFinetune,
       .kind = Kind::kWord,
       .words = {"off", "on"},
       .default_json = R"("off")",
       .label = "LoRA",
       .doc = "LoRA adapters on `lora_targets`, the base weights frozen"},
      {.name = "lora_r",
       .scope = Scope::kFinetune,
       .lo = kAtLeast1,
       .default_json = "16",
       .label = "LoRA r",
       .doc = "LoRA rank (PEFT's `r`)"},
      {.name = "lora_alpha",
       .scope = Scope::kFinetune,
       .kind = Kind::kNumber,
       .lo = kAbove0,
       .default_json = "32.0",
       .label = "LoRA alpha",
       .doc = "LoRA scale numerator: the update is scaled by alpha / r"},
      {.name = "lora_dropout",
       .scope = Scope::kFinetune,
       .kind = Kind::kNumber,
       .lo = kAtLeast0,
       .hi = Bound{1, true},
       .default_json = "0.05",
       .doc = "dropout on the adapters' input"},
      {.name = "lora_targets",
       .scope = Scope::kFinetune,
       .kind = Kind::kWordList,
       .words = lora_target_words(),
       .default_json = R"(["wq", "wv"])",
       .doc = "the projections that get adapters (PEFT: q_proj, k_proj, v_proj, o_proj, "
              "gate_proj, down_proj, up_proj)"},
      {.name = "optimizer",
       .scope = Scope::kFinetune,
       .kind = Kind::kWord,
       .words = {"sgd", "adamw"},
       .default_json = R"("sgd")",
       .label = "Optimizer",
       .doc = "torch::optim SGD or AdamW"},
      {.name = "lr",
       .scope = Scope::kFinetune,
       .kind = Kind::kNumber,
       .lo = kAbove0,
       .default_json = "1e-05",
       .doc = "learning rate"},
      {.name = "weight_decay",
       .scope = Scope::kFinetune,
       .kind = Kind::kNumber,
       .lo = kAtLeast0,
       .default_json = "0.0",
       .doc = "decoupled (AdamW) or L2 (SGD) weight decay"},
      {.name = "max_grad_norm",
       .scope = Scope::kFinetune,
       .kind = Kind::kNumber,
       .lo = kAtLeast0,
       .default_json = "0.0",
       .label = "Max grad norm",
       .doc = "clip the gradients' global L2 norm to this before each optimizer step "
              "(transformers' max_grad_norm); 0 = no clipping"},
      {.name = "world_size",
       .scope = Scope::kFinetune,
       .lo = kAtLeast1,
       .default_json = "1",
       .label = "World size",
       .unit = "ranks",
       .doc = "data parallelism: ranks, one process each, gradients averaged over c10d (Gloo on "
              "the CPU); batch_size is per rank, as in PyTorch DDP"},
      {.name = "zero",
       .scope = Scope::kFinetune,
       .lo = kAtLeast0,
       .hi = Bound{2, false},
       .default_json = "0",
       .label = "ZeRO",
       .doc = "with world_size > 1, the ZeRO stage: 0 = every rank keeps all optimizer state; 1 "
              "= the optimizer state sharded over the ranks; 2 = the gradients too "
              "(reduce-scatter, then allgather)"},
      {.name = "dp_bucket_mb",
       .scope = Scope::kFinetune,
       .kind = Kind::kNumber,
       .lo = kAbove0,
       .default_json = "25.0",
       .label = "DP bucket",
       .unit = "MB",
       .doc = "with world_size > 1: gradients per allreduce bucket (DDP's bucket_cap_mb)"},
      {.name = "max_steps",
       .scope = Scope::kFinetune,
       .lo = kAtLeast1,
       .default_json = "20",
       .doc = "optimizer steps"},
      {.name = "warmup_steps",
       .scope = Scope::kFinetune,
       .lo = kAtLeast0,
       .default_json = "3",
       .doc = "steps excluded from the timings (at most max_steps - 1)"},
      {.name = "max_seq_len",
       .scope = Scope::kFinetune,
       .lo = kAtLeast1,
       .default_json = "256",
       .label = "Max seq len",
       .unit = "tokens",
       .doc = "Alpaca data: examples cut to this length (else `data.max_seq_len`)"},
      {.name = "seq_len",
       .scope = Scope::kFinetune,
       .lo = kAtLeast1,
       .default_json = "64",
       .label = "Seq len",
       .unit = "tokens",
       .doc = "random data: tokens per sequence (else `data.seq_len`)"},
      {.name = "generations",
       .scope = Scope::kFinetune,
       .kind = Kind::kWord,
       .words = {"off", "on"},
       .default_json = R"("off")",
       .doc = "greedy answers to three fixed instructions before and after fine-tuning"},
      {.name = "generation_tokens",
       .scope = Scope::kFinetune,
       .lo = kAtLeast1,
       .default_json = "32",
       .unit = "tokens",
       .doc = "new tokens of each of those answers"},

      {.name = "prompt_len",
       .scope = Scope::kGenerate,
       .lo = kAtLeast1,
       .default_json = "16",
       .label = "Prompt len",
       .unit = "tokens",
       .doc = "prompt tokens (random ids)"},
      {.name = "new_tokens",
       .scope = Scope::kGenerate,
       .lo = kAtLeast1,
       .default_json = "16",
       .label = "New tokens",
       .unit = "tokens",
       .doc = "tokens generated after the prompt"},
      {.name = "kv_cache",
       .scope = Scope::kGenerate,
       .kind = Kind::kWord,
       .words = {"on", "off"},
       .default_json = R"("on")",
       .label = "KV cache",
       .doc = "decode with the key/value cache, or recompute the whole sequence each token"},
      {.name = "sampling",
       .scope = Scope::kGenerate,
       .kind = Kind::kWord,
       .words = {"greedy", "sample"},
       .default_json = R"("greedy")",
       .doc = "greedy, or sampling with temperature, top_k and top_p"},
      {.name = "temperature",
       .scope = Scope::kGenerate,
       .kind = Kind::kNumber,
       .lo = kAbove0,
       .default_json = "1.0",
       .doc = "sampling temperature"},
      {.name = "top_k",
       .scope = Scope::kGenerate,
       .lo = kAtLeast0,
       .default_json = "0",
       .doc = "sampling: keep the k most likely tokens (0 = all)"},
      {.name = "top_p",
       .scope = Scope::kGenerate,
       .kind = Kind::kNumber,
       .lo = kAbove0,
       .hi = Bound{1, false},
       .default_json = "1.0",
       .doc = "sampling: nucleus probability mass"},
  };
  return keys;
}

const ConfigKey* find_config_key(std::string_view name) {
  for (const ConfigKey& key : config_keys())
    if (key.name == name) return &key;
  return nullptr;
}

bool applies(Scope scope, Workload workload) {
  return scope == Scope::kBoth || (scope == Scope::kFinetune && workload == Workload::kFinetune) ||
         (scope == Scope::kGenerate && workload == Workload::kGenerate);
}

std::string known_keys(Workload workload) {
  std::vector<std::string_view> names;
  for (const ConfigKey& key : config_keys())
    if (applies(key.scope, workload)) names.push_back(key.name);
  return join(names);
}

std::string describe(const ConfigKey& key) {
  switch (key.kind) {
    case Kind::kWord:
      return "one of " + join(key.words);
    case Kind::kWordList:
      return "a list of " + join(key.words);
    case Kind::kInt:
    case Kind::kNumber:
      break;
  }
  std::string out = key.kind == Kind::kInt ? "an integer" : "a number";
  if (key.lo && key.hi) {
    out += std::string(" in ") + (key.lo->open ? "(" : "[") + show_number(key.lo->value) + ", " +
           show_number(key.hi->value) + (key.hi->open ? ")" : "]");
  } else if (key.lo) {
    out += (key.lo->open ? " > " : " >= ") + show_number(key.lo->value);
  } else if (key.hi) {
    out += (key.hi->open ? " < " : " <= ") + show_number(key.hi->value);
  }
  return out;
}

std::string check_value(const ConfigKey& key, const Json& value) {
  switch (key.kind) {
    case Kind::kWord:
      if (value.is_string() && contains(key.words, value.get<std::string>())) return "";
      return "unknown value " + show(value) + " (expected " + join(key.words) + ")";
    case Kind::kWordList:
      return check_word_list(key, value);
    case Kind::kInt:
      if (!value.is_number_integer()) return "expected " + describe(key) + ", got " + show(value);
      break;
    case Kind::kNumber:
      if (!value.is_number()) return "expected " + describe(key) + ", got " + show(value);
      break;
  }
  if (!in_bounds(key, value.get<double>())) {
    return "expected " + describe(key) + ", got " + show(value);
  }
  return "";
}

const Json& default_value(std::string_view name) {
  static const std::map<std::string_view, Json> defaults = [] {
    std::map<std::string_view, Json> out;
    for (const ConfigKey& key : config_keys())
      if (!key.default_json.empty()) out.emplace(key.name, Json::parse(key.default_json));
    return out;
  }();
  const auto it = defaults.find(name);
  if (it == defaults.end())
    throw std::logic_error("config key " + std::string(name) + " has no default");
  return it->second;
}

std::string config_keys_markdown() {
  std::string out =
      "| key | workloads | values | default | meaning |\n| --- | --- | --- | --- | --- |\n";
  for (const ConfigKey& key : config_keys()) {
    const char* scope = key.scope == Scope::kBoth       ? "both"
                        : key.scope == Scope::kFinetune ? "finetune"
                                                        : "generate";
    const std::string def = default_text(key);
    out += "| `" + std::string(key.name) + "` | " + scope + " | " + describe(key) + " | " +
           (def.empty() ? "-" : "`" + def + "`") + " | " + std::string(key.doc) + " |\n";
  }
  return out;
}

RunSettings RunSettings::parse(const Json& config, const Json& data) {
  RunSettings s;
  s.batch_size = read<int64_t>(config, "batch_size");
  s.seed = read<int64_t>(config, "seed");
  s.dtype = read<std::string>(config, "dtype");
  if (config.contains("threads")) s.threads = read<int64_t>(config, "threads");
  s.attention = read<std::string>(config, "attention");
  s.quant = read<std::string>(config, "quant");
  s.double_quant = read_switch(config, "double_quant");
  s.compute_dtype = read<std::string>(config, "compute_dtype");
  s.quant_block = read<int64_t>(config, "quant_block");
  s.quant_targets = read<std::vector<std::string>>(config, "quant_targets");

  s.ga = read<int64_t>(config, "ga");
  s.gc = read_switch(config, "gc");
  s.gc_every = read<int64_t>(config, "gc_every");
  s.mp = read<std::string>(config, "mp");
  s.lora = read_switch(config, "lora");
  s.lora_r = read<int64_t>(config, "lora_r");
  s.lora_alpha = read<double>(config, "lora_alpha");
  s.lora_dropout = read<double>(config, "lora_dropout");
  s.lora_targets = read<std::vector<std::string>>(config, "lora_targets");
  s.optimizer = read<std::string>(config, "optimizer");
  s.lr = read<double>(config, "lr");
  s.weight_decay = read<double>(config, "weight_decay");
  s.max_grad_norm = read<double>(config, "max_grad_norm");
  s.world_size = read<int64_t>(config, "world_size");
  s.dp_bucket_mb = read<double>(config, "dp_bucket_mb");
  s.zero = read<int64_t>(config, "zero");
  s.max_steps = read<int64_t>(config, "max_steps");
  s.warmup_steps = read<int64_t>(config, "warmup_steps");
  s.max_seq_len = read_with_data(config, data, "max_seq_len");
  s.seq_len = read_with_data(config, data, "seq_len");
  s.generations = read_switch(config, "generations");
  s.generation_tokens = read<int64_t>(config, "generation_tokens");

  s.prompt_len = read<int64_t>(config, "prompt_len");
  s.new_tokens = read<int64_t>(config, "new_tokens");
  s.kv_cache = read_switch(config, "kv_cache");
  s.sampling = read<std::string>(config, "sampling");
  s.temperature = read<double>(config, "temperature");
  s.top_k = read<int64_t>(config, "top_k");
  s.top_p = read<double>(config, "top_p");
  return s;
}

}  // namespace hx
