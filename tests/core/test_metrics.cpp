// The metric table (fields.h) is the schema: every metric the worker writes has a row, specs
// accept them, roles and gate tests are consistent; derived figures (derived.h), the shared
// statistics (stats.h) and the one table printer per format (table.h).
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include "harness/plan/fields.h"
#include "harness/plan/spec.h"
#include "harness/report/derived.h"
#include "harness/report/stats.h"
#include "harness/report/table.h"
#include "model/config.h"
#include "tests/core/fixtures.h"

namespace hx {
namespace {

// name -> unit of every add_metric(result, "name", ..., "unit") in the worker's sources.
std::map<std::string, std::string> worker_metrics() {
  std::map<std::string, std::string> metrics;
  const std::regex call(R"re(add_metric\(\s*result,\s*"([a-z0-9_]+)",[^;]*?"([^"]*)"\);)re");
  for (const char* file : {"harness/worker/workloads.cpp", "harness/worker/main.cpp"}) {
    std::ifstream in(std::string(HX_SOURCE_DIR) + "/" + file);
    std::stringstream text;
    text << in.rdbuf();
    const std::string source = text.str();
    for (std::sregex_iterator it(source.begin(), source.end(), call), end; it != end; ++it) {
      metrics[(*it)[1]] = (*it)[2];
    }
  }
  return metrics;
}

TEST(MetricTable, HasEveryMetricTheWorkerWrites) {
  const auto metrics = worker_metrics();
  ASSERT_GE(metrics.size(), 20U);  // the scan found the worker's calls
  for (const auto& [name, unit] : metrics) {
    const Field* field = find_metric_field(name);
    ASSERT_NE(field, nullptr) << name << " is written by the worker but not in kMetricFields";
    EXPECT_EQ(field->unit, unit) << name;
  }
}

TEST(MetricTable, RolesUnitsAndGateTestsAgree) {
  std::set<std::string_view> names;
  for (const Field& field : kMetricFields) {
    EXPECT_TRUE(names.insert(field.name).second) << field.name << " twice";
    EXPECT_FALSE(field.label.empty()) << field.name;
    if (field.role == MetricRole::kMemory) EXPECT_EQ(field.unit, "MB") << field.name;
    if (field.role == MetricRole::kTime) EXPECT_EQ(field.unit, "s") << field.name;
    if (field.role == MetricRole::kMemory || field.role == MetricRole::kTime) {
      EXPECT_EQ(field.better, Better::kLower) << field.name;
    }
    if (field.role == MetricRole::kThroughput) EXPECT_EQ(field.better, Better::kHigher);
    if (field.gate == GateTest::kMemoryMargin) EXPECT_EQ(field.role, MetricRole::kMemory);
    if (field.gate == GateTest::kTimeUTest) EXPECT_EQ(field.role, MetricRole::kTime);
  }
  // Today's gate: peak memory by margin, three times by the U test (in this order).
  std::vector<std::string_view> time;
  for (const Field* field : gated_metrics(GateTest::kTimeUTest)) time.push_back(field->name);
  EXPECT_EQ(time, (std::vector<std::string_view>{"step_time_s", "prefill_s", "decode_s"}));
  ASSERT_EQ(gated_metrics(GateTest::kMemoryMargin).size(), 1U);
  EXPECT_EQ(gated_metrics(GateTest::kMemoryMargin)[0]->name, "peak_mem_mb");
  EXPECT_EQ(first_metric_of(MetricRole::kThroughput).name, "tokens_per_s");
  // Unknown metrics keep their raw name.
  const Field raw = metric_field_or_raw("my_metric");
  EXPECT_EQ(raw.label, "my_metric");
  EXPECT_EQ(raw.gate, GateTest::kNotGated);
}

TEST(MetricTable, SpecTablesAcceptEveryWorkerMetric) {
  const Spec spec = parse_spec(R"(name: kv
model: {preset: tiny}
device: cpu
workload: generate
matrix: {kv_cache: [off, on]}
tables:
  - {title: KV, columns: [kv_cache], rows: [mem_kv_cache_mb, decode_tokens_per_s, load_s]}
)",
                               "kv.yaml");
  ASSERT_EQ(spec.tables.size(), 1U);
  EXPECT_EQ(spec.tables[0].rows,
            (std::vector<std::string>{"mem_kv_cache_mb", "decode_tokens_per_s", "load_s"}));
  for (const auto& [name, unit] : worker_metrics()) {
    const std::string text =
        "name: m\nmodel: {preset: tiny}\ndevice: cpu\nworkload: generate\n"
        "matrix: {kv_cache: [off, on]}\ntables:\n  - {title: T, columns: [kv_cache], rows: [" +
        name + "]}\n";
    EXPECT_NO_THROW(parse_spec(text, "m.yaml")) << name;
  }
}

TEST(Derived, MfuOfFineTuningOnAKnownGpu) {
  StoredRun run;
  run.workload = Workload::kFinetune;
  run.status = Status::kOk;
  run.config = {{"mp", "fp16"}};
  run.env = testing::p100_env();
  run.metrics = {{"tokens_per_s", 757.4}, {"peak_mem_mb", 8140}};
  const int64_t n = config_from_name("llama3.2-1b").param_count();
  ASSERT_TRUE(mfu_percent(run, n).has_value());
  EXPECT_NEAR(*mfu_percent(run, n), 100 * 6.0 * static_cast<double>(n) * 757.4 / 18.7e12, 1e-9);
  EXPECT_EQ(metric_value(run, "mfu", n), mfu_percent(run, n));
  EXPECT_EQ(metric_value(run, "mfu"), std::nullopt);  // no model: no N
  EXPECT_NEAR(*memory_share_percent(run), 100.0 * 8140 / 16280, 1e-12);

  std::string why;
  run.env["gpu_name"] = "";
  EXPECT_EQ(mfu_percent(run, n, &why), std::nullopt);
  EXPECT_EQ(why, "No MFU for CPU runs (the peak table lists GPUs only).");
  run.env = testing::p100_env();
  run.config = {{"mp", "bf16"}};
  EXPECT_EQ(mfu_percent(run, n, &why), std::nullopt);
  EXPECT_EQ(why, "No MFU for bf16 runs on Tesla P100-PCIE-16GB: the P100 PCIe has no bf16 peak.");
  run.workload = Workload::kGenerate;  // 6N is a training step's count
  run.config = {{"mp", "fp16"}};
  EXPECT_EQ(mfu_percent(run, n, &why), std::nullopt);
  EXPECT_EQ(why, "");
}

// tokens_per_s(N) / (N x tokens_per_s(1)) of the same config on one rank (ZeRO and the bucket
// size aside), the one-rank figure the mean over repeats; none without that run.
TEST(Derived, ScalingEfficiencyAgainstTheSameConfigOnOneRank) {
  const auto run = [](const char* id, const Json& config, double tokens_per_s) {
    StoredRun r;
    r.run_id = id;
    r.experiment = "dp";
    r.config = config;
    r.metrics["tokens_per_s"] = tokens_per_s;
    return r;
  };
  const std::vector<StoredRun> runs = {
      run("one-a", {{"lora", "on"}, {"world_size", 1}}, 90),
      run("one-b", {{"lora", "on"}}, 110),  // world_size 1 by default
      run("two", {{"lora", "on"}, {"world_size", 2}, {"zero", 1}, {"dp_bucket_mb", 5}}, 150),
      run("four-other", {{"lora", "off"}, {"world_size", 4}}, 400)};
  const auto out = with_scaling_efficiency(runs);
  ASSERT_EQ(out.size(), runs.size());
  EXPECT_DOUBLE_EQ(out[2].metrics.at("scaling_eff"), 75.0);  // 150 / (2 x 100)
  EXPECT_FALSE(out[0].metrics.contains("scaling_eff"));
  EXPECT_FALSE(out[3].metrics.contains("scaling_eff"));  // no lora=off run on one rank
}

TEST(Stats, MedianAndHalfRange) {
  EXPECT_EQ(median_of({3, 1, 2}), 2);
  EXPECT_EQ(median_of({4, 1, 2, 3}), 2.5);
  EXPECT_EQ(median_of({5}), 5);
  EXPECT_THROW(median_of({}), std::invalid_argument);
  EXPECT_EQ(half_range({1, 4, 2}), 1.5);
}

TEST(TextTable, OnePrinterPerFormat) {
  TextTable table{{"name", "a|b", "n"}, {{"x", "", "1"}, {"y, z", "\"q\"", "22"}}, {}};
  table.align = {Align::kLeft, Align::kLeft, Align::kRight};
  EXPECT_EQ(markdown_table(table),
            "| name | a\\|b | n |\n"
            "|---|---|---:|\n"
            "| x | | 1 |\n"
            "| y, z | \"q\" | 22 |\n");
  EXPECT_EQ(csv_table(table), "name,a|b,n\nx,,1\n\"y, z\",\"\"\"q\"\"\",22\n");
  EXPECT_EQ(markdown_table(TextTable{}), "");
}

}  // namespace
}  // namespace hx
