#pragma once
// Subcommands register themselves (one harness/cli/cli_<name>.cpp each) so that adding a command
// touches one file.
#include <CLI/CLI.hpp>
#include <functional>
#include <string>

#include "harness/plan/config_keys.h"
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

// --quant, --double-quant, --compute-dtype: the config keys of those names, for `harness generate`
// and the worker's generate, their values and defaults from the registry.
inline void add_quant_options(CLI::App* sub, std::string& quant, std::string& double_quant,
                              std::string& compute_dtype) {
  const auto add = [sub](const std::string& flag, std::string_view key, std::string& value) {
    const ConfigKey& rule = *find_config_key(key);
    value = default_value(key).get<std::string>();
    sub->add_option(flag, value, std::string(rule.doc))
        ->check(CLI::IsMember(std::vector<std::string>(rule.words.begin(), rule.words.end())))
        ->capture_default_str();
  };
  add("--quant", "quant", quant);
  add("--double-quant", "double_quant", double_quant);
  add("--compute-dtype", "compute_dtype", compute_dtype);
}

}  // namespace hx
