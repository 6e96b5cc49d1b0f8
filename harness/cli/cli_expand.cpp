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

#include "harness/cli/cli.h"
#include "harness/plan/spec.h"

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

// The runs table, in two passes over the runs: measure() each (the count, each group's first
// config, the widest text of each key per group), then columns(), the header, and row() each.
class TablePrinter {
 public:
  explicit TablePrinter(const Spec& spec)
      : spec_(spec),
        several_parts_(spec.parts.size() > 1),
        groups_(spec),
        texts_([](const std::string&, const Json& value) { return cell(value); }),
        seen_(groups_.count(), false),
        group_keys_(groups_.count()),
        key_widths_(groups_.count()),
        slots_(groups_.count()),
        key_index_(groups_.count()) {
    header_ = {"#", "run id", "repeat"};
    if (several_parts_) header_.emplace_back("part");
    header_.emplace_back("workload");
    fixed_columns_ = header_.size();
    for (size_t p = 0; p < spec.parts.size(); ++p) {
      part_cells_.push_back(spec.parts[p].label.empty() ? std::to_string(p) : spec.parts[p].label);
    }
    for (const std::string& name : header_) widths_.push_back(name.size());
  }

  // Pass 1.
  void measure(const RunRef& run) {
    ++count_;
    last_repeat_ = std::max(last_repeat_, run.repeat);
    const size_t group = groups_.of(run);
    if (!seen_[group]) first_of_group(run, group);
    for (size_t k = 0; k < run.keys.size(); ++k) {
      ValueTexts::Slot& slot = slots_[group][k];
      if (slot.value == run.values[k]) continue;
      const std::string& text = texts_.text(slot, run.keys[k], run.values[k]);
      key_widths_[group][k] = std::max(key_widths_[group][k], text.size());
    }
  }

  // After pass 1: the key columns and every column's width.
  void columns() {
    widths_[2] = std::max(widths_[2], std::to_string(last_repeat_).size());
    if (count_ > 0) widths_[0] = std::max(widths_[0], std::to_string(count_ - 1).size());
    keys_ = columns_of(spec_, firsts_);
    header_.insert(header_.end(), keys_.begin(), keys_.end());
    // Per group, the index of each column's key in the group's keys (npos: the cell is "-").
    for (size_t g = 0; g < groups_.count(); ++g) {
      for (const std::string& key : keys_) {
        const auto it = std::find(group_keys_[g].begin(), group_keys_[g].end(), key);
        key_index_[g].push_back(it == group_keys_[g].end() ? std::string::npos
                                                           : it - group_keys_[g].begin());
      }
    }
    for (size_t c = 0; c < keys_.size(); ++c) widths_.push_back(key_column_width(c));
  }

  void print_header() {
    std::cout << spec_.name << ": " << count_ << (count_ == 1 ? " run" : " runs") << ", device "
              << spec_.device << ", model "
              << spec_.model.value("preset", spec_.model.value("weights", std::string("?")))
              << "\n\n";
    for (size_t c = 0; c < header_.size(); ++c) add_cell(c, header_[c]);
    end_line();
  }

  // Pass 2.
  void row(const RunRef& run) {
    const size_t group = groups_.of(run);
    number_.clear();
    append_number(number_, index_++);
    add_cell(0, number_);
    add_cell(1, run.run_id);
    number_.clear();
    append_number(number_, static_cast<size_t>(run.repeat));
    add_cell(2, number_);
    if (several_parts_) add_cell(3, part_cells_[run.part]);
    add_cell(fixed_columns_ - 1, to_string(run.workload));
    for (size_t c = 0; c < keys_.size(); ++c) {
      const size_t k = key_index_[group][c];
      add_cell(fixed_columns_ + c, k == std::string::npos
                                       ? "-"
                                       : texts_.text(slots_[group][k], run.keys[k], run.values[k]));
    }
    end_line();
  }

  void flush() {
    std::cout.write(line_.data(), static_cast<std::streamsize>(line_.size()));
    line_.clear();
  }

 private:
  // What is the same for all runs of a group.
  void first_of_group(const RunRef& run, size_t group) {
    seen_[group] = true;
    firsts_.push_back(run.config());
    group_keys_[group].assign(run.keys.begin(), run.keys.end());
    key_widths_[group].assign(run.keys.size(), 0);
    slots_[group].assign(run.keys.size(), {});
    if (several_parts_) widths_[3] = std::max(widths_[3], part_cells_[run.part].size());
    widths_[fixed_columns_ - 1] =
        std::max(widths_[fixed_columns_ - 1], to_string(run.workload).size());
    widths_[1] = std::max(widths_[1], run.run_id.size());  // 16
  }

  size_t key_column_width(size_t c) const {
    size_t width = keys_[c].size();
    for (size_t g = 0; g < groups_.count(); ++g) {
      if (!seen_[g]) continue;
      const size_t k = key_index_[g][c];
      width = std::max(width, k == std::string::npos ? 1 : key_widths_[g][k]);
    }
    return width;
  }

  void add_cell(size_t c, std::string_view text) {
    line_ += text;
    if (c + 1 < widths_.size()) line_.append(widths_[c] - text.size() + 2, ' ');
  }

  void end_line() {
    line_ += '\n';
    if (line_.size() >= (1 << 16)) flush();
  }

  const Spec& spec_;
  const bool several_parts_;
  const Groups groups_;
  ValueTexts texts_;
  std::vector<std::string> header_;
  size_t fixed_columns_ = 0;
  std::vector<std::string> part_cells_;  // a part's label, or its index
  std::vector<Json> firsts_;
  std::vector<bool> seen_;  // the group has a run
  std::vector<std::vector<std::string>> group_keys_;
  std::vector<std::vector<size_t>> key_widths_;
  std::vector<std::vector<ValueTexts::Slot>> slots_;
  std::vector<std::vector<size_t>> key_index_;
  std::vector<std::string> keys_;
  std::vector<size_t> widths_;
  size_t count_ = 0;
  int last_repeat_ = 0;
  size_t index_ = 0;
  std::string number_;
  std::string line_;
};

void print_table(const Spec& spec) {
  TablePrinter table(spec);
  for_each_run(spec, [&table](const RunRef& run) { table.measure(run); });
  table.columns();
  table.print_header();
  for_each_run(spec, [&table](const RunRef& run) { table.row(run); });
  table.flush();
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
