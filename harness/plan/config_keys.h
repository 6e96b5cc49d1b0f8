#pragma once
// The one registry of a run's config keys (the keys of `fixed`, `matrix`, `include`, `exclude`):
// name, workloads, type, allowed values or bounds, default, table label, unit. Spec validation,
// the worker, the estimate, table labels and the README's key table (`harness keys`) all read
// it; a new technique axis is one row here plus the code that uses it. No libtorch.
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "harness/plan/vocabulary.h"

namespace hx {

enum class Scope { kBoth, kFinetune, kGenerate };
enum class Kind { kInt, kNumber, kWord, kWordList };

struct Bound {
  double value;
  bool open;  // true: the bound itself is not allowed
};

struct ConfigKey {
  std::string_view name;
  Scope scope = Scope::kBoth;
  Kind kind = Kind::kInt;
  std::vector<std::string_view> words = {};  // kWord, kWordList: the allowed values
  std::optional<Bound> lo = std::nullopt;
  std::optional<Bound> hi = std::nullopt;
  // The worker's value when a run does not set the key, as JSON text; "" = none (see `doc`).
  std::string_view default_json = "";
  std::string_view label = "";  // a table column's heading; "" = the name
  std::string_view unit = "";
  std::string_view doc = "";  // one line for the key table
};

// In the order the key table lists them: both workloads, then finetune, then generate.
const std::vector<ConfigKey>& config_keys();
const ConfigKey* find_config_key(std::string_view name);

bool applies(Scope scope, Workload workload);
// The names of the keys of `workload`, comma-separated (for messages).
std::string known_keys(Workload workload);
// "an integer >= 1", "a number in [0, 1)", "one of off, fp16, bf16", ...
std::string describe(const ConfigKey& key);
// The problem with `value` for `key`, or "" when there is none.
std::string check_value(const ConfigKey& key, const nlohmann::json& value);
// The registry's default of `name` (throws std::logic_error for a key without one).
const nlohmann::json& default_value(std::string_view name);

// The key table of README.md (between its config-keys markers), from the registry.
std::string config_keys_markdown();

// A run's config parsed once, every key typed and defaulted from the registry (as llama-bench's
// cmd_params_instance): the worker runs it, the estimate predicts it, the parent prepares it.
struct RunSettings {
  // both workloads
  int64_t batch_size = 0;
  int64_t seed = 0;
  std::string dtype;
  std::optional<int64_t> threads;  // none: the runner's share of the cores
  std::string attention;
  std::string quant;  // "off", "nf4", "fp4"
  bool double_quant = false;
  std::string compute_dtype;
  int64_t quant_block = 0;
  std::vector<std::string> quant_targets;
  // finetune
  int64_t ga = 0;
  bool gc = false;
  int64_t gc_every = 0;
  std::string mp;
  bool lora = false;
  int64_t lora_r = 0;
  double lora_alpha = 0;
  double lora_dropout = 0;
  std::vector<std::string> lora_targets;
  std::string optimizer;
  double lr = 0;
  double weight_decay = 0;
  double max_grad_norm = 0;  // 0: no clipping
  int64_t world_size = 1;    // data-parallel ranks
  double dp_bucket_mb = 0;
  int64_t zero = 0;  // ZeRO stage: 0, 1 or 2
  int64_t max_steps = 0;
  int64_t warmup_steps = 0;
  int64_t max_seq_len = 0;  // the run's, else data.max_seq_len, else the registry's
  int64_t seq_len = 0;      // the run's, else data.seq_len, else the registry's
  bool generations = false;
  int64_t generation_tokens = 0;
  // generate
  int64_t prompt_len = 0;
  int64_t new_tokens = 0;
  bool kv_cache = true;
  std::string sampling;
  double temperature = 0;
  int64_t top_k = 0;
  double top_p = 0;

  // `config`: the run's config object; `data`: its part's data (for the data-level defaults of
  // max_seq_len and seq_len). Throws std::invalid_argument naming a key of the wrong type.
  static RunSettings parse(const nlohmann::json& config,
                           const nlohmann::json& data = nlohmann::json::object());
};

}  // namespace hx
