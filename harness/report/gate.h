#pragma once
// Baselines and the regression gate: `harness baseline` saves a spec's stored runs to a CSV file,
// `harness check` compares the runs in a database with it (docs/compare-and-gate.md).
//
// Rules of the gate, per configuration of the plan (its repeats together), over the runs stored
// on both sides (matched by run id):
// - status: a run that was ok in the baseline and now ends oom, crashed, timeout or error is a
//   regression; the other way round is an improvement.
// - metrics: which are judged, and how, is the field table's `gate` column (fields.h GateTest).
// - memory (kMemoryMargin: peak_mem_mb): the median of the ok runs regresses when it exceeds the
//   baseline's by more than the largest of mem_tolerance_pct % of it, mem_tolerance_mb, and
//   mem_noise_factor times the spread (max - min) of the baseline's repeats; lower by as much is
//   an improvement. Allocator peaks repeat to the byte for one build and input, so the margin fits
//   the run: a 1 MB regression of a 5 MB run fails, a 1% wobble of a 10 GB run passes. CPU runs
//   on another CPU model than the baseline's get mem_tolerance_other_cpu_pct instead of
//   mem_tolerance_pct.
// - time (kTimeUTest: step_time_s, prefill_s, decode_s): with at least min_repeats ok runs on
//   both sides, a two-sided Mann-Whitney U test at time_p and a change of the median beyond
//   time_slowdown_pct %: slower is a regression, faster an improvement. With fewer repeats the
//   change is shown and not judged.
// - runs stored on one side only are listed, not judged; a baseline that matches no stored run,
//   or (without `cross`) comes from another GPU or libtorch version, is refused.
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "harness/plan/spec.h"
#include "harness/store/store.h"

namespace hx {

// ---- Mann-Whitney U ----

struct MannWhitney {
  double u = 0;        // U of the first sample: pairs (x_i, y_j) with x_i > y_j, ties count 1/2
  double p = 1;        // two-sided
  bool exact = false;  // exact distribution (no ties, n_x + n_y <= 60); else normal approximation
};

enum class MannWhitneyMethod {
  kAuto,        // exact when there are no ties and n_x + n_y <= 60, else asymptotic
  kExact,       // the exact distribution of U (no ties allowed; n_x + n_y <= 60)
  kAsymptotic,  // normal approximation, tie correction, continuity correction
};

// Two-sided Mann-Whitney U test; the statistic and p-values of scipy.stats.mannwhitneyu with
// method="exact" and method="asymptotic" (use_continuity=True). Throws std::invalid_argument for
// an empty sample, or kExact with ties or more than 60 values.
MannWhitney mann_whitney_u(const std::vector<double>& x, const std::vector<double>& y,
                           MannWhitneyMethod method = MannWhitneyMethod::kAuto);

// ---- Baselines ----

// The first line of a baseline file; one line per (run, metric) follows (docs/compare-and-gate.md
// "Baseline files"). A run without metrics (oom, crashed) has one line with metric and value
// empty.
inline constexpr std::string_view kBaselineHeader =
    "run_id,repeat,experiment,workload,config,status,device,libtorch,cpu,metric,value";

// The plan's stored runs (in plan order) as a baseline file. Throws std::invalid_argument when
// none of the planned runs is stored.
std::string baseline_csv(const std::vector<RunConfig>& plan, const std::vector<StoredRun>& runs);

// Reads a baseline file back into runs (env holds gpu_name, cpu and libtorch). Throws
// std::invalid_argument("PATH:LINE: message") on a malformed file.
std::vector<StoredRun> parse_baseline_csv(const std::string& text, const std::string& path);

// ---- The gate ----

struct GateOptions {
  double mem_tolerance_pct = 1;
  double mem_tolerance_mb = 0.1;
  double mem_noise_factor = 3;
  // CPU runs on another CPU model than the baseline's: its kernels (oneDNN, MKL) may pick other
  // blockings and scratch sizes, so memory gets at least this margin instead of mem_tolerance_pct.
  double mem_tolerance_other_cpu_pct = 5;
  double time_p = 0.01;
  double time_slowdown_pct = 10;
  int min_repeats = 5;
  bool cross = false;  // accept a baseline from another GPU or libtorch version
};

enum class Verdict { kPass, kImproved, kRegression, kNotTested };

struct GateCheck {
  std::string run;    // the configuration: "gc=off, mp=fp16" ("part x: ..." with several parts)
  std::string check;  // "status", "peak_mem_mb", "step_time_s", ...
  std::string baseline, current, delta;  // as shown
  Verdict verdict = Verdict::kPass;
  std::string note;  // "3 and 3 repeats (< 5): not tested"
};

enum class GateOutcome { kPass, kRegression, kRefused };

struct GateResult {
  GateOutcome outcome = GateOutcome::kPass;
  std::string refusal;  // why the baseline was refused
  GateOptions options;
  std::string experiment;
  std::string baseline_env, current_env;  // "Tesla P100-PCIE-16GB, libtorch 2.1.0"
  std::vector<GateCheck> checks;
  std::vector<std::string> baseline_only;  // runs in the baseline without a stored run now
  std::vector<std::string> current_only;   // stored runs that the baseline does not have
  std::vector<std::string> notes;
  int runs_checked = 0;  // runs stored on both sides
  int regressions = 0, improvements = 0;
};

// Compares the plan's runs in `current` (Store::load_runs) with `baseline` (parse_baseline_csv).
GateResult run_gate(const Spec& spec, const std::vector<RunConfig>& plan,
                    const std::vector<StoredRun>& baseline, const std::vector<StoredRun>& current,
                    const GateOptions& options);

// The CI page: a headline, a table of the checks (run, check, baseline, current, delta,
// verdict), the runs not compared, the rules. `db` and `baseline_path` are named in it.
std::string render_gate_markdown(const GateResult& result, const std::string& db,
                                 const std::string& baseline_path);

std::string verdict_text(Verdict verdict);

}  // namespace hx
