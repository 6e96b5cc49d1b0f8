// Format detection: a SentencePiece ModelProto (binary protobuf) or a tiktoken BPE file (text).
#include "model/tokenizers/tokenizer.h"

#include <cctype>
#include <fstream>
#include <stdexcept>
#include <string>

namespace hx {
namespace {

// A serialized ModelProto starts with its first `pieces` entry (field 1, length-delimited: tag
// 0x0A, a varint length) whose first field is the piece string (again tag 0x0A).
bool looks_like_model_proto(const std::string& head) {
  if (head.size() < 3 || head[0] != '\x0A') return false;
  size_t i = 1;
  uint64_t length = 0;
  for (int shift = 0; i < head.size() && shift < 35; shift += 7, ++i) {
    const auto byte = static_cast<unsigned char>(head[i]);
    length |= static_cast<uint64_t>(byte & 0x7F) << shift;
    if ((byte & 0x80) == 0) break;
  }
  ++i;
  return length > 0 && i < head.size() && head[i] == '\x0A';
}

// "<base64> <rank>" (tiktoken's load_tiktoken_bpe format), on the first non-empty line.
bool looks_like_tiktoken(const std::string& head) {
  size_t start = head.find_first_not_of("\r\n");
  if (start == std::string::npos) return false;
  const size_t end = head.find('\n', start);
  if (end == std::string::npos && head.size() >= 4096) return false;  // no line end in sight
  std::string line = head.substr(start, end == std::string::npos ? std::string::npos : end - start);
  if (!line.empty() && line.back() == '\r') line.pop_back();
  const size_t space = line.find(' ');
  if (space == std::string::npos || space == 0 || space % 4 != 0 || space + 1 >= line.size())
    return false;
  for (size_t k = 0; k < space; ++k) {
    const unsigned char c = static_cast<unsigned char>(line[k]);
    if (!(std::isalnum(c) || c == '+' || c == '/' || c == '=')) return false;
  }
  for (size_t k = space + 1; k < line.size(); ++k)
    if (!std::isdigit(static_cast<unsigned char>(line[k]))) return false;
  return true;
}

}  // namespace

TokenizerFormat detect_tokenizer_format(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::invalid_argument(path + ": cannot open tokenizer file");
  std::string head(4096, '\0');
  in.read(head.data(), static_cast<std::streamsize>(head.size()));
  head.resize(static_cast<size_t>(in.gcount()));
  if (head.empty()) throw std::invalid_argument(path + ": tokenizer file is empty");
  if (looks_like_model_proto(head)) return TokenizerFormat::kSentencePiece;
  if (looks_like_tiktoken(head)) return TokenizerFormat::kTiktoken;
  const size_t first = head.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && head[first] == '{')
    throw std::invalid_argument(
        path +
        ": looks like JSON (a Hugging Face tokenizer.json?); give the tokenizer.model file "
        "(a SentencePiece model for LLaMA 2, tiktoken BPE lines for LLaMA 3)");
  throw std::invalid_argument(path +
                              ": not a tokenizer file: neither a SentencePiece model (binary "
                              "ModelProto) nor tiktoken BPE lines (\"<base64> <rank>\")");
}

std::unique_ptr<TextTokenizer> load_tokenizer(const std::string& path) {
  switch (detect_tokenizer_format(path)) {
    case TokenizerFormat::kSentencePiece:
      return load_sentencepiece_tokenizer(path);
    case TokenizerFormat::kTiktoken:
      return load_llama3_tokenizer(path);
  }
  throw std::logic_error("unreachable");
}

}  // namespace hx
