// `harness expand SPEC [--json]`: the runs a spec stands for, listed without running anything
// (like a dry run of llama-bench), so that a matrix can be checked before hours are spent on it.
#include <algorithm>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
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
// different runs never print as the same row.
std::vector<std::string> columns_of(const Spec& spec, const std::vector<RunConfig>& runs) {
  std::vector<std::string> columns;
  auto add = [&columns](const std::string& key) {
    if (std::find(columns.begin(), columns.end(), key) == columns.end()) columns.push_back(key);
  };
  for (const PartSpec& part : spec.parts) {
    for (const auto& [axis, values] : part.axes) add(axis);
  }
  for (const RunConfig& run : runs) {
    for (const auto& item : run.config.items()) {
      const std::string& key = item.key();
      const Json& value = item.value();
      const bool varies = std::any_of(runs.begin(), runs.end(), [&](const RunConfig& other) {
        return !other.config.contains(key) || other.config[key] != value;
      });
      if (varies) add(key);
    }
  }
  return columns;
}

void print_table(const Spec& spec, const std::vector<RunConfig>& runs) {
  const bool several_parts = spec.parts.size() > 1;
  std::vector<std::string> header = {"#", "run id", "repeat"};
  if (several_parts) header.emplace_back("part");
  header.emplace_back("workload");
  const std::vector<std::string> keys = columns_of(spec, runs);
  header.insert(header.end(), keys.begin(), keys.end());

  std::vector<std::vector<std::string>> rows;
  for (size_t i = 0; i < runs.size(); ++i) {
    const RunConfig& run = runs[i];
    std::vector<std::string> row = {std::to_string(i), run.run_id, std::to_string(run.repeat)};
    if (several_parts) {
      const std::string& label = spec.parts[run.part].label;
      row.push_back(label.empty() ? std::to_string(run.part) : label);
    }
    row.emplace_back(to_string(run.workload));
    for (const std::string& key : keys) {
      row.push_back(run.config.contains(key) ? cell(run.config[key]) : "-");
    }
    rows.push_back(std::move(row));
  }

  std::vector<size_t> widths(header.size());
  for (size_t c = 0; c < header.size(); ++c) {
    widths[c] = header[c].size();
    for (const auto& row : rows) widths[c] = std::max(widths[c], row[c].size());
  }
  auto print_row = [&widths](const std::vector<std::string>& row) {
    std::string line;
    for (size_t c = 0; c < row.size(); ++c) {
      line += row[c];
      if (c + 1 < row.size()) line += std::string(widths[c] - row[c].size() + 2, ' ');
    }
    std::cout << line << '\n';
  };

  std::cout << spec.name << ": " << runs.size() << (runs.size() == 1 ? " run" : " runs")
            << ", device " << spec.device << ", model "
            << spec.model.value("preset", spec.model.value("weights", std::string("?"))) << "\n\n";
  print_row(header);
  for (const auto& row : rows) print_row(row);
}

void print_json(const std::vector<RunConfig>& runs) {
  Json out = Json::array();
  for (const RunConfig& run : runs) {
    out.push_back({{"run_id", run.run_id},
                   {"repeat", run.repeat},
                   {"workload", run.workload},
                   {"config", run.config}});
  }
  std::cout << out.dump(2) << '\n';
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
        const std::vector<RunConfig> runs = expand(spec);
        if (options->json) {
          print_json(runs);
        } else {
          print_table(spec, runs);
        }
        set_exit(kExitOk);
      });
    }};

}  // namespace
}  // namespace hx
