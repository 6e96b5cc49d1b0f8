#include "harness/spec.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string_view>
#include <system_error>

#include "harness/config_keys.h"
#include "harness/device_profiles.h"
#include "harness/fields.h"
#include "harness/hash.h"
#include "harness/json_io.h"
#include "harness/pretokenize.h"
#include "model/config.h"

namespace hx {
namespace {

namespace fs = std::filesystem;

// ---- What a spec may say ---------------------------------------------------------------------

// The config keys are the registry's (config_keys.h); a rule is one of its rows.
using KeyRule = ConfigKey;

constexpr Bound kAtLeast0{0, false};
constexpr Bound kAtLeast1{1, false};
constexpr Bound kAbove0{0, true};

// Keys of `data:`, checked like config keys (format and path are handled on their own).
const std::vector<KeyRule>& data_rules() {
  static const std::vector<KeyRule> rules = {
      {.name = "format", .kind = Kind::kWord, .words = {"alpaca", "random"}},
      {.name = "samples", .lo = kAtLeast1},
      {.name = "max_seq_len", .lo = kAtLeast1},
      {.name = "seq_len", .lo = kAtLeast1},
  };
  return rules;
}

constexpr std::string_view kTopKeys[] = {
    "name",    "description",    "model",     "workload",     "data",   "fixed",           "matrix",
    "include", "exclude",        "repeats",   "timeout_s",    "device", "memory_limit_mb", "tables",
    "parts",   "device_profile", "tokenizer", "allow_special"};
constexpr std::string_view kPartKeys[] = {"label",  "workload", "data",   "fixed",
                                          "matrix", "include",  "exclude"};
constexpr std::string_view kTableKeys[] = {"title", "kind", "columns", "rows", "workload", "part"};
constexpr std::string_view kModelKeys[] = {"preset", "weights", "path", "seed"};

template <typename Range>
bool contains(const Range& range, std::string_view word) {
  return std::find(std::begin(range), std::end(range), word) != std::end(range);
}

template <typename Range>
std::string join(const Range& range) {
  std::string out;
  for (const auto& item : range) {
    if (!out.empty()) out += ", ";
    out += item;
  }
  return out;
}

const KeyRule* find_rule(const std::vector<KeyRule>& rules, std::string_view name) {
  for (const KeyRule& rule : rules) {
    if (rule.name == name) return &rule;
  }
  return nullptr;
}

// A value as a message shows it: strings quoted, so that `"16"` and `16` read differently.
std::string show(const Json& value) { return value.dump(); }

// ---- YAML to JSON ----------------------------------------------------------------------------

// A plain (unquoted) scalar as YAML 1.2's core schema reads it, except that booleans stay words:
// `gc: off` must keep the value "off" as written (yaml-cpp would also read off/on/yes/no as
// booleans). Quoted scalars are always strings, so `"16"` is not the integer 16.
Json scalar_to_json(const YAML::Node& node) {
  const std::string& text = node.Scalar();
  if (node.Tag() == "!") return text;  // quoted
  if (text.empty() || text == "~" || text == "null" || text == "Null" || text == "NULL") {
    return nullptr;
  }
  const char* begin = text.data();
  const char* end = text.data() + text.size();
  const char* digits = (*begin == '+') ? begin + 1 : begin;             // from_chars refuses a '+'
  if (digits != begin && digits != end && *digits == '-') return text;  // "+-1" is no number
  int64_t integer = 0;
  auto [int_end, int_error] = std::from_chars(digits, end, integer);
  if (int_error == std::errc() && int_end == end && digits != end) return integer;
  // Only decimal notation counts as a number: from_chars alone would also take "inf" and "nan",
  // which JSON cannot hold.
  const bool decimal = std::all_of(digits, end, [](char c) {
    return (c >= '0' && c <= '9') || c == '.' || c == 'e' || c == 'E' || c == '-' || c == '+';
  });
  double real = 0;
  auto [real_end, real_error] = std::from_chars(digits, end, real);
  if (decimal && real_error == std::errc() && real_end == end && digits != end) return real;
  return text;
}

Json to_json(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Scalar:
      return scalar_to_json(node);
    case YAML::NodeType::Sequence: {
      Json out = Json::array();
      for (const YAML::Node& item : node) out.push_back(to_json(item));
      return out;
    }
    case YAML::NodeType::Map: {
      Json out = Json::object();
      for (const auto& entry : node) out[entry.first.Scalar()] = to_json(entry.second);
      return out;
    }
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined:
      break;
  }
  return nullptr;
}

// One key of a mapping, with its nodes (for line numbers) and its line.
struct Entry {
  std::string key;
  YAML::Node value;
  int line = 0;        // the key's line
  int value_line = 0;  // the value's line (the key's when the value is empty)
};

int line_of(const YAML::Node& node, int fallback) {
  const YAML::Mark mark = node.Mark();
  return mark.is_null() ? fallback : mark.line + 1;
}

bool valid_name(const std::string& name) {
  return !name.empty() && std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '.' || c == '-';
  });
}

std::string dotted(const std::string& prefix, std::string_view key) {
  return prefix.empty() ? std::string(key) : prefix + "." + std::string(key);
}

std::string indexed(const std::string& prefix, size_t index) {
  return prefix + "[" + std::to_string(index) + "]";
}

std::string metric_names() {
  std::vector<std::string_view> names;
  for (const Field& field : kMetricFields) names.push_back(field.name);
  return join(names);
}

// `object` with `key` set back to what the spec said (kept in `key`_as_written), so that hashes
// of it do not depend on the directory the spec was loaded from.
Json as_written(Json object, const std::string& key) {
  const std::string written = key + "_as_written";
  if (object.is_object() && object.contains(written)) {
    object[key] = object[written];
    object.erase(written);
  }
  return object;
}

// ---- Expansion -------------------------------------------------------------------------------

bool is_axis(const PartSpec& part, const std::string& key) {
  return std::any_of(part.axes.begin(), part.axes.end(),
                     [&key](const auto& axis) { return axis.first == key; });
}

bool matches(const Json& config, const Json& entry) {
  for (const auto& [key, value] : entry.items()) {
    if (!config.contains(key) || config[key] != value) return false;
  }
  return true;
}

// The distinct configs of one part, in order: the product of the axes (first axis slowest,
// like nested loops written in spec order) minus excluded rows, then the include entries.
std::vector<Json> part_configs(const PartSpec& part) {
  std::vector<Json> configs;
  std::set<std::string> seen;
  auto add = [&](Json config) {
    if (seen.insert(canonical_json(config)).second) configs.push_back(std::move(config));
  };
  std::vector<size_t> index(part.axes.size(), 0);
  for (;;) {
    Json config = part.fixed;
    for (size_t i = 0; i < part.axes.size(); ++i) {
      config[part.axes[i].first] = part.axes[i].second[index[i]];
    }
    const bool excluded = std::any_of(part.exclude.begin(), part.exclude.end(),
                                      [&](const Json& entry) { return matches(config, entry); });
    if (!excluded) add(std::move(config));
    // Odometer: the last axis turns fastest. With no axes there is exactly one combination.
    size_t axis = part.axes.size();
    while (axis > 0 && ++index[axis - 1] == part.axes[axis - 1].second.size()) {
      index[axis - 1] = 0;
      --axis;
    }
    if (axis == 0) break;
  }
  for (const Json& entry : part.include) {
    Json config = part.fixed;
    config.update(entry);
    add(std::move(config));
  }
  return configs;
}

// ---- The parser ------------------------------------------------------------------------------

// One key of `data:`, kept with its place until the part's and the defaults' are merged.
struct DataItem {
  Json value;
  int line = 0;
  std::string key;  // key path, for messages
};

// The nodes of one part: the top level of a one-part spec, or one `parts:` entry.
struct PartNodes {
  std::string prefix;  // "" or "parts[1]": prepended to key paths in messages
  int line = 1;        // where the part starts, for messages about missing keys
  std::map<std::string, Entry> keys;
};

// ---- Overrides from the command line (SpecOverrides) -----------------------------------------

constexpr std::string_view kSettableTopKeys[] = {
    "name",     "description",     "repeats",        "timeout_s", "device",
    "workload", "memory_limit_mb", "device_profile", "tokenizer", "allow_special"};
constexpr std::string_view kDottedTopKeys[] = {"model", "data"};

[[noreturn]] void override_fail(const std::string& flag, const std::string& item,
                                const std::string& message) {
  throw std::invalid_argument(flag + " " + item + ": " + message);
}

std::pair<std::string, std::string> split_assignment(const std::string& flag,
                                                     const std::string& item) {
  const size_t eq = item.find('=');
  if (eq == std::string::npos || eq == 0) override_fail(flag, item, "expected KEY=VALUE");
  return {item.substr(0, eq), item.substr(eq + 1)};
}

YAML::Node override_value(const std::string& item, const std::string& text) {
  try {
    return YAML::Load(text);
  } catch (const YAML::Exception& e) {
    override_fail("--set", item, "the value is not YAML: " + e.msg);
  }
}

// The parts of a spec as nodes: `parts:` entries, or the spec itself for a single matrix.
std::vector<YAML::Node> part_nodes(YAML::Node& root) {
  std::vector<YAML::Node> parts;
  if (root["parts"] && root["parts"].IsSequence()) {
    for (YAML::Node part : root["parts"]) parts.push_back(part);
  } else {
    parts.push_back(root);
  }
  return parts;
}

// none when the part names no workload, or none that exists (the parse reports it).
std::optional<Workload> part_workload(const YAML::Node& root, const YAML::Node& part) {
  if (part["workload"] && part["workload"].IsScalar()) {
    return parse_workload(part["workload"].Scalar());
  }
  if (root["workload"] && root["workload"].IsScalar()) {
    return parse_workload(root["workload"].Scalar());
  }
  return std::nullopt;
}

// A config key's value (or each value of a list), checked against the registry.
void check_override(const std::string& item, const ConfigKey& key, const YAML::Node& value) {
  const bool list_key = key.kind == Kind::kWordList;
  if (value.IsSequence() && !list_key) {
    if (value.size() == 0) override_fail("--set", item, "an axis needs at least one value");
    for (const YAML::Node& v : value) {
      const std::string problem = check_value(key, to_json(v));
      if (!problem.empty()) override_fail("--set", item, std::string(key.name) + ": " + problem);
    }
    return;
  }
  const std::string problem = check_value(key, to_json(value));
  if (!problem.empty()) override_fail("--set", item, std::string(key.name) + ": " + problem);
}

// Sets a config key in every part whose workload has it: the axis's values when it is an axis
// (a scalar makes it an axis of one value, so tables keep their columns), else a fixed value;
// a list makes it an axis.
void set_config_key(YAML::Node& root, const std::string& item, const ConfigKey& key,
                    const YAML::Node& value) {
  const std::string name(key.name);
  const bool axis_value = value.IsSequence() && key.kind != Kind::kWordList;
  int applied = 0;
  for (YAML::Node part : part_nodes(root)) {
    const std::optional<Workload> workload = part_workload(root, part);
    if (!workload || !applies(key.scope, *workload)) continue;
    ++applied;
    // Clones: a yaml-cpp node assigned in two places is one node, and assigning to a handle
    // rebinds what it aliases.
    if (part["matrix"] && part["matrix"][name]) {
      if (axis_value) {
        part["matrix"][name] = YAML::Clone(value);
      } else {
        YAML::Node one(YAML::NodeType::Sequence);
        one.push_back(YAML::Clone(value));
        part["matrix"][name] = one;
      }
    } else if (axis_value) {
      if (part["fixed"] && part["fixed"][name]) part["fixed"].remove(name);
      part["matrix"][name] = YAML::Clone(value);
    } else {
      part["fixed"][name] = YAML::Clone(value);
    }
  }
  // A default in the top-level fixed of a spec with parts.
  if (root["parts"] && root["fixed"] && root["fixed"][name] && !axis_value) {
    root["fixed"][name] = YAML::Clone(value);
    ++applied;
  }
  if (applied == 0)
    override_fail("--set", item,
                  name + " is not a key of this spec's workloads (keys of finetune: " +
                      known_keys(Workload::kFinetune) +
                      "; generate: " + known_keys(Workload::kGenerate) + ")");
}

void apply_set(YAML::Node& root, const std::string& item) {
  const auto [key, text] = split_assignment("--set", item);
  const YAML::Node value = override_value(item, text);
  if (const size_t dot = key.find('.'); dot != std::string::npos) {
    const std::string head = key.substr(0, dot);
    if (!contains(kDottedTopKeys, head))
      override_fail("--set", item, "only model.KEY and data.KEY take a dot");
    root[head][key.substr(dot + 1)] = value;
    return;
  }
  if (contains(kSettableTopKeys, key)) {
    root[key] = value;
    return;
  }
  if (const ConfigKey* config_key = find_config_key(key)) {
    check_override(item, *config_key, value);
    set_config_key(root, item, *config_key, value);
    return;
  }
  override_fail("--set", item,
                "unknown key " + key + " (top-level: " + join(kSettableTopKeys) +
                    "; model.KEY, data.KEY; config keys: run `harness keys`)");
}

void apply_only(YAML::Node& root, const std::string& item) {
  const auto [axis, list] = split_assignment("--only", item);
  std::vector<std::string> wanted;
  for (size_t start = 0; start <= list.size();) {
    size_t comma = list.find(',', start);
    if (comma == std::string::npos) comma = list.size();
    std::string value = list.substr(start, comma - start);
    value.erase(0, value.find_first_not_of(' '));
    value.erase(value.find_last_not_of(' ') + 1);
    if (value.empty()) override_fail("--only", item, "an empty value");
    wanted.push_back(value);
    start = comma + 1;
  }
  std::set<std::string> found;
  bool is_axis_anywhere = false;
  for (YAML::Node part : part_nodes(root)) {
    if (!part["matrix"] || !part["matrix"][axis] || !part["matrix"][axis].IsSequence()) continue;
    is_axis_anywhere = true;
    YAML::Node kept(YAML::NodeType::Sequence);
    std::vector<std::string> had;
    for (const YAML::Node& v : part["matrix"][axis]) {
      const std::string text = v.IsScalar() ? v.Scalar() : YAML::Dump(v);
      had.push_back(text);
      if (contains(wanted, text)) {
        kept.push_back(v);
        found.insert(text);
      }
    }
    if (kept.size() == 0)
      override_fail("--only", item,
                    "keeps no value of axis " + axis + " (its values: " + join(had) + ")");
    part["matrix"][axis] = kept;
  }
  if (!is_axis_anywhere) override_fail("--only", item, axis + " is not a matrix axis of the spec");
  for (const std::string& value : wanted)
    if (!found.contains(value))
      override_fail("--only", item, value + " is not a value of axis " + axis);
}

// What the stored spec text records of the overrides, as YAML comments.
std::string overrides_comment(const SpecOverrides& overrides) {
  if (overrides.empty()) return "";
  std::string out = "\n# harness command-line overrides:\n";
  for (const std::string& item : overrides.set) out += "#   --set " + item + "\n";
  for (const std::string& item : overrides.only) out += "#   --only " + item + "\n";
  return out;
}

class Parser {
 public:
  explicit Parser(std::string path) : path_(std::move(path)) {
    std::error_code error;
    const fs::path spec_path = path_.empty() ? fs::path(".") : fs::absolute(path_, error);
    spec_dir_ = spec_path.parent_path();
  }

  Spec parse(const std::string& text, const SpecOverrides& overrides);

 private:
  [[noreturn]] void fail(int line, const std::string& key, const std::string& message) const {
    throw std::invalid_argument(path_ + ":" + std::to_string(line) + ": " + key + ": " + message);
  }

  std::vector<Entry> entries(const YAML::Node& map, const std::string& prefix) const;
  std::map<std::string, Entry> keyed(const YAML::Node& map, const std::string& prefix,
                                     const std::string& what,
                                     const std::vector<std::string_view>& allowed) const;
  std::string word(const Entry& entry, const std::string& key) const;
  std::string string_value(const Entry& entry, const std::string& key) const;
  std::vector<std::string> string_list(const Entry& entry, const std::string& key) const;
  const YAML::Node& sequence(const Entry& entry, const std::string& key) const;
  const YAML::Node& mapping(const Entry& entry, const std::string& key) const;
  Json checked(const Entry& entry, const std::string& key, const KeyRule& rule) const;
  std::optional<fs::path> resolve(const std::string& written) const;

  // A config key of `workload`, checked; returns its rule.
  const KeyRule& config_key(const Entry& entry, const std::string& key, Workload workload,
                            const std::string& note) const;
  // A config value, checked against its rule and the device.
  Json config_value(const KeyRule& rule, const YAML::Node& node, int line,
                    const std::string& key) const;

  // The top-level entries that are neither the model nor a part: name, device, repeats, ...
  void parse_settings(const std::map<std::string, Entry>& top, Spec& spec);
  void parse_model(const Entry& entry, Spec& spec) const;
  // `tokenizer` and `allow_special`, after the model (whose vocabulary must hold the tokenizer's).
  void parse_tokenizer(const std::map<std::string, Entry>& top, Spec& spec) const;
  void parse_parts(const std::map<std::string, Entry>& top, Spec& spec) const;
  PartSpec parse_part(const PartNodes& part, const PartNodes& defaults) const;
  // The label of the last part of `spec` (parsed from `part`) is no earlier part's.
  void check_label_is_new(const PartNodes& part, const Spec& spec) const;
  Workload parse_workload(const PartNodes& part) const;
  void parse_matrix(const PartNodes& part, PartSpec& out) const;
  // `default_for` is the part that top-level defaults are merged into ("" for a part's own).
  void parse_fixed(const PartNodes& nodes, const std::string& default_for, PartSpec& out) const;
  std::vector<Json> parse_entries(const PartNodes& part, const std::string& name,
                                  const PartSpec& out) const;
  // The absolute path of an existing data file.
  std::string data_file(const DataItem& item) const;
  Json parse_data(const PartNodes& part, const PartNodes& defaults, Workload workload) const;
  TableSpec parse_table(const YAML::Node& node, const std::string& key, const Spec& spec) const;
  std::vector<const PartSpec*> table_parts(const std::map<std::string, Entry>& keys,
                                           const std::string& key, const Spec& spec,
                                           TableSpec& table) const;

  std::string path_;
  fs::path spec_dir_;
  std::string device_ = "cpu";
  // `--set device=...`: a GPU study run on the CPU keeps its fp16 cells, as skipped runs.
  bool device_overridden_ = false;
};

std::vector<Entry> Parser::entries(const YAML::Node& map, const std::string& prefix) const {
  std::vector<Entry> out;
  std::set<std::string> seen;
  for (const auto& item : map) {
    const int line = line_of(item.first, 1);
    if (!item.first.IsScalar()) fail(line, prefix.empty() ? "spec" : prefix, "keys must be words");
    Entry entry{item.first.Scalar(), item.second, line, line};
    // An empty value (`key:`) has no position of its own; yaml-cpp reports the next token's.
    if (!item.second.IsNull()) entry.value_line = line_of(item.second, line);
    // yaml-cpp keeps both entries of a repeated key and a lookup finds the first: the second
    // would be silently ignored.
    if (!seen.insert(entry.key).second) {
      fail(line, dotted(prefix, entry.key), "duplicate key");
    }
    out.push_back(std::move(entry));
  }
  return out;
}

std::map<std::string, Entry> Parser::keyed(const YAML::Node& map, const std::string& prefix,
                                           const std::string& what,
                                           const std::vector<std::string_view>& allowed) const {
  std::map<std::string, Entry> out;
  for (Entry& entry : entries(map, prefix)) {
    if (!contains(allowed, entry.key)) {
      fail(entry.line, dotted(prefix, entry.key),
           "unknown key (" + what + " keys: " + join(allowed) + ")");
    }
    std::string key = entry.key;
    out.emplace(std::move(key), std::move(entry));
  }
  return out;
}

std::string Parser::string_value(const Entry& entry, const std::string& key) const {
  const Json value = to_json(entry.value);
  if (!value.is_string()) fail(entry.value_line, key, "expected a string, got " + show(value));
  return value.get<std::string>();
}

std::string Parser::word(const Entry& entry, const std::string& key) const {
  if (!entry.value.IsScalar()) fail(entry.value_line, key, "expected a word");
  return entry.value.Scalar();
}

const YAML::Node& Parser::sequence(const Entry& entry, const std::string& key) const {
  if (!entry.value.IsSequence()) fail(entry.value_line, key, "expected a list");
  return entry.value;
}

const YAML::Node& Parser::mapping(const Entry& entry, const std::string& key) const {
  if (!entry.value.IsMap()) fail(entry.value_line, key, "expected a mapping of keys to values");
  return entry.value;
}

std::vector<std::string> Parser::string_list(const Entry& entry, const std::string& key) const {
  std::vector<std::string> out;
  for (const YAML::Node& item : sequence(entry, key)) {
    const Json value = to_json(item);
    const int line = line_of(item, entry.value_line);
    if (!value.is_string()) fail(line, key, "expected a word, got " + show(value));
    if (contains(out, value.get<std::string>())) fail(line, key, "duplicate " + show(value));
    out.push_back(value.get<std::string>());
  }
  if (out.empty()) fail(entry.value_line, key, "the list is empty");
  return out;
}

Json Parser::checked(const Entry& entry, const std::string& key, const KeyRule& rule) const {
  Json value = to_json(entry.value);
  const std::string problem = check_value(rule, value);
  if (!problem.empty()) fail(entry.value_line, key, problem);
  return value;
}

std::optional<fs::path> Parser::resolve(const std::string& written) const {
  std::error_code error;
  const fs::path path(written);
  if (path.is_absolute()) {
    if (fs::exists(path, error)) return path.lexically_normal();
    return std::nullopt;
  }
  // The current directory first: specs name files relative to the checkout's root
  // (experiments/data/...), and are run from there; then next to the spec, for specs that travel
  // with their data.
  for (const fs::path& base : {fs::current_path(error), spec_dir_}) {
    const fs::path candidate = base / path;
    if (fs::exists(candidate, error)) return fs::absolute(candidate, error).lexically_normal();
  }
  return std::nullopt;
}

const KeyRule& Parser::config_key(const Entry& entry, const std::string& key, Workload workload,
                                  const std::string& note) const {
  const std::string name(to_string(workload));
  const KeyRule* rule = find_config_key(entry.key);
  if (rule == nullptr) {
    fail(entry.line, key,
         "unknown config key" + note + " (keys for " + name + ": " + known_keys(workload) + ")");
  }
  if (!applies(rule->scope, workload)) {
    const std::string only = rule->scope == Scope::kFinetune ? "finetune" : "generate";
    fail(entry.line, key, "only applies to workload " + only + ", not " + name + note);
  }
  return *rule;
}

Json Parser::config_value(const KeyRule& rule, const YAML::Node& node, int line,
                          const std::string& key) const {
  Json value = to_json(node);
  const std::string problem = check_value(rule, value);
  if (!problem.empty()) fail(line, key, problem);
  // fp16 matrix products do not exist on CPU (and CPU autocast takes bf16 only): such a run can
  // only fail, so it is refused before anything starts.
  if ((rule.name == "mp" || rule.name == "dtype") && value == "fp16" && device_ == "cpu" &&
      !device_overridden_) {
    fail(line, key, "fp16 needs a CUDA device; use bf16 on CPU");
  }
  return value;
}

void Parser::parse_model(const Entry& entry, Spec& spec) const {
  const auto keys = keyed(mapping(entry, "model"), "model", "model",
                          {std::begin(kModelKeys), std::end(kModelKeys)});
  Json model = Json::object();
  if (auto it = keys.find("preset"); it != keys.end()) {
    const std::string preset = string_value(it->second, "model.preset");
    const std::vector<std::string> presets = preset_names();
    if (!contains(presets, preset)) {
      fail(it->second.value_line, "model.preset",
           "unknown preset \"" + preset + "\" (expected " + join(presets) + ")");
    }
    model["preset"] = preset;
  }
  std::string weights = "random";
  // `path: DIR` names a checkpoint directory (HF or Meta layout, detected by the worker); it is
  // `weights: DIR` under the name users look for.
  auto weights_it = keys.find("weights");
  const char* weights_key = "model.weights";
  if (auto path_it = keys.find("path"); path_it != keys.end()) {
    if (weights_it != keys.end()) {
      fail(path_it->second.line, "model.path",
           "give either path (a checkpoint directory) or weights");
    }
    weights_it = path_it;
    weights_key = "model.path";
    const std::optional<fs::path> dir = resolve(string_value(path_it->second, weights_key));
    if (dir && !fs::is_directory(*dir)) {
      fail(path_it->second.value_line, weights_key,
           "\"" + dir->string() + "\" is not a directory (expected a HF or Meta checkpoint)");
    }
  }
  if (auto it = weights_it; it != keys.end()) {
    weights = string_value(it->second, weights_key);
    if (weights != "random") {
      const std::optional<fs::path> found = resolve(weights);
      if (!found) {
        fail(it->second.value_line, weights_key,
             "not found: \"" + weights + "\" (looked in the current directory and in " +
                 spec_dir_.string() + ")");
      }
      model["weights_as_written"] = weights;
      weights = found->string();
    }
  }
  if (weights == "random" && !model.contains("preset")) {
    fail(entry.line, "model", "needs a preset (random weights need a shape) or a weights path");
  }
  model["weights"] = weights;
  model["seed"] = 0;
  if (auto it = keys.find("seed"); it != keys.end()) {
    model["seed"] = checked(it->second, "model.seed", KeyRule{.name = "seed"});
  }
  spec.model = std::move(model);
}

namespace {

// The model's vocabulary size, when it can be known without loading weights: a preset's, or the
// `vocab_size` of a checkpoint directory's config.json (HF) or params.json (Meta); 0 otherwise.
int64_t model_vocab_size(const Json& model) {
  const std::string weights = model.value("weights", std::string("random"));
  std::error_code error;
  if (weights != "random" && fs::is_directory(weights, error)) {
    for (const char* name : {"config.json", "params.json"}) {
      const fs::path file = fs::path(weights) / name;
      if (!fs::exists(file, error)) continue;
      try {
        const Json config = Json::parse(read_file(file.string()));
        if (config.contains("vocab_size") && config["vocab_size"].is_number_integer() &&
            config["vocab_size"].get<int64_t>() > 0) {
          return config["vocab_size"].get<int64_t>();
        }
      } catch (const std::exception&) {
      }
    }
    return 0;
  }
  if (model.contains("preset"))
    return config_from_name(model["preset"].get<std::string>()).vocab_size;
  return 0;
}

}  // namespace

void Parser::parse_tokenizer(const std::map<std::string, Entry>& top, Spec& spec) const {
  if (auto it = top.find("allow_special"); it != top.end()) {
    const Json value = to_json(it->second.value);
    if (value == "true" || value == true) {
      spec.allow_special = true;
    } else if (value == "false" || value == false) {
      spec.allow_special = false;
    } else {
      fail(it->second.value_line, "allow_special", "expected true or false, got " + show(value));
    }
  }
  auto it = top.find("tokenizer");
  if (it == top.end()) return;
  const Entry& entry = it->second;
  const std::string written = string_value(entry, "tokenizer");
  const std::optional<fs::path> found = resolve(written);
  if (!found || fs::is_directory(*found)) {
    fail(entry.value_line, "tokenizer",
         "file not found: \"" + written + "\" (looked in the current directory and in " +
             spec_dir_.string() + ")");
  }
  spec.tokenizer = found->string();
  spec.tokenizer_as_written = written;
  // The programs that link the tokenizers (harness, test_core) register a loader; others skip.
  if (!have_tokenizer_loader()) return;
  std::unique_ptr<TextTokenizer> tokenizer;
  try {
    tokenizer = load_text_tokenizer(spec.tokenizer);
  } catch (const std::exception& e) {
    fail(entry.value_line, "tokenizer", e.what());
  }
  const int64_t vocab = model_vocab_size(spec.model);
  if (vocab > 0 && vocab < tokenizer->vocab_size()) {
    fail(entry.value_line, "tokenizer",
         "its vocabulary (" + std::to_string(tokenizer->vocab_size()) +
             " tokens) does not fit the model's (vocab_size " + std::to_string(vocab) + ")");
  }
}

std::string Parser::data_file(const DataItem& item) const {
  if (!item.value.is_string()) {
    fail(item.line, item.key, "expected a file path, got " + show(item.value));
  }
  const std::string written = item.value.get<std::string>();
  const std::optional<fs::path> found = resolve(written);
  if (!found || fs::is_directory(*found)) {
    fail(item.line, item.key,
         "file not found: \"" + written + "\" (looked in the current directory and in " +
             spec_dir_.string() + ")");
  }
  return found->string();
}

Json Parser::parse_data(const PartNodes& part, const PartNodes& defaults, Workload workload) const {
  // Key -> (value, line, key path): the defaults' keys, then the part's over them.
  std::map<std::string, DataItem> items;
  int data_line = part.line;
  std::string data_key = dotted(part.prefix, "data");
  auto collect = [&](const PartNodes& nodes) {
    auto it = nodes.keys.find("data");
    if (it == nodes.keys.end()) return;
    const std::string key = dotted(nodes.prefix, "data");
    std::map<std::string, DataItem> level;
    for (const Entry& entry : entries(mapping(it->second, key), key)) {
      level[entry.key] = DataItem{to_json(entry.value), entry.value_line, dotted(key, entry.key)};
    }
    // A part that names another format starts afresh: merging a random source over an alpaca
    // default would leave it with a path it cannot use.
    if (level.contains("format") && items.contains("format") &&
        level.at("format").value != items.at("format").value) {
      items.clear();
    }
    for (auto& [name, item] : level) items[name] = std::move(item);
    data_line = it->second.line;
    data_key = key;
  };
  collect(defaults);
  collect(part);
  if (items.empty()) {
    if (workload == Workload::kFinetune) {
      fail(data_line, data_key,
           "required for workload finetune: {format: alpaca, path: FILE} or {format: random, "
           "seq_len: N}");
    }
    return Json::object();
  }

  auto format_it = items.find("format");
  if (format_it == items.end()) fail(data_line, data_key + ".format", "required (alpaca | random)");
  Json data = Json::object();
  for (const auto& [name, item] : items) {
    if (name == "path") continue;
    const KeyRule* rule = find_rule(data_rules(), name);
    if (rule == nullptr) {
      fail(item.line, item.key,
           "unknown key in data (expected format, path, samples, max_seq_len, "
           "seq_len)");
    }
    const std::string problem = check_value(*rule, item.value);
    if (!problem.empty()) fail(item.line, item.key, problem);
    data[name] = item.value;
  }
  const std::string format = data["format"].get<std::string>();
  auto path_it = items.find("path");
  if (format == "alpaca") {
    if (path_it == items.end()) fail(data_line, data_key + ".path", "required for format alpaca");
    data["path_as_written"] = path_it->second.value;
    data["path"] = data_file(path_it->second);
  } else if (path_it != items.end()) {
    fail(path_it->second.line, path_it->second.key, "only applies to format alpaca");
  }
  return data;
}

PartSpec Parser::parse_part(const PartNodes& part, const PartNodes& defaults) const {
  PartSpec out;
  if (auto it = part.keys.find("label"); it != part.keys.end()) {
    const std::string key = dotted(part.prefix, "label");
    out.label = string_value(it->second, key);
    if (!valid_name(out.label)) fail(it->second.value_line, key, "expected letters, digits, _ . -");
  }
  out.workload = parse_workload(part);
  // Matrix first: a default in the top-level `fixed` gives way to a part's axis of that name.
  parse_matrix(part, out);
  parse_fixed(defaults, part.prefix, out);
  parse_fixed(part, "", out);
  out.include = parse_entries(part, "include", out);
  out.exclude = parse_entries(part, "exclude", out);
  out.data = parse_data(part, defaults, out.workload);

  if (part_configs(out).empty()) {
    const auto it = part.keys.find("exclude");
    fail(it != part.keys.end() ? it->second.line : part.line, dotted(part.prefix, "exclude"),
         "excludes every combination of the matrix (0 runs)");
  }
  return out;
}

Workload Parser::parse_workload(const PartNodes& part) const {
  const std::string key = dotted(part.prefix, "workload");
  auto it = part.keys.find("workload");
  if (it == part.keys.end()) fail(part.line, key, "required (finetune | generate)");
  const std::string workload = word(it->second, key);
  const std::optional<Workload> parsed = hx::parse_workload(workload);
  if (!parsed) {
    fail(it->second.value_line, key,
         "unknown value \"" + workload + "\" (expected finetune, generate)");
  }
  return *parsed;
}

void Parser::parse_matrix(const PartNodes& part, PartSpec& out) const {
  auto it = part.keys.find("matrix");
  if (it == part.keys.end()) return;
  const std::string matrix_key = dotted(part.prefix, "matrix");
  for (const Entry& axis : entries(mapping(it->second, matrix_key), matrix_key)) {
    const std::string key = dotted(matrix_key, axis.key);
    const KeyRule& rule = config_key(axis, key, out.workload, "");
    if (!axis.value.IsSequence()) {
      fail(axis.value_line, key, "expected a list of values, e.g. [" + describe(rule) + "]");
    }
    std::vector<Json> values;
    for (const YAML::Node& item : axis.value) {
      const int line = line_of(item, axis.value_line);
      Json value = config_value(rule, item, line, key);
      if (std::find(values.begin(), values.end(), value) != values.end()) {
        fail(line, key, "duplicate value " + show(value));
      }
      values.push_back(std::move(value));
    }
    if (values.empty()) {
      fail(axis.value_line, key, "empty list: an axis needs at least one value");
    }
    out.axes.emplace_back(axis.key, std::move(values));
  }
}

void Parser::parse_fixed(const PartNodes& nodes, const std::string& default_for,
                         PartSpec& out) const {
  auto it = nodes.keys.find("fixed");
  if (it == nodes.keys.end()) return;
  const std::string fixed_key = dotted(nodes.prefix, "fixed");
  // A default's key path does not say which part it failed for.
  const std::string note = default_for.empty() ? "" : " (in " + default_for + ")";
  for (const Entry& entry : entries(mapping(it->second, fixed_key), fixed_key)) {
    const std::string key = dotted(fixed_key, entry.key);
    const KeyRule& rule = config_key(entry, key, out.workload, note);
    Json value = config_value(rule, entry.value, entry.value_line, key);
    if (is_axis(out, entry.key)) {
      if (!default_for.empty()) continue;
      fail(entry.line, key, "also a matrix axis; give it in fixed or in matrix, not both");
    }
    out.fixed[entry.key] = std::move(value);
  }
}

std::vector<Json> Parser::parse_entries(const PartNodes& part, const std::string& name,
                                        const PartSpec& out) const {
  std::vector<Json> result;
  auto it = part.keys.find(name);
  if (it == part.keys.end()) return result;
  const bool include = name == "include";
  const std::string list_key = dotted(part.prefix, name);
  size_t index = 0;
  for (const YAML::Node& item : sequence(it->second, list_key)) {
    const std::string item_key = indexed(list_key, index++);
    const int item_line = line_of(item, it->second.value_line);
    if (!item.IsMap()) fail(item_line, item_key, "expected a mapping of keys to values");
    Json entry = Json::object();
    for (const Entry& field : entries(item, item_key)) {
      const std::string key = dotted(item_key, field.key);
      const KeyRule& rule = config_key(field, key, out.workload, "");
      if (!is_axis(out, field.key) && !out.fixed.contains(field.key)) {
        fail(field.line, key, "not a matrix axis or fixed key of this part");
      }
      // Excluding an fp16 combination on CPU is just what a spec should say, so the device is
      // checked for include entries only.
      entry[field.key] = include ? config_value(rule, field.value, field.value_line, key)
                                 : checked(field, key, rule);
    }
    if (entry.empty()) {
      fail(item_line, item_key,
           include ? "empty entry" : "empty entry (it would exclude every run)");
    }
    for (const auto& [axis, values] : out.axes) {
      if (include && !entry.contains(axis)) {
        fail(item_line, dotted(item_key, axis),
             "missing: an include entry gives a value for every matrix axis");
      }
    }
    result.push_back(std::move(entry));
  }
  return result;
}

// The parts whose runs a table shows, as its `workload` and `part` keys select them.
std::vector<const PartSpec*> Parser::table_parts(const std::map<std::string, Entry>& keys,
                                                 const std::string& key, const Spec& spec,
                                                 TableSpec& table) const {
  std::vector<const PartSpec*> selected;
  for (const PartSpec& part : spec.parts) selected.push_back(&part);
  if (auto it = keys.find("workload"); it != keys.end()) {
    const std::string workload = word(it->second, dotted(key, "workload"));
    table.workload = hx::parse_workload(workload);
    if (!table.workload) {
      fail(it->second.value_line, dotted(key, "workload"),
           "unknown value \"" + workload + "\" (expected finetune, generate)");
    }
    std::erase_if(selected, [&](const PartSpec* p) { return p->workload != *table.workload; });
    if (selected.empty()) {
      fail(it->second.value_line, dotted(key, "workload"),
           "no part of this spec has workload " + workload);
    }
  }
  if (auto it = keys.find("part"); it != keys.end()) {
    table.part = string_value(it->second, dotted(key, "part"));
    std::vector<std::string> labels;
    for (const PartSpec& part : spec.parts) {
      if (!part.label.empty()) labels.push_back(part.label);
    }
    std::erase_if(selected, [&](const PartSpec* p) { return p->label != table.part; });
    if (selected.empty()) {
      fail(it->second.value_line, dotted(key, "part"),
           "no part labelled \"" + table.part + "\"" +
               (table.workload ? " with workload " + std::string(to_string(*table.workload)) : "") +
               " (labels: " + (labels.empty() ? "none" : join(labels)) + ")");
    }
  }
  return selected;
}

TableSpec Parser::parse_table(const YAML::Node& node, const std::string& key,
                              const Spec& spec) const {
  TableSpec table;
  table.line = line_of(node, 1);
  if (!node.IsMap()) fail(table.line, key, "expected a mapping (title, columns, rows, ...)");
  const auto keys = keyed(node, key, "table", {std::begin(kTableKeys), std::end(kTableKeys)});
  if (auto it = keys.find("title"); it != keys.end()) {
    table.title = string_value(it->second, dotted(key, "title"));
  }
  if (auto it = keys.find("kind"); it != keys.end()) {
    table.kind = word(it->second, dotted(key, "kind"));
    if (table.kind != "pivot" && table.kind != "arrows") {
      fail(it->second.value_line, dotted(key, "kind"),
           "unknown value \"" + table.kind + "\" (expected pivot, arrows)");
    }
  }

  const std::vector<const PartSpec*> selected = table_parts(keys, key, spec, table);

  auto columns_it = keys.find("columns");
  if (columns_it == keys.end()) fail(table.line, dotted(key, "columns"), "required (axis names)");
  std::vector<std::string> axes;
  for (const PartSpec* part : selected) {
    for (const auto& [axis, values] : part->axes) {
      if (!contains(axes, axis)) axes.push_back(axis);
    }
  }
  table.columns = string_list(columns_it->second, dotted(key, "columns"));
  for (const std::string& column : table.columns) {
    if (!contains(axes, column)) {
      fail(columns_it->second.value_line, dotted(key, "columns"),
           "\"" + column + "\" is not a matrix axis of the table's runs (axes: " +
               (axes.empty() ? "none" : join(axes)) + ")");
    }
  }

  auto rows_it = keys.find("rows");
  if (rows_it == keys.end()) fail(table.line, dotted(key, "rows"), "required (metric names)");
  table.rows = string_list(rows_it->second, dotted(key, "rows"));
  for (const std::string& row : table.rows) {
    // Metric names are an interface: the field table in fields.h is the one list of them.
    if (find_metric_field(row) == nullptr) {
      fail(rows_it->second.value_line, dotted(key, "rows"),
           "unknown metric \"" + row + "\" (expected " + metric_names() + ")");
    }
  }
  return table;
}

void Parser::parse_settings(const std::map<std::string, Entry>& top, Spec& spec) {
  auto find = [&top](const std::string& key) -> const Entry* {
    auto it = top.find(key);
    return it == top.end() ? nullptr : &it->second;
  };
  const Entry* name = find("name");
  if (name == nullptr) fail(1, "name", "required (letters, digits, _ . -)");
  spec.name = string_value(*name, "name");
  if (!valid_name(spec.name)) {
    fail(name->value_line, "name", "\"" + spec.name + "\": expected letters, digits, _ . -");
  }
  if (const Entry* description = find("description")) string_value(*description, "description");

  if (const Entry* device = find("device")) {
    spec.device = word(*device, "device");
    if (spec.device != "cpu" && spec.device != "cuda") {
      fail(device->value_line, "device",
           "unknown value \"" + spec.device + "\" (expected cpu, cuda)");
    }
  }
  device_ = spec.device;  // config values are checked against it
  if (const Entry* repeats = find("repeats")) {
    spec.repeats = checked(*repeats, "repeats", {.name = "repeats", .lo = kAtLeast1}).get<int>();
  }
  if (const Entry* timeout = find("timeout_s")) {
    spec.timeout_s =
        checked(*timeout, "timeout_s", {.name = "timeout_s", .kind = Kind::kNumber, .lo = kAbove0})
            .get<double>();
  }
  if (const Entry* limit = find("memory_limit_mb")) {
    spec.memory_limit_mb =
        checked(*limit, "memory_limit_mb", {.name = "memory_limit_mb", .lo = kAtLeast0})
            .get<int64_t>();
  }
  if (const Entry* profile = find("device_profile")) {
    spec.device_profile = word(*profile, "device_profile");
    const DeviceProfile* known = find_device_profile(spec.device_profile);
    if (known == nullptr) {
      fail(profile->value_line, "device_profile",
           "unknown profile \"" + spec.device_profile + "\" (expected " + device_profile_keys() +
               ")");
    }
    // The profile's memory is the cap unless the spec sets its own.
    if (find("memory_limit_mb") == nullptr) spec.memory_limit_mb = known->memory_mb;
  }
}

void Parser::check_label_is_new(const PartNodes& part, const Spec& spec) const {
  const std::string& label = spec.parts.back().label;
  for (size_t i = 0; i + 1 < spec.parts.size() && !label.empty(); ++i) {
    if (spec.parts[i].label == label) {
      fail(part.keys.at("label").value_line, dotted(part.prefix, "label"),
           "\"" + label + "\" is already the label of " + indexed("parts", i));
    }
  }
}

void Parser::parse_parts(const std::map<std::string, Entry>& top, Spec& spec) const {
  auto find = [&top](const std::string& key) -> const Entry* {
    auto it = top.find(key);
    return it == top.end() ? nullptr : &it->second;
  };
  const Entry* parts = find("parts");
  const Entry* workload = find("workload");
  if (parts != nullptr && workload != nullptr) {
    fail(parts->line, "parts", "give either a top-level workload (one part) or parts, not both");
  }
  if (parts == nullptr && workload == nullptr) {
    fail(1, "workload", "required (finetune | generate), or a parts: list");
  }
  if (parts == nullptr) {
    PartNodes part;
    for (const auto& [key, entry] : top) {
      if (contains(kPartKeys, key)) part.keys.emplace(key, entry);
    }
    spec.parts.push_back(parse_part(part, PartNodes{}));
    return;
  }

  for (const char* key : {"matrix", "include", "exclude"}) {
    if (const Entry* entry = find(key)) {
      fail(entry->line, entry->key, "with parts:, give it inside each part");
    }
  }
  PartNodes defaults;
  for (const char* key : {"data", "fixed"}) {
    if (const Entry* entry = find(key)) defaults.keys.emplace(key, *entry);
  }
  size_t index = 0;
  for (const YAML::Node& node : sequence(*parts, "parts")) {
    PartNodes part;
    part.prefix = indexed("parts", index++);
    part.line = line_of(node, parts->value_line);
    if (!node.IsMap()) fail(part.line, part.prefix, "expected a mapping (workload, matrix, ...)");
    part.keys = keyed(node, part.prefix, "part", {std::begin(kPartKeys), std::end(kPartKeys)});
    spec.parts.push_back(parse_part(part, defaults));
    check_label_is_new(part, spec);
  }
  if (spec.parts.empty()) fail(parts->value_line, "parts", "the list is empty");
}

Spec Parser::parse(const std::string& text, const SpecOverrides& overrides) {
  Spec spec;
  spec.path = path_;
  spec.text = text + overrides_comment(overrides);

  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    fail(e.mark.is_null() ? 1 : e.mark.line + 1, "YAML syntax error", e.msg);
  }
  if (!root.IsMap()) fail(1, "spec", "expected a mapping of keys (name, model, workload, ...)");
  for (const std::string& item : overrides.set) {
    apply_set(root, item);
    if (item.rfind("device=", 0) == 0) device_overridden_ = true;
  }
  for (const std::string& item : overrides.only) apply_only(root, item);
  const auto top = keyed(root, "", "top-level", {std::begin(kTopKeys), std::end(kTopKeys)});
  parse_settings(top, spec);
  auto model = top.find("model");
  if (model == top.end()) fail(1, "model", "required: {preset: NAME} or {weights: PATH}");
  parse_model(model->second, spec);
  parse_tokenizer(top, spec);
  parse_parts(top, spec);

  if (auto tables = top.find("tables"); tables != top.end()) {
    size_t index = 0;
    for (const YAML::Node& node : sequence(tables->second, "tables")) {
      spec.tables.push_back(parse_table(node, indexed("tables", index++), spec));
    }
  }
  return spec;
}

}  // namespace

Spec load_spec(const std::string& path, const SpecOverrides& overrides) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::invalid_argument(path + ": cannot open spec");
  std::ostringstream text;
  text << in.rdbuf();
  return parse_spec(text.str(), path, overrides);
}

Spec parse_spec(const std::string& text, const std::string& path, const SpecOverrides& overrides) {
  return Parser(path).parse(text, overrides);
}

std::vector<RunConfig> expand(const Spec& spec) {
  std::vector<RunConfig> runs;
  std::set<std::string> ids;
  for (size_t p = 0; p < spec.parts.size(); ++p) {
    const PartSpec& part = spec.parts[p];
    for (const Json& config : part_configs(part)) {
      const std::string canonical = canonical_json(config);
      for (int repeat = 0; repeat < spec.repeats; ++repeat) {
        RunConfig run;
        run.run_id = make_run_id(spec, part, canonical, repeat);
        // The id is the database's primary key: a run that two parts share is one run.
        if (!ids.insert(run.run_id).second) continue;
        run.repeat = repeat;
        run.workload = part.workload;
        run.config = config;
        run.canonical = canonical;
        run.part = static_cast<int>(p);
        if (const DeviceProfile* profile = find_device_profile(spec.device_profile);
            profile != nullptr && !profile_has_bf16(*profile) &&
            (config.value("mp", "") == "bf16" || config.value("dtype", "") == "bf16")) {
          run.skip_reason = std::string(profile->gpu_name) + " has no bf16 arithmetic";
        }
        // Only through `--set device=cpu` (a spec that says cpu is refused): fp16 needs CUDA.
        if (spec.device == "cpu" &&
            (config.value("mp", "") == "fp16" || config.value("dtype", "") == "fp16")) {
          run.skip_reason = "fp16 needs a CUDA device (device cpu set on the command line)";
        }
        runs.push_back(std::move(run));
      }
    }
  }
  return runs;
}

// nlohmann's object is a std::map, so dump() sorts keys; with no indent it writes no spaces, and
// doubles in their shortest round-trip form (1e-05, 0.05, 32.0), the same on every platform.
std::string canonical_json(const Json& value) { return value.dump(); }

std::string make_run_id(const Spec& spec, const PartSpec& part, const std::string& canonical,
                        int repeat) {
  Json context = {
      {"model", as_written(spec.model, "weights")}, {"device", spec.device},
      {"memory_limit_mb", spec.memory_limit_mb},    {"workload", part.workload},
      {"data", as_written(part.data, "path")},
  };
  // Only when set, so that the run ids of specs without a profile stay as they were.
  if (!spec.device_profile.empty()) context["device_profile"] = spec.device_profile;
  if (!spec.tokenizer.empty()) {
    context["tokenizer"] = spec.tokenizer_as_written;
    context["allow_special"] = spec.allow_special;
  }
  return fnv1a64_hex(spec.name + "\n" + canonical_json(context) + "\n" + canonical + "\n" +
                     std::to_string(repeat));
}

}  // namespace hx
