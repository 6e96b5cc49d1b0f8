#pragma once
// Subcommands register themselves (one harness/cli_<name>.cpp each) so that adding a command
// touches one file.
#include <CLI/CLI.hpp>
#include <functional>
#include <string>

#include "harness/plan/spec.h"

namespace hx {

// Exit codes of `harness` and `harness-worker`: a small documented set (README "Exit codes").
enum ExitCode : int {
  kExitOk = 0,
  kExitFailure = 1,    // runs failed / regression found (the work itself ran)
  kExitUsage = 2,      // bad input: spec, flags, unknown preset
  kExitOom = 3,        // worker: out of memory
  kExitRunError = 4,   // worker: run could not be done (bad run file, runtime error)
  kExitInternal = 70,  // a bug
};

// A subcommand's action returns the process exit code.
using CommandSetup = std::function<void(CLI::App& app, const std::function<void(int)>& set_exit)>;

struct CommandRegistrar {
  CommandRegistrar(std::string name, CommandSetup setup);
};

// `--set KEY=VALUE` and `--only AXIS=V1,V2` (SpecOverrides, spec.h) on a command that reads a
// spec: the same flags on every such command.
void add_spec_overrides(CLI::App* sub, SpecOverrides& overrides);

}  // namespace hx
