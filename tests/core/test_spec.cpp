// The spec: parsing, validation messages (a corpus of bad specs), expansion and run ids.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "harness/plan/spec.h"

namespace hx {
namespace {

namespace fs = std::filesystem;

const fs::path kSourceDir = HX_SOURCE_DIR;

// Specs are real files: load_spec is what `harness` calls, and relative paths resolve against
// the spec's directory.
fs::path scratch_dir() {
  const fs::path dir =
      fs::path(::testing::TempDir()) / ("hx_test_spec_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  return dir;
}

fs::path write_file(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

Spec load_text(const std::string& text, const std::string& file = "spec.yaml") {
  return load_spec(write_file(scratch_dir() / file, text).string());
}

// Gives the message of the std::invalid_argument that `load` throws, or fails the test.
template <typename Load>
std::string error_of(Load load) {
  try {
    load();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  ADD_FAILURE() << "no std::invalid_argument thrown";
  return "";
}

constexpr const char* kFinetune = R"(name: ft
model: {preset: tiny}
workload: finetune
device: cpu
data: {format: random, seq_len: 16}
fixed: {batch_size: 1, lr: 1.0e-5, lora_alpha: 32, lora_dropout: 0.05, lora_targets: [wq, wv]}
matrix:
  gc: [off, on]
  mp: [off, bf16]
  lora: [off, on]
)";

std::vector<std::string> ids_of(const std::vector<RunConfig>& runs) {
  std::vector<std::string> ids;
  for (const RunConfig& run : runs) ids.push_back(run.run_id);
  return ids;
}

TEST(Spec, ProductOrderFirstAxisSlowestRepeatInnermost) {
  const Spec spec = load_text(std::string(kFinetune) + "repeats: 2\n");
  const std::vector<RunConfig> runs = expand(spec);
  ASSERT_EQ(runs.size(), 16u);
  EXPECT_EQ(runs[0].config["gc"], "off");
  EXPECT_EQ(runs[0].config["mp"], "off");
  EXPECT_EQ(runs[0].config["lora"], "off");
  EXPECT_EQ(runs[0].repeat, 0);
  EXPECT_EQ(runs[1].repeat, 1);
  EXPECT_EQ(runs[1].canonical, runs[0].canonical);
  EXPECT_EQ(runs[2].config["lora"], "on");
  EXPECT_EQ(runs[4].config["mp"], "bf16");
  EXPECT_EQ(runs[8].config["gc"], "on");
  for (const RunConfig& run : runs) EXPECT_EQ(run.workload, Workload::kFinetune);
}

TEST(Spec, ExcludeIncludeAndDuplicates) {
  const Spec spec = load_text(std::string(kFinetune) + R"(
exclude: [{gc: on, lora: off, mp: bf16}, {gc: off, lora: on}]
include:
  - {gc: on, mp: off, lora: on, batch_size: 4}   # new: overrides a fixed key
  - {gc: off, mp: off, lora: off}                # repeats a product row: dropped
repeats: 3
)");
  // 8 combinations; the first exclude removes 1, the second (two keys) removes 2; one include is
  // new.
  const std::vector<RunConfig> runs = expand(spec);
  ASSERT_EQ(runs.size(), (8u - 1 - 2 + 1) * 3);
  const RunConfig& last = runs.back();
  EXPECT_EQ(last.canonical,
            R"({"batch_size":4,"gc":"on","lora":"on","lora_alpha":32,"lora_dropout":0.05,)"
            R"("lora_targets":["wq","wv"],"lr":1e-05,"mp":"off"})");
  EXPECT_EQ(last.repeat, 2);
  for (const RunConfig& run : runs) {
    EXPECT_FALSE(run.config["gc"] == "off" && run.config["lora"] == "on") << run.canonical;
  }
  const std::vector<std::string> ids = ids_of(runs);
  EXPECT_EQ(std::set<std::string>(ids.begin(), ids.end()).size(), ids.size());
}

TEST(Spec, IncludeMayUseValuesOutsideTheAxis) {
  const Spec spec = load_text(R"(name: inc
model: {preset: tiny}
workload: finetune
device: cuda
data: {format: random, seq_len: 16}
matrix: {gc: [off, on], mp: [off, fp16], lora: [off, on]}
include: [{gc: on, mp: bf16, lora: on}]
exclude: [{gc: on, lora: off, mp: fp16}]
)");
  const std::vector<RunConfig> runs = expand(spec);
  ASSERT_EQ(runs.size(), 8u);
  EXPECT_EQ(runs.back().canonical, R"({"gc":"on","lora":"on","mp":"bf16"})");
}

TEST(Spec, NoMatrixIsOneRun) {
  const Spec spec = load_text(R"(name: one
model: {preset: tiny}
workload: generate
fixed: {prompt_len: 8, new_tokens: 4}
repeats: 2
)");
  const std::vector<RunConfig> runs = expand(spec);
  ASSERT_EQ(runs.size(), 2u);
  EXPECT_EQ(runs[0].canonical, R"({"new_tokens":4,"prompt_len":8})");
  EXPECT_NE(runs[0].run_id, runs[1].run_id);
}

TEST(Spec, ValuesAsWritten) {
  const Spec spec = load_text(std::string(kFinetune) + "timeout_s: 60\nmemory_limit_mb: 512\n");
  ASSERT_EQ(spec.parts.size(), 1u);
  const PartSpec& part = spec.parts[0];
  EXPECT_EQ(spec.name, "ft");
  EXPECT_EQ(spec.device, "cpu");
  EXPECT_EQ(spec.timeout_s, 60);
  EXPECT_EQ(spec.memory_limit_mb, 512);
  EXPECT_EQ(spec.model, (Json{{"preset", "tiny"}, {"weights", "random"}, {"seed", 0}}));
  EXPECT_TRUE(part.fixed["batch_size"].is_number_integer());
  EXPECT_TRUE(part.fixed["lr"].is_number_float());
  EXPECT_TRUE(part.fixed["lora_alpha"].is_number_integer());  // 32, as written
  EXPECT_EQ(part.fixed["lora_targets"], (Json{"wq", "wv"}));
  ASSERT_EQ(part.axes.size(), 3u);
  EXPECT_EQ(part.axes[0].first, "gc");
  // off/on stay words: yaml-cpp would read them as booleans.
  EXPECT_EQ(part.axes[0].second, (std::vector<Json>{"off", "on"}));
  EXPECT_EQ(part.data, (Json{{"format", "random"}, {"seq_len", 16}}));
}

// Found by fuzzing (tests/fuzz/corpus/fuzz_spec/crash-yaml-escape.yaml): yaml-cpp writes the
// escapes \_ and \N of a double-quoted scalar as the single bytes 0xA0 and 0x85, not UTF-8, and
// nlohmann's dump() threw on them while the message about the value was formatted (exit 1, no
// file). Those bytes are re-encoded; a spec with a control character is refused where it is.
TEST(Spec, YamlEscapesGiveUtf8AndControlCharactersAreRefused) {
  const std::string head = "name: t\nmodel: {preset: tiny}\nworkload: finetune\ndevice: cpu\n";
  EXPECT_EQ(
      error_of([&] { load_text(head + "data: {format: \"a\\_b\\Nc\", seq_len: 16}\n"); }),
      (scratch_dir() / "spec.yaml").string() +
          ":5: data.format: unknown value \"a\u00A0b\u0085c\" (expected alpaca, random, tokens)");
  const Spec spec =
      load_text(head + "data: {format: random, seq_len: 16}\n" + "matrix: {gc: [off, on]}\n" +
                "tables: [{title: \"x\\_y\", columns: [gc], rows: [peak_mem_mb]}]\n");
  EXPECT_EQ(spec.tables.at(0).title, "x\u00A0y");
  EXPECT_EQ(error_of([&] {
              load_text(head +
                        "data: {format: ran\x1F"
                        "dom, seq_len: 16}\n");
            }),
            (scratch_dir() / "spec.yaml").string() +
                ":5: spec: byte 0x1F in column 19 is a control character (not allowed in YAML)");
}

TEST(Spec, CanonicalJson) {
  EXPECT_EQ(canonical_json(Json{{"mp", "fp16"}, {"lora", "off"}, {"gc", "on"}}),
            R"({"gc":"on","lora":"off","mp":"fp16"})");
  EXPECT_EQ(canonical_json(Json{{"lr", 1e-5}, {"a", 32.0}, {"b", 0.05}, {"t", {"wq", "wv"}}}),
            R"({"a":32.0,"b":0.05,"lr":1e-05,"t":["wq","wv"]})");
  const Spec spec = load_text(R"(name: c
model: {preset: tiny}
workload: finetune
device: cuda
data: {format: random, seq_len: 16}
matrix: {mp: [fp16], lora: [off], gc: [on]}
)");
  EXPECT_EQ(expand(spec).at(0).canonical, R"({"gc":"on","lora":"off","mp":"fp16"})");
}

TEST(Spec, RunIdsAreStable) {
  const std::vector<std::string> first = ids_of(expand(load_text(kFinetune)));
  const std::vector<std::string> second = ids_of(expand(load_text(kFinetune, "copy.yaml")));
  EXPECT_EQ(first, second);
  for (const std::string& id : first) {
    EXPECT_EQ(id.size(), 16u);
    EXPECT_EQ(id.find_first_not_of("0123456789abcdef"), std::string::npos) << id;
  }
  // Pinned: the hashed text and the hash are an interface (the database's keys); if this changes,
  // no stored result resumes. Computed independently, with Python's json.dumps(sort_keys=True,
  // separators=(",", ":")) and a hand-written FNV-1a 64 over
  // name \n context \n config \n repeat.
  EXPECT_EQ(first[0], "cf25a26bbd04f9ae");
}

TEST(Spec, RunIdsDependOnModelAndRepeat) {
  std::string other = kFinetune;
  other.replace(other.find("preset: tiny"), 12, "preset: llama3.2-1b");
  const std::vector<std::string> tiny = ids_of(expand(load_text(kFinetune)));
  const std::vector<std::string> big = ids_of(expand(load_text(other)));
  ASSERT_EQ(tiny.size(), big.size());
  for (size_t i = 0; i < tiny.size(); ++i) EXPECT_NE(tiny[i], big[i]);

  const Spec spec = load_text(kFinetune);
  const RunConfig run = expand(spec).at(0);
  EXPECT_EQ(make_run_id(spec, spec.parts[0], run.canonical, 0), run.run_id);
  EXPECT_NE(make_run_id(spec, spec.parts[0], run.canonical, 1), run.run_id);
}

// A spec and its data, copied to two places: the worker gets absolute paths, run ids hash the
// paths as written, so they do not depend on where the checkout lives.
TEST(Spec, DataPathsAbsoluteButIdsDoNotDependOnLocation) {
  const std::string text = R"(name: moved
model: {preset: tiny}
workload: finetune
data: {format: alpaca, path: data/set.json, samples: 4, max_seq_len: 32}
matrix: {lora: [off, on]}
)";
  std::vector<std::vector<std::string>> ids;
  for (const char* where : {"a", "b/c"}) {
    const fs::path dir = scratch_dir() / where;
    write_file(dir / "data/set.json", "[]");
    const Spec spec = load_spec(write_file(dir / "moved.yaml", text).string());
    const Json& data = spec.parts.at(0).data;
    EXPECT_EQ(data["path"], (fs::absolute(dir) / "data/set.json").lexically_normal().string());
    EXPECT_EQ(data["path_as_written"], "data/set.json");
    EXPECT_EQ(data["samples"], 4);
    ids.push_back(ids_of(expand(spec)));
  }
  EXPECT_EQ(ids[0], ids[1]);
}

TEST(Spec, PartsMergeDefaultsAndTablesSelectByLabel) {
  const Spec spec = load_text(R"(name: parts
model: {preset: tiny}
device: cuda
data: {format: random, seq_len: 32}
fixed: {batch_size: 1, lr: 1.0e-4, gc: off}
parts:
  - label: a
    workload: finetune
    fixed: {batch_size: 2}
    matrix: {gc: [off, on], mp: [off, fp16]}        # gc: an axis here, a default elsewhere
  - label: b
    workload: finetune
    data: {format: random, seq_len: 64}
    matrix: {ga: [1, 8]}
tables:
  - {title: A, columns: [gc, mp], rows: [peak_mem_mb], part: a}
  - {title: B, columns: [ga], rows: [step_time_s], part: b, kind: arrows}
  - {title: All, columns: [gc, ga], rows: [peak_mem_mb], workload: finetune}
)");
  ASSERT_EQ(spec.parts.size(), 2u);
  EXPECT_EQ(spec.parts[0].label, "a");
  EXPECT_EQ(spec.parts[0].fixed, (Json{{"batch_size", 2}, {"lr", 1e-4}}));
  EXPECT_EQ(spec.parts[1].fixed, (Json{{"batch_size", 1}, {"gc", "off"}, {"lr", 1e-4}}));
  EXPECT_EQ(spec.parts[1].data["seq_len"], 64);
  ASSERT_EQ(spec.tables.size(), 3u);
  EXPECT_EQ(spec.tables[0].part, "a");
  EXPECT_EQ(spec.tables[1].kind, "arrows");
  EXPECT_EQ(spec.tables[2].workload, Workload::kFinetune);
  EXPECT_EQ(spec.tables[2].line, 18);

  const std::vector<RunConfig> runs = expand(spec);
  ASSERT_EQ(runs.size(), 4u + 2u);
  EXPECT_EQ(runs[0].part, 0);
  EXPECT_EQ(runs[5].part, 1);
  EXPECT_EQ(runs[5].canonical, R"({"batch_size":1,"ga":8,"gc":"off","lr":0.0001})");
}

TEST(Spec, DefaultsMustFitEveryPart) {
  const std::string message = error_of([] {
    load_text(R"(name: defaults
model: {preset: tiny}
fixed: {lora_r: 8}
parts:
  - {workload: finetune, data: {format: random, seq_len: 8}, matrix: {lora: [off, on]}}
  - {workload: generate, matrix: {kv_cache: [on, off]}}
)");
  });
  EXPECT_NE(message.find("spec.yaml:3: fixed.lora_r: only applies to workload finetune, not "
                         "generate (in parts[1])"),
            std::string::npos)
      << message;
}

TEST(Spec, PartDataOfAnotherFormatReplacesTheDefault) {
  write_file(scratch_dir() / "set.json", "[]");
  const Spec spec = load_text(R"(name: data
model: {preset: tiny}
data: {format: alpaca, path: set.json, samples: 8}
parts:
  - {workload: finetune, data: {samples: 4}, matrix: {lora: [off, on]}}
  - {workload: finetune, data: {format: random, seq_len: 8}, matrix: {gc: [off, on]}}
)");
  EXPECT_EQ(spec.parts[0].data["samples"], 4);
  EXPECT_EQ(spec.parts[0].data["path_as_written"], "set.json");
  EXPECT_EQ(spec.parts[1].data, (Json{{"format", "random"}, {"seq_len", 8}}));
}

TEST(Spec, ScalarsFollowYamlCoreSchemaButKeepWords) {
  const Spec spec = load_text(R"(name: scalars
model: {preset: tiny}
workload: generate
fixed: {temperature: 1e-1, top_p: 1, top_k: +5, sampling: sample}
matrix: {kv_cache: ['on', off]}
)");
  const Json& fixed = spec.parts.at(0).fixed;
  EXPECT_TRUE(fixed["temperature"].is_number_float());
  EXPECT_EQ(fixed["temperature"], 0.1);
  EXPECT_TRUE(fixed["top_p"].is_number_integer());
  EXPECT_EQ(fixed["top_k"], 5);
  EXPECT_EQ(spec.parts[0].axes[0].second, (std::vector<Json>{"on", "off"}));
}

TEST(Spec, MissingFile) {
  EXPECT_EQ(error_of([] { load_spec("no/such/spec.yaml"); }),
            "no/such/spec.yaml: cannot open spec");
}

// ---- The phase specs of the study -----------------------------------------------------------

// The phase specs name their data relative to the checkout's root, as `harness run` is run
// from there: the test moves there for its duration unless the data is already at hand.
class PhaseSpecs : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(kData)) fs::current_path(kSourceDir);
  }
  void TearDown() override { fs::current_path(cwd_); }
  static bool have_data() { return fs::exists(kData); }

  static constexpr const char* kData = "experiments/data/synthetic_alpaca.json";
  const fs::path cwd_ = fs::current_path();
};

TEST_F(PhaseSpecs, Phase2) {
  const Spec spec = load_spec((kSourceDir / "experiments/phase2.yaml").string());
  const std::vector<RunConfig> runs = expand(spec);
  ASSERT_EQ(runs.size(), 6u);
  EXPECT_EQ(spec.device, "cuda");
  EXPECT_EQ(spec.model["preset"], "llama3.2-1b");
  EXPECT_EQ(runs[0].canonical,
            R"({"batch_size":1,"kv_cache":"on","new_tokens":32,"prompt_len":256})");
  ASSERT_EQ(spec.tables.size(), 1u);
  EXPECT_EQ(spec.tables[0].columns, (std::vector<std::string>{"kv_cache", "batch_size"}));
}

TEST_F(PhaseSpecs, Phase3) {
  if (!have_data()) GTEST_SKIP() << "experiments/data/synthetic_alpaca.json not there yet";
  const Spec spec = load_spec((kSourceDir / "experiments/phase3.yaml").string());
  const std::vector<RunConfig> runs = expand(spec);
  ASSERT_EQ(spec.parts.size(), 2u);
  ASSERT_EQ(runs.size(), 8u + 8u);
  EXPECT_EQ(std::count_if(runs.begin(), runs.end(), [](const RunConfig& r) { return r.part == 0; }),
            8);
  for (const PartSpec& part : spec.parts) {
    EXPECT_EQ(part.workload, Workload::kFinetune);
    EXPECT_EQ(part.data["format"], "alpaca");
    EXPECT_EQ(part.data["max_seq_len"], 512);
    EXPECT_EQ(part.data["path_as_written"], "experiments/data/synthetic_alpaca.json");
    EXPECT_TRUE(fs::path(part.data["path"].get<std::string>()).is_absolute());
  }
  ASSERT_EQ(spec.tables.size(), 2u);
  EXPECT_EQ(spec.tables[0].part, spec.parts[0].label);
  EXPECT_EQ(spec.tables[1].part, spec.parts[1].label);
}

// ---- Bad specs: every message names file, line and key ---------------------------------------

struct BadSpec {
  std::string name;  // NN_what
  fs::path yaml;
  std::string expect;  // "NN_what.yaml:LINE: key"
};

std::vector<BadSpec> bad_specs() {
  std::vector<BadSpec> out;
  const fs::path dir = kSourceDir / "tests/bad_specs";
  for (const auto& file : fs::directory_iterator(dir)) {
    if (file.path().extension() != ".yaml") continue;
    BadSpec spec{file.path().stem().string(), file.path(), ""};
    std::ifstream in(fs::path(file.path()).replace_extension(".expect"));
    std::getline(in, spec.expect);
    out.push_back(std::move(spec));
  }
  std::sort(out.begin(), out.end(),
            [](const BadSpec& a, const BadSpec& b) { return a.name < b.name; });
  return out;
}

// What ctest shows after "GetParam() =" (by default, the struct's raw bytes, pointers included).
void PrintTo(const BadSpec& bad, std::ostream* out) { *out << bad.yaml.filename().string(); }

class BadSpecTest : public ::testing::TestWithParam<BadSpec> {};

TEST_P(BadSpecTest, ThrowsNamingFileLineAndKey) {
  const BadSpec& bad = GetParam();
  ASSERT_FALSE(bad.expect.empty()) << bad.name << ": no .expect file";
  const std::string message = error_of([&] { load_spec(bad.yaml.string()); });
  // The path as given, then the expected "file:line: key".
  EXPECT_EQ(message.rfind(bad.yaml.parent_path().string() + "/" + bad.expect, 0), 0u)
      << "message: " << message << "\nexpected: " << bad.expect;
}

INSTANTIATE_TEST_SUITE_P(Corpus, BadSpecTest, ::testing::ValuesIn(bad_specs()),
                         [](const ::testing::TestParamInfo<BadSpec>& info) {
                           std::string name = info.param.name;
                           std::replace_if(
                               name.begin(), name.end(), [](char c) { return !std::isalnum(c); },
                               '_');
                           return name;
                         });

TEST(BadSpecCorpus, IsLargeEnough) { EXPECT_GE(bad_specs().size(), 18u); }

}  // namespace
}  // namespace hx

namespace hx {
namespace {

// `device_profile`: the profile's memory becomes the cap, bf16 runs on a GPU without bf16 are
// planned as skipped with the reason, and an unknown profile names the known ones.
TEST(DeviceProfile, CapsMemoryAndSkipsWhatTheHardwareCannotDo) {
  const std::string text = R"(name: prof
model: {preset: tiny}
device: cuda
device_profile: p100
workload: generate
matrix:
  dtype: [fp32, bf16]
)";
  const Spec spec = parse_spec(text, "prof.yaml");
  EXPECT_EQ(spec.memory_limit_mb, 16280);
  const auto runs = expand(spec);
  ASSERT_EQ(runs.size(), 2U);
  EXPECT_EQ(runs[0].skip_reason, "");
  EXPECT_EQ(runs[1].skip_reason, "P100 PCIe has no bf16 arithmetic");

  const Spec h100 = parse_spec(text.substr(0, text.find("device_profile")) +
                                   "device_profile: h100\nmemory_limit_mb: 1000\n" +
                                   text.substr(text.find("workload")),
                               "prof.yaml");
  EXPECT_EQ(h100.memory_limit_mb, 1000);  // the spec's own cap wins
  for (const auto& run : expand(h100)) EXPECT_EQ(run.skip_reason, "");
  EXPECT_NE(expand(h100)[0].run_id, runs[0].run_id);

  try {
    parse_spec("name: x\nmodel: {preset: tiny}\ndevice_profile: k80\nworkload: generate\n",
               "p.yaml");
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("p.yaml:3: device_profile: unknown profile \"k80\""),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace hx

namespace hx {
namespace {

// `model: {path: DIR}` names a checkpoint directory (the worker detects HF or Meta layout).
TEST(ModelPath, CheckpointDirectoryByPath) {
  const std::string dir = std::string(HX_SOURCE_DIR) + "/tests/golden/checkpoints/tiny_llama3_hf";
  const Spec spec = parse_spec("name: p\nmodel: {path: " + dir +
                                   "}\ndevice: cpu\nworkload: generate\nmatrix: {kv_cache: [on]}\n",
                               "p.yaml");
  EXPECT_EQ(spec.model.at("weights"), dir);
  try {
    parse_spec("name: p\nmodel: {path: " + dir + "/config.json}\nworkload: generate\n", "p.yaml");
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("p.yaml:2: model.path: "), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("is not a directory"), std::string::npos) << e.what();
  }
  try {
    parse_spec("name: p\nmodel: {path: /nonexistent/ckpt}\nworkload: generate\n", "p.yaml");
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("p.yaml:2: model.path: not found"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace hx

namespace hx {
namespace {

// ---- Big matrices: streamed expansion and the size limit ---------------------------------------

// 8 x 8 x 8 x 8 x 8 x 6 = 196,608 combinations, 3,072 excluded (batch_size 2 with lora_r 2), one
// new include entry and one that repeats the first product row.
constexpr const char* kBig = R"(name: big
model: {preset: tiny}
workload: finetune
device: cpu
data: {format: random, seq_len: 32}
fixed: {lr: 1.0e-4, optimizer: adamw, lora_alpha: 32, lora_dropout: 0.05, lora_targets: [wq, wv]}
matrix:
  batch_size: [1, 2, 3, 4, 5, 6, 7, 8]
  lora_r: [1, 2, 4, 8, 16, 32, 64, 128]
  max_steps: [1, 2, 3, 4, 5, 6, 7, 8]
  warmup_steps: [0, 1, 2, 3, 4, 5, 6, 7]
  ga: [1, 2, 3, 4, 5, 6, 7, 8]
  seq_len: [16, 32, 48, 64, 80, 96]
exclude:
  - {batch_size: 2, lora_r: 2}
include:
  - {batch_size: 99, lora_r: 1, max_steps: 1, warmup_steps: 0, ga: 1, seq_len: 16}
  - {batch_size: 1, lora_r: 1, max_steps: 1, warmup_steps: 0, ga: 1, seq_len: 16}
)";

TEST(BigMatrix, ExpandsWithTheRunIdsOfTheOneRunAtATimeExpansion) {
  const Spec spec = load_text(kBig);
  const std::vector<RunConfig> runs = expand(spec);
  ASSERT_EQ(runs.size(), 196608u - 3072 + 1);
  // Pinned with the expansion before it was streamed (one Json per config, canonical_json and
  // make_run_id per run): the ids are the database's keys and must not move.
  EXPECT_EQ(runs[0].run_id, "7a25754009a7bb7a");
  EXPECT_EQ(runs[1].run_id, "f580c315c3302b34");
  EXPECT_EQ(runs[100000].run_id, "8c0f4f38c1defdc5");
  EXPECT_EQ(runs[100000].canonical,
            R"({"batch_size":5,"ga":3,"lora_alpha":32,"lora_dropout":0.05,"lora_r":2,)"
            R"("lora_targets":["wq","wv"],"lr":0.0001,"max_steps":5,"optimizer":"adamw",)"
            R"("seq_len":80,"warmup_steps":3})");
  EXPECT_EQ(runs[runs.size() - 2].run_id, "2748c0b11a718160");
  EXPECT_EQ(runs.back().run_id, "8d6e4622df1284c9");
  EXPECT_EQ(runs.back().config["batch_size"], 99);

  // Every 997th run against the definitions: canonical_json of its config, make_run_id of that.
  for (size_t i = 0; i < runs.size(); i += 997) {
    const RunConfig& run = runs[i];
    ASSERT_EQ(run.canonical, canonical_json(run.config)) << i;
    ASSERT_EQ(run.run_id, make_run_id(spec, spec.parts[0], run.canonical, run.repeat)) << i;
    ASSERT_FALSE(run.config["batch_size"] == 2 && run.config["lora_r"] == 2) << i;
  }
  std::set<std::string> ids;
  for (const RunConfig& run : runs) ids.insert(run.run_id);
  EXPECT_EQ(ids.size(), runs.size());

  // for_each_run visits the same runs in the same order, without building them.
  size_t index = 0;
  bool same = true;
  for_each_run(spec, [&](const RunRef& ref) {
    const RunConfig& run = runs.at(index++);
    same = same && ref.run_id == run.run_id && ref.canonical == run.canonical &&
           ref.repeat == run.repeat && ref.part == run.part && ref.workload == run.workload;
    if (index == 100001) {
      EXPECT_EQ(ref.config(), run.config);
      ASSERT_NE(ref.find("lora_r"), nullptr);
      EXPECT_EQ(*ref.find("lora_r"), 2);
      EXPECT_EQ(ref.find("gc"), nullptr);
      EXPECT_EQ(ref.include, -1);
    }
  });
  EXPECT_EQ(index, runs.size());
  EXPECT_TRUE(same);
}

TEST(BigMatrix, OverTheLimitIsRefusedWithTheAxesSizes) {
  // 8^7 combinations fit; x 5 repeats they do not. Refused while loading, before any run exists.
  std::string text = kBig;
  text.replace(text.find("96]"), 3, "96, 112, 128]\n  gc_every: [1, 2, 3, 4, 5, 6, 7, 8]");
  for (size_t at = text.find("seq_len: 16}"); at != std::string::npos;
       at = text.find("seq_len: 16}", at + 1)) {
    text.replace(at, 12, "seq_len: 16, gc_every: 1}");
  }
  EXPECT_NO_THROW(load_text(text));
  const std::string message = error_of([&] { load_text(text + "repeats: 5\n", "huge.yaml"); });
  EXPECT_NE(message.find("huge.yaml:7: matrix: 10485770 runs (batch_size 8 x lora_r 8 x "
                         "max_steps 8 x warmup_steps 8 x ga 8 x seq_len 8 x gc_every 8 = 2097152 "
                         "combinations + 2 include entries, x 5 repeats): over the limit of " +
                         std::to_string(kMaxRuns) + " runs"),
            std::string::npos)
      << message;

  // Parts count together: two parts of 6 million are refused at the second.
  std::string parts = "name: p\nmodel: {preset: tiny}\ndevice: cpu\nparts:\n";
  for (const char* label : {"a", "b"}) {
    parts += std::string("  - label: ") + label + "\n    workload: generate\n    matrix:\n";
    for (const char* axis : {"prompt_len", "new_tokens", "batch_size", "top_k", "threads"}) {
      parts += std::string("      ") + axis + ": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n";
    }
    parts += "      seed: [1, 2, 3, 4, 5, 6]\n";
    parts += "      temperature: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]\n";
  }
  const std::string two = error_of([&] { load_text(parts, "parts.yaml"); });
  EXPECT_NE(two.find("parts.yaml:17: parts[1].matrix: 6000000 runs (prompt_len 10 x "),
            std::string::npos)
      << two;
  EXPECT_NE(two.find("12000000 with the parts before it: over the limit"), std::string::npos)
      << two;
}

}  // namespace
}  // namespace hx
