// `harness baseline SPEC --db PATH --out results/baselines/NAME.csv`: saves the spec's stored
// runs (status, environment, every metric of every repeat) as a baseline for `harness check`.
// The file layout: docs/compare-and-gate.md "Baseline files".
#include <cstdio>
#include <filesystem>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>

#include "harness/cli/cli.h"
#include "harness/plan/spec.h"
#include "harness/report/gate.h"
#include "harness/store/json_io.h"
#include "harness/store/store.h"

namespace hx {
namespace {

struct BaselineOptions {
  std::string spec_path;
  SpecOverrides overrides;  // --set, --only
  std::string db = "results/harness.db";
  std::string out;
};

int run_baseline(const BaselineOptions& options) {
  const Spec spec = load_spec(options.spec_path, options.overrides);
  if (!std::filesystem::exists(options.db)) {
    throw std::invalid_argument(options.db + ": no such database");
  }
  const Store store(options.db, Store::Mode::kExisting);
  const std::vector<RunConfig> plan = expand(spec);
  const std::vector<StoredRun> runs = store.load_runs(spec.name);
  const std::string text = baseline_csv(plan, runs);  // throws when nothing is stored

  std::set<std::string> stored;
  for (const StoredRun& run : runs) stored.insert(run.run_id);
  int saved = 0;
  for (const RunConfig& run : plan) saved += stored.contains(run.run_id) ? 1 : 0;
  const std::filesystem::path parent = std::filesystem::path(options.out).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent);
  write_file_atomic(options.out, text);
  std::fprintf(stderr, "wrote %s: %d of %zu planned runs", options.out.c_str(), saved, plan.size());
  if (static_cast<size_t>(saved) < plan.size()) {
    std::fprintf(stderr, " (%zu not stored: `harness run %s` first?)", plan.size() - saved,
                 options.spec_path.c_str());
  }
  std::fprintf(stderr, "\n");
  return kExitOk;
}

const CommandRegistrar kRegistrar{
    "baseline", [](CLI::App& app, const std::function<void(int)>& set_exit) {
      auto options = std::make_shared<BaselineOptions>();
      CLI::App* sub = app.add_subcommand(
          "baseline", "Save the spec's stored runs as a baseline file for `harness check`");
      sub->add_option("spec", options->spec_path, "Experiment spec (YAML)")->required();
      add_spec_overrides(sub, options->overrides);
      sub->add_option("--db", options->db, "Run database")->capture_default_str();
      sub->add_option("--out", options->out, "Baseline file (results/baselines/NAME.csv)")
          ->required();
      sub->callback([options, set_exit] { set_exit(run_baseline(*options)); });
    }};

}  // namespace
}  // namespace hx
