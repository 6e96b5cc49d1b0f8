#pragma once
// Analytic memory estimate of a run, without libtorch (docs/memory-model.md).
//
// The estimate replays one training step (or one generation) as a timeline of tensor
// allocations and frees, in the order our code makes them: the forward of model/llama.cpp with
// the tensors autograd saves for backward (per op, as libtorch saves them: an input only when
// the other operand's gradient needs it), the backward in reverse creation order (the engine's
// order) freeing each saved tensor after its node and allocating the gradients it produces,
// gradient checkpointing as model/checkpoint.cpp recomputes a block, the optimizer step of
// harness/worker/trainer.cpp, generation as model/generate.cpp runs it. The peak is the largest
// running sum over that timeline: what the counting allocator (CPU) or the caching allocator's
// peak allocated bytes (CUDA) measure as `peak_mem_mb`.
#include <cstdint>
#include <string>
#include <vector>

#include "harness/plan/spec.h"
#include "harness/report/report.h"
#include "harness/store/store.h"
#include "model/config.h"

namespace hx {

// Bytes unless named otherwise.
struct MemoryEstimate {
  std::string run_id;
  int part = 0;
  Workload workload = Workload::kFinetune;
  std::string axes;  // the run's matrix axis values, "gc=on, lora=off"
  int64_t batch = 0;
  int64_t seq_len = 0;       // finetune: tokens per sequence of the longest batch; generate: the
                             // longest sequence fed at once (prompt, or prompt + new - 1 uncached)
  int64_t params = 0;        // parameters of the base model
  int64_t trainable = 0;     // parameters with gradients (LoRA: the adapters only)
  int64_t weights = 0;       // base parameters and LoRA adapters, in the model dtype; a 4-bit
                             // weight as stored (packed codes and scales)
  int64_t weights_4bit = 0;  // of `weights`: the 4-bit ones (quant)
  int64_t buffers = 0;       // rotary tables (fp32, max_seq_len x head_dim/2, cos and sin), the
                             // 4-bit code tables
  int64_t grads = 0;         // gradients of the trainable parameters (param dtype), all at once
  int64_t optimizer = 0;     // AdamW exp_avg + exp_avg_sq (param dtype); SGD without momentum: 0
  int64_t master = 0;        // fp32 master weights: none here (docs/memory-model.md)
  int64_t activations = 0;   // finetune: held for backward at the end of the forward
  int64_t kv_cache = 0;      // generate: 2 x layers x batch x kv_heads x (prompt + new) x head_dim
  int64_t peak = 0;          // the largest sum over the step's timeline
  std::string peak_at;       // where in the step the peak is, "backward, layer 3: softmax"
};

struct EstimateOptions {
  // The libtorch the worker runs ("1.13.0", "2.4.1"): what autograd saves differs between
  // versions (before 2.0, mean(dim) keeps its whole input). "" = default_libtorch_version().
  std::string libtorch;
};

// The libtorch whose headers this build found in the system include path (Debian's package),
// else "2": what a CUDA build links.
std::string default_libtorch_version();

// The estimate of one planned run (one of expand(spec)). Throws std::invalid_argument when the
// run cannot be estimated (unknown preset, unreadable data file).
MemoryEstimate estimate_memory(const Spec& spec, const RunConfig& run,
                               const EstimateOptions& options = {});

// The same as metrics: {"est_peak_mem_mb": ..., "est_weights_mb": ..., ...} in MB (MiB, as
// the measured `*_mb` metrics), plus "est_peak_at".
Json estimate_run(const Spec& spec, const RunConfig& run, const EstimateOptions& options = {});

// Every planned run's estimate (repeats once), one table per part: Markdown or CSV.
std::string render_estimates(const Spec& spec, const std::vector<RunConfig>& planned,
                             ReportFormat format, const EstimateOptions& options = {});

// When a table of the spec lists `est_peak_mem_mb`, puts it into the metrics of every stored run
// of the plan that lacks it, so that the table shows the estimate beside `peak_mem_mb`; each run
// is estimated for the libtorch its environment names. Runs whose estimate fails are left as
// they are (their cell reads n/a).
void add_estimates(const Spec& spec, const std::vector<RunConfig>& planned,
                   std::vector<StoredRun>& runs);

// ---- Pieces, exposed for tests ----

// Parameters LoRA adds: r x (in + out) per target linear per layer.
int64_t lora_param_count(const LlamaConfig& config, int64_t r,
                         const std::vector<std::string>& targets);

// Token counts of the Alpaca examples the worker trains on (harness/worker/data.cpp with the
// byte tokenizer: BOS, the Stanford Alpaca prompt, the response, EOS, as UTF-8 bytes, truncated
// to max_seq_len; an example whose response is cut away entirely is left out). `samples` <= 0:
// every record.
std::vector<int64_t> alpaca_token_counts(const std::string& path, int64_t samples,
                                         int64_t max_seq_len);

// The padded length of each micro-batch the worker draws, in order: the longest example of
// batch k, whose examples are (k * batch + j) mod n (harness/worker/data.cpp DataSource).
std::vector<int64_t> batch_lengths(const std::vector<int64_t>& counts, int64_t batch,
                                   int64_t micro_batches);

}  // namespace hx
