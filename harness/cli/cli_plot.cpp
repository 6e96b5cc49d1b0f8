// `harness plot SPEC [--db PATH] [--out reports/]`: SVG charts of the spec's tables (gnuplot),
// the per-step loss and memory curves of fine-tuning runs (the `steps` table), and
// <out>/<name>-plots.md linking them.
#include <cstdio>
#include <filesystem>
#include <memory>

#include "harness/cli/cli.h"
#include "harness/report/plot.h"
#include "harness/store/json_io.h"
#include "harness/store/store.h"

namespace hx {
namespace {

struct PlotArgs {
  std::string spec_path;
  SpecOverrides overrides;  // --set, --only
  std::string db = "results/harness.db";
  PlotOptions options;
};

int run_plot(const PlotArgs& args) {
  const Spec spec = load_spec(args.spec_path, args.overrides);
  if (!std::filesystem::exists(args.db))
    throw std::invalid_argument(args.db + ": no such database");
  const Store store(args.db, Store::Mode::kExisting);
  const auto plan = expand(spec);
  const auto runs = store.load_runs(spec.name);
  auto files = plot_report(spec, build_report_tables(spec, plan, runs), args.options);
  const auto curves = plot_steps(spec, step_curves(spec, plan, runs, store), args.options);
  files.insert(files.end(), curves.begin(), curves.end());
  std::string index = "# " + spec.name + ": charts\n\n";
  for (const auto& f : files) {
    const auto name = std::filesystem::path(f).filename().string();
    index += "![" + name + "](" + name + ")\n\n";
    std::printf("%s\n", f.c_str());
  }
  const auto index_path = std::filesystem::path(args.options.out_dir) / (spec.name + "-plots.md");
  write_file_atomic(index_path.string(), index);
  std::fprintf(stderr, "%zu charts (%zu of them per-step curves); index %s\n", files.size(),
               curves.size(), index_path.c_str());
  return kExitOk;
}

const CommandRegistrar kRegistrar{
    "plot", [](CLI::App& app, const std::function<void(int)>& set_exit) {
      auto args = std::make_shared<PlotArgs>();
      auto* sub = app.add_subcommand(
          "plot", "draw SVG charts of the spec's tables and per-step curves with gnuplot");
      sub->add_option("spec", args->spec_path, "experiment spec (YAML)")->required();
      add_spec_overrides(sub, args->overrides);
      sub->add_option("--db", args->db, "results database")->capture_default_str();
      sub->add_option("--out", args->options.out_dir, "output directory")->capture_default_str();
      sub->add_option("--limit-mb", args->options.limit_mb,
                      "memory limit line (default: the spec's memory_limit_mb)");
      sub->callback([args, set_exit] { set_exit(run_plot(*args)); });
    }};

}  // namespace
}  // namespace hx
