#pragma once
// Fine-tuning data: Alpaca-format instruction records -> Stanford Alpaca prompts -> token ids with
// the prompt masked out of the loss -> padded batches. Or random tokens of one fixed length.
#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

// AlpacaRecord, read_alpaca, alpaca_prompt, Example, kIgnoreIndex: shared with the parent, which
// pre-tokenises with a real tokenizer (data.tokens_path in run.json).
#include "harness/plan/pretokenize.h"

namespace hx {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::vector<int64_t> encode(std::string_view text) const = 0;
  virtual int64_t bos_id() const = 0;
  virtual int64_t eos_id() const = 0;
  virtual int64_t pad_id() const = 0;
  virtual int64_t vocab_size() const = 0;
};

// Bytes as tokens (id = byte + 3) with 0 pad, 1 BOS, 2 EOS: works with any vocabulary >= 259,
// until a model's own tokenizer is named.
class ByteTokenizer final : public Tokenizer {
 public:
  std::vector<int64_t> encode(std::string_view text) const override;
  int64_t bos_id() const override { return 1; }
  int64_t eos_id() const override { return 2; }
  int64_t pad_id() const override { return 0; }
  int64_t vocab_size() const override { return 259; }
};

// Byte-token ids back to text (ids outside 3..258 are dropped; stops at EOS), as valid UTF-8
// (U+FFFD for bytes that do not form a character).
std::string decode_bytes(const std::vector<int64_t>& ids);

Example make_example(const AlpacaRecord& record, const Tokenizer& tokenizer, int64_t max_seq_len);

// Examples pre-tokenised by the parent (read_token_examples), cut to max_seq_len (<= 0: not);
// std::invalid_argument when a token id is outside [0, vocab_size).
std::vector<Example> load_token_examples(const std::string& path, int64_t max_seq_len,
                                         int64_t vocab_size);

struct Batch {
  torch::Tensor tokens;  // (B, T) int64, padded with pad_id
  torch::Tensor labels;  // (B, T) int64, kIgnoreIndex on padding and prompt
  int64_t real_tokens = 0;
};

// Pads to the longest example.
Batch collate(const std::vector<const Example*>& examples, int64_t pad_id);

// Yields batches in order, cycling over the examples.
class DataSource {
 public:
  // Alpaca records (tokenised once); examples without any label are dropped.
  DataSource(std::vector<Example> examples, int64_t batch_size, int64_t pad_id);
  // Random tokens in [3, vocab) of one fixed length, every position a label.
  static DataSource random(int64_t vocab_size, int64_t seq_len, int64_t batch_size, uint64_t seed,
                           int64_t count = 64);
  Batch next();
  // Rank `rank`'s share of data parallelism over `world` ranks of this source's batch size each:
  // its batches are, in order, the rank-th slices of this source's batches of batch_size x world
  // (PyTorch DDP's convention: batch_size is per rank).
  DataSource shard(int rank, int world) const;
  size_t size() const { return examples_.size(); }
  int64_t dropped() const { return dropped_; }

 private:
  std::vector<Example> examples_;
  int64_t batch_size_;
  int64_t pad_id_;
  size_t cursor_ = 0;
  int64_t dropped_ = 0;
};

}  // namespace hx
