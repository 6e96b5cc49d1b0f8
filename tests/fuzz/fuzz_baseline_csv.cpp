// The baseline CSV reader (harness/report/gate.h parse_baseline_csv, what `harness check --baseline
// FILE` reads), then the gate and its page over the runs it read: any bytes are either a baseline
// the gate can judge, or a std::invalid_argument "FILE:LINE: message".
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "harness/plan/spec.h"
#include "harness/report/gate.h"
#include "harness/store/json_io.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

// The quickstart's spec, plan and committed baseline: the runs a fuzzed baseline is judged
// against (fuzzed lines that keep the seed's run ids meet real runs).
struct Quickstart {
  hx::Spec spec;
  std::vector<hx::RunConfig> plan;
  std::vector<hx::StoredRun> runs;
};

const Quickstart& quickstart() {
  static const Quickstart q = [] {
    hx::fuzz::enter_source_dir();
    Quickstart out;
    out.spec = hx::load_spec("experiments/quickstart.yaml");
    out.plan = hx::expand(out.spec);
    const std::string path = "results/baselines/quickstart-cpu.csv";
    out.runs = hx::parse_baseline_csv(hx::read_file(path), path);
    return out;
  }();
  return q;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const Quickstart& q = quickstart();
  const std::string path = "baseline.csv";
  std::vector<hx::StoredRun> baseline;
  try {
    baseline = hx::parse_baseline_csv(std::string(reinterpret_cast<const char*>(data), size), path);
  } catch (const std::invalid_argument& e) {
    hx::fuzz::require_prefix(e, path + ":");
    return 0;
  }
  // `harness check`: the stored runs against the file, and the file against itself (every run
  // stored on both sides, whatever its values).
  for (const std::vector<hx::StoredRun>* current : {&q.runs, &std::as_const(baseline)}) {
    for (const bool cross : {false, true}) {
      hx::GateOptions options;
      options.cross = cross;
      const hx::GateResult result = hx::run_gate(q.spec, q.plan, baseline, *current, options);
      (void)hx::render_gate_markdown(result, "fuzz.db", path);
    }
  }
  return 0;
}
