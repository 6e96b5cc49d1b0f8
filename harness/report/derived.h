#pragma once
// Figures the parent computes from a run's stored metrics, its config and its environment, in
// one place for every table that shows them: MFU (`mfu` in a report, the MFU table of compare)
// and the share of device memory (compare).
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "harness/plan/spec.h"
#include "harness/store/store.h"

namespace hx {

// The parameter count N of the spec's model preset; nullopt when the spec names no preset (or
// one the tool does not know).
std::optional<int64_t> preset_param_count(const Spec& spec);

// A config value as a table cell: a string as it is, a missing value as "(none)", else its JSON.
std::string config_value_text(const nlohmann::json& value);

// Model FLOPs utilisation of a fine-tuning run in %: 6 x N x tokens_per_s / the dense peak
// FLOP/s of the run's GPU at its precision (compute_dtype; gpu_specs.h). nullopt for a run
// without tokens_per_s, not fine-tuning, on a CPU, on a GPU the peak table does not know or at a
// precision the GPU has no peak for; `why`, when given, is then set to a sentence for the
// reader ("" when there is nothing to explain, e.g. no tokens_per_s).
std::optional<double> mfu_percent(const StoredRun& run, int64_t params, std::string* why = nullptr);

// peak_mem_mb as a percentage of the GPU's memory (env gpu_mem_mb); nullopt on a CPU.
std::optional<double> memory_share_percent(const StoredRun& run);

// Data parallelism's scaling efficiency in % (the metric `scaling_eff`), added to each run of
// world_size N > 1 whose config with world_size 1 (zero and dp_bucket_mb aside: one rank has
// neither) is stored too: tokens_per_s(N) / (N x tokens_per_s(1)) x 100, the world-1 figure the
// mean over its repeats. Other runs are returned as they are.
std::vector<StoredRun> with_scaling_efficiency(const std::vector<StoredRun>& runs);

// A stored metric (nullopt when absent or NaN), or for `mfu` the computed figure (`params`
// nullopt: nullopt).
std::optional<double> metric_value(const StoredRun& run, std::string_view name,
                                   std::optional<int64_t> params = std::nullopt);

}  // namespace hx
