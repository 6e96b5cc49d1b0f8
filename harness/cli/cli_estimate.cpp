// `harness estimate SPEC [--format md|csv]`: the analytic memory estimate of every planned run
// (docs/memory-model.md), without running anything.
#include <iostream>
#include <memory>
#include <string>

#include "harness/cli/cli.h"
#include "harness/estimate/estimate.h"
#include "harness/plan/spec.h"
#include "harness/report/report.h"

namespace hx {
namespace {

struct EstimateArgs {
  std::string spec_path;
  SpecOverrides overrides;  // --set, --only
  std::string format = "md";
  EstimateOptions options;
};

int run_estimate(const EstimateArgs& args) {
  const Spec spec = load_spec(args.spec_path, args.overrides);  // throws std::invalid_argument
  const ReportFormat format = parse_report_format(args.format);
  std::cout << render_estimates(spec, expand(spec), format, args.options) << std::flush;
  return kExitOk;
}

const CommandRegistrar kRegistrar{
    "estimate", [](CLI::App& app, const std::function<void(int)>& set_exit) {
      auto args = std::make_shared<EstimateArgs>();
      CLI::App* sub = app.add_subcommand(
          "estimate",
          "Analytic memory estimate (weights, gradients, optimizer state, activations, peak) of "
          "every planned run, without running anything");
      sub->add_option("spec", args->spec_path, "Experiment spec (YAML)")->required();
      add_spec_overrides(sub, args->overrides);
      sub->add_option("--format", args->format, "md | csv")
          ->check(CLI::IsMember({"md", "csv"}))
          ->capture_default_str();
      sub->add_option("--libtorch", args->options.libtorch,
                      "libtorch version the worker runs (what autograd saves differs; default: " +
                          default_libtorch_version() + ")");
      sub->callback([args, set_exit] { set_exit(run_estimate(*args)); });
    }};

}  // namespace
}  // namespace hx
