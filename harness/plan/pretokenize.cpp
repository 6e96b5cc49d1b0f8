#include "harness/plan/pretokenize.h"

#include <algorithm>
#include <atomic>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "harness/store/json_io.h"

namespace hx {

std::vector<AlpacaRecord> read_alpaca(const std::string& path, int64_t samples) {
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(read_file(path));
  } catch (const nlohmann::json::exception& e) {  // out_of_range too: a number like 1e999
    throw std::invalid_argument(path + ": not valid JSON: " + e.what());
  }
  if (!doc.is_array()) throw std::invalid_argument(path + ": expected a JSON list of records");
  std::vector<AlpacaRecord> records;
  for (size_t i = 0; i < doc.size(); ++i) {
    if (samples > 0 && static_cast<int64_t>(records.size()) >= samples) break;
    const auto& item = doc[i];
    auto field = [&](const char* key, bool required) -> std::string {
      if (!item.is_object() || !item.contains(key)) {
        if (required)
          throw std::invalid_argument(path + ": record " + std::to_string(i) + ": missing \"" +
                                      key + "\"");
        return "";
      }
      if (!item[key].is_string())
        throw std::invalid_argument(path + ": record " + std::to_string(i) + ": \"" + key +
                                    "\" is not a string");
      return item[key].get<std::string>();
    };
    records.push_back({field("instruction", true), field("input", false), field("output", true)});
  }
  if (records.empty()) throw std::invalid_argument(path + ": no records");
  return records;
}

std::string alpaca_prompt(const AlpacaRecord& r) {
  if (r.input.empty()) {
    return "Below is an instruction that describes a task. Write a response that appropriately "
           "completes the request.\n\n### Instruction:\n" +
           r.instruction + "\n\n### Response:\n";
  }
  return "Below is an instruction that describes a task, paired with an input that provides "
         "further context. Write a response that appropriately completes the request.\n\n"
         "### Instruction:\n" +
         r.instruction + "\n\n### Input:\n" + r.input + "\n\n### Response:\n";
}

// Bytes -> valid UTF-8: each byte that does not start a well-formed sequence becomes U+FFFD (a
// model emits arbitrary bytes, and JSON and SQLite text must be UTF-8).
std::string valid_utf8(const std::string& bytes) {
  std::string out;
  size_t i = 0;
  while (i < bytes.size()) {
    const auto c = static_cast<unsigned char>(bytes[i]);
    size_t len = 0;
    uint32_t min = 0;
    if (c < 0x80) {
      len = 1;
    } else if ((c & 0xE0) == 0xC0) {
      len = 2;
      min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
      min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4;
      min = 0x10000;
    }
    bool ok = len > 0 && i + len <= bytes.size();
    uint32_t cp = len == 1 ? c : c & (0x7F >> len);
    for (size_t k = 1; ok && k < len; ++k) {
      const auto b = static_cast<unsigned char>(bytes[i + k]);
      ok = (b & 0xC0) == 0x80;
      cp = (cp << 6) | (b & 0x3F);
    }
    ok = ok && cp >= min && cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF);
    if (ok) {
      out.append(bytes, i, len);
      i += len;
    } else {
      out += "\xEF\xBF\xBD";
      ++i;
    }
  }
  return out;
}

const std::vector<AlpacaRecord>& sample_prompts() {
  static const std::vector<AlpacaRecord> prompts = {
      {"Give three tips for staying healthy.", "", ""},
      {"What is the capital of France?", "", ""},
      {"Translate the sentence into French.", "The weather is nice today.", ""},
  };
  return prompts;
}

Example make_text_example(const AlpacaRecord& record, const TextTokenizer& tokenizer,
                          int64_t max_seq_len, bool allow_special) {
  const std::string prompt = alpaca_prompt(record);
  Example ex;
  ex.tokens = tokenizer.encode(prompt + record.output, /*bos=*/true, /*eos=*/true, allow_special);
  const size_t masked =
      std::min(ex.tokens.size(), tokenizer.encode(prompt, true, false, allow_special).size());
  ex.labels = ex.tokens;
  std::fill(ex.labels.begin(), ex.labels.begin() + static_cast<std::ptrdiff_t>(masked),
            kIgnoreIndex);
  if (max_seq_len > 0 && static_cast<int64_t>(ex.tokens.size()) > max_seq_len) {
    ex.tokens.resize(static_cast<size_t>(max_seq_len));
    ex.labels.resize(static_cast<size_t>(max_seq_len));
  }
  return ex;
}

std::string examples_to_json(const std::vector<Example>& examples) {
  // Written by hand: one example a line, no per-token allocation of JSON values.
  std::string out = "[";
  auto ids = [&out](const std::vector<int64_t>& v) {
    out += '[';
    for (size_t i = 0; i < v.size(); ++i) {
      if (i > 0) out += ',';
      out += std::to_string(v[i]);
    }
    out += ']';
  };
  for (size_t i = 0; i < examples.size(); ++i) {
    out += i == 0 ? "\n" : ",\n";
    out += "{\"tokens\":";
    ids(examples[i].tokens);
    out += ",\"labels\":";
    ids(examples[i].labels);
    out += '}';
  }
  out += "\n]\n";
  return out;
}

std::vector<Example> read_token_examples(const std::string& path) {
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(read_file(path));
  } catch (const nlohmann::json::exception& e) {
    throw std::invalid_argument(path + ": not valid JSON: " + e.what());
  }
  if (!doc.is_array()) throw std::invalid_argument(path + ": expected a JSON list of examples");
  std::vector<Example> examples;
  examples.reserve(doc.size());
  for (size_t i = 0; i < doc.size(); ++i) {
    const auto& item = doc[i];
    const std::string where = path + ": example " + std::to_string(i);
    Example ex;
    try {
      ex.tokens = item.at("tokens").get<std::vector<int64_t>>();
      ex.labels = item.at("labels").get<std::vector<int64_t>>();
    } catch (const nlohmann::json::exception&) {
      throw std::invalid_argument(where + ": expected {\"tokens\": [ids], \"labels\": [ids]}");
    }
    if (ex.tokens.size() != ex.labels.size())
      throw std::invalid_argument(where + ": tokens and labels differ in length");
    examples.push_back(std::move(ex));
  }
  if (examples.empty()) throw std::invalid_argument(path + ": no examples");
  return examples;
}

size_t pretokenize_alpaca(const std::string& alpaca_path, int64_t samples,
                          const TextTokenizer& tokenizer, int64_t max_seq_len, bool allow_special,
                          const std::string& out_path) {
  std::vector<Example> examples;
  for (const AlpacaRecord& record : read_alpaca(alpaca_path, samples)) {
    examples.push_back(make_text_example(record, tokenizer, max_seq_len, allow_special));
  }
  write_file_atomic(out_path, examples_to_json(examples));
  return examples.size();
}

namespace {
std::atomic<TokenizerLoader> g_loader{nullptr};
}  // namespace

void set_tokenizer_loader(TokenizerLoader loader) { g_loader.store(loader); }

bool have_tokenizer_loader() { return g_loader.load() != nullptr; }

std::unique_ptr<TextTokenizer> load_text_tokenizer(const std::string& path) {
  const TokenizerLoader loader = g_loader.load();
  if (loader == nullptr)
    throw std::logic_error("no tokenizer loader in this program (it does not link the tokenizers)");
  return loader(path);
}

}  // namespace hx
