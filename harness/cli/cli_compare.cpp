// `harness compare SPEC --db a.db [--db b.db ...] [--format md|csv] [--out FILE]`: the spec's runs
// side by side per environment (GPU, or host and CPU), with ratios against the first and
// normalised figures (docs/compare-and-gate.md). Reading only.
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "harness/cli/cli.h"
#include "harness/plan/spec.h"
#include "harness/report/compare.h"
#include "harness/report/report.h"
#include "harness/store/json_io.h"
#include "harness/store/store.h"

namespace hx {
namespace {

struct CompareOptions {
  std::string spec_path;
  SpecOverrides overrides;  // --set, --only
  std::vector<std::string> dbs;
  std::string format = "md";
  std::string out;
};

int run_compare(const CompareOptions& options) {
  const Spec spec =
      load_spec(options.spec_path, options.overrides);  // throws std::invalid_argument
  const ReportFormat format = parse_report_format(options.format);
  std::vector<CompareSource> sources;
  for (const std::string& db : options.dbs) {
    // A typo in --db must not create an empty database and compare against nothing.
    if (!std::filesystem::exists(db)) throw std::invalid_argument(db + ": no such database");
    const Store store(db, Store::Mode::kExisting);
    sources.push_back({db, store.load_runs(spec.name)});
  }
  const Comparison comparison = build_comparison(spec, expand(spec), sources);
  const std::string text = render_comparison(comparison, format);
  std::cout << text << std::flush;
  if (!options.out.empty()) {
    write_file_atomic(options.out, text);
    std::fprintf(stderr, "wrote %s\n", options.out.c_str());
  }
  return kExitOk;
}

const CommandRegistrar kRegistrar{
    "compare", [](CLI::App& app, const std::function<void(int)>& set_exit) {
      auto options = std::make_shared<CompareOptions>();
      CLI::App* sub = app.add_subcommand(
          "compare", "Put the spec's runs from one or more databases side by side per GPU");
      sub->add_option("spec", options->spec_path, "Experiment spec (YAML)")->required();
      add_spec_overrides(sub, options->overrides);
      sub->add_option("--db", options->dbs,
                      "Run database (repeat for several; ratios are against the first "
                      "environment)")
          ->required();
      sub->add_option("--format", options->format, "md | csv")
          ->check(CLI::IsMember({"md", "csv"}))
          ->capture_default_str();
      sub->add_option("--out", options->out, "Also write the comparison to FILE");
      sub->callback([options, set_exit] { set_exit(run_compare(*options)); });
    }};

}  // namespace
}  // namespace hx
