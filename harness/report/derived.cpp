#include "harness/report/derived.h"

#include <cmath>
#include <map>
#include <stdexcept>
#include <utility>

#include "harness/plan/fields.h"
#include "harness/plan/gpu_specs.h"
#include "harness/report/compare.h"
#include "model/config.h"

namespace hx {

std::string config_value_text(const nlohmann::json& value) {
  if (value.is_null()) return "(none)";
  if (value.is_string()) return value.get<std::string>();
  return value.dump();
}

namespace {

std::optional<double> stored(const StoredRun& run, std::string_view name) {
  const auto it = run.metrics.find(std::string(name));
  if (it == run.metrics.end() || std::isnan(it->second)) return std::nullopt;
  return it->second;
}

void explain(std::string* why, std::string text) {
  if (why != nullptr) *why = std::move(text);
}

}  // namespace

std::optional<int64_t> preset_param_count(const Spec& spec) {
  if (!spec.model.contains("preset") || !spec.model["preset"].is_string()) return std::nullopt;
  try {
    return config_from_name(spec.model["preset"].get<std::string>()).param_count();
  } catch (const std::invalid_argument&) {
    return std::nullopt;
  }
}

std::optional<double> mfu_percent(const StoredRun& run, int64_t params, std::string* why) {
  explain(why, "");
  const auto tokens = stored(run, kTokensPerSecondMetric);
  if (!tokens.has_value() || run.workload != Workload::kFinetune) return std::nullopt;
  const std::string gpu = environment_field(run.env, "gpu_name");
  if (gpu.empty()) {
    explain(why, "No MFU for CPU runs (the peak table lists GPUs only).");
    return std::nullopt;
  }
  const GpuPeak* peak = find_gpu_peak(gpu);
  if (peak == nullptr) {
    explain(why, "No MFU on " + gpu +
                     ": the GPU is not in the peak table (harness/plan/gpu_specs.cpp).");
    return std::nullopt;
  }
  const std::string dtype = compute_dtype(run.config);
  const std::optional<double> flops = peak_flops(*peak, dtype);
  if (!flops.has_value()) {
    explain(why, "No MFU for " + dtype + " runs on " + gpu + ": the " + std::string(peak->name) +
                     " has no " + dtype + " peak.");
    return std::nullopt;
  }
  // 6N: one forward (2N) and one backward (4N) pass over every weight per token.
  const double flops_per_token = 6.0 * static_cast<double>(params);
  return 100.0 * flops_per_token * *tokens / *flops;
}

std::optional<double> memory_share_percent(const StoredRun& run) {
  const auto peak = stored(run, kPeakMemMetric);
  const auto it = run.env.find("gpu_mem_mb");
  if (!peak.has_value() || it == run.env.end() || !it->is_number()) return std::nullopt;
  const double device = it->get<double>();
  if (device <= 0) return std::nullopt;
  return 100.0 * *peak / device;
}

namespace {
// A run's config as one rank would run it: the keys of data parallelism removed.
std::string single_rank_config(const Json& config) {
  Json reduced = config;
  for (const char* key : {"world_size", "zero", "dp_bucket_mb"}) reduced.erase(key);
  return reduced.dump();
}

int world_size_of(const StoredRun& run) {
  const auto it = run.config.find("world_size");
  return it != run.config.end() && it->is_number_integer() ? it->get<int>() : 1;
}
}  // namespace

std::vector<StoredRun> with_scaling_efficiency(const std::vector<StoredRun>& runs) {
  std::map<std::pair<std::string, std::string>, std::vector<double>> single;  // (exp, config)
  for (const StoredRun& run : runs) {
    const auto tps = run.metrics.find(std::string(kTokensPerSecondMetric));
    if (world_size_of(run) == 1 && run.status == Status::kOk && tps != run.metrics.end())
      single[{run.experiment, single_rank_config(run.config)}].push_back(tps->second);
  }
  std::vector<StoredRun> out = runs;
  for (StoredRun& run : out) {
    const int world = world_size_of(run);
    const auto tps = run.metrics.find(std::string(kTokensPerSecondMetric));
    const auto base = single.find({run.experiment, single_rank_config(run.config)});
    if (world <= 1 || tps == run.metrics.end() || base == single.end()) continue;
    double mean = 0;
    for (const double v : base->second) mean += v;
    mean /= static_cast<double>(base->second.size());
    if (mean > 0) run.metrics["scaling_eff"] = 100.0 * tps->second / (world * mean);
  }
  return out;
}

std::optional<double> metric_value(const StoredRun& run, std::string_view name,
                                   std::optional<int64_t> params) {
  if (name == kMfuMetric) {
    return params.has_value() ? mfu_percent(run, *params) : std::nullopt;
  }
  return stored(run, name);
}

}  // namespace hx
