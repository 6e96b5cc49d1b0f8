// The Alpaca data reader (harness/plan/pretokenize.h read_alpaca: a spec's `data.path`) and the
// encoding of its records as `harness run` pre-tokenises them for a spec with a tokenizer: any
// bytes are either records whose examples encode, or a std::invalid_argument naming the file.
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "harness/plan/pretokenize.h"
#include "model/tokenizers/tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::unique_ptr<hx::TextTokenizer> tokenizer = [] {
    std::vector<std::string> vocab;
    for (int b = 0; b < 256; ++b) vocab.emplace_back(1, static_cast<char>(b));
    for (const char* merge : {" the", "in", "er", "an", "##", "\n\n", "Response"}) {
      vocab.emplace_back(merge);
    }
    return hx::make_llama3_tokenizer(std::move(vocab));
  }();
  const std::string path = hx::fuzz::input_file(data, size, "alpaca.json");
  std::vector<hx::AlpacaRecord> records;
  try {
    records = hx::read_alpaca(path, 0);
  } catch (const std::invalid_argument& e) {
    hx::fuzz::require_prefix(e, path + ": ");
    return 0;
  }
  for (const bool special : {false, true}) {
    for (const hx::AlpacaRecord& record : records) {
      const hx::Example ex = hx::make_text_example(record, *tokenizer, 64, special);
      if (ex.tokens.size() != ex.labels.size() || ex.tokens.size() > 64) {
        hx::fuzz::finding("an example of " + std::to_string(ex.tokens.size()) + " tokens and " +
                          std::to_string(ex.labels.size()) + " labels");
      }
    }
  }
  return 0;
}
