#include "harness/report/gate.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>
#include <utility>

#include "harness/plan/fields.h"
#include "harness/report/compare.h"
#include "harness/store/json_io.h"

namespace hx {
namespace {

// ---- CSV (written with report.h's csv_line) ----

struct CsvRecord {
  int line = 0;  // where the record starts
  std::vector<std::string> fields;
};

// RFC 4180: fields separated by commas, records by LF or CRLF, quoted fields with "" for a
// quote (and possibly line breaks). Empty lines are skipped.
class CsvParser {
 public:
  explicit CsvParser(const std::string& text) : text_(text) { record_.line = 1; }

  std::vector<CsvRecord> parse(const std::string& path) {
    for (i_ = 0; i_ < text_.size(); ++i_) {
      if (quoted_) {
        quoted_char(text_[i_]);
      } else {
        plain_char(text_[i_]);
      }
    }
    if (quoted_) {
      throw std::invalid_argument(path + ":" + std::to_string(record_.line) +
                                  ": unterminated quoted field");
    }
    end_record();
    return std::move(records_);
  }

 private:
  bool next_is(char c) const { return i_ + 1 < text_.size() && text_[i_ + 1] == c; }

  void quoted_char(char c) {
    if (c != '"') {
      if (c == '\n') ++line_;
      field_ += c;
    } else if (next_is('"')) {
      field_ += '"';
      ++i_;
    } else {
      quoted_ = false;
    }
  }

  void plain_char(char c) {
    if (c == '"' && field_.empty()) {
      quoted_ = true;
      field_started_ = true;
    } else if (c == ',') {
      record_.fields.push_back(std::move(field_));
      field_.clear();
      field_started_ = true;
    } else if (c == '\n' || c == '\r') {
      if (c == '\r' && next_is('\n')) ++i_;
      end_record();
      ++line_;
      record_.line = line_;
    } else {
      field_ += c;
      field_started_ = true;
    }
  }

  void end_record() {
    if (field_started_ || !record_.fields.empty() || !field_.empty()) {
      record_.fields.push_back(std::move(field_));
      records_.push_back(std::move(record_));
    }
    record_ = CsvRecord{};
    field_.clear();
    field_started_ = false;
  }

  const std::string& text_;
  size_t i_ = 0;
  std::vector<CsvRecord> records_;
  CsvRecord record_;
  std::string field_;
  bool quoted_ = false;
  bool field_started_ = false;
  int line_ = 1;
};

std::vector<CsvRecord> parse_csv(const std::string& text, const std::string& path) {
  return CsvParser(text).parse(path);
}

// ---- Formatting ----

std::string signed_percent(double fraction) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%+.1f%%", 100 * fraction);
  return buffer;
}

std::string p_text(double p) {
  char buffer[32];
  if (p < 1e-4) {
    std::snprintf(buffer, sizeof(buffer), "p = %.1e", p);
  } else {
    std::snprintf(buffer, sizeof(buffer), "p = %.4f", p);
  }
  return buffer;
}

std::string metric_value_text(const std::string& metric, double value) {
  const Field* field = find_metric_field(metric);
  const Field fallback{"", "", "", "", NumberFormat::kSignificant, 4};
  const Field& format = field != nullptr ? *field : fallback;
  std::string text = format_fixed(value, display_decimals(format, value));
  if (field != nullptr && !field->unit.empty()) text += " " + std::string(field->unit);
  return text;
}

// The runs table's workload text: "" for NULL.
std::string workload_text(std::optional<Workload> workload) {
  return workload ? std::string(to_string(*workload)) : std::string();
}

// "ok", "5 ok", "4 ok, 1 OOM"
std::string status_summary(const std::vector<Status>& statuses) {
  std::vector<std::pair<std::string, int>> counts;
  for (const Status status : statuses) {
    const std::string word(status_label(status));
    auto it = std::find_if(counts.begin(), counts.end(),
                           [&](const auto& entry) { return entry.first == word; });
    if (it == counts.end()) {
      counts.emplace_back(word, 1);
    } else {
      ++it->second;
    }
  }
  if (counts.size() == 1 && counts.front().second == 1) return counts.front().first;
  std::vector<std::string> parts;
  for (const auto& [word, count] : counts) parts.push_back(std::to_string(count) + " " + word);
  return join(parts, ", ");
}

// "Tesla P100-PCIE-16GB, libtorch 2.1.0"; CPU runs name their CPU.
std::string env_text(const Json& env) {
  std::string device = environment_device(env);
  if (device == "cpu") {
    const std::string cpu = environment_field(env, "cpu");
    device = cpu.empty() ? "CPU" : "CPU " + cpu;
  }
  const std::string libtorch = environment_field(env, "libtorch");
  return libtorch.empty() ? device : device + ", libtorch " + libtorch;
}

// What a baseline must share with the current runs.
std::string env_key(const Json& env) {
  return environment_device(env) + "\n" + environment_field(env, "libtorch");
}

struct EnvSet {
  std::set<std::string> keys;
  std::vector<std::string> texts;
  std::set<std::string> cpus;
  void add(const Json& env) {
    if (environment_device(env).empty()) return;
    if (keys.insert(env_key(env)).second) texts.push_back(env_text(env));
    if (environment_device(env) == "cpu") cpus.insert(environment_field(env, "cpu"));
  }
  std::string text() const { return texts.empty() ? std::string("unknown") : join(texts, "; "); }
};

std::vector<double> ok_values(const std::vector<const StoredRun*>& runs, const std::string& name) {
  std::vector<double> values;
  for (const StoredRun* run : runs) {
    if (run->status != Status::kOk) continue;
    const auto it = run->metrics.find(name);
    if (it != run->metrics.end() && std::isfinite(it->second)) values.push_back(it->second);
  }
  return values;
}

}  // namespace

// ---- Mann-Whitney U ----

namespace {

// P(U >= u_max or U <= m n - u_max) under the null hypothesis, without ties.
double exact_p_value(size_t m, size_t n, double u_max) {
  // The number of orderings with U = u is the coefficient of q^u in the Gaussian binomial
  // [m+n choose m]_q = prod_{i=1..m} (1 - q^(n+i)) / (1 - q^i). After step i the polynomial is
  // [n+i choose i]_q, whose coefficients are at most C(60, 30) < 2^57: int64 holds them exactly.
  std::vector<int64_t> c(m * n + m + n + 2, 0);
  c[0] = 1;
  size_t degree = 0;
  for (size_t i = 1; i <= m; ++i) {
    const size_t up = n + i;
    for (size_t k = degree + up; k >= up; --k) c[k] -= c[k - up];
    for (size_t k = i; k <= degree + up; ++k) c[k] += c[k - i];
    degree += n;
  }
  int64_t all_orderings = 0;
  int64_t tail = 0;
  const auto threshold = static_cast<size_t>(std::llround(u_max));
  for (size_t k = 0; k <= degree; ++k) {
    all_orderings += c[k];
    if (k >= threshold) tail += c[k];
  }
  return std::min(1.0, 2.0 * static_cast<double>(tail) / static_cast<double>(all_orderings));
}

}  // namespace

MannWhitney mann_whitney_u(const std::vector<double>& x, const std::vector<double>& y,
                           MannWhitneyMethod method) {
  if (x.empty() || y.empty()) throw std::invalid_argument("Mann-Whitney U: empty sample");
  const size_t m = x.size();
  const size_t n = y.size();
  const size_t total = m + n;
  std::vector<std::pair<double, bool>> all;  // value, from x
  all.reserve(total);
  for (const double v : x) all.emplace_back(v, true);
  for (const double v : y) all.emplace_back(v, false);
  std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  // Ranks 1..N, tied values sharing the mean of their ranks.
  double rank_sum_x = 0;
  double tie_term = 0;  // sum of t^3 - t over groups of t tied values
  for (size_t i = 0; i < total;) {
    size_t j = i;
    while (j < total && all[j].first == all[i].first) ++j;
    const double rank = (static_cast<double>(i + 1) + static_cast<double>(j)) / 2;
    for (size_t k = i; k < j; ++k) {
      if (all[k].second) rank_sum_x += rank;
    }
    const auto t = static_cast<double>(j - i);
    tie_term += t * t * t - t;
    i = j;
  }
  const double md = static_cast<double>(m);
  const double nd = static_cast<double>(n);
  MannWhitney result;
  result.u = rank_sum_x - md * (md + 1) / 2;
  const double u_max = std::max(result.u, md * nd - result.u);

  constexpr size_t kExactLimit = 60;
  if (method == MannWhitneyMethod::kExact && (tie_term != 0 || total > kExactLimit)) {
    throw std::invalid_argument(
        "Mann-Whitney U: the exact test needs samples without ties and at most 60 values");
  }
  const bool exact = method == MannWhitneyMethod::kExact ||
                     (method == MannWhitneyMethod::kAuto && tie_term == 0 && total <= kExactLimit);
  if (exact) {
    result.exact = true;
    result.p = exact_p_value(m, n, u_max);
    return result;
  }

  const double nn = static_cast<double>(total);
  const double variance = md * nd / 12 * ((nn + 1) - tie_term / (nn * (nn - 1)));
  if (variance <= 0) {  // every value the same
    result.p = 1;
    return result;
  }
  const double z = (u_max - md * nd / 2 - 0.5) / std::sqrt(variance);
  result.p = std::clamp(std::erfc(z / std::sqrt(2.0)), 0.0, 1.0);
  return result;
}

// ---- Baselines ----

std::string baseline_csv(const std::vector<RunConfig>& plan, const std::vector<StoredRun>& runs) {
  std::map<std::string, const StoredRun*> stored;
  for (const StoredRun& run : runs) stored.emplace(run.run_id, &run);
  std::ostringstream out;
  out << kBaselineHeader << "\n";
  int written = 0;
  for (const RunConfig& planned : plan) {
    const auto it = stored.find(planned.run_id);
    if (it == stored.end()) continue;
    const StoredRun& run = *it->second;
    ++written;
    const std::vector<std::string> head = {run.run_id,
                                           std::to_string(run.repeat),
                                           run.experiment,
                                           workload_text(run.workload),
                                           canonical_json(run.config),
                                           std::string(to_string(run.status)),
                                           environment_device(run.env),
                                           environment_field(run.env, "libtorch"),
                                           environment_field(run.env, "cpu")};
    if (run.metrics.empty()) {
      std::vector<std::string> fields = head;
      fields.insert(fields.end(), {"", ""});
      csv_line(out, fields);
    }
    for (const auto& [name, value] : run.metrics) {
      std::vector<std::string> fields = head;
      fields.push_back(name);
      fields.push_back(std::isnan(value) ? std::string() : format_full(value));
      csv_line(out, fields);
    }
  }
  if (written == 0) {
    throw std::invalid_argument("no run of the spec is stored in the database: nothing to save");
  }
  return out.str();
}

namespace {

constexpr size_t kBaselineColumns = 11;

// The run a baseline line describes (without its metric).
StoredRun baseline_run(const std::vector<std::string>& f, const std::string& where) {
  StoredRun run;
  run.run_id = f[0];
  if (run.run_id.empty()) throw std::invalid_argument(where + "run_id: empty");
  if (const auto [ptr, ec] = std::from_chars(f[1].data(), f[1].data() + f[1].size(), run.repeat);
      ec != std::errc() || ptr != f[1].data() + f[1].size() || run.repeat < 0) {
    throw std::invalid_argument(where + "repeat: not a count: \"" + f[1] + "\"");
  }
  const std::optional<Status> status = parse_status(f[5]);
  if (!status) throw std::invalid_argument(where + "status: unknown \"" + f[5] + "\"");
  const std::optional<Workload> workload = parse_workload(f[3]);
  if (!workload && !f[3].empty()) {
    throw std::invalid_argument(where + "workload: unknown \"" + f[3] + "\"");
  }
  // A run's config is a flat object; one nested 100,000 deep exhausted the stack when the lines
  // of a run were compared (`harness check` died of a stack overflow; tests/core/test_gate.cpp).
  if (json_nesting_depth(f[4]) > kMaxJsonDepth) {
    throw std::invalid_argument(where + "config: nested deeper than " +
                                std::to_string(kMaxJsonDepth) + " levels");
  }
  try {
    run.config = Json::parse(f[4]);
  } catch (const Json::exception&) {  // parse_error, or out_of_range for a number like 1e999
    throw std::invalid_argument(where + "config: not JSON");
  }
  run.env = Json::object();
  if (!f[6].empty()) {
    run.env["gpu_name"] = f[6] == "cpu" ? std::string() : f[6];
    run.env["libtorch"] = f[7];
    run.env["cpu"] = f[8];
  }
  run.experiment = f[2];
  run.workload = workload;
  run.status = *status;
  return run;
}

bool same_run(const StoredRun& a, const StoredRun& b) {
  return a.repeat == b.repeat && a.experiment == b.experiment && a.workload == b.workload &&
         a.config == b.config && a.status == b.status && a.env == b.env;
}

// The line's metric and value, if it has one, into `run`.
void add_baseline_metric(const std::vector<std::string>& f, const std::string& where,
                         StoredRun& run) {
  const std::string& metric = f[9];
  if (metric.empty()) {
    if (!f[10].empty()) throw std::invalid_argument(where + "a value without a metric name");
    return;
  }
  double value = std::numeric_limits<double>::quiet_NaN();
  if (!f[10].empty()) {
    const auto [ptr, ec] = std::from_chars(f[10].data(), f[10].data() + f[10].size(), value);
    if (ec != std::errc() || ptr != f[10].data() + f[10].size()) {
      throw std::invalid_argument(where + metric + ": not a number: \"" + f[10] + "\"");
    }
  }
  if (!run.metrics.emplace(metric, value).second) {
    throw std::invalid_argument(where + "run " + run.run_id + ": metric " + metric + " twice");
  }
}

}  // namespace

std::vector<StoredRun> parse_baseline_csv(const std::string& text, const std::string& path) {
  const std::vector<CsvRecord> records = parse_csv(text, path);
  if (records.empty() || join(records.front().fields, ",") != kBaselineHeader) {
    throw std::invalid_argument(path + ":1: not a harness baseline (the first line must be \"" +
                                std::string(kBaselineHeader) + "\")");
  }
  std::vector<StoredRun> runs;
  std::map<std::string, size_t> index;
  std::map<std::string, int> first_line;
  for (size_t r = 1; r < records.size(); ++r) {
    const CsvRecord& record = records[r];
    const std::string where = path + ":" + std::to_string(record.line) + ": ";
    const std::vector<std::string>& f = record.fields;
    if (f.size() != kBaselineColumns) {
      throw std::invalid_argument(where + "expected " + std::to_string(kBaselineColumns) +
                                  " fields, found " + std::to_string(f.size()));
    }
    StoredRun run = baseline_run(f, where);
    auto it = index.find(run.run_id);
    if (it == index.end()) {
      it = index.emplace(run.run_id, runs.size()).first;
      first_line[run.run_id] = record.line;
      runs.push_back(std::move(run));
    } else if (!same_run(runs[it->second], run)) {
      throw std::invalid_argument(where + "run " + run.run_id + " differs from its line " +
                                  std::to_string(first_line[run.run_id]) +
                                  " in repeat, experiment, workload, config, status or "
                                  "environment");
    }
    add_baseline_metric(f, where, runs[it->second]);
  }
  return runs;
}

// ---- The gate ----

std::string verdict_text(Verdict verdict) {
  switch (verdict) {
    case Verdict::kPass:
      return "pass";
    case Verdict::kImproved:
      return "improved";
    case Verdict::kRegression:
      return "REGRESSION";
    case Verdict::kNotTested:
      return "not tested";
  }
  return "?";
}

namespace {

// The plan's runs stored on either side, by run id.
struct RunIndex {
  std::set<std::string> planned;
  std::map<std::string, const StoredRun*> base, cur;
  std::set<std::string> base_experiments;
};

RunIndex index_runs(const std::vector<RunConfig>& plan, const std::vector<StoredRun>& baseline,
                    const std::vector<StoredRun>& current) {
  RunIndex index;
  for (const RunConfig& run : plan) index.planned.insert(run.run_id);
  for (const StoredRun& run : baseline) {
    index.base.emplace(run.run_id, &run);
    index.base_experiments.insert(run.experiment);
  }
  for (const StoredRun& run : current) {
    // A skipped run was not measured: as if it were not stored.
    if (index.planned.contains(run.run_id) && run.status != Status::kSkipped) {
      index.cur.emplace(run.run_id, &run);
    }
  }
  return index;
}

// The baseline's environments against those of the current runs: refuses (false) a baseline of
// another GPU or libtorch unless options.cross; notes what differs. `mem_pct` is the memory
// margin in % that applies (wider for CPU runs on another CPU model).
bool check_environments(const Spec& spec, const std::vector<StoredRun>& baseline,
                        const RunIndex& index, const GateOptions& options, GateResult& result,
                        double& mem_pct) {
  EnvSet base_envs;
  EnvSet cur_envs;
  for (const StoredRun& run : baseline) base_envs.add(run.env);
  for (const auto& [id, run] : index.cur) cur_envs.add(run->env);
  result.baseline_env = base_envs.text();
  result.current_env = cur_envs.text();
  for (const std::string& experiment : index.base_experiments) {
    if (experiment != spec.name) {
      result.notes.push_back("The baseline holds runs of experiment \"" + experiment +
                             "\"; the spec is \"" + spec.name + "\".");
    }
  }
  if (!base_envs.keys.empty() && !cur_envs.keys.empty() && base_envs.keys != cur_envs.keys) {
    if (!options.cross) {
      result.outcome = GateOutcome::kRefused;
      result.refusal = "the baseline was measured on " + base_envs.text() +
                       ", the runs in the database on " + cur_envs.text() +
                       ": memory and time are not comparable across GPUs or libtorch versions. "
                       "Make a baseline on this machine (`harness baseline`), or pass --cross "
                       "to compare anyway.";
      return false;
    }
    result.notes.push_back("Cross-environment comparison (--cross): baseline on " +
                           base_envs.text() + ", current runs on " + cur_envs.text() +
                           "; differences may come from the environment, not the code.");
  }
  mem_pct = options.mem_tolerance_pct;
  if (base_envs.cpus.size() == 1 && cur_envs.cpus.size() == 1 &&
      *base_envs.cpus.begin() != *cur_envs.cpus.begin()) {
    mem_pct = std::max(mem_pct, options.mem_tolerance_other_cpu_pct);
    result.notes.push_back("CPU runs on another CPU model (baseline: " + *base_envs.cpus.begin() +
                           ", now: " + *cur_envs.cpus.begin() +
                           "): timings may differ, and memory is allowed " + format_full(mem_pct) +
                           "% (kernels may use other scratch sizes).");
  }
  return true;
}

// One configuration's runs stored on both sides, in repeat order.
struct RunPairs {
  std::string label;  // GateCheck::run
  std::vector<const StoredRun*> base, cur;
};

// Pairs a configuration's repeats; those stored on one side only are listed in `result`.
RunPairs match_group(const std::string& label, const ConfigGroup& group, const RunIndex& index,
                     GateResult& result) {
  RunPairs pairs{label, {}, {}};
  for (size_t r = 0; r < group.run_ids.size(); ++r) {
    const std::string& id = group.run_ids[r];
    const auto b = index.base.find(id);
    const auto c = index.cur.find(id);
    const bool in_base = b != index.base.end();
    const bool in_cur = c != index.cur.end();
    if (in_base && in_cur) {
      pairs.base.push_back(b->second);
      pairs.cur.push_back(c->second);
      continue;
    }
    if (!in_base && !in_cur) continue;
    const int repeat = in_base ? b->second->repeat : c->second->repeat;
    const std::string name = label + " (repeat " + std::to_string(repeat) + ", run " + id + ")";
    (in_base ? result.baseline_only : result.current_only).push_back(name);
  }
  return pairs;
}

// Status, run by run: shown when any run failed on either side.
std::optional<GateCheck> status_check(const RunPairs& pairs) {
  std::vector<Status> base_status;
  std::vector<Status> cur_status;
  int broke = 0;
  int fixed = 0;
  bool any_failure = false;
  for (size_t i = 0; i < pairs.base.size(); ++i) {
    const Status before = pairs.base[i]->status;
    const Status now = pairs.cur[i]->status;
    base_status.push_back(before);
    cur_status.push_back(now);
    if (before == Status::kOk && is_failure(now)) ++broke;
    if (before != Status::kOk && now == Status::kOk) ++fixed;
    any_failure = any_failure || before != Status::kOk || now != Status::kOk;
  }
  if (!any_failure) return std::nullopt;
  GateCheck check{pairs.label,
                  "status",
                  status_summary(base_status),
                  status_summary(cur_status),
                  "unchanged",
                  Verdict::kPass,
                  ""};
  if (broke > 0) {
    check.verdict = Verdict::kRegression;
    check.delta = std::to_string(broke) + " run(s) no longer ok";
  } else if (fixed > 0) {
    check.verdict = Verdict::kImproved;
    check.delta = std::to_string(fixed) + " run(s) ok now";
  }
  return check;
}

// Memory (GateTest::kMemoryMargin): the medians of the ok runs against the margin.
std::optional<GateCheck> memory_check(const RunPairs& pairs, const Field& field,
                                      const GateOptions& options, double mem_pct) {
  const std::string metric(field.name);
  const std::vector<double> base = ok_values(pairs.base, metric);
  const std::vector<double> cur = ok_values(pairs.cur, metric);
  if (base.empty() || cur.empty()) return std::nullopt;
  const double b = median_of(base);
  const double c = median_of(cur);
  const auto [lo, hi] = std::minmax_element(base.begin(), base.end());
  const double tolerance = std::max(
      {b * mem_pct / 100, options.mem_tolerance_mb, options.mem_noise_factor * (*hi - *lo)});
  const double delta = c - b;
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), "%+.1f %s", delta, std::string(field.unit).c_str());
  GateCheck check{
      pairs.label,    metric, metric_value_text(metric, b), metric_value_text(metric, c), buffer,
      Verdict::kPass, ""};
  if (b != 0) check.delta += " (" + signed_percent(delta / b) + ")";
  if (delta > tolerance) {
    check.verdict = Verdict::kRegression;
  } else if (delta < -tolerance) {
    check.verdict = Verdict::kImproved;
  }
  return check;
}

// Time (GateTest::kTimeUTest): the U test on the ok runs' values and the change of the median.
std::optional<GateCheck> time_check(const RunPairs& pairs, const Field& field,
                                    const GateOptions& options) {
  const std::string metric(field.name);
  const std::vector<double> bv = ok_values(pairs.base, metric);
  const std::vector<double> cv = ok_values(pairs.cur, metric);
  if (bv.empty() || cv.empty()) return std::nullopt;
  const double b = median_of(bv);
  const double c = median_of(cv);
  const double change = b != 0 ? c / b - 1 : 0;
  GateCheck check{pairs.label,
                  metric,
                  metric_value_text(metric, b) + " (n=" + std::to_string(bv.size()) + ")",
                  metric_value_text(metric, c) + " (n=" + std::to_string(cv.size()) + ")",
                  signed_percent(change),
                  Verdict::kPass,
                  ""};
  const auto need = static_cast<size_t>(options.min_repeats);
  if (bv.size() < need || cv.size() < need) {
    check.verdict = Verdict::kNotTested;
    check.note = "fewer than " + std::to_string(options.min_repeats) + " repeats";
    return check;
  }
  const MannWhitney test = mann_whitney_u(bv, cv);
  check.delta += ", " + p_text(test.p);
  const double threshold = options.time_slowdown_pct / 100;
  if (test.p < options.time_p && change > threshold) {
    check.verdict = Verdict::kRegression;
  } else if (test.p < options.time_p && change < -threshold) {
    check.verdict = Verdict::kImproved;
  }
  return check;
}

// The checks of one configuration: its status, then every gated metric of the field table.
void check_pairs(const RunPairs& pairs, const GateOptions& options, double mem_pct,
                 std::vector<GateCheck>& checks) {
  if (auto check = status_check(pairs)) checks.push_back(std::move(*check));
  for (const Field& field : kMetricFields) {
    std::optional<GateCheck> check;
    if (field.gate == GateTest::kMemoryMargin) check = memory_check(pairs, field, options, mem_pct);
    if (field.gate == GateTest::kTimeUTest) check = time_check(pairs, field, options);
    if (check.has_value()) checks.push_back(std::move(*check));
  }
}

// The outcome: refused when no run was compared, else pass or regression by the verdicts.
void conclude(const Spec& spec, const std::vector<StoredRun>& baseline, GateResult& result) {
  if (result.runs_checked == 0) {
    result.outcome = GateOutcome::kRefused;
    result.refusal = baseline.empty()
                         ? "the baseline holds no run"
                         : "no run of the baseline is stored in the database (experiment \"" +
                               spec.name +
                               "\"): was the baseline made from another spec, did the spec "
                               "change, or did `harness run` not run?";
    return;
  }
  for (const GateCheck& check : result.checks) {
    if (check.verdict == Verdict::kRegression) ++result.regressions;
    if (check.verdict == Verdict::kImproved) ++result.improvements;
  }
  result.outcome = result.regressions > 0 ? GateOutcome::kRegression : GateOutcome::kPass;
}

// "peak_mem_mb" / "step_time_s, prefill_s, decode_s": the metrics `test` judges.
std::string gated_names(GateTest test) {
  std::vector<std::string> names;
  for (const Field* field : gated_metrics(test)) names.emplace_back(field->name);
  return join(names, ", ");
}

}  // namespace

GateResult run_gate(const Spec& spec, const std::vector<RunConfig>& plan,
                    const std::vector<StoredRun>& baseline, const std::vector<StoredRun>& current,
                    const GateOptions& options) {
  GateResult result;
  result.options = options;
  result.experiment = spec.name;
  const RunIndex index = index_runs(plan, baseline, current);
  double mem_pct = options.mem_tolerance_pct;
  if (!check_environments(spec, baseline, index, options, result, mem_pct)) return result;

  for (const PlanPart& part : group_plan(spec, plan)) {
    for (const ConfigGroup& group : part.groups) {
      const std::string label = part.title.empty() ? group.label : part.title + ": " + group.label;
      const RunPairs pairs = match_group(label, group, index, result);
      if (pairs.base.empty()) continue;
      result.runs_checked += static_cast<int>(pairs.base.size());
      check_pairs(pairs, options, mem_pct, result.checks);
    }
  }
  // Baseline runs the plan does not have (the spec changed, or another spec's baseline).
  for (const StoredRun& run : baseline) {
    if (!index.planned.contains(run.run_id)) {
      result.baseline_only.push_back("run " + run.run_id + " " + canonical_json(run.config) +
                                     " (not in the spec's plan)");
    }
  }
  conclude(spec, baseline, result);
  return result;
}

std::string render_gate_markdown(const GateResult& result, const std::string& db,
                                 const std::string& baseline_path) {
  std::ostringstream out;
  if (result.outcome == GateOutcome::kRefused) {
    out << "# harness check: REFUSED\n\n";
    out << "Baseline `" << baseline_path << "` against `" << db << "` (experiment "
        << result.experiment << "): " << result.refusal << "\n";
    return out.str();
  }
  const bool failed = result.outcome == GateOutcome::kRegression;
  out << "# harness check: " << (failed ? "FAIL" : "PASS") << "\n\n";
  const int not_tested = static_cast<int>(
      std::count_if(result.checks.begin(), result.checks.end(),
                    [](const GateCheck& c) { return c.verdict == Verdict::kNotTested; }));
  out << "**" << result.regressions << " regression(s)**, " << result.improvements
      << " improvement(s), " << not_tested << " check(s) not tested; " << result.runs_checked
      << " run(s) compared";
  if (!result.baseline_only.empty() || !result.current_only.empty()) {
    out << ", " << result.baseline_only.size() + result.current_only.size() << " on one side only";
  }
  out << ".\n\n";
  out << "Experiment " << result.experiment << ": `" << db << "` (" << result.current_env
      << ") against baseline `" << baseline_path << "` (" << result.baseline_env << ").\n\n";

  TextTable table{{"Run", "Check", "Baseline", "Current", "Delta", "Verdict"}, {}, {}};
  for (const GateCheck& check : result.checks) {
    std::string verdict = verdict_text(check.verdict);
    if (check.verdict == Verdict::kRegression) verdict = "**" + verdict + "**";
    if (!check.note.empty()) verdict += " (" + check.note + ")";
    table.rows.push_back(
        {check.run, check.check, check.baseline, check.current, check.delta, verdict});
  }
  out << markdown_table(table);

  const auto list = [&out](const std::string& title, const std::vector<std::string>& items) {
    if (items.empty()) return;
    out << "\n" << title << " (" << items.size() << "):\n";
    for (const std::string& item : items) out << "- " << item << "\n";
  };
  list("In the baseline, not stored now (not judged)", result.baseline_only);
  list("Stored now, not in the baseline (not judged)", result.current_only);
  if (!result.notes.empty()) {
    out << "\nNotes:\n";
    for (const std::string& note : result.notes) out << "- " << note << "\n";
  }

  const GateOptions& o = result.options;
  out << "\nRules: values are medians over the repeats' ok runs. Memory regresses when "
      << gated_names(GateTest::kMemoryMargin)
      << " exceeds the baseline by more than the largest of " << format_full(o.mem_tolerance_pct)
      << "% of it, " << format_full(o.mem_tolerance_mb) << " MB and "
      << format_full(o.mem_noise_factor) << " times the spread of the baseline's repeats. A time ("
      << gated_names(GateTest::kTimeUTest)
      << ") "
         "regresses when a two-sided "
         "Mann-Whitney U test rejects at p < "
      << format_full(o.time_p) << " (with at least " << o.min_repeats
      << " repeats on each side) and the median is more than " << format_full(o.time_slowdown_pct)
      << "% slower. A run that was ok and now ends oom, crashed, timeout or error regresses. "
         "Improvements beyond the same thresholds are reported and pass.\n";
  return out.str();
}

}  // namespace hx
