#pragma once
// Tokenizers of the LLaMA families, without libtorch (the parent's `harness tokenize` uses them).
//  - LLaMA 3: tiktoken-style byte-level BPE read from Meta's `tokenizer.model` (lines of
//    "<base64 of the token's bytes> <rank>"), Meta's pre-tokenisation pattern (PCRE2), merges by
//    rank, and the 256 special tokens of Meta's tokenizer.py after the base tokens.
//  - LLaMA 2: a SentencePiece `tokenizer.model` (binary ModelProto) through libsentencepiece.
// Both encode exactly as Meta's reference tokenizers do (tests/tokenizers/crosscheck.py).
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace hx {

class TextTokenizer {
 public:
  virtual ~TextTokenizer() = default;
  // Ordinary text: special-token strings inside it are encoded as text unless allow_special
  // (LLaMA 3: the 256 <|...|> names; SentencePiece: control pieces <s> </s>, the text between
  // them encoded piece by piece). `text` must be valid UTF-8 (std::invalid_argument otherwise).
  // BOS/EOS only when asked; the empty text gives no tokens.
  virtual std::vector<int64_t> encode(std::string_view text, bool bos, bool eos,
                                      bool allow_special = false) const = 0;
  // The reverse of encode. LLaMA 3: the bytes of the tokens joined, special tokens as their
  // names, bytes that are not valid UTF-8 kept as they are. SentencePiece: as libsentencepiece
  // decodes (the dummy-prefix space dropped, control tokens as nothing, invalid byte sequences as
  // U+FFFD). Ids outside [0, vocab_size()) throw std::invalid_argument.
  virtual std::string decode(const std::vector<int64_t>& ids) const = 0;
  virtual int64_t bos_id() const = 0;
  virtual int64_t eos_id() const = 0;
  virtual int64_t vocab_size() const = 0;
  // Ids that end a generation: LLaMA 3 <|end_of_text|> and <|eot_id|>; LLaMA 2 </s>.
  virtual std::vector<int64_t> stop_ids() const = 0;
  // The id of a special/control token by name ("<|eot_id|>", "</s>"), if the vocabulary has it.
  virtual std::optional<int64_t> special_id(std::string_view name) const = 0;
  // "llama3-bpe" or "sentencepiece".
  virtual std::string_view kind() const = 0;
};

enum class TokenizerFormat { kSentencePiece, kTiktoken };

// Looks at the file's contents (not its name). Throws std::invalid_argument naming the file when
// it cannot be read or is neither format.
TokenizerFormat detect_tokenizer_format(const std::string& path);

// Detects the format of `path` (a SentencePiece ModelProto, or a tiktoken-style BPE file of
// "base64 rank" lines) and loads it; throws std::invalid_argument naming the file otherwise.
std::unique_ptr<TextTokenizer> load_tokenizer(const std::string& path);

std::unique_ptr<TextTokenizer> load_llama3_tokenizer(const std::string& path);
std::unique_ptr<TextTokenizer> load_sentencepiece_tokenizer(const std::string& path);

// A LLaMA 3 tokenizer over any byte-level vocabulary: token_bytes[rank] are the bytes of the
// token of that rank (all 256 single bytes must be present); the 256 special tokens follow at
// ids token_bytes.size() + i. Throws std::invalid_argument on a duplicate or a missing byte.
std::unique_ptr<TextTokenizer> make_llama3_tokenizer(std::vector<std::string> token_bytes);

// Meta's LLaMA 3 special tokens in id order (256 names: <|begin_of_text|>, <|end_of_text|>,
// <|reserved_special_token_0|>, ..., <|start_header_id|>, <|end_header_id|>, ..., <|eot_id|>,
// <|reserved_special_token_5|> .. <|reserved_special_token_250|>).
const std::vector<std::string>& llama3_special_tokens();

// Meta's LLaMA 3 pre-tokenisation pattern, as tokenizer.py writes it.
extern const char* const kLlama3Pattern;

}  // namespace hx
