// `harness plot`: gnuplot (a real child process) draws one SVG per table and metric, with the
// memory limit line and failed configurations labelled by their verdict.
#include <gtest/gtest.h>

#include <filesystem>

#include "harness/json_io.h"
#include "harness/plot.h"

namespace hx {
namespace {

TEST(Plot, MemoryChartShowsLimitAndOomFrontier) {
  if (!std::filesystem::exists("/usr/bin/gnuplot")) GTEST_SKIP() << "gnuplot-nox not installed";
  Spec spec;
  spec.name = "plotdemo";
  spec.memory_limit_mb = 16000;
  ReportTable table;
  table.title = "Fine-tuning";
  table.header.push_back({"gc", "GC", {"off", "on"}});
  ReportRow row;
  row.metric = "peak_mem_mb";
  row.label = "Peak Mem (MB)";
  ReportCell ok;
  ok.values = {11953.5};
  ReportCell oom;
  oom.verdict = "OOM";
  row.cells = {oom, ok};
  table.rows.push_back(row);

  const auto dir = std::filesystem::temp_directory_path() / "hx-plot-test";
  std::filesystem::remove_all(dir);
  PlotOptions options;
  options.out_dir = dir.string();
  const auto files = plot_report(spec, {table}, options);
  ASSERT_EQ(files.size(), 1U);
  const std::string svg = read_file(files[0]);
  EXPECT_NE(svg.find("<svg"), std::string::npos);
  EXPECT_NE(svg.find("OOM"), std::string::npos);
  EXPECT_NE(svg.find("limit 16000 MB"), std::string::npos);
  EXPECT_NE(svg.find("1.2e+04"), std::string::npos);  // the bar's value label
  std::filesystem::remove_all(dir);
}

TEST(Plot, MissingGnuplotIsAClearError) {
  Spec spec;
  spec.name = "x";
  ReportTable table;
  table.title = "t";
  ReportRow row;
  row.metric = "step_time_s";
  row.label = "Runtime";
  row.cells.resize(1);
  table.rows.push_back(row);
  PlotOptions options;
  options.out_dir = (std::filesystem::temp_directory_path() / "hx-plot-missing").string();
  options.gnuplot = "/nonexistent/gnuplot";
  try {
    plot_report(spec, {table}, options);
    FAIL();
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("gnuplot-nox"), std::string::npos);
  }
}

}  // namespace
}  // namespace hx
