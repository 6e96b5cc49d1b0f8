#include "harness/report/compare.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <map>
#include <set>
#include <stdexcept>
#include <utility>

#include "harness/report/derived.h"
#include "harness/report/stats.h"

namespace hx {
namespace {

template <typename T>
bool contains(const std::vector<T>& values, const T& value) {
  return std::find(values.begin(), values.end(), value) != values.end();
}

Json config_value(const Json& config, const std::string& key) {
  const auto it = config.find(key);
  return it == config.end() ? Json(nullptr) : *it;
}

// "1,235,814,400"
std::string with_thousands(int64_t value) {
  std::string digits = std::to_string(value);
  std::string out;
  const size_t lead = digits.size() % 3;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (i - lead) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

// "9.3" / "312" / "362.05": a datasheet figure as the datasheet writes it.
std::string tflops_text(double tflops) { return format_full(tflops); }

std::string peak_text(const GpuPeak& peak) {
  std::vector<std::string> parts;
  if (peak.fp32_tflops > 0) parts.push_back("fp32 " + tflops_text(peak.fp32_tflops));
  if (peak.fp16_tflops > 0) parts.push_back("fp16 " + tflops_text(peak.fp16_tflops));
  if (peak.bf16_tflops > 0) parts.push_back("bf16 " + tflops_text(peak.bf16_tflops));
  return join(parts, ", ") + " TFLOP/s";
}

// ---- Cells ----

using RunValue = std::function<std::optional<double>(const StoredRun&)>;

std::optional<double> metric_of(const StoredRun& run, const std::string& name) {
  return metric_value(run, name);
}

// ---- Environments ----

// The facts the Environments table shows, in its column order.
constexpr const char* kShownFacts[] = {"gpu_mem_mb", "libtorch", "cuda",      "driver",
                                       "build_type", "threads",  "git_commit"};

struct EnvColumn {
  CompareEnv env;
  size_t source = 0;
  std::map<std::string, const StoredRun*> runs;  // run id -> run
};

std::string letter_of(size_t index) {
  std::string letter;
  size_t n = index;
  do {
    letter.insert(letter.begin(), static_cast<char>('A' + n % 26));
    n = n / 26;
  } while (n-- > 0);
  return letter;
}

// The column of `run`'s environment among those of source `s` (from `first` on), new if none.
EnvColumn& column_for(const CompareSource& source, size_t s, size_t first, const StoredRun& run,
                      const std::string& label, std::vector<EnvColumn>& columns) {
  const auto it = std::find_if(columns.begin() + static_cast<std::ptrdiff_t>(first), columns.end(),
                               [&](const EnvColumn& c) { return c.env.label == label; });
  if (it != columns.end()) return *it;
  EnvColumn column;
  column.source = s;
  column.env.label = label;
  column.env.source = source.name;
  column.env.env = run.env;
  column.env.cpu = environment_field(run.env, "gpu_name").empty();
  column.env.peak =
      column.env.cpu ? nullptr : find_gpu_peak(environment_field(run.env, "gpu_name"));
  columns.push_back(std::move(column));
  return columns.back();
}

// The planned runs of one database, into one column per environment.
void add_source(const CompareSource& source, size_t s, const std::set<std::string>& planned,
                std::vector<EnvColumn>& columns, std::vector<std::string>& notes) {
  const size_t first = columns.size();
  std::vector<const StoredRun*> without_env;
  int stale = 0;
  for (const StoredRun& run : source.runs) {
    if (!planned.contains(run.run_id)) {
      ++stale;
      continue;
    }
    const std::string label = environment_label(run.env);
    if (label.empty()) {
      without_env.push_back(&run);
      continue;
    }
    column_for(source, s, first, run, label, columns).runs.emplace(run.run_id, &run);
  }
  // A run that died before reporting its environment belongs to the database's only
  // environment; with several, it cannot be placed and gets a column of its own.
  if (!without_env.empty()) {
    if (columns.size() != first + 1) {
      EnvColumn column;
      column.source = s;
      column.env.label = "unknown environment";
      column.env.source = source.name;
      column.env.env = Json::object();
      columns.push_back(std::move(column));
    }
    for (const StoredRun* run : without_env) columns.back().runs.emplace(run->run_id, run);
  }
  if (stale > 0) {
    notes.push_back(source.name + ": " + std::to_string(stale) +
                    " stored run(s) of this experiment belong to an earlier version of the "
                    "spec and are not shown.");
  }
  if (columns.size() == first) notes.push_back(source.name + ": no stored run of the spec.");
}

// The same label twice (the same GPU in two databases): name the database, then number.
void disambiguate_labels(std::vector<EnvColumn>& columns) {
  std::map<std::string, int> seen;
  for (const EnvColumn& column : columns) ++seen[column.env.label];
  for (EnvColumn& column : columns) {
    if (seen[column.env.label] > 1) column.env.label += " [" + column.env.source + "]";
  }
  std::map<std::string, int> again;
  for (EnvColumn& column : columns) {
    const int n = ++again[column.env.label];
    if (n > 1) column.env.label += " #" + std::to_string(n);
  }
}

// The column's run counts and the distinct values of its environment facts.
void fill_facts(EnvColumn& column) {
  std::map<std::string, std::vector<std::string>> values;
  for (const auto& [id, run] : column.runs) {
    ++column.env.runs;
    if (run->status == Status::kOk) ++column.env.ok;
    if (run->env.empty()) continue;
    for (const char* key : kShownFacts) {
      const std::string value = environment_field(run->env, key);
      if (!value.empty() && !contains(values[key], value)) values[key].push_back(value);
    }
  }
  for (auto& [key, list] : values) {
    std::sort(list.begin(), list.end());
    column.env.facts[key] = join(list, " / ");
  }
}

std::vector<EnvColumn> collect_environments(const std::vector<CompareSource>& sources,
                                            const std::set<std::string>& planned,
                                            std::vector<std::string>& notes) {
  std::vector<EnvColumn> columns;
  for (size_t s = 0; s < sources.size(); ++s) add_source(sources[s], s, planned, columns, notes);
  disambiguate_labels(columns);
  for (size_t i = 0; i < columns.size(); ++i) {
    columns[i].env.letter = letter_of(i);
    fill_facts(columns[i]);
  }
  return columns;
}

// ---- Metrics of a part ----

struct MetricPlan {
  std::string name;  // stored name, or mem_share_pct / mfu_pct
  std::string label;
  NumberFormat format = NumberFormat::kSignificant;
  int digits = 3;
};

MetricPlan known_metric(const std::string& name) {
  const Field field = metric_field_or_raw(name);
  return {name, std::string(field.label), field.format, field.digits};
}

// The stored metrics a part's tables show: the rows of the spec's tables that select the part
// (MFU has a table of its own), else the gated ones (what `harness check` judges); then the
// headline throughput.
std::vector<std::string> metric_names_of_part(const Spec& spec, const PlanPart& part) {
  const Workload workload = spec.parts[static_cast<size_t>(part.part)].workload;
  std::vector<std::string> names;
  for (const TableSpec& table : spec.tables) {
    if (!table_selects(spec, table, part.part, workload)) continue;
    for (const std::string& row : table.rows) {
      if (row != kMfuMetric && !contains(names, row)) names.push_back(row);
    }
  }
  if (names.empty()) {
    for (const Field& field : kMetricFields) {
      if (field.gate != GateTest::kNotGated) names.emplace_back(field.name);
    }
  }
  const std::string throughput(first_metric_of(MetricRole::kThroughput).name);
  if (!contains(names, throughput)) names.push_back(throughput);
  return names;
}

std::vector<MetricPlan> metrics_of_part(const Spec& spec, const PlanPart& part,
                                        const std::function<bool(const std::string&)>& has_data,
                                        bool with_gpu_figures, bool with_mfu) {
  std::vector<MetricPlan> out;
  for (const std::string& name : metric_names_of_part(spec, part)) {
    if (!has_data(name)) continue;
    out.push_back(known_metric(name));
    if (name == kPeakMemMetric && with_gpu_figures) {
      out.push_back({"mem_share_pct", "Peak Mem (% of device)", NumberFormat::kFixed, 1});
    }
  }
  const Workload workload = spec.parts[static_cast<size_t>(part.part)].workload;
  if (with_gpu_figures && with_mfu && workload == Workload::kFinetune &&
      has_data(std::string(kTokensPerSecondMetric))) {
    out.push_back({"mfu_pct", "MFU (%)", NumberFormat::kSignificant, 3});
  }
  return out;
}

// Two decimals, or two significant digits below 0.1 ("0.052"); one decimal from 10 on.
std::string ratio_markdown(double ratio) {
  const double size = std::fabs(ratio);
  if (size >= 10 || size == 0 || !std::isfinite(ratio))
    return format_fixed(ratio, size >= 10 ? 1 : 2);
  const int leading = static_cast<int>(std::floor(std::log10(size)));
  return format_fixed(ratio, std::max(2, 1 - leading));
}

std::string env_header(const CompareEnv& env) { return env.label + " (" + env.letter + ")"; }

std::string ratio_header(const Comparison& comparison, size_t env) {
  return comparison.envs[env].letter + "/" + comparison.envs.front().letter;
}

bool any_spread(const CompareTable& table) {
  return std::any_of(table.rows.begin(), table.rows.end(), [](const CompareRow& row) {
    return std::any_of(row.cells.begin(), row.cells.end(),
                       [](const ReportCell& cell) { return cell.values.size() > 1; });
  });
}

std::string fact(const CompareEnv& env, const char* key) {
  const auto it = env.facts.find(key);
  return it == env.facts.end() ? std::string("-") : it->second;
}

bool is_debug(const CompareEnv& env) {
  std::string build = fact(env, "build_type");
  std::transform(build.begin(), build.end(), build.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return build.find("debug") != std::string::npos;
}

std::string ratio_text(const std::optional<double>& ratio, bool markdown) {
  if (!ratio.has_value()) return "-";
  return markdown ? ratio_markdown(*ratio) : format_full(*ratio);
}

// A table's rows as cell texts: the config (its values, or its label without varying keys),
// the cells, the ratios.
std::vector<std::string> row_cells(const CompareTable& table, const CompareRow& row,
                                   bool markdown) {
  std::vector<std::string> cells =
      table.keys.empty() ? std::vector<std::string>{row.label} : row.values;
  for (const ReportCell& cell : row.cells) {
    cells.push_back(markdown ? report_cell_markdown(cell, table.format, table.digits)
                             : report_cell_csv(cell));
  }
  for (const std::optional<double>& ratio : row.ratios)
    cells.push_back(ratio_text(ratio, markdown));
  return cells;
}

// The environments' facts, one row per environment (Markdown: its columns; CSV: its records).
std::vector<std::string> env_cells(const CompareEnv& env) {
  return {env.letter,
          env.label,
          env.cpu ? std::string("-") : fact(env, "gpu_mem_mb"),
          fact(env, "libtorch"),
          fact(env, "cuda"),
          fact(env, "driver"),
          fact(env, "build_type"),
          fact(env, "threads"),
          fact(env, "git_commit")};
}

class MarkdownCompareReporter : public CompareReporter {
 public:
  void begin(const Comparison& c) override {
    out_ << "# Compare: " << c.experiment << "\n\n";
    out_ << "Generated by `harness compare " << c.spec_path << "` from " << join(c.sources, ", ")
         << ".\n";
    if (std::any_of(c.envs.begin(), c.envs.end(), is_debug)) {
      out_ << "\n> **Warning:** some runs were measured in a Debug build: timings are not "
              "representative.\n";
    }
    out_ << "\n## Environments\n\n";
    if (c.envs.empty()) {
      out_ << "No stored run of the spec in any database.\n";
    } else {
      TextTable envs{{"Env", "GPU or host (CPU)", "GPU memory (MB)", "libtorch", "CUDA", "Driver",
                      "Build", "Threads", "Commit", "Runs (ok)", "Database"},
                     {},
                     {}};
      for (const CompareEnv& env : c.envs) {
        std::vector<std::string> cells = env_cells(env);
        cells.push_back(std::to_string(env.runs) + " (" + std::to_string(env.ok) + ")");
        cells.push_back(env.source);
        envs.rows.push_back(std::move(cells));
      }
      out_ << markdown_table(envs);
    }
    if (c.envs.size() > 1) {
      out_ << "\nRatios (`B/A`): an environment's median divided by that of environment "
           << c.envs.front().letter << " (" << markdown_escape(c.envs.front().label)
           << "); below 1 is less memory or time, or lower throughput.\n";
    }
    for (const std::string& note : c.notes) out_ << "\n" << note << "\n";
  }

  void header(const Comparison& c, const CompareTable& table) override {
    const bool in_part = !table.part_title.empty();
    if (table.first_of_part) {
      if (in_part) out_ << "\n## " << table.part_title << "\n";
      if (!table.constants.empty()) out_ << "\nConstant: " << table.constants << "\n";
    }
    out_ << "\n" << (in_part ? "### " : "## ") << table.label << "\n\n";
    table_ = TextTable{};
    for (const std::string& key : table.keys) table_.header.push_back(axis_label(key));
    if (table_.header.empty()) table_.header.emplace_back("Config");
    for (const CompareEnv& env : c.envs) table_.header.push_back(env_header(env));
    for (size_t e = 1; e < c.envs.size(); ++e) table_.header.push_back(ratio_header(c, e));
  }

  void row(const Comparison& /*c*/, const CompareTable& table, const CompareRow& row) override {
    table_.rows.push_back(row_cells(table, row, true));
  }

  void footer(const Comparison& /*c*/, const CompareTable& table) override {
    out_ << markdown_table(table_);
    if (any_spread(table)) out_ << "\nCells: median over repeats ± half their range.\n";
    if (!table.notes.empty()) out_ << "\n";
    for (const std::string& note : table.notes) out_ << note << "\n";
  }

 private:
  TextTable table_;
};

class CsvCompareReporter : public CompareReporter {
 public:
  void begin(const Comparison& c) override {
    csv_line(out_, {"experiment", c.experiment});
    for (const std::string& source : c.sources) csv_line(out_, {"database", source});
    TextTable envs{{"environment", "env", "label", "gpu_mem_mb", "libtorch", "cuda", "driver",
                    "build_type", "threads", "git_commit", "runs", "ok", "database"},
                   {},
                   {}};
    for (const CompareEnv& env : c.envs) {
      std::vector<std::string> cells{"environment"};
      for (std::string& cell : env_cells(env)) cells.push_back(std::move(cell));
      cells.push_back(std::to_string(env.runs));
      cells.push_back(std::to_string(env.ok));
      cells.push_back(env.source);
      envs.rows.push_back(std::move(cells));
    }
    out_ << csv_table(envs);
    for (const std::string& note : c.notes) csv_line(out_, {"note", note});
  }

  void header(const Comparison& c, const CompareTable& table) override {
    out_ << "\n";
    csv_line(out_, {"table", table.label});
    csv_line(out_, {"metric", table.metric});
    if (!table.part_title.empty()) csv_line(out_, {"part", table.part_title});
    if (!table.constants.empty()) csv_line(out_, {"constant", table.constants});
    for (const std::string& note : table.notes) csv_line(out_, {"note", note});
    table_ = TextTable{};
    table_.header = table.keys;
    if (table_.header.empty()) table_.header.emplace_back("config");
    for (const CompareEnv& env : c.envs) table_.header.push_back(env.label);
    for (size_t e = 1; e < c.envs.size(); ++e) table_.header.push_back(ratio_header(c, e));
  }

  void row(const Comparison& /*c*/, const CompareTable& table, const CompareRow& row) override {
    table_.rows.push_back(row_cells(table, row, false));
  }

  void footer(const Comparison& /*c*/, const CompareTable& /*table*/) override {
    out_ << csv_table(table_);
  }

 private:
  TextTable table_;
};

}  // namespace

// ---- Shared helpers ----

std::string environment_field(const Json& env, const char* key) {
  if (!env.is_object()) return {};
  const auto it = env.find(key);
  if (it == env.end() || it->is_null()) return {};
  return it->is_string() ? it->get<std::string>() : it->dump();
}

std::string environment_label(const Json& env) {
  std::string gpu = environment_field(env, "gpu_name");
  if (!gpu.empty()) return gpu;
  const std::string host = environment_field(env, "host");
  std::string cpu = environment_field(env, "cpu");
  if (host.empty()) return cpu;
  return cpu.empty() ? host : host + " (" + cpu + ")";
}

std::string environment_device(const Json& env) {
  std::string gpu = environment_field(env, "gpu_name");
  if (!gpu.empty()) return gpu;
  return environment_label(env).empty() ? std::string() : std::string("cpu");
}

std::string compute_dtype(const Json& config) {
  std::string mp = config.contains("mp") && config["mp"].is_string()
                       ? config["mp"].get<std::string>()
                       : std::string("off");
  if (mp != "off") return mp;
  if (config.contains("dtype") && config["dtype"].is_string()) {
    return config["dtype"].get<std::string>();
  }
  return "fp32";
}

namespace {

// The plan's runs of part `id`, one group per distinct config, in plan order.
std::vector<ConfigGroup> group_runs(const std::vector<RunConfig>& plan, int id) {
  std::vector<ConfigGroup> groups;
  std::map<std::string, size_t> index;  // canonical config -> group
  for (const RunConfig& run : plan) {
    if (run.part != id) continue;
    const std::string canonical = canonical_json(run.config);
    auto it = index.find(canonical);
    if (it == index.end()) {
      ConfigGroup group;
      group.part = id;
      group.workload = run.workload;
      group.config = run.config;
      it = index.emplace(canonical, groups.size()).first;
      groups.push_back(std::move(group));
    }
    groups[it->second].run_ids.push_back(run.run_id);
  }
  return groups;
}

// The keys whose value varies, axes in spec order first; axes of one value are constants.
void vary_keys(const PartSpec* part_spec, PlanPart& part) {
  std::vector<std::string> axes;
  if (part_spec != nullptr) {
    for (const auto& [key, values] : part_spec->axes) axes.push_back(key);
  }
  std::set<std::string> others;
  for (const ConfigGroup& group : part.groups) {
    for (const auto& item : group.config.items()) {
      if (!contains(axes, item.key())) others.insert(item.key());
    }
  }
  std::vector<std::string> ordered = axes;
  ordered.insert(ordered.end(), others.begin(), others.end());
  std::vector<std::string> constants;
  for (const std::string& key : ordered) {
    std::vector<Json> seen;
    for (const ConfigGroup& group : part.groups) {
      Json value = config_value(group.config, key);
      if (!contains(seen, value)) seen.push_back(std::move(value));
    }
    if (seen.size() > 1) {
      part.keys.push_back(key);
    } else if (!seen.empty() && contains(axes, key)) {
      constants.push_back(key + "=" + config_value_text(seen.front()));
    }
  }
  part.constants = join(constants, ", ");
}

// Each group's values of the varying keys, and its label.
void label_groups(PlanPart& part) {
  for (ConfigGroup& group : part.groups) {
    std::vector<std::string> named;
    for (const std::string& key : part.keys) {
      group.values.push_back(config_value_text(config_value(group.config, key)));
      named.push_back(key + "=" + group.values.back());
    }
    group.label = named.empty() ? std::string("(one config)") : join(named, ", ");
  }
}

}  // namespace

std::vector<PlanPart> group_plan(const Spec& spec, const std::vector<RunConfig>& plan) {
  std::vector<int> part_ids;
  for (const RunConfig& run : plan) {
    if (!contains(part_ids, run.part)) part_ids.push_back(run.part);
  }
  std::sort(part_ids.begin(), part_ids.end());

  std::vector<PlanPart> parts;
  for (const int id : part_ids) {
    PlanPart part;
    part.part = id;
    const PartSpec* part_spec = id >= 0 && static_cast<size_t>(id) < spec.parts.size()
                                    ? &spec.parts[static_cast<size_t>(id)]
                                    : nullptr;
    if (spec.parts.size() > 1) {
      part.title =
          "part " + (part_spec != nullptr && !part_spec->label.empty() ? part_spec->label
                                                                       : std::to_string(id));
    }
    part.groups = group_runs(plan, id);
    vary_keys(part_spec, part);
    label_groups(part);
    parts.push_back(std::move(part));
  }
  return parts;
}

// ---- The comparison ----

namespace {

// What the comparison can show beyond stored metrics.
struct Figures {
  bool any_gpu = false;   // device memory and peak FLOP/s are GPU figures
  bool with_mfu = false;  // GPU runs of fine-tuning and a known parameter count
};

// The model's FLOPs per token and the peaks: stated once, above the tables.
std::string mfu_note(const Comparison& c) {
  std::vector<std::string> peaks;
  for (const CompareEnv& env : c.envs) {
    if (env.peak != nullptr) {
      peaks.push_back(env.letter + " as " + std::string(env.peak->name) + " (" +
                      peak_text(*env.peak) + ")");
    }
  }
  std::string note =
      "MFU (model FLOPs utilisation) of fine-tuning = 6 × N × tokens/s / peak FLOP/s, with N "
      "= " +
      with_thousands(*c.params) + " parameters (the " + c.model +
      " preset) and the GPU's dense peak at the run's precision (mp, else dtype, else fp32; "
      "fp32 without TF32).";
  if (!peaks.empty()) note += " Peaks from the vendors' datasheets: " + join(peaks, "; ") + ".";
  note +=
      " 6N counts one forward and one backward pass over every weight: it leaves out "
      "attention's score FLOPs and the recomputation of gradient checkpointing, and counts the "
      "weight gradients that LoRA's frozen weights skip.";
  return note;
}

// Which derived figures the comparison has, with the notes that explain them (or their absence).
Figures figures_of(const std::vector<RunConfig>& plan, Comparison& c) {
  Figures figures;
  figures.any_gpu =
      std::any_of(c.envs.begin(), c.envs.end(), [](const CompareEnv& env) { return !env.cpu; });
  const bool any_finetune = std::any_of(plan.begin(), plan.end(), [](const RunConfig& run) {
    return run.workload == Workload::kFinetune;
  });
  // With CPU runs only, the tables of GPU figures would hold nothing but n/a.
  if (!figures.any_gpu && !c.envs.empty()) {
    c.notes.emplace_back(
        "CPU runs only: no share of device memory and no MFU (the peak table lists GPUs).");
  }
  figures.with_mfu = figures.any_gpu && any_finetune && c.params.has_value();
  if (figures.any_gpu && any_finetune && !c.params.has_value()) {
    c.notes.emplace_back(
        "MFU: not computed: the spec names no model preset, so the parameter "
        "count N is unknown.");
  }
  if (figures.with_mfu) c.notes.push_back(mfu_note(c));
  return figures;
}

// How a table's cells read a run: a stored metric, or a derived figure (mfu_notes collects why
// a run has no MFU).
RunValue value_of(const MetricPlan& metric, const Comparison& c, std::set<std::string>& mfu_notes) {
  if (metric.name == "mem_share_pct") return memory_share_percent;
  if (metric.name == "mfu_pct") {
    return [params = *c.params, &mfu_notes](const StoredRun& run) -> std::optional<double> {
      std::string why;
      std::optional<double> mfu = mfu_percent(run, params, &why);
      if (!why.empty()) mfu_notes.insert(why);
      return mfu;
    };
  }
  return [name = metric.name](const StoredRun& run) { return metric_of(run, name); };
}

// One configuration's cells, one per environment, and their ratios to the first.
CompareRow compare_row(const ConfigGroup& group, const std::vector<EnvColumn>& columns,
                       const RunValue& value) {
  CompareRow row;
  row.label = group.label;
  row.values = group.values;
  for (const EnvColumn& column : columns) {
    std::vector<const StoredRun*> runs;
    for (const std::string& id : group.run_ids) {
      if (const auto it = column.runs.find(id); it != column.runs.end()) {
        runs.push_back(it->second);
      }
    }
    row.cells.push_back(make_report_cell(runs, value));
  }
  const ReportCell& base = row.cells.front();
  for (size_t e = 1; e < row.cells.size(); ++e) {
    const ReportCell& cell = row.cells[e];
    std::optional<double> ratio;
    if (!base.values.empty() && !cell.values.empty()) {
      const double reference = median_of(base.values);
      if (reference != 0) ratio = median_of(cell.values) / reference;
    }
    row.ratios.push_back(ratio);
  }
  return row;
}

CompareTable compare_table(const PlanPart& part, const MetricPlan& metric,
                           const std::vector<EnvColumn>& columns, const Comparison& c) {
  CompareTable table;
  table.part_title = part.title;
  table.constants = part.constants;
  table.metric = metric.name;
  table.label = metric.label;
  table.format = metric.format;
  table.digits = metric.digits;
  table.keys = part.keys;
  if (metric.name == "mem_share_pct" &&
      std::any_of(c.envs.begin(), c.envs.end(), [](const CompareEnv& e) { return e.cpu; })) {
    table.notes.emplace_back("No share of device memory for CPU runs.");
  }
  std::set<std::string> mfu_notes;
  const RunValue value = value_of(metric, c, mfu_notes);
  for (const ConfigGroup& group : part.groups) {
    table.rows.push_back(compare_row(group, columns, value));
  }
  table.notes.insert(table.notes.end(), mfu_notes.begin(), mfu_notes.end());
  return table;
}

// Whether any planned run of the part, in any environment, has a value of `name`.
bool part_has_data(const PlanPart& part, const std::vector<EnvColumn>& columns,
                   const std::string& name) {
  for (const ConfigGroup& group : part.groups) {
    for (const std::string& id : group.run_ids) {
      for (const EnvColumn& column : columns) {
        const auto it = column.runs.find(id);
        if (it != column.runs.end() && metric_of(*it->second, name).has_value()) return true;
      }
    }
  }
  return false;
}

}  // namespace

Comparison build_comparison(const Spec& spec, const std::vector<RunConfig>& plan,
                            const std::vector<CompareSource>& sources) {
  Comparison c;
  c.experiment = spec.name;
  c.spec_path = spec.path;
  for (const CompareSource& source : sources) c.sources.push_back(source.name);

  std::set<std::string> planned;
  for (const RunConfig& run : plan) planned.insert(run.run_id);
  const std::vector<EnvColumn> columns = collect_environments(sources, planned, c.notes);
  for (const EnvColumn& column : columns) c.envs.push_back(column.env);

  if (spec.model.contains("preset") && spec.model["preset"].is_string()) {
    c.model = spec.model["preset"].get<std::string>();
    c.params = preset_param_count(spec);
  }
  const Figures figures = figures_of(plan, c);

  for (const PlanPart& part : group_plan(spec, plan)) {
    const auto has_data = [&](const std::string& name) {
      return part_has_data(part, columns, name);
    };
    bool first = true;
    for (const MetricPlan& metric :
         metrics_of_part(spec, part, has_data, figures.any_gpu, figures.with_mfu)) {
      c.tables.push_back(compare_table(part, metric, columns, c));
      c.tables.back().first_of_part = first;
      first = false;
    }
  }
  return c;
}

std::unique_ptr<CompareReporter> make_compare_reporter(ReportFormat format) {
  if (format == ReportFormat::kCsv) return std::make_unique<CsvCompareReporter>();
  return std::make_unique<MarkdownCompareReporter>();
}

std::string render_comparison(const Comparison& comparison, ReportFormat format) {
  const std::unique_ptr<CompareReporter> reporter = make_compare_reporter(format);
  reporter->begin(comparison);
  for (const CompareTable& table : comparison.tables) {
    reporter->header(comparison, table);
    for (const CompareRow& row : table.rows) reporter->row(comparison, table, row);
    reporter->footer(comparison, table);
  }
  return reporter->str();
}

}  // namespace hx
