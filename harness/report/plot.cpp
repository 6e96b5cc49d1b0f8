#include "harness/report/plot.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <optional>
#include <sstream>
#include <stdexcept>

#include "harness/exec/process.h"
#include "harness/report/stats.h"
#include "harness/store/json_io.h"

namespace hx {
namespace fs = std::filesystem;

namespace {

std::string slug(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (std::isalnum(static_cast<unsigned char>(c))) {
      out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    } else if (!out.empty() && out.back() != '-') {
      out += '-';
    }
  }
  while (!out.empty() && out.back() == '-') out.pop_back();
  return out.empty() ? "table" : out;
}

// gnuplot strings are in double quotes: escape what would end or break them.
std::string quoted(const std::string& text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '\n') {
      out += "\\n";  // gnuplot's own escape: a line break in the label
      continue;
    }
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

std::string column_label(const ReportTable& table, size_t column) {
  std::string label;
  for (const auto& h : table.header) {
    if (!label.empty()) label += '\n';
    label += h.label + " " + h.values[column];
  }
  return label.empty() ? std::to_string(column + 1) : label;
}

bool is_memory(const std::string& metric) {
  return metric.size() > 3 && metric.compare(metric.size() - 3, 3, "_mb") == 0;
}

double memory_limit(const Spec& spec, const PlotOptions& options) {
  return options.limit_mb > 0 ? options.limit_mb : static_cast<double>(spec.memory_limit_mb);
}

std::string limit_line(double limit) {
  std::ostringstream gp;
  gp << "set arrow from graph 0, first " << limit << " to graph 1, first " << limit
     << " nohead dt 2 lw 2 lc rgb 'red'\n"
     << "set label " << quoted("limit " + std::to_string(static_cast<int64_t>(limit)) + " MB")
     << " at graph 0.01, first " << limit * 1.03 << " tc rgb 'red'\n";
  return gp.str();
}

// Runs gnuplot on <stem>.gp, which writes <stem>.svg.
void run_gnuplot(const PlotOptions& options, const std::string& stem) {
  ChildSpec child;
  child.argv = {options.gnuplot, stem + ".gp"};
  if (child.argv[0].find('/') == std::string::npos) {
    // run_child does not search PATH.
    for (const char* dir : {"/usr/bin", "/usr/local/bin", "/bin"}) {
      if (fs::exists(fs::path(dir) / options.gnuplot)) {
        child.argv[0] = (fs::path(dir) / options.gnuplot).string();
        break;
      }
    }
  }
  if (!fs::exists(child.argv[0]))
    throw std::runtime_error("gnuplot not found (" + options.gnuplot +
                             "): install gnuplot-nox (scripts/install-deps.sh)");
  child.stderr_path = stem + ".log";
  child.timeout_s = 60;
  const auto outcome = run_child(child);
  if (outcome.exit_code != 0)
    throw std::runtime_error("gnuplot failed on " + stem + ".gp: " + outcome.stderr_tail);
  fs::remove(stem + ".log");
}

// "gc=on, lora=off": the axes of the run's part that take more than one value.
std::string config_label(const Spec& spec, const RunConfig& run) {
  std::string label;
  if (run.part >= 0 && static_cast<size_t>(run.part) < spec.parts.size()) {
    for (const auto& [key, values] : spec.parts[static_cast<size_t>(run.part)].axes) {
      if (values.size() < 2 || !run.config.contains(key)) continue;
      const Json& value = run.config.at(key);
      label += (label.empty() ? "" : ", ") + key + "=" +
               (value.is_string() ? value.get<std::string>() : value.dump());
    }
  }
  return label.empty() ? "run " + run.run_id : label;
}

std::string number_or_nan(const std::optional<double>& value) {
  if (!value || std::isnan(*value)) return "NaN";
  std::ostringstream out;
  out.precision(10);
  out << *value;
  return out.str();
}

// A bar chart's data: index, value (0 when failed), verdict text, failed flag (gnuplot skips rows
// with NaN entirely, so a failed cell needs a number and a flag to be drawn as a label); and the
// highest value.
struct BarData {
  std::string text;
  double top = 0;
};

BarData bar_data(const ReportRow& row) {
  std::ostringstream data;
  double top = 0;
  for (size_t c = 0; c < row.cells.size(); ++c) {
    const auto& cell = row.cells[c];
    const double value = cell.values.empty() ? NAN : median_of(cell.values);
    if (!std::isnan(value)) top = std::max(top, value);
    std::string verdict = cell.missing ? "-" : cell.verdict;
    data << c << ' ' << (std::isnan(value) ? 0.0 : value) << ' '
         << quoted(verdict.empty() ? "ok" : verdict) << ' ' << (std::isnan(value) ? 1 : 0) << '\n';
  }
  return {data.str(), top};
}

// The gnuplot script of one row's bar chart; `limit` > 0 draws the memory limit line.
std::string bar_script(const ReportTable& table, const ReportRow& row, const std::string& stem,
                       double top, double limit) {
  const size_t columns = row.cells.size();
  std::ostringstream gp;
  gp << "set terminal svg size " << std::max<size_t>(640, 90 * columns + 160)
     << ",480 dynamic font 'sans,11'\n"
     << "set output " << quoted(stem + ".svg") << "\n"
     << "set title "
     << quoted(table.title + (table.subtitle.empty() ? "" : " (" + table.subtitle + ")") + ": " +
               row.label)
     << "\n"
     << "set ylabel " << quoted(row.label) << "\n"
     << "set style fill solid 0.6 border -1\nset boxwidth 0.6\nset grid ytics\n"
     << "set key off\nset bmargin " << 1 + table.header.size() << "\n"
     << "set yrange [0:" << top * 1.15 << "]\n"
     << "set xrange [-0.6:" << static_cast<double>(columns) - 0.4 << "]\n"
     << "set xtics (";
  for (size_t c = 0; c < columns; ++c)
    gp << (c ? ", " : "") << quoted(column_label(table, c)) << ' ' << c;
  gp << ")\n";
  if (limit > 0) gp << limit_line(limit);
  // Failed runs: their verdict written at the bottom of their slot, in red.
  gp << "plot " << quoted(stem + ".dat")
     << " using 1:($4 == 1 ? 1/0 : $2) with boxes lc rgb '#4472c4', '' using 1:($4 == 1 ? "
        "1/0 : $2):(sprintf('%.3g', $2)) with labels offset 0,0.8, '' using 1:($4 == 1 ? "
     << top * 0.05 << " : 1/0):3 with labels tc rgb 'red' font ',12'\n";
  return gp.str();
}

// One row of a report table as a bar chart: writes stem.dat, stem.gp and (with gnuplot) the SVG.
void plot_row(const Spec& spec, const ReportTable& table, const ReportRow& row,
              const std::string& stem, const PlotOptions& options) {
  BarData data = bar_data(row);
  const double limit = memory_limit(spec, options);
  const bool draw_limit = is_memory(row.metric) && limit > 0;
  if (draw_limit) data.top = std::max(data.top, limit);
  if (data.top <= 0) data.top = 1;
  write_file_atomic(stem + ".dat", data.text);
  write_file_atomic(stem + ".gp", bar_script(table, row, stem, data.top, draw_limit ? limit : 0));
  run_gnuplot(options, stem);
}

}  // namespace

std::vector<std::string> plot_report(const Spec& spec, const std::vector<ReportTable>& tables,
                                     const PlotOptions& options) {
  fs::create_directories(options.out_dir);
  std::vector<std::string> written;
  int table_index = 0;
  for (const auto& table : tables) {
    ++table_index;
    const std::string base_name =
        spec.name + "-" + std::to_string(table_index) + "-" +
        slug(table.title + (table.subtitle.empty() ? "" : "-" + table.subtitle));
    for (const auto& row : table.rows) {
      if (row.cells.empty()) continue;
      const fs::path stem = fs::path(options.out_dir) / (base_name + "-" + row.metric);
      plot_row(spec, table, row, stem.string(), options);
      written.push_back(stem.string() + ".svg");
    }
  }
  return written;
}

std::vector<StepCurve> step_curves(const Spec& spec, const std::vector<RunConfig>& plan,
                                   const std::vector<StoredRun>& runs, const Store& store) {
  std::map<std::string, const StoredRun*> stored;
  for (const StoredRun& run : runs) stored.emplace(run.run_id, &run);
  std::vector<StepCurve> curves;
  std::vector<int> repeats;                 // the repeat each curve shows
  std::map<std::string, size_t> by_config;  // part + canonical config -> its curve
  for (const RunConfig& run : plan) {
    const auto it = stored.find(run.run_id);
    if (it == stored.end()) continue;
    std::vector<StepRow> steps = store.load_steps(run.run_id);
    if (std::none_of(steps.begin(), steps.end(),
                     [](const StepRow& s) { return s.loss.has_value() || s.mem_mb.has_value(); }))
      continue;
    const std::string key = std::to_string(run.part) + " " + canonical_json(run.config);
    StepCurve curve;
    curve.part = run.part;
    curve.label = config_label(spec, run);
    if (it->second->status != Status::kOk)
      curve.label += " (" + std::string(to_string(it->second->status)) + ")";
    curve.steps = std::move(steps);
    const auto [pos, fresh] = by_config.emplace(key, curves.size());
    if (fresh) {
      curves.push_back(std::move(curve));
      repeats.push_back(run.repeat);
    } else if (run.repeat < repeats[pos->second]) {
      curves[pos->second] = std::move(curve);
      repeats[pos->second] = run.repeat;
    }
  }
  return curves;
}

namespace {

// The part's name in file names and titles: "" for a spec with one part, else its label or index.
std::string steps_part_name(const Spec& spec, int part) {
  if (spec.parts.size() <= 1) return "";
  const bool known = part >= 0 && static_cast<size_t>(part) < spec.parts.size();
  const std::string label = known ? spec.parts[static_cast<size_t>(part)].label : "";
  return label.empty() ? std::to_string(part) : label;
}

// One block per curve (gnuplot's `index`): step, loss, memory; NaN where there is none.
std::string steps_data(const std::vector<const StepCurve*>& drawn) {
  std::ostringstream data;
  for (const StepCurve* c : drawn) {
    data << "# " << c->label << "\n";
    for (const StepRow& s : c->steps)
      data << s.step << ' ' << number_or_nan(s.loss) << ' ' << number_or_nan(s.mem_mb) << '\n';
    data << "\n\n";
  }
  return data.str();
}

struct Chart {
  const char* suffix;
  int column;
  const char* title;
  const char* ylabel;
};

// The `plot` command of a chart: a curve without a single value in this column is left out
// (gnuplot refuses a plot with no defined point); "" when none has one.
std::string steps_plot_command(const std::vector<const StepCurve*>& drawn, const Chart& chart,
                               const std::string& data_path) {
  std::string plots;
  for (size_t i = 0; i < drawn.size(); ++i) {
    const auto& steps = drawn[i]->steps;
    const bool any = std::any_of(steps.begin(), steps.end(), [&chart](const StepRow& s) {
      return chart.column == 2 ? s.loss.has_value() : s.mem_mb.has_value();
    });
    if (!any) continue;
    plots += std::string(plots.empty() ? "plot " : ", ") + quoted(data_path) + " index " +
             std::to_string(i) + " using 1:" + std::to_string(chart.column) +
             " with linespoints title " + quoted(drawn[i]->label);
  }
  return plots;
}

// The memory chart's y range: from 0, and high enough for the limit line (how close each step
// comes to the limit); then the limit line.
std::string memory_range(const Spec& spec, const PlotOptions& options,
                         const std::vector<const StepCurve*>& drawn) {
  double top = memory_limit(spec, options);
  for (const StepCurve* c : drawn)
    for (const StepRow& s : c->steps)
      if (s.mem_mb && !std::isnan(*s.mem_mb)) top = std::max(top, *s.mem_mb);
  std::ostringstream gp;
  gp << "set yrange [0:" << (top > 0 ? top * 1.15 : 1.0) << "]\n";
  if (memory_limit(spec, options) > 0) gp << limit_line(memory_limit(spec, options));
  return gp.str();
}

// The gnuplot script of one chart of a part's curves, "" when no curve has a value to draw.
std::string steps_script(const Spec& spec, const PlotOptions& options,
                         const std::vector<const StepCurve*>& drawn, const Chart& chart,
                         const std::string& base, const std::string& part_name) {
  const std::string plots = steps_plot_command(drawn, chart, base + ".dat");
  if (plots.empty()) return "";
  int64_t last_step = 0;
  for (const StepCurve* c : drawn)
    for (const StepRow& s : c->steps) last_step = std::max(last_step, s.step);
  const std::string stem = base + "-" + chart.suffix;
  std::ostringstream gp;
  gp << "set terminal svg size 800,480 dynamic font 'sans,11'\n"
     << "set output " << quoted(stem + ".svg") << "\n"
     << "set title "
     << quoted(spec.name + (part_name.empty() ? "" : " (part " + part_name + ")") + ": " +
               chart.title + " per step")
     << "\n"
     << "set xlabel " << quoted("step (from 0; warm-up steps included)") << "\n"
     << "set ylabel " << quoted(chart.ylabel) << "\n"
     << "set grid\nset key outside right top\nset datafile missing 'NaN'\n";
  if (last_step <= 20) gp << "set xtics 1\n";  // whole steps
  if (chart.column == 3) gp << memory_range(spec, options, drawn);
  gp << plots << "\n";
  return gp.str();
}

}  // namespace

std::vector<std::string> plot_steps(const Spec& spec, const std::vector<StepCurve>& curves,
                                    const PlotOptions& options) {
  std::vector<int> parts;
  for (const StepCurve& c : curves)
    if (std::find(parts.begin(), parts.end(), c.part) == parts.end()) parts.push_back(c.part);
  std::sort(parts.begin(), parts.end());
  if (!parts.empty()) fs::create_directories(options.out_dir);

  std::vector<std::string> written;
  for (const int part : parts) {
    const std::string part_name = steps_part_name(spec, part);
    const std::string base =
        (fs::path(options.out_dir) /
         (spec.name + "-steps" + (part_name.empty() ? "" : "-" + slug(part_name))))
            .string();
    std::vector<const StepCurve*> drawn;
    for (const StepCurve& c : curves)
      if (c.part == part) drawn.push_back(&c);
    write_file_atomic(base + ".dat", steps_data(drawn));
    for (const Chart& chart : {Chart{"loss", 2, "loss", "loss"},
                               Chart{"mem", 3, "peak memory", "peak memory of the step (MB)"}}) {
      const std::string script = steps_script(spec, options, drawn, chart, base, part_name);
      if (script.empty()) continue;
      const std::string stem = base + "-" + chart.suffix;
      write_file_atomic(stem + ".gp", script);
      run_gnuplot(options, stem);
      written.push_back(stem + ".svg");
    }
  }
  return written;
}

}  // namespace hx
