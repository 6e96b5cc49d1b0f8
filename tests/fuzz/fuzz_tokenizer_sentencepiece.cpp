// The LLaMA 2 tokenizer file (a SentencePiece ModelProto,
// model/tokenizers/tokenizer_sentencepiece.cpp through libsentencepiece): any bytes either load
// into a tokenizer that encodes and decodes, or are a std::invalid_argument naming the file.
#include "tests/fuzz/fuzz_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  hx::fuzz::exercise_tokenizer_file(data, size, "sentencepiece.model",
                                    &hx::load_sentencepiece_tokenizer);
  return 0;
}
