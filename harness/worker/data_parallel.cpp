#include "harness/worker/data_parallel.h"

#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <torch/csrc/distributed/c10d/FileStore.hpp>
// Parsed against extern/gloo-declarations (the wheel ships no Gloo headers; see its README).
#include <algorithm>
#include <mutex>
#include <stdexcept>
#include <unordered_map>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#if HX_DP_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif
#include <utility>

namespace hx {

c10::intrusive_ptr<c10d::Backend> make_process_group(const Rendezvous& r) {
  if (r.world_size < 1 || r.rank < 0 || r.rank >= r.world_size)
    throw std::invalid_argument("data parallelism: rank " + std::to_string(r.rank) +
                                " is not in a world of " + std::to_string(r.world_size));
  auto store = c10::make_intrusive<c10d::FileStore>(r.store_path, r.world_size);
  if (r.cuda) {
#if HX_DP_NCCL
    auto options = c10d::ProcessGroupNCCL::Options::create();
    options->timeout = r.timeout;
    return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, r.rank, r.world_size, options);
#else
    throw std::invalid_argument(
        "data parallelism on cuda: this harness-worker was built without NCCL's headers "
        "(CMake found no nvidia/nccl/include beside the torch package)");
#endif
  }
  auto options = c10d::ProcessGroupGloo::Options::create(r.timeout);
  options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(r.host));
  options->threads = 1;  // one bucket at a time: the compute threads keep the cores
  return c10::make_intrusive<c10d::ProcessGroupGloo>(store, r.rank, r.world_size, options);
}

// ZeRO-2's reduce-scatters in flight at once (their flat copies alive).
constexpr size_t kZero2InFlight = 2;

struct GradientAverager::State {
  struct Bucket {
    std::vector<size_t> params;  // indices into `params`
    int64_t numel = 0;
    size_t pending = 0;  // gradients still to come in this step
    torch::Tensor flat;  // fp32, the bucket's gradients while they are reduced
    c10::intrusive_ptr<c10d::Work> work;
    // ZeRO-2: the bucket flattened and padded to world x chunk elements; this rank updates
    // elements [rank x chunk, (rank + 1) x chunk) of it (the optimizer's parameter, its gradient
    // the reduce-scatter's output).
    int64_t chunk = 0;
    torch::Tensor flat_param;  // the bucket's parameters, as one buffer (they are views of it)
    torch::Tensor shard;       // this rank's chunk of flat_param
  };

  c10::intrusive_ptr<c10d::Backend> group;
  std::vector<torch::Tensor> params;
  std::vector<size_t> bucket_of;  // parameter -> bucket
  std::vector<Bucket> buckets;
  std::vector<int> owner;  // ZeRO-1: the rank that updates each parameter; empty: every rank
  bool zero2 = false;
  std::mutex mutex;  // CUDA's backward runs hooks on the device's thread
  bool syncing = false;
  size_t next_launch = 0;  // buckets are launched in order, the same on every rank
  double wait_s = 0;

  void launch(Bucket& b) {
    std::vector<torch::Tensor> grads;
    grads.reserve(b.params.size());
    for (const size_t i : b.params) {
      const auto& p = params[i];
      grads.push_back(p.grad().defined()
                          ? p.grad().reshape(-1).to(torch::kFloat32)
                          : torch::zeros({p.numel()}, p.options().dtype(torch::kFloat32)));
    }
    if (zero2) {
      // The gradients move into the flat copy (padded to world x chunk): the parameters' own go,
      // and each rank receives the sum of its chunk only.
      b.flat = torch::zeros({b.chunk * group->getSize()}, grads.front().options());
      auto head = b.flat.slice(0, 0, b.numel);
      torch::cat_out(head, grads);
      grads.clear();
      for (const size_t i : b.params) params[i].mutable_grad() = torch::Tensor();
      auto reduced = torch::empty({b.chunk}, b.flat.options());
      b.work = group->_reduce_scatter_base(reduced, b.flat);
      b.shard.mutable_grad() = reduced;
      return;
    }
    b.flat = torch::cat(grads);
    std::vector<torch::Tensor> tensors{b.flat};
    b.work = group->allreduce(tensors);
  }

  void launch_ready() {
    while (next_launch < buckets.size() && buckets[next_launch].pending == 0)
      launch(buckets[next_launch++]);
    // ZeRO-2: a bucket whose reduce-scatter is done needs its flat copy no more (its result is
    // the shard's gradient). At most kZero2InFlight buckets stay in flight, the oldest waited
    // for: the gradients' memory is then a few buckets' whatever the model's size, at the cost
    // of some overlap (as DeepSpeed's ZeRO-2 bounds its reduction buckets).
    if (zero2) {
      size_t in_flight = 0;
      for (size_t k = next_launch; k-- > 0;) {
        auto& b = buckets[k];
        if (!b.flat.defined()) continue;
        if (b.work->isCompleted() || ++in_flight > kZero2InFlight) {
          const auto start = std::chrono::steady_clock::now();
          b.work->wait();
          wait_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
          b.flat = torch::Tensor();
        }
      }
    }
  }

  void on_gradient(size_t param) {
    const std::lock_guard<std::mutex> lock(mutex);
    if (!syncing) return;
    auto& b = buckets[bucket_of[param]];
    if (b.pending > 0) --b.pending;
    launch_ready();
  }
};

namespace {
class ReadyHook : public torch::autograd::PostAccumulateGradHook {
 public:
  ReadyHook(GradientAverager::State* state, size_t param) : state_(state), param_(param) {}
  void operator()(const torch::autograd::Variable& /*tensor*/) override {
    state_->on_gradient(param_);
  }

 private:
  GradientAverager::State* state_;
  size_t param_;
};
}  // namespace

GradientAverager::GradientAverager(c10::intrusive_ptr<c10d::Backend> group,
                                   std::vector<torch::Tensor> params, int64_t bucket_bytes,
                                   int zero)
    : state_(std::make_unique<State>()) {
  auto& s = *state_;
  s.group = std::move(group);
  s.params = std::move(params);
  s.zero2 = zero == 2;
  if (zero == 1) {
    // Each parameter to the rank with the fewest elements so far: shards of about equal size.
    std::vector<int64_t> load(static_cast<size_t>(s.group->getSize()), 0);
    for (const auto& p : s.params) {
      const auto least = std::min_element(load.begin(), load.end()) - load.begin();
      s.owner.push_back(static_cast<int>(least));
      load[static_cast<size_t>(least)] += p.numel();
    }
  }
  s.bucket_of.resize(s.params.size());
  for (size_t k = s.params.size(); k-- > 0;) {
    const int64_t bytes = s.params[k].numel() * 4;
    if (s.buckets.empty() ||
        (s.buckets.back().numel > 0 && (s.buckets.back().numel * 4) + bytes > bucket_bytes))
      s.buckets.emplace_back();
    s.buckets.back().params.push_back(k);
    s.buckets.back().numel += s.params[k].numel();
    s.bucket_of[k] = s.buckets.size() - 1;
  }
  if (s.zero2) {
    // Each bucket's parameters become views of one flat buffer (padded to world x chunk), so that
    // this rank's chunk is a view too: the optimizer updates the parameters in place, with no
    // copy of them, and the allgather writes the other chunks straight into them.
    const int64_t world = s.group->getSize();
    const int64_t rank = s.group->getRank();
    torch::NoGradGuard no_grad;
    for (auto& b : s.buckets) {
      b.chunk = (b.numel + world - 1) / world;
      const auto& first = s.params[b.params.front()];
      b.flat_param = torch::zeros({b.chunk * world}, first.options().requires_grad(false));
      int64_t offset = 0;
      for (const size_t i : b.params) {
        auto& p = s.params[i];
        if (p.scalar_type() != first.scalar_type())
          throw std::invalid_argument("zero 2: trainable parameters of different dtypes");
        auto view = b.flat_param.slice(0, offset, offset + p.numel()).view(p.sizes());
        view.copy_(p.detach());
        p.set_data(view);
        offset += p.numel();
      }
      b.shard = b.flat_param.slice(0, rank * b.chunk, (rank + 1) * b.chunk);
    }
  }
  for (size_t k = 0; k < s.params.size(); ++k)
    torch::autograd::impl::set_post_acc_grad_hooks(s.params[k], std::make_unique<ReadyHook>(&s, k));
}

GradientAverager::~GradientAverager() {
  for (const auto& p : state_->params) torch::autograd::impl::set_post_acc_grad_hooks(p, nullptr);
}

void GradientAverager::begin_backward(bool last_micro_step) {
  auto& s = *state_;
  const std::lock_guard<std::mutex> lock(s.mutex);
  s.syncing = last_micro_step;
  if (!last_micro_step) return;
  for (auto& b : s.buckets) {
    b.pending = b.params.size();
    b.work.reset();
    b.flat = torch::Tensor();
  }
  s.next_launch = 0;
}

void GradientAverager::finish() {
  auto& s = *state_;
  {
    // Parameters that got no gradient this step (unused) leave their bucket pending: it goes out
    // now, with zeros for them, still in bucket order.
    const std::lock_guard<std::mutex> lock(s.mutex);
    for (auto& b : s.buckets) b.pending = 0;
    s.launch_ready();
    s.syncing = false;
  }
  const auto world = static_cast<double>(s.group->getSize());
  for (auto& b : s.buckets) {
    const auto start = std::chrono::steady_clock::now();
    b.work->wait();
    s.wait_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (s.zero2) {
      // This rank's chunk of the averaged gradients, in the parameters' dtype.
      b.shard.mutable_grad() = b.shard.grad().div_(world).to(b.shard.scalar_type());
      b.flat = torch::Tensor();
      b.work.reset();
      continue;
    }
    b.flat.div_(world);
    int64_t offset = 0;
    for (const size_t i : b.params) {
      auto& p = s.params[i];
      auto averaged = b.flat.slice(0, offset, offset + p.numel()).view(p.sizes());
      offset += p.numel();
      if (p.grad().defined()) {
        p.mutable_grad().copy_(averaged);
      } else {
        p.mutable_grad() = averaged.to(p.scalar_type()).clone();
      }
    }
    b.flat = torch::Tensor();
    b.work.reset();
  }
}

double GradientAverager::mean(double value) {
  // On the parameters' device: NCCL reduces CUDA tensors only.
  std::vector<torch::Tensor> tensors{
      torch::tensor({value}, torch::kFloat64).to(state_->params.front().device())};
  state_->group->allreduce(tensors)->wait();
  return tensors[0].item<double>() / static_cast<double>(state_->group->getSize());
}

std::vector<torch::Tensor> GradientAverager::optimizer_shard(
    const std::vector<torch::Tensor>& params) {
  const auto& s = *state_;
  if (s.zero2) {
    std::vector<torch::Tensor> shards;
    for (const auto& b : s.buckets) shards.push_back(b.shard);
    return shards;
  }
  if (s.owner.empty()) return params;
  std::unordered_map<const c10::TensorImpl*, int> owner_of;
  for (size_t k = 0; k < s.params.size(); ++k)
    owner_of.emplace(s.params[k].unsafeGetTensorImpl(), s.owner[k]);
  std::vector<torch::Tensor> mine;
  for (const auto& p : params) {
    const auto it = owner_of.find(p.unsafeGetTensorImpl());
    if (it != owner_of.end() && it->second == s.group->getRank()) mine.push_back(p);
  }
  return mine;
}

void GradientAverager::after_step() {
  auto& s = *state_;
  if (s.zero2) {
    // Every rank's updated chunk gathered into the whole bucket: into the parameters themselves.
    for (auto& b : s.buckets) {
      b.shard.mutable_grad() = torch::Tensor();  // released, as the parameters' gradients are
      auto mine = b.shard.clone();               // the input must not overlap the output
      s.group->_allgather_base(b.flat_param, mine)->wait();
    }
    return;
  }
  if (s.owner.empty()) return;
  torch::NoGradGuard no_grad;
  // One broadcast per owner: its parameters flattened (fp32, as the buckets).
  for (int root = 0; root < s.group->getSize(); ++root) {
    std::vector<torch::Tensor> owned;
    for (size_t k = 0; k < s.params.size(); ++k)
      if (s.owner[k] == root) owned.push_back(s.params[k]);
    if (owned.empty()) continue;
    std::vector<torch::Tensor> flat_parts;
    flat_parts.reserve(owned.size());
    for (const auto& p : owned) flat_parts.push_back(p.detach().reshape(-1).to(torch::kFloat32));
    std::vector<torch::Tensor> tensors{torch::cat(flat_parts)};
    c10d::BroadcastOptions options;
    options.rootRank = root;
    s.group->broadcast(tensors, options)->wait();
    int64_t offset = 0;
    for (auto& p : owned) {
      p.detach().copy_(tensors[0].slice(0, offset, offset + p.numel()).view(p.sizes()));
      offset += p.numel();
    }
  }
}

bool GradientAverager::shards_gradients() const { return state_->zero2; }

int64_t GradientAverager::buckets() const { return static_cast<int64_t>(state_->buckets.size()); }

double GradientAverager::wait_seconds() const { return state_->wait_s; }

namespace {
std::vector<torch::Tensor> trainable_parameters(Transformer& model) {
  std::vector<torch::Tensor> out;
  for (const auto& p : model->parameters())
    if (p.requires_grad()) out.push_back(p);
  return out;
}
}  // namespace

DataParallelRank::DataParallelRank(const Rendezvous& rendezvous, Transformer& model,
                                   int64_t bucket_bytes, int zero)
    : device_(model->parameters().front().device()),
      group_(make_process_group(rendezvous)),
      averager_(std::make_unique<GradientAverager>(group_, trainable_parameters(model),
                                                   bucket_bytes, zero)) {}

int DataParallelRank::world_size() const { return group_->getSize(); }

double DataParallelRank::reduce(double value, c10d::ReduceOp op) {
  std::vector<torch::Tensor> tensors{torch::tensor({value}, torch::kFloat64).to(device_)};
  c10d::AllreduceOptions options;
  options.reduceOp = op;
  group_->allreduce(tensors, options)->wait();
  return tensors[0].item<double>();
}

double DataParallelRank::max(double value) { return reduce(value, c10d::ReduceOp::MAX); }

double DataParallelRank::sum(double value) { return reduce(value, c10d::ReduceOp::SUM); }

std::vector<double> DataParallelRank::gather(double value) {
  // Each rank's value in its own slot, zeros elsewhere: the sum is every value.
  auto slots = torch::zeros({world_size()}, torch::kFloat64);
  slots[group_->getRank()] = value;
  std::vector<torch::Tensor> tensors{slots.to(device_)};
  group_->allreduce(tensors)->wait();
  slots = tensors[0].cpu();
  return {slots.data_ptr<double>(), slots.data_ptr<double>() + slots.numel()};
}

}  // namespace hx
