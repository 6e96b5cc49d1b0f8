// `harness check SPEC --db PATH --baseline FILE [--mem-tolerance-pct 2] [--mem-tolerance-mb 1]
// [--time-p 0.01] [--time-slowdown-pct 10] [--cross]`: the regression gate for CI. Prints a
// Markdown summary; exit 0 (no regression), 1 (a regression), 2 (bad input, or a baseline from
// another GPU or libtorch version without --cross). Rules: gate.h, docs/compare-and-gate.md.
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <stdexcept>
#include <string>

#include "harness/cli/cli.h"
#include "harness/plan/spec.h"
#include "harness/report/gate.h"
#include "harness/store/json_io.h"
#include "harness/store/store.h"

namespace hx {
namespace {

struct CheckOptions {
  std::string spec_path;
  SpecOverrides overrides;  // --set, --only
  std::string db = "results/harness.db";
  std::string baseline;
  GateOptions gate;
};

int run_check(const CheckOptions& options) {
  const Spec spec = load_spec(options.spec_path, options.overrides);
  if (!std::filesystem::exists(options.db)) {
    throw std::invalid_argument(options.db + ": no such database");
  }
  const std::vector<StoredRun> baseline =
      parse_baseline_csv(read_file(options.baseline), options.baseline);
  const Store store(options.db, Store::Mode::kExisting);
  const GateResult result =
      run_gate(spec, expand(spec), baseline, store.load_runs(spec.name), options.gate);
  std::cout << render_gate_markdown(result, options.db, options.baseline) << std::flush;
  switch (result.outcome) {
    case GateOutcome::kRefused:
      std::fprintf(stderr, "error: %s: %s\n", options.baseline.c_str(), result.refusal.c_str());
      return kExitUsage;
    case GateOutcome::kRegression:
      std::fprintf(stderr, "harness check: %d regression(s)\n", result.regressions);
      return kExitFailure;
    case GateOutcome::kPass:
      break;
  }
  return kExitOk;
}

const CommandRegistrar kRegistrar{
    "check", [](CLI::App& app, const std::function<void(int)>& set_exit) {
      auto options = std::make_shared<CheckOptions>();
      CLI::App* sub = app.add_subcommand(
          "check",
          "Regression gate: compare the stored runs with a baseline (exit 1 on a "
          "regression)");
      sub->add_option("spec", options->spec_path, "Experiment spec (YAML)")->required();
      add_spec_overrides(sub, options->overrides);
      sub->add_option("--db", options->db, "Run database")->capture_default_str();
      sub->add_option("--baseline", options->baseline, "Baseline file (`harness baseline`)")
          ->required();
      sub->add_option("--mem-tolerance-pct", options->gate.mem_tolerance_pct,
                      "Peak memory may exceed the baseline by the largest of this percentage ...")
          ->check(CLI::Range(0.0, 1.0e6))
          ->capture_default_str();
      sub->add_option("--mem-tolerance-mb", options->gate.mem_tolerance_mb, "... this many MB ...")
          ->check(CLI::Range(0.0, 1.0e6))
          ->capture_default_str();
      sub->add_option("--mem-noise-factor", options->gate.mem_noise_factor,
                      "... and this many times the spread of the baseline's repeats")
          ->check(CLI::Range(0.0, 1.0e6))
          ->capture_default_str();
      sub->add_option("--mem-tolerance-other-cpu-pct", options->gate.mem_tolerance_other_cpu_pct,
                      "The percentage instead, for CPU runs on another CPU model")
          ->check(CLI::Range(0.0, 1.0e6))
          ->capture_default_str();
      sub->add_option("--time-p", options->gate.time_p,
                      "Significance level of the two-sided Mann-Whitney U test")
          ->check(CLI::Range(0.0, 1.0))
          ->capture_default_str();
      sub->add_option("--time-slowdown-pct", options->gate.time_slowdown_pct,
                      "A significant change of the median time beyond this percentage counts")
          ->check(CLI::Range(0.0, 1.0e6))
          ->capture_default_str();
      sub->add_flag("--cross", options->gate.cross,
                    "Accept a baseline from another GPU or libtorch version");
      sub->callback([options, set_exit] { set_exit(run_check(*options)); });
    }};

}  // namespace
}  // namespace hx
