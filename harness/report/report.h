#pragma once
// Pivots stored runs into the tables a spec asks for (`tables:`), in the shape of the seed tables
// (docs/seed-tables.md, B): one column per combination of the table's `columns` axes, one header
// row per axis, one row per metric.
//
// Rules, so that a reader can trust a cell:
// - A cell is the median over the repeats of its configuration. With more than one value it
//   reads `median ± s` where s = (max - min) / 2, half the range (with few repeats a standard
//   deviation would be a guess; the range is what was seen). CSV has the median in the cell and
//   the half range in a `<metric> half_range` row below.
// - Runs are never merged across a config key that differs: a key outside `columns` that takes
//   more than one value splits the table into one table per combination, each with a subtitle
//   naming it (`gc=on`). Runs of different parts of the spec (which may differ in data or model,
//   not only in config) are never merged either: a table that spans parts gets one per part.
// - Header rows whose value is the same in every column are hidden and stated once above the
//   table (`Constant: ga=1, mp=off`), with the matrix axes that have one value.
// - A cell whose runs all failed shows the verdict (OOM, timeout, crash, error, skipped); a cell
//   with no stored run shows `-`; an ok run without the metric shows `n/a`. A cell where some
//   repeats failed shows the median of the rest and, in Markdown, the failures: `(+1 OOM)`.
// - A table of kind `arrows` (docs/seed-tables.md B, "effect of each technique alone") has one
//   baseline column (every `columns` axis at its first value) and one column per other value of
//   each axis with the rest at baseline; Markdown cells read `value (down 30%)` against the
//   baseline, `(-)` within 2%, which is below the run-to-run noise of this kind of measurement.
// - Only runs of the plan (spec expansion) are shown: stored runs of an older version of the
//   spec (their run id differs) are counted in a note, not mixed in.
#include <functional>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "harness/plan/fields.h"
#include "harness/plan/spec.h"
#include "harness/report/table.h"
#include "harness/store/store.h"

namespace hx {

enum class ReportFormat { kMarkdown, kCsv };

// "md" | "markdown" | "csv"; throws std::invalid_argument otherwise.
ReportFormat parse_report_format(const std::string& name);
// "md" | "csv": the file extension of the report.
std::string report_extension(ReportFormat format);

struct ReportCell {
  std::vector<double> values;  // the metric over the cell's ok runs; empty = see below
  std::string verdict;         // when no run is ok: "OOM", "timeout", ... ("OOM/timeout" mixed)
  std::vector<std::string> failed;  // verdicts of failed runs next to ok ones (one per run)
  bool missing = false;             // no stored run for this cell: `-`
  bool not_measured = false;        // ok runs that lack the metric: `n/a`
  std::string change;  // arrows tables: "down 30%", "up 4%", "-" against the baseline column
};

struct ReportRow {
  std::string metric;  // stored name, e.g. peak_mem_mb
  std::string label;   // e.g. "Peak Mem (MB)"
  NumberFormat format = NumberFormat::kSignificant;
  int digits = 4;
  std::vector<ReportCell> cells;  // one per column
};

struct ReportHeaderRow {
  std::string key;                  // config key, e.g. gc
  std::string label;                // e.g. "GC"
  std::vector<std::string> values;  // one per column
};

// One rendered table: one TableSpec, or one part of it when the table is split.
struct ReportTable {
  std::string title;
  bool first_of_title = true;            // the title, environment and constants print once
  std::string subtitle;                  // "gc=on, batch_size=8" for a split table; "" if none
  std::vector<std::string> environment;  // one line per distinct environment of the runs
  bool debug_build = false;              // some run was measured in a Debug build
  std::string constants;                 // "ga=1, mp=off"
  std::vector<ReportHeaderRow> header;
  std::vector<ReportRow> rows;
  std::vector<std::string> notes;  // why a table is empty or not rendered
};

// A cell from the runs of one configuration: the ok runs' values of `value` (finite ones), a
// verdict when no run is ok, `-` without runs, `n/a` when ok runs give no value. Shared by the
// report, compare and the gate so that a cell means the same everywhere.
ReportCell make_report_cell(const std::vector<const StoredRun*>& runs,
                            const std::function<std::optional<double>(const StoredRun&)>& value);

// The same shape for every format: header, one row per metric, footer.
class Reporter {
 public:
  virtual ~Reporter() = default;
  virtual void begin(const Spec& spec, int stale_runs) = 0;
  virtual void header(const ReportTable& table) = 0;
  virtual void row(const ReportTable& table, const ReportRow& row) = 0;
  virtual void footer(const ReportTable& table) = 0;
  std::string str() const { return out_.str(); }

 protected:
  std::ostringstream out_;
};

class MarkdownReporter : public Reporter {
 public:
  void begin(const Spec& spec, int stale_runs) override;
  void header(const ReportTable& table) override;
  void row(const ReportTable& table, const ReportRow& row) override;
  void footer(const ReportTable& table) override;

 private:
  TextTable table_;  // the current table, printed by footer
};

// Pivot CSV with the same cells as the Markdown tables, numbers at full precision, stored names
// (metric and config keys) as row labels; tables are separated by an empty line.
class CsvReporter : public Reporter {
 public:
  void begin(const Spec& spec, int stale_runs) override;
  void header(const ReportTable& table) override;
  void row(const ReportTable& table, const ReportRow& row) override;
  void footer(const ReportTable& table) override;
};

std::unique_ptr<Reporter> make_reporter(ReportFormat format);

// ---- Cell and field text, shared with `harness compare` and the gate ----

// A cell as Markdown: `median ± s` with `digits` under `format`, failures `(+1 OOM)`, the
// arrows change; `-`, the verdict or `n/a` without values.
std::string report_cell_markdown(const ReportCell& cell, NumberFormat format, int digits);
// A cell as CSV: the median at full precision; `-`, the verdict or `n/a` without values.
std::string report_cell_csv(const ReportCell& cell);
// Whether a table of the spec shows the runs of part `part` (whose workload is `workload`): the
// one rule for the report, compare and estimate.
bool table_selects(const Spec& spec, const TableSpec& table, int part,
                   std::optional<Workload> workload);

// The tables of `spec` with cells from `runs` (Store::load_runs) for the runs of `planned`
// (expand(spec)), matched by run id.
std::vector<ReportTable> build_report_tables(const Spec& spec,
                                             const std::vector<RunConfig>& planned,
                                             const std::vector<StoredRun>& runs);

std::string render_report(const Spec& spec, const std::vector<RunConfig>& planned,
                          const std::vector<StoredRun>& runs, ReportFormat format);

// Without a plan: the stored runs are the plan (no `-` cells for runs not yet done, no stale
// runs filtered out), each assigned to the first part of the spec whose workload, fixed values
// and axis values admit its config.
std::string render_report(const Spec& spec, const std::vector<StoredRun>& runs,
                          ReportFormat format);

// The greedy answers to the fixed prompts that runs with `generations: on` stored (texts
// before/<i> and after/<i>), as a Markdown section: per run, each prompt with the text before and
// after fine-tuning. `texts_of` gives a run's stored texts. "" when no planned run has any.
std::string render_generations(
    const Spec& spec, const std::vector<RunConfig>& planned,
    const std::function<std::vector<std::pair<std::string, std::string>>(const std::string&)>&
        texts_of);

}  // namespace hx
