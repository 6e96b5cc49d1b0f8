#include "harness/worker/workloads.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <thread>

#include "build_info.h"
#include "harness/plan/config_keys.h"
#include "harness/report/stats.h"
#include "harness/worker/data.h"
#include "harness/worker/data_parallel.h"
#include "harness/worker/memory.h"
#include "harness/worker/trainer.h"
#include "model/checkpoint_io.h"
#include "model/compat.h"
#include "model/generate.h"
#include "model/lora.h"
#include "model/weights.h"

namespace hx {
namespace {

using Json = nlohmann::json;
constexpr double kMB = 1024.0 * 1024.0;

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      auto colon = line.find(':');
      return colon == std::string::npos ? line : line.substr(colon + 2);
    }
  }
  return "unknown";
}

using Config = RunSettings;

// What a regression injected for the gate's tests leaves behind: memory held for the whole run
// (`alloc`: HARNESS_FAULT_MB, default 16) and a delay in every fine-tuning step (`slow`:
// HARNESS_FAULT_MS, default 100).
struct InjectedRegression {
  torch::Tensor ballast;
  double step_delay_s = 0;
};
InjectedRegression g_injected;

double env_number(const char* name, double fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v ? std::atof(v) : fallback;
}

// Test-only fault injection (docs/worker-protocol.md), after the model is built.
void maybe_inject_fault(const Json& run) {
  const char* fault = std::getenv("HARNESS_FAULT");
  if (fault == nullptr || *fault == '\0') return;
  if (const char* match = std::getenv("HARNESS_FAULT_MATCH"); match != nullptr && *match) {
    if (run.at("config").dump().find(match) == std::string::npos) return;
  }
  // A data-parallel run: only this rank faults.
  if (const char* rank = std::getenv("HARNESS_FAULT_RANK"); rank != nullptr && *rank) {
    if (!run.contains("dp") || run.at("dp").at("rank").get<int>() != std::atoi(rank)) return;
  }
  const std::string kind = fault;
  if (kind == "oom") {
    // Through the real cap path: the allocator refuses beyond its cap.
    CountingAllocator::set_cap(CountingAllocator::current_bytes() + 1);
    auto too_big = torch::empty({1 << 20}, torch::kFloat32);
  } else if (kind == "segv") {
    std::raise(SIGSEGV);
  } else if (kind == "hang") {
    for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
  } else if (kind == "exit") {
    std::_Exit(5);
  } else if (kind == "alloc") {
    const auto bytes = static_cast<int64_t>(env_number("HARNESS_FAULT_MB", 16) * 1024 * 1024);
    g_injected.ballast = torch::ones({bytes / 4}, torch::kFloat32);  // touched, so really held
  } else if (kind == "slow") {
    g_injected.step_delay_s = env_number("HARNESS_FAULT_MS", 100) / 1000.0;
  }
}

struct Built {
  Transformer model{nullptr};
  double load_s = 0;
};

// model.weights: "random" (the preset's shapes, drawn from model.seed); a checkpoint directory
// (HF or Meta, detected; its own config, and a preset given alongside must have its shapes); or
// a torch.save dict of tensors with Meta names (the preset's shapes).
Built build_model(const Json& run, const Config& cfg, torch::Device device) {
  const auto& m = run.at("model");
  const std::string weights = m.value("weights", std::string("random"));
  const std::string preset = m.value("preset", std::string("tiny"));
  auto start = std::chrono::steady_clock::now();
  ModelOptions options{device, parse_dtype(cfg.dtype), parse_attention_kind(cfg.attention)};
  if (cfg.quant != "off") {
    options.quant = QuantPlan{quant4_options(cfg.quant, cfg.double_quant,
                                             parse_dtype(cfg.compute_dtype), cfg.quant_block),
                              cfg.quant_targets};
  }
  Built built;
  if (weights == "random") {
    built.model = Transformer(config_from_name(preset), options);
    init_random(built.model, m.value("seed", 0));
  } else if (std::filesystem::is_directory(weights)) {
    built.model = load_model(weights, options);
    if (m.contains("preset")) {
      const auto want = config_from_name(preset);
      const auto& got = built.model->config();
      if (want.dim != got.dim || want.n_layers != got.n_layers || want.n_heads != got.n_heads ||
          want.n_kv_heads != got.n_kv_heads || want.vocab_size != got.vocab_size ||
          want.ffn_hidden != got.ffn_hidden || want.tie_embeddings != got.tie_embeddings)
        throw std::invalid_argument("model.weights " + weights +
                                    ": the checkpoint's shapes are not those of model.preset " +
                                    preset + " (leave the preset out to take the checkpoint's)");
    }
  } else {
    if (!m.contains("preset"))
      throw std::invalid_argument("model.weights " + weights +
                                  ": a file of tensors needs model.preset for its shapes (or "
                                  "give a checkpoint directory)");
    built.model = Transformer(config_from_name(preset), options);
    load_weights(built.model, read_torch_dict(weights), weights);
  }
  compat::cuda_synchronize();
  built.load_s = seconds_since(start);
  return built;
}

void add_metric(Json& result, const std::string& name, double value, const std::string& unit) {
  result["metrics"].push_back({{"name", name}, {"value", value}, {"unit", unit}});
}

Json run_generate(const Json& run, const Config& cfg, torch::Device device, MemoryProbe probe) {
  auto built = build_model(run, cfg, device);
  auto& model = built.model;
  model->eval();
  maybe_inject_fault(run);
  const int64_t batch = cfg.batch_size;
  const int64_t prompt_len = cfg.prompt_len;
  const int64_t new_tokens = cfg.new_tokens;
  const bool use_cache = cfg.kv_cache;
  SamplingOptions sampling;
  sampling.greedy = cfg.sampling == "greedy";
  sampling.temperature = cfg.temperature;
  sampling.top_k = cfg.top_k;
  sampling.top_p = cfg.top_p;
  sampling.seed = static_cast<uint64_t>(cfg.seed);
  auto gen = at::detail::createCPUGenerator(sampling.seed);
  auto prompt =
      torch::randint(3, model->config().vocab_size, {batch, prompt_len}, gen, torch::kInt64)
          .to(device);
  auto sync = [] { compat::cuda_synchronize(); };

  // One untimed warm-up generation of a few tokens (first-call allocations, kernel selection).
  generate(model, prompt, std::min<int64_t>(new_tokens, 2), use_cache, sampling, sync);

  probe.reset_peak();
  const int64_t base = probe.current();
  auto start = std::chrono::steady_clock::now();
  auto out = generate(model, prompt, new_tokens, use_cache, sampling, sync);
  const double total = seconds_since(start);

  Json result = {{"status", "ok"}, {"metrics", Json::array()}, {"steps", Json::array()}};
  add_metric(result, "peak_mem_mb", probe.peak() / kMB, "MB");
  add_metric(result, "peak_reserved_mb", probe.peak_reserved() / kMB, "MB");
  add_metric(result, "mem_params_mb", base / kMB, "MB");
  add_metric(result, "mem_kv_cache_mb", out.cache_bytes / kMB, "MB");
  add_metric(result, "prefill_s", out.prefill_s, "s");
  add_metric(result, "decode_s", out.decode_s, "s");
  add_metric(result, "total_time_s", total, "s");
  add_metric(result, "tokens_per_s", static_cast<double>(batch * new_tokens) / total, "tok/s");
  if (!out.decode_step_s.empty()) {
    add_metric(result, "decode_token_p50_s", median_of(out.decode_step_s), "s");
    add_metric(result, "decode_tokens_per_s",
               static_cast<double>(batch * (new_tokens - 1)) / out.decode_s, "tok/s");
  }
  add_metric(result, "load_s", built.load_s, "s");
  for (size_t i = 0; i < out.decode_step_s.size(); ++i) {
    result["steps"].push_back({{"step", i + 1},
                               {"seconds", out.decode_step_s[i]},
                               {"loss", nullptr},
                               {"tokens", batch},
                               {"mem_mb", nullptr}});
  }
  return result;
}

// The fixed prompts of `generations: on` as token ids: the parent's (encoded with the spec's
// tokenizer, data.prompt_tokens) or BOS + bytes of the Alpaca prompt.
std::vector<std::vector<int64_t>> generation_prompts(const Json& data, int64_t vocab) {
  std::vector<std::vector<int64_t>> prompts;
  if (data.contains("prompt_tokens")) {
    for (const auto& ids : data.at("prompt_tokens")) {
      prompts.push_back(ids.get<std::vector<int64_t>>());
      for (int64_t id : prompts.back())
        if (id < 0 || id >= vocab)
          throw std::invalid_argument("data.prompt_tokens: id " + std::to_string(id) +
                                      " outside the vocabulary");
    }
    return prompts;
  }
  ByteTokenizer bytes;
  if (vocab < bytes.vocab_size())
    throw std::invalid_argument(
        "generations: the byte tokenizer needs a vocabulary of at least 259");
  for (const auto& record : sample_prompts()) {
    std::vector<int64_t> ids = {bytes.bos_id()};
    const auto text = bytes.encode(alpaca_prompt(record));
    ids.insert(ids.end(), text.begin(), text.end());
    prompts.push_back(std::move(ids));
  }
  return prompts;
}

// Greedy answers to the prompts, untimed and outside the measured steps, as texts "<when>/<i>"
// with their ids (the parent decodes them when the spec names a tokenizer).
void add_generations(Json& result, Transformer& model,
                     const std::vector<std::vector<int64_t>>& prompts, int64_t new_tokens,
                     const std::string& when, bool byte_tokens, torch::Device device) {
  const bool was_training = model->is_training();
  model->eval();
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const auto& p = prompts[i];
    const int64_t room = model->config().max_seq_len - static_cast<int64_t>(p.size());
    std::vector<int64_t> ids;
    if (room > 0) {
      const auto prompt = torch::tensor(p, torch::kInt64).view({1, -1}).to(device);
      const auto out = generate(model, prompt, std::min(new_tokens, room), /*use_cache=*/true,
                                SamplingOptions{});
      const auto tokens = out.tokens.to(torch::kCPU).contiguous();
      ids.assign(tokens.data_ptr<int64_t>(), tokens.data_ptr<int64_t>() + tokens.numel());
    }
    result["texts"].push_back({{"name", when + "/" + std::to_string(i)},
                               {"text", byte_tokens ? decode_bytes(ids) : std::string()},
                               {"ids", ids}});
  }
  model->train(was_training);
  // What generation cached must not count in the training steps' reserved memory.
  compat::cuda_empty_cache();
}

Json run_finetune(const Json& run, const Config& cfg, torch::Device device, MemoryProbe probe) {
  // A 4-bit weight is frozen: without adapters only the embedding, norms and head would train
  // (transformers refuses to fine-tune a purely quantised model).
  if (cfg.quant != "off" && !cfg.lora)
    throw std::invalid_argument("quant " + cfg.quant +
                                " fine-tunes with LoRA only (QLoRA): set lora: on, or quant: off");
  auto built = build_model(run, cfg, device);
  auto& model = built.model;
  const int64_t total_params = model->param_count();
  if (cfg.lora) {
    LoraOptions lora;
    lora.r = cfg.lora_r;
    lora.alpha = cfg.lora_alpha;
    lora.dropout = cfg.lora_dropout;
    apply_lora(model, cfg.lora_targets, lora, run.at("model").value("seed", 0) + 1000);
  }
  if (cfg.gc) model->set_checkpointing(cfg.gc_every);
  model->train();

  // Data: tokenised before the measured region.
  const int64_t batch = cfg.batch_size;
  const auto& data = run.at("data");
  const int64_t vocab = model->config().vocab_size;
  const uint64_t seed = static_cast<uint64_t>(cfg.seed);
  std::optional<DataSource> source;
  if (data.contains("tokens_path")) {
    // Pre-tokenised by the parent with the spec's tokenizer (the worker links no tokenizer).
    const int64_t max_len = cfg.max_seq_len;
    source.emplace(load_token_examples(data.at("tokens_path"), max_len, vocab), batch, 0);
  } else if (data.value("format", std::string("random")) == "alpaca") {
    ByteTokenizer tokenizer;
    if (vocab < tokenizer.vocab_size())
      throw std::invalid_argument("the byte tokenizer needs a vocabulary of at least 259");
    const int64_t max_len = cfg.max_seq_len;
    std::vector<Example> examples;
    for (const auto& r : read_alpaca(data.at("path"), data.value("samples", 0)))
      examples.push_back(make_example(r, tokenizer, max_len));
    source.emplace(std::move(examples), batch, tokenizer.pad_id());
  } else {
    const int64_t seq_len = cfg.seq_len;
    source.emplace(DataSource::random(vocab, seq_len, batch, seed));
  }

  // Data parallelism: this rank's share of every global batch, gradients averaged over ranks.
  std::unique_ptr<DataParallelRank> dp;
  if (run.contains("dp")) {
    const auto& d = run.at("dp");
    Rendezvous r;
    r.rank = d.at("rank");
    r.world_size = d.at("world_size");
    r.store_path = d.at("store");
    r.host = d.value("host", r.host);
    r.cuda = device.is_cuda();
    r.timeout =
        std::chrono::milliseconds(static_cast<int64_t>(run.value("timeout_s", 300.0) * 1000.0));
    source.emplace(source->shard(r.rank, r.world_size));
    dp = std::make_unique<DataParallelRank>(
        r, model, static_cast<int64_t>(cfg.dp_bucket_mb * 1024 * 1024), static_cast<int>(cfg.zero));
  }

  TrainOptions options;
  options.ga = cfg.ga;
  options.mp = cfg.mp;
  options.optimizer = cfg.optimizer;
  options.lr = cfg.lr;
  options.weight_decay = cfg.weight_decay;
  options.max_grad_norm = cfg.max_grad_norm;
  Trainer trainer(model, options);
  trainer.memory_now = [&probe] { return probe.current(); };
  if (dp) trainer.set_gradient_sync(&dp->averager());
  // The weights as trained: base and adapters in their dtype, 4-bit weights as stored.
  int64_t params_bytes = quantized_weight_bytes(model);
  for (const auto& p : model->parameters()) params_bytes += p.nbytes();
  maybe_inject_fault(run);

  const int64_t max_steps = cfg.max_steps;
  const int64_t warmup = std::min(cfg.warmup_steps, max_steps - 1);
  const int64_t trainable = trainable_param_count(model);

  Json result = {{"status", "ok"},
                 {"metrics", Json::array()},
                 {"steps", Json::array()},
                 {"texts", Json::array()}};
  const bool generations = cfg.generations;
  const int64_t generation_tokens = cfg.generation_tokens;
  std::vector<std::vector<int64_t>> prompts;
  if (generations) {
    prompts = generation_prompts(data, vocab);
    add_generations(result, model, prompts, generation_tokens, "before",
                    !data.contains("prompt_tokens"), device);
  }
  std::vector<double> measured;
  std::vector<double> losses;
  int64_t measured_tokens = 0;
  int64_t peak = 0, peak_reserved = 0, grad_bytes = 0, activation_bytes = 0;
  int64_t optimizer_bytes = 0;
  auto total_start = std::chrono::steady_clock::now();
  for (int64_t step = 0; step < max_steps; ++step) {
    compat::cuda_synchronize();
    probe.reset_peak();
    auto start = std::chrono::steady_clock::now();
    auto stats = trainer.step(*source);
    if (g_injected.step_delay_s > 0)
      std::this_thread::sleep_for(std::chrono::duration<double>(g_injected.step_delay_s));
    compat::cuda_synchronize();
    double seconds = seconds_since(start);
    const int64_t step_peak = probe.peak();
    if (dp) {
      // The step of the slowest rank; the tokens of all (after the measured region).
      seconds = dp->max(seconds);
      stats.tokens = static_cast<int64_t>(dp->sum(static_cast<double>(stats.tokens)));
    }
    peak = std::max(peak, step_peak);
    peak_reserved = std::max(peak_reserved, probe.peak_reserved());
    grad_bytes = std::max(grad_bytes, stats.grad_bytes);
    activation_bytes = std::max(activation_bytes, stats.activation_bytes);
    optimizer_bytes = trainer.optimizer_state_bytes();
    losses.push_back(stats.loss);
    if (step >= warmup) {
      measured.push_back(seconds);
      measured_tokens += stats.tokens;
    }
    result["steps"].push_back({{"step", step},
                               {"seconds", seconds},
                               {"loss", stats.loss},
                               {"tokens", stats.tokens},
                               {"mem_mb", step_peak / kMB}});
  }
  const double total = seconds_since(total_start);
  if (generations) {
    add_generations(result, model, prompts, generation_tokens, "after",
                    !data.contains("prompt_tokens"), device);
  }
  double mean = 0;
  for (double s : measured) mean += s;
  mean /= static_cast<double>(measured.size());

  // Memory by category: weights, gradients before the optimizer step, optimizer state, and what
  // the forward pass held for backward (measured after the loss, before backward).
  if (dp) {
    // Memory per rank: the run's figure is the largest rank's; each rank's in a text.
    const auto peaks = dp->gather(static_cast<double>(peak));
    Json by_rank = Json::array();
    for (const double p : peaks) by_rank.push_back(p / kMB);
    result["texts"].push_back({{"name", "peak_mem_mb_by_rank"}, {"text", by_rank.dump()}});
    peak = static_cast<int64_t>(*std::max_element(peaks.begin(), peaks.end()));
    peak_reserved = static_cast<int64_t>(dp->max(static_cast<double>(peak_reserved)));
    // ZeRO-1's shards differ in size: the largest rank's, as for the peak.
    optimizer_bytes = static_cast<int64_t>(dp->max(static_cast<double>(optimizer_bytes)));
    activation_bytes = static_cast<int64_t>(dp->max(static_cast<double>(activation_bytes)));
    add_metric(result, "world_size", static_cast<double>(dp->world_size()), "");
    add_metric(result, "comm_wait_s",
               dp->max(dp->averager().wait_seconds()) / static_cast<double>(max_steps), "s");
  }
  const int64_t activations = activation_bytes;
  add_metric(result, "peak_mem_mb", peak / kMB, "MB");
  add_metric(result, "peak_reserved_mb", peak_reserved / kMB, "MB");
  add_metric(result, "step_time_s", mean, "s");
  add_metric(result, "step_time_p50_s", median_of(measured), "s");
  add_metric(result, "step_time_min_s", *std::min_element(measured.begin(), measured.end()), "s");
  add_metric(result, "step_time_max_s", *std::max_element(measured.begin(), measured.end()), "s");
  add_metric(result, "total_time_s", total, "s");
  add_metric(result, "tokens_per_s",
             static_cast<double>(measured_tokens) / (mean * static_cast<double>(measured.size())),
             "tok/s");
  add_metric(result, "loss_first", losses.front(), "");
  add_metric(result, "loss_last", losses.back(), "");
  add_metric(result, "trainable_params", static_cast<double>(trainable), "");
  add_metric(result, "trainable_pct",
             100.0 * static_cast<double>(trainable) / static_cast<double>(total_params), "%");
  add_metric(result, "mem_params_mb", params_bytes / kMB, "MB");
  add_metric(result, "mem_grads_mb", grad_bytes / kMB, "MB");
  add_metric(result, "mem_optimizer_mb", optimizer_bytes / kMB, "MB");
  add_metric(result, "mem_activations_mb", activations / kMB, "MB");
  add_metric(result, "skipped_steps", static_cast<double>(trainer.skipped_steps()), "");
  add_metric(result, "load_s", built.load_s, "s");
  return result;
}

}  // namespace

Json environment_json(bool cuda) {
  char host[256] = {0};
  ::gethostname(host, sizeof(host) - 1);
  Json env = {{"host", host},
              {"cpu", cpu_model()},
              {"gpu_name", ""},
              {"gpu_mem_mb", 0},
              {"driver", ""},
              {"cuda", ""},
              {"libtorch", TORCH_VERSION},
              {"compiler", build::kCompiler},
              {"build_type", build::kBuildType},
              {"git_commit", build::git_commit()},
              {"threads", at::get_num_threads()}};
  if (cuda) {
    env["gpu_mem_mb"] = compat::cuda_memory().total / (1024 * 1024);  // whole MB, as caps
    env["gpu_name"] = compat::cuda_device_name();
    env["cuda"] = compat::cuda_version();
    env["driver"] = compat::cuda_driver_version();
  }
  return env;
}

Json run_workload(const Json& run) {
  const std::string device_name = run.value("device", std::string("cpu"));
  if (device_name == "cuda" && !compat::kWithCuda)
    throw std::invalid_argument("device cuda: this harness-worker was built without CUDA");
  torch::Device device(device_name == "cuda" ? torch::kCUDA : torch::kCPU);
  if (device.is_cuda() && run.contains("dp"))
    device = torch::Device(
        torch::kCUDA, static_cast<c10::DeviceIndex>(
                          compat::cuda_select_device_for_rank(run.at("dp").at("rank").get<int>())));
  MemoryProbe probe{device.is_cuda()};
  const int64_t cap_mb = run.value("memory_limit_mb", int64_t{0});
  if (cap_mb > 0) {
    if (device.is_cuda()) {
      compat::cuda_set_memory_cap(cap_mb * 1024 * 1024);
    } else {
      CountingAllocator::set_cap(cap_mb * 1024 * 1024);
    }
  }
  // Parsed once; the registry (config_keys.h) gives every default.
  const Config cfg = RunSettings::parse(run.at("config"), run.at("data"));
  const std::string workload = run.at("workload");
  Json result;
  if (workload == "generate") {
    result = run_generate(run, cfg, device, probe);
  } else if (workload == "finetune") {
    result = run_finetune(run, cfg, device, probe);
  } else {
    throw std::invalid_argument("unknown workload \"" + workload + "\"");
  }
  // The worker process's peak resident set (libtorch, weights, every host buffer): what a user's
  // machine pays, and the one memory figure measured alike for any other program (peers).
  rusage usage{};
  ::getrusage(RUSAGE_SELF, &usage);
  add_metric(result, "peak_rss_mb", static_cast<double>(usage.ru_maxrss) * 1024 / kMB, "MB");
  result["env"] = environment_json(device.is_cuda());
  // A data-parallel run's threads are its ranks' together (each rank runs its share).
  if (run.contains("dp")) {
    result["env"]["threads"] = at::get_num_threads() * run.at("dp").at("world_size").get<int>();
  }
  return result;
}

}  // namespace hx
