#include "harness/store/store.h"

#include <sqlite3.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <limits>
#include <set>
#include <stdexcept>
#include <string_view>
#include <thread>

#include "harness/plan/fields.h"
#include "harness/plan/hash.h"

namespace hx {
namespace {

// A writer holds the lock for one short transaction; readers (report, check) may overlap a
// running `harness run`, so wait rather than fail on a busy database.
constexpr int kBusyTimeoutMs = 30000;

std::string first_line(std::string_view sql) {
  const size_t start = sql.find_first_not_of(" \n");
  if (start == std::string_view::npos) return {};
  sql.remove_prefix(start);
  return std::string(sql.substr(0, sql.find('\n')));
}

[[noreturn]] void fail(sqlite3* db, const std::string& path, std::string_view sql) {
  throw std::runtime_error(path + ": " + sqlite3_errmsg(db) + " (in: " + first_line(sql) + ")");
}

// One prepared statement; binds are 1-based like SQLite's, columns 0-based.
class Stmt {
 public:
  Stmt(sqlite3* db, const std::string& path, std::string_view sql)
      : db_(db), path_(path), sql_(sql) {
    if (sqlite3_prepare_v2(db, sql.data(), static_cast<int>(sql.size()), &stmt_, nullptr) !=
        SQLITE_OK) {
      fail(db_, path_, sql_);
    }
  }
  ~Stmt() { sqlite3_finalize(stmt_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  void bind_null(int i) { check(sqlite3_bind_null(stmt_, i)); }
  void bind(int i, const std::string& text) {
    check(
        sqlite3_bind_text(stmt_, i, text.data(), static_cast<int>(text.size()), SQLITE_TRANSIENT));
  }
  // "" means unknown, which is NULL in the database rather than an empty string.
  void bind_text_or_null(int i, const std::string& text) {
    if (text.empty()) {
      bind_null(i);
    } else {
      bind(i, text);
    }
  }
  void bind(int i, double value) { check(sqlite3_bind_double(stmt_, i, value)); }
  void bind(int i, int64_t value) { check(sqlite3_bind_int64(stmt_, i, value)); }
  void bind(int i, int value) { bind(i, static_cast<int64_t>(value)); }
  template <typename T>
  void bind(int i, const std::optional<T>& value) {
    if (value) {
      bind(i, *value);
    } else {
      bind_null(i);
    }
  }

  // True while there is a row to read.
  bool step() {
    const int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    fail(db_, path_, sql_);
  }
  // Executes a statement that returns no rows, then makes it ready for new bindings.
  void run() {
    while (step()) {
    }
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }

  bool is_null(int col) const { return sqlite3_column_type(stmt_, col) == SQLITE_NULL; }
  int type(int col) const { return sqlite3_column_type(stmt_, col); }
  std::string text(int col) const {
    const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(stmt_, col));
    return p == nullptr ? std::string() : std::string(p, sqlite3_column_bytes(stmt_, col));
  }
  int64_t int64(int col) const { return sqlite3_column_int64(stmt_, col); }
  double real(int col) const { return sqlite3_column_double(stmt_, col); }
  template <typename T>
  std::optional<T> optional_int(int col) const {
    if (is_null(col)) return std::nullopt;
    return static_cast<T>(int64(col));
  }
  std::optional<double> optional_real(int col) const {
    if (is_null(col)) return std::nullopt;
    return real(col);
  }

 private:
  void check(int rc) const {
    if (rc != SQLITE_OK) fail(db_, path_, sql_);
  }

  sqlite3* db_;
  const std::string& path_;
  std::string_view sql_;
  sqlite3_stmt* stmt_ = nullptr;
};

// BEGIN IMMEDIATE takes the write lock up front, so a busy database fails (after the busy
// timeout) before anything is written rather than at COMMIT. Rolls back unless committed.
class Transaction {
 public:
  Transaction(sqlite3* db, const std::string& path) : db_(db), path_(path) {
    exec("BEGIN IMMEDIATE");
  }
  ~Transaction() {
    if (!done_) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  }
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;

  void commit() {
    exec("COMMIT");
    done_ = true;
  }

 private:
  void exec(const char* sql) {
    if (sqlite3_exec(db_, sql, nullptr, nullptr, nullptr) != SQLITE_OK) fail(db_, path_, sql);
  }

  sqlite3* db_;
  const std::string& path_;
  bool done_ = false;
};

std::string status_check_list() {
  std::string list;
  for (const Status status : kAllStatuses) {
    if (!list.empty()) list += ", ";
    list += "'" + std::string(to_string(status)) + "'";
  }
  return list;
}

// Who runs which run now (docs/concurrency.md). Added to version-1 databases on open, so the
// schema version stays: older harness builds ignore the table.
std::string claims_sql() {
  return R"(
CREATE TABLE IF NOT EXISTS claims(
  run_id TEXT PRIMARY KEY,
  experiment TEXT NOT NULL,
  runner TEXT NOT NULL,
  host TEXT,
  pid INTEGER NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('held', 'done', 'released')),
  attempt INTEGER NOT NULL,
  claimed_at REAL NOT NULL,
  heartbeat_at REAL NOT NULL,
  finished_at REAL);
)";
}

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string host_name() {
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  return host;
}

std::string schema_sql() {
  std::string env_columns;
  for (const Field& field : kEnvFields) {
    env_columns += ",\n  " + std::string(field.name) + " " + std::string(field.sql_type);
  }
  return R"(
CREATE TABLE IF NOT EXISTS experiments(
  name TEXT PRIMARY KEY,
  spec_path TEXT,
  spec_text TEXT,
  created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS environments(
  env_id TEXT PRIMARY KEY)" +
         env_columns + R"();
CREATE TABLE IF NOT EXISTS runs(
  run_id TEXT PRIMARY KEY,
  experiment TEXT NOT NULL REFERENCES experiments(name),
  repeat INTEGER NOT NULL,
  config TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ()" +
         status_check_list() + R"()),
  exit_code INTEGER,
  signal INTEGER,
  started_at TEXT,
  finished_at TEXT,
  stderr_tail TEXT,
  env_id TEXT REFERENCES environments(env_id),
  error TEXT,
  workload TEXT,
  part INTEGER);
CREATE INDEX IF NOT EXISTS runs_by_experiment ON runs(experiment);
CREATE TABLE IF NOT EXISTS metrics(
  run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
  name TEXT NOT NULL,
  value REAL,
  unit TEXT,
  PRIMARY KEY (run_id, name));
CREATE TABLE IF NOT EXISTS steps(
  run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
  step INTEGER NOT NULL,
  seconds REAL,
  loss REAL,
  tokens INTEGER,
  mem_mb REAL,
  PRIMARY KEY (run_id, step));
CREATE TABLE IF NOT EXISTS texts(
  run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
  name TEXT NOT NULL,
  text TEXT);
CREATE INDEX IF NOT EXISTS texts_by_run ON texts(run_id);
)" + claims_sql();
}

// Binds one environment value to a column of the field's SQL type.
void bind_env_value(Stmt& stmt, int index, const Field& field, const Json& value) {
  if (value.is_null()) {
    stmt.bind_null(index);
  } else if (value.is_string()) {
    stmt.bind(index, value.get<std::string>());
  } else if (field.sql_type == "INTEGER" && value.is_number_integer()) {
    stmt.bind(index, value.get<int64_t>());
  } else if (value.is_number()) {
    stmt.bind(index, value.get<double>());
  } else {
    stmt.bind(index, value.dump());
  }
}

Json column_json(const Stmt& stmt, int col) {
  switch (stmt.type(col)) {
    case SQLITE_NULL:
      return nullptr;
    case SQLITE_INTEGER:
      return stmt.int64(col);
    case SQLITE_FLOAT:
      return stmt.real(col);
    default:
      return stmt.text(col);
  }
}

const Json& require(const Json& object, const char* key, const std::string& where) {
  const auto it = object.find(key);
  if (it == object.end()) throw std::runtime_error(where + ": missing key \"" + key + "\"");
  return *it;
}

std::string require_string(const Json& object, const char* key, const std::string& where) {
  const Json& value = require(object, key, where);
  if (!value.is_string()) throw std::runtime_error(where + "." + key + ": expected a string");
  return value.get<std::string>();
}

// null stands for a value the worker could not measure (a NaN loss is written as null by JSON).
std::optional<double> optional_number(const Json& object, const char* key,
                                      const std::string& where) {
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) return std::nullopt;
  if (!it->is_number()) throw std::runtime_error(where + "." + key + ": expected a number");
  return it->get<double>();
}

const Json& optional_array(const Json& object, const char* key, const std::string& where) {
  static const Json kEmpty = Json::array();
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) return kEmpty;
  if (!it->is_array()) throw std::runtime_error(where + "." + key + ": expected a list");
  return *it;
}

// runs.status as read back; the CHECK constraint admits only the status words.
Status column_status(const std::string& word, const std::string& path) {
  const std::optional<Status> status = parse_status(word);
  if (!status) throw std::runtime_error(path + ": unknown run status \"" + word + "\"");
  return *status;
}

}  // namespace

std::string utc_now_iso8601() {
  const std::time_t now = std::time(nullptr);
  std::tm utc{};
  gmtime_r(&now, &utc);
  char buffer[32];
  std::strftime(buffer, sizeof(buffer), "%Y-%m-%dT%H:%M:%SZ", &utc);
  return buffer;
}

RunRecord make_run_record(const std::string& experiment, const RunConfig& run) {
  RunRecord record;
  record.run_id = run.run_id;
  record.experiment = experiment;
  record.workload = run.workload;
  record.repeat = run.repeat;
  record.part = run.part;
  record.config = run.canonical.empty() ? run.config.dump() : run.canonical;
  return record;
}

namespace {

// record_from_result_json's steps: the metrics, steps and env of a result.json.
void read_metrics(const Json& result, const std::string& where, RunRecord& record) {
  // Duplicates would fail the store's primary keys mid-ingest: refused here, with the run.
  std::set<std::string> metric_names;
  for (const Json& metric : optional_array(result, "metrics", where)) {
    const std::string at = where + ".metrics[]";
    Metric m;
    m.name = require_string(metric, "name", at);
    if (!metric_names.insert(m.name).second)
      throw std::runtime_error(at + ".name: \"" + m.name + "\" twice");
    m.value =
        optional_number(metric, "value", at).value_or(std::numeric_limits<double>::quiet_NaN());
    if (const auto it = metric.find("unit"); it != metric.end() && it->is_string()) {
      m.unit = it->get<std::string>();
    }
    record.metrics.push_back(std::move(m));
  }
}

void read_steps(const Json& result, const std::string& where, RunRecord& record) {
  std::set<int64_t> step_indices;  // duplicates refused, as metric names are
  for (const Json& step : optional_array(result, "steps", where)) {
    const std::string at = where + ".steps[]";
    const Json& index = require(step, "step", at);
    if (!index.is_number_integer()) throw std::runtime_error(at + ".step: expected an integer");
    StepRow row;
    row.step = index.get<int64_t>();
    if (!step_indices.insert(row.step).second)
      throw std::runtime_error(at + ".step: " + std::to_string(row.step) + " twice");
    row.seconds = optional_number(step, "seconds", at).value_or(std::nan(""));
    row.loss = optional_number(step, "loss", at);
    if (const auto tokens = optional_number(step, "tokens", at)) {
      // A count: a value outside int64 (1e300) has no conversion.
      if (!(*tokens >= 0 && *tokens < 9.2e18))
        throw std::runtime_error(at + ".tokens: not a token count");
      row.tokens = static_cast<int64_t>(*tokens);
    }
    row.mem_mb = optional_number(step, "mem_mb", at);
    record.steps.push_back(row);
  }
}

void read_env(const Json& result, const std::string& where, RunRecord& record) {
  if (const auto it = result.find("env"); it != result.end() && !it->is_null()) {
    if (!it->is_object()) throw std::runtime_error(where + ".env: expected an object");
    // Scalars only (worker-protocol.md): a value nested 200,000 deep overflowed the stack when
    // copied.
    for (const auto& [key, value] : it->items()) {
      if (value.is_structured())
        throw std::runtime_error(where + ".env." + key + ": expected a string or a number");
    }
    record.env = *it;
  }
}

}  // namespace

RunRecord record_from_result_json(const Json& result, const std::string& experiment,
                                  const RunConfig& run) {
  const std::string where = "result.json of run " + run.run_id;
  if (!result.is_object()) throw std::runtime_error(where + ": expected an object");
  RunRecord record = make_run_record(experiment, run);

  const std::string status = require_string(result, "status", where);
  const std::optional<Status> parsed = parse_status(status);
  if (parsed != Status::kOk && parsed != Status::kOom && parsed != Status::kError) {
    throw std::runtime_error(where + ".status: \"" + status +
                             "\" (a worker reports ok, oom or error)");
  }
  record.status = *parsed;
  if (const auto it = result.find("error"); it != result.end() && it->is_string()) {
    record.error = it->get<std::string>();
  }

  read_metrics(result, where, record);
  read_steps(result, where, record);
  read_env(result, where, record);

  for (const Json& text : optional_array(result, "texts", where)) {
    const std::string at = where + ".texts[]";
    record.texts.emplace_back(require_string(text, "name", at), require_string(text, "text", at));
  }
  return record;
}

std::string environment_id(const Json& env) {
  if (!env.is_object() || env.empty()) return {};
  // Only the known keys, missing ones as null: the id must not change when a worker adds a
  // key that the table does not store.
  Json canonical = Json::object();
  for (const Field& field : kEnvFields) {
    const auto it = env.find(std::string(field.name));
    canonical[std::string(field.name)] = it == env.end() ? Json(nullptr) : *it;
  }
  return fnv1a64_hex(canonical.dump());  // nlohmann's objects keep keys sorted: canonical text
}

Store::Store(const std::string& path, Mode mode) : path_(path) {
  namespace fs = std::filesystem;
  int flags = SQLITE_OPEN_READWRITE;
  if (mode == Mode::kCreate) {
    const fs::path parent = fs::path(path).parent_path();
    if (!parent.empty()) fs::create_directories(parent);
    flags |= SQLITE_OPEN_CREATE;
  } else if (!fs::exists(path)) {
    throw std::runtime_error(path + ": no such database");
  }
  if (sqlite3_open_v2(path.c_str(), &db_, flags, nullptr) != SQLITE_OK) {
    const std::string message = db_ != nullptr ? sqlite3_errmsg(db_) : "out of memory";
    sqlite3_close(db_);
    db_ = nullptr;
    throw std::runtime_error(path + ": cannot open database: " + message);
  }
  try {
    sqlite3_busy_timeout(db_, kBusyTimeoutMs);
    exec("PRAGMA foreign_keys = ON");
    int64_t version = 0;
    {
      Stmt stmt(db_, path_, "PRAGMA user_version");
      if (stmt.step()) version = stmt.int64(0);
    }
    if (version > kSchemaVersion) {
      throw std::runtime_error(path + ": written by a newer harness (schema version " +
                               std::to_string(version) + ", this build reads " +
                               std::to_string(kSchemaVersion) + ")");
    }
    if (version == 0) {
      if (mode == Mode::kExisting) {
        throw std::runtime_error(path + ": not a harness database (no schema version)");
      }
      // WAL lets reports read while `harness run` writes; the mode is stored in the file.
      // Switching needs the database to itself and SQLite does not wait for that (no busy
      // handler): two runners creating one database at once retry here.
      const auto deadline =
          std::chrono::steady_clock::now() + std::chrono::milliseconds(kBusyTimeoutMs);
      while (sqlite3_exec(db_, "PRAGMA journal_mode = WAL", nullptr, nullptr, nullptr) !=
             SQLITE_OK) {
        if ((sqlite3_errcode(db_) & 0xff) != SQLITE_BUSY ||
            std::chrono::steady_clock::now() > deadline)
          fail(db_, path_, "PRAGMA journal_mode = WAL");
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
      create_schema();
    } else if (mode == Mode::kCreate) {
      add_columns_since_version_1();
    } else {
      runs_have_part_ = runs_column_exists("part");
    }
    // In WAL mode NORMAL loses at most the last transactions on power loss, never consistency.
    exec("PRAGMA synchronous = NORMAL");
  } catch (...) {
    sqlite3_close(db_);
    db_ = nullptr;
    throw;
  }
}

Store::~Store() { sqlite3_close(db_); }

void Store::exec(const char* sql) const {
  if (sqlite3_exec(db_, sql, nullptr, nullptr, nullptr) != SQLITE_OK) fail(db_, path_, sql);
}

bool Store::runs_column_exists(const char* column) const {
  Stmt stmt(db_, path_, "SELECT 1 FROM pragma_table_info('runs') WHERE name = ?1");
  stmt.bind(1, std::string(column));
  return stmt.step();
}

// What version-1 databases written by older builds lack: the claims table and runs.part. Added
// here, so the schema version stays and older builds keep reading the file (they ignore both).
// In one write transaction: two runners opening the same old database add the column once.
void Store::add_columns_since_version_1() {
  Transaction tx(db_, path_);
  exec(claims_sql().c_str());
  if (!runs_column_exists("part")) exec("ALTER TABLE runs ADD COLUMN part INTEGER");
  tx.commit();
}

void Store::create_schema() {
  Transaction tx(db_, path_);
  const std::string sql =
      schema_sql() + "PRAGMA user_version = " + std::to_string(kSchemaVersion) + ";";
  exec(sql.c_str());
  tx.commit();
}

void Store::upsert_experiment(const std::string& name, const std::string& spec_path,
                              const std::string& spec_text) {
  const std::lock_guard<std::recursive_mutex> lock(mutex_);
  Stmt stmt(db_, path_, R"(
INSERT INTO experiments(name, spec_path, spec_text, created_at) VALUES (?1, ?2, ?3, ?4)
ON CONFLICT(name) DO UPDATE SET spec_path = excluded.spec_path, spec_text = excluded.spec_text)");
  stmt.bind(1, name);
  stmt.bind(2, spec_path);
  stmt.bind(3, spec_text);
  stmt.bind(4, utc_now_iso8601());
  stmt.run();
}

namespace {

// The environment row of a run (`env_id` not ""), unless it is stored already.
void insert_environment(sqlite3* db, const std::string& path, const std::string& env_id,
                        const Json& env) {
  std::string columns = "env_id";
  std::string params = "?1";
  for (size_t i = 0; i < kEnvFields.size(); ++i) {
    columns += ", " + std::string(kEnvFields[i].name);
    params += ", ?" + std::to_string(i + 2);
  }
  const std::string sql =
      "INSERT OR IGNORE INTO environments(" + columns + ") VALUES (" + params + ")";
  Stmt stmt(db, path, sql);
  stmt.bind(1, env_id);
  for (size_t i = 0; i < kEnvFields.size(); ++i) {
    const auto it = env.find(std::string(kEnvFields[i].name));
    bind_env_value(stmt, static_cast<int>(i + 2), kEnvFields[i],
                   it == env.end() ? Json(nullptr) : *it);
  }
  stmt.run();
}

// The run's row in `runs`, replacing an earlier one.
void replace_run_row(sqlite3* db, const std::string& path, const RunRecord& record,
                     const std::string& env_id) {
  // Deleting first cascades to the old metrics, steps and texts: a rerun leaves no stale rows.
  {
    Stmt stmt(db, path, "DELETE FROM runs WHERE run_id = ?1");
    stmt.bind(1, record.run_id);
    stmt.run();
  }
  {
    Stmt stmt(db, path, R"(
INSERT INTO runs(run_id, experiment, repeat, config, status, exit_code, signal, started_at,
                 finished_at, stderr_tail, env_id, error, workload, part)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14))");
    stmt.bind(1, record.run_id);
    stmt.bind(2, record.experiment);
    stmt.bind(3, record.repeat);
    stmt.bind(4, record.config);
    stmt.bind(5, std::string(to_string(record.status)));
    stmt.bind(6, record.exit_code);
    stmt.bind(7, record.signal);
    stmt.bind_text_or_null(8, record.started_at);
    stmt.bind_text_or_null(9, record.finished_at);
    stmt.bind_text_or_null(10, record.stderr_tail);
    stmt.bind_text_or_null(11, env_id);
    stmt.bind_text_or_null(12, record.error);
    stmt.bind(13, std::string(to_string(record.workload)));
    stmt.bind(14, record.part);
    stmt.run();
  }
}

// The run's metrics, steps and texts.
void insert_run_rows(sqlite3* db, const std::string& path, const RunRecord& record) {
  {
    Stmt stmt(db, path, "INSERT INTO metrics(run_id, name, value, unit) VALUES (?1, ?2, ?3, ?4)");
    for (const Metric& metric : record.metrics) {
      std::string unit = metric.unit;
      if (unit.empty()) {
        if (const Field* field = find_metric_field(metric.name)) unit = field->unit;
      }
      stmt.bind(1, record.run_id);
      stmt.bind(2, metric.name);
      stmt.bind(3, metric.value);  // SQLite stores NaN as NULL
      stmt.bind(4, unit);
      stmt.run();
    }
  }
  {
    Stmt stmt(db, path, R"(
INSERT INTO steps(run_id, step, seconds, loss, tokens, mem_mb) VALUES (?1, ?2, ?3, ?4, ?5, ?6))");
    for (const StepRow& row : record.steps) {
      stmt.bind(1, record.run_id);
      stmt.bind(2, row.step);
      stmt.bind(3, row.seconds);
      stmt.bind(4, row.loss);
      stmt.bind(5, row.tokens);
      stmt.bind(6, row.mem_mb);
      stmt.run();
    }
  }
  {
    Stmt stmt(db, path, "INSERT INTO texts(run_id, name, text) VALUES (?1, ?2, ?3)");
    for (const auto& [name, text] : record.texts) {
      stmt.bind(1, record.run_id);
      stmt.bind(2, name);
      stmt.bind(3, text);
      stmt.run();
    }
  }
}

}  // namespace

bool Store::ingest(const RunRecord& record, const Claimant* owner) {
  if (record.run_id.empty()) throw std::runtime_error(path_ + ": ingest: a run without run_id");
  const std::lock_guard<std::recursive_mutex> lock(mutex_);
  Transaction tx(db_, path_);

  if (owner != nullptr) {
    // A runner that was taken for dead (stopped, cut off) must not overwrite the record of the
    // runner that took its claim over.
    Stmt held(db_, path_, "SELECT runner, state FROM claims WHERE run_id = ?1");
    held.bind(1, record.run_id);
    if (held.step() && held.text(0) != owner->id) return false;
    Stmt done(db_, path_, "UPDATE claims SET state = 'done', finished_at = ?2 WHERE run_id = ?1");
    done.bind(1, record.run_id);
    done.bind(2, unix_now());
    done.run();
  }

  // The runner normally records the experiment first; a placeholder keeps the foreign key
  // honest if it did not, and upsert_experiment fills it in later.
  {
    Stmt stmt(db_, path_, "INSERT OR IGNORE INTO experiments(name, created_at) VALUES (?1, ?2)");
    stmt.bind(1, record.experiment);
    stmt.bind(2, utc_now_iso8601());
    stmt.run();
  }

  const std::string env_id = environment_id(record.env);
  if (!env_id.empty()) insert_environment(db_, path_, env_id, record.env);

  replace_run_row(db_, path_, record, env_id);
  insert_run_rows(db_, path_, record);
  tx.commit();
  return true;
}

Claimant Claimant::this_process() {
  Claimant me;
  me.host = host_name();
  me.pid = ::getpid();
  me.started_at = unix_now();
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                      std::chrono::system_clock::now().time_since_epoch())
                      .count();
  me.id = me.host + ":" + std::to_string(me.pid) + ":" + std::to_string(ns);
  return me;
}

double claim_stale_after_s() {
  if (const char* env = std::getenv("HARNESS_CLAIM_STALE_S"); env != nullptr && *env) {
    char* end = nullptr;
    const double v = std::strtod(env, &end);
    if (end != env && v > 0) return v;
  }
  return 60;
}

namespace {
// Whether the holder of a claim still runs it: a Slurm submission (pid 0) holds its runs until
// they are collected; a runner on this host whose pid is gone is dead at once; any runner whose
// heartbeat stopped (killed on another host, stopped, hung) is dead after the stale time.
bool holder_alive(const std::string& host, int64_t pid, double heartbeat_at, double now) {
  if (pid == 0) return true;
  if (host == host_name() && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH)
    return false;
  return now - heartbeat_at < claim_stale_after_s();
}
}  // namespace

ClaimResult Store::claim_run(const std::string& experiment, const std::string& run_id,
                             const Claimant& me, bool force, bool retry_failed) {
  const std::lock_guard<std::recursive_mutex> lock(mutex_);
  Transaction tx(db_, path_);
  const double now = unix_now();
  ClaimResult result;
  int previous_attempt = 0;
  {
    Stmt stmt(db_, path_, R"(
SELECT runner, host, pid, state, attempt, heartbeat_at, finished_at FROM claims
WHERE run_id = ?1)");
    stmt.bind(1, run_id);
    if (stmt.step()) {
      const std::string runner = stmt.text(0);
      const std::string host = stmt.text(1);
      const int64_t pid = stmt.int64(2);
      const std::string state = stmt.text(3);
      previous_attempt = static_cast<int>(stmt.int64(4));
      const double heartbeat_at = stmt.real(5);
      if (state == "held" && runner != me.id) {
        if (holder_alive(host, pid, heartbeat_at, now)) {
          result.outcome = ClaimOutcome::kHeldByOther;
          result.holder = runner;
          return result;  // the transaction rolls back: nothing was written
        }
        char age[64];
        std::snprintf(age, sizeof age, "%.0f", now - heartbeat_at);
        result.takeover = "attempt " + std::to_string(previous_attempt) + " of runner " + runner +
                          " (pid " + std::to_string(pid) + " on " + host + ", last heartbeat " +
                          age + " s ago)";
      } else if (state == "done" && runner != me.id && !stmt.is_null(6) &&
                 stmt.real(6) >= me.started_at) {
        result.outcome = ClaimOutcome::kDoneByOther;
        result.holder = runner;
        return result;
      }
    }
  }
  if (result.takeover.empty()) {
    Stmt stmt(db_, path_, "SELECT status FROM runs WHERE run_id = ?1");
    stmt.bind(1, run_id);
    if (stmt.step() && !(force || (retry_failed && stmt.text(0) != to_string(Status::kOk)))) {
      result.outcome = ClaimOutcome::kStored;
      return result;
    }
  }
  result.attempt = previous_attempt + 1;
  Stmt stmt(db_, path_, R"(
INSERT INTO claims(run_id, experiment, runner, host, pid, state, attempt, claimed_at,
                   heartbeat_at, finished_at)
VALUES (?1, ?2, ?3, ?4, ?5, 'held', ?6, ?7, ?7, NULL)
ON CONFLICT(run_id) DO UPDATE SET
  experiment = excluded.experiment, runner = excluded.runner, host = excluded.host,
  pid = excluded.pid, state = 'held', attempt = excluded.attempt,
  claimed_at = excluded.claimed_at, heartbeat_at = excluded.heartbeat_at, finished_at = NULL)");
  stmt.bind(1, run_id);
  stmt.bind(2, experiment);
  stmt.bind(3, me.id);
  stmt.bind(4, me.host);
  stmt.bind(5, me.pid);
  stmt.bind(6, result.attempt);
  stmt.bind(7, now);
  stmt.run();
  tx.commit();
  return result;
}

void Store::heartbeat(const Claimant& me) {
  const std::lock_guard<std::recursive_mutex> lock(mutex_);
  Stmt stmt(db_, path_, "UPDATE claims SET heartbeat_at = ?2 WHERE runner = ?1 AND state = 'held'");
  stmt.bind(1, me.id);
  stmt.bind(2, unix_now());
  stmt.run();
}

void Store::release_claim(const std::string& run_id, const Claimant& me) {
  const std::lock_guard<std::recursive_mutex> lock(mutex_);
  Stmt stmt(db_, path_, R"(
UPDATE claims SET state = 'released', finished_at = ?3
WHERE run_id = ?1 AND runner = ?2 AND state = 'held')");
  stmt.bind(1, run_id);
  stmt.bind(2, me.id);
  stmt.bind(3, unix_now());
  stmt.run();
}

void Store::transfer_claims(const std::vector<std::string>& run_ids, const Claimant& me,
                            const Claimant& to) {
  const std::lock_guard<std::recursive_mutex> lock(mutex_);
  Transaction tx(db_, path_);
  Stmt stmt(db_, path_, R"(
UPDATE claims SET runner = ?3, host = ?4, pid = ?5, heartbeat_at = ?6
WHERE run_id = ?1 AND runner = ?2 AND state = 'held')");
  for (const std::string& run_id : run_ids) {
    stmt.bind(1, run_id);
    stmt.bind(2, me.id);
    stmt.bind(3, to.id);
    stmt.bind(4, to.host);
    stmt.bind(5, to.pid);
    stmt.bind(6, unix_now());
    stmt.run();
  }
  tx.commit();
}

std::map<std::string, Status> Store::run_statuses(const std::string& experiment) const {
  std::map<std::string, Status> statuses;
  Stmt stmt(db_, path_, "SELECT run_id, status FROM runs WHERE experiment = ?1");
  stmt.bind(1, experiment);
  while (stmt.step()) statuses.emplace(stmt.text(0), column_status(stmt.text(1), path_));
  return statuses;
}

std::vector<StoredRun> Store::load_runs(const std::string& experiment) const {
  std::vector<StoredRun> runs;
  std::map<std::string, size_t> index;
  {
    const std::string sql = std::string(R"(
SELECT run_id, experiment, workload, repeat, config, status, exit_code, signal, started_at,
       finished_at, stderr_tail, error, env_id, )") +
                            (runs_have_part_ ? "part" : "NULL") + R"(
FROM runs WHERE experiment = ?1 ORDER BY started_at, run_id)";
    Stmt stmt(db_, path_, sql);
    stmt.bind(1, experiment);
    while (stmt.step()) {
      StoredRun run;
      run.run_id = stmt.text(0);
      run.experiment = stmt.text(1);
      run.workload = parse_workload(stmt.text(2));  // none for NULL
      run.repeat = static_cast<int>(stmt.int64(3));
      try {
        run.config = Json::parse(stmt.text(4));
      } catch (const Json::parse_error& e) {
        throw std::runtime_error(path_ + ": run " + run.run_id +
                                 ": config is not JSON: " + e.what());
      }
      run.status = column_status(stmt.text(5), path_);
      run.exit_code = stmt.optional_int<int>(6);
      run.signal = stmt.optional_int<int>(7);
      run.started_at = stmt.text(8);
      run.finished_at = stmt.text(9);
      run.stderr_tail = stmt.text(10);
      run.error = stmt.text(11);
      run.env_id = stmt.text(12);
      run.part = stmt.optional_int<int>(13);
      run.env = Json::object();
      index.emplace(run.run_id, runs.size());
      runs.push_back(std::move(run));
    }
  }
  {
    Stmt stmt(db_, path_, R"(
SELECT m.run_id, m.name, m.value FROM metrics m JOIN runs r ON r.run_id = m.run_id
WHERE r.experiment = ?1)");
    stmt.bind(1, experiment);
    while (stmt.step()) {
      const double value =
          stmt.is_null(2) ? std::numeric_limits<double>::quiet_NaN() : stmt.real(2);
      runs[index.at(stmt.text(0))].metrics[stmt.text(1)] = value;
    }
  }
  {
    std::string columns;
    for (const Field& field : kEnvFields) columns += ", " + std::string(field.name);
    const std::string sql = "SELECT env_id" + columns + R"( FROM environments
WHERE env_id IN (SELECT env_id FROM runs WHERE experiment = ?1))";
    Stmt stmt(db_, path_, sql);
    stmt.bind(1, experiment);
    std::map<std::string, Json> envs;
    while (stmt.step()) {
      Json env = Json::object();
      for (size_t i = 0; i < kEnvFields.size(); ++i) {
        env[std::string(kEnvFields[i].name)] = column_json(stmt, static_cast<int>(i + 1));
      }
      envs.emplace(stmt.text(0), std::move(env));
    }
    for (StoredRun& run : runs) {
      if (const auto it = envs.find(run.env_id); it != envs.end()) run.env = it->second;
    }
  }
  return runs;
}

std::vector<StepRow> Store::load_steps(const std::string& run_id) const {
  std::vector<StepRow> steps;
  Stmt stmt(db_, path_, R"(
SELECT step, seconds, loss, tokens, mem_mb FROM steps WHERE run_id = ?1 ORDER BY step)");
  stmt.bind(1, run_id);
  while (stmt.step()) {
    StepRow row;
    row.step = stmt.int64(0);
    row.seconds = stmt.optional_real(1).value_or(std::numeric_limits<double>::quiet_NaN());
    row.loss = stmt.optional_real(2);
    row.tokens = stmt.optional_int<int64_t>(3);
    row.mem_mb = stmt.optional_real(4);
    steps.push_back(row);
  }
  return steps;
}

std::vector<std::pair<std::string, std::string>> Store::load_texts(
    const std::string& run_id) const {
  std::vector<std::pair<std::string, std::string>> texts;
  Stmt stmt(db_, path_, "SELECT name, text FROM texts WHERE run_id = ?1 ORDER BY rowid");
  stmt.bind(1, run_id);
  while (stmt.step()) texts.emplace_back(stmt.text(0), stmt.text(1));
  return texts;
}

std::string Store::integrity_check() const {
  std::string findings;
  Stmt stmt(db_, path_, "PRAGMA integrity_check");
  while (stmt.step()) {
    if (!findings.empty()) findings += "\n";
    findings += stmt.text(0);
  }
  // integrity_check does not look at foreign keys; a dangling reference is corruption too.
  Stmt fk(db_, path_, "PRAGMA foreign_key_check");
  while (fk.step()) {
    if (findings == "ok") findings.clear();
    if (!findings.empty()) findings += "\n";
    findings += "foreign key: table " + fk.text(0) + " row " + fk.text(1) + " -> " + fk.text(2);
  }
  return findings;
}

}  // namespace hx
