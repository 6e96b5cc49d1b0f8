// The config-key registry (harness/plan/config_keys.h) and the command-line overrides of a spec
// (SpecOverrides): real specs of the repository, parsed for real.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>

#include "harness/plan/config_keys.h"
#include "harness/plan/fields.h"
#include "harness/plan/spec.h"

namespace hx {
namespace {

namespace fs = std::filesystem;
const fs::path kSourceDir = HX_SOURCE_DIR;

std::string slurp(const fs::path& path) {
  std::ifstream in(path);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

// The README's key table is the registry's, so that the docs cannot drift from the code.
TEST(ConfigKeys, ReadmeTableIsTheRegistrys) {
  const std::string readme = slurp(kSourceDir / "README.md");
  const std::string begin = "<!-- config-keys:begin (harness keys) -->\n";
  const std::string end = "<!-- config-keys:end -->";
  const size_t from = readme.find(begin);
  const size_t to = readme.find(end);
  ASSERT_NE(from, std::string::npos);
  ASSERT_NE(to, std::string::npos);
  EXPECT_EQ(readme.substr(from + begin.size(), to - from - begin.size()), config_keys_markdown())
      << "README.md's key table is out of date: replace it by the output of `harness keys`";
}

TEST(ConfigKeys, EveryRowIsConsistent) {
  std::set<std::string_view> names;
  for (const ConfigKey& key : config_keys()) {
    EXPECT_TRUE(names.insert(key.name).second) << key.name << " twice";
    EXPECT_FALSE(key.doc.empty()) << key.name;
    if (key.default_json.empty()) continue;
    // A default is a value the key itself accepts.
    EXPECT_EQ(check_value(key, default_value(key.name)), "") << key.name;
  }
  EXPECT_EQ(axis_label("lora_r"), "LoRA r");
  EXPECT_EQ(axis_label("top_k"), "top_k");  // no label: the name
}

TEST(ConfigKeys, RunSettingsTakeDefaultsFromTheRegistryAndDataLengths) {
  const RunSettings none = RunSettings::parse(Json::object());
  EXPECT_EQ(none.batch_size, 1);
  EXPECT_EQ(none.mp, "off");
  EXPECT_FALSE(none.gc);
  EXPECT_EQ(none.lora_targets, (std::vector<std::string>{"wq", "wv"}));
  EXPECT_DOUBLE_EQ(none.lr, 1e-5);
  EXPECT_EQ(none.max_steps, 20);
  EXPECT_TRUE(none.kv_cache);
  EXPECT_FALSE(none.threads.has_value());
  EXPECT_EQ(none.max_seq_len, 256);
  EXPECT_EQ(none.seq_len, 64);

  // The run's value, then the data's, then the registry's.
  const Json data = {{"max_seq_len", 300}, {"seq_len", 48}};
  EXPECT_EQ(RunSettings::parse(Json::object(), data).max_seq_len, 300);
  EXPECT_EQ(RunSettings::parse({{"max_seq_len", 128}}, data).max_seq_len, 128);
  EXPECT_EQ(RunSettings::parse(Json::object(), data).seq_len, 48);
  const RunSettings some = RunSettings::parse(
      {{"gc", "on"}, {"lora", true}, {"lr", 1}, {"kv_cache", "off"}, {"threads", 3}});
  EXPECT_TRUE(some.gc);
  EXPECT_TRUE(some.lora);
  EXPECT_DOUBLE_EQ(some.lr, 1.0);
  EXPECT_FALSE(some.kv_cache);
  EXPECT_EQ(some.threads, 3);
  EXPECT_THROW(RunSettings::parse({{"batch_size", "two"}}), std::invalid_argument);
}

// ---- --set / --only ----

// From the checkout's root, as its comment says (its data path is relative to it).
Spec phase3(const SpecOverrides& overrides) {
  const fs::path before = fs::current_path();
  fs::current_path(kSourceDir);
  struct Back {
    fs::path dir;
    ~Back() { fs::current_path(dir); }
  } back{before};
  return load_spec("experiments/phase3.yaml", overrides);
}

TEST(SpecOverrides, ShrinkAGpuStudyToACpuSmokeRun) {
  const Spec spec = phase3({.set = {"device=cpu", "model.preset=tiny", "max_steps=3"}});
  EXPECT_EQ(spec.device, "cpu");
  EXPECT_EQ(spec.model.at("preset"), "tiny");
  const auto runs = expand(spec);
  ASSERT_EQ(runs.size(), expand(phase3({})).size());
  int skipped = 0;
  for (const RunConfig& run : runs) {
    EXPECT_EQ(run.config.at("max_steps"), 3) << run.canonical;
    // The spec's fp16 cells cannot run on a CPU: kept, as skipped runs that say why.
    if (run.config.value("mp", "") == "fp16") {
      ++skipped;
      EXPECT_NE(run.skip_reason.find("fp16 needs a CUDA device"), std::string::npos);
    } else {
      EXPECT_EQ(run.skip_reason, "");
    }
  }
  EXPECT_EQ(skipped, static_cast<int>(runs.size()) / 2);
  // The stored text records how the spec was changed.
  EXPECT_NE(spec.text.find("#   --set device=cpu\n"), std::string::npos);
  EXPECT_NE(spec.text.find("#   --set max_steps=3\n"), std::string::npos);
  // Other run ids than the study's: results of the two never mix.
  EXPECT_NE(runs.front().run_id, expand(phase3({})).front().run_id);
}

TEST(SpecOverrides, ReplaceAnAxisOrKeepSomeOfItsValues) {
  const Spec replaced = phase3({.set = {"device=cpu", "mp=[off, bf16]"}});
  for (const PartSpec& part : replaced.parts) {
    for (const auto& [axis, values] : part.axes) {
      if (axis == "mp") EXPECT_EQ(Json(values), Json::parse(R"(["off", "bf16"])"));
    }
  }
  const Spec only = phase3({.set = {"device=cpu"}, .only = {"mp=off", "lora=on"}});
  for (const RunConfig& run : expand(only)) {
    EXPECT_EQ(run.config.at("mp"), "off");
    EXPECT_EQ(run.config.at("lora"), "on");
    EXPECT_EQ(run.skip_reason, "");
  }
  EXPECT_EQ(expand(only).size(), 2U + 2U);  // gc x {} and ga x {} per part
  // A scalar for an axis keeps the axis (the tables' columns) with one value.
  const Spec one = phase3({.set = {"gc=on"}});
  EXPECT_EQ(one.parts[0].axes[0].first, "gc");
  EXPECT_EQ(one.parts[0].axes[0].second.size(), 1U);
  // A list for a fixed key makes it an axis.
  const Spec axis = phase3({.set = {"batch_size=[1, 2]"}});
  bool found = false;
  for (const auto& [name, values] : axis.parts[0].axes) found |= name == "batch_size";
  EXPECT_TRUE(found);
  EXPECT_FALSE(axis.parts[0].fixed.contains("batch_size"));
}

TEST(SpecOverrides, BadOverridesNameTheFlagAndTheProblem) {
  auto message = [](const SpecOverrides& o) {
    try {
      phase3(o);
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  EXPECT_EQ(message({.set = {"max_steps=abc"}}),
            "--set max_steps=abc: max_steps: expected an integer >= 1, got \"abc\"");
  EXPECT_EQ(message({.set = {"max_steps"}}), "--set max_steps: expected KEY=VALUE");
  EXPECT_NE(message({.set = {"warp_speed=9"}}).find("--set warp_speed=9: unknown key warp_speed"),
            std::string::npos);
  EXPECT_NE(message({.set = {"kv_cache=off"}}).find("not a key of this spec's workloads"),
            std::string::npos);
  EXPECT_EQ(message({.only = {"mp=bf16"}}),
            "--only mp=bf16: keeps no value of axis mp (its values: off, fp16)");
  EXPECT_EQ(message({.only = {"seed=1"}}), "--only seed=1: seed is not a matrix axis of the spec");
  // As if written in the spec: a value the spec's own checks refuse names the spec.
  const std::string bad_device = message({.set = {"device=tpu"}});
  EXPECT_NE(bad_device.find("phase3.yaml:"), std::string::npos) << bad_device;
  EXPECT_NE(bad_device.find("device"), std::string::npos) << bad_device;
}

}  // namespace
}  // namespace hx
