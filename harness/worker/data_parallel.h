#pragma once
// Data parallelism over libtorch's c10d (issue 17): a process group per run (Gloo on the CPU),
// and the gradient averaging that PyTorch's DistributedDataParallel does, which libtorch has no
// C++ class for: parameters in buckets, each bucket's gradients flattened and allreduced as soon
// as backward has produced all of them (post-accumulate hooks), so that communication overlaps
// the rest of backward; nothing communicated on gradient-accumulation micro-steps but the last.
#include <torch/torch.h>

#include <chrono>
#include <memory>
#include <string>
#include <torch/csrc/distributed/c10d/Backend.hpp>

#include "harness/worker/trainer.h"
#include "model/llama.h"

namespace hx {

// Where the ranks of one run meet: a c10d FileStore on a path every rank can open (one node, or a
// shared file system), and the address Gloo's sockets bind to.
struct Rendezvous {
  int rank = 0;
  int world_size = 1;
  std::string store_path;          // a fresh file per run
  std::string host = "127.0.0.1";  // this rank's address for the collectives
  std::chrono::milliseconds timeout{std::chrono::minutes(5)};
  bool cuda = false;  // NCCL between the ranks' GPUs (cuda:rank), else Gloo between CPU ranks
};

// The run's process group (Gloo for CPU tensors, NCCL for CUDA ones). Blocks until every rank has
// joined, or
// throws after the timeout.
c10::intrusive_ptr<c10d::Backend> make_process_group(const Rendezvous& rendezvous);

// Averages gradients over the ranks of `group` (GradientSync for Trainer): buckets of at most
// `bucket_bytes` over the parameters in reverse order (the order backward produces their
// gradients), launched in bucket order, in fp32 (Gloo has no bf16 sum).
class GradientAverager : public GradientSync {
 public:
  // zero: the ZeRO stage. 1: the optimizer state sharded over the ranks (parameters assigned to
  // owners greedily by size, in order); the gradients are still averaged whole on every rank
  // (allreduce) and each owner broadcasts its updated parameters after the step. 2: gradients
  // and optimizer state sharded: each bucket is reduce-scattered (every rank receives the
  // averaged gradients of its chunk of the flattened bucket, and the parameters' own gradients
  // are released as the bucket goes out); the optimizer updates this rank's chunks, kept in
  // fp32, and an allgather gives every rank the whole updated bucket.
  GradientAverager(c10::intrusive_ptr<c10d::Backend> group, std::vector<torch::Tensor> params,
                   int64_t bucket_bytes, int zero = 0);
  ~GradientAverager() override;
  GradientAverager(const GradientAverager&) = delete;
  GradientAverager& operator=(const GradientAverager&) = delete;

  void begin_backward(bool last_micro_step) override;
  void finish() override;
  double mean(double value) override;
  std::vector<torch::Tensor> optimizer_shard(const std::vector<torch::Tensor>& params) override;
  void after_step() override;
  bool shards_gradients() const override;

  int64_t buckets() const;
  // Seconds spent waiting for allreduces in finish() since construction (the communication
  // that backward did not hide).
  double wait_seconds() const;

  struct State;  // data_parallel.cpp (its hooks reach it)

 private:
  std::unique_ptr<State> state_;
};

// One rank of a data-parallel run: its process group, its gradient averager, and the
// collectives that turn each rank's measurements into the run's.
class DataParallelRank {
 public:
  DataParallelRank(const Rendezvous& rendezvous, Transformer& model, int64_t bucket_bytes,
                   int zero);
  GradientAverager& averager() { return *averager_; }
  int world_size() const;
  double max(double value);
  double sum(double value);
  std::vector<double> gather(double value);  // every rank's value, by rank

 private:
  double reduce(double value, c10d::ReduceOp op);
  torch::Device device_;  // where the collectives' tensors live
  c10::intrusive_ptr<c10d::Backend> group_;
  std::unique_ptr<GradientAverager> averager_;
};

}  // namespace hx
