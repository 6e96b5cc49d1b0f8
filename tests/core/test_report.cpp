// Reports: a fixed small database renders to committed golden files, plus the rules of
// report.h one by one.
//
// Golden files: tests/golden/report_small.md and report_small.csv. After an intended change of
// the report's shape, regenerate them with
//   HX_UPDATE_GOLDEN=1 ./test_core --gtest_filter='ReportGolden*'
// and review the diff before committing: the test then rewrites the files instead of comparing.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "harness/plan/fields.h"
#include "harness/report/report.h"
#include "harness/store/json_io.h"
#include "harness/store/store.h"
#include "tests/core/fixtures.h"
#include "tests/core/temp_dir_test.h"

namespace hx {
namespace {

namespace fs = std::filesystem;

// The spec is built by hand (not parsed) so that these tests depend on the structs only.
Spec small_spec() {
  Spec spec;
  spec.path = "tests/specs/report_small.yaml";
  spec.name = "report_small";
  spec.device = "cuda";
  PartSpec part;
  part.workload = Workload::kFinetune;
  part.fixed = {{"batch_size", 1}, {"lr", 1e-5}};
  part.axes = {{"gc", {"off", "on"}}, {"mp", {"off", "fp16"}}, {"ga", {1}}};
  spec.parts.push_back(part);
  TableSpec pivot;
  pivot.title = "Fine-Tuning System Performance Benchmark";
  pivot.columns = {"gc", "mp", "ga"};
  pivot.rows = {"peak_mem_mb", "step_time_s", "loss_last", "mfu"};
  pivot.workload = Workload::kFinetune;
  spec.tables.push_back(pivot);
  TableSpec by_precision;
  by_precision.title = "Memory by precision";
  by_precision.columns = {"mp"};
  by_precision.rows = {"peak_mem_mb", "tokens_per_s"};
  spec.tables.push_back(by_precision);
  TableSpec arrows;
  arrows.title = "Effect of each technique alone";
  arrows.kind = "arrows";
  arrows.columns = {"gc", "mp"};
  arrows.rows = {"peak_mem_mb", "step_time_s", "loss_last"};
  spec.tables.push_back(arrows);
  return spec;
}

RunConfig planned(const std::string& gc, const std::string& mp, int repeat) {
  return testing::planned_run(gc, mp, repeat);
}

Json p100() { return testing::p100_env(); }

RunRecord ok_run(const RunConfig& run, double peak_mb, double step_s, double loss,
                 double tokens_per_s) {
  RunRecord r = make_run_record("report_small", run);
  r.status = Status::kOk;
  r.exit_code = 0;
  r.started_at = "2024-05-01T10:00:0" + std::to_string(run.repeat) + "Z";
  r.env = p100();
  r.metrics = {{"peak_mem_mb", peak_mb, "MB"},
               {"step_time_s", step_s, "s"},
               {"loss_last", loss, ""},
               {"tokens_per_s", tokens_per_s, "tok/s"}};
  return r;
}

// A 2x2 matrix (gc x mp, ga constant): gc=off,mp=off repeated three times, gc=on,mp=fp16 out of
// memory.
std::vector<RunConfig> small_plan() {
  return {planned("off", "off", 0),  planned("off", "off", 1), planned("off", "off", 2),
          planned("off", "fp16", 0), planned("on", "off", 0),  planned("on", "fp16", 0)};
}

void fill_small_db(Store& store) {
  const std::vector<RunConfig> plan = small_plan();
  store.upsert_experiment("report_small", "tests/specs/report_small.yaml", "name: report_small\n");
  store.ingest(ok_run(plan[0], 11954.0, 0.336, 2.0625, 3047.6));
  store.ingest(ok_run(plan[1], 11954.25, 0.341, 2.0625, 3003.1));
  store.ingest(ok_run(plan[2], 11953.5, 0.329, 2.0625, 3112.5));
  store.ingest(ok_run(plan[3], 10395.0, 0.2571, 2.0703125, 3983.7));
  store.ingest(ok_run(plan[4], 8396.4, 0.48612, 2.0625, 2106.2));
  RunRecord oom = make_run_record("report_small", plan[5]);
  oom.status = Status::kOom;
  oom.exit_code = 3;
  oom.error = "out of memory";
  oom.env = p100();
  store.ingest(oom);
}

class ReportTest : public testing::TempDirTest {
 protected:
  ReportTest() : TempDirTest("report") {}

  std::vector<StoredRun> small_runs() const {
    Store store((dir_ / "harness.db").string());
    fill_small_db(store);
    return store.load_runs("report_small");
  }
};

void expect_golden(const std::string& actual, const std::string& name) {
  const fs::path path = fs::path(HX_SOURCE_DIR) / "tests" / "golden" / name;
  const char* update = std::getenv("HX_UPDATE_GOLDEN");
  if (update != nullptr && std::string(update) == "1") {
    write_file_atomic(path.string(), actual);
    GTEST_SKIP() << "rewrote " << path;
  }
  ASSERT_TRUE(fs::exists(path)) << path << " is missing; create it with HX_UPDATE_GOLDEN=1";
  EXPECT_EQ(actual, read_file(path.string())) << "differs from " << path;
}

TEST(ReportSpecFile, TheGoldensSpecExistsAndIsTheHandBuiltOne) {
  testing::expect_spec_file_is("tests/specs/report_small.yaml", small_spec());
}

TEST_F(ReportTest, ReportGoldenMarkdown) {
  const std::string md =
      render_report(small_spec(), small_plan(), small_runs(), ReportFormat::kMarkdown);
  expect_golden(md, "report_small.md");
}

TEST_F(ReportTest, ReportGoldenCsv) {
  const std::string csv =
      render_report(small_spec(), small_plan(), small_runs(), ReportFormat::kCsv);
  expect_golden(csv, "report_small.csv");
}

TEST_F(ReportTest, PivotShape) {
  const auto tables = build_report_tables(small_spec(), small_plan(), small_runs());
  // The pivot, the precision table split by gc (not in its columns, and varying), the arrows.
  ASSERT_EQ(tables.size(), 4U);
  const ReportTable& pivot = tables[0];
  // ga has one value: stated once, no header row.
  EXPECT_EQ(pivot.constants, "ga=1");
  ASSERT_EQ(pivot.header.size(), 2U);
  EXPECT_EQ(pivot.header[0].label, "GC");
  EXPECT_EQ(pivot.header[0].values, (std::vector<std::string>{"off", "off", "on", "on"}));
  EXPECT_EQ(pivot.header[1].label, "MP");
  EXPECT_EQ(pivot.header[1].values, (std::vector<std::string>{"off", "fp16", "off", "fp16"}));
  ASSERT_EQ(pivot.rows.size(), 4U);
  EXPECT_EQ(pivot.rows[0].label, "Peak Mem (MB)");
  EXPECT_EQ(pivot.rows[0].cells[0].values.size(), 3U);  // the repeats of one config
  EXPECT_EQ(pivot.rows[0].cells[3].verdict, "OOM");
  EXPECT_TRUE(pivot.rows[3].cells[0].not_measured);  // mfu was not written
  EXPECT_EQ(pivot.environment.size(), 1U);

  EXPECT_EQ(tables[1].subtitle, "gc=off");
  EXPECT_EQ(tables[2].subtitle, "gc=on");
  EXPECT_TRUE(tables[1].first_of_title);
  EXPECT_FALSE(tables[2].first_of_title);
  EXPECT_EQ(tables[1].constants, "ga=1");
}

TEST_F(ReportTest, ArrowsAgainstTheBaseline) {
  const auto tables = build_report_tables(small_spec(), small_plan(), small_runs());
  const ReportTable& arrows = tables.back();
  ASSERT_EQ(arrows.header.size(), 1U);
  EXPECT_EQ(arrows.header[0].values, (std::vector<std::string>{"baseline", "GC=on", "MP=fp16"}));
  ASSERT_EQ(arrows.rows.size(), 3U);
  const auto& memory = arrows.rows[0].cells;
  EXPECT_EQ(memory[0].values.size(), 3U);   // the baseline's repeats
  EXPECT_EQ(memory[1].change, "down 30%");  // 8396.4 vs 11954.0
  EXPECT_EQ(memory[2].change, "down 13%");  // 10395.0 vs 11954.0
  const auto& time = arrows.rows[1].cells;
  EXPECT_EQ(time[1].change, "up 45%");             // 0.48612 vs 0.336
  EXPECT_EQ(arrows.rows[2].cells[1].change, "-");  // same loss
  EXPECT_EQ(arrows.rows[2].cells[2].change, "-");  // within 2%
}

TEST_F(ReportTest, MissingRunsAndPartialFailures) {
  std::vector<RunConfig> plan = small_plan();
  plan.push_back(planned("on", "off", 1));  // planned, never stored
  std::vector<StoredRun> runs = small_runs();
  // One repeat of gc=off,mp=off timed out: the others still give the cell's value.
  for (StoredRun& run : runs) {
    if (run.run_id == "run-off-off-2") {
      run.status = Status::kTimeout;
      run.metrics.clear();
    }
  }
  // A run without a plan entry (an older spec) is counted, not shown.
  StoredRun stale = runs.front();
  stale.run_id = "stale";
  stale.metrics["peak_mem_mb"] = 1;
  runs.push_back(stale);

  const std::string md = render_report(small_spec(), plan, runs, ReportFormat::kMarkdown);
  EXPECT_NE(md.find("11954.1 ± 0.1 (+1 timeout)"), std::string::npos) << md;
  EXPECT_NE(md.find("1 stored run(s)"), std::string::npos) << md;

  // Drop the on/fp16 run entirely: its cell reads "-".
  std::vector<StoredRun> fewer;
  for (const StoredRun& run : runs) {
    if (run.run_id != "run-on-fp16-0") fewer.push_back(run);
  }
  const auto tables = build_report_tables(small_spec(), plan, fewer);
  EXPECT_TRUE(tables[0].rows[0].cells[3].missing);
  const std::string md2 = render_report(small_spec(), plan, fewer, ReportFormat::kMarkdown);
  EXPECT_NE(md2.find("| Peak Mem (MB) | 11954.1 ± 0.1 (+1 timeout) | 10395.0 | 8396.4 | - |"),
            std::string::npos)
      << md2;
}

TEST_F(ReportTest, DebugBuildWarns) {
  std::vector<StoredRun> runs = small_runs();
  runs[0].env["build_type"] = "Debug";
  const std::string md = render_report(small_spec(), small_plan(), runs, ReportFormat::kMarkdown);
  EXPECT_NE(md.find("Debug build"), std::string::npos);
  // Two environments now: both are listed.
  EXPECT_NE(md.find("runs of this table come from 2"), std::string::npos) << md;
  const std::string csv = render_report(small_spec(), small_plan(), runs, ReportFormat::kCsv);
  EXPECT_NE(csv.find("warning,Debug build"), std::string::npos) << csv;
}

TEST_F(ReportTest, StoredRunsAsThePlan) {
  // Without expand(): the stored runs stand for the plan; same cells as with the plan.
  const std::vector<StoredRun> runs = small_runs();
  EXPECT_EQ(render_report(small_spec(), runs, ReportFormat::kMarkdown),
            render_report(small_spec(), small_plan(), runs, ReportFormat::kMarkdown));
}

TEST_F(ReportTest, StoredPartIsUsedAndInferredOnlyForOldRows) {
  // Two parts that admit the same configs: only the stored part tells them apart.
  Spec spec = small_spec();
  spec.parts.push_back(spec.parts[0]);
  spec.parts[0].label = "alpaca";
  spec.parts[1].label = "random";
  spec.tables.resize(1);
  spec.tables[0].part = "random";
  std::vector<StoredRun> runs = small_runs();
  for (const StoredRun& run : runs) EXPECT_EQ(run.part, 0) << run.run_id;  // as ingested
  for (StoredRun& run : runs) run.part = 1;
  const std::string md = render_report(spec, runs, ReportFormat::kMarkdown);
  EXPECT_NE(md.find("| Peak Mem (MB) | 11954.0 ± 0.4 | 10395.0 | 8396.4 | OOM |"),
            std::string::npos)
      << md;
  // Rows from before runs.part: the first part that admits the config (here: alpaca).
  for (StoredRun& run : runs) run.part.reset();
  const std::string old = render_report(spec, runs, ReportFormat::kMarkdown);
  EXPECT_EQ(old.find("11954.0"), std::string::npos) << old;
}

TEST_F(ReportTest, TableSplitByPart) {
  // Two parts with the same configs (as if on different data): never merged into one cell.
  Spec spec = small_spec();
  spec.parts.push_back(spec.parts[0]);
  spec.parts[0].label = "alpaca";
  spec.parts[1].label = "random";
  spec.tables.resize(1);
  std::vector<RunConfig> plan = small_plan();
  for (RunConfig run : small_plan()) {
    run.part = 1;
    run.run_id += "-random";
    plan.push_back(run);
  }
  const auto tables = build_report_tables(spec, plan, small_runs());
  ASSERT_EQ(tables.size(), 2U);
  EXPECT_EQ(tables[0].subtitle, "part alpaca");
  EXPECT_EQ(tables[1].subtitle, "part random");
  EXPECT_TRUE(tables[1].rows[0].cells[0].missing);

  spec.tables[0].part = "random";
  EXPECT_EQ(build_report_tables(spec, plan, small_runs()).size(), 1U);
}

TEST(ReportFormatTest, ParseAndExtension) {
  EXPECT_EQ(parse_report_format("md"), ReportFormat::kMarkdown);
  EXPECT_EQ(parse_report_format("csv"), ReportFormat::kCsv);
  EXPECT_THROW(parse_report_format("html"), std::invalid_argument);
  EXPECT_EQ(report_extension(ReportFormat::kCsv), "csv");
}

TEST(FieldsTest, NumberFormats) {
  const Field& time = *find_metric_field("step_time_s");
  EXPECT_EQ(format_fixed(0.336, display_decimals(time, 0.336)), "0.336");
  EXPECT_EQ(format_fixed(0.0012345, display_decimals(time, 0.0012345)), "0.00123");
  EXPECT_EQ(format_fixed(52.42, display_decimals(time, 52.42)), "52.4");
  EXPECT_EQ(format_fixed(1234.7, display_decimals(time, 1234.7)), "1235");
  const Field& mem = *find_metric_field("peak_mem_mb");
  EXPECT_EQ(format_fixed(3230.123, display_decimals(mem, 3230.123)), "3230.1");
  EXPECT_EQ(format_fixed(-0.0001, 2), "0.00");
  EXPECT_EQ(format_full(0.1), "0.1");
  EXPECT_EQ(format_full(1.0 / 3), "0.3333333333333333");
  EXPECT_EQ(find_metric_field("no_such_metric"), nullptr);
  EXPECT_EQ(axis_label("lora"), "LoRA");
  EXPECT_EQ(axis_label("something"), "something");
  // Every metric of docs/metrics.md has a row, with a label.
  for (const char* name : {"peak_mem_mb", "peak_reserved_mb", "step_time_s", "step_time_p50_s",
                           "total_time_s", "tokens_per_s", "mfu", "loss_first", "loss_last",
                           "trainable_params", "trainable_pct", "mem_params_mb", "mem_grads_mb",
                           "mem_optimizer_mb", "mem_activations_mb", "prefill_s", "decode_s"}) {
    const Field* field = find_metric_field(name);
    ASSERT_NE(field, nullptr) << name;
    EXPECT_FALSE(field->label.empty()) << name;
  }
}

}  // namespace
}  // namespace hx
