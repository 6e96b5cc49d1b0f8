#pragma once
// The two tokenizer-file loaders share one fuzz body: load the input as a file, and when it loads,
// use the tokenizer the way the parent does (encode with and without special tokens, decode every
// id): a file that loads must never crash later.
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "model/tokenizers/tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

namespace hx::fuzz {

inline void exercise_tokenizer_file(const uint8_t* data, size_t size, const std::string& name,
                                    std::unique_ptr<TextTokenizer> (*load)(const std::string&)) {
  const std::string path = input_file(data, size, name);
  // The format detection of `harness tokenize` and of a spec's `tokenizer:`.
  try {
    (void)detect_tokenizer_format(path);
  } catch (const std::invalid_argument& e) {
    require_prefix(e, path + ": ");
  }
  std::unique_ptr<TextTokenizer> tokenizer;
  try {
    tokenizer = load(path);
  } catch (const std::invalid_argument& e) {
    require_prefix(e, path + ":");  // "FILE: ..." or "FILE:LINE: ..."
    return;
  }
  static const std::string kText =
      "Hello, world! 123 4567  tabs\tand\nnewlines <|begin_of_text|><s> caf\xC3\xA9 \xE2\x96\x81x "
      "\xF0\x9F\x98\x80";
  // A library's failure on a model it loaded (libsentencepiece) may surface here, as a
  // std::runtime_error naming the file; anything else is a finding.
  try {
    for (const bool special : {false, true}) {
      const std::vector<int64_t> ids = tokenizer->encode(kText, true, true, special);
      for (const int64_t id : ids) {
        if (id < 0 || id >= tokenizer->vocab_size())
          finding("encode gave id " + std::to_string(id));
      }
      (void)tokenizer->decode(ids);
    }
    // Every id decodes alone (bounded: a fuzzed vocabulary is small).
    const int64_t n = std::min<int64_t>(tokenizer->vocab_size(), 4096);
    for (int64_t id = 0; id < n; ++id) (void)tokenizer->decode({id});
  } catch (const std::runtime_error& e) {
    require_prefix(e, path + ": ");
  }
  (void)tokenizer->stop_ids();
  for (const char* name : {"<|eot_id|>", "</s>", "<s>", "<unk>"}) (void)tokenizer->special_id(name);
}

}  // namespace hx::fuzz
