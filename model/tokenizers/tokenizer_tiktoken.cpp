// LLaMA 3: tiktoken-style byte-level BPE, as Meta's tokenizer.py runs it.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstdio>
#include <fstream>
#include <limits>
#include <memory>
#include <queue>
#include <sstream>
#include <stdexcept>
#include <string>
#include <unordered_map>

#include "model/tokenizers/tokenizer.h"
#include "model/tokenizers/tokenizer_bpe.h"

namespace hx {

const char* const kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

namespace {

// Meta's pattern for PCRE2 (UTF + UCP), spelled so that it classifies characters as tiktoken's
// regex engine (Rust regex, Unicode 16) does:
//  - \s is Unicode White_Space there; PCRE2's \s also counts U+180E. So \s is the White_Space
//    set, written out (stable since Unicode 6.3).
//  - PCRE2 10.42 knows Unicode 14: \p{N} gets the decimal digits added in Unicode 15 and 16
//    (Garay, Myanmar Pao, Sunuwar, Kawi, Gurung Khema, Kirat Rai, outlined digits, Kaktovik,
//    Nag Mundari, Ol Onal), and \p{L} the letters added there (CJK extensions H and I, Egyptian
//    hieroglyphs extended-A, Kawi, Garay, Tulu-Tigalari, ...). A sweep of every code point against
//    PyPI tiktoken 0.14 (CROSSCHECK_ALL_CODE_POINTS=1 tests/tokenizers/crosscheck.py, whose
//    byte-pair vocabulary shows every cut in the ids) found exactly these classes different.
constexpr const char* kWs =
    R"(\t\n\x0B\f\r\x20\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})";
constexpr const char* kNum =
    R"(\p{N}\x{10D40}-\x{10D49}\x{116D0}-\x{116E3}\x{11BF0}-\x{11BF9}\x{11F50}-\x{11F59})"
    R"(\x{16130}-\x{16139}\x{16D70}-\x{16D79}\x{1CCF0}-\x{1CCF9}\x{1D2C0}-\x{1D2D3})"
    R"(\x{1E4F0}-\x{1E4F9}\x{1E5F1}-\x{1E5FA})";
constexpr const char* kLetter =
    R"(\p{L}\x{1C89}-\x{1C8A}\x{A7CB}-\x{A7CD}\x{A7DA}-\x{A7DC}\x{105C0}-\x{105F3})"
    R"(\x{10D4A}-\x{10D65}\x{10D6F}-\x{10D85}\x{10EC2}-\x{10EC4}\x{1123F}-\x{11240})"
    R"(\x{11380}-\x{11389}\x{1138B}\x{1138E}\x{11390}-\x{113B5}\x{113B7}\x{113D1}\x{113D3})"
    R"(\x{11BC0}-\x{11BE0}\x{11F02}\x{11F04}-\x{11F10}\x{11F12}-\x{11F33}\x{1342F})"
    R"(\x{13441}-\x{13446}\x{13460}-\x{143FA}\x{16100}-\x{1611D}\x{16D40}-\x{16D6C}\x{18CFF})"
    R"(\x{1B132}\x{1B155}\x{1DF25}-\x{1DF2A}\x{1E030}-\x{1E06D}\x{1E4D0}-\x{1E4EB})"
    R"(\x{1E5D0}-\x{1E5ED}\x{1E5F0}\x{2B739}\x{2EBF0}-\x{2EE5D}\x{31350}-\x{323AF})";

std::string llama3_pcre2_pattern() {
  const std::string ws = kWs, num = kNum, letter = kLetter;
  return R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n)" + letter + num + "]?[" + letter + "]+|[" + num +
         R"(]{1,3}| ?[^)" + ws + letter + num + R"(]+[\r\n]*|[)" + ws + R"(]*[\r\n]+|[)" + ws +
         R"(]+(?![^)" + ws + R"(])|[)" + ws + "]+";
}

class Pcre2Regex {
 public:
  explicit Pcre2Regex(const std::string& pattern) {
    int error = 0;
    PCRE2_SIZE offset = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                          PCRE2_UTF | PCRE2_UCP, &error, &offset, nullptr);
    if (code_ == nullptr) {
      std::array<PCRE2_UCHAR, 256> message{};
      pcre2_get_error_message(error, message.data(), message.size());
      throw std::logic_error("tokenizer pattern does not compile at " + std::to_string(offset) +
                             ": " + reinterpret_cast<const char*>(message.data()));
    }
    pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);  // falls back to the interpreter if no JIT
  }
  ~Pcre2Regex() { pcre2_code_free(code_); }
  Pcre2Regex(const Pcre2Regex&) = delete;
  Pcre2Regex& operator=(const Pcre2Regex&) = delete;

  // Calls f(match) for every match, left to right (tiktoken's find_iter). `text` is valid UTF-8.
  template <class F>
  void for_each_match(std::string_view text, F&& f) const {
    // One set per thread, reused: a JIT stack per call costs a mapping each time.
    struct Resources {
      pcre2_match_data* data = pcre2_match_data_create(1, nullptr);  // the whole match only
      pcre2_match_context* context = pcre2_match_context_create(nullptr);
      pcre2_jit_stack* stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
      Resources() {
        if (data == nullptr || context == nullptr) throw std::bad_alloc();
        if (stack != nullptr) pcre2_jit_stack_assign(context, nullptr, stack);
      }
      ~Resources() {
        pcre2_match_data_free(data);
        pcre2_match_context_free(context);
        pcre2_jit_stack_free(stack);
      }
    };
    thread_local Resources r;
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    size_t start = 0;
    while (start < text.size()) {
      // The text was checked once; checking again at every match would be quadratic.
      const int rc =
          pcre2_match(code_, subject, text.size(), start, PCRE2_NO_UTF_CHECK, r.data, r.context);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) {
        std::array<PCRE2_UCHAR, 256> message{};
        pcre2_get_error_message(rc, message.data(), message.size());
        throw std::runtime_error(std::string("tokenizer pattern: ") +
                                 reinterpret_cast<const char*>(message.data()));
      }
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(r.data);
      const size_t begin = ov[0], end = ov[1];
      if (end > begin) {
        f(text.substr(begin, end - begin));
        start = end;
      } else {  // an empty match (not possible with this pattern): step over one character
        start = begin + 1;
        while (start < text.size() && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80)
          ++start;
      }
    }
  }

 private:
  pcre2_code* code_ = nullptr;
};

const Pcre2Regex& llama3_regex() {
  static const Pcre2Regex regex(llama3_pcre2_pattern());
  return regex;
}

class Llama3Tokenizer final : public TextTokenizer {
 public:
  explicit Llama3Tokenizer(std::vector<std::string> token_bytes) : tokens_(std::move(token_bytes)) {
    if (tokens_.size() > static_cast<size_t>(INT32_MAX) - 512)
      throw std::invalid_argument("too many tokens");
    ranks_.reserve(tokens_.size() * 2);
    for (size_t i = 0; i < tokens_.size(); ++i) {
      if (tokens_[i].empty())
        throw std::invalid_argument("token " + std::to_string(i) + " is empty");
      if (!ranks_.emplace(tokens_[i], static_cast<int32_t>(i)).second)
        throw std::invalid_argument("token " + std::to_string(i) + " repeats the bytes of token " +
                                    std::to_string(ranks_.find(tokens_[i])->second));
    }
    for (int b = 0; b < 256; ++b) {
      if (ranks_.find(std::string(1, static_cast<char>(b))) == ranks_.end()) {
        char hex[8];
        std::snprintf(hex, sizeof hex, "0x%02X", b);
        throw std::invalid_argument(std::string("not a byte-level vocabulary: byte ") + hex +
                                    " has no token");
      }
    }
    const auto& names = llama3_special_tokens();
    for (size_t i = 0; i < names.size(); ++i)
      specials_.emplace(names[i], static_cast<int64_t>(tokens_.size() + i));
  }

  std::vector<int64_t> encode(std::string_view text, bool bos, bool eos,
                              bool allow_special) const override {
    if (const size_t bad = bpe::invalid_utf8_offset(text); bad != std::string_view::npos)
      throw std::invalid_argument("text is not valid UTF-8 (byte offset " + std::to_string(bad) +
                                  ")");
    std::vector<int64_t> ids;
    ids.reserve(text.size() / 3 + 2);
    if (bos) ids.push_back(bos_id());
    for (std::string_view part : bpe::split_like_meta(text)) {
      if (!allow_special) {
        encode_ordinary(part, ids);
        continue;
      }
      // tiktoken with allowed_special="all": the leftmost special-token name, then the text
      // before it as ordinary text. (No name is a prefix of another.)
      size_t from = 0;
      for (size_t at = part.find("<|"); at != std::string_view::npos;
           at = part.find("<|", at + 1)) {
        const size_t close = part.find("|>", at + 2);
        if (close == std::string_view::npos) break;
        const auto it = specials_.find(part.substr(at, close + 2 - at));
        if (it == specials_.end()) continue;
        encode_ordinary(part.substr(from, at - from), ids);
        ids.push_back(it->second);
        from = close + 2;
        at = close + 1;
      }
      encode_ordinary(part.substr(from), ids);
    }
    if (eos) ids.push_back(eos_id());
    return ids;
  }

  std::string decode(const std::vector<int64_t>& ids) const override {
    std::string out;
    const auto& names = llama3_special_tokens();
    for (const int64_t id : ids) {
      if (id >= 0 && id < static_cast<int64_t>(tokens_.size())) {
        out += tokens_[static_cast<size_t>(id)];
      } else if (id >= 0 && id < vocab_size()) {
        out += names[static_cast<size_t>(id) - tokens_.size()];
      } else {
        throw std::invalid_argument("token id " + std::to_string(id) + " is outside [0, " +
                                    std::to_string(vocab_size()) + ")");
      }
    }
    return out;
  }

  int64_t bos_id() const override { return base() + 0; }  // <|begin_of_text|>
  int64_t eos_id() const override { return base() + 1; }  // <|end_of_text|>
  int64_t vocab_size() const override {
    return base() + static_cast<int64_t>(llama3_special_tokens().size());
  }
  std::vector<int64_t> stop_ids() const override { return {base() + 1, base() + 9}; }
  std::optional<int64_t> special_id(std::string_view name) const override {
    const auto it = specials_.find(name);
    if (it == specials_.end()) return std::nullopt;
    return it->second;
  }
  std::string_view kind() const override { return "llama3-bpe"; }

 private:
  int64_t base() const { return static_cast<int64_t>(tokens_.size()); }

  void encode_ordinary(std::string_view text, std::vector<int64_t>& ids) const {
    if (text.empty()) return;
    llama3_regex().for_each_match(text, [&](std::string_view piece) {
      if (const auto it = ranks_.find(piece); it != ranks_.end()) {
        ids.push_back(it->second);  // a whole token: looked up before any merging
        return;
      }
      for (const int32_t rank : bpe::merge_piece(ranks_, piece)) ids.push_back(rank);
    });
  }

  std::vector<std::string> tokens_;  // bytes by rank
  bpe::RankMap ranks_;
  std::unordered_map<std::string, int64_t, bpe::StringHash, std::equal_to<>> specials_;
};

}  // namespace

const std::vector<std::string>& llama3_special_tokens() {
  static const std::vector<std::string> names = [] {
    // Meta's llama3/tokenizer.py: num_reserved_special_tokens = 256.
    std::vector<std::string> v = {
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|reserved_special_token_0|>",
        "<|reserved_special_token_1|>",
        "<|reserved_special_token_2|>",
        "<|reserved_special_token_3|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|reserved_special_token_4|>",
        "<|eot_id|>",
    };
    for (int i = 5; i < 256 - 5; ++i)
      v.push_back("<|reserved_special_token_" + std::to_string(i) + "|>");
    return v;
  }();
  return names;
}

std::unique_ptr<TextTokenizer> make_llama3_tokenizer(std::vector<std::string> token_bytes) {
  return std::make_unique<Llama3Tokenizer>(std::move(token_bytes));
}

std::unique_ptr<TextTokenizer> load_llama3_tokenizer(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::invalid_argument(path + ": cannot open tokenizer file");
  std::vector<std::string> tokens;
  std::vector<bool> seen;
  std::string line, bytes;
  size_t line_no = 0;
  auto fail = [&](const std::string& why) {
    throw std::invalid_argument(path + ":" + std::to_string(line_no) + ": " + why +
                                " (expected tiktoken BPE lines \"<base64> <rank>\")");
  };
  // Lines in any order; empty lines are skipped (as tiktoken's load_tiktoken_bpe does).
  std::vector<std::pair<int64_t, std::string>> entries;
  while (std::getline(in, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    const size_t space = line.find(' ');
    if (space == std::string::npos || space == 0) fail("no \"<base64> <rank>\" pair");
    const std::string_view rank_text = std::string_view(line).substr(space + 1);
    if (rank_text.empty() || rank_text.size() > 10 ||
        !std::all_of(rank_text.begin(), rank_text.end(),
                     [](char c) { return c >= '0' && c <= '9'; }))
      fail("rank is not a non-negative integer");
    const int64_t rank = std::stoll(std::string(rank_text));
    if (!bpe::base64_decode(std::string_view(line).substr(0, space), bytes) || bytes.empty())
      fail("token is not base64");
    entries.emplace_back(rank, bytes);
  }
  if (entries.empty()) throw std::invalid_argument(path + ": no tokens in tiktoken BPE file");
  tokens.resize(entries.size());
  seen.assign(entries.size(), false);
  for (auto& [rank, token] : entries) {
    if (rank >= static_cast<int64_t>(entries.size()))
      throw std::invalid_argument(path + ": rank " + std::to_string(rank) + " with " +
                                  std::to_string(entries.size()) +
                                  " tokens (ranks must be 0..N-1)");
    if (seen[static_cast<size_t>(rank)])
      throw std::invalid_argument(path + ": rank " + std::to_string(rank) + " appears twice");
    seen[static_cast<size_t>(rank)] = true;
    tokens[static_cast<size_t>(rank)] = std::move(token);
  }
  try {
    return make_llama3_tokenizer(std::move(tokens));
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(path + ": " + e.what());
  }
}

namespace bpe {

std::vector<int32_t> merge_piece(const RankMap& ranks, std::string_view piece, size_t heap_above) {
  constexpr int32_t kNone = std::numeric_limits<int32_t>::max();
  auto rank_of = [&](size_t begin, size_t end) -> int32_t {
    const auto it = ranks.find(piece.substr(begin, end - begin));
    return it == ranks.end() ? kNone : it->second;
  };
  auto byte_rank = [&](size_t begin, size_t end) -> int32_t {
    const int32_t r = rank_of(begin, end);
    if (r == kNone) throw std::logic_error("BPE part is not a token");
    return r;
  };
  const size_t n = piece.size();
  std::vector<int32_t> out;
  if (n == 0) return out;
  if (n == 1) return {byte_rank(0, 1)};

  if (n <= heap_above) {
    // tiktoken's _byte_pair_merge: parts as (start, rank of the pair starting here).
    std::vector<std::pair<size_t, int32_t>> parts;
    parts.reserve(n + 1);
    for (size_t i = 0; i + 1 < n; ++i) parts.emplace_back(i, rank_of(i, i + 2));
    parts.emplace_back(n - 1, kNone);
    parts.emplace_back(n, kNone);
    auto get_rank = [&](size_t i) {
      return i + 3 < parts.size() ? rank_of(parts[i].first, parts[i + 3].first) : kNone;
    };
    while (true) {
      int32_t best = kNone;
      size_t at = 0;
      for (size_t i = 0; i + 1 < parts.size(); ++i)
        if (parts[i].second < best) best = parts[i].second, at = i;
      if (best == kNone) break;
      if (at > 0) parts[at - 1].second = get_rank(at - 1);
      parts[at].second = get_rank(at);
      parts.erase(parts.begin() + static_cast<std::ptrdiff_t>(at) + 1);
    }
    out.reserve(parts.size() - 1);
    for (size_t i = 0; i + 1 < parts.size(); ++i)
      out.push_back(byte_rank(parts[i].first, parts[i + 1].first));
    return out;
  }

  // The same merges with a heap: nodes are named by their start byte, which a merge keeps for the
  // left part; an entry (rank, start) is acted on only if it still is the rank of that pair, so
  // the order (lowest rank, then leftmost) is tiktoken's.
  std::vector<size_t> next(n + 1), prev(n + 1);
  std::vector<char> alive(n + 1, 1);
  for (size_t i = 0; i <= n; ++i) next[i] = i + 1, prev[i] = i - 1;
  auto pair_rank = [&](size_t i) -> int32_t {  // the part at i with the part after it
    if (i >= n || next[i] >= n) return kNone;
    return rank_of(i, next[next[i]]);
  };
  using Entry = std::pair<int32_t, size_t>;
  std::priority_queue<Entry, std::vector<Entry>, std::greater<>> heap;
  for (size_t i = 0; i + 1 < n; ++i)
    if (const int32_t r = rank_of(i, i + 2); r != kNone) heap.emplace(r, i);
  while (!heap.empty()) {
    const auto [r, i] = heap.top();
    heap.pop();
    if (!alive[i] || pair_rank(i) != r) continue;
    const size_t gone = next[i];
    alive[gone] = 0;
    next[i] = next[gone];
    prev[next[i]] = i;
    if (const int32_t rr = pair_rank(i); rr != kNone) heap.emplace(rr, i);
    if (i > 0)
      if (const int32_t rl = pair_rank(prev[i]); rl != kNone) heap.emplace(rl, prev[i]);
  }
  for (size_t i = 0; i < n; i = next[i]) out.push_back(byte_rank(i, next[i]));
  return out;
}

size_t invalid_utf8_offset(std::string_view text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    char32_t cp;
    if (c >= 0xC2 && c <= 0xDF)
      len = 2, cp = c & 0x1F;
    else if (c >= 0xE0 && c <= 0xEF)
      len = 3, cp = c & 0x0F;
    else if (c >= 0xF0 && c <= 0xF4)
      len = 4, cp = c & 0x07;
    else
      return i;
    if (i + len > n) return i;
    for (size_t k = 1; k < len; ++k) {
      if ((s[i + k] & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF))
      return i;
    i += len;
  }
  return std::string_view::npos;
}

bool is_python_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

std::vector<std::string_view> split_like_meta(std::string_view text, size_t max_chunk,
                                              size_t max_run) {
  std::vector<std::string_view> out;
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  auto decode_at = [&](size_t i, size_t& len) -> char32_t {
    const unsigned char c = s[i];
    if (c < 0x80) return len = 1, c;
    if (c < 0xE0) return len = 2, ((c & 0x1F) << 6) | (s[i + 1] & 0x3F);
    if (c < 0xF0) return len = 3, ((c & 0x0F) << 12) | ((s[i + 1] & 0x3F) << 6) | (s[i + 2] & 0x3F);
    return len = 4, ((c & 0x07) << 18) | ((s[i + 1] & 0x3F) << 12) | ((s[i + 2] & 0x3F) << 6) |
                        (s[i + 3] & 0x3F);
  };
  size_t i = 0;
  while (i < text.size()) {  // one chunk of at most max_chunk code points
    size_t slice_start = i, run = 0, count = 0;
    bool run_is_space = false;
    while (i < text.size() && count < max_chunk) {
      size_t len;
      const bool space = is_python_space(decode_at(i, len));
      if (count == 0) run_is_space = space;
      if (space != run_is_space) {
        run = 1;
        run_is_space = space;
      } else if (++run > max_run) {
        out.push_back(text.substr(slice_start, i - slice_start));
        slice_start = i;
        run = 1;
      }
      i += len;
      ++count;
    }
    out.push_back(text.substr(slice_start, i - slice_start));
  }
  return out;
}

bool base64_decode(std::string_view in, std::string& out) {
  static const std::array<int8_t, 256> table = [] {
    std::array<int8_t, 256> t{};
    t.fill(-1);
    const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (int k = 0; k < 64; ++k)
      t[static_cast<unsigned char>(alphabet[k])] = static_cast<int8_t>(k);
    return t;
  }();
  out.clear();
  if (in.size() % 4 != 0) return false;
  out.reserve(in.size() / 4 * 3);
  for (size_t i = 0; i < in.size(); i += 4) {
    int v[4];
    int pad = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = in[i + k];
      if (c == '=') {
        if (i + 4 != in.size() || k < 2) return false;
        v[k] = 0;
        ++pad;
      } else {
        if (pad > 0) return false;
        v[k] = table[static_cast<unsigned char>(c)];
        if (v[k] < 0) return false;
      }
    }
    const uint32_t triple = (v[0] << 18) | (v[1] << 12) | (v[2] << 6) | v[3];
    out.push_back(static_cast<char>((triple >> 16) & 0xFF));
    if (pad < 2) out.push_back(static_cast<char>((triple >> 8) & 0xFF));
    if (pad < 1) out.push_back(static_cast<char>(triple & 0xFF));
  }
  return true;
}

}  // namespace bpe
}  // namespace hx
