#include "harness/report/report.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>
#include <utility>

#include "harness/plan/pretokenize.h"
#include "harness/report/derived.h"
#include "harness/report/stats.h"

namespace hx {
namespace {

template <typename T>
bool contains(const std::vector<T>& values, const T& value) {
  return std::find(values.begin(), values.end(), value) != values.end();
}

std::string env_string(const Json& env, const char* key) {
  const auto it = env.find(key);
  if (it == env.end() || it->is_null()) return {};
  return it->is_string() ? it->get<std::string>() : it->dump();
}

// "NVIDIA H100 (81559 MB, driver 580.65, CUDA 13.0), libtorch 2.11.0, 16 threads, Release
// build, commit 1a2b3c4d5e6f"
std::string environment_line(const Json& env) {
  std::vector<std::string> parts;
  const std::string gpu = env_string(env, "gpu_name");
  if (!gpu.empty()) {
    std::vector<std::string> details;
    if (const std::string mem = env_string(env, "gpu_mem_mb"); !mem.empty() && mem != "0") {
      details.push_back(mem + " MB");
    }
    if (const std::string driver = env_string(env, "driver"); !driver.empty()) {
      details.push_back("driver " + driver);
    }
    if (const std::string cuda = env_string(env, "cuda"); !cuda.empty()) {
      details.push_back("CUDA " + cuda);
    }
    parts.push_back(details.empty() ? gpu : gpu + " (" + join(details, ", ") + ")");
  } else {
    const std::string cpu = env_string(env, "cpu");
    parts.push_back("CPU " + (cpu.empty() ? std::string("(unknown)") : cpu));
  }
  if (const std::string v = env_string(env, "libtorch"); !v.empty())
    parts.push_back("libtorch " + v);
  if (const std::string v = env_string(env, "threads"); !v.empty())
    parts.push_back(v + (v == "1" ? " thread" : " threads"));
  if (const std::string v = env_string(env, "build_type"); !v.empty())
    parts.push_back(v + " build");
  if (const std::string v = env_string(env, "compiler"); !v.empty()) parts.push_back(v);
  if (const std::string v = env_string(env, "git_commit"); !v.empty()) {
    parts.push_back("commit " + v);
  }
  return join(parts, ", ");
}

bool is_debug_build(const Json& env) {
  std::string build = env_string(env, "build_type");
  std::transform(build.begin(), build.end(), build.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return build == "debug";
}

// The order in which a key's values appear: the spec's axis order first, then values met only
// in runs (include entries, fixed keys) in plan order.
class ValueOrder {
 public:
  void add(const std::string& key, const Json& value) {
    auto& values = order_[key];
    if (!contains(values, value)) values.push_back(value);
  }
  const std::vector<Json>& values(const std::string& key) const { return order_.at(key); }
  size_t rank(const std::string& key, const Json& value) const {
    const auto& values = order_.at(key);
    return static_cast<size_t>(std::find(values.begin(), values.end(), value) - values.begin());
  }

 private:
  std::map<std::string, std::vector<Json>> order_;
};

Json config_value(const Json& config, const std::string& key) {
  const auto it = config.find(key);
  return it == config.end() ? Json(nullptr) : *it;
}

using Combo = std::vector<Json>;

Combo combo_of(const Json& config, const std::vector<std::string>& keys) {
  Combo combo;
  combo.reserve(keys.size());
  for (const std::string& key : keys) combo.push_back(config_value(config, key));
  return combo;
}

// Distinct combinations of `keys` over `runs`, sorted by the value order of each key in turn
// (the first key varies slowest, as in the seed tables).
std::vector<Combo> distinct_combos(const std::vector<const RunConfig*>& runs,
                                   const std::vector<std::string>& keys, const ValueOrder& order) {
  std::vector<Combo> combos;
  for (const RunConfig* run : runs) {
    Combo combo = combo_of(run->config, keys);
    if (!contains(combos, combo)) combos.push_back(std::move(combo));
  }
  std::stable_sort(combos.begin(), combos.end(), [&](const Combo& a, const Combo& b) {
    for (size_t i = 0; i < keys.size(); ++i) {
      const size_t ra = order.rank(keys[i], a[i]);
      const size_t rb = order.rank(keys[i], b[i]);
      if (ra != rb) return ra < rb;
    }
    return false;
  });
  return combos;
}

std::string describe(const std::vector<std::string>& keys, const Combo& combo) {
  std::vector<std::string> parts;
  for (size_t i = 0; i < keys.size(); ++i)
    parts.push_back(keys[i] + "=" + config_value_text(combo[i]));
  return join(parts, ", ");
}

ReportCell make_cell(const std::vector<const StoredRun*>& runs, const std::string& metric,
                     std::optional<int64_t> params) {
  return make_report_cell(
      runs, [&metric, params](const StoredRun& run) { return metric_value(run, metric, params); });
}

std::string part_name(const Spec& spec, int part) {
  if (part >= 0 && static_cast<size_t>(part) < spec.parts.size() &&
      !spec.parts[static_cast<size_t>(part)].label.empty()) {
    return spec.parts[static_cast<size_t>(part)].label;
  }
  return std::to_string(part);
}

// How a table's config keys are used: columns (the TableSpec's), split keys (vary outside the
// columns: one table per combination) and constants (matrix axes of one value, stated once).
struct KeyRoles {
  ValueOrder order;
  std::vector<std::string> split_keys;
  std::vector<std::string> constants;  // "key=value"
};

std::vector<Json> distinct_values(const std::vector<const RunConfig*>& plan,
                                  const std::string& key) {
  std::vector<Json> seen;
  for (const RunConfig* run : plan) {
    Json value = config_value(run->config, key);
    if (!contains(seen, value)) seen.push_back(std::move(value));
  }
  return seen;
}

// The part's matrix axes in spec order, their values added to `order` in spec order.
std::vector<std::string> part_axes(const Spec& spec, int part, ValueOrder& order) {
  std::vector<std::string> axes;
  if (part < 0 || static_cast<size_t>(part) >= spec.parts.size()) return axes;
  for (const auto& [key, values] : spec.parts[static_cast<size_t>(part)].axes) {
    if (!contains(axes, key)) axes.push_back(key);
    for (const Json& value : values) order.add(key, value);
  }
  return axes;
}

KeyRoles assign_key_roles(const Spec& spec, const TableSpec& table_spec, int part,
                          const std::vector<const RunConfig*>& plan) {
  KeyRoles roles;
  const std::vector<std::string> axes = part_axes(spec, part, roles.order);
  std::set<std::string> keys(table_spec.columns.begin(), table_spec.columns.end());
  for (const RunConfig* run : plan) {
    for (const auto& item : run->config.items()) keys.insert(item.key());
  }
  for (const RunConfig* run : plan) {
    for (const std::string& key : keys) roles.order.add(key, config_value(run->config, key));
  }

  // Axes in spec order first, so that subtitles read like the matrix; then other keys (an
  // include entry may set a fixed key to another value).
  std::vector<std::string> ordered = axes;
  for (const std::string& key : keys) {
    if (!contains(axes, key)) ordered.push_back(key);
  }
  for (const std::string& key : ordered) {
    if (contains(table_spec.columns, key)) continue;
    const std::vector<Json> seen = distinct_values(plan, key);
    if (seen.size() > 1) {
      roles.split_keys.push_back(key);
    } else if (!seen.empty() && contains(axes, key)) {
      roles.constants.push_back(key + "=" + config_value_text(seen.front()));
    }
  }
  return roles;
}

// The header rows of a table: column axes with one value in every column are stated in
// `hidden` instead, unless that would leave no header row at all.
std::vector<ReportHeaderRow> header_rows(const std::vector<std::string>& column_keys,
                                         const std::vector<Combo>& columns,
                                         std::vector<std::string>& hidden) {
  std::vector<ReportHeaderRow> rows;
  std::vector<std::string> constant;
  for (size_t i = 0; i < column_keys.size(); ++i) {
    ReportHeaderRow row{column_keys[i], axis_label(column_keys[i]), {}};
    for (const Combo& column : columns) row.values.push_back(config_value_text(column[i]));
    const bool same = std::all_of(row.values.begin(), row.values.end(),
                                  [&](const std::string& v) { return v == row.values.front(); });
    if (same && !row.values.empty()) {
      constant.push_back(column_keys[i] + "=" + row.values.front());
    } else {
      rows.push_back(std::move(row));
    }
  }
  if (rows.empty()) {
    for (size_t i = 0; i < column_keys.size(); ++i) {
      ReportHeaderRow row{column_keys[i], axis_label(column_keys[i]), {}};
      for (const Combo& column : columns) row.values.push_back(config_value_text(column[i]));
      rows.push_back(std::move(row));
    }
    constant.clear();
  }
  hidden.insert(hidden.begin(), constant.begin(), constant.end());
  return rows;
}

// Distinct environments of the plan's stored runs, in plan order.
void collect_environments(const std::vector<const RunConfig*>& plan,
                          const std::map<std::string, const StoredRun*>& stored,
                          ReportTable& table) {
  for (const RunConfig* run : plan) {
    const auto it = stored.find(run->run_id);
    if (it == stored.end() || it->second->env.empty()) continue;
    std::string line = environment_line(it->second->env);
    if (!contains(table.environment, line)) table.environment.push_back(std::move(line));
    table.debug_build = table.debug_build || is_debug_build(it->second->env);
  }
}

// `params`: the model's parameter count, for the computed `mfu` (derived.h).
std::vector<ReportRow> metric_rows(const std::vector<std::string>& metrics,
                                   const std::vector<std::vector<const StoredRun*>>& cell_runs,
                                   std::optional<int64_t> params) {
  std::vector<ReportRow> rows;
  rows.reserve(metrics.size());
  for (const std::string& metric : metrics) {
    ReportRow row;
    row.metric = metric;
    // A metric unknown to the field table is shown by its stored name.
    const Field field = metric_field_or_raw(metric);
    row.label = std::string(field.label);
    row.format = field.format;
    row.digits = field.digits;
    row.cells.reserve(cell_runs.size());
    for (const auto& runs : cell_runs) row.cells.push_back(make_cell(runs, metric, params));
    rows.push_back(std::move(row));
  }
  return rows;
}

// The columns of an arrows table: the baseline (every column axis at its first value), then
// each axis's other values in turn with the rest at baseline.
std::vector<Combo> arrow_columns(const std::vector<std::string>& keys, const ValueOrder& order,
                                 ReportHeaderRow& header) {
  Combo baseline;
  for (const std::string& key : keys) baseline.push_back(order.values(key).front());
  std::vector<Combo> columns = {baseline};
  header = {"metric", "Metric", {"baseline"}};
  for (size_t i = 0; i < keys.size(); ++i) {
    for (const Json& value : order.values(keys[i])) {
      if (value == baseline[i]) continue;
      Combo column = baseline;
      column[i] = value;
      columns.push_back(std::move(column));
      header.values.push_back(axis_label(keys[i]) + "=" + config_value_text(value));
    }
  }
  return columns;
}

// Arrows against the first column; a change within 2% counts as none.
void mark_changes(std::vector<ReportRow>& rows) {
  constexpr double kNoise = 0.02;
  for (ReportRow& row : rows) {
    const ReportCell& base = row.cells.front();
    if (base.values.empty()) continue;
    const double reference = median_of(base.values);
    for (size_t c = 1; c < row.cells.size(); ++c) {
      ReportCell& cell = row.cells[c];
      if (cell.values.empty()) continue;
      const double delta = median_of(cell.values) - reference;
      if (std::fabs(delta) <= kNoise * std::fabs(reference)) {
        cell.change = "-";
      } else if (reference == 0) {
        cell.change = delta > 0 ? "up" : "down";
      } else {
        const long percent = std::lround(100 * std::fabs(delta / reference));
        cell.change = (delta > 0 ? "up " : "down ") + std::to_string(percent) + "%";
      }
    }
  }
}

// Builds the tables of one TableSpec over the planned runs of one part of the spec.
void build_table(const Spec& spec, const TableSpec& table_spec, int part, bool name_part,
                 const std::vector<const RunConfig*>& plan,
                 const std::map<std::string, const StoredRun*>& stored,
                 std::vector<ReportTable>& out) {
  const KeyRoles roles = assign_key_roles(spec, table_spec, part, plan);
  const bool arrows = table_spec.kind == "arrows";
  const std::vector<Combo> splits = distinct_combos(plan, roles.split_keys, roles.order);

  ReportTable shared;
  shared.title = table_spec.title;
  std::vector<std::string> constants = roles.constants;
  std::vector<Combo> columns;
  if (arrows) {
    shared.header.emplace_back();
    columns = arrow_columns(table_spec.columns, roles.order, shared.header.front());
  } else {
    columns = distinct_combos(plan, table_spec.columns, roles.order);
    shared.header = header_rows(table_spec.columns, columns, constants);
  }
  shared.constants = join(constants, ", ");
  collect_environments(plan, stored, shared);

  for (size_t s = 0; s < splits.size(); ++s) {
    ReportTable table = shared;
    table.first_of_title = s == 0;
    std::vector<std::string> subtitle;
    if (name_part) subtitle.push_back("part " + part_name(spec, part));
    if (!roles.split_keys.empty()) subtitle.push_back(describe(roles.split_keys, splits[s]));
    table.subtitle = join(subtitle, ", ");

    // The stored runs of each column, all repeats.
    std::vector<std::vector<const StoredRun*>> cell_runs(columns.size());
    for (const RunConfig* run : plan) {
      if (combo_of(run->config, roles.split_keys) != splits[s]) continue;
      const auto column =
          std::find(columns.begin(), columns.end(), combo_of(run->config, table_spec.columns));
      if (column == columns.end()) continue;  // arrows: two techniques at once
      if (const auto it = stored.find(run->run_id); it != stored.end()) {
        cell_runs[static_cast<size_t>(column - columns.begin())].push_back(it->second);
      }
    }
    table.rows = metric_rows(table_spec.rows, cell_runs, preset_param_count(spec));
    if (arrows) mark_changes(table.rows);
    out.push_back(std::move(table));
  }
}

bool has_spread(const ReportRow& row) {
  return std::any_of(row.cells.begin(), row.cells.end(),
                     [](const ReportCell& cell) { return cell.values.size() > 1; });
}

// The run's part: as stored, or for rows from before runs.part (or a part the spec no longer has)
// the first part whose workload, fixed values and axis values admit the run's config; 0 when
// none does.
int infer_part(const Spec& spec, const StoredRun& run) {
  if (run.part && *run.part >= 0 && static_cast<size_t>(*run.part) < spec.parts.size())
    return *run.part;
  for (size_t p = 0; p < spec.parts.size(); ++p) {
    const PartSpec& part = spec.parts[p];
    if (run.workload && part.workload != *run.workload) continue;
    bool fits = true;
    for (const auto& [key, value] : part.fixed.items()) {
      const bool is_axis =
          std::any_of(part.axes.begin(), part.axes.end(),
                      [&key = key](const auto& axis) { return axis.first == key; });
      if (!is_axis && config_value(run.config, key) != value) fits = false;
    }
    for (const auto& [key, values] : part.axes) {
      if (!contains(values, config_value(run.config, key))) fits = false;
    }
    if (fits) return static_cast<int>(p);
  }
  return 0;
}

// The planned runs a table selects by workload and part.
std::vector<const RunConfig*> table_plan(const Spec& spec, const TableSpec& table_spec,
                                         const std::vector<RunConfig>& planned) {
  std::vector<const RunConfig*> plan;
  for (const RunConfig& run : planned) {
    if (table_selects(spec, table_spec, run.part, run.workload)) plan.push_back(&run);
  }
  return plan;
}

ReportTable note_table(const TableSpec& table_spec, const std::string& note) {
  ReportTable table;
  table.title = table_spec.title;
  table.notes.push_back(note);
  return table;
}

}  // namespace

bool table_selects(const Spec& spec, const TableSpec& table, int part,
                   std::optional<Workload> workload) {
  if (table.workload && workload != table.workload) return false;
  return table.part.empty() || part_name(spec, part) == table.part;
}

ReportCell make_report_cell(const std::vector<const StoredRun*>& runs,
                            const std::function<std::optional<double>(const StoredRun&)>& value) {
  ReportCell cell;
  if (runs.empty()) {
    cell.missing = true;
    return cell;
  }
  std::vector<std::string> failures;
  bool any_ok = false;
  for (const StoredRun* run : runs) {
    if (run->status != Status::kOk) {
      failures.emplace_back(status_label(run->status));
      continue;
    }
    any_ok = true;
    if (const std::optional<double> v = value(*run); v.has_value() && std::isfinite(*v)) {
      cell.values.push_back(*v);
    }
  }
  if (!any_ok) {
    std::vector<std::string> distinct;
    for (const std::string& word : failures) {
      if (!contains(distinct, word)) distinct.push_back(word);
    }
    cell.verdict = join(distinct, "/");
    return cell;
  }
  cell.failed = failures;
  if (cell.values.empty()) cell.not_measured = true;
  return cell;
}

// ---- Cell and field text (shared with compare and gate) ----

std::string report_cell_markdown(const ReportCell& cell, NumberFormat format, int digits) {
  if (cell.missing) return "-";
  if (!cell.verdict.empty()) return cell.verdict;
  if (cell.not_measured) return "n/a";
  const double mid = median_of(cell.values);
  const Field field{"", "", "", "", format, digits};
  const int decimals = display_decimals(field, mid);
  std::string text = format_fixed(mid, decimals);
  if (cell.values.size() > 1) text += " ± " + format_fixed(half_range(cell.values), decimals);
  if (!cell.failed.empty()) {
    std::map<std::string, int> counts;
    for (const std::string& word : cell.failed) ++counts[word];
    std::vector<std::string> parts;
    parts.reserve(counts.size());
    for (const auto& [word, count] : counts) {
      parts.push_back("+" + std::to_string(count) + " " + word);
    }
    text += " (" + join(parts, ", ") + ")";
  }
  if (!cell.change.empty()) text += " (" + cell.change + ")";
  return text;
}

std::string report_cell_csv(const ReportCell& cell) {
  if (cell.missing) return "-";
  if (!cell.verdict.empty()) return cell.verdict;
  if (cell.not_measured) return "n/a";
  return format_full(median_of(cell.values));
}

ReportFormat parse_report_format(const std::string& name) {
  if (name == "md" || name == "markdown") return ReportFormat::kMarkdown;
  if (name == "csv") return ReportFormat::kCsv;
  throw std::invalid_argument("unknown report format \"" + name + "\" (expected md, csv)");
}

std::string report_extension(ReportFormat format) {
  return format == ReportFormat::kCsv ? "csv" : "md";
}

// ---- Markdown ----

void MarkdownReporter::begin(const Spec& spec, int stale_runs) {
  out_ << "# " << spec.name << "\n\n";
  out_ << "Generated by `harness report " << spec.path << "`.\n";
  if (stale_runs > 0) {
    out_ << "\n"
         << stale_runs
         << " stored run(s) of this experiment belong to an earlier version of the spec and are "
            "not shown.\n";
  }
}

void MarkdownReporter::header(const ReportTable& table) {
  if (table.first_of_title) {
    out_ << "\n## " << table.title << "\n\n";
    if (table.debug_build) {
      out_ << "> **Warning:** measured in a Debug build: timings are not representative.\n\n";
    }
    if (table.environment.empty()) {
      out_ << "Environment: unknown (no stored run).\n";
    } else if (table.environment.size() == 1) {
      out_ << "Environment: " << table.environment.front() << "\n";
    } else {
      out_ << "Environments (runs of this table come from " << table.environment.size()
           << "; compare with care):\n";
      for (const std::string& line : table.environment) out_ << "- " << line << "\n";
    }
    if (!table.constants.empty()) out_ << "\nConstant: " << table.constants << "\n";
  }
  if (!table.subtitle.empty()) out_ << "\n### " << table.subtitle << "\n";
  out_ << "\n";
  for (const std::string& note : table.notes) out_ << note << "\n";
  // The first header row heads the table; the others are its first rows.
  table_ = TextTable{};
  for (size_t h = 0; h < table.header.size(); ++h) {
    const ReportHeaderRow& header = table.header[h];
    std::vector<std::string> cells{header.label};
    cells.insert(cells.end(), header.values.begin(), header.values.end());
    if (h == 0) {
      table_.header = std::move(cells);
    } else {
      table_.rows.push_back(std::move(cells));
    }
  }
}

void MarkdownReporter::row(const ReportTable& /*table*/, const ReportRow& row) {
  std::vector<std::string> cells{row.label};
  for (const ReportCell& cell : row.cells) {
    cells.push_back(report_cell_markdown(cell, row.format, row.digits));
  }
  table_.rows.push_back(std::move(cells));
}

void MarkdownReporter::footer(const ReportTable& table) {
  if (table.header.empty()) return;
  out_ << markdown_table(table_);
  bool spread_shown = false;
  for (const ReportRow& row : table.rows) spread_shown = spread_shown || has_spread(row);
  if (spread_shown) out_ << "\nCells: median over repeats ± half their range, (max - min) / 2.\n";
}

// ---- CSV ----

void CsvReporter::begin(const Spec& spec, int stale_runs) {
  csv_line(out_, {"experiment", spec.name});
  if (stale_runs > 0) {
    csv_line(out_, {"stale_runs", std::to_string(stale_runs)});
  }
}

void CsvReporter::header(const ReportTable& table) {
  out_ << "\n";
  csv_line(out_, {"table", table.title});
  if (!table.subtitle.empty()) csv_line(out_, {"subtable", table.subtitle});
  for (const std::string& line : table.environment) csv_line(out_, {"environment", line});
  if (table.debug_build) csv_line(out_, {"warning", "Debug build: timings are not representative"});
  if (!table.constants.empty()) csv_line(out_, {"constant", table.constants});
  for (const std::string& note : table.notes) csv_line(out_, {"note", note});
  for (const ReportHeaderRow& header : table.header) {
    std::vector<std::string> fields{header.key};
    fields.insert(fields.end(), header.values.begin(), header.values.end());
    csv_line(out_, fields);
  }
}

void CsvReporter::row(const ReportTable& /*table*/, const ReportRow& row) {
  std::vector<std::string> fields{row.metric};
  for (const ReportCell& cell : row.cells) fields.push_back(report_cell_csv(cell));
  csv_line(out_, fields);
  if (!has_spread(row)) return;
  std::vector<std::string> spreads{row.metric + " half_range"};
  for (const ReportCell& cell : row.cells) {
    spreads.push_back(cell.values.size() > 1 ? format_full(half_range(cell.values)) : "");
  }
  csv_line(out_, spreads);
}

void CsvReporter::footer(const ReportTable& /*table*/) {}

std::unique_ptr<Reporter> make_reporter(ReportFormat format) {
  if (format == ReportFormat::kCsv) return std::make_unique<CsvReporter>();
  return std::make_unique<MarkdownReporter>();
}

// ---- Building and rendering ----

std::vector<ReportTable> build_report_tables(const Spec& spec,
                                             const std::vector<RunConfig>& planned,
                                             const std::vector<StoredRun>& stored_runs) {
  // Figures computed across runs (derived.h) join the stored metrics first.
  const std::vector<StoredRun> runs = with_scaling_efficiency(stored_runs);
  std::map<std::string, const StoredRun*> stored;
  for (const StoredRun& run : runs) stored.emplace(run.run_id, &run);

  std::vector<ReportTable> out;
  for (const TableSpec& table_spec : spec.tables) {
    if (table_spec.kind != "pivot" && table_spec.kind != "arrows") {
      out.push_back(note_table(table_spec, "(Tables of kind \"" + table_spec.kind +
                                               "\" are not rendered by this version.)"));
      continue;
    }
    const std::vector<const RunConfig*> plan = table_plan(spec, table_spec, planned);
    if (plan.empty()) {
      out.push_back(note_table(table_spec, "(No runs of the spec belong to this table.)"));
      continue;
    }
    // One table per part: two parts may run the same config on different data or models,
    // so their runs must not meet in one cell.
    std::vector<int> parts;
    for (const RunConfig* run : plan) {
      if (!contains(parts, run->part)) parts.push_back(run->part);
    }
    std::sort(parts.begin(), parts.end());
    for (const int part : parts) {
      std::vector<const RunConfig*> part_plan;
      for (const RunConfig* run : plan) {
        if (run->part == part) part_plan.push_back(run);
      }
      build_table(spec, table_spec, part, parts.size() > 1, part_plan, stored, out);
    }
  }
  return out;
}

std::string render_report(const Spec& spec, const std::vector<RunConfig>& planned,
                          const std::vector<StoredRun>& runs, ReportFormat format) {
  std::set<std::string> planned_ids;
  for (const RunConfig& run : planned) planned_ids.insert(run.run_id);
  int stale = 0;
  for (const StoredRun& run : runs) stale += planned_ids.contains(run.run_id) ? 0 : 1;

  const std::unique_ptr<Reporter> reporter = make_reporter(format);
  reporter->begin(spec, stale);
  for (const ReportTable& table : build_report_tables(spec, planned, runs)) {
    reporter->header(table);
    for (const ReportRow& row : table.rows) reporter->row(table, row);
    reporter->footer(table);
  }
  return reporter->str();
}

std::string render_report(const Spec& spec, const std::vector<StoredRun>& runs,
                          ReportFormat format) {
  std::vector<RunConfig> planned;
  planned.reserve(runs.size());
  for (const StoredRun& run : runs) {
    RunConfig config;
    config.run_id = run.run_id;
    config.repeat = run.repeat;
    config.config = run.config;
    config.canonical = run.config.dump();
    config.part = infer_part(spec, run);
    // A row without a workload (NULL) takes its part's.
    config.workload = run.workload.value_or(spec.parts[static_cast<size_t>(config.part)].workload);
    planned.push_back(std::move(config));
  }
  return render_report(spec, planned, runs, format);
}

namespace {
// One line of generated text as a Markdown code span: line breaks shown as ⏎, backticks as '.
std::string code_span(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (c == '\n') {
      out += "⏎";
    } else if (c == '`') {
      out += '\'';
    } else if (c != '\r') {
      out += c;
    }
  }
  return out.empty() ? "(nothing)" : "`" + out + "`";
}

// One run's texts under "### <axes>": each prompt with the text before and after fine-tuning.
void generations_of_run(const Spec& spec, const RunConfig& run,
                        std::map<std::string, std::string>& texts, std::ostringstream& out) {
  std::string label;
  for (const auto& [key, values] : spec.parts[static_cast<size_t>(run.part)].axes) {
    const auto& v = run.config.at(key);
    label +=
        (label.empty() ? "" : ", ") + key + "=" + (v.is_string() ? v.get<std::string>() : v.dump());
  }
  if (spec.repeats > 1) label += " #" + std::to_string(run.repeat);
  out << "\n### " << (label.empty() ? run.run_id : label) << "\n";
  const auto& prompts = sample_prompts();
  for (size_t i = 0; i < prompts.size(); ++i) {
    const std::string key = std::to_string(i);
    if (!texts.contains("before/" + key) && !texts.contains("after/" + key)) continue;
    out << "\n"
        << i + 1 << ". " << prompts[i].instruction
        << (prompts[i].input.empty() ? "" : " (" + prompts[i].input + ")") << "\n"
        << "   - before: " << code_span(texts["before/" + key]) << "\n"
        << "   - after: " << code_span(texts["after/" + key]) << "\n";
  }
}

}  // namespace

std::string render_generations(
    const Spec& spec, const std::vector<RunConfig>& planned,
    const std::function<std::vector<std::pair<std::string, std::string>>(const std::string&)>&
        texts_of) {
  std::ostringstream out;
  bool any = false;
  for (const RunConfig& run : planned) {
    // Generations only: a run stores other texts too (peak_mem_mb_by_rank).
    std::map<std::string, std::string> texts;
    for (auto& [name, text] : texts_of(run.run_id))
      if (name.starts_with("before/") || name.starts_with("after/")) texts[name] = text;
    if (texts.empty()) continue;
    if (!any) {
      out << "\n## Generations before and after fine-tuning\n\nGreedy answers to fixed "
             "instructions (Alpaca prompt) before the first step and after the last.\n";
      any = true;
    }
    generations_of_run(spec, run, texts, out);
  }
  return out.str();
}

}  // namespace hx
