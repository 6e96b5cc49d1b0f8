// Data parallelism over c10d's Gloo (harness/worker/data_parallel.h): ranks as threads of this
// process, each with its own process group over one FileStore, its own model and optimizer.
// After k steps, 2 ranks x batch 1 hold the parameters of 1 rank x batch 2 (fp32, SGD and
// AdamW, with gradient accumulation, with LoRA), and record its loss.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "harness/worker/data.h"
#include "harness/worker/data_parallel.h"
#include "harness/worker/trainer.h"
#include "model/lora.h"

namespace hx {
namespace {

struct DpCase {
  std::string optimizer = "sgd";
  double lr = 0.1;
  int64_t ga = 1;
  bool lora = false;
  int zero = 0;
};

struct Outcome {
  std::vector<torch::Tensor> params;  // after the steps, named_parameters' order
  std::vector<double> losses;
  int64_t optimizer_bytes = 0;  // the optimizer state this rank (process) holds
};

constexpr int kSteps = 3;

Transformer make_model(const DpCase& setup) {
  Transformer model(config_from_name("tiny"), ModelOptions{});
  init_random(model, 0);
  if (setup.lora) {
    apply_lora(model, {"wq", "wv", "w2"}, LoraOptions{4, 8.0, 0.0}, 3);
    // Non-zero B, so that the adapters' gradients reach A too; drawn from a generator of its
    // own: the ranks' threads share the default one.
    torch::NoGradGuard no_grad;
    auto gen = at::detail::createCPUGenerator(9);
    for (auto& item : model->named_parameters())
      if (item.key().find("lora_b") != std::string::npos) item.value().normal_(0, 0.05, gen);
  }
  model->train();
  return model;
}

TrainOptions train_options(const DpCase& setup) {
  TrainOptions options;
  options.optimizer = setup.optimizer;
  options.lr = setup.lr;
  options.ga = setup.ga;
  return options;
}

Outcome collect(Transformer& model, std::vector<double> losses, const Trainer& trainer) {
  Outcome out;
  out.optimizer_bytes = trainer.optimizer_state_bytes();
  for (const auto& p : model->parameters()) out.params.push_back(p.detach().clone());
  out.losses = std::move(losses);
  return out;
}

// The random source of the test: 8 sequences of 32 tokens, batches of `batch`.
DataSource source(int64_t batch) { return DataSource::random(512, 32, batch, 5, 8); }

Outcome single_process(const DpCase& setup, int64_t global_batch) {
  auto model = make_model(setup);
  Trainer trainer(model, train_options(setup));
  auto data = source(global_batch);
  std::vector<double> losses;
  for (int i = 0; i < kSteps; ++i) losses.push_back(trainer.step(data).loss);
  return collect(model, losses, trainer);
}

std::string fresh_store_path(const std::string& name) {
  const auto path = std::filesystem::path(testing::TempDir()) /
                    ("hx-dp-" + name + "-" + std::to_string(::getpid()));
  std::filesystem::remove(path);
  return path.string();
}

// `world` ranks as threads, each batch 1 of the source's global batches.
std::vector<Outcome> data_parallel(const DpCase& setup, int world, const std::string& name,
                                   int64_t bucket_bytes = 16 * 1024) {
  const auto store = fresh_store_path(name);
  std::vector<Outcome> outcomes(static_cast<size_t>(world));
  std::vector<std::string> errors(static_cast<size_t>(world));
  std::vector<std::thread> ranks;
  for (int rank = 0; rank < world; ++rank) {
    ranks.emplace_back([&, rank] {
      try {
        Rendezvous r;
        r.rank = rank;
        r.world_size = world;
        r.store_path = store;
        r.timeout = std::chrono::seconds(30);
        auto model = make_model(setup);
        std::vector<torch::Tensor> trainable;
        for (const auto& p : model->parameters())
          if (p.requires_grad()) trainable.push_back(p);
        GradientAverager averager(make_process_group(r), trainable, bucket_bytes, setup.zero);
        EXPECT_GT(averager.buckets(), 1);  // several buckets, so their order matters
        Trainer trainer(model, train_options(setup));
        trainer.set_gradient_sync(&averager);
        auto data = source(1).shard(rank, world);
        std::vector<double> losses;
        for (int i = 0; i < kSteps; ++i) losses.push_back(trainer.step(data).loss);
        outcomes[static_cast<size_t>(rank)] = collect(model, losses, trainer);
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(rank)] = e.what();
      }
    });
  }
  for (auto& t : ranks) t.join();
  std::filesystem::remove(store);
  for (int rank = 0; rank < world; ++rank)
    EXPECT_EQ(errors[static_cast<size_t>(rank)], "") << "rank " << rank;
  return outcomes;
}

void expect_same(const Outcome& single, const Outcome& rank, double tolerance) {
  ASSERT_EQ(single.params.size(), rank.params.size());
  for (size_t i = 0; i < single.params.size(); ++i)
    EXPECT_LE((single.params[i] - rank.params[i]).abs().max().item<double>(), tolerance)
        << "parameter " << i;
  ASSERT_EQ(single.losses.size(), rank.losses.size());
  for (size_t i = 0; i < single.losses.size(); ++i)
    EXPECT_NEAR(single.losses[i], rank.losses[i], 1e-5) << "step " << i;
}

void expect_equivalent(const DpCase& setup, const std::string& name) {
  const auto single = single_process(setup, 2);
  const auto ranks = data_parallel(setup, 2, name);
  ASSERT_EQ(ranks.size(), 2U);
  for (const auto& rank : ranks) expect_same(single, rank, 1e-5);
  // The steps moved the parameters: the comparison is not between two untouched models.
  auto untouched = make_model(setup);
  double moved = 0;
  size_t i = 0;
  for (const auto& p : untouched->parameters())
    moved = std::max(moved, (p - single.params[i++]).abs().max().item<double>());
  EXPECT_GT(moved, 1e-4);
}

TEST(DataParallel, TwoRanksOfBatchOneEqualOneRankOfBatchTwoWithSgd) {
  expect_equivalent(DpCase{}, "sgd");
}

// AdamW divides by the root of its second moment: an element whose gradient is near zero moves by
// up to lr whatever its size, so two summation orders (one batch of 2 against the sum of two
// ranks' gradients) can differ by a fraction of lr there. lr 1e-4 keeps that within 1e-5.
TEST(DataParallel, TwoRanksOfBatchOneEqualOneRankOfBatchTwoWithAdamw) {
  expect_equivalent(DpCase{.optimizer = "adamw", .lr = 1e-4}, "adamw");
}

TEST(DataParallel, GradientAccumulationCommunicatesOnlyOnTheLastMicroStep) {
  expect_equivalent(DpCase{.optimizer = "adamw", .lr = 1e-4, .ga = 2}, "ga");
}

TEST(DataParallel, LoraAdaptersAreAveraged) {
  expect_equivalent(DpCase{.lora = true}, "lora");  // SGD: the averaging's scale shows
}

// ZeRO-1: each rank keeps the AdamW state of about half the parameters, updates those and
// broadcasts them; the parameters after every step are those of ZeRO-0 (one rank of batch 2).
TEST(DataParallel, ZeroOneShardsTheOptimizerStateAndGivesTheSameParameters) {
  const DpCase zero1{.optimizer = "adamw", .lr = 1e-4, .zero = 1};
  const auto single = single_process(zero1, 2);
  const auto ranks = data_parallel(zero1, 2, "zero1");
  ASSERT_EQ(ranks.size(), 2U);
  for (const auto& rank : ranks) {
    expect_same(single, rank, 1e-5);
    // About half each (shards balanced by size; tiny's largest tensor, the embedding, is 1/4).
    EXPECT_LT(rank.optimizer_bytes, single.optimizer_bytes * 3 / 4);
    EXPECT_GT(rank.optimizer_bytes, 0);
  }
  EXPECT_EQ(ranks[0].optimizer_bytes + ranks[1].optimizer_bytes, single.optimizer_bytes);
}

// ZeRO-2: each rank receives only its chunk of every bucket's averaged gradients
// (reduce-scatter), updates that chunk, and the allgather rebuilds the parameters: those of ZeRO-0
// after every step, with SGD (where the averaging's scale shows) and AdamW, each rank holding
// about half the optimizer state and, after backward, no whole gradients.
TEST(DataParallel, ZeroTwoShardsGradientsAndStateAndGivesTheSameParameters) {
  for (const DpCase& zero2 :
       {DpCase{.zero = 2}, DpCase{.optimizer = "adamw", .lr = 1e-4, .zero = 2}}) {
    const auto single = single_process(zero2, 2);
    const auto ranks = data_parallel(zero2, 2, "zero2-" + zero2.optimizer);
    ASSERT_EQ(ranks.size(), 2U);
    for (const auto& rank : ranks) {
      expect_same(single, rank, 1e-5);
      // Each rank's chunks: half of every bucket, padded to an even length.
      EXPECT_LE(rank.optimizer_bytes, single.optimizer_bytes / 2 + 64);
    }
  }
}

TEST(DataParallel, ZeroTwoRefusesWhatNeedsTheWholeGradients) {
  Rendezvous r;
  r.store_path = fresh_store_path("refuse");
  auto model = make_model(DpCase{});
  std::vector<torch::Tensor> trainable;
  for (const auto& p : model->parameters()) trainable.push_back(p);
  GradientAverager averager(make_process_group(r), trainable, 1 << 20, 2);
  TrainOptions clipped;
  clipped.max_grad_norm = 1.0;
  Trainer with_clipping(model, clipped);
  EXPECT_THROW(with_clipping.set_gradient_sync(&averager), std::invalid_argument);
  std::filesystem::remove(r.store_path);
}

// A rank whose peers never come is told so within the timeout, not left waiting.
TEST(DataParallel, AMissingRankFailsWithinTheTimeout) {
  Rendezvous r;
  r.rank = 0;
  r.world_size = 2;
  r.store_path = fresh_store_path("alone");
  r.timeout = std::chrono::seconds(2);
  const auto start = std::chrono::steady_clock::now();
  EXPECT_ANY_THROW(make_process_group(r));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(20));
  std::filesystem::remove(r.store_path);
  r.rank = 2;
  EXPECT_THROW(make_process_group(r), std::invalid_argument);
}

}  // namespace
}  // namespace hx
