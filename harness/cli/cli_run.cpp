// `harness run SPEC`: every planned run in its own child, stored as it finishes, then the tables.
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>

#include "harness/cli/cli.h"
#include "harness/estimate/estimate.h"
#include "harness/exec/process.h"
#include "harness/exec/runner.h"
#include "harness/report/report.h"
#include "harness/store/store.h"

namespace hx {
namespace {

struct RunArgs {
  std::string spec_path;
  SpecOverrides overrides;  // --set, --only
  RunOptions options;
  bool no_report = false;
  std::string report_dir;
};

int run_command(const RunArgs& args) {
  const Spec spec = load_spec(args.spec_path, args.overrides);  // every error before any run starts
  const RunSummary summary = run_experiment(spec, args.options);
  if (summary.interrupted) {
    std::fprintf(stderr, "interrupted: %d runs stored; `harness run %s` resumes\n", summary.ran,
                 args.spec_path.c_str());
    return 128 + (interrupt_signal() != 0 ? interrupt_signal() : 2);
  }
  std::fprintf(stderr, "%s: %d ran (%d ok, %d oom, %d failed), %d already stored",
               spec.name.c_str(), summary.ran, summary.ok, summary.oom, summary.failed,
               summary.already_done);
  if (summary.elsewhere > 0)
    std::fprintf(stderr, ", %d run by other runners on %s (the tables show what is stored now)",
                 summary.elsewhere, args.options.db_path.c_str());
  std::fprintf(stderr, "\n");
  if (summary.in_flight > 0) {
    std::fprintf(stderr,
                 "%d runs queued or running in Slurm; `%s` ingests them as they finish "
                 "(`--wait` to follow them)\n",
                 summary.in_flight, collect_hint(args.spec_path, args.options).c_str());
    return summary.failed > 0 || summary.submit_failed ? kExitFailure : kExitOk;
  }
  if (!args.no_report && !spec.tables.empty()) {
    Store store(args.options.db_path, Store::Mode::kExisting);
    const auto planned = expand(spec);
    auto runs = store.load_runs(spec.name);
    add_estimates(spec, planned, runs);  // a table's est_peak_mem_mb row (docs/memory-model.md)
    const auto report = render_report(spec, planned, runs, ReportFormat::kMarkdown) +
                        render_generations(spec, planned, [&](const std::string& id) {
                          return store.load_texts(id);
                        });
    std::cout << report << std::flush;
    if (!args.report_dir.empty()) {
      std::filesystem::create_directories(args.report_dir);
      const auto path = std::filesystem::path(args.report_dir) / (spec.name + ".md");
      FILE* f = std::fopen(path.c_str(), "w");
      if (f == nullptr) throw std::runtime_error(path.string() + ": cannot write");
      std::fputs(report.c_str(), f);
      std::fclose(f);
      std::fprintf(stderr, "report written to %s\n", path.c_str());
    }
  }
  // OOM is a measurement (the memory frontier), not a failure of the harness.
  return summary.failed > 0 || summary.submit_failed ? kExitFailure : kExitOk;
}

const CommandRegistrar kRegistrar{
    "run", [](CLI::App& app, const std::function<void(int)>& set_exit) {
      auto args = std::make_shared<RunArgs>();
      auto* sub =
          app.add_subcommand("run", "run every planned run of a spec (resumes), then report");
      sub->add_option("spec", args->spec_path, "experiment spec (YAML)")->required();
      add_spec_overrides(sub, args->overrides);
      sub->add_option("--db", args->options.db_path, "results database")->capture_default_str();
      sub->add_option("--jobs,-j", args->options.jobs, "concurrent runs (CPU specs)")
          ->capture_default_str();
      sub->add_flag("--force", args->options.force, "rerun runs that are already stored");
      sub->add_flag("--retry-failed", args->options.retry_failed,
                    "rerun stored runs whose status is not ok");
      sub->add_option("--runs-dir", args->options.runs_dir,
                      "where run files and logs go (default: <db dir>/runs/<name>)");
      sub->add_flag("--no-report", args->no_report, "do not print the tables at the end");
      sub->add_option("--report-dir", args->report_dir, "also write <dir>/<name>.md");
      auto& slurm = args->options.slurm;
      sub->add_option("--backend", args->options.backend, "where runs go: local | slurm")
          ->check(CLI::IsMember({"local", "slurm"}))
          ->capture_default_str();
      const char* group = "Slurm (--backend slurm; README \"Running on a Slurm cluster\")";
      sub->add_option("--partition", slurm.partition, "sbatch --partition")->group(group);
      sub->add_option("--gres", slurm.gres, "sbatch --gres, e.g. gpu:1")->group(group);
      sub->add_option("--time", slurm.time,
                      "sbatch --time, a backstop (default: the spec's timeout_s + 2 min)")
          ->group(group);
      sub->add_option("--account", slurm.account, "sbatch --account")->group(group);
      sub->add_option("--mem", slurm.mem, "sbatch --mem: host memory per task, e.g. 32G")
          ->group(group);
      sub->add_option("--cpus-per-task", slurm.cpus_per_task,
                      "sbatch --cpus-per-task; also the worker's thread count (default 1)")
          ->check(CLI::NonNegativeNumber)
          ->group(group);
      sub->add_option("--max-parallel", slurm.max_parallel,
                      "at most this many tasks of the array at once (--array ...%N)")
          ->check(CLI::NonNegativeNumber)
          ->group(group);
      sub->add_option("--sbatch-arg", slurm.sbatch_args,
                      "one more sbatch argument, as --sbatch-arg=--qos=high (repeatable)")
          ->allow_extra_args(false)
          ->group(group);
      sub->add_flag("--no-wait{false}", slurm.wait,
                    "submit and return; `harness collect SPEC` ingests results later")
          ->group(group);
      sub->add_option("--poll", slurm.poll_s, "seconds between squeue calls while waiting")
          ->capture_default_str()
          ->group(group);
      sub->callback([args, set_exit] { set_exit(run_command(*args)); });
    }};

}  // namespace
}  // namespace hx
