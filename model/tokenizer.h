#pragma once
// Tokenizers of the LLaMA families, without libtorch (the parent's `harness tokenize` uses them).
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace hx {

class TextTokenizer {
 public:
  virtual ~TextTokenizer() = default;
  // Ordinary text: special-token strings inside it are encoded as text unless allow_special.
  virtual std::vector<int64_t> encode(std::string_view text, bool bos, bool eos,
                                      bool allow_special = false) const = 0;
  virtual std::string decode(const std::vector<int64_t>& ids) const = 0;
  virtual int64_t bos_id() const = 0;
  virtual int64_t eos_id() const = 0;
  virtual int64_t vocab_size() const = 0;
};

// Detects the format of `path` (a SentencePiece ModelProto, or a tiktoken-style BPE file of
// "base64 rank" lines) and loads it; throws std::invalid_argument naming the file otherwise.
std::unique_ptr<TextTokenizer> load_tokenizer(const std::string& path);

}  // namespace hx
