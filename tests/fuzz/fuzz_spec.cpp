// The YAML spec loader (harness/plan/spec.cpp parse_spec, then expand): any text either loads or is
// a std::invalid_argument "FILE:LINE: key: message" (what `harness run` prints before exit 2).
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "harness/plan/pretokenize.h"
#include "harness/plan/spec.h"
#include "model/tokenizers/tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

// Specs of more runs than this load (loading refuses only those over kMaxRuns) but are not
// expanded: the fuzzer would spend its time enumerating matrices (`harness expand` is measured by
// tests/bench/bench_expand.cpp instead).
constexpr double kMaxExpandedRuns = 2000;

double planned_runs(const hx::Spec& spec) {
  double runs = 0;
  for (const hx::PartSpec& part : spec.parts) {
    double product = 1;
    for (const auto& axis : part.axes) product *= static_cast<double>(axis.second.size());
    runs += product + static_cast<double>(part.include.size());
  }
  return runs * spec.repeats;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const bool ready =
      (hx::fuzz::enter_source_dir(), hx::set_tokenizer_loader(&hx::load_tokenizer), true);
  (void)ready;
  const std::string text(reinterpret_cast<const char*>(data), size);
  // The path only names the file in messages; relative paths in the spec resolve from the
  // checkout (the current directory), as when a user runs `harness run` there.
  const std::string path = "tests/fuzz/input.yaml";
  try {
    const hx::Spec spec = hx::parse_spec(text, path);
    if (planned_runs(spec) > kMaxExpandedRuns) return 0;
    const std::vector<hx::RunConfig> runs = hx::expand(spec);
    if (runs.empty()) hx::fuzz::finding("a spec that loads expands to no runs");
  } catch (const std::invalid_argument& e) {
    hx::fuzz::require_prefix(e, path + ":");
  }
  return 0;
}
