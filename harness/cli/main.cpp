// `harness`: the parent CLI. It never links libtorch; commands that need the model are forwarded
// to `harness-worker` (see cli_forward.cpp).
#include <cstdio>
#include <exception>
#include <map>
#include <stdexcept>

#include "harness/cli/cli.h"

namespace hx {
namespace {
std::map<std::string, CommandSetup>& registry() {
  static std::map<std::string, CommandSetup> commands;
  return commands;
}
}  // namespace

CommandRegistrar::CommandRegistrar(std::string name, CommandSetup setup) {
  registry().emplace(std::move(name), std::move(setup));
}

void add_spec_overrides(CLI::App* sub, SpecOverrides& overrides) {
  sub->add_option("--set", overrides.set,
                  "KEY=VALUE: change a top-level key, model.KEY/data.KEY, or a config key "
                  "(a fixed value, or an axis's values: KEY=[v1,v2]); repeatable")
      ->type_name("KEY=VALUE")
      ->allow_extra_args(false);
  sub->add_option("--only", overrides.only,
                  "AXIS=V1,V2: run/show only these values of a matrix axis; repeatable")
      ->type_name("AXIS=VALUES")
      ->allow_extra_args(false);
}
}  // namespace hx

int main(int argc, char** argv) {
  CLI::App app{"harness: memory and speed of efficient fine-tuning and inference, measured"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "harness 0.1");
  int exit_code = hx::kExitOk;
  for (auto& [name, setup] : hx::registry())
    setup(app, [&exit_code](int code) { exit_code = code; });
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : hx::kExitUsage;
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return hx::kExitUsage;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return hx::kExitFailure;
  }
  return exit_code;
}
