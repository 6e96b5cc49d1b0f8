#include "harness/estimate/estimate.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <utility>

#include "harness/plan/config_keys.h"
#include "harness/plan/fields.h"
#include "harness/plan/pretokenize.h"
#include "harness/report/table.h"
#include "harness/store/json_io.h"
#include "model/quant4_cpu.h"

// The system libtorch's version header (macros only; harness_core links no libtorch).
#if __has_include(<torch/csrc/api/include/torch/version.h>)
#include <torch/csrc/api/include/torch/version.h>
#endif

namespace hx {
namespace {

constexpr double kMB = 1024.0 * 1024.0;  // the measured *_mb metrics are MiB

// ---- Config, read with the worker's defaults (harness/worker/workloads.cpp) ----

using Config = RunSettings;

// Before libtorch 2.0 the node of mean(dim) saves its input (measured on 1.13: each RMSNorm
// holds x^2 until backward); from 2.0 it keeps only sizes and numel.
bool mean_saves_input(const EstimateOptions& options) {
  const std::string v = options.libtorch.empty() ? default_libtorch_version() : options.libtorch;
  try {
    return std::stoi(v) < 2;
  } catch (const std::exception&) {
    return false;
  }
}

int dtype_bytes(const std::string& name) {
  if (name == "fp32") return 4;
  if (name == "fp16" || name == "bf16") return 2;
  throw std::invalid_argument("unknown dtype \"" + name + "\" (expected fp32, fp16, bf16)");
}

// ---- The timeline ----
//
// Tensors share storages (views); a storage is freed when no forward variable and no backward
// node holds it. Gradients flowing backward are storages too, held in per-tensor buffers until the
// node that produced the tensor has run (then freed), accumulated in place when a second one
// arrives (autograd's InputBuffer). Parameter gradients live until the optimizer has stepped.
class Timeline {
 public:
  struct Node {
    std::string what;
    std::vector<int> inputs;       // tensors that get a gradient (the ones requiring grad)
    std::vector<int> outputs;      // tensors whose gradient the node consumes
    std::vector<int> saved;        // storages the node holds until it has run
    std::vector<int> params;       // parameters that get a gradient
    int64_t temp = 0;              // scratch bytes while it runs
    bool pass = false;             // gradient passes through unchanged where shape and dtype agree
    bool share = false;            // the inputs' gradients are views of the incoming one (unbind)
    std::function<void()> custom;  // replaces the above (gradient checkpointing)
  };
  struct Param {
    int64_t numel = 0;
    int elem = 4;
    bool trainable = false;
    int grad = -1;  // storage of .grad
  };

  bool grad_mode = true;
  std::string phase = "setup";
  std::string where;  // "layer 3" while inside a block

  int64_t current() const { return current_; }
  int64_t peak() const { return peak_; }
  const std::string& peak_at() const { return peak_at_; }
  void reset_peak() {
    peak_ = current_;
    peak_at_ = phase;
  }

  // ---- storages and tensors ----
  int storage(int64_t bytes, const std::string& what) {
    storages_.push_back({bytes, 1});
    current_ += bytes;
    if (current_ > peak_) {
      peak_ = current_;
      peak_at_ = phase + (where.empty() ? "" : ", " + where) + (what.empty() ? "" : ": " + what);
    }
    return static_cast<int>(storages_.size()) - 1;
  }
  void ref(int s) { ++storages_[static_cast<size_t>(s)].refs; }
  void unref(int s) {
    auto& st = storages_[static_cast<size_t>(s)];
    if (--st.refs == 0) current_ -= st.bytes;
  }
  int tensor(int64_t numel, int elem, bool rg, const std::string& what) {
    const int s = storage(numel * elem, what);
    tensors_.push_back({s, numel, elem, rg && grad_mode});
    pending_.push_back(-1);
    return static_cast<int>(tensors_.size()) - 1;
  }
  // A view: same storage, its own shape (numel) and gradient buffer.
  int view(int t, int64_t numel = -1) {
    const auto src = tensors_[static_cast<size_t>(t)];
    ref(src.storage);
    tensors_.push_back({src.storage, numel < 0 ? src.numel : numel, src.elem, src.rg});
    pending_.push_back(-1);
    return static_cast<int>(tensors_.size()) - 1;
  }
  void drop(int t) { unref(tensors_[static_cast<size_t>(t)].storage); }
  bool rg(int t) const { return tensors_[static_cast<size_t>(t)].rg; }
  void set_rg(int t, bool v) { tensors_[static_cast<size_t>(t)].rg = v; }
  int elem(int t) const { return tensors_[static_cast<size_t>(t)].elem; }
  int64_t numel(int t) const { return tensors_[static_cast<size_t>(t)].numel; }
  int64_t bytes(int t) const { return numel(t) * elem(t); }
  int storage_of(int t) const { return tensors_[static_cast<size_t>(t)].storage; }

  // ---- parameters ----
  int param(int64_t numel, int elem, bool trainable) {
    params_.push_back({numel, elem, trainable, -1});
    return static_cast<int>(params_.size()) - 1;
  }
  Param& p(int id) { return params_[static_cast<size_t>(id)]; }
  const std::vector<Param>& params() const { return params_; }
  // AccumulateGrad: the first gradient is stolen, a later one is added in place.
  void param_grad(int id, const std::string& what) {
    auto& pr = p(id);
    const int g = storage(pr.numel * pr.elem, what + " (weight grad)");
    if (pr.grad < 0) {
      pr.grad = g;
    } else {
      unref(g);
    }
    if (on_param_grad) on_param_grad(id);
  }
  // Called after each parameter gradient's accumulation (data parallelism's bucket hooks).
  std::function<void(int)> on_param_grad;
  void free_param_grads() {
    for (auto& pr : params_) {
      if (pr.grad >= 0) unref(pr.grad);
      pr.grad = -1;
    }
  }

  // ---- autograd ----
  // An op: allocates its output; when grad mode is on and something requires grad, records a
  // node that saves `saved` (tensors), gives gradients to the inputs that require grad and to the
  // trainable `params`, and needs `temp` scratch bytes in backward.
  struct Op {
    std::string what;
    std::vector<int> inputs;
    std::vector<int> params;
    std::vector<int> saved;
    bool save_output = false;
    int64_t temp = 0;
    bool pass = false;
    bool share = false;
  };
  int op(const Op& o, int64_t numel, int elem) {
    bool any = false;
    for (int t : o.inputs) any = any || rg(t);
    for (int id : o.params) any = any || p(id).trainable;
    const int out = tensor(numel, elem, any, o.what);
    if (grad_mode && any) {
      Node n;
      n.what = (where.empty() ? "" : where + ": ") + o.what;
      n.outputs = {out};
      for (int t : o.inputs)
        if (rg(t)) n.inputs.push_back(t);
      for (int id : o.params)
        if (p(id).trainable) n.params.push_back(id);
      for (int t : o.saved) save(n, t);
      if (o.save_output) save(n, out);
      n.temp = o.temp;
      n.pass = o.pass;
      n.share = o.share;
      nodes_.push_back(std::move(n));
    }
    return out;
  }
  // A view op (view, transpose, select, narrow): shares x's storage. Its backward passes the
  // gradient on when the shapes agree, else allocates one of x's size (select/narrow backward:
  // zeros of the full size; `pass` false: a reshape of a transposed gradient, a copy).
  int view_op(int x, const std::string& what, int64_t numel = -1, bool pass = true) {
    const int out = view(x, numel);
    if (grad_mode && rg(x)) {
      Node n;
      n.what = (where.empty() ? "" : where + ": ") + what;
      n.outputs = {out};
      n.inputs = {x};
      n.pass = pass;
      nodes_.push_back(std::move(n));
    }
    return out;
  }
  void save(Node& n, int t) {
    const int s = storage_of(t);
    ref(s);
    n.saved.push_back(s);
  }
  void add_node(Node n) { nodes_.push_back(std::move(n)); }
  Node& last_node() { return nodes_.back(); }
  size_t node_count() const { return nodes_.size(); }

  int pending(int t) const { return pending_[static_cast<size_t>(t)]; }
  void take_pending(int from, int to) {
    const int g = pending_[static_cast<size_t>(from)];
    pending_[static_cast<size_t>(from)] = -1;
    if (g >= 0) deliver(to, g);
  }
  // A gradient for tensor t arrives (storage g, one reference handed over).
  void deliver(int t, int g) {
    int& buf = pending_[static_cast<size_t>(t)];
    if (buf < 0) {
      buf = g;
    } else if (storages_[static_cast<size_t>(buf)].refs == 1) {
      unref(g);  // old.add_(new)
    } else if (storages_[static_cast<size_t>(g)].refs == 1) {
      unref(buf);  // new.add_(old)
      buf = g;
    } else {
      const int sum = storage(storages_[static_cast<size_t>(g)].bytes, "gradient sum");
      unref(buf);
      unref(g);
      buf = sum;
    }
  }
  void seed_gradient(int t) { deliver(t, storage(bytes(t), "loss gradient")); }

  // Runs the nodes recorded after `down_to` in reverse creation order (the engine runs the
  // ready node of the highest sequence number, which is this order) and forgets them.
  void backward(size_t down_to = 0) {
    while (nodes_.size() > down_to) {
      Node n = std::move(nodes_.back());
      nodes_.pop_back();
      run(n);
    }
  }

 private:
  struct Storage {
    int64_t bytes = 0;
    int refs = 0;
  };
  struct Tensor {
    int storage = -1;
    int64_t numel = 0;
    int elem = 4;
    bool rg = false;
  };

  // The gradient of input `t` of a generic node: the output's gradient itself when the node
  // shares it or passes it through unchanged (same bytes and element size), else a new storage.
  void input_grad(const Node& n, int t) {
    const int o = n.outputs.front();
    const int go = pending(o);
    if (go >= 0 && (n.share || (n.pass && bytes(t) == bytes(o) && elem(t) == elem(o)))) {
      ref(go);
      deliver(t, go);
    } else {
      deliver(t, storage(bytes(t), n.what + " (input grad)"));
    }
  }

  // A node without a custom backward: scratch, input gradients, parameter gradients.
  void generic_backward(const Node& n) {
    const std::string saved_where = where;
    where.clear();
    const int temp = n.temp > 0 ? storage(n.temp, n.what + " (scratch)") : -1;
    for (int t : n.inputs) input_grad(n, t);
    for (int id : n.params) param_grad(id, n.what);
    if (temp >= 0) unref(temp);
    where = saved_where;
  }

  void run(Node& n) {
    bool reached = false;
    for (int o : n.outputs) reached = reached || pending(o) >= 0;
    if (reached) {
      if (n.custom) {
        n.custom();
      } else {
        generic_backward(n);
      }
    }
    for (int o : n.outputs) {
      int& g = pending_[static_cast<size_t>(o)];
      if (g >= 0) unref(g);
      g = -1;
    }
    for (int s : n.saved) unref(s);
  }

  std::vector<Storage> storages_;
  std::vector<Tensor> tensors_;
  std::vector<int> pending_;
  std::vector<Param> params_;
  std::vector<Node> nodes_;
  int64_t current_ = 0, peak_ = 0;
  std::string peak_at_;
};

// ---- 4-bit weights (model/quant4.cpp: bitsandbytes' layout) ----

struct QuantSettings {
  bool on = false;
  bool double_quant = false;
  int64_t block = 64;
  int compute = 4;  // compute_dtype bytes: the dequantised weight, the product
  // Under autocast with compute_dtype other than mp's dtype, torch::linear inside the 4-bit
  // product casts its operands again (to the autocast dtype).
  bool autocast_recast = false;
  int64_t chunk_target = int64_t{1} << 20;  // elements per dequantisation chunk (CUDA: 2^24)
  // The CPU's one-pass kernel (model/quant4_cpu.h, on processors with AVX-512): no temporaries
  // beside the absmax and the output.
  bool one_pass = false;
  std::set<std::string> targets;
};

constexpr int64_t kDoubleQuantBlock = 256;  // bitsandbytes' block of the nested quantisation

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// A 4-bit weight of n elements as stored: the packed codes (two a byte) and the scales: an fp32
// absmax per block, or with double quantisation a uint8 code per block, the fp32 offset and an
// fp32 scale per 256 blocks.
int64_t quant4_weight_bytes(int64_t n, const QuantSettings& q) {
  const int64_t blocks = ceil_div(n, q.block);
  const int64_t scales =
      q.double_quant ? blocks + 4 + 4 * ceil_div(blocks, kDoubleQuantBlock) : 4 * blocks;
  return ceil_div(n, 2) + scales;
}

// The code tables model/quant4.cpp keeps in statics once it has (de)quantised (measured with
// the counting allocator): on the CPU both types' fp32 codes (2 x 64 B), sorted orders (int64,
// 2 x 128 B) and midpoints (fp32, 2 x 60 B), and byte-pair tables (fp32 256 x 2, 2 x 2048 B);
// with double quantisation the dynamic map (fp32, 1024 B) and its 65536-entry uint8 lookup. On
// CUDA the device copies of the one type's midpoints, order (as uint8 on use) and pair table.
int64_t quant4_table_bytes(const QuantSettings& q, bool cpu) {
  if (!q.on) return 0;
  const int64_t nested = q.double_quant ? 1024 + 65536 : 0;
  if (cpu) return 2 * (64 + 128 + 60 + 2048) + nested;
  return 60 + 128 + 2048 + nested;
}

// ---- The model on the timeline (model/llama.cpp, model/lora.cpp, model/checkpoint.cpp) ----

struct ModelOptions {
  LlamaConfig cfg;
  int elem = 4;           // model dtype bytes
  bool autocast = false;  // mp: linear/matmul in `compute` bytes, weights cast per use
  int compute = 4;        // autocast dtype bytes
  bool full = true;       // base weights trainable
  std::set<std::string> lora;
  int64_t lora_r = 16;
  double lora_dropout = 0.05;
  int64_t gc_every = 0;
  bool training = true;
  bool mean_saves_input = false;  // libtorch < 2: mean(dim)'s node keeps its whole input
  bool sdpa = true;               // attention: sdpa (the fused kernel) | math
  bool cpu = true;                // CPU tensors are counted (the checkpoint's RNG state)
  QuantSettings quant;            // 4-bit base weights of quant.targets
};

// The CPU generator's state as model/checkpoint.cpp saves it (gen.get_state(): a uint8 tensor;
// measured with the counting allocator on libtorch 1.13).
constexpr int64_t kCpuRngStateBytes = 5056;

class ModelSim {
 public:
  ModelSim(Timeline& tl, ModelOptions o) : tl_(tl), o_(std::move(o)) { build_params(); }

  const ModelOptions& options() const { return o_; }

  // Bytes of every parameter (base + adapters) and of the trainable ones.
  int64_t weight_bytes() const {
    int64_t n = 0;
    for (const auto& p : tl_.params()) n += p.numel * p.elem;
    return n;
  }
  // Bytes of the 4-bit weights (packed codes and scales), part of weight_bytes().
  int64_t weight_4bit_bytes() const {
    int64_t n = 0;
    for (const Layer& l : layers_)
      for (const Lin* lin : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w1, &l.w2, &l.w3})
        if (lin->quant) n += tl_.params()[static_cast<size_t>(lin->w)].numel;
    return n;
  }
  int64_t trainable_count() const {
    int64_t n = 0;
    for (const auto& p : tl_.params())
      if (p.trainable) n += p.numel;
    return n;
  }

  // The model's forward over B x T tokens at positions [start, start + T) (S = start + T keys),
  // up to the final norm's output (B, T, D). `cache`: keys/values go into the KV cache.
  int hidden(int64_t b, int64_t t, int64_t start, bool cache) {
    b_ = b;
    t_ = t;
    s_ = start + t;
    cache_ = cache;
    mask_ = -1;
    // The fused kernel makes its own causal mask when queries and keys start together.
    if (t > 1 && (!o_.sdpa || start > 0)) {
      const int full = tl_.tensor(t * s_, 4, false, "causal mask");
      mask_ = tl_.tensor(t * s_, 4, false, "causal mask");  // .triu
      tl_.drop(full);
    }
    const int64_t n = b * t;
    int h = tl_.op({"embedding", {}, {emb_}, {}, false, 0, false}, n * dim(), o_.elem);
    bool checkpointed = false;
    for (int64_t i = 0; i < o_.cfg.n_layers; ++i) {
      tl_.where = "layer " + std::to_string(i);
      const bool ckpt = o_.gc_every > 0 && i % o_.gc_every == 0 && tl_.grad_mode && !cache;
      const int next = ckpt ? checkpoint_block(h, i) : block(h, i);
      checkpointed = checkpointed || ckpt;
      tl_.drop(h);
      h = next;
    }
    tl_.where = "final norm";
    const int out = rmsnorm(h, norm_);
    tl_.drop(h);
    tl_.where.clear();
    if (mask_ >= 0) {
      if (checkpointed) {
        graph_held_.push_back(tl_.storage_of(mask_));  // RecomputeState holds it
      } else {
        tl_.drop(mask_);  // a local of hidden()
      }
    }
    mask_ = -1;
    return out;
  }
  // What the checkpoints' RecomputeState objects hold (the causal mask, the RNG states) lives
  // until the graph is destroyed: the caller releases it at the end of the micro-batch.
  void release_graph() {
    for (int s : graph_held_) tl_.unref(s);
    graph_held_.clear();
  }

  // TransformerImpl::logits: the output projection (tied: the embedding), fp32.
  int logits(int hidden, int64_t rows) {
    tl_.where = "output";
    const int y = linear(hidden, output_, rows, dim(), o_.cfg.vocab_size, "output projection");
    int out = y;
    if (tl_.elem(y) != 4) {
      out = to_dtype(y, 4, "logits to fp32");
      tl_.drop(y);
    }
    tl_.where.clear();
    return out;
  }

  // End of an autocast scope: the cached low-precision weight copies are released.
  void clear_autocast_cache() {
    for (auto& [param, t] : cast_cache_) tl_.drop(t);
    cast_cache_.clear();
  }

 private:
  int64_t dim() const { return o_.cfg.dim; }

  void build_params() {
    const auto& c = o_.cfg;
    const int e = o_.elem;
    const int64_t hd = c.head_dim();
    auto base = [&](int64_t numel) { return tl_.param(numel, e, o_.full); };
    emb_ = base(c.vocab_size * c.dim);
    for (int64_t i = 0; i < c.n_layers; ++i) {
      Layer l;
      auto linear = [&](const char* name, int64_t in, int64_t out) {
        // A 4-bit weight: buffers, frozen (one parameter of its bytes for the sums).
        const bool quant = o_.quant.on && o_.quant.targets.count(name) > 0;
        const int w =
            quant ? tl_.param(quant4_weight_bytes(in * out, o_.quant), 1, false) : base(in * out);
        Lin lin{w, -1, -1, in, out, quant};
        // Adapters in the model dtype on a 4-bit weight too (its original dtype).
        if (o_.lora.count(name)) {
          lin.a = tl_.param(o_.lora_r * in, e, true);
          lin.b = tl_.param(out * o_.lora_r, e, true);
        }
        return lin;
      };
      l.wq = linear("wq", c.dim, c.n_heads * hd);
      l.wk = linear("wk", c.dim, c.n_kv_heads * hd);
      l.wv = linear("wv", c.dim, c.n_kv_heads * hd);
      l.wo = linear("wo", c.n_heads * hd, c.dim);
      l.w1 = linear("w1", c.dim, c.ffn_hidden);
      l.w2 = linear("w2", c.ffn_hidden, c.dim);
      l.w3 = linear("w3", c.dim, c.ffn_hidden);
      l.attention_norm = base(c.dim);
      l.ffn_norm = base(c.dim);
      layers_.push_back(l);
    }
    norm_ = base(c.dim);
    output_ = c.tie_embeddings ? Lin{emb_, -1, -1, c.dim, c.vocab_size}
                               : Lin{base(c.vocab_size * c.dim), -1, -1, c.dim, c.vocab_size};
  }

  struct Lin {
    int w = -1, a = -1, b = -1;  // weight, LoRA A (r, in), LoRA B (out, r)
    int64_t in = 0, out = 0;
    bool quant = false;  // w is a 4-bit weight (quant4_linear)
  };
  struct Layer {
    Lin wq, wk, wv, wo, w1, w2, w3;
    int attention_norm = -1, ffn_norm = -1;
  };

  // x.to(dtype): a new tensor; its backward casts the gradient back.
  int to_dtype(int x, int elem, const std::string& what) {
    return tl_.op({what, {x}, {}, {}, false, 0, false}, tl_.numel(x), elem);
  }

  // Autocast's copy of a weight in the compute dtype: cached for the autocast scope when the
  // weight is a trainable leaf, else made per use.
  int weight_cast(int w, bool* cached) {
    *cached = tl_.p(w).trainable;
    if (*cached) {
      if (auto it = cast_cache_.find(w); it != cast_cache_.end()) return it->second;
      const int t =
          tl_.op({"weight cast", {}, {w}, {}, false, 0, false}, tl_.p(w).numel, o_.compute);
      cast_cache_[w] = t;  // the cache holds it until the autocast scope ends
      return t;
    }
    return tl_.tensor(tl_.p(w).numel, o_.compute, false, "weight cast");
  }

  // torch::linear(x, W): y = x W^T. The mm node saves x when W needs a gradient and W when x
  // does; the weight itself costs nothing unless autocast made a copy.
  int linear_plain(int x, int w, int64_t rows, int64_t out, const std::string& what) {
    int xin = x;
    const bool cast_x = o_.autocast && tl_.elem(x) != o_.compute;
    if (cast_x) xin = to_dtype(x, o_.compute, what + " input cast");
    int wt = -1;
    bool cached = false;
    if (o_.autocast && tl_.p(w).elem != o_.compute) wt = weight_cast(w, &cached);
    Timeline::Op op{what, {xin}, {}, {}, false, 0, false};
    const bool w_rg = wt >= 0 ? tl_.rg(wt) : tl_.p(w).trainable;
    if (wt >= 0) {
      op.inputs.push_back(wt);
      if (tl_.rg(xin)) op.saved.push_back(wt);
    } else {
      op.params.push_back(w);
    }
    if (w_rg) op.saved.push_back(xin);
    const int y = tl_.op(op, rows * out, o_.autocast ? o_.compute : tl_.elem(x));
    if (cast_x) tl_.drop(xin);
    if (wt >= 0 && !cached) tl_.drop(wt);
    return y;
  }

  // dequantize_4bit to the compute dtype: the fp32 absmax (double quantisation undone), then the
  // weight, in one pass on a CPU with AVX-512, else chunk by chunk through int32 byte indices and
  // fp32 code values (the first chunk is the largest). Returns the weight's storage; the absmax
  // copy dies with the call.
  int dequantize_4bit(int64_t n, const std::string& what) {
    const auto& q = o_.quant;
    const int64_t blocks = ceil_div(n, q.block);
    int absmax = -1;
    if (q.double_quant) {
      // quant4_absmax: code2[q8.to(int32)] * absmax2.repeat_interleave(256) + offset.
      const int scales = tl_.storage(4 * ceil_div(blocks, kDoubleQuantBlock) * kDoubleQuantBlock,
                                     what + " absmax2 repeated");
      std::vector<int> steps;
      for (const char* step : {"absmax codes to int32", "absmax code values", "absmax * scales"})
        steps.push_back(tl_.storage(4 * blocks, what + " " + step));
      absmax = tl_.storage(4 * blocks, what + " absmax");
      for (auto it = steps.rbegin(); it != steps.rend(); ++it) tl_.unref(*it);
      tl_.unref(scales);
    }
    const int w = tl_.storage(n * q.compute, what + " dequantised weight");
    if (q.one_pass) {
      if (absmax >= 0) tl_.unref(absmax);
      return w;
    }
    // Per chunk: the bytes as int32 indices; an fp32 chunk of whole pairs is looked up into the
    // output itself, any other (another compute dtype, an odd last chunk) into fp32 values first.
    const int64_t chunk = std::max(q.block, q.chunk_target / q.block * q.block);
    const int64_t first = std::min(n, chunk);
    const int64_t last = n - (ceil_div(n, chunk) - 1) * chunk;
    dequantise_chunk(first, q.compute != 4 || first % 2 != 0, what);
    if (last != first || last % 2 != 0)
      dequantise_chunk(last, q.compute != 4 || last % 2 != 0, what);
    if (absmax >= 0) tl_.unref(absmax);
    return w;
  }

  // One chunk of dequantize_4bit's lookup: its int32 byte indices, and fp32 values unless the
  // lookup writes the output directly.
  void dequantise_chunk(int64_t len, bool through_values, const std::string& what) {
    const int64_t pairs = ceil_div(len, 2);
    const int index = tl_.storage(4 * pairs, what + " dequantise: byte indices");
    if (through_values) {
      const int values = tl_.storage(8 * pairs, what + " dequantise: code values");
      tl_.unref(values);
    }
    tl_.unref(index);
  }

  // quant4_linear (Quant4Matmul::forward runs without grad): the weight dequantised, x cast to
  // the compute dtype, the product (under autocast torch::linear may cast both again), the
  // product cast back to x's dtype. The node saves only the 4-bit buffers (counted as weights);
  // its backward dequantises again. Casts are decided on element sizes (fp16 against bf16 is
  // not seen).
  int linear_4bit(int x, const Lin& l, int64_t rows, const std::string& what) {
    const auto& q = o_.quant;
    const bool rg = tl_.grad_mode && tl_.rg(x);
    const bool grad_mode = tl_.grad_mode;
    tl_.grad_mode = false;
    const int w = dequantize_4bit(l.in * l.out, what);
    const int xc = tl_.elem(x) == q.compute ? -1
                                            : tl_.tensor(rows * l.in, q.compute, false,
                                                         what + " input to compute dtype");
    int product_elem = q.compute;
    std::vector<int> recast;
    if (q.autocast_recast) {
      product_elem = o_.compute;
      recast = {tl_.storage(l.in * l.out * o_.compute, what + " weight autocast"),
                tl_.storage(rows * l.in * o_.compute, what + " input autocast")};
    }
    int y = tl_.tensor(rows * l.out, product_elem, false, what);
    for (int r : recast) tl_.unref(r);
    if (product_elem != tl_.elem(x)) {
      const int back = tl_.tensor(rows * l.out, tl_.elem(x), false, what + " output cast");
      tl_.drop(y);
      y = back;
    }
    if (xc >= 0) tl_.drop(xc);
    tl_.unref(w);
    tl_.grad_mode = grad_mode;
    if (rg) {
      tl_.set_rg(y, true);
      Timeline::Node n;
      n.what = (tl_.where.empty() ? "" : tl_.where + ": ") + what + " (4-bit)";
      n.outputs = {y};
      n.inputs = {x};
      n.custom = [this, x, y, rows, in = l.in, out = l.out, node = n.what] {
        backward_4bit(x, y, rows, in, out, node);
      };
      tl_.add_node(std::move(n));
    }
    return y;
  }

  // Quant4Matmul::backward: matmul(grad.to(compute), dequantize_4bit(...)) (GCC evaluates the
  // arguments right to left: the weight first), cast back to the gradient's dtype.
  void backward_4bit(int x, int y, int64_t rows, int64_t in, int64_t out, const std::string& what) {
    const auto& q = o_.quant;
    const std::string outer = tl_.where;
    tl_.where.clear();
    const int w = dequantize_4bit(in * out, what);
    const int grad_cast =
        tl_.elem(y) == q.compute ? -1 : tl_.storage(rows * out * q.compute, what + " grad cast");
    // A checkpointed block's backward runs under its autocast state: matmul casts again.
    const bool recast = q.autocast_recast && backward_autocast_;
    std::vector<int> casts;
    if (recast) {
      casts = {tl_.storage(in * out * o_.compute, what + " weight autocast"),
               tl_.storage(rows * out * o_.compute, what + " grad autocast")};
    }
    const int product_elem = recast ? o_.compute : q.compute;
    int grad_x = tl_.storage(rows * in * product_elem, what + " (input grad)");
    for (int c : casts) tl_.unref(c);
    if (grad_cast >= 0) tl_.unref(grad_cast);
    tl_.unref(w);
    if (tl_.elem(y) != product_elem) {
      const int back = tl_.storage(rows * in * tl_.elem(y), what + " (input grad cast)");
      tl_.unref(grad_x);
      grad_x = back;
    }
    tl_.deliver(x, grad_x);
    tl_.where = outer;
  }

  // ProjectionOutput::kUnread (a recompute's last projection): no product; the output is one
  // element broadcast, in the product's dtype. Its node's backward is UnreadLinear's
  // (model/llama.cpp) or, for a 4-bit weight, Quant4Matmul's.
  int unread_linear(int x, const Lin& l, int64_t rows, const std::string& what) {
    const int elem = l.quant || !o_.autocast ? tl_.elem(x) : o_.compute;
    const bool w_trains = !l.quant && tl_.p(l.w).trainable;
    const int one = tl_.tensor(1, elem, false, what + " (unread)");
    const int y = tl_.view(one, rows * l.out);
    tl_.drop(one);
    const bool rg = tl_.grad_mode && (tl_.rg(x) || w_trains);
    tl_.set_rg(y, rg);
    if (!rg) return y;
    Timeline::Node n;
    n.what = (tl_.where.empty() ? "" : tl_.where + ": ") + what + " (unread)";
    n.outputs = {y};
    if (tl_.rg(x)) n.inputs = {x};
    if (w_trains) tl_.save(n, x);
    n.custom = [this, x, y, rows, l, w_trains, node = n.what] {
      if (l.quant) {
        backward_4bit(x, y, rows, l.in, l.out, node);
      } else {
        unread_backward(x, y, l, rows, w_trains, node);
      }
    };
    tl_.add_node(std::move(n));
    return y;
  }

  // UnreadLinear::backward: x's gradient (the gradient, already in the product's dtype, times the
  // weight cast to it, cast back to x's dtype), then W's (g^T x in that dtype, cast to W's). A
  // cast lives until its expression ends.
  void unread_backward(int x, int y, const Lin& l, int64_t rows, bool w_trains,
                       const std::string& what) {
    const std::string outer = tl_.where;
    tl_.where.clear();
    const int dt = tl_.elem(y);
    const int w_elem = tl_.p(l.w).elem;
    if (tl_.rg(x)) {
      const int w_cast = w_elem != dt ? tl_.storage(l.in * l.out * dt, what + " weight cast") : -1;
      int grad_x = tl_.storage(rows * l.in * dt, what + " (input grad)");
      if (tl_.elem(x) != dt) {
        const int back = tl_.storage(rows * l.in * tl_.elem(x), what + " (input grad cast)");
        tl_.unref(grad_x);
        grad_x = back;
      }
      if (w_cast >= 0) tl_.unref(w_cast);
      tl_.deliver(x, grad_x);
    }
    if (w_trains) {
      const int x_cast =
          tl_.elem(x) != dt ? tl_.storage(rows * l.in * dt, what + " input cast") : -1;
      const int product =
          w_elem != dt ? tl_.storage(l.in * l.out * dt, what + " (weight grad product)") : -1;
      tl_.param_grad(l.w, what);
      if (product >= 0) tl_.unref(product);
      if (x_cast >= 0) tl_.unref(x_cast);
    }
    tl_.where = outer;
  }

  // LinearImpl::forward: the base projection plus (alpha/r) * B(A(dropout(x))).
  int linear(int x, const Lin& l, int64_t rows, int64_t in, int64_t out, const std::string& what,
             bool unread = false) {
    int y = unread    ? unread_linear(x, l, rows, what)
            : l.quant ? linear_4bit(x, l, rows, what)
                      : linear_plain(x, l.w, rows, out, what);
    if (l.a < 0) return y;
    int xd = x;
    bool own = false;
    if (o_.lora_dropout > 0 && o_.training) {
      // CPU: _dropout, noise = bernoulli / (1-p) in x's dtype, x * noise (saves the noise for x's
      // grad). CUDA: the fused native_dropout saves a bool mask instead.
      const int noise =
          tl_.tensor(rows * in, o_.cpu ? tl_.elem(x) : 1, false, what + " LoRA dropout mask");
      Timeline::Op op{what + " LoRA dropout", {x}, {}, {}, false, 0, false};
      if (tl_.rg(x)) op.saved.push_back(noise);
      xd = tl_.op(op, rows * in, tl_.elem(x));
      tl_.drop(noise);
      own = true;
    }
    const int la = linear_plain(xd, l.a, rows, o_.lora_r, what + " LoRA A");
    const int lb = linear_plain(la, l.b, rows, out, what + " LoRA B");
    const int ls =
        tl_.op({what + " LoRA scaling", {lb}, {}, {}, false, 0, false}, rows * out, tl_.elem(lb));
    const int promoted = promoted_copy(y, ls, what + " + LoRA");
    const int sum = tl_.op({what + " + LoRA", {y, ls}, {}, {}, false, 0, true}, rows * out,
                           std::max(tl_.elem(y), tl_.elem(ls)));
    if (promoted >= 0) tl_.drop(promoted);
    tl_.drop(la);
    tl_.drop(lb);
    tl_.drop(ls);
    tl_.drop(y);
    if (own) tl_.drop(xd);
    return sum;
  }

  // RMSNormImpl::forward: normalised in fp32, scaled in the input's dtype.
  int rmsnorm(int x, int w) {
    const int64_t numel = tl_.numel(x);
    const int64_t rows = numel / dim();
    const int xf = tl_.elem(x) == 4 ? tl_.view_op(x, "norm view") : to_dtype(x, 4, "norm to fp32");
    // pow(2) saves its input; its backward makes two temporaries (self.pow(1), 2 * that).
    const int sq = tl_.op({"norm pow", {xf}, {}, {xf}, false, 2 * numel * 4, false}, numel, 4);
    Timeline::Op mean_op{"norm mean", {sq}, {}, {}, false, 0, false};
    if (o_.mean_saves_input) mean_op.saved.push_back(sq);
    const int mean = tl_.op(mean_op, rows, 4);
    const int eps = tl_.op({"norm + eps", {mean}, {}, {}, false, 0, true}, rows, 4);
    const int r = tl_.op({"norm rsqrt", {eps}, {}, {}, true, 0, false}, rows, 4);
    Timeline::Op mul{"norm x * rsqrt", {xf, r}, {}, {}, false, numel * 4, false};
    if (tl_.rg(xf)) mul.saved = {xf, r};
    const int normed = tl_.op(mul, numel, 4);
    tl_.drop(sq);
    tl_.drop(mean);
    tl_.drop(eps);
    tl_.drop(r);
    const int nc = tl_.elem(x) == 4 ? tl_.view_op(normed, "norm view")
                                    : to_dtype(normed, tl_.elem(x), "norm cast");
    Timeline::Op scale{"norm * weight", {nc}, {w}, {}, false, 0, false};
    if (tl_.p(w).trainable) {
      scale.saved.push_back(nc);
      scale.temp = numel * tl_.elem(x);  // grad * normed before the sum over rows
    }
    const int out = tl_.op(scale, numel, tl_.elem(x));
    tl_.drop(nc);
    tl_.drop(normed);
    tl_.drop(xf);
    return out;
  }

  // apply_rope: rotated in fp32 (interleaved pairs), returned in the input's dtype. Saves nothing
  // (the products with cos/sin save only the tables); its backward allocates the halves and, per
  // select, a zero-filled gradient of the full size.
  int rope(int x) {
    const int64_t numel = tl_.numel(x);
    const int64_t half = numel / 2;
    const int xf = tl_.elem(x) == 4 ? tl_.view_op(x, "rope view") : to_dtype(x, 4, "rope to fp32");
    const int x0 = tl_.view_op(xf, "rope select", half);
    const int x1 = tl_.view_op(xf, "rope select", half);
    auto prod = [&](int v, const char* what) {
      return tl_.op({what, {v}, {}, {}, false, 0, false}, half, 4);
    };
    // stack({x0 * cos - x1 * sin, x0 * sin + x1 * cos}, -1): temporaries die with the statement.
    const int a = prod(x0, "rope x0*cos");
    const int b = prod(x1, "rope x1*sin");
    const int c = tl_.op({"rope -", {a, b}, {}, {}, false, 0, true}, half, 4);
    const int e1 = prod(x0, "rope x0*sin");
    const int e2 = prod(x1, "rope x1*cos");
    const int d = tl_.op({"rope +", {e1, e2}, {}, {}, false, 0, true}, half, 4);
    Timeline::Op stack{"rope stack", {c, d}, {}, {}, false, 0, false};
    stack.share = true;  // unbind: views of the gradient
    const int st = tl_.op(stack, numel, 4);
    for (int t : {a, b, c, e1, e2, d}) tl_.drop(t);
    // flatten(3): its backward reshapes a transposed gradient, a copy.
    const int flat = tl_.view_op(st, "rope flatten", -1, false);
    tl_.drop(st);
    int out = flat;
    if (tl_.elem(x) != 4) {
      out = to_dtype(flat, tl_.elem(x), "rope cast");
      tl_.drop(flat);
    }
    tl_.drop(x0);
    tl_.drop(x1);
    tl_.drop(xf);
    return out;
  }

  int attention(int x, const Layer& l) {
    const auto& c = o_.cfg;
    const int64_t n = b_ * t_, hd = c.head_dim(), h = c.n_heads, kv = c.n_kv_heads;
    const int64_t rep = h / kv;
    const int64_t d = dim();
    // q = apply_rope(wq(x).view(...)): wq's output is a temporary of the statement.
    const int ql = linear(x, l.wq, n, d, h * hd, "wq");
    int q = rope(ql);
    tl_.drop(ql);
    const int kl = linear(x, l.wk, n, d, kv * hd, "wk");
    int k = rope(kl);
    tl_.drop(kl);
    int v = linear(x, l.wv, n, d, kv * hd, "wv");
    if (cache_) {
      // KVCache::update copies into the preallocated cache and returns views of it.
      tl_.drop(k);
      tl_.drop(v);
      k = -1;
      v = -1;
    }
    if (o_.sdpa) return fused_attention(q, k, v, l);
    return math_attention(q, k, v, l);
  }

  // The math path of attention (matmul, softmax, matmul), from the roped q and k and from v
  // (k, v: -1 for views of the KV cache).
  int math_attention(int q, int k, int v, const Layer& l) {
    const auto& c = o_.cfg;
    const int64_t n = b_ * t_, hd = c.head_dim(), h = c.n_heads, kv = c.n_kv_heads;
    const int64_t rep = h / kv;
    const int64_t d = dim();
    // (B,T,H,D) -> (B,KV,rep*T,D): a copy unless the transpose is a no-op for the shape.
    int qc;
    if (rep > 1 && t_ > 1) {
      qc = tl_.op({"q reshape copy", {q}, {}, {}, false, 0, true}, n * h * hd, tl_.elem(q));
    } else {
      qc = tl_.view_op(q, "q view");
    }
    tl_.drop(q);
    // matmul(q, k^T): k^T reshaped to (B*KV, D, S), a copy when the batch cannot be merged.
    const int64_t kv_numel = b_ * s_ * kv * hd;
    const int kv_elem = o_.autocast ? o_.compute : o_.elem;
    auto operand = [&](int src, const char* what) {
      if (src < 0) return tl_.tensor(0, kv_elem, false, "cache view");  // view of the cache
      if (b_ > 1) return tl_.op({what, {src}, {}, {}, false, 0, true}, kv_numel, tl_.elem(src));
      return tl_.view_op(src, what);
    };
    const int kc = operand(k, "k reshape copy");
    const int mm_elem = o_.autocast ? o_.compute : tl_.elem(qc);
    const int64_t scores_numel = b_ * h * t_ * s_;
    Timeline::Op qk{"q @ k^T", {qc, kc}, {}, {}, false, 0, false};
    if (tl_.rg(qc)) qk.saved.push_back(kc);
    if (tl_.rg(kc)) qk.saved.push_back(qc);
    const int sc0 = tl_.op(qk, scores_numel, mm_elem);
    tl_.drop(kc);
    const int sc1 =
        tl_.op({"scores / sqrt(d)", {sc0}, {}, {}, false, 0, false}, scores_numel, mm_elem);
    tl_.drop(sc0);
    int scores = sc1;
    if (mask_ >= 0) {  // + mask (fp32): the sum is fp32 whatever the scores' dtype
      scores = tl_.op({"scores + mask", {sc1}, {}, {}, false, 0, true}, scores_numel, 4);
      tl_.drop(sc1);
    }
    const int sf = tl_.elem(scores) == 4 ? tl_.view_op(scores, "scores view")
                                         : to_dtype(scores, 4, "scores to fp32");
    const int pf = tl_.op({"softmax", {sf}, {}, {}, true, 0, false}, scores_numel, 4);
    tl_.drop(sf);
    int probs = pf;
    if (tl_.elem(qc) != 4) {
      probs = to_dtype(pf, tl_.elem(qc), "probs cast");
      tl_.drop(pf);
    }
    const int vc = operand(v, "v reshape copy");
    Timeline::Op pv{"probs @ v", {probs, vc}, {}, {}, false, 0, false};
    if (tl_.rg(probs)) pv.saved.push_back(vc);
    if (tl_.rg(vc)) pv.saved.push_back(probs);
    const int o1 = tl_.op(pv, n * h * hd, mm_elem);
    tl_.drop(vc);
    // view/transpose/reshape to (B,T,H*D): a copy (T > 1); its backward reshapes a transposed
    // gradient, a copy again.
    int cat;
    if (t_ > 1) {
      cat = tl_.op({"attention output copy", {o1}, {}, {}, false, 0, false}, n * h * hd,
                   tl_.elem(o1));
    } else {
      cat = tl_.view_op(o1, "attention output view");
    }
    tl_.drop(o1);
    const int out = linear(cat, l.wo, n, h * hd, d, "wo");
    // Locals of AttentionImpl::forward die at its return.
    tl_.drop(cat);
    tl_.drop(probs);
    tl_.drop(scores);
    tl_.drop(qc);
    if (k >= 0) tl_.drop(k);
    if (v >= 0) tl_.drop(v);
    return out;
  }

  // at::scaled_dot_product_attention on (B,H,T,D) transposed views (no copies): the flash kernel
  // writes its output in (B,T,H,D) order, so the transpose back and the reshape are views, and
  // keeps q, k, v, the output and a (B,H,T) fp32 log-sum-exp for backward, which gives q, k and
  // v their gradients. Under autocast the kernel runs in the compute dtype on cast copies.
  int fused_attention(int q, int k, int v, const Layer& l) {
    const auto& c = o_.cfg;
    const int64_t n = b_ * t_, hd = c.head_dim(), h = c.n_heads;
    const int kv_elem = o_.autocast ? o_.compute : o_.elem;
    auto operand = [&](int src, const char* what) {
      if (src < 0) return tl_.tensor(0, kv_elem, false, "cache view");  // view of the cache
      int view = tl_.view_op(src, what);
      if (o_.autocast && tl_.elem(view) != o_.compute) {
        const int cast = to_dtype(view, o_.compute, std::string(what) + " cast");
        tl_.drop(view);
        view = cast;
      }
      return view;
    };
    const int qt = operand(q, "q transpose");
    const int kt = operand(k, "k transpose");
    const int vt = operand(v, "v transpose");
    const int lse = tl_.tensor(b_ * h * t_, 4, false, "attention logsumexp");
    const int o1 = tl_.op(
        {"scaled_dot_product_attention", {qt, kt, vt}, {}, {qt, kt, vt, lse}, true, 0, false},
        n * h * hd, tl_.elem(qt));
    tl_.drop(lse);
    const int cat = tl_.view_op(o1, "attention output view");
    tl_.drop(o1);
    const int out = linear(cat, l.wo, n, h * hd, c.dim, "wo");
    tl_.drop(cat);
    for (int t : {qt, kt, vt, q, k, v}) {
      if (t >= 0) tl_.drop(t);
    }
    return out;
  }

  // w2(silu(w1(x)) * w3(x)); GCC evaluates the operands of * right to left. `unread`: w2's
  // product is left out (a recompute).
  int feed_forward(int x, const Layer& l, bool unread) {
    const auto& c = o_.cfg;
    const int64_t n = b_ * t_, d = dim(), f = c.ffn_hidden;
    const int a3 = linear(x, l.w3, n, d, f, "w3");
    const int a1 = linear(x, l.w1, n, d, f, "w1");
    const int s1 = tl_.op({"silu", {a1}, {}, {a1}, false, 0, false}, n * f, tl_.elem(a1));
    Timeline::Op mul{"silu * w3", {s1, a3}, {}, {}, false, 0, false};
    if (tl_.rg(s1)) mul.saved.push_back(a3);
    if (tl_.rg(a3)) mul.saved.push_back(s1);
    const size_t nodes = tl_.node_count();
    const int promoted = promoted_copy(s1, a3, "silu * w3");
    const int prod = tl_.op(mul, n * f, std::max(tl_.elem(s1), tl_.elem(a3)));
    if (promoted >= 0) tl_.drop(promoted);
    if (tl_.elem(s1) != tl_.elem(a3) && tl_.node_count() > nodes) {
      Timeline::Node& node = tl_.last_node();
      node.custom = [this, s1, a3, prod, what = node.what] {
        mul_backward_mixed(s1, a3, prod, what);
      };
    }
    const int out = linear(prod, l.w2, n, f, d, "w2", unread);
    tl_.drop(a3);
    tl_.drop(a1);
    tl_.drop(s1);
    tl_.drop(prod);
    return out;
  }

  // MulBackward0 of operands of two dtypes (a 4-bit product cast back beside an autocast one):
  // other's gradient first (grad * self), then self's (grad * other), each in the wider dtype (a
  // narrower operand copied to it on the CPU); then the engine casts the narrower input's
  // gradient to its dtype (validate_outputs).
  void mul_backward_mixed(int self, int other, int out, const std::string& what) {
    const std::string outer = tl_.where;
    tl_.where.clear();
    const int wide = tl_.elem(out);
    const int64_t numel = tl_.numel(out);
    auto product = [&](int operand) {
      const int copy = o_.cpu && tl_.elem(operand) != wide
                           ? tl_.storage(numel * wide, what + " (promoted operand)")
                           : -1;
      const int grad = tl_.storage(numel * wide, what + " (input grad)");
      if (copy >= 0) tl_.unref(copy);
      return grad;
    };
    const int grad_other = tl_.rg(other) ? product(self) : -1;
    const int grad_self = tl_.rg(self) ? product(other) : -1;
    for (const auto& [input, grad] : {std::pair{self, grad_self}, std::pair{other, grad_other}}) {
      if (grad < 0) continue;
      int delivered = grad;
      if (tl_.elem(input) != wide) {
        delivered = tl_.storage(numel * tl_.elem(input), what + " (input grad cast)");
        tl_.unref(grad);
      }
      tl_.deliver(input, delivered);
    }
    tl_.where = outer;
  }

  // A binary op on the CPU whose operands differ in dtype: TensorIterator copies the narrower one
  // to the wider dtype for the op (a transient; -1 when there is none).
  int promoted_copy(int a, int b, const std::string& what) {
    if (!o_.cpu || tl_.elem(a) == tl_.elem(b)) return -1;
    const int narrow = tl_.elem(a) < tl_.elem(b) ? a : b;
    return tl_.tensor(tl_.numel(narrow), std::max(tl_.elem(a), tl_.elem(b)), false,
                      what + " (promoted operand)");
  }

  int residual(int x, int y, const char* what) {
    const int promoted = promoted_copy(x, y, what);
    const int out = tl_.op({what, {x, y}, {}, {}, false, 0, true}, tl_.numel(x),
                           std::max(tl_.elem(x), tl_.elem(y)));
    if (promoted >= 0) tl_.drop(promoted);
    return out;
  }

  // `recompute`: checkpointing's recompute, which leaves the last projection's product out.
  int block(int x, int64_t i, bool recompute = false) {
    const Layer& l = layers_[static_cast<size_t>(i)];
    const int n1 = rmsnorm(x, l.attention_norm);
    const int a = attention(n1, l);
    const int h = residual(x, a, "residual (attention)");
    tl_.drop(n1);
    tl_.drop(a);
    const int n2 = rmsnorm(h, l.ffn_norm);
    const int f = feed_forward(n2, l, recompute);
    const int out = residual(h, f, "residual (feed-forward)");
    tl_.drop(n2);
    tl_.drop(f);
    tl_.drop(h);
    return out;
  }

  bool block_trains(int64_t i) const {
    if (o_.full) return true;
    const Layer& l = layers_[static_cast<size_t>(i)];
    for (const Lin* lin : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w1, &l.w2, &l.w3})
      if (lin->a >= 0) return true;
    return false;
  }

  // CheckpointFunction: the block runs without grad in forward (only its input is saved) and is
  // recomputed with grad in backward, whose gradient then flows through the recomputed graph.
  int checkpoint_block(int x, int64_t i) {
    const bool out_rg = tl_.rg(x) || block_trains(i);
    if (o_.cpu) graph_held_.push_back(tl_.storage(kCpuRngStateBytes, "checkpoint RNG state"));
    tl_.grad_mode = false;
    const int y = block(x, i);
    tl_.grad_mode = true;
    tl_.set_rg(y, out_rg);
    if (!out_rg) return y;
    Timeline::Node n;
    n.what = "layer " + std::to_string(i) + ": checkpoint";
    n.outputs = {y};
    tl_.save(n, x);
    n.custom = [this, x, y, i, mask = mask_, b = b_, t = t_, s = s_] {
      mask_ = mask;  // the recompute sees the forward's shapes and mask
      b_ = b;
      t_ = t;
      s_ = s;
      cache_ = false;
      const std::string outer = tl_.where;
      tl_.where = "layer " + std::to_string(i) + " (recompute)";
      const size_t mark = tl_.node_count();
      const int rng = o_.cpu ? tl_.storage(kCpuRngStateBytes, "outer RNG state") : -1;
      const int x2 = tl_.view(x);
      const int y2 = block(x2, i, /*recompute=*/true);
      tl_.take_pending(y, y2);
      backward_autocast_ = o_.autocast;
      tl_.backward(mark);
      backward_autocast_ = false;
      tl_.drop(y2);
      tl_.take_pending(x2, x);
      tl_.drop(x2);
      if (o_.autocast) clear_autocast_cache();
      if (rng >= 0) tl_.unref(rng);
      tl_.where = outer;
      mask_ = -1;
    };
    tl_.add_node(std::move(n));
    return y;
  }

  Timeline& tl_;
  ModelOptions o_;
  int emb_ = -1, norm_ = -1;
  Lin output_;
  std::vector<Layer> layers_;
  std::map<int, int> cast_cache_;
  std::vector<int> graph_held_;
  int64_t b_ = 1, t_ = 1, s_ = 1;
  bool cache_ = false;
  bool backward_autocast_ = false;  // a recomputed block's backward (under autocast when mp)
  int mask_ = -1;
};

// ---- Fine-tuning: one step of harness/worker/trainer.cpp ----

struct FinetuneSetup {
  ModelOptions model;
  int64_t batch = 1;
  int64_t ga = 1;
  std::string optimizer = "sgd";
  double weight_decay = 0;
  double max_grad_norm = 0;
  int64_t world_size = 1;  // data parallelism (harness/worker/data_parallel.h)
  bool zero1 = false;
  int64_t bucket_bytes = int64_t{25} << 20;
  int64_t rope_bytes = 0;
  int64_t table_bytes = 0;  // the 4-bit code tables
};

struct StepResult {
  int64_t peak = 0;
  std::string peak_at;
  int64_t activations = 0;  // held for backward after the first micro-batch's forward
};

// One optimizer step over micro-batches of lengths `lengths`. `state_live`: the optimizer state
// exists before the step (every step after the first).
// The loss of a (b, t) batch from its logits; returns the loss tensor (the rest is dropped).
int lm_loss(Timeline& tl, const FinetuneSetup& s, int logits, int labels, int64_t b, int64_t t) {
  // lm_loss: narrow(1, 0, T-1) (its backward: zeros of the full logits), reshape (a copy for
  // B > 1), log_softmax (saves its output), nll_loss (saves log-probs and target).
  const int64_t rows = b * (t - 1);
  const int64_t vocab = s.model.cfg.vocab_size;
  const int narrow = tl.view_op(logits, "loss: logits narrow", rows * vocab);
  int predicted, target;
  if (b > 1) {
    predicted = tl.op({"loss: reshape copy", {narrow}, {}, {}, false, 0, true}, rows * vocab, 4);
    target = tl.tensor(rows, 8, false, "loss: target copy");
  } else {
    predicted = tl.view_op(narrow, "loss: reshape view");
    target = tl.view(labels, rows);
  }
  const int logp =
      tl.op({"loss: log_softmax", {predicted}, {}, {}, true, 0, false}, rows * vocab, 4);
  const int loss = tl.op({"loss: nll_loss", {logp}, {}, {logp, target}, false, 0, false}, 1, 4);
  tl.drop(logp);
  tl.drop(predicted);
  tl.drop(target);
  tl.drop(narrow);
  return loss;
}

// ZeRO-1's owner of each parameter (-1: frozen), as GradientAverager assigns them: each trainable
// parameter to the rank with the fewest elements so far. The simulated rank is the one with the
// largest shard (its peak is the run's: the others differ only by smaller optimizer state).
std::vector<int> zero1_owners(const Timeline& tl, const FinetuneSetup& s, int* largest) {
  std::vector<int> owner;
  std::vector<int64_t> load(static_cast<size_t>(s.world_size), 0);
  for (const auto& p : tl.params()) {
    if (!p.trainable) {
      owner.push_back(-1);
      continue;
    }
    const auto least = std::min_element(load.begin(), load.end()) - load.begin();
    owner.push_back(static_cast<int>(least));
    load[static_cast<size_t>(least)] += p.numel;
  }
  *largest = static_cast<int>(std::max_element(load.begin(), load.end()) - load.begin());
  return owner;
}

// The parameters whose state this rank's optimizer keeps, by id: the trainable ones (ZeRO-1:
// those of its shard only).
std::vector<bool> optimizer_params(const Timeline& tl, const FinetuneSetup& s) {
  std::vector<bool> kept;
  for (const auto& p : tl.params()) kept.push_back(p.trainable);
  if (!s.zero1 || s.world_size <= 1) return kept;
  int rank = 0;
  const auto owner = zero1_owners(tl, s, &rank);
  for (size_t id = 0; id < kept.size(); ++id) kept[id] = owner[id] == rank;
  return kept;
}

// The optimizer's step: AdamW allocates its state now unless `state_live` (kept in `state`), and
// temporaries of each parameter it keeps; SGD with weight decay one temporary.
void optimizer_step(Timeline& tl, const FinetuneSetup& s, const std::vector<bool>& kept,
                    bool state_live, std::vector<int>& state) {
  const bool adamw = s.optimizer == "adamw";
  for (size_t id = 0; id < tl.params().size(); ++id) {
    const auto& p = tl.params()[id];
    if (!kept[id]) continue;
    const int64_t bytes = p.numel * p.elem;
    if (adamw) {
      if (!state_live) state.push_back(tl.storage(2 * bytes, "AdamW state"));
      // denom = (exp_avg_sq.sqrt() / sqrt(bc2)).add_(eps): two temporaries of the parameter.
      tl.unref(tl.storage(2 * bytes, "AdamW denominators"));
    } else if (s.weight_decay != 0) {
      tl.unref(tl.storage(bytes, "SGD weight decay"));  // d_p = d_p.add(p, wd)
    }
  }
}

// GradientAverager's buckets (harness/worker/data_parallel.cpp): the trainable parameters in
// reverse order, buckets of at most bucket_bytes of fp32; a bucket's fp32 copy is made when its
// last gradient has arrived (in bucket order), during the last micro-batch's backward, and freed
// once its allreduce is done and copied back.
class DpBuckets {
 public:
  DpBuckets(Timeline& tl, const FinetuneSetup& s) : tl_(tl) {
    if (s.world_size <= 1) return;
    for (size_t k = tl.params().size(); k-- > 0;) {
      const auto& p = tl.params()[k];
      if (!p.trainable) continue;
      if (buckets_.empty() ||
          (buckets_.back().numel > 0 && (buckets_.back().numel + p.numel) * 4 > s.bucket_bytes))
        buckets_.emplace_back();
      buckets_.back().params.push_back(static_cast<int>(k));
      buckets_.back().numel += p.numel;
    }
  }
  void arm() {
    if (buckets_.empty()) return;
    for (auto& b : buckets_) b.pending = b.params.size();
    tl_.on_param_grad = [this](int id) {
      for (auto& b : buckets_) {
        if (std::find(b.params.begin(), b.params.end(), id) != b.params.end() && b.pending > 0)
          --b.pending;
      }
      launch_ready();
    };
  }
  void finish() {
    if (buckets_.empty()) return;
    tl_.on_param_grad = nullptr;
    tl_.phase = "gradient allreduce";
    for (auto& b : buckets_) b.pending = 0;
    launch_ready();
    for (auto& b : buckets_) tl_.unref(b.storage);
  }

 private:
  struct Bucket {
    std::vector<int> params;
    int64_t numel = 0;
    size_t pending = 0;
    int storage = -1;
  };
  void launch_ready() {
    while (next_ < buckets_.size() && buckets_[next_].pending == 0) {
      buckets_[next_].storage = tl_.storage(4 * buckets_[next_].numel, "data-parallel bucket");
      ++next_;
    }
  }
  Timeline& tl_;
  std::vector<Bucket> buckets_;
  size_t next_ = 0;
};

// ZeRO-1 after the step: per owner, its parameters flattened (fp32) and broadcast, one owner at
// a time.
void zero1_broadcasts(Timeline& tl, const FinetuneSetup& s) {
  if (!s.zero1 || s.world_size <= 1) return;
  int largest = 0;
  const auto owner = zero1_owners(tl, s, &largest);
  tl.phase = "ZeRO-1 broadcast";
  for (int root = 0; root < s.world_size; ++root) {
    int64_t numel = 0;
    for (size_t id = 0; id < owner.size(); ++id)
      if (owner[id] == root) numel += tl.params()[id].numel;
    if (numel > 0) tl.unref(tl.storage(4 * numel, "ZeRO-1 broadcast"));
  }
}

StepResult simulate_step(const FinetuneSetup& s, const std::vector<int64_t>& lengths,
                         bool state_live) {
  Timeline tl;
  ModelSim model(tl, s.model);
  // Between steps: weights, rotary tables, optimizer state.
  const int weights = tl.storage(model.weight_bytes(), "weights");
  const int rope = tl.storage(s.rope_bytes, "rotary tables");
  const int tables = tl.storage(s.table_bytes, "4-bit code tables");
  std::vector<int> state;
  const bool adamw = s.optimizer == "adamw";
  const auto kept = optimizer_params(tl, s);
  if (adamw && state_live) {
    for (size_t id = 0; id < tl.params().size(); ++id) {
      const auto& p = tl.params()[id];
      if (kept[id])
        state.push_back(tl.storage(2 * p.numel * p.elem, "AdamW state"));
    }
  }
  tl.reset_peak();
  DpBuckets buckets(tl, s);

  StepResult result;
  bool first = true;
  for (const int64_t& t : lengths) {
    const int64_t b = s.batch, n = b * t;
    tl.phase = "forward";
    const int tokens = tl.tensor(n, 8, false, "batch tokens");
    const int labels = tl.tensor(n, 8, false, "batch labels");
    const int64_t before = tl.current();
    const int h = model.hidden(b, t, 0, false);
    const int logits = model.logits(h, n);
    tl.drop(h);
    const int loss = lm_loss(tl, s, logits, labels, b, t);
    tl.drop(logits);
    if (s.model.autocast) model.clear_autocast_cache();
    if (first) result.activations = tl.current() - before;
    first = false;
    // loss / ga (and * scale): scalars; backward frees the graph as it goes.
    tl.phase = "backward";
    if (&t == &lengths.back()) buckets.arm();  // communicated on the last micro-batch only
    tl.seed_gradient(loss);
    tl.backward();
    tl.drop(loss);
    model.release_graph();
    tl.drop(tokens);
    tl.drop(labels);
  }
  buckets.finish();
  if (s.max_grad_norm > 0) {
    // clip_grad_norm_: a 0-dim norm per gradient, their stack, its norm, the clip coefficient
    // and its clamp; the gradients are scaled in place.
    tl.phase = "gradient clipping";
    int64_t grads = 0;
    for (const auto& p : tl.params()) grads += p.trainable ? 1 : 0;
    tl.unref(tl.storage(4 * (2 * grads + 4), "gradient norms"));
  }
  // Optimizer step, then the gradients are released (set to none).
  tl.phase = "optimizer step";
  optimizer_step(tl, s, kept, state_live, state);
  zero1_broadcasts(tl, s);
  tl.free_param_grads();
  result.peak = tl.peak();
  result.peak_at = tl.peak_at();
  for (int st : state) tl.unref(st);
  tl.unref(tables);
  tl.unref(rope);
  tl.unref(weights);
  if (tl.current() != 0)  // every byte the step allocated must have been freed: a model bug
    throw std::logic_error("memory estimate: the step's timeline ends with " +
                           std::to_string(tl.current()) + " bytes held");
  return result;
}

// The matrix axes' values, then the keys an `include` entry set apart from `fixed`.
std::string axes_text(const Spec& spec, const RunConfig& run) {
  std::string out;
  const auto& part = spec.parts[static_cast<size_t>(run.part)];
  auto add = [&](const std::string& key) {
    const auto& v = run.config.at(key);
    if (!out.empty()) out += ", ";
    out += key + "=" + (v.is_string() ? v.get<std::string>() : v.dump());
  };
  std::set<std::string> axes;
  for (const auto& [key, values] : part.axes) {
    axes.insert(key);
    if (run.config.contains(key)) add(key);
  }
  for (const auto& [key, value] : run.config.items()) {
    if (axes.count(key)) continue;
    if (!part.fixed.contains(key) || part.fixed.at(key) != value) add(key);
  }
  return out;
}

LlamaConfig model_config(const Spec& spec) {
  const std::string weights = spec.model.value("weights", std::string("random"));
  if (weights != "random" && !spec.model.contains("preset"))
    throw std::invalid_argument("the estimate needs model.preset for the shapes of checkpoint " +
                                weights);
  auto c = config_from_name(spec.model.value("preset", std::string("tiny")));
  validate_config(c);
  return c;
}

int64_t rope_bytes(const LlamaConfig& c) { return 2 * c.max_seq_len * (c.head_dim() / 2) * 4; }

// quant, double_quant, compute_dtype, quant_block, quant_targets as the worker applies them
// (harness/worker/workloads.cpp build_model); `mp`: the autocast dtype or "off".
QuantSettings quant_settings(const Config& cfg, const std::string& mp, bool cpu) {
  QuantSettings q;
  if (cfg.quant == "off") return q;
  if (cfg.quant != "nf4" && cfg.quant != "fp4")
    throw std::invalid_argument("unknown quant \"" + cfg.quant + "\" (expected off, nf4, fp4)");
  if (cfg.quant_block < 2 || cfg.quant_block % 2 != 0)
    throw std::invalid_argument("quant_block: " + std::to_string(cfg.quant_block) +
                                " is not an even block size of at least 2");
  q.on = true;
  q.double_quant = cfg.double_quant;
  q.block = cfg.quant_block;
  q.compute = dtype_bytes(cfg.compute_dtype);
  q.autocast_recast = mp != "off" && cfg.compute_dtype != mp;
  q.chunk_target = cpu ? int64_t{1} << 20 : int64_t{1} << 24;
  // The estimating machine stands for the CPU that runs the spec (as for threads).
  q.one_pass = cpu && quant4_cpu::available();
  q.targets.insert(cfg.quant_targets.begin(), cfg.quant_targets.end());
  return q;
}

// The replay's setup of a fine-tuning run: the model options, batch, accumulation, optimizer.
FinetuneSetup finetune_setup(const Spec& spec, const Config& cfg, const LlamaConfig& c,
                             const EstimateOptions& options) {
  FinetuneSetup s;
  s.model.cfg = c;
  s.model.mean_saves_input = mean_saves_input(options);
  s.model.cpu = spec.device != "cuda";
  s.model.elem = dtype_bytes(cfg.dtype);
  const std::string& mp = cfg.mp;
  if (mp != "off" && mp != "fp16" && mp != "bf16")
    throw std::invalid_argument("unknown mp \"" + mp + "\" (expected off, fp16, bf16)");
  s.model.autocast = mp != "off";
  s.model.compute = s.model.autocast ? 2 : s.model.elem;
  s.model.sdpa = cfg.attention == "sdpa";
  const bool lora = cfg.lora;
  s.model.quant = quant_settings(cfg, mp, s.model.cpu);
  // The worker refuses it: a 4-bit weight is frozen, QLoRA trains adapters.
  if (s.model.quant.on && !lora)
    throw std::invalid_argument("quant " + cfg.quant + " fine-tunes with LoRA only (QLoRA)");
  s.table_bytes = quant4_table_bytes(s.model.quant, s.model.cpu);
  s.model.full = !lora;
  std::vector<std::string> targets;
  if (lora) {
    targets = cfg.lora_targets;
    s.model.lora.insert(targets.begin(), targets.end());
    s.model.lora_r = cfg.lora_r;
    s.model.lora_dropout = cfg.lora_dropout;
  }
  s.model.gc_every = cfg.gc ? cfg.gc_every : 0;
  s.batch = cfg.batch_size;
  s.ga = cfg.ga;
  s.optimizer = cfg.optimizer;
  if (s.optimizer != "sgd" && s.optimizer != "adamw")
    throw std::invalid_argument("unknown optimizer \"" + s.optimizer + "\"");
  s.weight_decay = cfg.weight_decay;
  s.max_grad_norm = cfg.max_grad_norm;
  s.world_size = cfg.world_size;
  s.zero1 = cfg.zero == 1;
  if (cfg.zero == 2 && cfg.world_size > 1)
    throw std::invalid_argument("zero 2 is not modelled by the estimate yet (zero 0 and 1 are)");
  s.bucket_bytes = static_cast<int64_t>(cfg.dp_bucket_mb * 1024 * 1024);
  s.rope_bytes = rope_bytes(c);
  return s;
}

// Lengths of every micro-batch of the run (max_steps x ga of them), each checked to have a loss
// and to fit the model.
std::vector<int64_t> micro_batch_lengths(const Json& data, const Config& cfg,
                                         const FinetuneSetup& s, int64_t max_steps,
                                         const LlamaConfig& c) {
  std::vector<int64_t> lengths;
  const std::string format = data.value("format", std::string("random"));
  if (format == "alpaca") {
    const int64_t max_len = cfg.max_seq_len;
    const auto counts = alpaca_token_counts(data.at("path").get<std::string>(),
                                            data.value("samples", int64_t{0}), max_len);
    lengths = batch_lengths(counts, s.batch, max_steps * s.ga);
  } else if (format == "tokens") {
    std::vector<int64_t> counts;
    for (const auto& ex : read_token_examples(data.at("path").get<std::string>())) {
      const auto n = static_cast<int64_t>(ex.tokens.size());
      counts.push_back(cfg.max_seq_len > 0 ? std::min(n, cfg.max_seq_len) : n);
    }
    lengths = batch_lengths(counts, s.batch, max_steps * s.ga);
  } else {
    const int64_t seq = cfg.seq_len;
    lengths.assign(static_cast<size_t>(max_steps * s.ga), seq);
  }
  for (int64_t t : lengths) {
    if (t < 2) throw std::invalid_argument("sequences of fewer than 2 tokens have no loss");
    if (t > c.max_seq_len)
      throw std::invalid_argument("sequence of " + std::to_string(t) +
                                  " tokens exceeds max_seq_len " + std::to_string(c.max_seq_len) +
                                  " of " + c.name);
  }
  return lengths;
}

// The step with the highest peak of the first step (no optimizer state yet) and the later step
// with the longest batch; activations the larger of the two.
StepResult worst_step(const FinetuneSetup& s, const std::vector<int64_t>& lengths,
                      int64_t max_steps) {
  auto step_lengths = [&](int64_t step) {
    return std::vector<int64_t>(lengths.begin() + step * s.ga, lengths.begin() + (step + 1) * s.ga);
  };
  StepResult worst = simulate_step(s, step_lengths(0), false);
  if (max_steps > 1) {
    int64_t best = 1, longest = 0;
    for (int64_t step = 1; step < max_steps; ++step) {
      const auto l = step_lengths(step);
      const int64_t m = *std::max_element(l.begin(), l.end());
      if (m > longest) {
        longest = m;
        best = step;
      }
    }
    const StepResult later = simulate_step(s, step_lengths(best), true);
    const StepResult first = worst;
    if (later.peak >= worst.peak) worst = later;
    worst.activations = std::max(first.activations, later.activations);
  }
  return worst;
}

MemoryEstimate estimate_finetune(const Spec& spec, const RunConfig& run, const LlamaConfig& c,
                                 const EstimateOptions& options) {
  const auto& part = spec.parts[static_cast<size_t>(run.part)];
  const Config cfg = RunSettings::parse(run.config, part.data);
  const FinetuneSetup s = finetune_setup(spec, cfg, c, options);
  const int64_t max_steps = std::max<int64_t>(1, cfg.max_steps);

  const std::vector<int64_t> lengths = micro_batch_lengths(part.data, cfg, s, max_steps, c);

  const StepResult worst = worst_step(s, lengths, max_steps);

  Timeline tl;
  ModelSim sizes(tl, s.model);
  MemoryEstimate e;
  e.batch = s.batch;
  e.seq_len = *std::max_element(lengths.begin(), lengths.end());
  e.params = c.param_count();
  e.trainable = sizes.trainable_count();
  e.weights = sizes.weight_bytes();
  e.weights_4bit = sizes.weight_4bit_bytes();
  e.buffers = s.rope_bytes + s.table_bytes;
  e.grads = e.trainable * s.model.elem;
  e.optimizer = 0;
  if (s.optimizer == "adamw") {
    // The rank's share: ZeRO-1 keeps its shard's moments only.
    const auto kept = optimizer_params(tl, s);
    for (size_t id = 0; id < tl.params().size(); ++id)
      if (kept[id]) e.optimizer += 2 * tl.params()[id].numel * s.model.elem;
  }
  e.master = 0;
  e.activations = worst.activations;
  e.peak = worst.peak;
  e.peak_at = worst.peak_at;
  return e;
}

// ---- Generation: model/generate.cpp under NoGradGuard ----

MemoryEstimate estimate_generate(const RunConfig& run, const LlamaConfig& c,
                                 const std::string& device) {
  const Config cfg = RunSettings::parse(run.config);
  const int64_t b = cfg.batch_size;
  const int64_t prompt = cfg.prompt_len;
  const int64_t fresh = cfg.new_tokens;
  const bool use_cache = cfg.kv_cache;
  if (prompt + fresh > c.max_seq_len)
    throw std::invalid_argument("prompt_len + new_tokens exceeds the model's max_seq_len " +
                                std::to_string(c.max_seq_len));
  ModelOptions o;
  o.cfg = c;
  o.elem = dtype_bytes(cfg.dtype);
  o.compute = o.elem;
  o.full = false;
  o.training = false;
  o.sdpa = cfg.attention == "sdpa";
  o.cpu = device != "cuda";
  o.quant = quant_settings(cfg, "off", o.cpu);

  Timeline tl;
  tl.grad_mode = false;
  ModelSim model(tl, o);
  MemoryEstimate e;
  e.batch = b;
  e.params = c.param_count();
  e.weights = model.weight_bytes();
  e.weights_4bit = model.weight_4bit_bytes();
  // Rotary tables, the 4-bit code tables, the prompt ids.
  e.buffers = rope_bytes(c) + quant4_table_bytes(o.quant, o.cpu) + b * prompt * 8;
  const int weights = tl.storage(e.weights, "weights");
  const int buffers = tl.storage(e.buffers, "rotary tables and prompt");
  tl.reset_peak();
  int cache = -1;
  if (use_cache) {
    e.kv_cache = 2 * c.n_layers * b * c.n_kv_heads * (prompt + fresh) * c.head_dim() * o.elem;
    cache = tl.storage(e.kv_cache, "KV cache");
  }
  // The widest forward: the prefill (with the cache), or the last uncached step, which feeds
  // prompt + new - 1 tokens; then one cached decode step at the longest position.
  const int64_t t = use_cache ? prompt : prompt + fresh - 1;
  e.seq_len = t;
  tl.phase = use_cache ? "prefill" : "last uncached step";
  // The generated ids so far (B x 1 int64 each); uncached, the sequence fed again and the previous
  // step's logits (B x vocab fp32, reassigned only after the call).
  const int ids = tl.storage(b * fresh * 8, "generated ids");
  const int previous = use_cache || fresh < 2 ? -1 : tl.storage(b * c.vocab_size * 4, "logits");
  const int sequence = use_cache ? -1 : tl.storage(b * t * 8, "sequence");
  const int h = model.hidden(b, t, 0, use_cache);
  const int last = tl.view(h, b * c.dim);  // h.select(1, T - 1): logits of the last position only
  const int logits = model.logits(last, b);
  tl.drop(last);
  tl.drop(h);
  tl.drop(logits);
  if (previous >= 0) tl.unref(previous);
  if (sequence >= 0) tl.unref(sequence);
  if (use_cache && fresh > 1) {
    tl.phase = "decode";
    const int prev = tl.storage(b * c.vocab_size * 4, "logits");
    const int hd = model.hidden(b, 1, prompt + fresh - 2, true);
    const int lg = model.logits(hd, b);
    tl.drop(hd);
    tl.drop(lg);
    tl.unref(prev);
  }
  tl.unref(ids);
  e.peak = tl.peak();
  e.peak_at = tl.peak_at();
  if (cache >= 0) tl.unref(cache);
  tl.unref(buffers);
  tl.unref(weights);
  return e;
}

std::string mb(int64_t bytes) {
  std::ostringstream out;
  out.setf(std::ios::fixed);
  out.precision(1);
  out << static_cast<double>(bytes) / kMB;
  return out.str();
}

std::string mb_full(int64_t bytes) { return format_full(static_cast<double>(bytes) / kMB); }

// The weights cell: a quantised run's 4-bit part named beside the total.
std::string weights_cell(const MemoryEstimate& e) {
  if (e.weights_4bit == 0) return mb(e.weights);
  return mb(e.weights) + " (4-bit " + mb(e.weights_4bit) + ")";
}

// One table per part in Markdown: the columns of its workload.
TextTable markdown_estimate_table(const PartSpec& part) {
  TextTable table;
  if (part.workload == Workload::kGenerate) {
    table.header = {"run id", "axes", "batch", "seq", "weights", "KV cache", "peak", "peak at"};
  } else {
    table.header = {"run id", "axes",      "batch",       "seq",  "trainable", "weights",
                    "grads",  "optimizer", "activations", "peak", "peak at"};
  }
  // Numbers right-aligned: everything but run id, axes and peak at.
  table.align.assign(table.header.size(), Align::kRight);
  table.align[0] = table.align[1] = table.align.back() = Align::kLeft;
  return table;
}

std::vector<std::string> markdown_cells(const Spec& spec, const PartSpec& part,
                                        const MemoryEstimate& e, const std::string& error,
                                        size_t columns) {
  std::vector<std::string> cells{e.run_id, e.axes.empty() ? "-" : e.axes};
  if (!error.empty()) {
    cells.push_back("error: " + error);
    cells.resize(columns);
    return cells;
  }
  const bool over = spec.memory_limit_mb > 0 &&
                    static_cast<double>(e.peak) / kMB > static_cast<double>(spec.memory_limit_mb);
  cells.push_back(std::to_string(e.batch));
  cells.push_back(std::to_string(e.seq_len));
  if (part.workload == Workload::kGenerate) {
    cells.insert(cells.end(), {weights_cell(e), mb(e.kv_cache)});
  } else {
    cells.insert(cells.end(), {std::to_string(e.trainable), weights_cell(e), mb(e.grads),
                               mb(e.optimizer), mb(e.activations)});
  }
  cells.push_back(mb(e.peak) + (over ? " (over the limit)" : ""));
  cells.push_back(e.peak_at);
  return cells;
}

// Column by column (clang-format would put one a line).
// clang-format off
const std::vector<std::string> kEstimateCsvHeader = {
    "part",            "run_id",         "workload",         "axes",
    "batch",           "seq_len",        "trainable_params", "weights_mb",
    "weights_4bit_mb", "buffers_mb",     "grads_mb",         "optimizer_mb",
    "master_mb",       "activations_mb", "kv_cache_mb",      "peak_mb",
    "peak_at"};
// clang-format on

std::vector<std::string> csv_cells(int part, const MemoryEstimate& e, const std::string& error) {
  std::vector<std::string> cells{std::to_string(part + 1), e.run_id,
                                 std::string(to_string(e.workload)), e.axes};
  if (!error.empty()) {
    cells.resize(kEstimateCsvHeader.size() - 1);  // the 12 numbers empty
    cells.push_back("error: " + error);
    return cells;
  }
  cells.insert(cells.end(),
               {std::to_string(e.batch), std::to_string(e.seq_len), std::to_string(e.trainable),
                mb_full(e.weights), mb_full(e.weights_4bit), mb_full(e.buffers), mb_full(e.grads),
                mb_full(e.optimizer), mb_full(e.master), mb_full(e.activations),
                mb_full(e.kv_cache), mb_full(e.peak), e.peak_at});
  return cells;
}

}  // namespace

// ---- Public ----

int64_t lora_param_count(const LlamaConfig& c, int64_t r, const std::vector<std::string>& targets) {
  const int64_t hd = c.head_dim();
  int64_t per_layer = 0;
  for (const auto& t : targets) {
    int64_t in = 0, out = 0;
    if (t == "wq") {
      in = c.dim;
      out = c.n_heads * hd;
    } else if (t == "wk" || t == "wv") {
      in = c.dim;
      out = c.n_kv_heads * hd;
    } else if (t == "wo") {
      in = c.n_heads * hd;
      out = c.dim;
    } else if (t == "w1" || t == "w3") {
      in = c.dim;
      out = c.ffn_hidden;
    } else if (t == "w2") {
      in = c.ffn_hidden;
      out = c.dim;
    } else {
      throw std::invalid_argument("unknown LoRA target \"" + t +
                                  "\" (expected wq, wk, wv, wo, w1, w2, w3)");
    }
    per_layer += r * (in + out);
  }
  return per_layer * c.n_layers;
}

std::vector<int64_t> alpaca_token_counts(const std::string& path, int64_t samples,
                                         int64_t max_seq_len) {
  // Every run of a part reads the same file: scanned once per (file version, samples, length).
  static std::mutex mutex;
  static std::map<std::string, std::vector<int64_t>> cache;
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  const auto mtime = std::filesystem::last_write_time(path, ec).time_since_epoch().count();
  const std::string key = path + "|" + std::to_string(size) + "|" + std::to_string(mtime) + "|" +
                          std::to_string(samples) + "|" + std::to_string(max_seq_len);
  if (!ec) {
    std::lock_guard<std::mutex> lock(mutex);
    if (auto it = cache.find(key); it != cache.end()) return it->second;
  }
  std::vector<AlpacaRecord> records;
  try {
    records = read_alpaca(path, samples);
  } catch (const std::runtime_error& e) {  // a missing file is a spec error, as a malformed one
    throw std::invalid_argument(e.what());
  }
  std::vector<int64_t> counts;
  for (const AlpacaRecord& record : records) {
    // BOS + prompt bytes + response bytes + EOS; labels start after the prompt.
    const auto prompt = static_cast<int64_t>(alpaca_prompt(record).size());
    int64_t tokens = 1 + prompt + static_cast<int64_t>(record.output.size()) + 1;
    if (max_seq_len > 0) {
      if (1 + prompt >= max_seq_len) continue;  // response cut away entirely: left out
      tokens = std::min(tokens, max_seq_len);
    }
    counts.push_back(tokens);
  }
  if (counts.empty())
    throw std::invalid_argument(path +
                                ": no training example keeps a response token within "
                                "max_seq_len " +
                                std::to_string(max_seq_len));
  if (!ec) {
    std::lock_guard<std::mutex> lock(mutex);
    cache[key] = counts;
  }
  return counts;
}

std::vector<int64_t> batch_lengths(const std::vector<int64_t>& counts, int64_t batch,
                                   int64_t micro_batches) {
  std::vector<int64_t> out;
  if (counts.empty()) return out;
  size_t cursor = 0;
  for (int64_t k = 0; k < micro_batches; ++k) {
    int64_t longest = 0;
    for (int64_t j = 0; j < batch; ++j) {
      longest = std::max(longest, counts[cursor]);
      cursor = (cursor + 1) % counts.size();
    }
    out.push_back(longest);
  }
  return out;
}

std::string default_libtorch_version() {
#ifdef TORCH_VERSION
  return TORCH_VERSION;
#else
  return "2";
#endif
}

MemoryEstimate estimate_memory(const Spec& spec, const RunConfig& run,
                               const EstimateOptions& options) {
  const LlamaConfig c = model_config(spec);
  MemoryEstimate e = run.workload == Workload::kGenerate ? estimate_generate(run, c, spec.device)
                                                         : estimate_finetune(spec, run, c, options);
  e.run_id = run.run_id;
  e.part = run.part;
  e.workload = run.workload;
  e.axes = axes_text(spec, run);
  return e;
}

Json estimate_run(const Spec& spec, const RunConfig& run, const EstimateOptions& options) {
  const MemoryEstimate e = estimate_memory(spec, run, options);
  auto m = [](int64_t bytes) { return static_cast<double>(bytes) / kMB; };
  Json out = {{"est_peak_mem_mb", m(e.peak)},
              {"est_weights_mb", m(e.weights)},
              {"est_weights_4bit_mb", m(e.weights_4bit)},
              {"est_buffers_mb", m(e.buffers)},
              {"est_grads_mb", m(e.grads)},
              {"est_optimizer_mb", m(e.optimizer)},
              {"est_master_mb", m(e.master)},
              {"est_activations_mb", m(e.activations)},
              {"est_kv_cache_mb", m(e.kv_cache)},
              {"est_trainable_params", static_cast<double>(e.trainable)},
              {"est_seq_len", static_cast<double>(e.seq_len)},
              {"est_peak_at", e.peak_at}};
  return out;
}

std::string render_estimates(const Spec& spec, const std::vector<RunConfig>& planned,
                             ReportFormat format, const EstimateOptions& options) {
  const LlamaConfig c = model_config(spec);
  std::ostringstream out;
  const bool md = format == ReportFormat::kMarkdown;
  if (md) {
    out << "# Memory estimate: " << spec.name << "\n\n"
        << "Model " << c.name << " (" << c.param_count() << " parameters), device " << spec.device
        << ", libtorch "
        << (options.libtorch.empty() ? default_libtorch_version() : options.libtorch)
        << ". Sizes in MB (MiB, as `peak_mem_mb`). Weights: base + LoRA adapters, 4-bit weights "
           "(quant) as stored, packed codes and scales (their part in parentheses); grads: of the "
           "trainable parameters; optimizer: AdamW moments (SGD: none); activations: held for "
           "backward at the end of the forward (generation: the KV cache column instead); peak: "
           "the largest sum over the step, rotary tables, batch and transients included "
           "(docs/memory-model.md).\n";
  }
  TextTable csv{kEstimateCsvHeader, {}, {}};
  for (size_t p = 0; p < spec.parts.size(); ++p) {
    const auto& part = spec.parts[p];
    TextTable table = markdown_estimate_table(part);
    for (const auto& run : planned) {
      if (run.part != static_cast<int>(p) || run.repeat != 0) continue;
      MemoryEstimate e;
      std::string error;
      try {
        e = estimate_memory(spec, run, options);
      } catch (const std::exception& ex) {
        error = ex.what();
        e.run_id = run.run_id;
        e.axes = axes_text(spec, run);
        e.workload = run.workload;
      }
      csv.rows.push_back(csv_cells(static_cast<int>(p), e, error));
      table.rows.push_back(markdown_cells(spec, part, e, error, table.header.size()));
    }
    if (md && !table.rows.empty()) {
      out << "\n## " << (part.label.empty() ? "Part " + std::to_string(p + 1) : part.label) << " ("
          << part.workload << ")\n\n"
          << markdown_table(table);
    }
  }
  if (!md) out << csv_table(csv);
  if (md && spec.memory_limit_mb > 0) {
    out << "\nmemory_limit_mb " << spec.memory_limit_mb
        << ": runs marked \"over the limit\" are expected to end as `oom`.\n";
  }
  return out.str();
}

void add_estimates(const Spec& spec, const std::vector<RunConfig>& planned,
                   std::vector<StoredRun>& runs) {
  const bool shown = std::any_of(spec.tables.begin(), spec.tables.end(), [](const TableSpec& t) {
    return std::find(t.rows.begin(), t.rows.end(), "est_peak_mem_mb") != t.rows.end();
  });
  if (!shown) return;
  std::map<std::string, const RunConfig*> by_id;
  for (const auto& run : planned) by_id[run.run_id] = &run;
  for (auto& run : runs) {
    if (run.metrics.count("est_peak_mem_mb")) continue;
    const auto it = by_id.find(run.run_id);
    if (it == by_id.end()) continue;
    EstimateOptions options;
    if (run.env.is_object() && run.env.contains("libtorch") && run.env.at("libtorch").is_string())
      options.libtorch = run.env.at("libtorch").get<std::string>();
    try {
      run.metrics["est_peak_mem_mb"] =
          static_cast<double>(estimate_memory(spec, *it->second, options).peak) / kMB;
    } catch (const std::exception&) {
      // No estimate for this run (unreadable data, unknown preset): the cell shows n/a.
    }
  }
}

}  // namespace hx
