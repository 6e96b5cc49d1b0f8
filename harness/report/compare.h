#pragma once
// `harness compare`: the same runs on several environments side by side (docs/compare-and-gate.md).
//
// Runs are matched by run id, which depends on the spec and not on the machine, so the runs of
// one spec stored by a P100 and by an A100 line up. Rules:
// - An environment is a GPU (labelled by its CUDA device name) or, for CPU runs, a host and its
//   CPU ("node7 (Intel Xeon ...)"). The runs of one database on one GPU form one column, whatever
//   commit or driver they were measured with (the Environments table lists the differences); the
//   same GPU in two databases gives two columns, told apart by the database's name.
// - One table per metric, one row per configuration of the plan (its repeats together: the
//   median, with ± half the range when there are several, as in `harness report`), one column
//   per environment, then one ratio column per environment after the first: its median divided
//   by the first environment's.
// - A cell whose runs all failed shows the verdict (`OOM`, `timeout`, ...): a run that fits on
//   one GPU and not on another reads `OOM` next to a figure, and its ratio is `-`.
// - Normalised figures: tokens/s; memory as a share of the device's memory (peak_mem_mb /
//   gpu_mem_mb; none on a CPU); MFU for fine-tuning runs, 6 x N x tokens/s / peak FLOP/s, with N
//   the model preset's parameter count and the peak from gpu_specs.h at the run's precision (mp,
//   else dtype, else fp32). A GPU that is not in the peak table gets no MFU and a note.
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "harness/plan/fields.h"
#include "harness/plan/gpu_specs.h"
#include "harness/plan/spec.h"
#include "harness/report/report.h"
#include "harness/report/stats.h"
#include "harness/store/store.h"

namespace hx {

// ---- Shared with the gate (gate.h) ----

// The environment's label: the GPU name, or "host (cpu)" for a CPU run; "" for no environment.
std::string environment_label(const Json& env);

// What a baseline must share with the current runs: the GPU name, or "cpu" for CPU runs; ""
// for no environment.
std::string environment_device(const Json& env);

// A text field of an environment object ("" when absent or null; numbers as written).
std::string environment_field(const Json& env, const char* key);

// The precision the run computes in: mp when it is not off, else dtype, else "fp32".
std::string compute_dtype(const Json& config);

// One configuration of the plan with all its repeats.
struct ConfigGroup {
  int part = 0;
  Workload workload = Workload::kFinetune;
  Json config;                       // the resolved config (without the repeat)
  std::vector<std::string> values;   // one per PlanPart::keys, as shown in tables
  std::string label;                 // "gc=off, mp=fp16" (the varying keys), "(all)" if none
  std::vector<std::string> run_ids;  // the repeats, in repeat order
};

// The configurations of one part of the spec, in plan order.
struct PlanPart {
  int part = 0;
  std::string title;              // "part finetune" when the spec has several parts, else ""
  std::vector<std::string> keys;  // config keys whose value varies within the part
  std::string constants;          // matrix axes with a single value: "ga=1, lr=1e-05"
  std::vector<ConfigGroup> groups;
};

// Groups the plan (expand(spec)) by part and configuration.
std::vector<PlanPart> group_plan(const Spec& spec, const std::vector<RunConfig>& plan);

// ---- The comparison ----

// One database's runs of the experiment (Store::load_runs), named as on the command line.
struct CompareSource {
  std::string name;
  std::vector<StoredRun> runs;
};

struct CompareEnv {
  std::string letter;  // "A", "B", ...: ratio columns read "B/A"
  std::string label;   // environment_label, plus " [db name]" when two columns would share it
  std::string source;  // the database's name
  Json env;            // the first run's environment ({} when no run had one)
  // Environment facts (kEnvFields names) -> their distinct values over the column's runs,
  // joined by " / " (one value unless, say, two commits were measured).
  std::map<std::string, std::string> facts;
  const GpuPeak* peak = nullptr;  // nullptr: CPU or a GPU the peak table does not know
  bool cpu = false;
  int runs = 0, ok = 0;  // planned runs stored for this environment, and how many are ok
};

struct CompareRow {
  std::string label;                          // ConfigGroup::label
  std::vector<std::string> values;            // ConfigGroup::values
  std::vector<ReportCell> cells;              // one per environment
  std::vector<std::optional<double>> ratios;  // one per environment after the first
};

struct CompareTable {
  std::string part_title;  // "part finetune" when the spec has several parts
  bool first_of_part = true;
  std::string constants;  // of the part: stated with its first table
  std::string metric;     // stored name, or "mem_share_pct" / "mfu_pct" for derived figures
  std::string label;      // "Peak Mem (MB)"
  NumberFormat format = NumberFormat::kSignificant;
  int digits = 3;
  std::vector<std::string> keys;  // the part's varying config keys: the first columns
  std::vector<CompareRow> rows;
  std::vector<std::string> notes;  // below the table (MFU: unknown GPUs, dtypes without a peak)
};

struct Comparison {
  std::string experiment, spec_path;
  std::vector<std::string> sources;  // database names
  std::vector<CompareEnv> envs;
  std::string model;               // preset name, "" when the spec has none
  std::optional<int64_t> params;   // the preset's parameter count (MFU's N)
  std::vector<std::string> notes;  // stale runs, runs without environment
  std::vector<CompareTable> tables;
};

// Builds the comparison of the plan's runs over `sources`. Environments come in the order of
// the sources, and within one source in the order of their first stored run.
Comparison build_comparison(const Spec& spec, const std::vector<RunConfig>& plan,
                            const std::vector<CompareSource>& sources);

// The same shape as the report's Reporter: begin, then per table header, rows, footer.
class CompareReporter {
 public:
  virtual ~CompareReporter() = default;
  virtual void begin(const Comparison& comparison) = 0;
  virtual void header(const Comparison& comparison, const CompareTable& table) = 0;
  virtual void row(const Comparison& comparison, const CompareTable& table,
                   const CompareRow& row) = 0;
  virtual void footer(const Comparison& comparison, const CompareTable& table) = 0;
  std::string str() const { return out_.str(); }

 protected:
  std::ostringstream out_;
};

std::unique_ptr<CompareReporter> make_compare_reporter(ReportFormat format);

std::string render_comparison(const Comparison& comparison, ReportFormat format);

}  // namespace hx
