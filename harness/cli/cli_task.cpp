// `harness task DIR [INDEX]`: what one Slurm array task runs (INDEX defaults to
// $SLURM_ARRAY_TASK_ID). Not for people: `harness run --backend slurm` writes the files it reads.
#include <cstdlib>
#include <memory>
#include <stdexcept>

#include "harness/cli/cli.h"
#include "harness/exec/runner.h"

namespace hx {
namespace {

struct TaskArgs {
  std::string dir;
  int index = -1;
};

int task_command(const TaskArgs& args) {
  int index = args.index;
  if (index < 0) {
    const char* env = std::getenv("SLURM_ARRAY_TASK_ID");
    if (env == nullptr || *env == '\0')
      throw std::invalid_argument("no task index: give INDEX or run inside a Slurm array task");
    index = std::atoi(env);
  }
  return run_slurm_task(args.dir, index);
}

const CommandRegistrar kRegistrar{
    "task", [](CLI::App& app, const std::function<void(int)>& set_exit) {
      auto args = std::make_shared<TaskArgs>();
      auto* sub = app.add_subcommand(
          "task", "(inside a Slurm array task) run one run of a submission and write its outcome");
      sub->add_option("dir", args->dir, "the submission directory (<runs dir>/slurm/<token>)")
          ->required();
      sub->add_option("index", args->index, "task index (default: $SLURM_ARRAY_TASK_ID)");
      sub->group("");  // hidden from --help
      sub->callback([args, set_exit] { set_exit(task_command(*args)); });
    }};

}  // namespace
}  // namespace hx
