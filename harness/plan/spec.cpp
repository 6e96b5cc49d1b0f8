#include "harness/plan/spec.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string_view>
#include <system_error>

#include "harness/plan/config_keys.h"
#include "harness/plan/device_profiles.h"
#include "harness/plan/fields.h"
#include "harness/plan/hash.h"
#include "harness/plan/pretokenize.h"
#include "harness/plan/words.h"
#include "harness/store/json_io.h"
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
      {.name = "format", .kind = Kind::kWord, .words = {"alpaca", "random", "tokens"}},
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

const KeyRule* find_rule(const std::vector<KeyRule>& rules, std::string_view name) {
  for (const KeyRule& rule : rules) {
    if (rule.name == name) return &rule;
  }
  return nullptr;
}

// The length of the well-formed UTF-8 sequence that begins at text[i] (overlongs, surrogates and
// code points above U+10FFFF are not), or 0.
size_t utf8_sequence_at(std::string_view text, size_t i) {
  const auto c = static_cast<unsigned char>(text[i]);
  const size_t len = c < 0x80             ? 1
                     : (c & 0xE0) == 0xC0 ? 2
                     : (c & 0xF0) == 0xE0 ? 3
                     : (c & 0xF8) == 0xF0 ? 4
                                          : 0;
  if (len == 0 || i + len > text.size()) return 0;
  uint32_t cp = len == 1 ? c : c & (0x7FU >> len);
  for (size_t k = 1; k < len; ++k) {
    const auto b = static_cast<unsigned char>(text[i + k]);
    if ((b & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (b & 0x3FU);
  }
  constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < kMin[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return len;
}

// Offset of the first byte that does not begin a well-formed UTF-8 sequence, or npos.
size_t invalid_utf8_at(std::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    const size_t len = utf8_sequence_at(text, i);
    if (len == 0) return i;
    i += len;
  }
  return std::string_view::npos;
}

// yaml-cpp (0.7) writes the escapes "\N" and "\_" of a double-quoted scalar as the single bytes
// 0x85 and 0xA0, not as UTF-8 (found by fuzzing: nlohmann's dump() then threw on the value). Any
// such byte of a scalar becomes the UTF-8 of the code point it stands for.
std::string utf8_scalar(const std::string& text) {
  size_t at = invalid_utf8_at(text);
  if (at == std::string_view::npos) return text;
  std::string out;
  size_t from = 0;
  while (at != std::string_view::npos) {
    out.append(text, from, at - from);
    const auto byte = static_cast<unsigned char>(text[at]);
    out += static_cast<char>(0xC0 | (byte >> 6));
    out += static_cast<char>(0x80 | (byte & 0x3F));
    from = at + 1;
    const size_t next = invalid_utf8_at(std::string_view(text).substr(from));
    at = next == std::string_view::npos ? next : from + next;
  }
  out.append(text, from, std::string::npos);
  return out;
}

// A value as a message shows it: strings quoted, so that `"16"` and `16` read differently.
std::string show(const Json& value) {
  return value.dump(-1, ' ', false, Json::error_handler_t::replace);
}

std::string show_number(double value) {
  std::ostringstream out;
  out << value;
  return out.str();
}

// ---- YAML to JSON ----------------------------------------------------------------------------

// A plain (unquoted) scalar as YAML 1.2's core schema reads it, except that booleans stay words:
// `gc: off` must keep the value "off" as written (yaml-cpp would also read off/on/yes/no as
// booleans). Quoted scalars are always strings, so `"16"` is not the integer 16.
Json scalar_to_json(const YAML::Node& node) {
  const std::string text = utf8_scalar(node.Scalar());
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
  return join_words(names);
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

// The exclude entries of a part as conditions on the axes' value indices: a row of the product
// is excluded when every (axis, index) of some entry holds. An entry that names a fixed key with
// another value, or an axis value that is not on the axis, can match no row and is left out; an
// entry of fixed keys only (all equal) matches every row.
std::vector<std::vector<std::pair<size_t, size_t>>> compile_excludes(const PartSpec& part) {
  std::vector<std::vector<std::pair<size_t, size_t>>> out;
  for (const Json& entry : part.exclude) {
    std::vector<std::pair<size_t, size_t>> conditions;
    bool can_match = true;
    for (const auto& [key, value] : entry.items()) {
      const auto axis = std::find_if(part.axes.begin(), part.axes.end(),
                                     [&key = key](const auto& a) { return a.first == key; });
      if (axis != part.axes.end()) {
        const auto found = std::find(axis->second.begin(), axis->second.end(), value);
        can_match = found != axis->second.end();
        if (can_match) {
          conditions.emplace_back(axis - part.axes.begin(), found - axis->second.begin());
        }
      } else {
        // The config of a product row holds the fixed values and the axes' values only.
        const auto fixed = part.fixed.find(key);
        can_match = fixed != part.fixed.end() && *fixed == value;
      }
      if (!can_match) break;
    }
    if (can_match) out.push_back(std::move(conditions));
  }
  return out;
}

bool excluded(const std::vector<std::vector<std::pair<size_t, size_t>>>& excludes,
              const std::vector<size_t>& index) {
  return std::any_of(excludes.begin(), excludes.end(), [&index](const auto& conditions) {
    return std::all_of(conditions.begin(), conditions.end(),
                       [&index](const auto& c) { return index[c.first] == c.second; });
  });
}

// Odometer over the product of the axes, the last axis turning fastest (like nested loops in spec
// order); false after the last row. With no axes there is exactly one row.
bool next_row(const PartSpec& part, std::vector<size_t>& index) {
  size_t axis = part.axes.size();
  while (axis > 0 && ++index[axis - 1] == part.axes[axis - 1].second.size()) {
    index[axis - 1] = 0;
    --axis;
  }
  return axis > 0;
}

// Whether a part has any run: an include entry, or a row of the product that no exclude entry
// removes (the rows are visited until one is found, as indices only).
bool has_runs(const PartSpec& part) {
  if (!part.include.empty()) return true;
  const auto excludes = compile_excludes(part);
  std::vector<size_t> index(part.axes.size(), 0);
  do {
    if (!excluded(excludes, index)) return true;
  } while (next_row(part, index));
  return false;
}

// The runs a part stands for before exclude, (product of the axes' sizes + include entries) x
// repeats, as a double: it may be far beyond any integer type.
double planned_runs(const PartSpec& part, int repeats) {
  double product = 1;
  for (const auto& [axis, values] : part.axes) product *= static_cast<double>(values.size());
  return (product + static_cast<double>(part.include.size())) * repeats;
}

std::string show_count(double count) {
  return count < 1e18 ? std::to_string(static_cast<int64_t>(count)) : show_number(count);
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
    if (!contains_word(kDottedTopKeys, head))
      override_fail("--set", item, "only model.KEY and data.KEY take a dot");
    root[head][key.substr(dot + 1)] = value;
    return;
  }
  if (contains_word(kSettableTopKeys, key)) {
    root[key] = value;
    return;
  }
  if (const ConfigKey* config_key = find_config_key(key)) {
    check_override(item, *config_key, value);
    set_config_key(root, item, *config_key, value);
    return;
  }
  override_fail("--set", item,
                "unknown key " + key + " (top-level: " + join_words(kSettableTopKeys) +
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
      if (contains_word(wanted, text)) {
        kept.push_back(v);
        found.insert(text);
      }
    }
    if (kept.size() == 0)
      override_fail("--only", item,
                    "keeps no value of axis " + axis + " (its values: " + join_words(had) + ")");
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
  // `runs_before`: the runs of the parts before it, counted against kMaxRuns.
  PartSpec parse_part(const PartNodes& part, const PartNodes& defaults, double runs_before) const;
  // Fails when the spec would expand to more than kMaxRuns runs, before any is built.
  void check_size(const PartNodes& part, const PartSpec& out, double runs_before) const;
  Workload parse_workload(const PartNodes& part) const;
  // The label of the last part of `spec` (parsed from `part`) is no earlier part's.
  void check_label_is_new(const PartNodes& part, const Spec& spec) const;
  void parse_matrix(const PartNodes& part, PartSpec& out) const;
  // `default_for` is the part that top-level defaults are merged into ("" for a part's own).
  void parse_fixed(const PartNodes& nodes, const std::string& default_for, PartSpec& out) const;
  std::vector<Json> parse_entries(const PartNodes& part, const std::string& name,
                                  const PartSpec& out) const;
  // The absolute path of an existing data file.
  std::string data_file(const DataItem& item) const;
  Json parse_data(const PartNodes& part, const PartNodes& defaults, Workload workload) const;
  void parse_data_path(const std::map<std::string, DataItem>& items, int data_line,
                       const std::string& data_key, Json& data) const;
  TableSpec parse_table(const YAML::Node& node, const std::string& key, const Spec& spec) const;
  std::vector<const PartSpec*> table_parts(const std::map<std::string, Entry>& keys,
                                           const std::string& key, const Spec& spec,
                                           TableSpec& table) const;

  std::string path_;
  fs::path spec_dir_;
  std::string device_ = "cpu";
  // `--set device=...`: a GPU study run on the CPU keeps its fp16 cells, as skipped runs.
  bool device_overridden_ = false;
  int repeats_ = 1;
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
    if (!contains_word(allowed, entry.key)) {
      fail(entry.line, dotted(prefix, entry.key),
           "unknown key (" + what + " keys: " + join_words(allowed) + ")");
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
  return utf8_scalar(entry.value.Scalar());
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
    if (contains_word(out, value.get<std::string>())) fail(line, key, "duplicate " + show(value));
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
  if ((rule.name == "mp" || rule.name == "dtype" || rule.name == "compute_dtype") &&
      value == "fp16" && device_ == "cpu" && !device_overridden_) {
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
    if (!contains_word(presets, preset)) {
      fail(it->second.value_line, "model.preset",
           "unknown preset \"" + preset + "\" (expected " + join_words(presets) + ")");
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
  // Data is read whole: a device or a pipe (/dev/zero, /dev/stdin) would never end.
  if (!fs::is_regular_file(*found))
    fail(item.line, item.key, "not a regular file: \"" + written + "\"");
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
  if (format_it == items.end())
    fail(data_line, data_key + ".format", "required (alpaca | random | tokens)");
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
  parse_data_path(items, data_line, data_key, data);
  return data;
}

// data.path: a file for formats alpaca and tokens (resolved like every data path), nothing else.
void Parser::parse_data_path(const std::map<std::string, DataItem>& items, int data_line,
                             const std::string& data_key, Json& data) const {
  const std::string format = data["format"].get<std::string>();
  auto path_it = items.find("path");
  if (format != "alpaca" && format != "tokens") {
    if (path_it != items.end())
      fail(path_it->second.line, path_it->second.key, "only applies to formats alpaca and tokens");
    return;
  }
  if (path_it == items.end()) fail(data_line, data_key + ".path", "required for format " + format);
  data["path_as_written"] = path_it->second.value;
  data["path"] = data_file(path_it->second);
  if (format != "tokens") return;
  // Read now: a bad file fails the spec, not every run (errors name the file).
  try {
    read_token_examples(data["path"].get<std::string>());
  } catch (const std::exception& e) {
    fail(path_it->second.line, path_it->second.key, e.what());
  }
}

PartSpec Parser::parse_part(const PartNodes& part, const PartNodes& defaults,
                            double runs_before) const {
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

  check_size(part, out, runs_before);
  if (!has_runs(out)) {
    const auto it = part.keys.find("exclude");
    fail(it != part.keys.end() ? it->second.line : part.line, dotted(part.prefix, "exclude"),
         "excludes every combination of the matrix (0 runs)");
  }
  return out;
}

void Parser::check_size(const PartNodes& part, const PartSpec& out, double runs_before) const {
  const double runs = planned_runs(out, repeats_);
  if (runs_before + runs <= static_cast<double>(kMaxRuns)) return;
  std::string sizes;
  double product = 1;
  for (const auto& [axis, values] : out.axes) {
    sizes += (sizes.empty() ? "" : " x ") + axis + " " + std::to_string(values.size());
    product *= static_cast<double>(values.size());
  }
  std::string message = show_count(runs) + " runs (" + (sizes.empty() ? "no axes" : sizes) + " = " +
                        show_count(product) + " combinations";
  if (!out.include.empty()) {
    message += " + " + std::to_string(out.include.size()) + " include entr" +
               (out.include.size() == 1 ? "y" : "ies");
  }
  if (repeats_ > 1) message += ", x " + std::to_string(repeats_) + " repeats";
  message += ")";
  if (runs_before > 0) {
    message += ", " + show_count(runs_before + runs) + " with the parts before it";
  }
  message += ": over the limit of " + std::to_string(kMaxRuns) +
             " runs per spec; split the matrix into several specs or give its axes fewer values";
  const auto it = part.keys.find("matrix");
  fail(it != part.keys.end() ? it->second.line : part.line, dotted(part.prefix, "matrix"), message);
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
    std::set<Json> seen;  // nlohmann orders numbers by value, as == compares them: 1 == 1.0
    for (const YAML::Node& item : axis.value) {
      const int line = line_of(item, axis.value_line);
      Json value = config_value(rule, item, line, key);
      if (!seen.insert(value).second) fail(line, key, "duplicate value " + show(value));
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
               " (labels: " + (labels.empty() ? "none" : join_words(labels)) + ")");
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
      if (!contains_word(axes, axis)) axes.push_back(axis);
    }
  }
  table.columns = string_list(columns_it->second, dotted(key, "columns"));
  for (const std::string& column : table.columns) {
    if (!contains_word(axes, column)) {
      fail(columns_it->second.value_line, dotted(key, "columns"),
           "\"" + column + "\" is not a matrix axis of the table's runs (axes: " +
               (axes.empty() ? "none" : join_words(axes)) + ")");
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
  repeats_ = spec.repeats;  // parts are counted against kMaxRuns with them
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
      if (contains_word(kPartKeys, key)) part.keys.emplace(key, entry);
    }
    spec.parts.push_back(parse_part(part, PartNodes{}, 0));
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
  double runs = 0;  // of the parts so far, against kMaxRuns
  for (const YAML::Node& node : sequence(*parts, "parts")) {
    PartNodes part;
    part.prefix = indexed("parts", index++);
    part.line = line_of(node, parts->value_line);
    if (!node.IsMap()) fail(part.line, part.prefix, "expected a mapping (workload, matrix, ...)");
    part.keys = keyed(node, part.prefix, "part", {std::begin(kPartKeys), std::end(kPartKeys)});
    spec.parts.push_back(parse_part(part, defaults, runs));
    runs += planned_runs(spec.parts.back(), repeats_);
    check_label_is_new(part, spec);
  }
  if (spec.parts.empty()) fail(parts->value_line, "parts", "the list is empty");
}

Spec Parser::parse(const std::string& text, const SpecOverrides& overrides) {
  Spec spec;
  spec.path = path_;
  spec.text = text + overrides_comment(overrides);

  // YAML is Unicode text; a byte that is not UTF-8 would reach messages, JSON and the database
  // (nlohmann's dump throws on it), so it is refused here, where its place is known.
  // Nor may it hold control characters other than tab and line breaks (YAML's c-printable):
  // yaml-cpp read a NUL as the start of an escape.
  const size_t control = text.find_first_of(std::string_view(
      "\x00\x01\x02\x03\x04\x05\x06\x07\x08\x0B\x0C\x0E\x0F\x10\x11\x12\x13\x14\x15\x16\x17"
      "\x18\x19\x1A\x1B\x1C\x1D\x1E\x1F\x7F",
      30));
  const size_t utf8 = invalid_utf8_at(text);
  if (const size_t at = std::min(control, utf8); at != std::string::npos) {
    const size_t line_start = text.rfind('\n', at == 0 ? 0 : at - 1);
    const size_t column = line_start == std::string::npos || at == 0 ? at + 1 : at - line_start;
    char byte[8];
    std::snprintf(byte, sizeof byte, "0x%02X", static_cast<unsigned char>(text[at]));
    fail(1 + static_cast<int>(std::count(text.begin(), text.begin() + static_cast<long>(at), '\n')),
         "spec",
         std::string("byte ") + byte + " in column " + std::to_string(column) +
             (at == utf8 ? " is not UTF-8 (a spec is UTF-8 text)"
                         : " is a control character (not allowed in YAML)"));
  }
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

namespace {

// The text a run id hashes before the run's config: the experiment's name and the part's context
// (model, device, data, memory cap, workload, ...).
std::string run_id_prefix(const Spec& spec, const PartSpec& part) {
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
  return spec.name + "\n" + canonical_json(context) + "\n";
}

// `"key":value` as canonical_json writes one member of an object.
std::string member_text(const std::string& key, const Json& value) {
  return Json(key).dump() + ":" + value.dump();
}

// The run ids seen so far, to drop duplicates: open addressing on the 64-bit hashes (the hex id
// is one-to-one with them), a few bytes per run where a std::set<std::string> takes ~80.
class IdSet {
 public:
  // Sized for `most` ids without growing.
  explicit IdSet(size_t most) {
    size_t slots = 1024;
    while (slots < 2 * most) slots *= 2;
    slots_.assign(slots, 0);
  }

  // Asks the cache for the slot where `id` would go, ahead of insert(id).
  void prefetch(uint64_t id) const { __builtin_prefetch(&slots_[slot_of(id)]); }

  // false when `id` was there already.
  bool insert(uint64_t id) {
    if (id == 0) return !std::exchange(has_zero_, true);
    if (2 * (size_ + 1) > slots_.size()) grow();
    size_t i = slot_of(id);
    while (slots_[i] != 0) {
      if (slots_[i] == id) return false;
      i = (i + 1) & (slots_.size() - 1);
    }
    slots_[i] = id;
    ++size_;
    return true;
  }

 private:
  size_t slot_of(uint64_t id) const {
    return static_cast<size_t>((id ^ (id >> 29)) * 0x9E3779B97F4A7C15ULL >> 7) &
           (slots_.size() - 1);
  }
  void grow() {
    std::vector<uint64_t> old = std::move(slots_);
    slots_.assign(std::max<size_t>(1024, 2 * old.size()), 0);
    for (const uint64_t id : old) {
      if (id == 0) continue;
      size_t i = slot_of(id);
      while (slots_[i] != 0) i = (i + 1) & (slots_.size() - 1);
      slots_[i] = id;
    }
  }

  std::vector<uint64_t> slots_;
  size_t size_ = 0;
  bool has_zero_ = false;
};

// One part's rows, prepared once so that each row costs a few string appends and a hash: the
// product rows' config keys in canonical order, with the text of each fixed member and of each
// axis value's member, and the include entries' configs.
struct PartPlan {
  std::vector<std::string> keys;    // sorted: fixed keys and axes
  std::vector<const Json*> values;  // per key: the fixed value; the axis slots are set per row
  // The canonical text is literal[0] + member of slot 0 + literal[1] + ... + literal[slots]:
  // literal[i] holds the braces, commas and fixed members between two axis members.
  std::vector<std::string> literal;
  std::vector<size_t> slot_axis;                       // per slot: its axis
  std::vector<size_t> slot_key;                        // per slot: its index in keys
  std::vector<std::vector<std::string>> axis_members;  // [axis][value index]
  std::vector<std::vector<std::pair<size_t, size_t>>> excludes;

  struct Include {
    std::vector<std::string> keys;
    std::vector<const Json*> values;
    std::string canonical;
  };
  std::vector<Include> includes;
};

PartPlan plan_part(const PartSpec& part) {
  PartPlan plan;
  std::map<std::string, int> key_axis;  // key -> axis index, -1 for a fixed key; sorted
  for (const auto& [key, value] : part.fixed.items()) key_axis[key] = -1;
  for (size_t a = 0; a < part.axes.size(); ++a) key_axis[part.axes[a].first] = static_cast<int>(a);
  plan.literal.emplace_back("{");
  for (const auto& [key, axis] : key_axis) {
    if (!plan.keys.empty()) plan.literal.back() += ",";
    if (axis < 0) {
      const Json& value = *part.fixed.find(key);
      plan.values.push_back(&value);
      plan.literal.back() += member_text(key, value);
    } else {
      plan.values.push_back(nullptr);
      plan.slot_axis.push_back(static_cast<size_t>(axis));
      plan.slot_key.push_back(plan.keys.size());
      plan.literal.emplace_back();
    }
    plan.keys.push_back(key);
  }
  plan.literal.back() += "}";
  for (const auto& [key, axis_values] : part.axes) {
    std::vector<std::string>& members = plan.axis_members.emplace_back();
    for (const Json& value : axis_values) members.push_back(member_text(key, value));
  }
  plan.excludes = compile_excludes(part);

  for (const Json& entry : part.include) {
    Json config = part.fixed;
    config.update(entry);
    PartPlan::Include& include = plan.includes.emplace_back();
    for (const auto& [key, value] : config.items()) {
      include.keys.push_back(key);
      const auto own = entry.find(key);
      include.values.push_back(own != entry.end() ? &*own : &*part.fixed.find(key));
    }
    include.canonical = canonical_json(config);
  }
  return plan;
}

}  // namespace

const Json* RunRef::find(std::string_view key) const {
  const auto it = std::lower_bound(keys.begin(), keys.end(), key);
  return it != keys.end() && *it == key ? values[it - keys.begin()] : nullptr;
}

Json RunRef::config() const {
  Json config = Json::object();
  auto& object = config.get_ref<Json::object_t&>();
  for (size_t i = 0; i < keys.size(); ++i) object.emplace_hint(object.end(), keys[i], *values[i]);
  return config;
}

namespace {

// Why the runs of a config are skipped on the spec's device ("" when they are not): `no_bf16` is
// the profile's reason for bf16 ("" when it has bf16).
std::string_view skip_reason_of(const Spec& spec, const std::string& no_bf16, const RunRef& run) {
  auto is_bf16 = [](const Json* value) { return value != nullptr && *value == "bf16"; };
  auto is_fp16 = [](const Json* value) { return value != nullptr && *value == "fp16"; };
  static constexpr std::string_view kFp16OnCpu =
      "fp16 needs a CUDA device (device cpu set on the command line)";
  std::string_view skip_reason;
  if (!no_bf16.empty() && (is_bf16(run.find("mp")) || is_bf16(run.find("dtype")))) {
    skip_reason = no_bf16;
  }
  // Only through `--set device=cpu` (a spec that says cpu is refused): fp16 needs CUDA.
  if (spec.device == "cpu" && (is_fp16(run.find("mp")) || is_fp16(run.find("dtype")))) {
    skip_reason = kFp16OnCpu;
  }
  return skip_reason;
}

// "" when the spec's device profile has bf16 arithmetic (or the spec has no profile).
std::string no_bf16_reason(const Spec& spec) {
  const DeviceProfile* profile = find_device_profile(spec.device_profile);
  return profile != nullptr && !profile_has_bf16(*profile)
             ? std::string(profile->gpu_name) + " has no bf16 arithmetic"
             : "";
}

// for_each_run's set of ids is sized for the runs before exclude, up to a million (16 MiB; it
// grows beyond that), so that it seldom grows and a mostly excluded matrix does not take a big one.
size_t id_set_size(const Spec& spec) {
  double most_runs = 0;
  for (const PartSpec& part : spec.parts) most_runs += planned_runs(part, spec.repeats);
  return static_cast<size_t>(std::min(most_runs, 1e6));
}

// A run of for_each_run waiting for the next one to be hashed (see there).
struct PendingRun {
  RunRef run;
  std::string canonical;
  std::vector<const Json*> values;
  uint64_t hash = 0;
  char id[16] = {};
  bool waiting = false;
};

}  // namespace

void for_each_run(const Spec& spec, const std::function<void(const RunRef&)>& visit) {
  const std::string no_bf16 = no_bf16_reason(spec);
  IdSet ids(id_set_size(spec));

  // Each run waits for the next one to be hashed before its id is looked up in the set (and it
  // is visited), so that the look-up's cache miss is prefetched meanwhile: with millions of runs
  // it would otherwise cost as much as the rest together.
  std::array<PendingRun, 2> pending;
  size_t next = 0;
  auto settle = [&](PendingRun& waiting) {
    if (!std::exchange(waiting.waiting, false)) return;
    // The id is the database's primary key: a run that two parts share is one run.
    if (!ids.insert(waiting.hash)) return;
    hex64(waiting.hash, waiting.id);
    waiting.run.run_id = std::string_view(waiting.id, sizeof(waiting.id));
    waiting.run.canonical = waiting.canonical;
    waiting.run.values = waiting.values;
    visit(waiting.run);
  };
  // Every repeat of one config: the hash continues from the prefix's over the canonical text.
  auto add_repeats = [&](const RunRef& run, uint64_t prefix_hash) {
    const uint64_t config_hash = fnv1a64_update(fnv1a64_update(prefix_hash, run.canonical), "\n");
    const std::string_view skip_reason = skip_reason_of(spec, no_bf16, run);
    for (int repeat = 0; repeat < spec.repeats; ++repeat) {
      char digits[16];
      const auto end = std::to_chars(digits, digits + sizeof(digits), repeat).ptr;
      PendingRun& added = pending[next];
      added.hash = fnv1a64_update(config_hash, std::string_view(digits, end - digits));
      ids.prefetch(added.hash);
      added.run = run;
      added.run.repeat = repeat;
      added.run.skip_reason = skip_reason;
      added.canonical.assign(run.canonical);
      added.values.assign(run.values.begin(), run.values.end());
      added.waiting = true;
      next ^= 1;
      settle(pending[next]);
    }
  };

  std::string canonical;
  RunRef run;
  for (size_t p = 0; p < spec.parts.size(); ++p) {
    const PartSpec& part = spec.parts[p];
    PartPlan plan = plan_part(part);
    const uint64_t prefix_hash = fnv1a64(run_id_prefix(spec, part));
    run.part = static_cast<int>(p);
    run.workload = part.workload;

    run.include = -1;
    run.keys = plan.keys;
    std::vector<size_t> index(part.axes.size(), 0);
    do {
      if (excluded(plan.excludes, index)) continue;
      canonical = plan.literal[0];
      for (size_t s = 0; s < plan.slot_axis.size(); ++s) {
        const size_t axis = plan.slot_axis[s];
        canonical += plan.axis_members[axis][index[axis]];
        canonical += plan.literal[s + 1];
        plan.values[plan.slot_key[s]] = &part.axes[axis].second[index[axis]];
      }
      run.canonical = canonical;
      run.values = plan.values;
      add_repeats(run, prefix_hash);
    } while (next_row(part, index));

    for (size_t i = 0; i < plan.includes.size(); ++i) {
      run.include = static_cast<int>(i);
      run.keys = plan.includes[i].keys;
      run.values = plan.includes[i].values;
      run.canonical = plan.includes[i].canonical;
      add_repeats(run, prefix_hash);
    }
    // The include entries' keys and values live in the plan: its last run is settled with it.
    settle(pending[next ^ 1]);
  }
}

std::vector<RunConfig> expand(const Spec& spec) {
  std::vector<RunConfig> runs;
  for_each_run(spec, [&runs](const RunRef& ref) {
    RunConfig& run = runs.emplace_back();
    run.run_id = ref.run_id;
    run.repeat = ref.repeat;
    run.workload = ref.workload;
    run.config = ref.config();
    run.canonical = ref.canonical;
    run.part = ref.part;
    run.skip_reason = ref.skip_reason;
  });
  return runs;
}

// nlohmann's object is a std::map, so dump() sorts keys; with no indent it writes no spaces, and
// doubles in their shortest round-trip form (1e-05, 0.05, 32.0), the same on every platform.
// (for_each_run writes the same text from the members' texts: member_text.)
std::string canonical_json(const Json& value) { return value.dump(); }

std::string make_run_id(const Spec& spec, const PartSpec& part, const std::string& canonical,
                        int repeat) {
  return fnv1a64_hex(run_id_prefix(spec, part) + canonical + "\n" + std::to_string(repeat));
}

}  // namespace hx
