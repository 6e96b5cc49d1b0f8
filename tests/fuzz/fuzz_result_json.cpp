// `result.json` ingest (harness/store.h): the worker's result file is parsed, converted by
// record_from_result_json and stored by Store::ingest, as harness/runner.cpp does for every
// finished run. Any bytes are either not JSON (the run is recorded as crashed: "unreadable
// result.json"), or a std::runtime_error naming the result (recorded the same way), or a record
// that Store::ingest stores: an exception there would stop `harness run`.
#include <cmath>
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>
#include <string>

#include "harness/spec.h"
#include "harness/store.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

const hx::RunConfig& fuzz_run() {
  static const hx::RunConfig run = [] {
    hx::RunConfig r;
    r.run_id = "00000000fuzzf00d";
    r.workload = "finetune";
    r.config = nlohmann::json::object();
    r.canonical = "{}";
    return r;
  }();
  return run;
}

// KNOWN, reported (issue 18): record_from_result_json accepts a metric name or a step index twice,
// which Store::ingest then refuses (the tables' primary keys) with an exception that stops
// `harness run`; and it casts a `tokens` value beyond int64 (undefined behaviour). Until store.cpp
// refuses those (a runtime_error naming the key, like every other protocol error), such records
// are not stored here; remove this filter with that fix.
bool known_store_gap(const nlohmann::json& result) {
  if (!result.is_object()) return false;
  if (const auto it = result.find("metrics"); it != result.end() && it->is_array()) {
    std::set<std::string> names;
    for (const auto& m : *it) {
      if (m.is_object() && m.contains("name") && m["name"].is_string() &&
          !names.insert(m["name"].get<std::string>()).second)
        return true;
    }
  }
  if (const auto it = result.find("steps"); it != result.end() && it->is_array()) {
    std::set<int64_t> steps;
    for (const auto& s : *it) {
      if (!s.is_object()) continue;
      if (s.contains("step") && s["step"].is_number_integer() &&
          !steps.insert(s["step"].get<int64_t>()).second)
        return true;
      if (s.contains("tokens") && s["tokens"].is_number()) {
        const double tokens = s["tokens"].get<double>();
        if (!(std::fabs(tokens) < 9.2e18)) return true;
      }
    }
  }
  return false;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static hx::Store store(":memory:");
  nlohmann::json result;
  try {
    result = nlohmann::json::parse(data, data + size);
  } catch (const nlohmann::json::exception&) {
    return 0;
  }
  if (known_store_gap(result)) return 0;
  hx::RunRecord record;
  try {
    record = hx::record_from_result_json(result, "fuzz", fuzz_run());
  } catch (const std::runtime_error& e) {
    hx::fuzz::require_prefix(e, "result.json of run " + fuzz_run().run_id);
    return 0;
  }
  // What the runner adds before it stores the record.
  record.started_at = record.finished_at = hx::utc_now_iso8601();
  record.exit_code = 0;
  try {
    store.ingest(record);
  } catch (const std::exception& e) {
    hx::fuzz::finding(std::string("Store::ingest refused a record that record_from_result_json "
                                  "accepted: ") +
                      e.what());
  }
  return 0;
}
