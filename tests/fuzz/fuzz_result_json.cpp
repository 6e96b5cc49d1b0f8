// `result.json` ingest (harness/store/store.h): the worker's result file is parsed, converted by
// record_from_result_json and stored by Store::ingest, as harness/exec/runner.cpp does for every
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

#include "harness/plan/spec.h"
#include "harness/store/store.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

const hx::RunConfig& fuzz_run() {
  static const hx::RunConfig run = [] {
    hx::RunConfig r;
    r.run_id = "00000000fuzzf00d";
    r.workload = hx::Workload::kFinetune;
    r.config = nlohmann::json::object();
    r.canonical = "{}";
    return r;
  }();
  return run;
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
