#include "model/tokenizer.h"

#include <stdexcept>

namespace hx {

std::unique_ptr<TextTokenizer> load_tokenizer(const std::string& path) {
  throw std::invalid_argument(path + ": tokenizer files are not supported yet");
}

}  // namespace hx
