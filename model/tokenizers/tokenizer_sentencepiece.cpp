// LLaMA 2: a SentencePiece tokenizer.model through libsentencepiece, as Meta's tokenizer.py uses
// it (sp.encode, then BOS/EOS by id; sp.decode).
#include <sentencepiece_processor.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "model/tokenizers/tokenizer.h"
#include "model/tokenizers/tokenizer_bpe.h"

namespace hx {
namespace {

// Letters, digits, punctuation, whitespace runs, Latin-1, CJK and an emoji.
constexpr const char* kProbe =
    "Hello, world! 123 4567  tabs\tand\nnewlines caf\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC "
    "\xF0\x9F\x99\x82";

class SentencePieceTokenizer final : public TextTokenizer {
 public:
  explicit SentencePieceTokenizer(const std::string& path) : path_(path) {
    sentencepiece::util::Status status;
    try {
      status = sp_.Load(path);
    } catch (const std::exception& e) {
      // libsentencepiece throws from inside for some malformed models (its trie builder, e.g.
      // Darts' "zero-length key" for an empty piece) instead of returning a status.
      throw std::invalid_argument(path + ": not a loadable SentencePiece model: " + e.what());
    }
    if (!status.ok())
      throw std::invalid_argument(path +
                                  ": not a loadable SentencePiece model: " + status.ToString());
    // A LLaMA tokenizer needs both: every example ends with EOS, every prompt starts with BOS.
    if (sp_.bos_id() < 0 || sp_.eos_id() < 0)
      throw std::invalid_argument(path + ": the SentencePiece model has no " +
                                  (sp_.bos_id() < 0 ? "BOS" : "EOS") +
                                  " piece (LLaMA 2's are <s> and </s>)");
    // libsentencepiece loads some models it then cannot encode with (found by fuzzing: a piece
    // repeated under another type made Encode fail "all normalized characters are not consumed"):
    // such a model is refused here, where the file is known. Every piece once, and one probe text.
    for (int id = 0; id < sp_.GetPieceSize(); ++id) {
      const std::string& piece = sp_.IdToPiece(id);
      if (const int first = sp_.PieceToId(piece); first != id)
        throw std::invalid_argument(path + ": the SentencePiece model has the piece \"" + piece +
                                    "\" twice (ids " + std::to_string(std::min(first, id)) +
                                    " and " + std::to_string(std::max(first, id)) + ")");
    }
    std::vector<int> probe;
    if (const auto probed = sp_.Encode(kProbe, &probe); !probed.ok())
      throw std::invalid_argument(
          path + ": the SentencePiece model cannot encode text: " + probed.ToString());
    for (int id = 0; id < sp_.GetPieceSize(); ++id)
      if (sp_.IsControl(id) && !sp_.IdToPiece(id).empty())
        controls_.emplace_back(sp_.IdToPiece(id), id);
    // At one position the longest name wins.
    std::sort(controls_.begin(), controls_.end(),
              [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
  }

  std::vector<int64_t> encode(std::string_view text, bool bos, bool eos,
                              bool allow_special) const override {
    if (const size_t bad = bpe::invalid_utf8_offset(text); bad != std::string_view::npos)
      throw std::invalid_argument("text is not valid UTF-8 (byte offset " + std::to_string(bad) +
                                  ")");
    std::vector<int64_t> ids;
    if (bos) ids.push_back(require(sp_.bos_id(), "BOS"));
    if (!allow_special) {
      encode_text(text, ids);
    } else {
      // Control-token names (<s>, </s>) become their ids; the text between them is encoded
      // piece by piece (each with SentencePiece's dummy prefix).
      size_t from = 0, at = 0;
      while (at < text.size()) {
        const auto hit = std::find_if(controls_.begin(), controls_.end(), [&](const auto& c) {
          return text.compare(at, c.first.size(), c.first) == 0;
        });
        if (hit == controls_.end()) {
          ++at;
          continue;
        }
        encode_text(text.substr(from, at - from), ids);
        ids.push_back(hit->second);
        at += hit->first.size();
        from = at;
      }
      encode_text(text.substr(from), ids);
    }
    if (eos) ids.push_back(require(sp_.eos_id(), "EOS"));
    return ids;
  }

  std::string decode(const std::vector<int64_t>& ids) const override {
    std::vector<int> sp_ids;
    sp_ids.reserve(ids.size());
    for (const int64_t id : ids) {
      if (id < 0 || id >= vocab_size())
        throw std::invalid_argument("token id " + std::to_string(id) + " is outside [0, " +
                                    std::to_string(vocab_size()) + ")");
      sp_ids.push_back(static_cast<int>(id));
    }
    std::string out;
    const auto status = sp_.Decode(sp_ids, &out);
    if (!status.ok())
      throw std::runtime_error(path_ + ": SentencePiece decode: " + status.ToString());
    return out;
  }

  int64_t bos_id() const override { return sp_.bos_id(); }
  int64_t eos_id() const override { return sp_.eos_id(); }
  int64_t vocab_size() const override { return sp_.GetPieceSize(); }
  std::vector<int64_t> stop_ids() const override {
    if (sp_.eos_id() < 0) return {};
    return {sp_.eos_id()};
  }
  std::optional<int64_t> special_id(std::string_view name) const override {
    const int id = sp_.PieceToId(name);
    if (id < 0 || sp_.IdToPiece(id) != name || !(sp_.IsControl(id) || sp_.IsUnknown(id)))
      return std::nullopt;
    return id;
  }
  std::string_view kind() const override { return "sentencepiece"; }

 private:
  static int64_t require(int id, const char* what) {
    if (id < 0)
      throw std::invalid_argument(std::string("this tokenizer has no ") + what + " token");
    return id;
  }
  void encode_text(std::string_view text, std::vector<int64_t>& ids) const {
    if (text.empty()) return;
    std::vector<int> out;
    const auto status = sp_.Encode(text, &out);
    if (!status.ok())
      throw std::runtime_error(path_ + ": SentencePiece encode: " + status.ToString());
    ids.insert(ids.end(), out.begin(), out.end());
  }

  std::string path_;  // names the file in errors
  sentencepiece::SentencePieceProcessor sp_;
  std::vector<std::pair<std::string, int>> controls_;
};

}  // namespace

std::unique_ptr<TextTokenizer> load_sentencepiece_tokenizer(const std::string& path) {
  return std::make_unique<SentencePieceTokenizer>(path);
}

}  // namespace hx
