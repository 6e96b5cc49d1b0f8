// `harness tokenize --tokenizer PATH (--text T | --file F | --jsonl F) [--json] [--bos] [--eos]
// [--allow-special] [--decode]`: token ids of a text with a LLaMA 2 (SentencePiece) or LLaMA 3
// (tiktoken BPE) tokenizer.model, or (--decode) the text of ids.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "harness/cli/cli.h"
#include "model/tokenizers/tokenizer.h"

namespace hx {
namespace {

struct TokenizeOptions {
  std::string tokenizer;
  std::string text, file, jsonl;
  bool json = false, bos = false, eos = false, allow_special = false, decode = false;
};

std::string read_input(const std::string& path) {
  if (path == "-") return {std::istreambuf_iterator<char>(std::cin), {}};
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::invalid_argument(path + ": cannot open");
  return {std::istreambuf_iterator<char>(in), {}};
}

void write_out(std::string_view bytes) {
  if (std::fwrite(bytes.data(), 1, bytes.size(), stdout) != bytes.size())
    throw std::runtime_error("cannot write to standard output");
}

std::string ids_line(const std::vector<int64_t>& ids, bool json) {
  std::string out = json ? "[" : "";
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i > 0) out += json ? "," : " ";
    out += std::to_string(ids[i]);
  }
  if (json) out += "]";
  return out + "\n";
}

std::string json_string(const std::string& text) {
  // Decoded bytes that are not UTF-8 (a token sequence cut inside a character) become U+FFFD.
  return nlohmann::json(text).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::vector<int64_t> ids_from_json(const nlohmann::json& j, const std::string& where) {
  if (!j.is_array()) throw std::invalid_argument(where + ": expected a JSON array of token ids");
  std::vector<int64_t> ids;
  ids.reserve(j.size());
  for (const auto& v : j) {
    if (!v.is_number_integer())
      throw std::invalid_argument(where + ": token ids must be integers, got " +
                                  (v.is_structured() ? std::string("an ") + v.type_name()
                                                     : v.dump()));  // nested: no deep dump
    ids.push_back(v.get<int64_t>());
  }
  return ids;
}

// "1 2 3", "1,2,3" or a JSON array "[1, 2, 3]".
std::vector<int64_t> parse_ids(const std::string& text, const std::string& where) {
  const size_t first = text.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && text[first] == '[') {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
      throw std::invalid_argument(where + ": not a JSON array of ids: " + e.what());
    }
    return ids_from_json(j, where);
  }
  std::vector<int64_t> ids;
  size_t i = 0;
  while (i < text.size()) {
    const char c = text[i];
    if (c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == ',') {
      ++i;
      continue;
    }
    size_t end = i;
    if (text[end] == '-') ++end;
    while (end < text.size() && text[end] >= '0' && text[end] <= '9') ++end;
    const std::string token = text.substr(i, end - i);
    const bool separated =
        end == text.size() || std::string(" \t\r\n,").find(text[end]) != std::string::npos;
    if (token.empty() || token == "-" || !separated || token.size() > 19) {
      const size_t stop = text.find_first_of(" \t\r\n,", i);
      throw std::invalid_argument(where + ": \"" + text.substr(i, stop - i) +
                                  "\" is not a token id");
    }
    ids.push_back(std::stoll(token));
    i = end;
  }
  return ids;
}

// One line of --jsonl output for one line of input (`where`: file:line, for messages).
std::string jsonl_output_line(const TokenizeOptions& o, const TextTokenizer& tokenizer,
                              const std::string& line, const std::string& where) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(line);
  } catch (const nlohmann::json::exception& e) {
    throw std::invalid_argument(where + ": not JSON: " + e.what());
  }
  if (o.decode) return json_string(tokenizer.decode(ids_from_json(j, where))) + "\n";
  if (!j.is_string()) throw std::invalid_argument(where + ": expected a JSON string");
  try {
    return ids_line(
        tokenizer.encode(j.get_ref<const std::string&>(), o.bos, o.eos, o.allow_special), true);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(where + ": " + e.what());
  }
}

// --jsonl: one JSON value per line in, one per line out, written in chunks of about 1 MiB.
void tokenize_jsonl(const TokenizeOptions& o, const TextTokenizer& tokenizer) {
  std::istringstream in(read_input(o.jsonl));
  std::string line, out;
  size_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    out += jsonl_output_line(o, tokenizer, line, o.jsonl + ":" + std::to_string(line_no));
    if (out.size() > (1 << 20)) write_out(out), out.clear();
  }
  write_out(out);
}

int run_tokenize(const TokenizeOptions& o) {
  // CLI11 lets at most one of --text, --file, --jsonl through; the callback checks for one.
  if (o.decode && (o.bos || o.eos || o.allow_special))
    throw std::invalid_argument("--bos, --eos and --allow-special apply to encoding, not --decode");
  const auto tokenizer = load_tokenizer(o.tokenizer);

  if (!o.jsonl.empty()) {
    tokenize_jsonl(o, *tokenizer);
    return kExitOk;
  }

  // --text (which may be the empty string) or --file.
  const bool from_file = !o.file.empty();
  const std::string input = from_file ? read_input(o.file) : o.text;
  const std::string where = from_file ? o.file : "--text";
  if (o.decode) {
    const std::string text = tokenizer->decode(parse_ids(input, where));
    write_out(o.json ? json_string(text) + "\n" : text);
    return kExitOk;
  }
  std::vector<int64_t> ids;
  try {
    ids = tokenizer->encode(input, o.bos, o.eos, o.allow_special);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(where + ": " + e.what());
  }
  write_out(ids_line(ids, o.json));
  return kExitOk;
}

const CommandRegistrar kRegistrar{
    "tokenize", [](CLI::App& app, const std::function<void(int)>& set_exit) {
      auto o = std::make_shared<TokenizeOptions>();
      CLI::App* sub = app.add_subcommand(
          "tokenize",
          "Token ids of a text with a LLaMA 2 (SentencePiece) or LLaMA 3 (tiktoken BPE) "
          "tokenizer.model; --decode: the text of ids");
      sub->add_option("--tokenizer", o->tokenizer, "tokenizer.model (format detected)")->required();
      auto* text = sub->add_option("--text", o->text, "the text (with --decode: ids \"1 2 3\")");
      auto* file =
          sub->add_option("--file", o->file, "read the text (or ids) from a file, - for stdin");
      auto* jsonl = sub->add_option(
          "--jsonl", o->jsonl,
          "one JSON string per line -> one JSON array of ids per line (--decode: arrays -> "
          "strings); - for stdin");
      text->excludes(file)->excludes(jsonl);
      file->excludes(jsonl);
      sub->add_flag("--json", o->json, "print a JSON array (--decode: a JSON string)");
      sub->add_flag("--bos", o->bos, "prepend BOS");
      sub->add_flag("--eos", o->eos, "append EOS");
      sub->add_flag("--allow-special", o->allow_special,
                    "special-token names in the text (<|eot_id|>, </s>) become their ids "
                    "(default: encoded as text)");
      sub->add_flag("--decode", o->decode,
                    "ids in, text out (printed as is, no newline added; --json for a JSON string)");
      sub->callback([o, text, set_exit] {
        if (text->count() == 0 && o->file.empty() && o->jsonl.empty())
          throw std::invalid_argument("give one of --text, --file, --jsonl");
        set_exit(run_tokenize(*o));
      });
    }};

}  // namespace
}  // namespace hx
