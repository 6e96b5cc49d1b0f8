#pragma once
// The experiment spec (YAML) and its expansion into runs. No libtorch.
//
// A spec has one matrix (top-level workload, data, fixed, matrix, include, exclude) or several
// (`parts:`, a list of mappings with those keys plus an optional `label`; top-level data and
// fixed are then defaults merged under each part's). A table selects runs by `workload:` and/or
// `part:` (a part's label). See README.md "A spec" and experiments/phase3.yaml.
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "harness/plan/vocabulary.h"

namespace hx {

using Json = nlohmann::json;

// One `tables:` entry of the spec.
struct TableSpec {
  std::string title;
  std::string kind = "pivot";        // pivot | arrows
  std::vector<std::string> columns;  // axis names: one column per combination of their values
  std::vector<std::string> rows;     // metric names
  std::optional<Workload> workload;  // which part's runs the table uses (none = all)
  int line = 0;                      // where it was declared, for messages
  std::string part;                  // label of the part whose runs the table uses ("" = all)
};

// One matrix of runs. A spec has one part (the top-level keys) or several (`parts:` list), each
// with its own workload, data, fixed, matrix, include, exclude.
// data["path"] is absolute (for the worker); data["path_as_written"] keeps the spec's text, which
// is what run ids hash, so that they do not depend on where the checkout lives.
struct PartSpec {
  Workload workload = Workload::kFinetune;
  Json data = Json::object();   // as in the spec, path made absolute
  Json fixed = Json::object();  // key -> value
  std::vector<std::pair<std::string, std::vector<Json>>> axes;  // in spec order
  std::vector<Json> include, exclude;                           // objects key -> value
  std::string label;  // `parts[i].label`, "" when unnamed; tables select a part by it
};

struct Spec {
  std::string path;  // as given on the command line
  std::string text;  // the file's bytes, stored with the experiment
  std::string name;
  // A weights path is made absolute, with the spec's text in "weights_as_written" (hashed into
  // run ids instead, like data paths).
  Json model = Json::object();  // {"preset": "tiny", "weights": "random", "seed": 0}
  // `tokenizer: PATH` (a LLaMA 3 tiktoken or LLaMA 2 SentencePiece tokenizer.model), absolute;
  // "" = the byte tokenizer. Alpaca data is then pre-tokenised by the parent (runner.cpp).
  std::string tokenizer;
  std::string tokenizer_as_written;  // the spec's text, hashed into run ids
  bool allow_special = false;        // `allow_special:` special-token names in the data are tokens
  std::vector<PartSpec> parts;
  int repeats = 1;
  double timeout_s = 1800;
  std::string device = "cpu";
  int64_t memory_limit_mb = 0;  // 0 = no cap; a device_profile sets its memory when not given
  std::string device_profile;   // "" = none; else a key of device_profiles.h
  std::vector<TableSpec> tables;
};

// The most runs a spec may stand for: the sum over its parts of (the product of the axes' sizes
// + the include entries) x repeats, counted before exclude. Loading a bigger spec fails, naming
// the axes' sizes, before any run is built (2 million runs expand in seconds; 10 million
// configs would take gigabytes wherever the whole plan is held, as `harness run` does).
inline constexpr int64_t kMaxRuns = 10'000'000;

// Changes to a spec from the command line, validated as if written in it (run, expand,
// estimate, report, compare, check):
//   --set KEY=VALUE   a top-level key (device, repeats, timeout_s, ...), a dotted model/data key
//                     (model.preset=tiny), or a config key: a fixed value, or the axis's only
//                     value when KEY is an axis; VALUE in YAML, so [a, b] makes or replaces an axis
//   --only AXIS=V1,V2 keeps only these values of a matrix axis
// The stored spec text records them.
struct SpecOverrides {
  std::vector<std::string> set;
  std::vector<std::string> only;
  bool empty() const { return set.empty() && only.empty(); }
};

// Parses and validates; throws std::invalid_argument("FILE:LINE: KEY: message") on any error
// (an override's: "--set KEY=VALUE: message"), before any run starts.
Spec load_spec(const std::string& path, const SpecOverrides& overrides = {});
// `path` only for messages.
Spec parse_spec(const std::string& text, const std::string& path,
                const SpecOverrides& overrides = {});

struct RunConfig {
  std::string run_id;  // 16 hex digits
  int repeat = 0;
  Workload workload = Workload::kFinetune;
  Json config;              // fixed merged with this run's axis values, keys sorted
  std::string canonical;    // canonical_json(config)
  int part = 0;             // index into Spec::parts of the part this run came from
  std::string skip_reason;  // not "": the device profile cannot run it (recorded as skipped)
};

// Cartesian product of the axes (first axis slowest), minus exclude, plus include, times repeats
// (repeat innermost); stable order. A combination that comes up twice (an include repeating a
// product row, or two identical parts) runs once: run ids are unique in the result.
std::vector<RunConfig> expand(const Spec& spec);

// One run of expand(spec) as for_each_run() hands it over: a RunConfig without its config built
// (building millions of Json objects is most of what expand() costs). Valid during the call only.
struct RunRef {
  std::string_view run_id;
  int repeat = 0;
  int part = 0;
  int include = -1;  // index into the part's include entries; -1: a row of the axes' product
  Workload workload = Workload::kFinetune;
  std::string_view canonical;
  std::string_view skip_reason;
  // The config's keys in canonical (sorted) order and their values. The values point into the
  // spec (fixed values, axis values, include entries), so they live as long as the spec does.
  std::span<const std::string> keys;
  std::span<const Json* const> values;

  const Json* find(std::string_view key) const;  // nullptr when the config has no such key
  Json config() const;                           // RunConfig::config
};

// Visits the runs of expand(spec), in the same order, one at a time; of what it holds, only the
// set of ids seen (to drop duplicates: 16 to 32 bytes a run) grows with the number of runs.
void for_each_run(const Spec& spec, const std::function<void(const RunRef&)>& visit);

// Keys sorted, no spaces, values as written.
std::string canonical_json(const Json& value);

// Stable across platforms and versions (FNV-1a 64 over a fixed text), 16 hex digits. The hashed
// text holds the experiment name, the run's context (model, device, data, memory cap, workload),
// the canonical config and the repeat index, so that editing the model of a spec never resumes
// into stale results.
std::string make_run_id(const Spec& spec, const PartSpec& part, const std::string& canonical,
                        int repeat);

}  // namespace hx
