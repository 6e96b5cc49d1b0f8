#pragma once
// The field tables: one row per metric (and per environment fact) known to the tool. Everything
// that lists a run's fields (the environments schema and INSERT, the report's rows, their labels
// and number formats) reads these tables, so adding a metric means adding one row here.
#include <array>
#include <string>
#include <string_view>
#include <vector>

namespace hx {

enum class NumberFormat {
  kFixed,        // `digits` decimals: memory in MB, counts
  kSignificant,  // at least `digits` significant digits: times that span 1e-4 s to 1e2 s
};

// What a metric measures: compare, the gate, the progress line and the report's defaults pick
// metrics by role, not by name.
enum class MetricRole {
  kMemory,      // bytes held (MB)
  kTime,        // seconds
  kThroughput,  // work per second (tok/s, MFU)
  kQuality,     // what the run computed (loss)
  kInfo,        // facts about the run (parameter counts, skipped steps)
};

// Which direction is an improvement; kNeither for facts.
enum class Better { kLower, kHigher, kNeither };

// How `harness check` judges the metric against a baseline (gate.h; the margins are GateOptions).
enum class GateTest {
  kNotGated,
  kMemoryMargin,  // median beyond max(mem_tolerance_pct %, mem_tolerance_mb, noise x spread)
  kTimeUTest,     // Mann-Whitney U at time_p and a median change beyond time_slowdown_pct %
};

struct Field {
  std::string_view name;      // as stored and as written in specs: part of the interface
  std::string_view unit;      // the stored unit; "" for counts and losses
  std::string_view sql_type;  // REAL | INTEGER | TEXT
  std::string_view label;     // the report's row header, unit as the reader expects it
  NumberFormat format = NumberFormat::kFixed;
  int digits = 0;
  // Metrics only (kMetricFields):
  MetricRole role = MetricRole::kInfo;
  Better better = Better::kNeither;
  GateTest gate = GateTest::kNotGated;
  bool progress = false;  // the progress line shows the first of its role that a run has
};

namespace metric_rows {
using enum NumberFormat;
using enum MetricRole;
using enum Better;
using enum GateTest;

// Metrics that workers write (or the parent derives: mfu, est_peak_mem_mb) and reports know how
// to show: the one list of them (docs/metrics.md defines each).
inline constexpr std::array<Field, 29> kMetricFields = {{
    // name, unit, sql type, label, format, digits, role, better, gate, progress
    {"peak_mem_mb", "MB", "REAL", "Peak Mem (MB)", kFixed, 1, kMemory, kLower, kMemoryMargin, true},
    {"peak_reserved_mb", "MB", "REAL", "Peak Reserved (MB)", kFixed, 1, kMemory, kLower},
    {"peak_rss_mb", "MB", "REAL", "Peak RSS (MB)", kFixed, 1, kMemory, kLower},
    {"step_time_s", "s", "REAL", "Runtime (s/step)", kSignificant, 3, kTime, kLower, kTimeUTest,
     true},
    {"step_time_p50_s", "s", "REAL", "Runtime p50 (s/step)", kSignificant, 3, kTime, kLower},
    {"step_time_min_s", "s", "REAL", "Runtime min (s/step)", kSignificant, 3, kTime, kLower},
    {"step_time_max_s", "s", "REAL", "Runtime max (s/step)", kSignificant, 3, kTime, kLower},
    {"total_time_s", "s", "REAL", "Total Time (s)", kSignificant, 3, kTime, kLower},
    {"load_s", "s", "REAL", "Load (s)", kSignificant, 3, kTime, kLower},
    {"tokens_per_s", "tok/s", "REAL", "Throughput (tok/s)", kSignificant, 4, kThroughput, kHigher},
    {"mfu", "%", "REAL", "MFU (%)", kSignificant, 3, kThroughput, kHigher},
    {"loss_first", "", "REAL", "Loss (first step)", kFixed, 4, kQuality, kLower},
    {"loss_last", "", "REAL", "Loss (last step)", kFixed, 4, kQuality, kLower},
    {"trainable_params", "", "REAL", "Trainable Params", kFixed, 0},
    {"trainable_pct", "%", "REAL", "Trainable (%)", kSignificant, 3},
    {"mem_params_mb", "MB", "REAL", "Mem Params (MB)", kFixed, 1, kMemory, kLower},
    {"mem_grads_mb", "MB", "REAL", "Mem Grads (MB)", kFixed, 1, kMemory, kLower},
    {"mem_optimizer_mb", "MB", "REAL", "Mem Optimizer (MB)", kFixed, 1, kMemory, kLower},
    {"mem_activations_mb", "MB", "REAL", "Mem Activations (MB)", kFixed, 1, kMemory, kLower},
    {"mem_kv_cache_mb", "MB", "REAL", "Mem KV Cache (MB)", kFixed, 1, kMemory, kLower},
    {"prefill_s", "s", "REAL", "Prefill (s)", kSignificant, 3, kTime, kLower, kTimeUTest},
    {"decode_s", "s", "REAL", "Decode (s)", kSignificant, 3, kTime, kLower, kTimeUTest, true},
    {"decode_token_p50_s", "s", "REAL", "Decode p50 (s/token)", kSignificant, 3, kTime, kLower},
    {"decode_tokens_per_s", "tok/s", "REAL", "Decode (tok/s)", kSignificant, 4, kThroughput,
     kHigher},
    {"skipped_steps", "", "REAL", "Skipped Steps", kFixed, 0},
    {"world_size", "", "REAL", "World Size", kFixed, 0},
    {"comm_wait_s", "s", "REAL", "Comm Wait (s/step)", kSignificant, 3, kTime, kLower},
    {"scaling_eff", "%", "REAL", "Scaling Eff. (%)", kSignificant, 3, kThroughput, kHigher},
    {"est_peak_mem_mb", "MB", "REAL", "Est. Peak Mem (MB)", kFixed, 1, kMemory, kLower},
}};
}  // namespace metric_rows
using metric_rows::kMetricFields;

// Metrics that parent-side figures are computed from (derived.h) or named by.
inline constexpr std::string_view kPeakMemMetric = "peak_mem_mb";
inline constexpr std::string_view kTokensPerSecondMetric = "tokens_per_s";
inline constexpr std::string_view kMfuMetric = "mfu";

// The facts recorded with every run (worker-protocol.md `env`); the environments table has one
// column per row, and env_id hashes exactly these keys.
inline constexpr std::array<Field, 11> kEnvFields = {{
    {"host", "", "TEXT", "Host"},
    {"cpu", "", "TEXT", "CPU"},
    {"gpu_name", "", "TEXT", "GPU"},
    {"gpu_mem_mb", "MB", "INTEGER", "GPU memory (MB)"},
    {"driver", "", "TEXT", "Driver"},
    {"cuda", "", "TEXT", "CUDA"},
    {"libtorch", "", "TEXT", "libtorch"},
    {"compiler", "", "TEXT", "Compiler"},
    {"build_type", "", "TEXT", "Build type"},
    {"git_commit", "", "TEXT", "Commit"},
    {"threads", "", "INTEGER", "Threads"},
}};

// nullptr for a metric the tool does not know (still stored; shown with its raw name).
const Field* find_metric_field(std::string_view name);

// A metric's row, or for one the table does not know a row with its raw name as label, no unit
// and 4 significant digits (role kInfo, not gated).
Field metric_field_or_raw(std::string_view name);

// The metrics of the table that `harness check` judges with `test`, in table order.
std::vector<const Field*> gated_metrics(GateTest test);

// The first metric of `role` in table order (the role's headline: tokens_per_s for throughput).
const Field& first_metric_of(MetricRole role);

// The number of decimals `value` gets in a Markdown report under `field`'s format.
int display_decimals(const Field& field, double value);

// `value` with exactly `decimals` decimals; "nan", "inf" and "-inf" for non-finite values.
std::string format_fixed(double value, int decimals);

// The shortest text that reads back as the same double (CSV: full precision, no rounding).
std::string format_full(double value);

// How a config key is named in a table's header rows ("gc" -> "GC", "lora" -> "LoRA"); unknown
// keys are shown as written.
std::string axis_label(std::string_view key);

}  // namespace hx
