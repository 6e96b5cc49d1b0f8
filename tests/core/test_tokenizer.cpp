// The tokenizers on small hand-made vocabularies (the real LLaMA vocabularies are Meta-licensed;
// tests/tokenizers/crosscheck.py checks them against the reference tokenizers from PyPI).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "model/tokenizers/tokenizer.h"
#include "model/tokenizers/tokenizer_bpe.h"
#include "tests/base64_util.h"

namespace hx {
namespace {

namespace fs = std::filesystem;
using Ids = std::vector<int64_t>;

// All 256 bytes (rank = byte value), then the given multi-byte tokens in rank order.
std::vector<std::string> byte_vocab(const std::vector<std::string>& extra) {
  std::vector<std::string> v;
  for (int b = 0; b < 256; ++b) v.emplace_back(1, static_cast<char>(b));
  v.insert(v.end(), extra.begin(), extra.end());
  return v;
}

// 256 "ab", 257 "bc", 258 "cd", 259 "aa", 260 "xyz", 261 " w", 262 "he", 263 "ll", 264 "hell",
// 265 "hello", 266 "12" (unused below), 267 "23", 268 "45", 269 "  " (two spaces)
const std::vector<std::string> kExtra = {"ab", "bc",   "cd",    "aa", "xyz", " w", "he",
                                         "ll", "hell", "hello", "12", "23",  "45", "  "};

class TokenizerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           ("hx_tokenizer_" + std::to_string(::getpid()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    tok_ = make_llama3_tokenizer(byte_vocab(kExtra));
    n_ = 256 + static_cast<int64_t>(kExtra.size());
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string write(const std::string& name, const std::string& bytes) const {
    const std::string path = (dir_ / name).string();
    std::ofstream(path, std::ios::binary) << bytes;
    return path;
  }
  Ids enc(std::string_view text, bool allow_special = false) const {
    return tok_->encode(text, false, false, allow_special);
  }

  fs::path dir_;
  std::unique_ptr<TextTokenizer> tok_;
  int64_t n_ = 0;
};

using testing::base64;

TEST_F(TokenizerTest, MergesByRank) {
  // ab (256) before cd (258); "abc" is no token, so ab + cd.
  EXPECT_EQ(enc("abcd"), (Ids{256, 258}));
  // With bc ranked first the same text is a + bc + d.
  const auto other = make_llama3_tokenizer(byte_vocab({"bc", "ab", "cd"}));
  EXPECT_EQ(other->encode("abcd", false, false), (Ids{'a', 256, 'd'}));
  // Equal ranks: the leftmost pair first.
  EXPECT_EQ(enc("aaa"), (Ids{259, 'a'}));
  EXPECT_EQ(enc("aaaa"), (Ids{259, 259}));
  // Merges build "hell" then "hello" is found whole.
  EXPECT_EQ(enc("hello"), (Ids{265}));
  EXPECT_EQ(enc("hellx"), (Ids{264, 'x'}));
}

TEST_F(TokenizerTest, WholeTokensAreLookedUpBeforeMerging) {
  // "xyz" cannot be built by merges (no "xy", no "yz"), but the piece is a whole token.
  EXPECT_EQ(enc("xyz"), (Ids{260}));
  EXPECT_EQ(enc("xyzz"), (Ids{'x', 'y', 'z', 'z'}));
}

TEST_F(TokenizerTest, PreTokenisesWithTheLlama3Pattern) {
  EXPECT_EQ(enc("hello world"), (Ids{265, 261, 'o', 'r', 'l', 'd'}));
  // Digits in groups of at most three: "234" + "5", not 23 + 45.
  EXPECT_EQ(enc("2345"), (Ids{267, '4', '5'}));
  // "a  b": "a", " ", " b" (\s+(?!\S) leaves the last space to the word), so no "  " token.
  EXPECT_EQ(enc("a  b"), (Ids{'a', ' ', ' ', 'b'}));
  EXPECT_EQ(enc("a  "), (Ids{'a', 269}));
  EXPECT_EQ(enc(""), Ids{});
}

TEST_F(TokenizerTest, SpecialTokensAreTextUnlessAllowed) {
  EXPECT_EQ(tok_->vocab_size(), n_ + 256);
  EXPECT_EQ(tok_->bos_id(), n_);
  EXPECT_EQ(tok_->eos_id(), n_ + 1);
  EXPECT_EQ(tok_->stop_ids(), (Ids{n_ + 1, n_ + 9}));
  EXPECT_EQ(tok_->special_id("<|eot_id|>"), n_ + 9);
  EXPECT_EQ(tok_->special_id("<|start_header_id|>"), n_ + 6);
  EXPECT_EQ(tok_->special_id("<|reserved_special_token_250|>"), n_ + 255);
  EXPECT_EQ(tok_->special_id("<|reserved_special_token_251|>"), std::nullopt);
  EXPECT_EQ(tok_->special_id("eot_id"), std::nullopt);

  const std::string text = "x<|eot_id|>y";
  const Ids as_text = enc(text);
  EXPECT_TRUE(std::all_of(as_text.begin(), as_text.end(), [&](int64_t id) { return id < n_; }));
  EXPECT_EQ(tok_->decode(as_text), text);
  EXPECT_EQ(enc(text, true), (Ids{'x', n_ + 9, 'y'}));
  EXPECT_EQ(enc("<|begin_of_text|><|reserved_special_token_250|>", true), (Ids{n_, n_ + 255}));
  // Names that are not special tokens stay text even when allowed.
  EXPECT_EQ(enc("<|eot_id|", true), enc("<|eot_id|"));
  EXPECT_EQ(enc("<|nope|>", true), enc("<|nope|>"));
  EXPECT_EQ(enc("<|<|eot_id|>", true), (Ids{'<', '|', n_ + 9}));

  EXPECT_EQ(tok_->encode("ab", true, true), (Ids{n_, 256, n_ + 1}));
  EXPECT_EQ(tok_->encode("", true, false), (Ids{n_}));
  EXPECT_EQ(llama3_special_tokens().size(), 256u);
  EXPECT_EQ(llama3_special_tokens()[9], "<|eot_id|>");
  EXPECT_EQ(llama3_special_tokens()[10], "<|reserved_special_token_5|>");
}

TEST_F(TokenizerTest, DecodeIsTheReverse) {
  for (const std::string& s : std::vector<std::string>{"hello world", "  a\n\n\tb  ",
                                                       "naïve café — 東京 🙂‍↔️",
                                                       "2345 'll 'S", std::string("a\0b", 3)}) {
    EXPECT_EQ(tok_->decode(enc(s)), s) << s;
  }
  EXPECT_EQ(tok_->decode({n_ + 9, 'a'}), "<|eot_id|>a");
  // Bytes that are not UTF-8 are kept as bytes.
  EXPECT_EQ(tok_->decode({0xE6, 0x9D}), "\xE6\x9D");
  EXPECT_THROW(tok_->decode({-1}), std::invalid_argument);
  EXPECT_THROW(tok_->decode({n_ + 256}), std::invalid_argument);
}

TEST_F(TokenizerTest, RejectsInvalidUtf8) {
  EXPECT_THROW(enc("a\xFF"), std::invalid_argument);
  EXPECT_EQ(bpe::invalid_utf8_offset("ok é 🙂"), std::string_view::npos);
  EXPECT_EQ(bpe::invalid_utf8_offset("ab\xC3"), 2u);            // truncated
  EXPECT_EQ(bpe::invalid_utf8_offset("\xC0\xAF"), 0u);          // overlong
  EXPECT_EQ(bpe::invalid_utf8_offset("x\xED\xA0\x80"), 1u);     // surrogate
  EXPECT_EQ(bpe::invalid_utf8_offset("\xF4\x90\x80\x80"), 0u);  // above U+10FFFF
}

TEST(TokenizerBpe, SplitsLikeMetaTokenizerPy) {
  using V = std::vector<std::string_view>;
  // Runs longer than max_run are cut; the slice goes on across run changes.
  EXPECT_EQ(bpe::split_like_meta("aaaa  bb", 400000, 2), (V{"aa", "aa  bb"}));
  EXPECT_EQ(bpe::split_like_meta("abcdefg", 3, 25000), (V{"abc", "def", "g"}));
  EXPECT_EQ(bpe::split_like_meta("ééé", 2, 25000), (V{"éé", "é"}));  // code points, not bytes
  EXPECT_EQ(bpe::split_like_meta("", 400000, 25000), V{});
  // Python's isspace: U+001C..U+001F and U+0085 are spaces, U+FEFF and U+200B are not.
  EXPECT_TRUE(bpe::is_python_space(0x1C));
  EXPECT_TRUE(bpe::is_python_space(0x85));
  EXPECT_TRUE(bpe::is_python_space(0x3000));
  EXPECT_FALSE(bpe::is_python_space(0xFEFF));
  EXPECT_FALSE(bpe::is_python_space(0x200B));
  EXPECT_FALSE(bpe::is_python_space(0x180E));
  EXPECT_EQ(bpe::split_like_meta("\x1C\x1C\x1C", 400000, 2), (V{"\x1C\x1C", "\x1C"}));
}

TEST(TokenizerBpe, HeapMergeEqualsTiktokensLinearMerge) {
  std::mt19937 rng(1234);
  for (int vocab_round = 0; vocab_round < 20; ++vocab_round) {
    std::vector<std::string> extra;
    const std::string alphabet = "abcd";
    while (extra.size() < 60) {
      std::string t;
      const int len = 2 + static_cast<int>(rng() % 4);
      for (int k = 0; k < len; ++k) t += alphabet[rng() % alphabet.size()];
      if (std::find(extra.begin(), extra.end(), t) == extra.end()) extra.push_back(t);
    }
    bpe::RankMap ranks;
    const auto vocab = byte_vocab(extra);
    for (size_t i = 0; i < vocab.size(); ++i) ranks.emplace(vocab[i], static_cast<int32_t>(i));
    for (int piece_round = 0; piece_round < 50; ++piece_round) {
      std::string piece;
      const int len = 1 + static_cast<int>(rng() % 200);
      for (int k = 0; k < len; ++k) piece += alphabet[rng() % alphabet.size()];
      const auto linear = bpe::merge_piece(ranks, piece, SIZE_MAX);
      const auto heap = bpe::merge_piece(ranks, piece, 0);
      ASSERT_EQ(linear, heap) << piece;
      std::string joined;
      for (const int32_t r : heap) joined += vocab[static_cast<size_t>(r)];
      ASSERT_EQ(joined, piece);
    }
  }
}

TEST(TokenizerBpe, Base64) {
  std::string out;
  EXPECT_TRUE(bpe::base64_decode("aGVsbG8=", out));
  EXPECT_EQ(out, "hello");
  EXPECT_TRUE(bpe::base64_decode("IQ==", out));
  EXPECT_EQ(out, "!");
  EXPECT_FALSE(bpe::base64_decode("IQ=", out));
  EXPECT_FALSE(bpe::base64_decode("I=Q=", out));
  EXPECT_FALSE(bpe::base64_decode("@@@@", out));
}

TEST_F(TokenizerTest, LoadsTiktokenFiles) {
  // Lines in any order, as Meta's file could be; the ranks decide.
  const auto vocab = byte_vocab(kExtra);
  std::vector<std::string> lines;
  for (size_t i = 0; i < vocab.size(); ++i)
    lines.push_back(base64(vocab[i]) + " " + std::to_string(i));
  std::reverse(lines.begin(), lines.end());
  std::string file;
  for (const auto& l : lines) file += l + "\n";
  const std::string path = write("llama3.model", file);
  EXPECT_EQ(detect_tokenizer_format(path), TokenizerFormat::kTiktoken);
  const auto loaded = load_tokenizer(path);
  EXPECT_EQ(loaded->kind(), "llama3-bpe");
  EXPECT_EQ(loaded->vocab_size(), n_ + 256);
  for (const std::string s : {"hello world", "abcd", "xyz 2345 <|eot_id|>"})
    EXPECT_EQ(loaded->encode(s, true, true, true), tok_->encode(s, true, true, true)) << s;
}

void expect_invalid(const std::string& path, const std::string& fragment) {
  try {
    load_tokenizer(path);
    ADD_FAILURE() << path << " loaded";
  } catch (const std::invalid_argument& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find(path), std::string::npos) << what;
    EXPECT_NE(what.find(fragment), std::string::npos) << what;
  }
}

TEST_F(TokenizerTest, FormatErrorsNameTheFile) {
  expect_invalid((dir_ / "missing.model").string(), "cannot open");
  expect_invalid(write("empty.model", ""), "empty");
  expect_invalid(write("tokenizer.json", "{\"model\": {}}"), "tokenizer.json");
  expect_invalid(write("text.txt", "hello world\n"), "not a tokenizer file");
  expect_invalid(write("bad_b64.model", "YQ== 0\n@@@@ 1\n"), ":2: token is not base64");
  expect_invalid(write("bad_rank.model", "YQ== 0\nYg== x\n"), ":2: rank is not");
  expect_invalid(write("dup_rank.model", "YQ== 0\nYg== 0\n"), "rank 0 appears twice");
  expect_invalid(write("gap.model", "YQ== 0\nYg== 5\n"), "ranks must be 0..N-1");
  expect_invalid(write("dup_bytes.model", "YQ== 0\nYQ== 1\n"), "repeats the bytes");
  expect_invalid(write("no_bytes.model", "YQ== 0\n"), "byte 0x00 has no token");
  // Looks like a ModelProto, is not one.
  expect_invalid(write("broken_sp.model", std::string("\x0A\x07\x0A\x05hello\x12\xFF\xFF", 11)),
                 "SentencePiece");
}

// ---- SentencePiece: a tiny BPE ModelProto written by hand (protobuf wire format) ----

struct Proto {
  std::string b;
  void varint(uint64_t v) {
    while (v >= 0x80) b += static_cast<char>((v & 0x7F) | 0x80), v >>= 7;
    b += static_cast<char>(v);
  }
  void tag(int field, int wire) { varint(static_cast<uint64_t>(field) << 3 | wire); }
  Proto& num(int field, uint64_t v) { return tag(field, 0), varint(v), *this; }
  Proto& bytes(int field, const std::string& s) {
    return tag(field, 2), varint(s.size()), b += s, *this;
  }
  Proto& f32(int field, float f) {
    tag(field, 5);
    char raw[4];
    std::memcpy(raw, &f, 4);  // little-endian hosts
    b.append(raw, 4);
    return *this;
  }
};

std::string tiny_sentencepiece_model() {
  // ids: 0 <unk>, 1 <s>, 2 </s>, 3..258 <0x00>..<0xFF>, 259 ▁a, 260 ab, 261 ▁ab, 262 ▁, 263 a, 264
  // b
  Proto model;
  auto piece = [&](const std::string& s, float score, int type) {
    Proto p;
    p.bytes(1, s).f32(2, score).num(3, static_cast<uint64_t>(type));
    model.bytes(1, p.b);
  };
  piece("<unk>", 0, 2);
  piece("<s>", 0, 3);
  piece("</s>", 0, 3);
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    piece(name, 0, 6);
  }
  const std::vector<std::string> normal = {"\u2581a", "ab", "\u2581ab", "\u2581", "a", "b"};
  for (size_t i = 0; i < normal.size(); ++i) piece(normal[i], -static_cast<float>(i + 1), 1);
  Proto trainer;
  trainer.num(3, 2).num(4, 259 + normal.size()).num(35, 1);  // BPE, vocab_size, byte_fallback
  model.bytes(2, trainer.b);
  Proto normalizer;
  normalizer.bytes(1, "identity").num(3, 1).num(4, 0).num(5, 1);
  model.bytes(3, normalizer.b);
  return model.b;
}

TEST_F(TokenizerTest, SentencePieceModels) {
  const std::string path = write("llama2.model", tiny_sentencepiece_model());
  EXPECT_EQ(detect_tokenizer_format(path), TokenizerFormat::kSentencePiece);
  const auto sp = load_tokenizer(path);
  EXPECT_EQ(sp->kind(), "sentencepiece");
  EXPECT_EQ(sp->vocab_size(), 265);
  EXPECT_EQ(sp->bos_id(), 1);
  EXPECT_EQ(sp->eos_id(), 2);
  EXPECT_EQ(sp->stop_ids(), Ids{2});
  EXPECT_EQ(sp->special_id("</s>"), 2);
  EXPECT_EQ(sp->special_id("ab"), std::nullopt);
  // "▁ab": ▁a (score -1) before ab (-2), then ▁ab.
  EXPECT_EQ(sp->encode("ab", false, false), Ids{261});
  EXPECT_EQ(sp->encode("ab", true, true), (Ids{1, 261, 2}));
  EXPECT_EQ(sp->encode("ba", false, false), (Ids{262, 264, 263}));
  // Not in the vocabulary: byte fallback (byte + 3).
  EXPECT_EQ(sp->encode("c", false, false), (Ids{262, 'c' + 3}));
  EXPECT_EQ(sp->encode("", false, false), Ids{});
  EXPECT_EQ(sp->encode("", true, false), Ids{1});
  // </s> in text is text unless allowed.
  EXPECT_EQ(sp->encode("a</s>", false, false, true), (Ids{259, 2}));
  const Ids as_text = sp->encode("a</s>", false, false);
  EXPECT_EQ(std::count(as_text.begin(), as_text.end(), 2), 0);
  for (const std::string s : {"ab ba c", "ab  \n\tb", "é🙂"})
    EXPECT_EQ(sp->decode(sp->encode(s, false, false)), s) << s;
  EXPECT_THROW(sp->decode({265}), std::invalid_argument);
  EXPECT_THROW(sp->encode("\xFF", false, false), std::invalid_argument);
}

// Found by fuzzing: a unigram model with an empty piece made libsentencepiece throw its trie
// builder's exception (Darts: "failed to insert key: zero-length key") out of Load, past the
// loader: `harness` printed it without the file and exited 1.
// And (crash-cannot-encode.model) a model with a piece repeated under another type loaded, then
// failed to encode any text with an "a" ("all normalized characters are not consumed"): now
// refused at load.
TEST_F(TokenizerTest, SentencePieceLibraryExceptionsNameTheFile) {
  const std::string corpus =
      std::string(HX_SOURCE_DIR) + "/tests/fuzz/corpus/fuzz_tokenizer_sentencepiece/";
  for (const auto& [file, message] :
       {std::pair{"crash-empty-piece.model", ": not a loadable SentencePiece model: "},
        std::pair{"crash-cannot-encode.model",
                  ": the SentencePiece model has the piece \"\u2581a\" twice (ids 3 and 5)"}}) {
    const std::string path = corpus + file;
    try {
      load_sentencepiece_tokenizer(path);
      ADD_FAILURE() << path << " loaded";
    } catch (const std::invalid_argument& e) {
      EXPECT_EQ(std::string(e.what()).rfind(path + message, 0), 0U) << e.what();
    }
  }
}

// Found by fuzzing (tests/fuzz/corpus/fuzz_tokenizer_sentencepiece/crash-no-eos.model): a model
// without </s> loaded, and the first example to encode (BOS + text + EOS) failed with "this
// tokenizer has no EOS token", naming neither the file nor the tokenizer.
TEST_F(TokenizerTest, SentencePieceModelWithoutBosOrEosIsRefused) {
  std::string no_eos = tiny_sentencepiece_model();
  no_eos.replace(no_eos.find("</s>"), 4, "</t>");  // same length: the protobuf stays well-formed
  expect_invalid(write("no_eos.model", no_eos), "has no EOS piece");
  std::string no_bos = tiny_sentencepiece_model();
  no_bos.replace(no_bos.find("<s>"), 3, "<t>");
  expect_invalid(write("no_bos.model", no_bos), "has no BOS piece");
}

}  // namespace
}  // namespace hx
