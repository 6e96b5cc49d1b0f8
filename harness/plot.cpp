#include "harness/plot.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <sstream>
#include <stdexcept>

#include "harness/json_io.h"
#include "harness/process.h"
#include "harness/stats.h"

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

}  // namespace

std::vector<std::string> plot_report(const Spec& spec, const std::vector<ReportTable>& tables,
                                     const PlotOptions& options) {
  fs::create_directories(options.out_dir);
  std::vector<std::string> written;
  int table_index = 0;
  for (const auto& table : tables) {
    ++table_index;
    const std::string base_name = spec.name + "-" + std::to_string(table_index) + "-" +
                                  slug(table.title + (table.subtitle.empty() ? "" : "-" +
                                                                               table.subtitle));
    for (const auto& row : table.rows) {
      const size_t columns = row.cells.size();
      if (columns == 0) continue;
      const fs::path stem = fs::path(options.out_dir) / (base_name + "-" + row.metric);
      // Data: index, value (0 when failed), verdict text, failed flag. (gnuplot skips rows with
      // NaN entirely, so a failed cell needs a number and a flag to be drawn as a label.)
      std::ostringstream data;
      double top = 0;
      for (size_t c = 0; c < columns; ++c) {
        const auto& cell = row.cells[c];
        const double value = cell.values.empty() ? NAN : median_of(cell.values);
        if (!std::isnan(value)) top = std::max(top, value);
        std::string verdict = cell.missing ? "-" : cell.verdict;
        data << c << ' ' << (std::isnan(value) ? 0.0 : value) << ' '
             << quoted(verdict.empty() ? "ok" : verdict) << ' ' << (std::isnan(value) ? 1 : 0)
             << '\n';
      }
      const double limit = options.limit_mb > 0 ? options.limit_mb
                                                : static_cast<double>(spec.memory_limit_mb);
      const bool draw_limit = is_memory(row.metric) && limit > 0;
      if (draw_limit) top = std::max(top, limit);
      if (top <= 0) top = 1;
      write_file_atomic(stem.string() + ".dat", data.str());

      std::ostringstream gp;
      gp << "set terminal svg size " << std::max<size_t>(640, 90 * columns + 160)
         << ",480 dynamic font 'sans,11'\n"
         << "set output " << quoted(stem.string() + ".svg") << "\n"
         << "set title " << quoted(table.title + (table.subtitle.empty() ? "" : " (" +
                                                 table.subtitle + ")") + ": " + row.label)
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
      if (draw_limit)
        gp << "set arrow from graph 0, first " << limit << " to graph 1, first " << limit
           << " nohead dt 2 lw 2 lc rgb 'red'\n"
           << "set label " << quoted("limit " + std::to_string(static_cast<int64_t>(limit)) +
                                     " MB")
           << " at graph 0.01, first " << limit * 1.03 << " tc rgb 'red'\n";
      // Failed runs: their verdict written at the bottom of their slot, in red.
      gp << "plot " << quoted(stem.string() + ".dat")
         << " using 1:($4 == 1 ? 1/0 : $2) with boxes lc rgb '#4472c4', '' using 1:($4 == 1 ? "
            "1/0 : $2):(sprintf('%.3g', $2)) with labels offset 0,0.8, '' using 1:($4 == 1 ? "
         << top * 0.05 << " : 1/0):3 with labels tc rgb 'red' font ',12'\n";
      write_file_atomic(stem.string() + ".gp", gp.str());

      ChildSpec child;
      child.argv = {options.gnuplot, stem.string() + ".gp"};
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
      child.stderr_path = stem.string() + ".log";
      child.timeout_s = 60;
      const auto outcome = run_child(child);
      if (outcome.exit_code != 0)
        throw std::runtime_error("gnuplot failed on " + stem.string() + ".gp: " +
                                 outcome.stderr_tail);
      fs::remove(stem.string() + ".log");
      written.push_back(stem.string() + ".svg");
    }
  }
  return written;
}

}  // namespace hx
