// `harness report SPEC [--db results/harness.db] [--format md|csv] [--out DIR]`: renders the
// spec's tables from the stored runs; reading only, so it can run while `harness run` writes.
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "harness/cli/cli.h"
#include "harness/estimate/estimate.h"
#include "harness/plan/spec.h"
#include "harness/report/report.h"
#include "harness/store/json_io.h"
#include "harness/store/store.h"

namespace hx {
namespace {

struct ReportOptions {
  std::string spec_path;
  SpecOverrides overrides;  // --set, --only
  std::string db = "results/harness.db";
  std::string format = "md";
  std::string out_dir;
};

int run_report(const ReportOptions& options) {
  const Spec spec =
      load_spec(options.spec_path, options.overrides);  // throws std::invalid_argument
  const ReportFormat format = parse_report_format(options.format);
  // A typo in --db must not leave an empty database behind and report "no runs".
  if (!std::filesystem::exists(options.db)) {
    throw std::invalid_argument(options.db + ": no such database (run `harness run " +
                                options.spec_path + " --db " + options.db + "` first)");
  }
  const Store store(options.db, Store::Mode::kExisting);
  const auto planned = expand(spec);
  auto runs = store.load_runs(spec.name);
  add_estimates(spec, planned, runs);  // a table's est_peak_mem_mb row (docs/memory-model.md)
  std::string text = render_report(spec, planned, runs, format);
  if (format == ReportFormat::kMarkdown)
    text += render_generations(spec, planned,
                               [&](const std::string& id) { return store.load_texts(id); });
  std::cout << text << std::flush;
  if (!options.out_dir.empty()) {
    std::filesystem::create_directories(options.out_dir);
    const std::string path =
        (std::filesystem::path(options.out_dir) / (spec.name + "." + report_extension(format)))
            .string();
    // Charts drawn by `harness plot` into the same folder are linked from the Markdown report.
    const auto charts = std::filesystem::path(options.out_dir) / (spec.name + "-plots.md");
    const bool link_charts = format == ReportFormat::kMarkdown && std::filesystem::exists(charts);
    write_file_atomic(path, link_charts ? text + "\nCharts: [" + charts.filename().string() + "](" +
                                              charts.filename().string() + ")\n"
                                        : text);
    std::fprintf(stderr, "wrote %s\n", path.c_str());
  }
  return kExitOk;
}

const CommandRegistrar kRegistrar{
    "report", [](CLI::App& app, const std::function<void(int)>& set_exit) {
      // The callback runs after this function returns: the options live as long as it does.
      auto options = std::make_shared<ReportOptions>();
      CLI::App* sub = app.add_subcommand(
          "report", "Render the spec's tables (Markdown or CSV) from the runs stored in the db");
      sub->add_option("spec", options->spec_path, "Experiment spec (YAML)")->required();
      add_spec_overrides(sub, options->overrides);
      sub->add_option("--db", options->db, "Run database")->capture_default_str();
      sub->add_option("--format", options->format, "md | csv")
          ->check(CLI::IsMember({"md", "csv"}))
          ->capture_default_str();
      sub->add_option("--out", options->out_dir,
                      "Also write the report to DIR/<spec name>.<md|csv>");
      sub->callback([options, set_exit] { set_exit(run_report(*options)); });
    }};

}  // namespace
}  // namespace hx
