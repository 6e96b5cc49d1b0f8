// `harness collect SPEC`: ingests the results of Slurm tasks that finished since the last look.
#include <cstdio>
#include <memory>

#include "harness/cli/cli.h"
#include "harness/exec/process.h"
#include "harness/exec/runner.h"

namespace hx {
namespace {

struct CollectArgs {
  std::string spec_path;
  SpecOverrides overrides;  // --set, --only
  RunOptions options;
};

int collect_command(CollectArgs& args) {
  const Spec spec = load_spec(args.spec_path, args.overrides);
  const RunSummary summary = collect_experiment(spec, args.options);
  if (summary.ran == 0 && summary.in_flight == 0) {
    std::fprintf(stderr, "%s: no Slurm tasks waiting to be collected (in %s)\n", spec.name.c_str(),
                 slurm_submissions_dir(spec, args.options).c_str());
    return kExitOk;
  }
  std::fprintf(stderr, "%s: collected %d (%d ok, %d oom, %d failed); %d still queued or running\n",
               spec.name.c_str(), summary.ran, summary.ok, summary.oom, summary.failed,
               summary.in_flight);
  if (summary.interrupted) return 128 + (interrupt_signal() != 0 ? interrupt_signal() : 2);
  return summary.failed > 0 ? kExitFailure : kExitOk;
}

const CommandRegistrar kRegistrar{
    "collect", [](CLI::App& app, const std::function<void(int)>& set_exit) {
      auto args = std::make_shared<CollectArgs>();
      args->options.slurm.wait = false;
      auto* sub = app.add_subcommand(
          "collect", "ingest the results of finished Slurm tasks (any number of times)");
      sub->add_option("spec", args->spec_path, "experiment spec (YAML)")->required();
      add_spec_overrides(sub, args->overrides);
      sub->add_option("--db", args->options.db_path, "results database")->capture_default_str();
      sub->add_option("--runs-dir", args->options.runs_dir,
                      "where run files are (default: <db dir>/runs/<name>)");
      sub->add_flag("--wait", args->options.slurm.wait, "follow the tasks until all are in");
      sub->add_option("--poll", args->options.slurm.poll_s, "seconds between squeue calls")
          ->capture_default_str();
      sub->callback([args, set_exit] { set_exit(collect_command(*args)); });
    }};

}  // namespace
}  // namespace hx
