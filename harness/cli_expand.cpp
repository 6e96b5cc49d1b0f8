// `harness expand SPEC [--json]`: the runs a spec stands for, listed without running anything
// (like a dry run of llama-bench), so that a matrix can be checked before hours are spent on it.
//
// A spec may stand for millions of runs (up to kMaxRuns), so the runs are streamed
// (for_each_run) rather than built, and each distinct value's text is rendered once: a table
// takes two passes (widths, then rows), --json one.
#include <algorithm>
#include <charconv>
#include <functional>
#include <iostream>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "harness/cli.h"
#include "harness/spec.h"

namespace hx {
namespace {

struct ExpandOptions {
  std::string spec_path;
  SpecOverrides overrides;  // --set, --only
  bool json = false;
};

std::string cell(const Json& value) {
  return value.is_string() ? value.get<std::string>() : value.dump();
}

// The config keys worth a column: every axis (in spec order, first part first), then any other
// key whose value differs between runs (an include entry may override a fixed key), so that two
// different runs never print as the same row. `configs`: the first run of each group (a part's
// product rows, one include entry) in run order; the runs of a group have the same keys and the
// same values but for the axes', so these decide what the whole list would.
std::vector<std::string> columns_of(const Spec& spec, const std::vector<Json>& configs) {
  std::vector<std::string> columns;
  auto add = [&columns](const std::string& key) {
    if (std::find(columns.begin(), columns.end(), key) == columns.end()) columns.push_back(key);
  };
  for (const PartSpec& part : spec.parts) {
    for (const auto& [axis, values] : part.axes) add(axis);
  }
  for (const Json& config : configs) {
    for (const auto& item : config.items()) {
      const std::string& key = item.key();
      const Json& value = item.value();
      const bool varies = std::any_of(configs.begin(), configs.end(), [&](const Json& other) {
        return !other.contains(key) || other[key] != value;
      });
      if (varies) add(key);
    }
  }
  return columns;
}

// A run's group: its part's product rows, or one include entry of its part.
class Groups {
 public:
  explicit Groups(const Spec& spec) {
    for (const PartSpec& part : spec.parts) {
      first_.push_back(count_);
      count_ += 1 + part.include.size();
    }
  }
  size_t count() const { return count_; }
  size_t of(const RunRef& run) const { return first_[run.part] + 1 + run.include; }

 private:
  std::vector<size_t> first_;  // per part: its product rows' group
  size_t count_ = 0;
};

// Text rendered once per distinct value: the values of RunRef point into the spec, so the
// address names the value (and its key). A slot (one key of one group) remembers its last value,
// which skips the lookup for fixed values and for all but the fastest axes.
class ValueTexts {
 public:
  explicit ValueTexts(std::function<std::string(const std::string&, const Json&)> render)
      : render_(std::move(render)) {}

  struct Slot {
    const Json* value = nullptr;
    const std::string* text = nullptr;
  };

  const std::string& text(Slot& slot, const std::string& key, const Json* value) {
    if (slot.value != value) {
      auto [it, added] = texts_.try_emplace(value);
      if (added) it->second = render_(key, *value);
      slot = {value, &it->second};
    }
    return *slot.text;
  }

 private:
  std::function<std::string(const std::string&, const Json&)> render_;
  std::unordered_map<const Json*, std::string> texts_;
};

void append_number(std::string& out, size_t number) {
  char digits[24];
  out.append(digits, std::to_chars(digits, digits + sizeof(digits), number).ptr);
}

void print_table(const Spec& spec) {
  const bool several_parts = spec.parts.size() > 1;
  std::vector<std::string> header = {"#", "run id", "repeat"};
  if (several_parts) header.emplace_back("part");
  header.emplace_back("workload");
  const size_t fixed_columns = header.size();

  std::vector<std::string> part_cells;  // a part's label, or its index
  for (size_t p = 0; p < spec.parts.size(); ++p) {
    part_cells.push_back(spec.parts[p].label.empty() ? std::to_string(p) : spec.parts[p].label);
  }

  // Pass 1: the count, each group's first config, and the widest text of each key per group.
  const Groups groups(spec);
  ValueTexts texts([](const std::string&, const Json& value) { return cell(value); });
  std::vector<Json> firsts;
  std::vector<bool> seen(groups.count(), false);  // the group has a run
  std::vector<std::vector<std::string>> group_keys(groups.count());
  std::vector<std::vector<size_t>> key_widths(groups.count());
  std::vector<std::vector<ValueTexts::Slot>> slots(groups.count());
  std::vector<size_t> widths(header.size());
  for (size_t c = 0; c < header.size(); ++c) widths[c] = header[c].size();
  size_t count = 0;
  int last_repeat = 0;
  for_each_run(spec, [&](const RunRef& run) {
    ++count;
    last_repeat = std::max(last_repeat, run.repeat);
    const size_t group = groups.of(run);
    if (!seen[group]) {  // what is the same for all runs of a group
      seen[group] = true;
      firsts.push_back(run.config());
      group_keys[group].assign(run.keys.begin(), run.keys.end());
      key_widths[group].assign(run.keys.size(), 0);
      slots[group].assign(run.keys.size(), {});
      if (several_parts) widths[3] = std::max(widths[3], part_cells[run.part].size());
      widths[fixed_columns - 1] =
          std::max(widths[fixed_columns - 1], to_string(run.workload).size());
      widths[1] = std::max(widths[1], run.run_id.size());  // 16
    }
    for (size_t k = 0; k < run.keys.size(); ++k) {
      ValueTexts::Slot& slot = slots[group][k];
      if (slot.value == run.values[k]) continue;
      const std::string& text = texts.text(slot, run.keys[k], run.values[k]);
      key_widths[group][k] = std::max(key_widths[group][k], text.size());
    }
  });
  widths[2] = std::max(widths[2], std::to_string(last_repeat).size());
  if (count > 0) widths[0] = std::max(widths[0], std::to_string(count - 1).size());

  const std::vector<std::string> keys = columns_of(spec, firsts);
  header.insert(header.end(), keys.begin(), keys.end());
  // Per group, the index of each column's key in the group's keys (npos: the cell is "-").
  std::vector<std::vector<size_t>> key_index(groups.count());
  for (size_t g = 0; g < groups.count(); ++g) {
    for (const std::string& key : keys) {
      const auto it = std::find(group_keys[g].begin(), group_keys[g].end(), key);
      key_index[g].push_back(it == group_keys[g].end() ? std::string::npos
                                                       : it - group_keys[g].begin());
    }
  }
  for (size_t c = 0; c < keys.size(); ++c) {
    size_t width = keys[c].size();
    for (size_t g = 0; g < groups.count(); ++g) {
      if (!seen[g]) continue;
      const size_t k = key_index[g][c];
      width = std::max(width, k == std::string::npos ? 1 : key_widths[g][k]);
    }
    widths.push_back(width);
  }

  std::string line;
  auto add_cell = [&](size_t c, std::string_view text) {
    line += text;
    if (c + 1 < widths.size()) line.append(widths[c] - text.size() + 2, ' ');
  };
  auto end_line = [&line] {
    line += '\n';
    if (line.size() >= (1 << 16)) {
      std::cout.write(line.data(), static_cast<std::streamsize>(line.size()));
      line.clear();
    }
  };

  std::cout << spec.name << ": " << count << (count == 1 ? " run" : " runs") << ", device "
            << spec.device << ", model "
            << spec.model.value("preset", spec.model.value("weights", std::string("?"))) << "\n\n";
  for (size_t c = 0; c < header.size(); ++c) add_cell(c, header[c]);
  end_line();

  // Pass 2: the rows.
  size_t index = 0;
  std::string number;
  for_each_run(spec, [&](const RunRef& run) {
    const size_t group = groups.of(run);
    number.clear();
    append_number(number, index++);
    add_cell(0, number);
    add_cell(1, run.run_id);
    number.clear();
    append_number(number, static_cast<size_t>(run.repeat));
    add_cell(2, number);
    if (several_parts) add_cell(3, part_cells[run.part]);
    add_cell(fixed_columns - 1, to_string(run.workload));
    for (size_t c = 0; c < keys.size(); ++c) {
      const size_t k = key_index[group][c];
      add_cell(fixed_columns + c, k == std::string::npos
                                      ? "-"
                                      : texts.text(slots[group][k], run.keys[k], run.values[k]));
    }
    end_line();
  });
  std::cout.write(line.data(), static_cast<std::streamsize>(line.size()));
}

// What Json::dump(2) of the array of {run_id, repeat, workload, config} objects prints, one run
// at a time: the members of each config rendered once per distinct value.
void print_json(const Spec& spec) {
  // `      "key": value`: a config member at its depth (3) in the array, nested lines indented.
  ValueTexts members([](const std::string& key, const Json& value) {
    std::string text = "      " + Json(key).dump() + ": ";
    for (const char c : value.dump(2)) {
      text += c;
      if (c == '\n') text += "      ";
    }
    return text;
  });
  const Groups groups(spec);
  std::vector<std::vector<ValueTexts::Slot>> slots(groups.count());
  std::string out = "[";
  bool first = true;
  for_each_run(spec, [&](const RunRef& run) {
    std::vector<ValueTexts::Slot>& group_slots = slots[groups.of(run)];
    group_slots.resize(run.keys.size());
    out += first ? "\n  {\n    \"config\": " : ",\n  {\n    \"config\": ";
    first = false;
    if (run.keys.empty()) {
      out += "{}";
    } else {
      out += "{\n";
      for (size_t k = 0; k < run.keys.size(); ++k) {
        if (k > 0) out += ",\n";
        out += members.text(group_slots[k], run.keys[k], run.values[k]);
      }
      out += "\n    }";
    }
    out += ",\n    \"repeat\": ";
    append_number(out, static_cast<size_t>(run.repeat));
    out += ",\n    \"run_id\": \"";
    out += run.run_id;
    out += "\",\n    \"workload\": ";
    out += '"';
    out += to_string(run.workload);  // a word: finetune | generate
    out += '"';
    out += "\n  }";
    if (out.size() >= (1 << 16)) {
      std::cout.write(out.data(), static_cast<std::streamsize>(out.size()));
      out.clear();
    }
  });
  out += first ? "]\n" : "\n]\n";
  std::cout.write(out.data(), static_cast<std::streamsize>(out.size()));
}

const CommandRegistrar kRegistrar{
    "expand", [](CLI::App& app, const std::function<void(int)>& set_exit) {
      // The callback runs after this function returns: the options live as long as it does.
      auto options = std::make_shared<ExpandOptions>();
      CLI::App* sub = app.add_subcommand(
          "expand", "List the runs of a spec (one row per run, with its id) without running them");
      sub->add_option("spec", options->spec_path, "Experiment spec (YAML)")->required();
      add_spec_overrides(sub, options->overrides);
      sub->add_flag("--json", options->json,
                    "Print a JSON array of {run_id, repeat, workload, config}");
      sub->callback([options, set_exit] {
        const Spec spec =
            load_spec(options->spec_path, options->overrides);  // throws std::invalid_argument
        if (options->json) {
          print_json(spec);
        } else {
          print_table(spec);
        }
        std::cout.flush();
        set_exit(kExitOk);
      });
    }};

}  // namespace
}  // namespace hx
