// `harness generate --model DIR|PRESET [--tokenizer PATH] (--prompt TEXT | --prompt-ids 1,2,3)
// [--max-new-tokens N] [--greedy | --temperature T --top-p P --top-k K] [--seed S]
// [--kv-cache on|off] [--dtype fp32|bf16] [--json]`: the parent encodes the prompt (BOS added),
// runs `harness-worker generate --prompt-ids ... --json` as a child (the worker links libtorch and
// must never link the tokenizers), and decodes the new ids. Without a prompt, the worker draws a
// random one of --prompt-len tokens (a timing run).
//
// This file also registers hx::load_tokenizer as harness_core's tokenizer loader (the spec's
// `tokenizer:` check and the runner's pre-tokenisation go through it): the `harness` executable
// links the tokenizers, harness_core does not.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "harness/cli/cli.h"
#include "harness/exec/process.h"
#include "harness/exec/runner.h"
#include "harness/plan/pretokenize.h"
#include "harness/store/json_io.h"
#include "model/config.h"
#include "model/tokenizers/tokenizer.h"

namespace hx {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

const bool kLoaderRegistered = (set_tokenizer_loader(&load_tokenizer), true);

struct GenerateOptions {
  std::string model = "tiny";
  std::string weights;
  std::string lora_adapter;  // a PEFT adapter directory, applied in the worker
  std::string tokenizer;
  std::string prompt;
  std::string prompt_ids;
  int64_t prompt_len = 16, max_new_tokens = 32, batch = 1, threads = 2, repeats = 1;
  bool greedy = false;
  double temperature = 1.0, top_p = 1.0;
  int64_t top_k = 0;
  uint64_t seed = 0;
  std::string kv_cache = "on", dtype = "fp32", attention = "sdpa";
  std::string quant = "off", double_quant = "off", compute_dtype = "fp32";  // the config keys'
  bool json = false, allow_special = false, keep_stop = false;
};

// "1,2,3" (spaces allowed) -> ids.
std::vector<int64_t> parse_id_list(const std::string& text) {
  std::vector<int64_t> ids;
  size_t i = 0;
  while (i < text.size()) {
    while (i < text.size() && (text[i] == ' ' || text[i] == ',')) ++i;
    if (i >= text.size()) break;
    size_t used = 0;
    long long id = 0;
    try {
      id = std::stoll(text.substr(i), &used);
    } catch (const std::exception&) {
      throw std::invalid_argument("--prompt-ids: expected comma-separated token ids, got \"" +
                                  text + "\"");
    }
    if (id < 0) throw std::invalid_argument("--prompt-ids: negative id " + std::to_string(id));
    ids.push_back(id);
    i += used;
    if (i < text.size() && text[i] != ',' && text[i] != ' ')
      throw std::invalid_argument("--prompt-ids: expected comma-separated token ids, got \"" +
                                  text + "\"");
  }
  if (ids.empty()) throw std::invalid_argument("--prompt-ids: no ids");
  return ids;
}

std::string join_ids(const std::vector<int64_t>& ids) {
  std::string out;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i > 0) out += ',';
    out += std::to_string(ids[i]);
  }
  return out;
}

std::string json_text(const std::string& text) {
  return Json(text).dump(-1, ' ', false, Json::error_handler_t::replace);
}

// The prompt's token ids: --prompt encoded with the tokenizer, --prompt-ids as given, or none
// (the worker then makes a prompt of --prompt-len ids).
std::vector<int64_t> prompt_ids(const GenerateOptions& o, const TextTokenizer* tokenizer) {
  if (!o.prompt.empty() && tokenizer == nullptr)
    throw std::invalid_argument("--prompt needs --tokenizer (or give --prompt-ids)");
  if (!o.prompt.empty()) {
    return tokenizer->encode(o.prompt, /*bos=*/true, /*eos=*/false, o.allow_special);
  }
  if (!o.prompt_ids.empty()) return parse_id_list(o.prompt_ids);
  return {};
}

// A preset's vocabulary is known here; a checkpoint's is checked by the worker.
void check_vocabulary(const GenerateOptions& o, const TextTokenizer& tokenizer) {
  if (fs::is_directory(o.model)) return;
  const int64_t vocab = config_from_name(o.model).vocab_size;  // throws on an unknown preset
  if (vocab < tokenizer.vocab_size())
    throw std::invalid_argument("--tokenizer " + o.tokenizer + ": its vocabulary (" +
                                std::to_string(tokenizer.vocab_size()) +
                                " tokens) does not fit model " + o.model + " (vocab_size " +
                                std::to_string(vocab) + ")");
}

// `harness-worker generate ... --json` for these options.
std::vector<std::string> worker_argv(const std::string& worker, const GenerateOptions& o,
                                     const std::vector<int64_t>& prompt, bool sampling) {
  std::vector<std::string> argv = {worker,
                                   "generate",
                                   "--model",
                                   o.model,
                                   "--max-new-tokens",
                                   std::to_string(o.max_new_tokens),
                                   "--batch",
                                   std::to_string(o.batch),
                                   "--threads",
                                   std::to_string(o.threads),
                                   "--kv-cache",
                                   o.kv_cache,
                                   "--dtype",
                                   o.dtype,
                                   "--attention",
                                   o.attention,
                                   "--seed",
                                   std::to_string(o.seed),
                                   "--repeats",
                                   std::to_string(o.repeats),
                                   "--quant",
                                   o.quant,
                                   "--double-quant",
                                   o.double_quant,
                                   "--compute-dtype",
                                   o.compute_dtype,
                                   "--json"};
  if (!o.weights.empty()) argv.insert(argv.end(), {"--weights", o.weights});
  if (!o.lora_adapter.empty()) argv.insert(argv.end(), {"--lora-adapter", o.lora_adapter});
  if (prompt.empty()) {
    argv.insert(argv.end(), {"--prompt-len", std::to_string(o.prompt_len)});
  } else {
    argv.insert(argv.end(), {"--prompt-ids", join_ids(prompt)});
  }
  if (sampling) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.17g", o.temperature);
    argv.insert(argv.end(), {"--temperature", buf});
    std::snprintf(buf, sizeof buf, "%.17g", o.top_p);
    argv.insert(argv.end(), {"--top-p", buf, "--top-k", std::to_string(o.top_k)});
  }
  return argv;
}

// What the worker printed on stdout and how it ended.
struct WorkerRun {
  ChildOutcome outcome;
  std::string out;
};

WorkerRun run_worker(const std::vector<std::string>& argv) {
  const fs::path tmp =
      fs::temp_directory_path() / ("harness-generate." + std::to_string(::getpid()));
  ChildSpec child;
  child.argv = argv;
  child.stdout_path = tmp.string() + ".out";
  child.stderr_path = tmp.string() + ".err";
  install_interrupt_handler();
  WorkerRun run;
  run.outcome = run_child(child);
  try {
    run.out = read_file(child.stdout_path);
  } catch (const std::exception&) {
  }
  fs::remove(child.stdout_path);
  fs::remove(child.stderr_path);
  return run;
}

// The exit code for a worker that did not end well; none when it did.
std::optional<int> failed_exit_code(const ChildOutcome& outcome, const std::string& worker) {
  if (outcome.interrupted) return 128 + interrupt_signal();
  if (outcome.exit_code == 0) return std::nullopt;
  std::fprintf(stderr, "%s", outcome.stderr_tail.c_str());
  if (outcome.signal) {
    std::fprintf(stderr, "error: %s died by signal %d\n", worker.c_str(), *outcome.signal);
    return kExitRunError;
  }
  return outcome.exit_code.value_or(kExitRunError);
}

// The text of each batch row, cut at the first stop id (<|eot_id|>, <|end_of_text|>, </s>).
std::vector<std::string> row_texts(const std::vector<int64_t>& ids, size_t per_row,
                                   const TextTokenizer& tokenizer, bool keep_stop) {
  std::vector<std::string> texts;
  const std::vector<int64_t> stops = tokenizer.stop_ids();
  for (size_t row = 0; row * per_row < ids.size(); ++row) {
    std::vector<int64_t> part;
    for (size_t i = row * per_row; i < std::min(ids.size(), (row + 1) * per_row); ++i) {
      const bool stop = std::find(stops.begin(), stops.end(), ids[i]) != stops.end();
      if (stop && !keep_stop) break;
      part.push_back(ids[i]);
    }
    texts.push_back(tokenizer.decode(part));
  }
  return texts;
}

// --json: the worker's result with the prompt, the sampling mode and (with a tokenizer) the texts.
void print_json(Json result, const GenerateOptions& o, const std::vector<int64_t>& prompt,
                bool sampling, bool with_tokenizer, const std::vector<std::string>& texts) {
  if (!prompt.empty()) result["prompt_ids"] = prompt;
  result["sampling"] = sampling ? "sample" : "greedy";
  if (!with_tokenizer) {
    std::printf("%s\n", result.dump().c_str());
    return;
  }
  result["tokenizer"] = o.tokenizer;
  // Through json_text: decoded bytes that are not UTF-8 become U+FFFD.
  std::string dump = result.dump(-1, ' ', false, Json::error_handler_t::replace);
  dump.pop_back();  // the closing brace
  dump += ",\"text\":" + json_text(texts.empty() ? "" : texts[0]);
  if (texts.size() > 1) {
    dump += ",\"texts\":[";
    for (size_t i = 0; i < texts.size(); ++i) dump += (i ? "," : "") + json_text(texts[i]);
    dump += "]";
  }
  dump += "}";
  std::printf("%s\n", dump.c_str());
}

// Plain output: the texts (or the ids without a tokenizer), then the timings on stderr.
void print_text(const Json& result, const GenerateOptions& o, bool sampling, bool with_tokenizer,
                const std::vector<int64_t>& ids, const std::vector<std::string>& texts) {
  const auto per_row = static_cast<size_t>(o.max_new_tokens);
  if (with_tokenizer) {
    for (size_t i = 0; i < texts.size(); ++i) {
      if (texts.size() > 1) std::printf("[%zu] ", i);
      std::printf("%s\n", texts[i].c_str());
    }
  } else {
    for (size_t row = 0; row * per_row < ids.size(); ++row) {
      std::printf("tokens[%zu]:", row);
      for (size_t i = row * per_row; i < std::min(ids.size(), (row + 1) * per_row); ++i)
        std::printf(" %lld", static_cast<long long>(ids[i]));
      std::printf("\n");
    }
  }
  std::fprintf(stderr,
               "model %s, prompt %lld tokens, %lld new, %s, kv cache %s: prefill %.4f s, "
               "decode %.5f s/token, %d threads\n",
               o.model.c_str(), static_cast<long long>(result.value("prompt_len", int64_t{0})),
               static_cast<long long>(o.max_new_tokens), sampling ? "sampled" : "greedy",
               o.kv_cache.c_str(), result.value("prefill_s", 0.0),
               result.value("decode_token_s", 0.0), result.value("threads", 0));
}

int run_generate(const GenerateOptions& o, bool sampling) {
  std::unique_ptr<TextTokenizer> tokenizer;
  if (!o.tokenizer.empty()) tokenizer = load_tokenizer(o.tokenizer);
  const std::vector<int64_t> prompt = prompt_ids(o, tokenizer.get());
  if (tokenizer) check_vocabulary(o, *tokenizer);

  const std::string worker = default_worker_path();
  const WorkerRun run = run_worker(worker_argv(worker, o, prompt, sampling));
  if (const std::optional<int> code = failed_exit_code(run.outcome, worker)) return *code;
  Json result;
  try {
    result = Json::parse(run.out);
  } catch (const std::exception& e) {
    throw std::runtime_error(worker + " generate printed no JSON: " + e.what());
  }
  const auto ids = result.at("new_ids").get<std::vector<int64_t>>();
  std::vector<std::string> texts;
  if (tokenizer) {
    texts = row_texts(ids, static_cast<size_t>(o.max_new_tokens), *tokenizer, o.keep_stop);
  }
  if (o.json) {
    print_json(std::move(result), o, prompt, sampling, tokenizer != nullptr, texts);
  } else {
    print_text(result, o, sampling, tokenizer != nullptr, ids, texts);
  }
  return kExitOk;
}

const CommandRegistrar kGenerate{
    "generate", [](CLI::App& app, const std::function<void(int)>& set_exit) {
      auto o = std::make_shared<GenerateOptions>();
      CLI::App* sub = app.add_subcommand(
          "generate",
          "generate text (or tokens) with a model: the prompt is encoded here, the model runs in "
          "harness-worker");
      sub->add_option("--model", o->model, "preset, or a checkpoint directory (HF or Meta)")
          ->capture_default_str();
      sub->add_option("--weights", o->weights,
                      "with a preset: a torch.save dict of tensors (Meta names)");
      sub->add_option("--lora-adapter", o->lora_adapter,
                      "a PEFT LoRA adapter directory (adapter_config.json, "
                      "adapter_model.safetensors) applied to the model");
      sub->add_option("--tokenizer", o->tokenizer,
                      "tokenizer.model (LLaMA 3 tiktoken or LLaMA 2 SentencePiece): encodes "
                      "--prompt, decodes the output")
          ->check(CLI::ExistingFile);
      auto* prompt = sub->add_option("--prompt", o->prompt, "the prompt text (BOS added)");
      auto* ids = sub->add_option("--prompt-ids", o->prompt_ids, "the prompt as ids: 1,2,3");
      auto* len = sub->add_option("--prompt-len", o->prompt_len,
                                  "without a prompt: a random prompt of this many tokens")
                      ->capture_default_str();
      prompt->excludes(ids)->excludes(len);
      ids->excludes(len);
      sub->add_option("--max-new-tokens", o->max_new_tokens)
          ->capture_default_str()
          ->check(CLI::PositiveNumber);
      sub->add_option("--batch", o->batch, "rows (the prompt repeated)")
          ->capture_default_str()
          ->check(CLI::PositiveNumber);
      sub->add_option("--threads", o->threads)->capture_default_str();
      sub->add_option("--repeats", o->repeats, "timed generations (medians)")
          ->capture_default_str();
      auto* greedy = sub->add_flag("--greedy", o->greedy, "greedy decoding (the default)");
      auto* temperature =
          sub->add_option("--temperature", o->temperature, "sample at this temperature")
              ->check(CLI::PositiveNumber);
      auto* top_p = sub->add_option("--top-p", o->top_p, "sample from the nucleus of mass P")
                        ->check(CLI::Range(0.0, 1.0));
      auto* top_k = sub->add_option("--top-k", o->top_k, "sample from the K likeliest")
                        ->check(CLI::NonNegativeNumber);
      greedy->excludes(temperature)->excludes(top_p)->excludes(top_k);
      sub->add_option("--seed", o->seed, "random weights, random prompt and sampling")
          ->capture_default_str();
      sub->add_option("--kv-cache", o->kv_cache)
          ->check(CLI::IsMember({"on", "off"}))
          ->capture_default_str();
      sub->add_option("--dtype", o->dtype)
          ->check(CLI::IsMember({"fp32", "bf16"}))
          ->capture_default_str();
      sub->add_option("--attention", o->attention, "sdpa (the fused kernel) | math")
          ->check(CLI::IsMember({"sdpa", "math"}))
          ->capture_default_str();
      add_quant_options(sub, o->quant, o->double_quant, o->compute_dtype);
      sub->add_flag("--allow-special", o->allow_special,
                    "special-token names in --prompt become their ids");
      sub->add_flag("--keep-stop", o->keep_stop,
                    "decode past stop tokens (<|eot_id|>, </s>) instead of ending the text there");
      sub->add_flag("--json", o->json,
                    "one JSON object: new_ids, text (with --tokenizer), timings");
      sub->callback([o, temperature, top_p, top_k, set_exit] {
        const bool sampling = temperature->count() + top_p->count() + top_k->count() > 0;
        set_exit(run_generate(*o, sampling));
      });
    }};

}  // namespace
}  // namespace hx
