#include "harness/worker/data.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <stdexcept>

#include "harness/store/json_io.h"

namespace hx {

std::vector<int64_t> ByteTokenizer::encode(std::string_view text) const {
  std::vector<int64_t> ids;
  ids.reserve(text.size());
  for (unsigned char c : text) ids.push_back(static_cast<int64_t>(c) + 3);
  return ids;
}

std::string decode_bytes(const std::vector<int64_t>& ids) {
  std::string text;
  for (int64_t id : ids) {
    if (id == 2) break;
    if (id >= 3 && id < 259) text.push_back(static_cast<char>(id - 3));
  }
  return valid_utf8(text);
}

Example make_example(const AlpacaRecord& record, const Tokenizer& tokenizer, int64_t max_seq_len) {
  Example ex;
  const auto prompt = tokenizer.encode(alpaca_prompt(record));
  const auto response = tokenizer.encode(record.output);
  ex.tokens.push_back(tokenizer.bos_id());
  ex.tokens.insert(ex.tokens.end(), prompt.begin(), prompt.end());
  ex.labels.assign(ex.tokens.size(), kIgnoreIndex);  // BOS and prompt: not learned
  ex.tokens.insert(ex.tokens.end(), response.begin(), response.end());
  ex.tokens.push_back(tokenizer.eos_id());
  ex.labels.insert(ex.labels.end(), ex.tokens.begin() + static_cast<int64_t>(ex.labels.size()),
                   ex.tokens.end());
  if (max_seq_len > 0 && static_cast<int64_t>(ex.tokens.size()) > max_seq_len) {
    ex.tokens.resize(static_cast<size_t>(max_seq_len));
    ex.labels.resize(static_cast<size_t>(max_seq_len));
  }
  return ex;
}

std::vector<Example> load_token_examples(const std::string& path, int64_t max_seq_len,
                                         int64_t vocab_size) {
  std::vector<Example> examples = read_token_examples(path);
  for (size_t i = 0; i < examples.size(); ++i) {
    auto& ex = examples[i];
    for (int64_t id : ex.tokens) {
      if (id < 0 || id >= vocab_size)
        throw std::invalid_argument(path + ": example " + std::to_string(i) + ": token id " +
                                    std::to_string(id) + " is outside the model's vocabulary (" +
                                    std::to_string(vocab_size) + ")");
    }
    if (max_seq_len > 0 && static_cast<int64_t>(ex.tokens.size()) > max_seq_len) {
      ex.tokens.resize(static_cast<size_t>(max_seq_len));
      ex.labels.resize(static_cast<size_t>(max_seq_len));
    }
  }
  return examples;
}

Batch collate(const std::vector<const Example*>& examples, int64_t pad_id) {
  size_t longest = 0;
  for (const auto* ex : examples) longest = std::max(longest, ex->tokens.size());
  const auto b = static_cast<int64_t>(examples.size());
  const auto t = static_cast<int64_t>(longest);
  Batch batch;
  batch.tokens = torch::full({b, t}, pad_id, torch::kInt64);
  batch.labels = torch::full({b, t}, kIgnoreIndex, torch::kInt64);
  auto tokens = batch.tokens.accessor<int64_t, 2>();
  auto labels = batch.labels.accessor<int64_t, 2>();
  for (int64_t i = 0; i < b; ++i) {
    const auto& ex = *examples[static_cast<size_t>(i)];
    for (size_t j = 0; j < ex.tokens.size(); ++j) {
      tokens[i][static_cast<int64_t>(j)] = ex.tokens[j];
      labels[i][static_cast<int64_t>(j)] = ex.labels[j];
    }
    batch.real_tokens += static_cast<int64_t>(ex.tokens.size());
  }
  return batch;
}

DataSource::DataSource(std::vector<Example> examples, int64_t batch_size, int64_t pad_id)
    : batch_size_(batch_size), pad_id_(pad_id) {
  // An example whose response was cut away entirely by max_seq_len teaches nothing (and alone
  // in a batch would make the loss 0/0): leave it out.
  for (auto& ex : examples) {
    const bool has_label = std::any_of(ex.labels.begin(), ex.labels.end(),
                                       [](int64_t l) { return l != kIgnoreIndex; });
    if (has_label) {
      examples_.push_back(std::move(ex));
    } else {
      ++dropped_;
    }
  }
  if (examples_.empty())
    throw std::invalid_argument("no training example keeps a response token within max_seq_len (" +
                                std::to_string(dropped_) + " examples dropped)");
}

DataSource DataSource::random(int64_t vocab_size, int64_t seq_len, int64_t batch_size,
                              uint64_t seed, int64_t count) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int64_t> token(3, vocab_size - 1);
  std::vector<Example> examples(static_cast<size_t>(count));
  for (auto& ex : examples) {
    ex.tokens.resize(static_cast<size_t>(seq_len));
    for (auto& id : ex.tokens) id = token(rng);
    ex.labels = ex.tokens;
  }
  return {std::move(examples), batch_size, 0};
}

DataSource DataSource::shard(int rank, int world) const {
  if (world < 1 || rank < 0 || rank >= world)
    throw std::invalid_argument("data: rank " + std::to_string(rank) + " of " +
                                std::to_string(world));
  const auto n = static_cast<int64_t>(examples_.size());
  const int64_t global = batch_size_ * world;
  // The global batches' positions cycle with period n / gcd(n, global) batches.
  const int64_t batches = n / std::gcd(n, global);
  std::vector<Example> mine;
  mine.reserve(static_cast<size_t>(batches * batch_size_));
  for (int64_t b = 0; b < batches; ++b)
    for (int64_t i = 0; i < batch_size_; ++i)
      mine.push_back(examples_[static_cast<size_t>((b * global + rank * batch_size_ + i) % n)]);
  DataSource out(std::move(mine), batch_size_, pad_id_);
  out.dropped_ = dropped_;
  return out;
}

Batch DataSource::next() {
  std::vector<const Example*> picked;
  for (int64_t i = 0; i < batch_size_; ++i) {
    picked.push_back(&examples_[cursor_]);
    cursor_ = (cursor_ + 1) % examples_.size();
  }
  return collate(picked, pad_id_);
}

}  // namespace hx
