// `harness plot`: gnuplot (a real child process) draws one SVG per table and metric, with the
// memory limit line and failed configurations labelled by their verdict; and the per-step loss
// and memory curves from the `steps` table.
#include <gtest/gtest.h>

#include <filesystem>

#include "harness/report/plot.h"
#include "harness/store/json_io.h"
#include "tests/core/fixtures.h"
#include "tests/core/temp_dir_test.h"

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

class StepPlot : public testing::TempDirTest {
 protected:
  StepPlot() : TempDirTest("plot_steps") {}

  // A gc x mp fine-tuning part (report_small's) and a generation part.
  static Spec two_part_spec() {
    Spec spec;
    spec.name = "steps_demo";
    spec.memory_limit_mb = 100;
    PartSpec finetune;
    finetune.label = "tune";
    finetune.workload = Workload::kFinetune;
    finetune.axes = {{"gc", {"off", "on"}}, {"mp", {"off", "fp16"}}, {"ga", {1}}};
    spec.parts.push_back(finetune);
    PartSpec generate;
    generate.label = "gen";
    generate.workload = Workload::kGenerate;
    spec.parts.push_back(generate);
    return spec;
  }

  static RunRecord with_steps(const RunConfig& run, Status status, double loss0) {
    RunRecord r = make_run_record("steps_demo", run);
    r.status = status;
    for (int64_t s = 0; s < 4; ++s)
      r.steps.push_back({s, 0.1, loss0 - 0.5 * static_cast<double>(s), 32, 40.0 + 10.0 * s});
    return r;
  }
};

TEST_F(StepPlot, CurvesComeFromTheStoredStepsOneRepeatPerConfiguration) {
  const Spec spec = two_part_spec();
  std::vector<RunConfig> plan = {testing::planned_run("off", "off", 0),
                                 testing::planned_run("off", "off", 1),
                                 testing::planned_run("on", "fp16", 0)};
  RunConfig gen;
  gen.run_id = "gen-0";
  gen.part = 1;
  gen.workload = Workload::kGenerate;
  gen.config = {{"kv_cache", "on"}};
  plan.push_back(gen);

  Store store((dir_ / "harness.db").string());
  store.ingest(with_steps(plan[1], Status::kOk, 9.0));  // repeat 1 stored first
  store.ingest(with_steps(plan[0], Status::kOk, 5.0));
  store.ingest(with_steps(plan[2], Status::kOom, 7.0));
  RunRecord decode = make_run_record("steps_demo", gen);
  decode.status = Status::kOk;
  decode.steps = {{1, 0.01, std::nullopt, 1, std::nullopt}, {2, 0.01, std::nullopt, 1, {}}};
  store.ingest(decode);

  const auto curves = step_curves(spec, plan, store.load_runs("steps_demo"), store);
  ASSERT_EQ(curves.size(), 2U);  // generation's decode steps carry no loss and no memory
  EXPECT_EQ(curves[0].label, "gc=off, mp=off");
  EXPECT_EQ(curves[0].part, 0);
  ASSERT_EQ(curves[0].steps.size(), 4U);
  EXPECT_EQ(curves[0].steps[0].loss, 5.0);  // repeat 0, not repeat 1
  EXPECT_EQ(curves[1].label, "gc=on, mp=fp16 (oom)");

  if (!std::filesystem::exists("/usr/bin/gnuplot")) GTEST_SKIP() << "gnuplot-nox not installed";
  PlotOptions options;
  options.out_dir = (dir_ / "out").string();
  const auto files = plot_steps(spec, curves, options);
  ASSERT_EQ(files.size(), 2U);
  EXPECT_EQ(std::filesystem::path(files[0]).filename(), "steps_demo-steps-tune-loss.svg");
  EXPECT_EQ(std::filesystem::path(files[1]).filename(), "steps_demo-steps-tune-mem.svg");
  const std::string loss = read_file(files[0]);
  EXPECT_NE(loss.find("<svg"), std::string::npos);
  EXPECT_NE(loss.find("gc=off, mp=off"), std::string::npos);  // the legend
  EXPECT_NE(loss.find("gc=on, mp=fp16 (oom)"), std::string::npos);
  const std::string mem = read_file(files[1]);
  EXPECT_NE(mem.find("limit 100 MB"), std::string::npos);
  EXPECT_NE(mem.find("peak memory of the step (MB)"), std::string::npos);
  // The data: one block per curve, step, loss, memory.
  const std::string dat = read_file((dir_ / "out" / "steps_demo-steps-tune.dat").string());
  EXPECT_NE(dat.find("# gc=off, mp=off\n0 5 40\n1 4.5 50\n2 4 60\n3 3.5 70\n\n\n"),
            std::string::npos)
      << dat;
}

TEST_F(StepPlot, NoCurvesNoFiles) {
  PlotOptions options;
  options.out_dir = (dir_ / "out").string();
  EXPECT_TRUE(plot_steps(two_part_spec(), {}, options).empty());
  EXPECT_FALSE(std::filesystem::exists(dir_ / "out"));
}

}  // namespace
}  // namespace hx
