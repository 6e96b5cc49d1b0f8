// End-to-end with a real tokenizer file (a tiny hand-made tiktoken vocabulary of the 256 bytes,
// 512 tokens with the specials: it fits the `tiny` preset): `harness run` pre-tokenises Alpaca
// data for the worker, and `harness generate` encodes a text prompt and decodes the output.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "tests/base64_util.h"

namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

const char* harness_bin() {
  const char* env = std::getenv("HX_HARNESS_BIN");
  return env != nullptr && *env != '\0' ? env : HX_HARNESS_BIN;
}

std::string slurp(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

struct Result {
  int rc = -1;
  std::string out, err;
};

// `harness ARGS...` in `cwd`, stdout and stderr captured.
Result harness(const std::vector<std::string>& args, const fs::path& cwd) {
  std::vector<std::string> argv = {harness_bin()};
  argv.insert(argv.end(), args.begin(), args.end());
  std::vector<char*> cargv;
  for (auto& a : argv) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  const fs::path out = cwd / "out.txt", err = cwd / "err.txt";
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int out_fd = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int err_fd = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (out_fd < 0 || err_fd < 0 || ::chdir(cwd.c_str()) != 0) _exit(126);
    ::dup2(out_fd, STDOUT_FILENO);
    ::dup2(err_fd, STDERR_FILENO);
    ::unsetenv("HARNESS_FAULT");
    ::unsetenv("HARNESS_WORKER");
    ::execv(cargv[0], cargv.data());
    _exit(127);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  Result r;
  r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

using hx::testing::base64;

class TokenizedTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::path(::testing::TempDir()) /
           ("hx_e2e_tok_" + std::to_string(::getpid()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    std::ofstream vocab(dir_ / "tok.model");
    for (int b = 0; b < 256; ++b) vocab << base64(std::string(1, char(b))) << " " << b << "\n";
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TEST_F(TokenizedTest, RunPretokenisesAlpacaForTheWorker) {
  std::ofstream(dir_ / "alpaca.json") << R"([{"instruction": "Say hi", "output": "hi there"},
    {"instruction": "Echo", "input": "abc", "output": "abc"}])";
  std::ofstream(dir_ / "spec.yaml")
      << "name: tok\nmodel: {preset: tiny}\ntokenizer: tok.model\nworkload: finetune\n"
         "data: {format: alpaca, path: alpaca.json, max_seq_len: 300}\n"
         "fixed: {batch_size: 2, max_steps: 1, warmup_steps: 0}\n";
  const Result r = harness({"run", "spec.yaml", "--db", (dir_ / "h.db").string()}, dir_);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("tokenised 2 examples"), std::string::npos) << r.err;
  bool found = false;
  for (const auto& entry : fs::recursive_directory_iterator(dir_ / "runs" / "tok")) {
    if (entry.path().filename() != "run.json") continue;
    const Json run = Json::parse(slurp(entry.path()));
    const std::string tokens = run.at("data").at("tokens_path");
    ASSERT_TRUE(fs::path(tokens).is_absolute());
    const Json examples = Json::parse(slurp(tokens));
    ASSERT_EQ(examples.size(), 2u);
    EXPECT_EQ(examples[0]["tokens"][0], 256);      // <|begin_of_text|>
    EXPECT_EQ(examples[0]["tokens"].back(), 257);  // <|end_of_text|>
    EXPECT_EQ(examples[0]["labels"][0], -100);
    found = true;
  }
  EXPECT_TRUE(found);
}

TEST_F(TokenizedTest, GenerateEncodesAndDecodes) {
  const Result r = harness(
      {"generate", "--tokenizer", "tok.model", "--prompt", "Hi", "--max-new-tokens", "3", "--json"},
      dir_);
  ASSERT_EQ(r.rc, 0) << r.err;
  const Json j = Json::parse(r.out);
  EXPECT_EQ(j.at("prompt_ids"), Json::parse("[256, 72, 105]"));
  EXPECT_EQ(j.at("new_ids").size(), 3u);
  EXPECT_TRUE(j.at("text").is_string());
  EXPECT_TRUE(j.contains("prefill_s"));
  EXPECT_TRUE(j.contains("decode_token_s"));
  // Without a tokenizer a text prompt is refused.
  EXPECT_EQ(harness({"generate", "--prompt", "Hi"}, dir_).rc, 2);
}

}  // namespace

TEST_F(TokenizedTest, GenerationsBeforeAndAfterAreEncodedHereAndDecodedHere) {
  std::ofstream(dir_ / "alpaca.json") << R"([{"instruction": "Say hi", "output": "hi there"}])";
  std::ofstream(dir_ / "spec.yaml")
      << "name: gen\nmodel: {preset: tiny}\ntokenizer: tok.model\nworkload: finetune\n"
         "data: {format: alpaca, path: alpaca.json, max_seq_len: 300}\n"
         "fixed: {batch_size: 1, max_steps: 2, warmup_steps: 0, generations: on,\n"
         "        generation_tokens: 6}\n"
         "matrix: {lora: [off]}\n"
         "tables: [{title: T, columns: [lora], rows: [peak_mem_mb]}]\n";
  const Result r = harness({"run", "spec.yaml", "--db", (dir_ / "h.db").string()}, dir_);
  ASSERT_EQ(r.rc, 0) << r.err;
  // The worker got the fixed prompts as ids: BOS, then the Alpaca prompt's bytes.
  for (const auto& entry : fs::recursive_directory_iterator(dir_ / "runs" / "gen")) {
    if (entry.path().filename() != "run.json") continue;
    const Json prompts = Json::parse(slurp(entry.path()))["data"]["prompt_tokens"];
    ASSERT_EQ(prompts.size(), 3u);
    EXPECT_EQ(prompts[0][0], 256);       // <|begin_of_text|>
    EXPECT_EQ(prompts[0][1], int('B'));  // "Below is an instruction ..."
  }
  // The report shows each prompt with its answers before and after.
  EXPECT_NE(r.out.find("## Generations before and after fine-tuning"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("1. Give three tips for staying healthy."), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("   - before: "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("   - after: "), std::string::npos) << r.out;
  const Result report = harness({"report", "spec.yaml", "--db", (dir_ / "h.db").string()}, dir_);
  ASSERT_EQ(report.rc, 0) << report.err;
  EXPECT_NE(report.out.find("3. Translate the sentence into French. (The weather is nice today.)"),
            std::string::npos)
      << report.out;
}
