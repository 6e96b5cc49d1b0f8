#pragma once
// The typed words of the core: a run's status and its workload. Strings appear only at the edges
// (the runs table, result.json, the spec): to_string writes the word they use, parse_* reads it.
// No libtorch.

#include <iosfwd>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string_view>

namespace hx {

// How a run ended; the order of the runs table's CHECK constraint.
enum class Status { kOk, kOom, kTimeout, kCrashed, kError, kSkipped };

inline constexpr Status kAllStatuses[] = {Status::kOk,      Status::kOom,   Status::kTimeout,
                                          Status::kCrashed, Status::kError, Status::kSkipped};

// "ok", "oom", "timeout", "crashed", "error", "skipped".
constexpr std::string_view to_string(Status status) {
  switch (status) {
    case Status::kOk:
      return "ok";
    case Status::kOom:
      return "oom";
    case Status::kTimeout:
      return "timeout";
    case Status::kCrashed:
      return "crashed";
    case Status::kError:
      return "error";
    case Status::kSkipped:
      return "skipped";
  }
  return "error";
}

// none for a word that is not a status.
constexpr std::optional<Status> parse_status(std::string_view word) {
  for (const Status status : kAllStatuses) {
    if (to_string(status) == word) return status;
  }
  return std::nullopt;
}

// A run that failed: oom, crashed, timeout or error (not skipped, not ok).
constexpr bool is_failure(Status status) {
  return status == Status::kOom || status == Status::kCrashed || status == Status::kTimeout ||
         status == Status::kError;
}

// The status as tables show it: "OOM", "crash", else the word (ok, timeout, error, skipped).
constexpr std::string_view status_label(Status status) {
  if (status == Status::kOom) return "OOM";
  if (status == Status::kCrashed) return "crash";
  return to_string(status);
}

// What a run does.
enum class Workload { kFinetune, kGenerate };

inline constexpr Workload kAllWorkloads[] = {Workload::kFinetune, Workload::kGenerate};

// "finetune", "generate".
constexpr std::string_view to_string(Workload workload) {
  return workload == Workload::kFinetune ? "finetune" : "generate";
}

// none for a word that is not a workload.
constexpr std::optional<Workload> parse_workload(std::string_view word) {
  for (const Workload workload : kAllWorkloads) {
    if (to_string(workload) == word) return workload;
  }
  return std::nullopt;
}

// As JSON: the word (never the enum's number); from_json throws on any other word.
void to_json(nlohmann::json& j, Status status);
void from_json(const nlohmann::json& j, Status& status);
void to_json(nlohmann::json& j, Workload workload);
void from_json(const nlohmann::json& j, Workload& workload);

// For test failure messages: the word.
std::ostream& operator<<(std::ostream& out, Status status);
std::ostream& operator<<(std::ostream& out, Workload workload);

}  // namespace hx
