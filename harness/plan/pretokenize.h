#pragma once
// Alpaca records, the Stanford Alpaca prompt templates, and pre-tokenisation: the parent encodes
// a fine-tuning data set once with the spec's tokenizer and hands the worker token ids (the worker
// must never link the tokenizers: libsentencepiece and libtorch in one process crash at load).
// No libtorch, and no link dependency on the `tokenizers` library: TextTokenizer is only used
// through its (abstract) interface, and loading one goes through a loader that the executables
// that link `tokenizers` register (set_tokenizer_loader).
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/tokenizers/tokenizer.h"

namespace hx {

inline constexpr int64_t kIgnoreIndex = -100;

struct AlpacaRecord {
  std::string instruction, input, output;
};

// Reads a JSON list of {instruction, input, output} (input optional); the first `samples`
// records (all if samples <= 0). Errors name the file and the record index.
std::vector<AlpacaRecord> read_alpaca(const std::string& path, int64_t samples);

// The Stanford Alpaca templates (with and without input), up to "### Response:\n".
std::string alpaca_prompt(const AlpacaRecord& record);

// Bytes -> valid UTF-8: each byte that does not start a well-formed sequence becomes U+FFFD (a
// model emits arbitrary bytes, and JSON and SQLite text must be UTF-8).
std::string valid_utf8(const std::string& bytes);

// The fixed instructions that `generations: on` answers greedily before and after fine-tuning.
const std::vector<AlpacaRecord>& sample_prompts();

struct Example {
  std::vector<int64_t> tokens;  // BOS prompt response EOS, truncated to max_seq_len
  std::vector<int64_t> labels;  // kIgnoreIndex over BOS and the prompt
};

// BOS + prompt + response + EOS with a real tokenizer, as Stanford's train.py does it: the
// prompt + response text is encoded as one (so that no token is split at the seam), and the
// first len(BOS + encode(prompt)) positions are masked. Truncated to max_seq_len (<= 0: not).
Example make_text_example(const AlpacaRecord& record, const TextTokenizer& tokenizer,
                          int64_t max_seq_len, bool allow_special);

// The token file handed to the worker: [{"tokens": [...], "labels": [...]}, ...].
std::string examples_to_json(const std::vector<Example>& examples);
// Reads it back; errors name the file.
std::vector<Example> read_token_examples(const std::string& path);

// Encodes the first `samples` records of an Alpaca file (all if <= 0) and writes the token file
// to `out_path` (atomically). Returns the number of examples.
size_t pretokenize_alpaca(const std::string& alpaca_path, int64_t samples,
                          const TextTokenizer& tokenizer, int64_t max_seq_len, bool allow_special,
                          const std::string& out_path);

// The loader of tokenizer files (hx::load_tokenizer), registered by the executables that link
// the `tokenizers` library (`harness`, test_core); harness_core itself does not link it.
using TokenizerLoader = std::unique_ptr<TextTokenizer> (*)(const std::string& path);
void set_tokenizer_loader(TokenizerLoader loader);
bool have_tokenizer_loader();
// Through the registered loader; std::logic_error when none is.
std::unique_ptr<TextTokenizer> load_text_tokenizer(const std::string& path);

}  // namespace hx
