// The YAML spec loader (harness/spec.cpp parse_spec, then expand): any text either loads or is a
// std::invalid_argument "FILE:LINE: key: message" (what `harness run` prints before exit 2).
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "harness/pretokenize.h"
#include "harness/spec.h"
#include "model/tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

// Specs whose matrices multiply out to more runs than this are skipped: enumerating a huge matrix
// is slow by design (its limit is tested with `harness expand`, not here), and the fuzzer would
// spend its time there.
constexpr double kMaxRuns = 2000;

// An upper bound of the runs of the spec from its YAML alone (the product of each part's axis
// lengths, plus its includes, times repeats); 0 when the YAML does not even load.
double run_bound(const std::string& text) {
  try {
    const YAML::Node root = YAML::Load(text);
    if (!root.IsMap()) return 0;
    auto part_runs = [](const YAML::Node& part) {
      double runs = 1;
      if (!part.IsMap()) return runs;
      if (const YAML::Node matrix = part["matrix"]; matrix && matrix.IsMap()) {
        for (const auto& axis : matrix) {
          if (axis.second.IsSequence() && axis.second.size() > 0) {
            runs *= static_cast<double>(axis.second.size());
          }
        }
      }
      if (const YAML::Node include = part["include"]; include && include.IsSequence()) {
        runs += static_cast<double>(include.size());
      }
      return runs;
    };
    double runs = part_runs(root);
    if (const YAML::Node parts = root["parts"]; parts && parts.IsSequence()) {
      for (const auto& part : parts) runs += part_runs(part);
    }
    if (const YAML::Node repeats = root["repeats"]; repeats && repeats.IsScalar()) {
      runs *= std::max(1.0, std::stod(repeats.Scalar()));
    }
    return runs;
  } catch (const std::exception&) {
    return 0;  // the spec parser says what is wrong
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const bool ready =
      (hx::fuzz::enter_source_dir(), hx::set_tokenizer_loader(&hx::load_tokenizer), true);
  (void)ready;
  const std::string text(reinterpret_cast<const char*>(data), size);
  if (run_bound(text) > kMaxRuns) return 0;
  // The path only names the file in messages; relative paths in the spec resolve from the
  // checkout (the current directory), as when a user runs `harness run` there.
  const std::string path = "tests/fuzz/input.yaml";
  try {
    const hx::Spec spec = hx::parse_spec(text, path);
    const std::vector<hx::RunConfig> runs = hx::expand(spec);
    if (runs.empty()) hx::fuzz::finding("a spec that loads expands to no runs");
  } catch (const std::invalid_argument& e) {
    hx::fuzz::require_prefix(e, path + ":");
  }
  return 0;
}
