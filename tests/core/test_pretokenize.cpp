// Pre-tokenisation of Alpaca data in the parent (harness/plan/pretokenize.h) with a tiny hand-made
// tiktoken-format vocabulary, and the spec's `tokenizer:` / `allow_special:` keys.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "harness/plan/pretokenize.h"
#include "harness/plan/spec.h"
#include "model/tokenizers/tokenizer.h"
#include "tests/base64_util.h"
#include "tests/core/temp_dir_test.h"

namespace hx {
namespace {

namespace fs = std::filesystem;
using Ids = std::vector<int64_t>;

// test_core links the tokenizers: the spec check and the runner load through this loader (the
// `harness` executable registers the same one in cli_generate.cpp).
const bool kLoader = (set_tokenizer_loader(&load_tokenizer), true);

using testing::base64;

// All 256 bytes (rank = byte value), then `extra` multi-byte tokens in rank order.
std::vector<std::string> byte_vocab(const std::vector<std::string>& extra) {
  std::vector<std::string> v;
  for (int b = 0; b < 256; ++b) v.emplace_back(1, static_cast<char>(b));
  v.insert(v.end(), extra.begin(), extra.end());
  return v;
}

// A tokenizer.model in tiktoken format ("base64 rank" lines).
std::string tiktoken_file(const std::vector<std::string>& vocab) {
  std::string out;
  for (size_t i = 0; i < vocab.size(); ++i)
    out += base64(vocab[i]) + " " + std::to_string(i) + "\n";
  return out;
}

Ids bytes_of(const std::string& text) {
  Ids ids;
  for (unsigned char c : text) ids.push_back(c);
  return ids;
}

Ids cat(std::initializer_list<Ids> parts) {
  Ids out;
  for (const Ids& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

Ids masked(size_t n) { return Ids(n, kIgnoreIndex); }

class PretokenizeTest : public testing::TempDirTest {
 protected:
  PretokenizeTest() : TempDirTest("pretokenize") {}

  std::string write(const std::string& name, const std::string& bytes) const {
    const fs::path path = dir_ / name;
    fs::create_directories(path.parent_path());
    std::ofstream(path, std::ios::binary) << bytes;
    return path.string();
  }
  std::string error_of_spec(const std::string& text) const {
    try {
      load_spec(write("spec.yaml", text));
    } catch (const std::invalid_argument& e) {
      return e.what();
    }
    ADD_FAILURE() << "no error for:\n" << text;
    return "";
  }
};

const char* kAlpaca = R"([
  {"instruction": "Say ok", "output": "ok"},
  {"instruction": "Echo", "input": "ab", "output": "abab"},
  {"instruction": "third", "output": "x"}
])";

TEST_F(PretokenizeTest, AlpacaPromptIsStanfordTemplate) {
  EXPECT_EQ(alpaca_prompt({"Say ok", "", "ok"}),
            "Below is an instruction that describes a task. Write a response that appropriately "
            "completes the request.\n\n### Instruction:\nSay ok\n\n### Response:\n");
  EXPECT_EQ(alpaca_prompt({"Echo", "ab", "abab"}),
            "Below is an instruction that describes a task, paired with an input that provides "
            "further context. Write a response that appropriately completes the request.\n\n"
            "### Instruction:\nEcho\n\n### Input:\nab\n\n### Response:\n");
}

TEST_F(PretokenizeTest, BosPromptResponseEosWithPromptMasked) {
  // 256 "ok", 257 "ab"; specials from 258: BOS <|begin_of_text|> 258, EOS <|end_of_text|> 259.
  const auto tok = make_llama3_tokenizer(byte_vocab({"ok", "ab"}));
  ASSERT_EQ(tok->bos_id(), 258);
  ASSERT_EQ(tok->eos_id(), 259);
  const AlpacaRecord record{"Say ok", "", "ok"};
  const std::string prompt = alpaca_prompt(record);
  const Example ex = make_text_example(record, *tok, 0, false);
  const Ids prompt_ids = tok->encode(prompt, false, false);
  // The prompt holds "ok" too ("Say ok"): encoded with the merge.
  EXPECT_EQ(std::count(prompt_ids.begin(), prompt_ids.end(), 256), 1);
  EXPECT_EQ(ex.tokens, cat({{258}, prompt_ids, {256}, {259}}));
  EXPECT_EQ(ex.labels, cat({masked(1 + prompt_ids.size()), {256}, {259}}));

  const AlpacaRecord with_input{"Echo", "ab", "abab"};
  const Example ex2 = make_text_example(with_input, *tok, 0, false);
  const Ids prompt2 = tok->encode(alpaca_prompt(with_input), false, false);
  EXPECT_EQ(ex2.tokens, cat({{258}, prompt2, {257, 257}, {259}}));
  EXPECT_EQ(ex2.labels, cat({masked(1 + prompt2.size()), {257, 257}, {259}}));
}

TEST_F(PretokenizeTest, TruncatesToMaxSeqLen) {
  const auto tok = make_llama3_tokenizer(byte_vocab({}));  // bytes only: BOS 256, EOS 257
  const AlpacaRecord record{"Echo", "", "hello"};
  const Ids prompt = bytes_of(alpaca_prompt(record));
  const int64_t cut = static_cast<int64_t>(1 + prompt.size() + 2);  // BOS prompt "he"
  const Example ex = make_text_example(record, *tok, cut, false);
  EXPECT_EQ(ex.tokens, cat({{256}, prompt, bytes_of("he")}));
  EXPECT_EQ(ex.labels, cat({masked(1 + prompt.size()), bytes_of("he")}));
  // Cut inside the prompt: no label left (the worker's DataSource drops such examples).
  const Example short_ex = make_text_example(record, *tok, 5, false);
  EXPECT_EQ(short_ex.tokens.size(), 5u);
  EXPECT_EQ(short_ex.labels, masked(5));
  // Long enough: untouched, EOS kept.
  const Example whole = make_text_example(record, *tok, 10000, false);
  EXPECT_EQ(whole.tokens.back(), 257);
  EXPECT_EQ(whole.labels.back(), 257);
}

TEST_F(PretokenizeTest, AllowSpecialEncodesSpecialNames) {
  const auto tok = make_llama3_tokenizer(byte_vocab({}));
  const AlpacaRecord record{"Stop", "", "done<|eot_id|>"};
  const auto eot = tok->special_id("<|eot_id|>");
  ASSERT_TRUE(eot.has_value());
  const Example plain = make_text_example(record, *tok, 0, false);
  EXPECT_EQ(std::count(plain.tokens.begin(), plain.tokens.end(), *eot), 0);
  const Example special = make_text_example(record, *tok, 0, true);
  EXPECT_EQ(special.tokens[special.tokens.size() - 2], *eot);
  EXPECT_EQ(special.labels[special.labels.size() - 2], *eot);
}

TEST_F(PretokenizeTest, WritesTheTokenFileTheWorkerReads) {
  const std::string data = write("alpaca.json", kAlpaca);
  const std::string vocab = write("tokenizer.model", tiktoken_file(byte_vocab({"ok"})));
  const auto tok = load_tokenizer(vocab);
  const std::string out = (dir_ / "tokens.json").string();
  EXPECT_EQ(pretokenize_alpaca(data, 2, *tok, 0, false, out), 2u);
  const std::vector<Example> back = read_token_examples(out);
  ASSERT_EQ(back.size(), 2u);
  const auto records = read_alpaca(data, 2);
  for (size_t i = 0; i < back.size(); ++i) {
    const Example want = make_text_example(records[i], *tok, 0, false);
    EXPECT_EQ(back[i].tokens, want.tokens) << i;
    EXPECT_EQ(back[i].labels, want.labels) << i;
  }
  // The format is the documented one: a JSON list of {tokens, labels}.
  EXPECT_EQ(examples_to_json({{{1, 2}, {-100, 2}}}),
            "[\n{\"tokens\":[1,2],\"labels\":[-100,2]}\n]\n");
  write("bad.json", R"([{"tokens": [1, 2], "labels": [1]}])");
  EXPECT_THROW(read_token_examples((dir_ / "bad.json").string()), std::invalid_argument);
}

// Found with the fuzzing of the other JSON readers: a number beyond double (1e999) is nlohmann's
// out_of_range, not a parse_error, and escaped as "error: [json.exception.out_of_range.406] ...",
// exit 1, without the file.
TEST_F(PretokenizeTest, AlpacaNumberOverflowNamesTheFile) {
  const std::string data = write("alpaca.json", R"([{"instruction": "a", "output": 1e999}])");
  try {
    read_alpaca(data, 0);
    ADD_FAILURE() << "no error";
  } catch (const std::invalid_argument& e) {
    EXPECT_EQ(std::string(e.what()).rfind(data + ": not valid JSON: ", 0), 0U) << e.what();
  }
}

TEST_F(PretokenizeTest, SpecTokenizerResolvedHashedAndChecked) {
  write("data/alpaca.json", kAlpaca);
  write("tok/tokenizer.model", tiktoken_file(byte_vocab({})));  // 512 tokens: fits tiny (512)
  const std::string base =
      "name: t\nmodel: {preset: tiny}\nworkload: finetune\n"
      "data: {format: alpaca, path: data/alpaca.json}\n";
  const Spec plain = load_spec(write("plain.yaml", base));
  EXPECT_EQ(plain.tokenizer, "");
  EXPECT_FALSE(plain.allow_special);
  const Spec spec = load_spec(write("spec.yaml", base + "tokenizer: tok/tokenizer.model\n"
                                                        "allow_special: true\n"));
  EXPECT_TRUE(fs::path(spec.tokenizer).is_absolute());
  EXPECT_EQ(fs::path(spec.tokenizer), fs::canonical(dir_ / "tok/tokenizer.model"));
  EXPECT_EQ(spec.tokenizer_as_written, "tok/tokenizer.model");
  EXPECT_TRUE(spec.allow_special);
  // The tokenizer is part of a run's identity.
  EXPECT_NE(expand(plain).at(0).run_id, expand(spec).at(0).run_id);
  const Spec no_special = load_spec(write("spec2.yaml", base + "tokenizer: tok/tokenizer.model\n"));
  EXPECT_NE(expand(no_special).at(0).run_id, expand(spec).at(0).run_id);
}

// data: {format: tokens}: the token file is read when the spec is, so that a bad one names its
// line; a device is refused before it is read (it would never end).
TEST_F(PretokenizeTest, TokenDataIsCheckedWhenTheSpecIsRead) {
  write("data/tokens.json", R"([{"tokens": [1, 5, 9], "labels": [-100, 5, 9]}])");
  write("data/bad.json", R"([{"tokens": [1, 5, 9], "labels": [5]}])");
  const std::string base = "name: t\nmodel: {preset: tiny}\nworkload: finetune\n";
  const std::string spec = (dir_ / "spec.yaml").string();
  EXPECT_NO_THROW(
      load_spec(write("ok.yaml", base + "data: {format: tokens, path: data/tokens.json}\n")));
  EXPECT_EQ(error_of_spec(base + "data: {format: tokens, path: data/bad.json}\n")
                .rfind(spec + ":4: data.path: ", 0),
            0u);
  EXPECT_EQ(error_of_spec(base + "data: {format: tokens, path: /dev/zero}\n"),
            spec + ":4: data.path: not a regular file: \"/dev/zero\"");
  EXPECT_EQ(error_of_spec(base + "data: {format: tokens}\n"),
            spec + ":4: data.path: required for format tokens");
  EXPECT_EQ(error_of_spec(base + "data: {format: random, seq_len: 8, path: data/tokens.json}\n"),
            spec + ":4: data.path: only applies to formats alpaca and tokens");
}

TEST_F(PretokenizeTest, SpecTokenizerErrors) {
  write("data/alpaca.json", kAlpaca);
  write("big.model", tiktoken_file(byte_vocab({"ok"})));  // 513 tokens
  write("junk.model", "not a tokenizer\n");
  const std::string base =
      "name: t\nmodel: {preset: tiny}\nworkload: finetune\n"
      "data: {format: alpaca, path: data/alpaca.json}\n";
  const std::string spec = (dir_ / "spec.yaml").string();

  EXPECT_EQ(error_of_spec(base + "tokenizer: missing.model\n")
                .rfind(spec + ":5: tokenizer: file not found: \"missing.model\"", 0),
            0u);
  EXPECT_EQ(error_of_spec(base + "tokenizer: big.model\n"),
            spec +
                ":5: tokenizer: its vocabulary (513 tokens) does not fit the model's "
                "(vocab_size 512)");
  EXPECT_EQ(error_of_spec(base + "tokenizer: junk.model\n").rfind(spec + ":5: tokenizer: ", 0), 0u);
  EXPECT_EQ(error_of_spec(base + "tokenizer: big.model\nallow_special: maybe\n"),
            spec + ":6: allow_special: expected true or false, got \"maybe\"");
  // A model with a larger vocabulary takes it.
  EXPECT_NO_THROW(load_spec(write("ok.yaml",
                                  "name: t\nmodel: {preset: small}\n"
                                  "workload: finetune\n"
                                  "data: {format: alpaca, path: data/alpaca.json}\n"
                                  "tokenizer: big.model\n")));
}

}  // namespace
}  // namespace hx
