// The LLaMA 3 tokenizer file (tiktoken BPE lines "<base64> <rank>",
// model/tokenizers/tokenizer_tiktoken.cpp): any bytes either load into a tokenizer that encodes and
// decodes, or are a std::invalid_argument naming the file.
#include "tests/fuzz/fuzz_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  hx::fuzz::exercise_tokenizer_file(data, size, "tiktoken.model", &hx::load_llama3_tokenizer);
  return 0;
}
