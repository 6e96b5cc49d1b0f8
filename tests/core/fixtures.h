#pragma once
// Made-up data shared by the tests of report and compare: an environment object
// (worker-protocol.md `env`) and planned fine-tuning runs of a gc x mp matrix.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "harness/plan/spec.h"

namespace hx::testing {

inline nlohmann::json p100_env() {
  return {{"host", "node7"},
          {"cpu", "Intel Xeon E5-2690 v4"},
          {"gpu_name", "Tesla P100-PCIE-16GB"},
          {"gpu_mem_mb", 16280},
          {"driver", "535.54.03"},
          {"cuda", "12.2"},
          {"libtorch", "2.1.0"},
          {"compiler", "GCC 12.2.0"},
          {"build_type", "Release"},
          {"git_commit", "0123456789ab"},
          {"threads", 4}};
}

// The planned run "run-<gc>-<mp>-<repeat>" of batch 1, ga 1, lr 1e-5.
inline RunConfig planned_run(const std::string& gc, const std::string& mp, int repeat) {
  RunConfig run;
  run.run_id = "run-" + gc + "-" + mp + "-" + std::to_string(repeat);
  run.repeat = repeat;
  run.workload = Workload::kFinetune;
  run.config = {{"batch_size", 1}, {"ga", 1}, {"gc", gc}, {"lr", 1e-5}, {"mp", mp}};
  run.canonical = canonical_json(run.config);
  return run;
}

// The goldens' specs are built by hand, so that those tests depend on the structs only; the
// files they name (tests/specs/report_small.yaml, compare_small.yaml) must parse to the same
// spec, and expand to the configurations of planned_run.
inline void expect_spec_file_is(const std::string& relative_path, const Spec& built) {
  SCOPED_TRACE(relative_path);
  const Spec parsed = load_spec(std::string(HX_SOURCE_DIR) + "/" + relative_path);
  EXPECT_EQ(built.path, relative_path);
  EXPECT_EQ(parsed.name, built.name);
  EXPECT_EQ(parsed.device, built.device);
  ASSERT_EQ(parsed.parts.size(), built.parts.size());
  for (size_t p = 0; p < parsed.parts.size(); ++p) {
    EXPECT_EQ(parsed.parts[p].workload, built.parts[p].workload);
    EXPECT_EQ(parsed.parts[p].fixed, built.parts[p].fixed);
    EXPECT_EQ(parsed.parts[p].axes, built.parts[p].axes);
  }
  ASSERT_EQ(parsed.tables.size(), built.tables.size());
  for (size_t t = 0; t < parsed.tables.size(); ++t) {
    SCOPED_TRACE(built.tables[t].title);
    EXPECT_EQ(parsed.tables[t].title, built.tables[t].title);
    EXPECT_EQ(parsed.tables[t].kind, built.tables[t].kind);
    EXPECT_EQ(parsed.tables[t].columns, built.tables[t].columns);
    EXPECT_EQ(parsed.tables[t].rows, built.tables[t].rows);
    EXPECT_EQ(parsed.tables[t].workload, built.tables[t].workload);
    EXPECT_EQ(parsed.tables[t].part, built.tables[t].part);
  }
  std::set<std::string> expected;
  for (const char* gc : {"off", "on"})
    for (const char* mp : {"off", "fp16"}) expected.insert(planned_run(gc, mp, 0).canonical);
  std::set<std::string> expanded;
  for (const RunConfig& run : expand(parsed)) expanded.insert(run.canonical);
  EXPECT_EQ(expanded, expected);
}

}  // namespace hx::testing
