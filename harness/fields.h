#pragma once
// The field tables: one row per metric (and per environment fact) known to the tool. Everything
// that lists a run's fields (the environments schema and INSERT, the report's rows, their labels
// and number formats) reads these tables, so adding a metric means adding one row here.
#include <array>
#include <string>
#include <string_view>

namespace hx {

enum class NumberFormat {
  kFixed,        // `digits` decimals: memory in MB, counts
  kSignificant,  // at least `digits` significant digits: times that span 1e-4 s to 1e2 s
};

struct Field {
  std::string_view name;      // as stored and as written in specs: part of the interface
  std::string_view unit;      // the stored unit; "" for counts and losses
  std::string_view sql_type;  // REAL | INTEGER | TEXT
  std::string_view label;     // the report's row header, unit as the reader expects it
  NumberFormat format = NumberFormat::kFixed;
  int digits = 0;
};

// Metrics that workers write and reports know how to show (docs/metrics.md).
inline constexpr std::array<Field, 20> kMetricFields = {{
    {"peak_mem_mb", "MB", "REAL", "Peak Mem (MB)", NumberFormat::kFixed, 1},
    {"peak_reserved_mb", "MB", "REAL", "Peak Reserved (MB)", NumberFormat::kFixed, 1},
    {"peak_rss_mb", "MB", "REAL", "Peak RSS (MB)", NumberFormat::kFixed, 1},
    {"step_time_s", "s", "REAL", "Runtime (s/step)", NumberFormat::kSignificant, 3},
    {"step_time_p50_s", "s", "REAL", "Runtime p50 (s/step)", NumberFormat::kSignificant, 3},
    {"total_time_s", "s", "REAL", "Total Time (s)", NumberFormat::kSignificant, 3},
    {"tokens_per_s", "tok/s", "REAL", "Throughput (tok/s)", NumberFormat::kSignificant, 4},
    {"mfu", "%", "REAL", "MFU (%)", NumberFormat::kSignificant, 3},
    {"loss_first", "", "REAL", "Loss (first step)", NumberFormat::kFixed, 4},
    {"loss_last", "", "REAL", "Loss (last step)", NumberFormat::kFixed, 4},
    {"trainable_params", "", "REAL", "Trainable Params", NumberFormat::kFixed, 0},
    {"trainable_pct", "%", "REAL", "Trainable (%)", NumberFormat::kSignificant, 3},
    {"mem_params_mb", "MB", "REAL", "Mem Params (MB)", NumberFormat::kFixed, 1},
    {"mem_grads_mb", "MB", "REAL", "Mem Grads (MB)", NumberFormat::kFixed, 1},
    {"mem_optimizer_mb", "MB", "REAL", "Mem Optimizer (MB)", NumberFormat::kFixed, 1},
    {"mem_activations_mb", "MB", "REAL", "Mem Activations (MB)", NumberFormat::kFixed, 1},
    {"prefill_s", "s", "REAL", "Prefill (s)", NumberFormat::kSignificant, 3},
    {"decode_s", "s", "REAL", "Decode (s)", NumberFormat::kSignificant, 3},
    {"skipped_steps", "", "REAL", "Skipped Steps", NumberFormat::kFixed, 0},
    {"est_peak_mem_mb", "MB", "REAL", "Est. Peak Mem (MB)", NumberFormat::kFixed, 1},
}};

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
