// The regression gate (`harness baseline`, `harness check`): Mann-Whitney U against values
// computed independently, the baseline file's round trip through real SQLite databases, and
// the verdicts of gate.h on synthetic reruns (unchanged, more memory, slower, OOM, faster,
// another GPU, runs missing).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "harness/report/gate.h"
#include "harness/store/json_io.h"
#include "harness/store/store.h"
#include "tests/core/fixtures.h"
#include "tests/core/temp_dir_test.h"

namespace hx {
namespace {

namespace fs = std::filesystem;

// ---- Mann-Whitney U ----
//
// Expected values: scipy.stats.mannwhitneyu's documentation example (males/females), and the
// rest from a brute-force enumeration of all rank assignments (exact) and the textbook normal
// approximation with tie and continuity correction, written independently in Python
// (fractions.Fraction, math.erfc).

TEST(MannWhitneyTest, ScipyDocumentationExample) {
  const std::vector<double> males = {19, 22, 16, 29, 24};
  const std::vector<double> females = {20, 11, 17, 12};
  const MannWhitney exact = mann_whitney_u(males, females);
  EXPECT_TRUE(exact.exact);
  EXPECT_DOUBLE_EQ(exact.u, 17);
  EXPECT_NEAR(exact.p, 0.1111111111111111, 1e-15);  // 14 of the 126 orderings
  const MannWhitney normal = mann_whitney_u(males, females, MannWhitneyMethod::kAsymptotic);
  EXPECT_FALSE(normal.exact);
  EXPECT_NEAR(normal.p, 0.11134688653314041, 1e-12);
}

TEST(MannWhitneyTest, SeparatedSamples) {
  // Every value of one sample below every value of the other: 2 of C(n+m, m) orderings.
  const MannWhitney five = mann_whitney_u({1, 2, 3, 4, 5}, {6, 7, 8, 9, 10});
  EXPECT_DOUBLE_EQ(five.u, 0);
  EXPECT_NEAR(five.p, 2.0 / 252, 1e-15);  // 0.0079 < 0.01: five repeats can show a change
  EXPECT_NEAR(mann_whitney_u({1, 2, 3, 4}, {5, 6, 7, 8, 9}).p, 2.0 / 126, 1e-15);  // 0.016
  EXPECT_NEAR(mann_whitney_u({1, 2, 3}, {4, 5, 6}).p, 0.1, 1e-15);
  EXPECT_NEAR(mann_whitney_u({1}, {2}).p, 1.0, 1e-15);
  EXPECT_NEAR(mann_whitney_u({1, 2, 3, 4, 5}, {6, 7, 8, 9, 10}, MannWhitneyMethod::kAsymptotic).p,
              0.012185780355344818, 1e-12);
}

TEST(MannWhitneyTest, OverlappingSamples) {
  const std::vector<double> x = {0.31, 0.42, 0.28, 0.35, 0.39, 0.33};
  const std::vector<double> y = {0.36, 0.45, 0.41, 0.38, 0.47, 0.40, 0.44};
  const MannWhitney exact = mann_whitney_u(x, y);
  EXPECT_DOUBLE_EQ(exact.u, 6);
  EXPECT_NEAR(exact.p, 0.03496503496503497, 1e-15);
  EXPECT_NEAR(mann_whitney_u(x, y, MannWhitneyMethod::kAsymptotic).p, 0.038318763149413584, 1e-12);
  // Symmetric in its samples: the same p, and U_x + U_y = n_x n_y.
  const MannWhitney swapped = mann_whitney_u(y, x);
  EXPECT_NEAR(swapped.p, exact.p, 1e-15);
  EXPECT_DOUBLE_EQ(swapped.u + exact.u, 42);
}

TEST(MannWhitneyTest, TiesUseTheNormalApproximation) {
  const MannWhitney ties = mann_whitney_u({1, 2, 2, 3, 4}, {2, 3, 5, 6, 7});
  EXPECT_FALSE(ties.exact);
  EXPECT_DOUBLE_EQ(ties.u, 4.5);
  EXPECT_NEAR(ties.p, 0.11161176829829222, 1e-12);
  // All values equal: no evidence at all.
  EXPECT_DOUBLE_EQ(mann_whitney_u({3, 3, 3}, {3, 3, 3}).p, 1.0);
  EXPECT_THROW(mann_whitney_u({1, 2, 2}, {3, 4}, MannWhitneyMethod::kExact), std::invalid_argument);
  EXPECT_THROW(mann_whitney_u({}, {1}), std::invalid_argument);
}

TEST(MannWhitneyTest, LargeSamples) {
  // 30 + 30 values: still exact (the counts reach C(60, 30) ~ 1.2e17). Expected from the
  // recursion N(u; m, n) = N(u - n; m - 1, n) + N(u; m, n - 1) in Python integers.
  std::vector<double> x;
  std::vector<double> y;
  for (int i = 0; i < 30; ++i) {
    x.push_back(i);
    y.push_back(i + 7.5);
  }
  const MannWhitney exact = mann_whitney_u(x, y);
  EXPECT_TRUE(exact.exact);
  EXPECT_DOUBLE_EQ(exact.u, 253);
  EXPECT_NEAR(exact.p, 0.0031935408185939456, 1e-15);
  // The normal approximation is near it at this size (0.00367).
  const MannWhitney normal = mann_whitney_u(x, y, MannWhitneyMethod::kAsymptotic);
  EXPECT_NEAR(normal.p, exact.p, 0.2 * exact.p);
  // 31 + 30 values: beyond the exact limit, the normal approximation.
  x.push_back(100);
  EXPECT_FALSE(mann_whitney_u(x, y).exact);
}

// ---- The gate ----

Spec gate_spec() {
  Spec spec;
  spec.path = "tests/specs/gate_small.yaml";
  spec.name = "gate_small";
  spec.device = "cuda";
  spec.model = {{"preset", "tiny"}, {"weights", "random"}, {"seed", 0}};
  PartSpec part;
  part.workload = Workload::kFinetune;
  part.fixed = {{"batch_size", 1}};
  part.axes = {{"gc", {"off", "on"}}};
  spec.parts.push_back(part);
  return spec;
}

std::vector<RunConfig> gate_plan(int repeats) {
  std::vector<RunConfig> plan;
  for (const char* gc : {"off", "on"}) {
    for (int r = 0; r < repeats; ++r) {
      RunConfig run;
      run.run_id = std::string("g-") + gc + "-" + std::to_string(r);
      run.repeat = r;
      run.workload = Workload::kFinetune;
      run.config = {{"batch_size", 1}, {"gc", gc}};
      run.canonical = canonical_json(run.config);
      plan.push_back(run);
    }
  }
  return plan;
}

using testing::p100_env;

// One side of a comparison: per configuration a peak memory and one step time per repeat.
struct Side {
  double mem_off = 1000.0;
  double mem_on = 700.0;
  std::vector<double> mem_off_jitter = {0, 0, 0, 0, 0};  // added to mem_off per repeat
  std::vector<double> time_off = {0.500, 0.503, 0.498, 0.501, 0.499};
  std::vector<double> time_on = {0.650, 0.652, 0.648, 0.651, 0.649};
  Json env = p100_env();
  std::map<std::string, Status> status;  // run id -> a status other than ok
  std::vector<std::string> absent;       // run ids not stored
};

Side scaled(Side side, double time_factor) {
  for (double& t : side.time_off) t *= time_factor;
  for (double& t : side.time_on) t *= time_factor;
  return side;
}

class GateTest : public testing::TempDirTest {
 protected:
  GateTest() : TempDirTest("gate") {}

  // Stores one side in its own database and reads it back.
  std::vector<StoredRun> store_side(const std::string& name, const std::vector<RunConfig>& plan,
                                    const Side& side) const {
    Store store((dir_ / name).string());
    store.upsert_experiment("gate_small", "tests/specs/gate_small.yaml", "name: gate_small\n");
    for (const RunConfig& run : plan) {
      if (std::find(side.absent.begin(), side.absent.end(), run.run_id) != side.absent.end()) {
        continue;
      }
      RunRecord record = make_run_record("gate_small", run);
      record.env = side.env;
      record.started_at = "2024-05-01T10:00:0" + std::to_string(run.repeat) + "Z";
      if (const auto it = side.status.find(run.run_id); it != side.status.end()) {
        record.status = it->second;
        record.exit_code = it->second == Status::kOom ? 3 : 1;
      } else {
        const bool off = run.config["gc"] == "off";
        const double seconds =
            (off ? side.time_off : side.time_on).at(static_cast<size_t>(run.repeat));
        record.status = Status::kOk;
        record.exit_code = 0;
        const double jitter = side.mem_off_jitter.at(static_cast<size_t>(run.repeat));
        record.metrics = {{"peak_mem_mb", off ? side.mem_off + jitter : side.mem_on, "MB"},
                          {"step_time_s", seconds, "s"},
                          {"tokens_per_s", 512 / seconds, "tok/s"}};
      }
      store.ingest(record);
    }
    return store.load_runs("gate_small");
  }

  // The baseline as `harness check` reads it: written to CSV and parsed back.
  std::vector<StoredRun> baseline(const std::vector<RunConfig>& plan, const Side& side) const {
    const std::string csv = baseline_csv(plan, store_side("baseline.db", plan, side));
    return parse_baseline_csv(csv, "baseline.csv");
  }

  GateResult check(const Side& base, const Side& now, int repeats = 5,
                   GateOptions options = {}) const {
    const std::vector<RunConfig> plan = gate_plan(repeats);
    return run_gate(gate_spec(), plan, baseline(plan, base), store_side("current.db", plan, now),
                    options);
  }
};

const GateCheck* find_check(const GateResult& result, const std::string& run,
                            const std::string& what) {
  for (const GateCheck& check : result.checks) {
    if (check.run == run && check.check == what) return &check;
  }
  return nullptr;
}

TEST_F(GateTest, UnchangedRerunPasses) {
  Side now;
  now.time_off = {0.501, 0.499, 0.502, 0.500, 0.498};
  now.time_on = {0.649, 0.653, 0.650, 0.647, 0.651};
  const GateResult result = check(Side{}, now);
  EXPECT_EQ(result.outcome, GateOutcome::kPass) << render_gate_markdown(result, "db", "base");
  EXPECT_EQ(result.regressions, 0);
  EXPECT_EQ(result.improvements, 0);
  EXPECT_EQ(result.runs_checked, 10);
  ASSERT_EQ(result.checks.size(), 4U);  // memory and time of two configurations
  for (const GateCheck& c : result.checks) EXPECT_EQ(c.verdict, Verdict::kPass) << c.check;
  EXPECT_TRUE(result.baseline_only.empty());
  EXPECT_TRUE(result.current_only.empty());
  const std::string md = render_gate_markdown(result, "current.db", "base.csv");
  EXPECT_EQ(md.rfind("# harness check: PASS\n", 0), 0U) << md;
}

TEST_F(GateTest, MemoryRegressionFails) {
  Side now;
  now.mem_off = 1050.0;  // +5%
  const GateResult result = check(Side{}, now);
  EXPECT_EQ(result.outcome, GateOutcome::kRegression);
  EXPECT_EQ(result.regressions, 1);
  const GateCheck* memory = find_check(result, "gc=off", "peak_mem_mb");
  ASSERT_NE(memory, nullptr);
  EXPECT_EQ(memory->verdict, Verdict::kRegression);
  EXPECT_EQ(memory->delta, "+50.0 MB (+5.0%)");
  const std::string md = render_gate_markdown(result, "current.db", "base.csv");
  EXPECT_EQ(md.rfind("# harness check: FAIL\n", 0), 0U) << md;
  EXPECT_NE(md.find("| gc=off | peak_mem_mb | 1000.0 MB | 1050.0 MB | +50.0 MB (+5.0%) | "
                    "**REGRESSION** |"),
            std::string::npos)
      << md;
}

TEST_F(GateTest, MemoryToleranceIsOnePercentOrATenthOfAMegabyte) {
  Side within;
  within.mem_off = 1009.9;  // max(1000 * 1%, 0.1 MB) = 10 MB allowed
  EXPECT_EQ(check(Side{}, within).outcome, GateOutcome::kPass);
  Side beyond;
  beyond.mem_off = 1010.1;
  EXPECT_EQ(check(Side{}, beyond).outcome, GateOutcome::kRegression);
  GateOptions loose;
  loose.mem_tolerance_pct = 5;
  EXPECT_EQ(check(Side{}, beyond, 5, loose).outcome, GateOutcome::kPass);
}

// The quickstart's smallest runs peak at about 5 MB: a 1 MB regression there must fail (the old
// 2% + 1 MB let it through), and so must +5% (0.25 MB); 0.05 MB stays within the 0.1 MB floor.
TEST_F(GateTest, OneMegabyteOnAFiveMegabyteRunFails) {
  Side base;
  base.mem_off = 5.0;
  Side plus_one = base;
  plus_one.mem_off = 6.0;
  EXPECT_EQ(check(base, plus_one).outcome, GateOutcome::kRegression);
  Side plus_five_pct = base;
  plus_five_pct.mem_off = 5.25;
  EXPECT_EQ(check(base, plus_five_pct).outcome, GateOutcome::kRegression);
  Side plus_tiny = base;
  plus_tiny.mem_off = 5.05;
  EXPECT_EQ(check(base, plus_tiny).outcome, GateOutcome::kPass);
}

// Where the baseline's repeats themselves differ (a nondeterministic allocator), the margin
// widens to three times their spread, so that noise alone does not fail the gate.
TEST_F(GateTest, MemoryToleranceWidensWithTheBaselinesSpread) {
  Side noisy;
  noisy.mem_off_jitter = {0, 2, 4, 6, 8};  // median 1004 MB, spread 8 MB: 24 MB allowed
  Side now;
  now.mem_off = 1025.0;  // +21 MB over the median: beyond 1%, within 3 x spread
  EXPECT_EQ(check(noisy, now).outcome, GateOutcome::kPass);
  now.mem_off = 1029.0;  // +25 MB
  EXPECT_EQ(check(noisy, now).outcome, GateOutcome::kRegression);
  EXPECT_EQ(check(Side{}, now).outcome, GateOutcome::kRegression);
}

TEST_F(GateTest, SlowdownWithFiveRepeatsFails) {
  const Side now = scaled(Side{}, 1.2);  // +20%, the baseline's small noise scaled along
  const GateResult result = check(Side{}, now);
  EXPECT_EQ(result.outcome, GateOutcome::kRegression);
  EXPECT_EQ(result.regressions, 2);  // both configurations
  const GateCheck* time = find_check(result, "gc=off", "step_time_s");
  ASSERT_NE(time, nullptr);
  EXPECT_EQ(time->verdict, Verdict::kRegression);
  EXPECT_EQ(time->delta, "+20.0%, p = 0.0079");
  EXPECT_EQ(time->baseline, "0.500 s (n=5)");
  // The same change below the slowdown threshold passes although it is significant.
  GateOptions lenient;
  lenient.time_slowdown_pct = 25;
  EXPECT_EQ(check(Side{}, now, 5, lenient).outcome, GateOutcome::kPass);
}

TEST_F(GateTest, SlowdownWithThreeRepeatsIsNotTested) {
  Side base;
  base.time_off.resize(3);
  base.time_on.resize(3);
  const Side now = scaled(base, 1.2);
  const GateResult result = check(base, now, 3);
  EXPECT_EQ(result.outcome, GateOutcome::kPass);
  const GateCheck* time = find_check(result, "gc=off", "step_time_s");
  ASSERT_NE(time, nullptr);
  EXPECT_EQ(time->verdict, Verdict::kNotTested);
  EXPECT_EQ(time->delta, "+20.0%");
  EXPECT_EQ(time->note, "fewer than 5 repeats");
  const std::string md = render_gate_markdown(result, "current.db", "base.csv");
  EXPECT_NE(md.find("2 check(s) not tested"), std::string::npos) << md;
  EXPECT_NE(md.find("not tested (fewer than 5 repeats)"), std::string::npos) << md;
}

TEST_F(GateTest, NewOomFails) {
  Side now;
  now.status["g-on-2"] = Status::kOom;
  const GateResult result = check(Side{}, now);
  EXPECT_EQ(result.outcome, GateOutcome::kRegression);
  const GateCheck* status = find_check(result, "gc=on", "status");
  ASSERT_NE(status, nullptr);
  EXPECT_EQ(status->verdict, Verdict::kRegression);
  EXPECT_EQ(status->baseline, "5 ok");
  EXPECT_EQ(status->current, "4 ok, 1 OOM");
  // The four ok runs are still checked, and too few for the U test.
  EXPECT_EQ(find_check(result, "gc=on", "step_time_s")->verdict, Verdict::kNotTested);

  // An OOM in the baseline that is still an OOM is no regression.
  Side base;
  base.status["g-on-2"] = Status::kOom;
  EXPECT_EQ(check(base, now).outcome, GateOutcome::kPass);
}

TEST_F(GateTest, ImprovementPassesAndIsReported) {
  Side now = scaled(Side{}, 0.8);
  now.mem_on = 600.0;
  Side base;
  base.status["g-off-4"] = Status::kOom;  // fixed now
  const GateResult result = check(base, now);
  EXPECT_EQ(result.outcome, GateOutcome::kPass);
  EXPECT_EQ(result.regressions, 0);
  // The status of gc=off, the memory and the time of gc=on; gc=off's time has four baseline
  // repeats only (one was an OOM) and is not tested.
  EXPECT_EQ(result.improvements, 3);
  EXPECT_EQ(find_check(result, "gc=on", "peak_mem_mb")->verdict, Verdict::kImproved);
  EXPECT_EQ(find_check(result, "gc=on", "step_time_s")->verdict, Verdict::kImproved);
  EXPECT_EQ(find_check(result, "gc=off", "status")->verdict, Verdict::kImproved);
  const std::string md = render_gate_markdown(result, "current.db", "base.csv");
  EXPECT_NE(md.find("3 improvement(s)"), std::string::npos) << md;
  EXPECT_NE(
      md.find("| gc=on | peak_mem_mb | 700.0 MB | 600.0 MB | -100.0 MB (-14.3%) | improved |"),
      std::string::npos)
      << md;
}

TEST_F(GateTest, BaselineFromAnotherGpuIsRefusedUnlessCross) {
  Side now;
  now.env["gpu_name"] = "NVIDIA A100-SXM4-80GB";
  const GateResult refused = check(Side{}, now);
  EXPECT_EQ(refused.outcome, GateOutcome::kRefused);
  EXPECT_NE(refused.refusal.find("measured on Tesla P100-PCIE-16GB, libtorch 2.1.0, the runs in "
                                 "the database on NVIDIA A100-SXM4-80GB, libtorch 2.1.0"),
            std::string::npos)
      << refused.refusal;
  EXPECT_NE(refused.refusal.find("--cross"), std::string::npos);
  EXPECT_TRUE(refused.checks.empty());
  const std::string md = render_gate_markdown(refused, "current.db", "base.csv");
  EXPECT_EQ(md.rfind("# harness check: REFUSED\n", 0), 0U) << md;

  GateOptions cross;
  cross.cross = true;
  const GateResult accepted = check(Side{}, now, 5, cross);
  EXPECT_EQ(accepted.outcome, GateOutcome::kPass);
  EXPECT_EQ(accepted.runs_checked, 10);
  ASSERT_FALSE(accepted.notes.empty());
  EXPECT_EQ(accepted.notes[0].rfind("Cross-environment comparison (--cross)", 0), 0U);

  // Another libtorch on the same GPU is refused too; another driver or commit is not.
  Side libtorch;
  libtorch.env["libtorch"] = "2.3.1";
  EXPECT_EQ(check(Side{}, libtorch).outcome, GateOutcome::kRefused);
  Side driver;
  driver.env["driver"] = "550.54.15";
  driver.env["git_commit"] = "fedcba987654";
  EXPECT_EQ(check(Side{}, driver).outcome, GateOutcome::kPass);
}

TEST_F(GateTest, CpuRunsOnAnotherCpuAreComparedWithANote) {
  Side base;
  base.env = {{"host", "dev"},
              {"cpu", "Intel Core i7"},
              {"gpu_name", ""},
              {"gpu_mem_mb", 0},
              {"libtorch", "2.1.0"}};
  Side now = base;
  now.env["host"] = "ci";
  now.env["cpu"] = "AMD EPYC 7763";
  const GateResult result = check(base, now);
  EXPECT_EQ(result.outcome, GateOutcome::kPass);
  EXPECT_EQ(result.baseline_env, "CPU Intel Core i7, libtorch 2.1.0");
  ASSERT_EQ(result.notes.size(), 1U);
  EXPECT_NE(result.notes[0].find("another CPU model"), std::string::npos);
  // Memory gets 5% instead of 1% there: +3% passes, +6% fails.
  now.mem_off = 1030.0;
  EXPECT_EQ(check(base, now).outcome, GateOutcome::kPass);
  now.mem_off = 1060.0;
  EXPECT_EQ(check(base, now).outcome, GateOutcome::kRegression);
  now.env["cpu"] = base.env["cpu"];
  now.mem_off = 1030.0;
  EXPECT_EQ(check(base, now).outcome, GateOutcome::kRegression);
}

TEST_F(GateTest, MissingRunsAreListedNotFailed) {
  Side base;
  base.absent = {"g-off-0"};  // new since the baseline
  Side now;
  now.absent = {"g-on-4"};  // not run this time
  const GateResult result = check(base, now);
  EXPECT_EQ(result.outcome, GateOutcome::kPass);
  EXPECT_EQ(result.runs_checked, 8);
  ASSERT_EQ(result.baseline_only.size(), 1U);
  EXPECT_EQ(result.baseline_only[0], "gc=on (repeat 4, run g-on-4)");
  ASSERT_EQ(result.current_only.size(), 1U);
  EXPECT_EQ(result.current_only[0], "gc=off (repeat 0, run g-off-0)");
  const std::string md = render_gate_markdown(result, "current.db", "base.csv");
  EXPECT_NE(md.find("In the baseline, not stored now (not judged) (1):\n- gc=on (repeat 4, run "
                    "g-on-4)"),
            std::string::npos)
      << md;
}

TEST_F(GateTest, NothingInCommonIsRefused) {
  const std::vector<RunConfig> plan = gate_plan(5);
  std::vector<StoredRun> base = baseline(plan, Side{});
  for (StoredRun& run : base) run.run_id = "other-" + run.run_id;
  const GateResult result =
      run_gate(gate_spec(), plan, base, store_side("current.db", plan, Side{}), GateOptions{});
  EXPECT_EQ(result.outcome, GateOutcome::kRefused);
  EXPECT_NE(result.refusal.find("no run of the baseline is stored"), std::string::npos);
}

TEST_F(GateTest, BaselineFileLayout) {
  const std::vector<RunConfig> plan = gate_plan(1);
  Side side;
  side.status["g-on-0"] = Status::kOom;
  const std::string csv = baseline_csv(plan, store_side("b.db", plan, side));
  EXPECT_EQ(csv,
            "run_id,repeat,experiment,workload,config,status,device,libtorch,cpu,metric,value\n"
            "g-off-0,0,gate_small,finetune,\"{\"\"batch_size\"\":1,\"\"gc\"\":\"\"off\"\"}\",ok,"
            "Tesla P100-PCIE-16GB,2.1.0,Intel Xeon E5-2690 v4,peak_mem_mb,1000\n"
            "g-off-0,0,gate_small,finetune,\"{\"\"batch_size\"\":1,\"\"gc\"\":\"\"off\"\"}\",ok,"
            "Tesla P100-PCIE-16GB,2.1.0,Intel Xeon E5-2690 v4,step_time_s,0.5\n"
            "g-off-0,0,gate_small,finetune,\"{\"\"batch_size\"\":1,\"\"gc\"\":\"\"off\"\"}\",ok,"
            "Tesla P100-PCIE-16GB,2.1.0,Intel Xeon E5-2690 v4,tokens_per_s,1024\n"
            "g-on-0,0,gate_small,finetune,\"{\"\"batch_size\"\":1,\"\"gc\"\":\"\"on\"\"}\",oom,"
            "Tesla P100-PCIE-16GB,2.1.0,Intel Xeon E5-2690 v4,,\n");

  const std::vector<StoredRun> runs = parse_baseline_csv(csv, "b.csv");
  ASSERT_EQ(runs.size(), 2U);
  EXPECT_EQ(runs[0].run_id, "g-off-0");
  EXPECT_EQ(runs[0].status, Status::kOk);
  EXPECT_EQ(runs[0].config, (Json{{"batch_size", 1}, {"gc", "off"}}));
  EXPECT_EQ(runs[0].metrics.at("step_time_s"), 0.5);
  EXPECT_EQ(runs[0].env["gpu_name"], "Tesla P100-PCIE-16GB");
  EXPECT_EQ(runs[0].env["libtorch"], "2.1.0");
  EXPECT_EQ(runs[1].status, Status::kOom);
  EXPECT_TRUE(runs[1].metrics.empty());

  // CRLF line ends (a file edited on Windows) read the same.
  std::string crlf;
  for (const char c : csv) {
    if (c == '\n') crlf += '\r';
    crlf += c;
  }
  EXPECT_EQ(parse_baseline_csv(crlf, "b.csv").size(), 2U);
}

TEST_F(GateTest, MalformedBaselinesNameTheLine) {
  const std::string header(kBaselineHeader);
  const auto error_of = [](const std::string& text) -> std::string {
    try {
      parse_baseline_csv(text, "b.csv");
    } catch (const std::invalid_argument& e) {
      return e.what();
    }
    return "(no error)";
  };
  EXPECT_EQ(error_of("run,metric\n").rfind("b.csv:1: not a harness baseline", 0), 0U);
  EXPECT_EQ(error_of(header + "\nr1,0,x,finetune,{},ok,cpu,2.1,c,peak_mem_mb\n"),
            "b.csv:2: expected 11 fields, found 10");
  EXPECT_EQ(error_of(header + "\nr1,0,x,finetune,{},ok,cpu,2.1,c,peak_mem_mb,12a\n"),
            "b.csv:2: peak_mem_mb: not a number: \"12a\"");
  EXPECT_EQ(error_of(header + "\nr1,0,x,finetune,{},fine,cpu,2.1,c,peak_mem_mb,1\n"),
            "b.csv:2: status: unknown \"fine\"");
  EXPECT_EQ(error_of(header + "\nr1,zero,x,finetune,{},ok,cpu,2.1,c,peak_mem_mb,1\n"),
            "b.csv:2: repeat: not a count: \"zero\"");
  EXPECT_EQ(error_of(header + "\nr1,0,x,finetune,{},ok,cpu,2.1,c,peak_mem_mb,1\n" +
                     "r1,0,x,finetune,{},oom,cpu,2.1,c,step_time_s,1\n")
                .rfind("b.csv:3: run r1 differs from its line 2", 0),
            0U);
  EXPECT_EQ(error_of(header + "\nr1,0,x,finetune,{},ok,cpu,2.1,c,peak_mem_mb,1\n" +
                     "r1,0,x,finetune,{},ok,cpu,2.1,c,peak_mem_mb,2\n"),
            "b.csv:3: run r1: metric peak_mem_mb twice");
  EXPECT_EQ(error_of(header + "\nr1,0,x,finetune,\"{,ok\n"), "b.csv:2: unterminated quoted field");
  // Found by fuzzing (tests/fuzz/corpus/fuzz_baseline_csv/crash-config-number-overflow.csv): a
  // config number beyond double is nlohmann's out_of_range, not a parse_error, and escaped as
  // "error: [json.exception.out_of_range.406] ...", exit 1, without the file.
  EXPECT_EQ(error_of(header + "\nr1,0,x,finetune,32e2363,ok,cpu,2.1,c,peak_mem_mb,1\n"),
            "b.csv:2: config: not JSON");
  // A config nested 100,000 deep: comparing two lines' configs recursed once per level and
  // overflowed the stack (AddressSanitizer: stack-overflow in `harness check`).
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  EXPECT_EQ(error_of(header + "\nr1,0,x,finetune," + deep + ",ok,cpu,2.1,c,peak_mem_mb,1\n" +
                     "r1,0,x,finetune," + deep + ",ok,cpu,2.1,c,step_time_s,1\n"),
            "b.csv:2: config: nested deeper than 64 levels");
  EXPECT_EQ(json_nesting_depth(R"({"a": [1, "]]}[[", {"b": []}]})"), 4U);
  EXPECT_THROW(baseline_csv(gate_plan(1), {}), std::invalid_argument);
}

}  // namespace
}  // namespace hx
