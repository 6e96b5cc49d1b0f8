// Commands that need the model run in harness-worker (the parent links no libtorch): `harness
// model`, `harness export` and `harness logits` replace this process with the worker, their
// arguments passed as given. (`harness generate` runs the worker as a child, with the tokenizer
// in the parent: cli_generate.cpp.)
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "harness/cli/cli.h"
#include "harness/exec/runner.h"

namespace hx {
namespace {

[[noreturn]] void exec_worker(const std::string& command, const std::vector<std::string>& rest) {
  const std::string worker = default_worker_path();
  std::vector<std::string> args{worker, command};
  args.insert(args.end(), rest.begin(), rest.end());
  std::vector<char*> argv;
  argv.reserve(args.size() + 1);
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  ::execv(worker.c_str(), argv.data());
  throw std::runtime_error("cannot start " + worker + ": " + std::strerror(errno));
}

void forward(CLI::App& app, const std::string& name, const std::string& help) {
  auto rest = std::make_shared<std::vector<std::string>>();
  auto* sub = app.add_subcommand(name, help);
  sub->prefix_command();  // everything after the name goes to the worker as is
  sub->set_help_flag();   // --help too: the worker's help lists the options
  sub->callback([sub, name] { exec_worker(name, sub->remaining()); });
}

const CommandRegistrar kModel{
    "model", [](CLI::App& app, const std::function<void(int)>&) {
      forward(app, "model", "print a preset's config, parameter count and weight bytes");
    }};

const CommandRegistrar kExport{
    "export", [](CLI::App& app, const std::function<void(int)>&) {
      forward(app, "export", "write a model (preset or checkpoint directory) as an HF directory");
    }};

const CommandRegistrar kLogits{
    "logits", [](CLI::App& app, const std::function<void(int)>&) {
      forward(app, "logits", "the logits of a prompt (token ids) into a safetensors file");
    }};

}  // namespace
}  // namespace hx
