// `harness keys [--json]`: the config keys a spec may use (the registry, config_keys.h): name,
// workloads, values, default, meaning. README.md's key table is this output (a test checks).
#include <iostream>
#include <memory>

#include "harness/cli/cli.h"
#include "harness/plan/config_keys.h"

namespace hx {
namespace {

nlohmann::json keys_json() {
  nlohmann::json out = nlohmann::json::array();
  for (const ConfigKey& key : config_keys()) {
    const char* scope = key.scope == Scope::kBoth       ? "both"
                        : key.scope == Scope::kFinetune ? "finetune"
                                                        : "generate";
    out.push_back({{"name", key.name},
                   {"workloads", scope},
                   {"values", describe(key)},
                   {"default", key.default_json.empty() ? nlohmann::json()
                                                        : nlohmann::json::parse(key.default_json)},
                   {"label", key.label.empty() ? key.name : key.label},
                   {"unit", key.unit},
                   {"doc", key.doc}});
  }
  return out;
}

const CommandRegistrar kRegistrar{
    "keys", [](CLI::App& app, const std::function<void(int)>& set_exit) {
      auto json = std::make_shared<bool>(false);
      CLI::App* sub = app.add_subcommand(
          "keys", "List the config keys of a spec's fixed/matrix (type, values, default)");
      sub->add_flag("--json", *json, "A JSON array instead of the Markdown table");
      sub->callback([json, set_exit] {
        if (*json) {
          std::cout << keys_json().dump(2) << '\n';
        } else {
          std::cout << config_keys_markdown();
        }
        set_exit(kExitOk);
      });
    }};

}  // namespace
}  // namespace hx
