// `harness-worker`: the child process of one run, and the commands that need the model
// (`harness model`, `generate`, `logits`, `export` are forwarded here by the parent, which links
// no torch).
#include <c10/util/Exception.h>
#include <malloc.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <optional>

#include "build_info.h"
#include "harness/cli/cli.h"
#include "harness/exec/ranks.h"
#include "harness/report/stats.h"
#include "harness/store/json_io.h"
#include "harness/worker/memory.h"
#include "harness/worker/trainer.h"
#include "harness/worker/workloads.h"
#include "model/checkpoint_io.h"
#include "model/compat.h"
#include "model/generate.h"
#include "model/lora.h"
#include "model/quant4.h"
#include "model/safetensors.h"
#include "model/weights.h"

namespace {

using Json = nlohmann::json;

// Writes result.json whatever happened; the parent reads the status from it. A data-parallel run
// (world_size > 1) started by the runner launches its ranks (harness/worker/ranks.h), each of
// which comes back here.
int run_one(const std::string& run_path, char** argv) {
  Json run;
  try {
    run = Json::parse(hx::read_file(run_path));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s: %s\n", run_path.c_str(), e.what());
    return hx::kExitUsage;
  }
  std::string result_path = run.value("result_path", run_path + ".result.json");
  const int world_size = run.at("config").value("world_size", 1);
  if (hx::must_launch_ranks(world_size)) return hx::launch_ranks(argv, world_size, result_path);
  if (world_size > 1) {
    std::signal(SIGPIPE, SIG_IGN);  // a peer gone is an error of the collective, not a kill
    const auto id = hx::rank_identity(result_path);
    run["dp"] = {{"rank", id.rank},
                 {"world_size", id.world_size},
                 {"store", id.store_path},
                 {"host", id.host}};
    if (id.slurm_task)
      std::fprintf(stderr, "rank %d of %d: Slurm task on %s\n", id.rank, id.world_size,
                   id.host.c_str());
    result_path = hx::rank_result_path(result_path, id.rank);
  }
  Json result;
  int code = hx::kExitOk;
  try {
    // The run's threads are split over its ranks (one node's cores, shared).
    const int threads = static_cast<int>(run.value("threads", 1));
    at::set_num_threads(std::max(1, threads / std::max(1, world_size)));
    result = hx::run_workload(run);
  } catch (const c10::OutOfMemoryError& e) {
    result = {{"status", "oom"}, {"error", e.what_without_backtrace()}};
    code = hx::kExitOom;
  } catch (const c10::Error& e) {
    result = {{"status", "error"}, {"error", e.what_without_backtrace()}};
    code = hx::kExitRunError;
  } catch (const std::exception& e) {
    result = {{"status", "error"}, {"error", e.what()}};
    code = hx::kExitRunError;
  }
  if (code != hx::kExitOk) {
    std::fprintf(stderr, "%s: %s\n", result["status"].get<std::string>().c_str(),
                 result["error"].get<std::string>().c_str());
    result["env"] = hx::environment_json(run.value("device", std::string("cpu")) == "cuda");
  }
  hx::write_file_atomic(result_path, result.dump(1));
  return code;
}

struct ModelArgs {
  std::string preset;
  int64_t lora_r = 0;  // > 0: also count the trainable parameters of LoRA with this rank
  std::vector<std::string> lora_targets{"wq", "wv"};
  bool json = false;
};

int show_model(const ModelArgs& a) {
  hx::LlamaConfig config;
  try {
    config = hx::config_from_name(a.preset);
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return hx::kExitUsage;
  }
  const int64_t params = hx::count_params_on_meta(config);  // meta device: no memory allocated
  int64_t lora_params = 0;
  if (a.lora_r > 0) {
    // The same apply_lora and count as a fine-tuning run's trainable_params, on the meta device.
    hx::ModelOptions meta;
    meta.device = torch::Device(torch::kMeta);
    hx::Transformer model(config, meta);
    hx::LoraOptions lora;
    lora.r = a.lora_r;
    hx::apply_lora(model, a.lora_targets, lora, 0);
    lora_params = hx::trainable_param_count(model);
  }
  if (a.json) {
    nlohmann::json j = {{"preset", config.name},
                        {"parameters", params},
                        {"hf_config", hx::hf_config_json(config, torch::kFloat32)}};
    if (a.lora_r > 0)
      j["lora"] = {{"r", a.lora_r}, {"targets", a.lora_targets}, {"trainable_params", lora_params}};
    std::printf("%s\n", j.dump().c_str());
    return hx::kExitOk;
  }
  std::printf("%s", hx::describe(config).c_str());
  std::printf("parameters    %lld (%.3f B)\n", static_cast<long long>(params), params / 1e9);
  std::printf("weights fp32  %.1f MB\n", params * 4.0 / (1024.0 * 1024.0));
  std::printf("weights bf16  %.1f MB\n", params * 2.0 / (1024.0 * 1024.0));
  if (a.lora_r > 0) {
    std::string targets;
    for (const auto& t : a.lora_targets) targets += (targets.empty() ? "" : ",") + t;
    std::printf("lora          %lld trainable (r %lld on %s, %.3f%% of the base)\n",
                static_cast<long long>(lora_params), static_cast<long long>(a.lora_r),
                targets.c_str(), 100.0 * static_cast<double>(lora_params) / params);
  }
  return hx::kExitOk;
}

struct GenerateArgs {
  std::string preset = "tiny";  // or a checkpoint directory (HF or Meta)
  int64_t prompt_len = 16, new_tokens = 32, batch = 1, threads = 2;
  std::string kv_cache = "on";
  std::string dtype = "fp32";
  std::string attention = "sdpa";
  std::string weights;       // a torch.save dict of tensors; random weights when empty
  std::string lora_adapter;  // a PEFT adapter directory applied to the model
  std::string quant, double_quant, compute_dtype;  // the config keys'
  int64_t repeats = 1;  // timed generations after one untimed warm-up; medians reported
  bool json = false;
  uint64_t seed = 0;
  std::string prompt_ids;  // "1,2,3": this prompt (repeated per batch row) instead of a random one
  bool greedy = false;     // the default; sampling when --temperature/--top-p/--top-k are given
  double temperature = 1.0, top_p = 1.0;
  int64_t top_k = 0;
  bool sample = false;  // set from the options given
};

std::vector<int64_t> parse_prompt_ids(const std::string& text) {
  std::vector<int64_t> ids;
  size_t i = 0;
  while (i < text.size()) {
    while (i < text.size() && (text[i] == ',' || text[i] == ' ')) ++i;
    if (i >= text.size()) break;
    size_t used = 0;
    try {
      ids.push_back(std::stoll(text.substr(i), &used));
    } catch (const std::exception&) {
      throw std::invalid_argument("--prompt-ids: expected comma-separated token ids");
    }
    i += used;
    if (i < text.size() && text[i] != ',' && text[i] != ' ')
      throw std::invalid_argument("--prompt-ids: expected comma-separated token ids");
  }
  if (ids.empty()) throw std::invalid_argument("--prompt-ids: no ids");
  return ids;
}

// (1, T) int64 from "1,2,3", every id checked against the vocabulary.
torch::Tensor prompt_tensor(const std::string& text, int64_t vocab) {
  const std::vector<int64_t> ids = parse_prompt_ids(text);
  for (int64_t id : ids) {
    if (id < 0 || id >= vocab)
      throw std::invalid_argument("--prompt-ids: id " + std::to_string(id) +
                                  " is outside the model's vocabulary (" + std::to_string(vocab) +
                                  ")");
  }
  return torch::tensor(ids, torch::kInt64).unsqueeze(0);
}

int demo_generate(const GenerateArgs& a) {
  at::set_num_threads(static_cast<int>(a.threads));
  hx::ModelOptions options;
  options.dtype = hx::parse_dtype(a.dtype);
  options.attention = hx::parse_attention_kind(a.attention);
  if (a.quant != "off") {
    options.quant = hx::QuantPlan{
        hx::quant4_options(a.quant, a.double_quant == "on", hx::parse_dtype(a.compute_dtype)),
        hx::lora_target_names()};
  }
  hx::Transformer model{nullptr};
  std::string source;
  if (a.weights.empty()) {
    model = hx::load_model(a.preset, options, a.seed);  // a checkpoint directory or a preset
    source = std::filesystem::is_directory(a.preset)
                 ? "weights from " + a.preset
                 : "random weights, seed " + std::to_string(a.seed);
  } else {
    model = hx::Transformer(hx::config_from_name(a.preset), options);
    hx::load_weights(model, hx::read_torch_dict(a.weights), a.weights);
    source = "weights from " + a.weights;
  }
  if (a.quant != "off") {
    source += ", " + a.quant + (a.double_quant == "on" ? " double-quantised" : "") + " weights";
  }
  if (!a.lora_adapter.empty()) {
    hx::load_peft_adapter(model, a.lora_adapter);
    source += ", LoRA adapter " + a.lora_adapter;
  }
  model->eval();
  const int64_t vocab = model->config().vocab_size;
  torch::Tensor prompt;
  if (a.prompt_ids.empty()) {
    auto gen = at::detail::createCPUGenerator(a.seed);
    prompt = torch::randint(3, vocab, {a.batch, a.prompt_len}, gen, torch::kInt64);
  } else {
    prompt = prompt_tensor(a.prompt_ids, vocab).repeat({a.batch, 1}).contiguous();
  }
  hx::SamplingOptions sampling;
  sampling.greedy = !a.sample;
  sampling.temperature = a.temperature;
  sampling.top_p = a.top_p;
  sampling.top_k = a.top_k;
  sampling.seed = a.seed;
  const bool cache = a.kv_cache == "on";
  hx::generate(model, prompt, std::min<int64_t>(a.new_tokens, 2), cache, sampling);  // warm-up
  std::vector<double> prefill, decode_token;
  hx::GenerateResult out;
  for (int64_t r = 0; r < std::max<int64_t>(1, a.repeats); ++r) {
    out = hx::generate(model, prompt, a.new_tokens, cache, sampling);
    prefill.push_back(out.prefill_s);
    if (a.new_tokens > 1) decode_token.push_back(out.decode_s / (a.new_tokens - 1));
  }
  if (a.json) {
    nlohmann::json j = {
        {"model", a.preset},
        {"batch", a.batch},
        {"prompt_len", prompt.size(1)},
        {"sampling", a.sample ? "sample" : "greedy"},
        {"new_tokens", a.new_tokens},
        {"kv_cache", a.kv_cache},
        {"threads", at::get_num_threads()},
        {"prefill_s", hx::median_of(prefill)},
        // One new token is the prefill's alone: no decode step to time.
        {"decode_token_s",
         decode_token.empty() ? nlohmann::json() : nlohmann::json(hx::median_of(decode_token))},
        {"new_ids", std::vector<int64_t>(out.tokens.data_ptr<int64_t>(),
                                         out.tokens.data_ptr<int64_t>() + out.tokens.numel())}};
    std::printf("%s\n", j.dump().c_str());
    return hx::kExitOk;
  }
  std::printf("model %s (%s), batch %lld, prompt %lld tokens, kv cache %s\n",
              model->config().name.c_str(), source.c_str(), static_cast<long long>(a.batch),
              static_cast<long long>(prompt.size(1)), a.kv_cache.c_str());
  for (int64_t b = 0; b < a.batch; ++b) {
    std::printf("tokens[%lld]:", static_cast<long long>(b));
    for (int64_t i = 0; i < out.tokens.size(1); ++i)
      std::printf(" %lld", static_cast<long long>(out.tokens[b][i].item<int64_t>()));
    std::printf("\n");
  }
  const double decode_tps = out.decode_s > 0 ? (a.new_tokens - 1) * a.batch / out.decode_s : 0;
  std::printf("prefill %.4f s, decode %.4f s (%.1f tokens/s), %d threads\n", out.prefill_s,
              out.decode_s, decode_tps, at::get_num_threads());
  return hx::kExitOk;
}

struct LogitsArgs {
  std::string model = "tiny";  // a preset (random weights from --seed) or a checkpoint directory
  uint64_t seed = 0;
  std::string lora_adapter;  // a PEFT adapter directory applied to the model
  std::string prompt_ids;
  std::string attention = "sdpa";
  int64_t threads = 2;
  std::string out;  // safetensors file: "logits" (T, vocab) fp32
};

// One forward pass in eval mode (LoRA dropout off), no KV cache: the logits of every prompt
// position, for comparisons with other implementations (tests/hf/test_hf_interop.py).
int write_logits(const LogitsArgs& a) {
  at::set_num_threads(static_cast<int>(a.threads));
  hx::ModelOptions options;
  options.attention = hx::parse_attention_kind(a.attention);
  auto model = hx::load_model(a.model, options, a.seed);
  if (!a.lora_adapter.empty()) hx::load_peft_adapter(model, a.lora_adapter);
  model->eval();
  const auto prompt = prompt_tensor(a.prompt_ids, model->config().vocab_size);
  torch::Tensor logits;
  {
    torch::NoGradGuard no_grad;
    logits = model->forward(prompt).squeeze(0).to(torch::kFloat32);  // (T, vocab)
  }
  hx::write_safetensors(a.out, {{"logits", logits}}, {{"format", "pt"}});
  const nlohmann::json j = {{"model", a.model},
                            {"lora_adapter", a.lora_adapter},
                            {"tokens", logits.size(0)},
                            {"vocab", logits.size(1)},
                            {"parameters", model->param_count()},
                            {"trainable_params", hx::trainable_param_count(model)},
                            {"out", a.out}};
  std::printf("%s\n", j.dump().c_str());
  return hx::kExitOk;
}

struct LoraGradsArgs {
  std::string model = "tiny";  // a preset (random weights from --seed) or a checkpoint directory
  uint64_t seed = 0;
  std::string lora_adapter;  // a PEFT adapter directory: the adapters whose gradients are written
  std::string prompt_ids;
  std::string quant, double_quant, compute_dtype;  // the config keys'
  std::vector<std::string> quant_targets = hx::lora_target_names();
  int64_t threads = 1;
  std::string out;
};

// One forward and backward in train mode (the adapter's dropout applies: 0 for a deterministic
// comparison) with the shifted next-token loss of a fine-tuning step, on a base optionally
// quantised first (QLoRA): the loss and every adapter gradient under PEFT's names, q_proj's and
// k_proj's lora_B rows in HF's rotary layout, and each quantised base weight dequantised to fp32
// ("dequantized." + its HF name, HF layout), for the comparison with PEFT on bitsandbytes
// (tests/hf/test_qlora_grads.py).
int write_lora_grads(const LoraGradsArgs& a) {
  at::set_num_threads(static_cast<int>(a.threads));
  hx::ModelOptions options;
  if (a.quant != "off") {
    options.quant = hx::QuantPlan{
        hx::quant4_options(a.quant, a.double_quant == "on", hx::parse_dtype(a.compute_dtype)),
        a.quant_targets};
  }
  auto model = hx::load_model(a.model, options, a.seed);
  hx::load_peft_adapter(model, a.lora_adapter);
  model->train();
  const auto tokens = prompt_tensor(a.prompt_ids, model->config().vocab_size);
  const auto loss = hx::lm_loss(model->forward(tokens), tokens);
  loss.backward();

  const hx::LlamaConfig& c = model->config();
  // Rows of q_proj / k_proj (and of their lora_B) from our interleaved layout to HF's.
  const auto to_hf = [&c](const std::string& ours, const torch::Tensor& t) {
    if (ours.find(".attention.wq.") != std::string::npos) return hx::permute_to_hf(t, c.n_heads);
    if (ours.find(".attention.wk.") != std::string::npos) return hx::permute_to_hf(t, c.n_kv_heads);
    return t;
  };
  std::vector<std::pair<std::string, torch::Tensor>> out = {
      {"loss", loss.detach().to(torch::kFloat32).reshape({1})}};
  for (const auto& item : model->named_parameters()) {
    const std::string& name = item.key();
    if (!hx::is_lora_param(name)) continue;
    const bool is_a = name.find(".lora_a.") != std::string::npos;
    const std::string base = name.substr(0, name.rfind(is_a ? ".lora_a." : ".lora_b.")) + ".weight";
    const auto hf = hx::hf_name_from_ours(base);
    if (!hf || !item.value().grad().defined())
      throw std::logic_error("lora-grads: no HF name or no gradient for " + name);
    const std::string module = hf->substr(0, hf->size() - std::strlen(".weight"));
    const auto grad = item.value().grad().to(torch::kFloat32);
    out.emplace_back("base_model.model." + module + (is_a ? ".lora_A.weight" : ".lora_B.weight"),
                     is_a ? grad : to_hf(name, grad));
  }
  for (const auto& item : model->named_modules()) {
    const auto* linear = item.value()->as<hx::LinearImpl>();
    if (linear == nullptr || !linear->quantized()) continue;
    const std::string base = item.key() + ".weight";
    const auto hf = hx::hf_name_from_ours(base);
    if (!hf) throw std::logic_error("lora-grads: no HF name for " + base);
    out.emplace_back("dequantized." + *hf,
                     to_hf(base, hx::dequantize_4bit(*linear->quant_weight(), torch::kFloat32)));
  }
  hx::write_safetensors(a.out, out, {{"format", "pt"}});
  std::printf("%s\n", Json({{"loss", loss.item<double>()},
                            {"tensors", out.size()},
                            {"trainable_params", hx::trainable_param_count(model)},
                            {"out", a.out}})
                          .dump()
                          .c_str());
  return hx::kExitOk;
}

struct ExportArgs {
  std::string model = "tiny";  // a preset or a checkpoint directory
  std::string weights;         // with a preset: "random" (default) or a torch.save dict
  uint64_t seed = 0;
  bool lora_merge = false;
  std::string dtype;  // of the written tensors; the model's (fp32) when empty
  std::string out;
};

// Writes the model in HF layout: config.json + model.safetensors.
int export_model(const ExportArgs& a) {
  const bool is_dir = std::filesystem::is_directory(a.model);
  hx::Transformer model{nullptr};
  if (a.weights.empty() || a.weights == "random") {
    if (is_dir && !a.weights.empty())
      throw std::invalid_argument("--weights random needs a preset, not a checkpoint directory");
    model = hx::load_model(a.model, hx::ModelOptions{}, a.seed);
  } else {
    if (is_dir) throw std::invalid_argument("--weights FILE needs a preset for its shapes");
    model = hx::Transformer(hx::config_from_name(a.model), hx::ModelOptions{});
    hx::load_weights(model, hx::read_torch_dict(a.weights), a.weights);
  }
  hx::HfExportOptions options;
  options.merge_lora = a.lora_merge;
  if (!a.dtype.empty()) options.dtype = hx::parse_dtype(a.dtype);
  hx::save_hf_checkpoint(model, a.out, options);
  std::printf("wrote %s: config.json, model.safetensors (%s, %lld parameters)\n", a.out.c_str(),
              model->config().name.c_str(), static_cast<long long>(model->param_count()));
  return hx::kExitOk;
}

struct Quant4Args {
  std::string in;  // safetensors: "weight"; optional "x" (input) and "g" (gradient of the output)
  std::string out;
  std::string quant = "nf4";
  std::string double_quant = "off";
  int64_t block = 64;
  std::string compute_dtype = "fp32";
  int64_t threads = 1;
};

// Our 4-bit quantisation of one weight, in bitsandbytes' layout, for the byte-for-byte comparison
// with bitsandbytes (tests/hf/test_bnb4bit.py): packed, absmax (offset and absmax2 with double
// quantisation), the dequantised weight; with "x", Linear4bit's output y; with "g" too, x's
// gradient of sum(y * g).
int quantize_tensor(const Quant4Args& a) {
  at::set_num_threads(static_cast<int>(a.threads));
  auto input = hx::read_safetensors(a.in);
  const auto weight_it = input.tensors.find("weight");
  if (weight_it == input.tensors.end())
    throw std::invalid_argument(a.in + ": no tensor \"weight\"");
  const auto q = hx::quantize_4bit(weight_it->second, hx::parse_quant_type(a.quant), a.block,
                                   a.double_quant == "on");
  std::vector<std::pair<std::string, torch::Tensor>> out = {
      {"packed", q.packed}, {"absmax", q.absmax}, {"dequantized", hx::dequantize_4bit(q, q.dtype)}};
  if (q.double_quant()) {
    out.emplace_back("offset", q.offset.view({1}));
    out.emplace_back("absmax2", q.absmax2);
  }
  if (const auto x_it = input.tensors.find("x"); x_it != input.tensors.end()) {
    const auto x = x_it->second.clone().requires_grad_(true);
    const auto y = hx::quant4_linear(x, q, hx::parse_dtype(a.compute_dtype));
    out.emplace_back("y", y.detach());
    if (const auto g_it = input.tensors.find("g"); g_it != input.tensors.end()) {
      y.backward(g_it->second);
      out.emplace_back("x_grad", x.grad());
    }
  }
  hx::write_safetensors(a.out, out, {{"format", "pt"}});
  std::printf("%s\n", Json({{"bytes", q.nbytes()},
                            {"elements", q.numel()},
                            {"bits_per_weight", 8.0 * static_cast<double>(q.nbytes()) /
                                                    static_cast<double>(q.numel())}})
                          .dump()
                          .c_str());
  return hx::kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  // glibc serves blocks above its mmap threshold (at most 32 MB) with fresh mmaps and unmaps
  // them on free; a training step frees and re-allocates hundreds of MB of activations and
  // gradients, and paid ~90K page faults per step on `small`. Keep freed memory in the heap for
  // reuse (libtorch's CPU allocator does not cache). Peak memory is counted per tensor byte by
  // the CountingAllocator, so this changes no metric, only the process's RSS.
  ::mallopt(M_MMAP_MAX, 0);
  ::mallopt(M_TRIM_THRESHOLD, -1);
  // Before any tensor exists, so that every allocation is counted.
  hx::CountingAllocator::install();
  // A run must not outlive its parent (killed `harness run`): the parent's thread that started
  // this child waits for it, so the signal comes only when the parent is gone.
  const pid_t parent = ::getppid();
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) return hx::kExitRunError;  // the parent died before prctl

  CLI::App app{"harness-worker: runs one measured run (started by `harness run`)"};
  app.require_subcommand(1);
  app.set_version_flag("--version", [] {
    std::string v = std::string("harness-worker ") + hx::build::git_commit() + ", libtorch " +
                    TORCH_VERSION + ", " + hx::build::kBuildType;
    if (hx::compat::kWithCuda) {
      v += ", CUDA " + hx::compat::cuda_version() + " compiled in (" +
           std::to_string(torch::cuda::device_count()) + " device(s) visible)";
    } else {
      v += ", CPU only (linked without CUDA)";
    }
    return v;
  });
  int code = hx::kExitOk;

  std::string run_path;
  auto* run = app.add_subcommand("run", "run the workload of a run file, write its result");
  run->add_option("run_json", run_path, "run.json written by the parent")->required();
  run->callback([&] { code = run_one(run_path, argv); });

  ModelArgs m;
  auto* model = app.add_subcommand("model", "print a preset's config, parameter count, bytes");
  model->add_option("preset", m.preset, "tiny, small, llama3.2-1b, llama2-7b")->required();
  model->add_option("--lora-r", m.lora_r, "also count LoRA's trainable parameters at this rank")
      ->check(CLI::PositiveNumber);
  model->add_option("--lora-targets", m.lora_targets, "LoRA targets, e.g. wq,wv")
      ->delimiter(',')
      ->check(CLI::IsMember(hx::lora_target_names()))
      ->capture_default_str();
  model->add_flag("--json", m.json, "one JSON object, with the config as HF's config.json");
  model->callback([&] { code = show_model(m); });

  auto* caps = app.add_subcommand("caps", "what this worker can run, as JSON (for the parent)");
  caps->callback([&] {
    nlohmann::json j = {{"libtorch", TORCH_VERSION},
                        {"cuda_compiled", hx::compat::kWithCuda},
                        {"cuda_version", hx::compat::cuda_version()},
                        {"cuda", hx::compat::cuda_usable()},
                        {"cuda_devices", hx::compat::kWithCuda ? torch::cuda::device_count() : 0}};
    if (j["cuda"].get<bool>()) {
      j["gpu_mem_mb"] = hx::compat::cuda_memory().total / (1024 * 1024);
      j["gpu_name"] = hx::compat::cuda_device_name();
    }
    std::printf("%s\n", j.dump().c_str());
  });

  GenerateArgs g;
  auto* gen = app.add_subcommand(
      "generate",
      "generation from token ids (--prompt-ids) or a random prompt; greedy unless "
      "--temperature/--top-p/--top-k");
  gen->add_option("--model", g.preset, "preset, or a checkpoint directory (HF or Meta)")
      ->capture_default_str();
  gen->add_option("--prompt-len", g.prompt_len)->capture_default_str();
  gen->add_option("--max-new-tokens", g.new_tokens)->capture_default_str();
  gen->add_option("--batch", g.batch)->capture_default_str();
  gen->add_option("--threads", g.threads)->capture_default_str();
  gen->add_option("--kv-cache", g.kv_cache)
      ->check(CLI::IsMember({"on", "off"}))
      ->capture_default_str();
  gen->add_option("--attention", g.attention, "sdpa (fused kernel) | math")
      ->check(CLI::IsMember({"sdpa", "math"}))
      ->capture_default_str();
  gen->add_option("--dtype", g.dtype)
      ->check(CLI::IsMember({"fp32", "bf16"}))
      ->capture_default_str();
  gen->add_option("--seed", g.seed)->capture_default_str();
  gen->add_option("--weights", g.weights, "weights: a torch.save dict of tensors (Meta names)");
  gen->add_option("--lora-adapter", g.lora_adapter,
                  "a PEFT LoRA adapter directory (adapter_config.json, "
                  "adapter_model.safetensors) applied to the model");
  gen->add_option("--repeats", g.repeats, "timed generations (medians)")->capture_default_str();
  hx::add_quant_options(gen, g.quant, g.double_quant, g.compute_dtype);
  auto* prompt_ids = gen->add_option("--prompt-ids", g.prompt_ids,
                                     "the prompt as token ids, 1,2,3 (default: random)");
  gen->get_option("--prompt-len")->excludes(prompt_ids);
  auto* greedy = gen->add_flag("--greedy", g.greedy, "greedy decoding (the default)");
  auto* temperature = gen->add_option("--temperature", g.temperature, "sampling temperature")
                          ->check(CLI::PositiveNumber);
  auto* top_p = gen->add_option("--top-p", g.top_p, "nucleus mass")->check(CLI::Range(0.0, 1.0));
  auto* top_k =
      gen->add_option("--top-k", g.top_k, "top-k filter (0: none)")->check(CLI::NonNegativeNumber);
  greedy->excludes(temperature)->excludes(top_p)->excludes(top_k);
  gen->add_flag("--json", g.json, "one JSON object: timings and new_ids");
  gen->callback([&, temperature, top_p, top_k] {
    g.sample = temperature->count() + top_p->count() + top_k->count() > 0;
    code = demo_generate(g);
  });

  LogitsArgs l;
  auto* lg = app.add_subcommand(
      "logits", "the logits of a prompt (one forward pass, eval mode) into a safetensors file");
  lg->add_option("--model", l.model,
                 "preset (random weights from --seed), or a checkpoint directory")
      ->capture_default_str();
  lg->add_option("--seed", l.seed, "seed of random weights")->capture_default_str();
  lg->add_option("--lora-adapter", l.lora_adapter,
                 "a PEFT LoRA adapter directory (adapter_config.json, adapter_model.safetensors)");
  lg->add_option("--prompt-ids", l.prompt_ids, "the prompt as token ids, 1,2,3")->required();
  lg->add_option("--attention", l.attention, "sdpa (fused kernel) | math")
      ->check(CLI::IsMember({"sdpa", "math"}))
      ->capture_default_str();
  lg->add_option("--threads", l.threads)->capture_default_str();
  lg->add_option("--out", l.out, "output file: tensor \"logits\" (T, vocab), fp32")->required();
  lg->callback([&] { code = write_logits(l); });

  LoraGradsArgs lga;
  auto* lgr = app.add_subcommand(
      "lora-grads",
      "one forward and backward (train mode) of a model with a PEFT adapter, optionally on 4-bit "
      "base weights: the loss and the adapter gradients under PEFT's names, into safetensors");
  lgr->add_option("--model", lga.model,
                  "preset (random weights from --seed), or a checkpoint directory")
      ->capture_default_str();
  lgr->add_option("--seed", lga.seed, "seed of random weights")->capture_default_str();
  lgr->add_option("--lora-adapter", lga.lora_adapter,
                  "a PEFT LoRA adapter directory (adapter_config.json, adapter_model.safetensors)")
      ->required();
  lgr->add_option("--prompt-ids", lga.prompt_ids, "the tokens as ids, 1,2,3 (inputs and labels)")
      ->required();
  hx::add_quant_options(lgr, lga.quant, lga.double_quant, lga.compute_dtype);
  lgr->add_option("--quant-targets", lga.quant_targets, "with --quant: the linears in 4 bits")
      ->delimiter(',')
      ->check(CLI::IsMember(hx::lora_target_names()))
      ->capture_default_str();
  lgr->add_option("--threads", lga.threads)->capture_default_str();
  lgr->add_option("--out", lga.out,
                  "output file: \"loss\" (1), PEFT-named adapter gradients, \"dequantized.\" + "
                  "the HF name of each 4-bit weight")
      ->required();
  lgr->callback([&] { code = write_lora_grads(lga); });

  ExportArgs x;
  auto* exp = app.add_subcommand("export",
                                 "write a model in HF layout (config.json, "
                                 "model.safetensors)");
  exp->add_option("--model", x.model, "preset, or a checkpoint directory (HF or Meta)")
      ->capture_default_str();
  exp->add_option("--weights", x.weights,
                  "with a preset: random (default) or a torch.save dict of tensors (Meta names)");
  exp->add_option("--seed", x.seed, "seed of random weights")->capture_default_str();
  exp->add_flag("--lora-merge", x.lora_merge,
                "fold LoRA adapters into the base weights (a model with adapters is refused "
                "otherwise)");
  exp->add_option("--dtype", x.dtype, "dtype of the written tensors (default: the model's, fp32)")
      ->check(CLI::IsMember({"fp32", "bf16", "fp16"}));
  exp->add_option("--out", x.out, "output directory (created; empty or a previous export)")
      ->required();
  exp->callback([&] { code = export_model(x); });

  Quant4Args qa;
  auto* quant = app.add_subcommand(
      "quantize", "a tensor in bitsandbytes' 4-bit layout, and Linear4bit's output and gradient");
  quant->add_option("--in", qa.in, "safetensors: \"weight\", optional \"x\" and \"g\"")->required();
  quant
      ->add_option("--out", qa.out,
                   "safetensors: packed, absmax, offset, absmax2, dequantized, "
                   "y, x_grad")
      ->required();
  quant->add_option("--quant", qa.quant)
      ->check(CLI::IsMember({"nf4", "fp4"}))
      ->capture_default_str();
  quant->add_option("--double-quant", qa.double_quant)
      ->check(CLI::IsMember({"on", "off"}))
      ->capture_default_str();
  quant->add_option("--quant-block", qa.block)->check(CLI::PositiveNumber)->capture_default_str();
  quant->add_option("--compute-dtype", qa.compute_dtype)
      ->check(CLI::IsMember({"fp32", "fp16", "bf16"}))
      ->capture_default_str();
  quant->add_option("--threads", qa.threads)->capture_default_str();
  quant->callback([&] { code = quantize_tensor(qa); });

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : hx::kExitUsage;
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return hx::kExitUsage;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return hx::kExitRunError;
  }
  return code;
}
