// `harness compare`: two fixed small databases (a P100 and an A100, one configuration out of
// memory on the P100 only) render to committed golden files, plus the rules of compare.h and the
// peak table of gpu_specs.h.
//
// Golden files: tests/golden/compare_small.md and compare_small.csv. After an intended change of
// the output, regenerate them with
//   HX_UPDATE_GOLDEN=1 ./test_core --gtest_filter='CompareTest.Golden*'
// and review the diff before committing.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "harness/plan/gpu_specs.h"
#include "harness/report/compare.h"
#include "harness/store/json_io.h"
#include "harness/store/store.h"
#include "model/config.h"
#include "tests/core/fixtures.h"
#include "tests/core/temp_dir_test.h"

namespace hx {
namespace {

namespace fs = std::filesystem;

Spec compare_spec() {
  Spec spec;
  spec.path = "tests/specs/compare_small.yaml";
  spec.name = "compare_small";
  spec.device = "cuda";
  spec.model = {{"preset", "llama3.2-1b"}, {"weights", "random"}, {"seed", 0}};
  PartSpec part;
  part.workload = Workload::kFinetune;
  part.fixed = {{"batch_size", 1}, {"lr", 1e-5}};
  part.axes = {{"gc", {"off", "on"}}, {"mp", {"off", "fp16"}}, {"ga", {1}}};
  spec.parts.push_back(part);
  TableSpec table;
  table.title = "Fine-tuning";
  table.columns = {"gc", "mp"};
  table.rows = {"peak_mem_mb", "step_time_s", "mfu"};
  spec.tables.push_back(table);
  return spec;
}

RunConfig planned(const std::string& gc, const std::string& mp, int repeat) {
  return testing::planned_run(gc, mp, repeat);
}

// gc=off, mp=off repeated three times; the others once.
std::vector<RunConfig> compare_plan() {
  return {planned("off", "off", 0),  planned("off", "off", 1), planned("off", "off", 2),
          planned("off", "fp16", 0), planned("on", "off", 0),  planned("on", "fp16", 0)};
}

using testing::p100_env;

Json a100_env() {
  Json env = p100_env();
  env["host"] = "gpu-a100-3";
  env["cpu"] = "AMD EPYC 7763";
  env["gpu_name"] = "NVIDIA A100-SXM4-80GB";
  env["gpu_mem_mb"] = 81920;
  env["driver"] = "550.54.15";
  env["cuda"] = "12.4";
  env["threads"] = 16;
  return env;
}

RunRecord ok_run(const RunConfig& run, const Json& env, double peak_mb, double step_s,
                 double tokens_per_s) {
  RunRecord r = make_run_record("compare_small", run);
  r.status = Status::kOk;
  r.exit_code = 0;
  r.started_at = "2024-05-01T10:00:0" + std::to_string(run.repeat) + "Z";
  r.env = env;
  r.metrics = {{"peak_mem_mb", peak_mb, "MB"},
               {"step_time_s", step_s, "s"},
               {"tokens_per_s", tokens_per_s, "tok/s"}};
  return r;
}

RunRecord oom_run(const RunConfig& run, const Json& env) {
  RunRecord r = make_run_record("compare_small", run);
  r.status = Status::kOom;
  r.exit_code = 3;
  r.error = "CUDA out of memory";
  r.started_at = "2024-05-01T10:00:0" + std::to_string(run.repeat) + "Z";
  r.env = env;
  return r;
}

// Plausible figures for llama3.2-1b at 512 tokens a step: full fine-tuning in fp32 without
// checkpointing needs 17.2 GB and runs out of memory on the 16 GB P100; the A100 runs everything.
void fill_p100(Store& store) {
  const std::vector<RunConfig> plan = compare_plan();
  store.upsert_experiment("compare_small", "tests/specs/compare_small.yaml", "name: x\n");
  for (int i = 0; i < 3; ++i) store.ingest(oom_run(plan[static_cast<size_t>(i)], p100_env()));
  store.ingest(ok_run(plan[3], p100_env(), 14120.0, 0.676, 757.4));
  store.ingest(ok_run(plan[4], p100_env(), 11302.2, 1.347, 380.1));
  store.ingest(ok_run(plan[5], p100_env(), 10890.5, 0.898, 570.2));
}

void fill_a100(Store& store) {
  const std::vector<RunConfig> plan = compare_plan();
  store.upsert_experiment("compare_small", "tests/specs/compare_small.yaml", "name: x\n");
  store.ingest(ok_run(plan[0], a100_env(), 17210.5, 0.3891, 1315.8));
  store.ingest(ok_run(plan[1], a100_env(), 17210.75, 0.3932, 1302.1));
  store.ingest(ok_run(plan[2], a100_env(), 17210.0, 0.3876, 1320.9));
  store.ingest(ok_run(plan[3], a100_env(), 14121.3, 0.03483, 14700));
  store.ingest(ok_run(plan[4], a100_env(), 11302.2, 0.5172, 989.9));
  store.ingest(ok_run(plan[5], a100_env(), 10891.0, 0.04633, 11051));
}

TEST(CompareSpecFile, TheGoldensSpecExistsAndIsTheHandBuiltOne) {
  testing::expect_spec_file_is("tests/specs/compare_small.yaml", compare_spec());
}

class CompareTest : public testing::TempDirTest {
 protected:
  CompareTest() : TempDirTest("compare") {}

  // The two databases, read back through SQLite.
  std::vector<CompareSource> small_sources() const {
    Store p100((dir_ / "p100.db").string());
    fill_p100(p100);
    Store a100((dir_ / "a100.db").string());
    fill_a100(a100);
    return {{"p100.db", p100.load_runs("compare_small")},
            {"a100.db", a100.load_runs("compare_small")}};
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

const CompareTable* find_table(const Comparison& c, const std::string& metric) {
  for (const CompareTable& table : c.tables) {
    if (table.metric == metric) return &table;
  }
  return nullptr;
}

TEST_F(CompareTest, GoldenMarkdown) {
  const Comparison c = build_comparison(compare_spec(), compare_plan(), small_sources());
  expect_golden(render_comparison(c, ReportFormat::kMarkdown), "compare_small.md");
}

TEST_F(CompareTest, GoldenCsv) {
  const Comparison c = build_comparison(compare_spec(), compare_plan(), small_sources());
  expect_golden(render_comparison(c, ReportFormat::kCsv), "compare_small.csv");
}

TEST_F(CompareTest, SideBySideWithRatios) {
  const Comparison c = build_comparison(compare_spec(), compare_plan(), small_sources());
  ASSERT_EQ(c.envs.size(), 2U);
  EXPECT_EQ(c.envs[0].label, "Tesla P100-PCIE-16GB");
  EXPECT_EQ(c.envs[0].letter, "A");
  EXPECT_EQ(c.envs[0].runs, 6);
  EXPECT_EQ(c.envs[0].ok, 3);
  EXPECT_EQ(c.envs[1].label, "NVIDIA A100-SXM4-80GB");
  ASSERT_NE(c.envs[1].peak, nullptr);
  EXPECT_EQ(c.envs[1].peak->name, "A100 80GB");

  // The spec's rows (mfu is computed, not read), then tokens/s, the share of device memory and
  // MFU.
  std::vector<std::string> metrics;
  for (const CompareTable& table : c.tables) metrics.push_back(table.metric);
  EXPECT_EQ(metrics, (std::vector<std::string>{"peak_mem_mb", "mem_share_pct", "step_time_s",
                                               "tokens_per_s", "mfu_pct"}));

  const CompareTable& memory = *find_table(c, "peak_mem_mb");
  EXPECT_EQ(memory.keys, (std::vector<std::string>{"gc", "mp"}));
  EXPECT_EQ(memory.constants, "ga=1");
  ASSERT_EQ(memory.rows.size(), 4U);
  // OOM on the P100 next to a figure on the A100; no ratio.
  EXPECT_EQ(memory.rows[0].cells[0].verdict, "OOM");
  EXPECT_EQ(memory.rows[0].cells[1].values.size(), 3U);
  EXPECT_FALSE(memory.rows[0].ratios[0].has_value());
  ASSERT_TRUE(memory.rows[2].ratios[0].has_value());
  EXPECT_DOUBLE_EQ(*memory.rows[2].ratios[0], 1.0);

  const CompareTable& time = *find_table(c, "step_time_s");
  ASSERT_TRUE(time.rows[2].ratios[0].has_value());
  EXPECT_DOUBLE_EQ(*time.rows[2].ratios[0], 0.5172 / 1.347);

  const CompareTable& share = *find_table(c, "mem_share_pct");
  EXPECT_DOUBLE_EQ(share.rows[1].cells[0].values.at(0), 100 * 14120.0 / 16280);
  EXPECT_DOUBLE_EQ(share.rows[1].cells[1].values.at(0), 100 * 14121.3 / 81920);
}

TEST_F(CompareTest, MfuFromThePeakTable) {
  const Comparison c = build_comparison(compare_spec(), compare_plan(), small_sources());
  const int64_t n = config_from_name("llama3.2-1b").param_count();
  ASSERT_TRUE(c.params.has_value());
  EXPECT_EQ(*c.params, n);
  const CompareTable& mfu = *find_table(c, "mfu_pct");
  // gc=off, mp=fp16: fp16 tensor-core peaks (P100: 18.7 TFLOP/s, A100: 312 TFLOP/s).
  EXPECT_NEAR(mfu.rows[1].cells[0].values.at(0), 100 * 6.0 * n * 757.4 / 18.7e12, 1e-9);
  EXPECT_NEAR(mfu.rows[1].cells[1].values.at(0), 100 * 6.0 * n * 14700 / 312e12, 1e-9);
  // gc=on, mp=off: fp32 (P100: 9.3, A100: 19.5 TFLOP/s without TF32).
  EXPECT_NEAR(mfu.rows[2].cells[0].values.at(0), 100 * 6.0 * n * 380.1 / 9.3e12, 1e-9);
  EXPECT_NEAR(mfu.rows[2].cells[1].values.at(0), 100 * 6.0 * n * 989.9 / 19.5e12, 1e-9);
  // The formula is stated.
  const std::string md = render_comparison(c, ReportFormat::kMarkdown);
  EXPECT_NE(md.find("6 × N × tokens/s / peak FLOP/s"), std::string::npos) << md;
}

TEST_F(CompareTest, UnknownGpuAndCpuGetNoMfu) {
  std::vector<CompareSource> sources = small_sources();
  for (StoredRun& run : sources[1].runs) run.env["gpu_name"] = "NVIDIA A10G";  // not in the table
  CompareSource cpu{"cpu.db", sources[1].runs};
  for (StoredRun& run : cpu.runs) {
    run.env["gpu_name"] = "";
    run.env["gpu_mem_mb"] = 0;
    run.env["host"] = "laptop";
    run.env["cpu"] = "Intel Core i7-1185G7";
  }
  sources.push_back(cpu);
  const Comparison c = build_comparison(compare_spec(), compare_plan(), sources);
  ASSERT_EQ(c.envs.size(), 3U);
  EXPECT_EQ(c.envs[2].label, "laptop (Intel Core i7-1185G7)");
  EXPECT_TRUE(c.envs[2].cpu);
  const CompareTable& mfu = *find_table(c, "mfu_pct");
  EXPECT_TRUE(mfu.rows[1].cells[1].not_measured);     // A10G
  EXPECT_TRUE(mfu.rows[1].cells[2].not_measured);     // CPU
  EXPECT_FALSE(mfu.rows[1].cells[0].values.empty());  // P100 still has one
  const std::string md = render_comparison(c, ReportFormat::kMarkdown);
  EXPECT_NE(md.find("No MFU on NVIDIA A10G: the GPU is not in the peak table"), std::string::npos)
      << md;
  EXPECT_NE(md.find("No MFU for CPU runs"), std::string::npos) << md;
  const CompareTable& share = *find_table(c, "mem_share_pct");
  EXPECT_TRUE(share.rows[1].cells[2].not_measured);
  EXPECT_NE(md.find("No share of device memory for CPU runs."), std::string::npos) << md;
}

TEST_F(CompareTest, CpuOnlyHasNoDeviceFigures) {
  std::vector<CompareSource> sources = small_sources();
  sources.erase(sources.begin());
  for (StoredRun& run : sources[0].runs) {
    run.env["gpu_name"] = "";
    run.env["gpu_mem_mb"] = 0;
  }
  const Comparison c = build_comparison(compare_spec(), compare_plan(), sources);
  ASSERT_EQ(c.envs.size(), 1U);
  EXPECT_EQ(c.envs[0].label, "gpu-a100-3 (AMD EPYC 7763)");
  std::vector<std::string> metrics;
  for (const CompareTable& table : c.tables) metrics.push_back(table.metric);
  EXPECT_EQ(metrics, (std::vector<std::string>{"peak_mem_mb", "step_time_s", "tokens_per_s"}));
  ASSERT_EQ(c.notes.size(), 1U);
  EXPECT_EQ(c.notes[0],
            "CPU runs only: no share of device memory and no MFU (the peak table lists GPUs).");
  // One environment: no ratio columns.
  EXPECT_TRUE(c.tables[0].rows[0].ratios.empty());
}

TEST_F(CompareTest, BfloatOnAGpuWithoutIt) {
  Spec spec = compare_spec();
  spec.parts[0].axes[1].second = {"off", "bf16"};
  std::vector<RunConfig> plan = {planned("on", "bf16", 0)};
  Store store((dir_ / "p100.db").string());
  store.upsert_experiment("compare_small", "tests/specs/compare_small.yaml", "name: x\n");
  store.ingest(ok_run(plan[0], p100_env(), 7000, 0.3, 1500));
  const Comparison c =
      build_comparison(spec, plan, {{"p100.db", store.load_runs("compare_small")}});
  const CompareTable& mfu = *find_table(c, "mfu_pct");
  EXPECT_TRUE(mfu.rows[0].cells[0].not_measured);
  ASSERT_EQ(mfu.notes.size(), 1U);
  EXPECT_EQ(mfu.notes[0],
            "No MFU for bf16 runs on Tesla P100-PCIE-16GB: the P100 PCIe has no bf16 peak.");
}

TEST_F(CompareTest, OneDatabaseWithTwoEnvironments) {
  // Half the runs were measured on each GPU (a database moved between machines): two columns.
  Store store((dir_ / "mixed.db").string());
  store.upsert_experiment("compare_small", "tests/specs/compare_small.yaml", "name: x\n");
  const std::vector<RunConfig> plan = compare_plan();
  store.ingest(ok_run(plan[3], p100_env(), 14120.0, 0.676, 757.4));
  store.ingest(ok_run(plan[4], a100_env(), 11302.2, 0.5172, 989.9));
  RunRecord crashed = make_run_record("compare_small", plan[5]);  // died before its env
  crashed.status = Status::kCrashed;
  crashed.signal = 11;
  store.ingest(crashed);
  const Comparison c =
      build_comparison(compare_spec(), plan, {{"mixed.db", store.load_runs("compare_small")}});
  ASSERT_EQ(c.envs.size(), 3U);
  EXPECT_EQ(c.envs[0].label, "Tesla P100-PCIE-16GB");
  EXPECT_EQ(c.envs[1].label, "NVIDIA A100-SXM4-80GB");
  EXPECT_EQ(c.envs[2].label, "unknown environment");
  const CompareTable& memory = *find_table(c, "peak_mem_mb");
  EXPECT_TRUE(memory.rows[2].cells[0].missing);
  EXPECT_EQ(memory.rows[2].cells[1].values.size(), 1U);
  EXPECT_EQ(memory.rows[3].cells[2].verdict, "crash");
}

TEST_F(CompareTest, SameGpuInTwoDatabases) {
  std::vector<CompareSource> sources = small_sources();
  sources[0] = {"a100-old.db", sources[1].runs};
  // A run that died before reporting its environment joins its database's only environment.
  sources[0].runs[0].env = Json::object();
  sources[0].runs.push_back(sources[0].runs[1]);
  sources[0].runs.back().run_id = "not-planned";
  const Comparison c = build_comparison(compare_spec(), compare_plan(), sources);
  ASSERT_EQ(c.envs.size(), 2U);
  EXPECT_EQ(c.envs[0].label, "NVIDIA A100-SXM4-80GB [a100-old.db]");
  EXPECT_EQ(c.envs[1].label, "NVIDIA A100-SXM4-80GB [a100.db]");
  EXPECT_EQ(c.envs[0].runs, 6);
  ASSERT_EQ(c.notes.size(), 2U);
  EXPECT_EQ(c.notes[0],
            "a100-old.db: 1 stored run(s) of this experiment belong to an earlier version of the "
            "spec and are not shown.");
  const CompareTable& time = *find_table(c, "step_time_s");
  EXPECT_DOUBLE_EQ(*time.rows[1].ratios[0], 1.0);
}

TEST(CompareHelpers, EnvironmentLabelsAndDtypes) {
  EXPECT_EQ(environment_label(p100_env()), "Tesla P100-PCIE-16GB");
  EXPECT_EQ(environment_device(p100_env()), "Tesla P100-PCIE-16GB");
  const Json cpu = {{"host", "ci"}, {"cpu", "AMD EPYC"}, {"gpu_name", ""}, {"gpu_mem_mb", 0}};
  EXPECT_EQ(environment_label(cpu), "ci (AMD EPYC)");
  EXPECT_EQ(environment_device(cpu), "cpu");
  EXPECT_EQ(environment_label(Json::object()), "");
  EXPECT_EQ(environment_device(Json::object()), "");
  EXPECT_EQ(environment_field(p100_env(), "gpu_mem_mb"), "16280");

  EXPECT_EQ(compute_dtype({{"mp", "fp16"}}), "fp16");
  EXPECT_EQ(compute_dtype({{"mp", "off"}, {"dtype", "bf16"}}), "bf16");
  EXPECT_EQ(compute_dtype({{"mp", "off"}}), "fp32");
  EXPECT_EQ(compute_dtype(Json::object()), "fp32");
  EXPECT_EQ(median_of({3, 1, 2}), 2);
  EXPECT_EQ(median_of({4, 1, 2, 3}), 2.5);
}

TEST(GpuSpecs, MatchingByDeviceName) {
  const auto name_of = [](const char* device) -> std::string {
    const GpuPeak* peak = find_gpu_peak(device);
    return peak == nullptr ? "(none)" : std::string(peak->name);
  };
  EXPECT_EQ(name_of("Tesla P100-PCIE-16GB"), "P100 PCIe");
  EXPECT_EQ(name_of("Tesla P100-SXM2-16GB"), "P100 SXM2");
  EXPECT_EQ(name_of("Tesla V100-SXM2-32GB"), "V100 SXM2");
  EXPECT_EQ(name_of("Tesla V100-PCIE-16GB"), "V100 PCIe");
  EXPECT_EQ(name_of("Tesla V100S-PCIE-32GB"), "V100S PCIe");
  EXPECT_EQ(name_of("Tesla T4"), "T4");
  EXPECT_EQ(name_of("NVIDIA A10"), "A10");
  EXPECT_EQ(name_of("NVIDIA A10G"), "(none)");  // AWS's variant: no NVIDIA datasheet figures
  EXPECT_EQ(name_of("NVIDIA L4"), "L4");
  EXPECT_EQ(name_of("NVIDIA L40"), "L40");
  EXPECT_EQ(name_of("NVIDIA L40S"), "L40S");
  EXPECT_EQ(name_of("NVIDIA A100-SXM4-80GB"), "A100 80GB");
  EXPECT_EQ(name_of("NVIDIA A100 80GB PCIe"), "A100 80GB");
  EXPECT_EQ(name_of("NVIDIA A100-SXM4-40GB"), "A100 40GB");
  EXPECT_EQ(name_of("NVIDIA A100-PCIE-40GB"), "A100 40GB");
  EXPECT_EQ(name_of("NVIDIA H100 80GB HBM3"), "H100 SXM");
  EXPECT_EQ(name_of("NVIDIA H100 PCIe"), "H100 PCIe");
  EXPECT_EQ(name_of("NVIDIA H100 NVL"), "H100 NVL");
  EXPECT_EQ(name_of("NVIDIA H200"), "H200 SXM");
  EXPECT_EQ(name_of("NVIDIA H200 NVL"), "H200 NVL");
  EXPECT_EQ(name_of("NVIDIA GH200 480GB"), "(none)");
  EXPECT_EQ(name_of("NVIDIA GeForce RTX 4090"), "(none)");
  EXPECT_EQ(name_of(""), "(none)");

  const GpuPeak& a100 = *find_gpu_peak("NVIDIA A100-SXM4-40GB");
  EXPECT_EQ(peak_flops(a100, "bf16"), 312e12);
  EXPECT_EQ(peak_flops(a100, "fp16"), 312e12);
  EXPECT_EQ(peak_flops(a100, "fp32"), 19.5e12);
  EXPECT_FALSE(peak_flops(*find_gpu_peak("Tesla V100-SXM2-16GB"), "bf16").has_value());
  EXPECT_FALSE(peak_flops(a100, "fp8").has_value());
  // Every entry has all its figures in order: tensor cores never slower than fp32.
  for (const GpuPeak& gpu : gpu_peaks()) {
    EXPECT_GT(gpu.fp32_tflops, 0) << gpu.name;
    EXPECT_GE(gpu.fp16_tflops, gpu.fp32_tflops) << gpu.name;
    EXPECT_FALSE(gpu.source.empty()) << gpu.name;
  }
}

}  // namespace
}  // namespace hx
