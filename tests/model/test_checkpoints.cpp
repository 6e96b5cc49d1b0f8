// Real checkpoint layouts: the golden tiny weights written by an independent Python script
// (tests/golden/checkpoints/make_checkpoints.py) in HF layout (one file; shards + index) and Meta
// layout (2 model-parallel ranks) must load to the very same weights, hence the golden logits
// (tolerance 1e-4, argued in test_golden.cpp) and the same greedy tokens; our HF writer's output
// loads back bit for bit; malformed files fail with messages naming key, file and shapes.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "harness/store/json_io.h"
#include "model/checkpoint_io.h"
#include "model/generate.h"
#include "model/lora.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "tests/model/golden_util.h"

namespace hx {
namespace {

using testing::config_from_golden;
using testing::golden_dir;

namespace fs = std::filesystem;
using Json = nlohmann::json;

constexpr double kTolerance = 1e-4;  // as test_golden.cpp

std::string fixture(const std::string& name) { return golden_dir() + "checkpoints/" + name; }

Transformer golden_model(const std::string& golden_case) {
  const std::string base = golden_dir() + golden_case;
  Transformer model(config_from_golden(Json::parse(read_file(base + ".json"))), ModelOptions{});
  load_weights(model, read_torch_dict(base + ".weights.pt"), base + ".weights.pt");
  return model;
}

void expect_same_weights(Transformer& a, Transformer& b) {
  auto pa = a->named_parameters(), pb = b->named_parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (const auto& item : pa) {
    ASSERT_TRUE(pb.contains(item.key())) << item.key();
    EXPECT_TRUE(torch::equal(item.value(), pb[item.key()])) << item.key();
  }
}

// A fresh directory under the system temp dir, removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "hx_checkpoints_XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  // A copy of a fixture directory inside this one.
  std::string copy_of(const std::string& fixture_dir) const {
    const fs::path to = path_ / fs::path(fixture_dir).filename();
    fs::copy(fixture_dir, to, fs::copy_options::recursive);
    return to.string();
  }
  std::string sub(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

// Runs `fn`, which must throw std::invalid_argument whose message holds every one of `parts`.
template <typename Fn>
void expect_error(Fn&& fn, std::initializer_list<std::string> parts) {
  try {
    fn();
    ADD_FAILURE() << "no exception; expected one with \"" << *parts.begin() << "\"";
  } catch (const std::invalid_argument& e) {
    const std::string what = e.what();
    for (const auto& part : parts)
      EXPECT_NE(what.find(part), std::string::npos) << "\"" << part << "\" not in: " << what;
  }
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A raw safetensors file: the header text as given, then `data_bytes` zero bytes.
void write_raw_safetensors(const std::string& path, const std::string& header, size_t data_bytes) {
  const uint64_t n = header.size();
  std::string bytes(reinterpret_cast<const char*>(&n), 8);
  bytes += header;
  bytes.append(data_bytes, '\0');
  write_bytes(path, bytes);
}

std::vector<std::pair<std::string, torch::Tensor>> ordered(const TensorMap& m) {
  return {m.begin(), m.end()};
}

void save_torch_dict(const std::string& path, const TensorMap& m) {
  c10::Dict<std::string, torch::Tensor> dict;
  for (const auto& [k, v] : m) dict.insert(k, v.contiguous().clone());
  const auto bytes = torch::pickle_save(dict);
  write_bytes(path, std::string(bytes.begin(), bytes.end()));
}

// ---- the Python fixtures load to the golden weights, logits and tokens ----

struct GoldenCase {
  std::string dir, golden;
  CheckpointFormat format;
};

class CheckpointGolden : public ::testing::TestWithParam<GoldenCase> {};

TEST_P(CheckpointGolden, LoadsToGoldenWeightsLogitsAndTokens) {
  const auto& param = GetParam();
  const std::string dir = fixture(param.dir);
  EXPECT_EQ(detect_checkpoint_format(dir), param.format);

  auto model = load_model(dir, ModelOptions{});
  model->eval();
  auto reference = golden_model(param.golden);
  const auto& c = model->config();
  const auto& g = reference->config();
  EXPECT_EQ(c.name, param.dir);
  EXPECT_EQ(c.dim, g.dim);
  EXPECT_EQ(c.n_layers, g.n_layers);
  EXPECT_EQ(c.n_heads, g.n_heads);
  EXPECT_EQ(c.n_kv_heads, g.n_kv_heads);
  EXPECT_EQ(c.vocab_size, g.vocab_size);
  EXPECT_EQ(c.ffn_hidden, g.ffn_hidden);
  EXPECT_EQ(c.norm_eps, g.norm_eps);
  EXPECT_EQ(c.rope_theta, g.rope_theta);
  EXPECT_EQ(c.tie_embeddings, g.tie_embeddings);
  ASSERT_EQ(c.rope_scaling.has_value(), g.rope_scaling.has_value());
  if (c.rope_scaling) {
    EXPECT_EQ(c.rope_scaling->factor, g.rope_scaling->factor);
    EXPECT_EQ(c.rope_scaling->low_freq_factor, g.rope_scaling->low_freq_factor);
    EXPECT_EQ(c.rope_scaling->high_freq_factor, g.rope_scaling->high_freq_factor);
    EXPECT_EQ(c.rope_scaling->original_max_pos, g.rope_scaling->original_max_pos);
  }
  // The very same weights (HF's q/k permutation undone exactly, Meta's shards merged).
  expect_same_weights(model, reference);

  const auto golden = read_torch_dict(golden_dir() + param.golden + ".golden.pt");
  const auto& prompt = golden.at("prompt");
  torch::NoGradGuard no_grad;
  EXPECT_LT((model->forward(prompt) - golden.at("logits_full")).abs().max().item<double>(),
            kTolerance);
  const int64_t steps = golden.at("logits_cached_steps").size(1);
  EXPECT_TRUE(torch::equal(generate(model, prompt, steps + 1, /*use_cache=*/true, {}).tokens,
                           golden.at("greedy_tokens")));
  EXPECT_TRUE(torch::equal(generate(model, prompt, steps + 1, /*use_cache=*/false, {}).tokens,
                           golden.at("greedy_tokens")));
}

INSTANTIATE_TEST_SUITE_P(
    Fixtures, CheckpointGolden,
    ::testing::Values(GoldenCase{"tiny_llama3_hf", "tiny_llama3", CheckpointFormat::kHuggingFace},
                      GoldenCase{"tiny_llama2_hf", "tiny_llama2", CheckpointFormat::kHuggingFace},
                      GoldenCase{"tiny_llama3_meta", "tiny_llama3", CheckpointFormat::kMeta}),
    [](const auto& info) { return info.param.dir; });

// Llama 2's Meta layout, built here from the golden weights: the embedding split along dim 1
// (ParallelEmbedding), a rope.freqs buffer, params.json with vocab_size -1 and no n_kv_heads.
TEST(Checkpoints, MetaLlama2ShardsSplitTheEmbeddingAlongDim1) {
  TempDir tmp;
  const std::string dir = tmp.sub("llama2_meta");
  fs::create_directories(dir);
  const auto weights = read_torch_dict(golden_dir() + "tiny_llama2.weights.pt");
  TensorMap shards[2];
  for (const auto& [key, t] : weights) {
    int64_t dim = -1;
    if (key == "tok_embeddings.weight" || key.ends_with("attention.wo.weight") ||
        key.ends_with("feed_forward.w2.weight"))
      dim = 1;
    else if (key.find("norm") == std::string::npos)
      dim = 0;
    for (int r = 0; r < 2; ++r) shards[r][key] = dim < 0 ? t : t.chunk(2, dim)[r];
  }
  for (int r = 0; r < 2; ++r) {
    shards[r]["rope.freqs"] = torch::ones({8});
    save_torch_dict(dir + "/consolidated.0" + std::to_string(r) + ".pth", shards[r]);
  }
  // 2 * 4 * 64 / 3 = 170 -> multiple of 4: 172, the golden ffn_hidden.
  write_bytes(dir + "/params.json",
              R"({"dim": 64, "multiple_of": 4, "n_heads": 4, "n_layers": 2, "norm_eps": 1e-06,)"
              R"( "vocab_size": -1})");
  const auto config = read_checkpoint_config(dir);
  EXPECT_EQ(config.vocab_size, 320);
  EXPECT_EQ(config.n_kv_heads, 4);
  EXPECT_EQ(config.ffn_hidden, 172);
  EXPECT_FALSE(config.tie_embeddings);
  EXPECT_FALSE(config.rope_scaling.has_value());

  auto model = load_model(dir, ModelOptions{});
  auto reference = golden_model("tiny_llama2");
  expect_same_weights(model, reference);
  const auto golden = read_torch_dict(golden_dir() + "tiny_llama2.golden.pt");
  torch::NoGradGuard no_grad;
  model->eval();
  EXPECT_LT(
      (model->forward(golden.at("prompt")) - golden.at("logits_full")).abs().max().item<double>(),
      kTolerance);
}

TEST(Checkpoints, DetectsFormatFromContents) {
  EXPECT_EQ(detect_checkpoint_format(fixture("tiny_llama2_hf")), CheckpointFormat::kHuggingFace);
  EXPECT_EQ(detect_checkpoint_format(fixture("tiny_llama3_meta")), CheckpointFormat::kMeta);
  expect_error([] { detect_checkpoint_format(golden_dir()); },
               {"not a checkpoint directory", "found: README.md"});
  expect_error([] { detect_checkpoint_format(golden_dir() + "tiny_llama3.json"); },
               {"not a directory"});
  TempDir tmp;
  const auto dir = tmp.copy_of(fixture("tiny_llama3_hf"));
  fs::copy(fixture("tiny_llama3_meta"), dir);
  expect_error([&] { detect_checkpoint_format(dir); }, {"holds both"});
}

TEST(Checkpoints, LoadModelTakesPresetsToo) {
  auto model = load_model("tiny", ModelOptions{}, 3);
  EXPECT_EQ(model->config().name, "tiny");
  auto again = load_model("tiny", ModelOptions{}, 3);
  expect_same_weights(model, again);
  expect_error([] { load_model("no-such-model", ModelOptions{}); },
               {"unknown model preset \"no-such-model\"", "no directory of that name"});
}

// ---- names, permutation, configs ----

TEST(Checkpoints, OneRenameTableBothWays) {
  EXPECT_EQ(our_name_from_hf("model.embed_tokens.weight"), "tok_embeddings.weight");
  EXPECT_EQ(our_name_from_hf("model.layers.12.self_attn.k_proj.weight"),
            "layers.12.attention.wk.weight");
  EXPECT_EQ(our_name_from_hf("model.layers.0.mlp.gate_proj.weight"),
            "layers.0.feed_forward.w1.weight");
  EXPECT_EQ(our_name_from_hf("model.layers.3.post_attention_layernorm.weight"),
            "layers.3.ffn_norm.weight");
  EXPECT_EQ(our_name_from_hf("lm_head.weight"), "output.weight");
  EXPECT_FALSE(our_name_from_hf("model.layers.01.mlp.up_proj.weight"));
  EXPECT_FALSE(our_name_from_hf("model.layers.x.mlp.up_proj.weight"));
  EXPECT_FALSE(our_name_from_hf("model.layers.0.mlp.up_proj.bias"));
  auto model = golden_model("tiny_llama2");
  for (const auto& item : model->named_parameters()) {
    const auto hf = hf_name_from_ours(item.key());
    ASSERT_TRUE(hf) << item.key();
    EXPECT_EQ(our_name_from_hf(*hf), item.key());
  }
}

TEST(Checkpoints, PermutationIsHfConvertScriptsAndItsInverse) {
  // 2 heads of head_dim 4, 3 columns: HF puts the even rows (first of each pair) of a head first.
  auto w = torch::arange(8 * 3, torch::kFloat32).reshape({8, 3});
  auto hf = permute_to_hf(w, 2);
  // Head 0 rows 0..3 -> 0, 2, 1, 3; head 1 rows 4..7 -> 4, 6, 5, 7.
  const std::vector<int64_t> order{0, 2, 1, 3, 4, 6, 5, 7};
  for (int64_t i = 0; i < 8; ++i) EXPECT_TRUE(torch::equal(hf[i], w[order[i]])) << i;
  EXPECT_TRUE(torch::equal(permute_from_hf(hf, 2), w));
  auto k = torch::randn({32, 64});
  EXPECT_TRUE(torch::equal(permute_from_hf(permute_to_hf(k, 2), 2), k));
  EXPECT_FALSE(torch::equal(permute_to_hf(k, 2), k));
}

TEST(Checkpoints, MetaFfnHiddenAsMetaComputesIt) {
  EXPECT_EQ(meta_ffn_hidden(4096, 256, std::nullopt), 11008);  // Llama 2 7B
  EXPECT_EQ(meta_ffn_hidden(8192, 4096, 1.3), 28672);          // Llama 2 70B
  EXPECT_EQ(meta_ffn_hidden(4096, 1024, 1.3), 14336);          // Llama 3 8B
  EXPECT_EQ(meta_ffn_hidden(2048, 256, 1.5), 8192);            // Llama 3.2 1B
  EXPECT_EQ(meta_ffn_hidden(64, 32, 0.94), 160);               // the tiny fixture
}

TEST(Checkpoints, MetaParamsJson) {
  // Llama 3.2 1B's params.json (plus the scaling factor it does not state).
  const auto j = Json::parse(
      R"({"dim": 2048, "n_layers": 16, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256,
          "ffn_dim_multiplier": 1.5, "multiple_of": 256, "norm_eps": 1e-05,
          "rope_theta": 500000.0, "use_scaled_rope": true, "rope_scaling_factor": 32})");
  const auto c = config_from_meta_params(j, "params.json");
  const auto preset = config_from_name("llama3.2-1b");
  EXPECT_EQ(c.dim, preset.dim);
  EXPECT_EQ(c.n_kv_heads, preset.n_kv_heads);
  EXPECT_EQ(c.ffn_hidden, preset.ffn_hidden);
  ASSERT_TRUE(c.rope_scaling);
  EXPECT_EQ(c.rope_scaling->factor, 32.0);
  auto no_factor = j;
  no_factor.erase("rope_scaling_factor");
  EXPECT_EQ(config_from_meta_params(no_factor, "p").rope_scaling->factor, 8.0);  // Meta's default
  expect_error([] { config_from_meta_params(Json::parse(R"({"dim": 64})"), "x/params.json"); },
               {"x/params.json: missing key \"n_layers\""});
  expect_error(
      [] {
        config_from_meta_params(Json::parse(R"({"dim": "64", "n_layers": 2, "n_heads": 4})"),
                                "x/params.json");
      },
      {"x/params.json: dim: expected an integer, got \"64\""});
}

TEST(Checkpoints, HfConfigJson) {
  // Llama 3.2 1B's config.json (abridged).
  const auto j = Json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
    "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256,
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "tie_word_embeddings": true, "attention_bias": false, "mlp_bias": false,
    "torch_dtype": "bfloat16"})");
  const auto c = config_from_hf_json(j, "config.json");
  const auto p = config_from_name("llama3.2-1b");
  EXPECT_EQ(c.dim, p.dim);
  EXPECT_EQ(c.n_layers, p.n_layers);
  EXPECT_EQ(c.n_heads, p.n_heads);
  EXPECT_EQ(c.n_kv_heads, p.n_kv_heads);
  EXPECT_EQ(c.vocab_size, p.vocab_size);
  EXPECT_EQ(c.ffn_hidden, p.ffn_hidden);
  EXPECT_EQ(c.rope_theta, p.rope_theta);
  EXPECT_TRUE(c.tie_embeddings);
  EXPECT_EQ(c.max_seq_len, 131072);
  ASSERT_TRUE(c.rope_scaling);
  EXPECT_EQ(c.rope_scaling->factor, 32.0);
  EXPECT_EQ(c.rope_scaling->original_max_pos, 8192);

  // hf_config_json is read back to the same config.
  const auto back = config_from_hf_json(hf_config_json(c, torch::kBFloat16), "x");
  EXPECT_EQ(back.dim, c.dim);
  EXPECT_EQ(back.n_kv_heads, c.n_kv_heads);
  EXPECT_EQ(back.rope_scaling->low_freq_factor, c.rope_scaling->low_freq_factor);
  EXPECT_EQ(back.tie_embeddings, c.tie_embeddings);

  auto with = [&](const char* key, Json value) {
    auto k = j;
    k[key] = std::move(value);
    return k;
  };
  expect_error(
      [&] {
        config_from_hf_json(with("rope_scaling", {{"rope_type", "yarn"}}), "c.json");
      },
      {"c.json: rope_scaling: rope_type \"yarn\" is not supported"});
  expect_error([&] { config_from_hf_json(with("attention_bias", true), "c.json"); },
               {"attention_bias is true"});
  expect_error([&] { config_from_hf_json(with("head_dim", 128), "c.json"); }, {"head_dim 128"});
  expect_error([&] { config_from_hf_json(with("hidden_act", "gelu"), "c.json"); },
               {"hidden_act \"gelu\""});
  auto no_hidden = j;
  no_hidden.erase("hidden_size");
  expect_error([&] { config_from_hf_json(no_hidden, "c.json"); },
               {"c.json: missing key \"hidden_size\""});
  EXPECT_FALSE(config_from_hf_json(with("rope_scaling", nullptr), "c").rope_scaling);

  // transformers >= 5 writes theta and scaling as one "rope_parameters" object, nothing else.
  auto v5 = j;
  v5.erase("rope_theta");
  v5.erase("rope_scaling");
  v5["rope_parameters"] = j.at("rope_scaling");
  v5["rope_parameters"]["rope_theta"] = 500000.0;
  const auto c5 = config_from_hf_json(v5, "config.json");
  EXPECT_EQ(c5.rope_theta, 500000.0);
  ASSERT_TRUE(c5.rope_scaling);
  EXPECT_EQ(c5.rope_scaling->factor, 32.0);
  EXPECT_EQ(c5.rope_scaling->original_max_pos, 8192);
  v5["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 12345.0}};
  EXPECT_EQ(config_from_hf_json(v5, "c").rope_theta, 12345.0);
  EXPECT_FALSE(config_from_hf_json(v5, "c").rope_scaling);
  v5["rope_theta"] = 10000.0;
  expect_error([&] { config_from_hf_json(v5, "c.json"); },
               {"c.json: rope_parameters: rope_theta 12345.0 differs from the top-level"});
}

// ---- the safetensors reader and writer ----

TEST(Safetensors, WritesAndMapsBackEveryDtype) {
  TempDir tmp;
  const std::string path = tmp.sub("t.safetensors");
  auto f32 = torch::randn({3, 5});
  std::vector<std::pair<std::string, torch::Tensor>> tensors{
      {"f32", f32},
      {"f16", f32.to(torch::kFloat16)},
      {"bf16", f32.to(torch::kBFloat16)},
      {"i64", torch::arange(7)},
      {"scalar", torch::tensor(2.5)},
      {"empty", torch::zeros({0, 4})},
      {"strided", f32.t()}};  // written contiguous
  write_safetensors(path, tensors, {{"format", "pt"}});
  auto file = read_safetensors(path);
  EXPECT_EQ(file.metadata.at("format"), "pt");
  ASSERT_EQ(file.tensors.size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    const auto& back = file.tensors.at(name);
    EXPECT_EQ(back.scalar_type(), t.scalar_type()) << name;
    EXPECT_EQ(back.sizes(), t.sizes()) << name;
    EXPECT_TRUE(torch::equal(back, t)) << name;
  }
  // Writing into a loaded tensor copies the page (private mapping): the file is unchanged.
  file.tensors.at("f32").mul_(2);
  EXPECT_TRUE(torch::equal(read_safetensors(path).tensors.at("f32"), f32));
  // The header is padded to a multiple of 8 (so the data is aligned).
  std::ifstream in(path, std::ios::binary);
  uint64_t n = 0;
  in.read(reinterpret_cast<char*>(&n), 8);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(safetensors_dtype("BF16"), torch::kBFloat16);
  expect_error([] { safetensors_dtype("F8_E4M3"); }, {"unknown dtype \"F8_E4M3\""});
}

TEST(Safetensors, MalformedFilesGiveClearErrors) {
  TempDir tmp;
  const std::string p = tmp.sub("bad.safetensors");
  write_bytes(p, "abc");
  expect_error([&] { read_safetensors(p); }, {p, "too short"});

  write_raw_safetensors(p, R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 8);
  EXPECT_NO_THROW(read_safetensors(p));
  // A header length beyond the file.
  std::string bytes = read_file(p);
  const uint64_t huge = 1u << 30;
  std::memcpy(bytes.data(), &huge, 8);
  write_bytes(p, bytes);
  expect_error([&] { read_safetensors(p); }, {p, "header length 1073741824 runs past the end"});

  write_raw_safetensors(p, R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})", 8);
  expect_error([&] { read_safetensors(p); }, {p, "bad header JSON"});
  write_raw_safetensors(p, R"([1, 2])", 0);
  expect_error([&] { read_safetensors(p); }, {"bad header JSON: expected an object"});
  write_raw_safetensors(p, R"({"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}})", 8);
  expect_error([&] { read_safetensors(p); }, {"tensor \"a\": unknown dtype \"Q4\""});
  write_raw_safetensors(p, R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}})", 8);
  expect_error([&] { read_safetensors(p); },
               {"tensor \"a\": data_offsets [0, 16] out of range", "(8 bytes)", "truncated"});
  write_raw_safetensors(p, R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8);
  expect_error([&] { read_safetensors(p); }, {"span 8 bytes where F32 [3] needs 12"});
  write_raw_safetensors(p, R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8);
  expect_error([&] { read_safetensors(p); }, {"shape entries must be a non-negative integer"});
  write_raw_safetensors(p, R"({"a":{"dtype":"F32","shape":[2]}})", 8);
  expect_error([&] { read_safetensors(p); }, {"missing data_offsets"});
  write_raw_safetensors(p, R"({"__metadata__":{"k":1}})", 0);
  expect_error([&] { read_safetensors(p); }, {"__metadata__.k must be a string"});

  // A real file cut short: through load_model, the error names the file.
  const auto dir = tmp.copy_of(fixture("tiny_llama3_hf"));
  const std::string model_file = dir + "/model.safetensors";
  fs::resize_file(model_file, fs::file_size(model_file) / 2);
  expect_error([&] { load_model(dir, ModelOptions{}); },
               {model_file, "out of range of the data section", "truncated"});
  fs::resize_file(model_file, 100);
  expect_error([&] { load_model(dir, ModelOptions{}); }, {model_file, "runs past the end"});
}

// Found by fuzzing (tests/fuzz/fuzz_torch_pth.cpp, inputs in tests/fuzz/corpus/fuzz_torch_pth):
// a pickle that stores at memo index 1596876899 made libtorch's unpickler allocate a 25 GB memo
// table (the pickle is checked first now, model/torch_pickle.h); a quantized tensor with a
// quantizer libtorch lacks, and an Int1 tensor, loaded and then failed inside libtorch's copies
// (an internal assert; "not implemented for 'Int1'"); a tensor over a storage record too short for
// it was read past its end. Each is now an error naming the file.
TEST(TorchSave, CorruptFilesNameTheFile) {
  const std::string corpus = std::string(kHxSourceDir) + "/tests/fuzz/corpus/fuzz_torch_pth/";
  const std::string crash = corpus + "crash-memo-index.pth";
  expect_error([&] { read_torch_dict(crash); }, {crash, "memo index 1596876899 out of range"});
  const std::string quantized = corpus + "crash-quantized.pth";
  expect_error([&] { read_torch_dict(quantized); }, {quantized, "is not a dense CPU tensor"});
  const std::string int1 = corpus + "crash-int1-dtype.pth";
  expect_error([&] { read_torch_dict(int1); }, {int1, "has dtype"});
  // A tensor's storage record emptied (a null data pointer: summing it crashed) or cut to 8 of
  // its 16 bytes: libtorch rebuilds the view over it unchecked.
  for (const char* name : {"crash-empty-storage.pth", "crash-short-storage.pth"}) {
    const std::string short_storage = corpus + name;
    expect_error([&] { read_torch_dict(short_storage); },
                 {short_storage, "tensor w of shape [4] runs past its storage record"});
  }
  // An empty version record: libtorch's zip reader asked ours for 0 bytes into a null buffer
  // (memcpy(nullptr, ...), undefined behaviour that UBSan caught).
  const std::string empty_record = corpus + "crash-empty-record-read.pth";
  expect_error([&] { read_torch_dict(empty_record); },
               {empty_record, "not a readable torch.save file", "Couldn't parse the version"});
  TempDir tmp;
  const std::string p = tmp.sub("consolidated.00.pth");
  write_bytes(p, "PK\x03\x04 not a zip");
  expect_error([&] { read_torch_dict(p); }, {p, "not a readable torch.save file"});
  // The fuzzer's seeds are real torch.save files.
  EXPECT_EQ(
      read_torch_dict(std::string(kHxSourceDir) + "/tests/fuzz/corpus/fuzz_torch_pth/fp32.pth")
          .size(),
      2U);
}

// ---- strict loading: every error names the key, the file and the shapes ----

// Rewrites one HF file of `dir` through `edit`.
template <typename Edit>
void edit_hf_file(const std::string& path, Edit&& edit) {
  auto file = read_safetensors(path);
  TensorMap tensors;
  for (const auto& [k, v] : file.tensors) tensors[k] = v.clone();
  edit(tensors);
  write_safetensors(path, ordered(tensors), file.metadata);
}

TEST(Checkpoints, StrictHfWrongShapeMissingExtra) {
  TempDir tmp;
  const auto dir = tmp.copy_of(fixture("tiny_llama3_hf"));
  const std::string file = dir + "/model.safetensors";
  const std::string k1 = "model.layers.1.self_attn.k_proj.weight";

  edit_hf_file(file, [&](TensorMap& t) { t[k1] = t[k1].narrow(0, 0, 16); });
  expect_error([&] { load_model(dir, ModelOptions{}); },
               {file, k1 + " (layers.1.attention.wk.weight)",
                "shape [16, 64] where the model expects [32, 64]"});

  edit_hf_file(file, [&](TensorMap& t) { t.erase(k1); });
  expect_error([&] { load_model(dir, ModelOptions{}); },
               {dir, "missing tensor " + k1 + " (layers.1.attention.wk.weight)"});

  auto original = read_safetensors(fixture("tiny_llama3_hf") + "/model.safetensors").tensors;
  edit_hf_file(file, [&](TensorMap& t) {
    t = original;
    t["model.layers.2.mlp.up_proj.weight"] = torch::zeros({160, 64});
  });
  expect_error([&] { load_model(dir, ModelOptions{}); },
               {file, "unexpected tensor model.layers.2.mlp.up_proj.weight"});
  edit_hf_file(file, [&](TensorMap& t) {
    t = original;
    t["model.layers.0.self_attn.q_proj.bias"] = torch::zeros({64});
  });
  expect_error(
      [&] { load_model(dir, ModelOptions{}); },
      {file, "unexpected tensor model.layers.0.self_attn.q_proj.bias", "not a LLaMA weight name"});
  edit_hf_file(file, [&](TensorMap& t) {
    t = original;
    t["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch::ones({8});  // ignored explicitly
    t["model.layers.0.mlp.up_proj.weight"] =
        t["model.layers.0.mlp.up_proj.weight"].to(torch::kInt32);
  });
  expect_error([&] { load_model(dir, ModelOptions{}); },
               {"model.layers.0.mlp.up_proj.weight", "expected floating-point values"});
}

TEST(Checkpoints, TiedLmHeadMayBeLeftOutOrEqual) {
  TempDir tmp;
  const auto dir = tmp.copy_of(fixture("tiny_llama3_hf"));
  const std::string file = dir + "/model.safetensors";
  edit_hf_file(file, [](TensorMap& t) { t["lm_head.weight"] = t["model.embed_tokens.weight"]; });
  auto model = load_model(dir, ModelOptions{});
  auto reference = golden_model("tiny_llama3");
  expect_same_weights(model, reference);
  edit_hf_file(file, [](TensorMap& t) { t["lm_head.weight"] = t["lm_head.weight"] * 2; });
  expect_error(
      [&] { load_model(dir, ModelOptions{}); },
      {file, "lm_head.weight differs from model.embed_tokens.weight", "tie_word_embeddings"});
}

TEST(Checkpoints, StrictHfShards) {
  TempDir tmp;
  const auto dir = tmp.copy_of(fixture("tiny_llama2_hf"));
  const std::string first = dir + "/model-00001-of-00002.safetensors";
  const std::string second = dir + "/model-00002-of-00002.safetensors";
  const auto norm = read_safetensors(second).tensors.at("model.norm.weight").clone();
  edit_hf_file(first, [&](TensorMap& t) { t["model.norm.weight"] = norm; });
  expect_error([&] { load_model(dir, ModelOptions{}); },
               {"duplicate tensor model.norm.weight", first, second});

  // A tensor the index does not list, and an index entry no file holds.
  edit_hf_file(first, [&](TensorMap& t) { t.erase("model.norm.weight"); });
  auto index = Json::parse(read_file(dir + "/model.safetensors.index.json"));
  index["weight_map"].erase("model.norm.weight");
  write_bytes(dir + "/model.safetensors.index.json", index.dump());
  expect_error([&] { load_model(dir, ModelOptions{}); },
               {second, "model.norm.weight is not listed in"});
  index["weight_map"]["model.norm.weight"] = "model-00002-of-00002.safetensors";
  index["weight_map"]["model.layers.0.post_attention_layernorm.weight"] =
      "model-00002-of-00002.safetensors";
  write_bytes(dir + "/model.safetensors.index.json", index.dump());
  expect_error(
      [&] { load_model(dir, ModelOptions{}); },
      {first, "model.layers.0.post_attention_layernorm.weight is listed in", "under model-00002"});
  index["weight_map"]["model.layers.0.post_attention_layernorm.weight"] =
      "model-00001-of-00002.safetensors";
  index["weight_map"]["model.layers.5.post_attention_layernorm.weight"] =
      "model-00001-of-00002.safetensors";
  write_bytes(dir + "/model.safetensors.index.json", index.dump());
  expect_error(
      [&] { load_model(dir, ModelOptions{}); },
      {"lists model.layers.5.post_attention_layernorm.weight in model-00001-of-00002.safetensors",
       "which does not hold it"});
  index["weight_map"].erase("model.layers.5.post_attention_layernorm.weight");
  write_bytes(dir + "/model.safetensors.index.json", index.dump());
  auto model = load_model(dir, ModelOptions{});  // repaired: loads again
  auto reference = golden_model("tiny_llama2");
  expect_same_weights(model, reference);
}

TEST(Checkpoints, StrictMetaShards) {
  TempDir tmp;
  const auto dir = tmp.copy_of(fixture("tiny_llama3_meta"));
  const std::string s0 = dir + "/consolidated.00.pth", s1 = dir + "/consolidated.01.pth";
  const auto shard0 = read_torch_dict(s0), shard1 = read_torch_dict(s1);
  const std::string wq = "layers.0.attention.wq.weight";

  auto edited = shard1;
  edited.erase(wq);
  save_torch_dict(s1, edited);
  expect_error([&] { load_model(dir, ModelOptions{}); },
               {s1 + ": missing tensor " + wq, "present in " + s0});

  edited = shard1;
  edited[wq] = edited[wq].narrow(0, 0, 16);
  save_torch_dict(s1, edited);
  expect_error([&] { load_model(dir, ModelOptions{}); },
               {dir + ": " + wq, "consolidated.00.pth [32, 64], consolidated.01.pth [16, 64]",
                "concatenated along dim 0 give [48, 64] where the model expects [64, 64]"});

  edited = shard1;
  edited["layers.1.ffn_norm.weight"] = edited["layers.1.ffn_norm.weight"] + 1;
  save_torch_dict(s1, edited);
  expect_error([&] { load_model(dir, ModelOptions{}); },
               {s1 + ": layers.1.ffn_norm.weight differs from " + s0, "replicated"});

  edited = shard1;
  edited["layers.0.attention.wq.lora_a.weight"] = torch::zeros({2, 2});
  save_torch_dict(s1, edited);
  expect_error([&] { load_model(dir, ModelOptions{}); },
               {s1 + ": unexpected tensor layers.0.attention.wq.lora_a.weight"});

  save_torch_dict(s1, shard1);
  fs::rename(s1, dir + "/consolidated.02.pth");
  expect_error([&] { load_model(dir, ModelOptions{}); }, {"not numbered 00..1"});
}

// ---- our writer ----

TEST(Checkpoints, ExportRoundTripsAndMatchesThePythonLayout) {
  TempDir tmp;
  // The golden llama 3 (tied, GQA, rope scaling) exported: the same tensors, byte for byte, as
  // the independent Python writer's, and it loads back to the same weights.
  auto golden = golden_model("tiny_llama3");
  const std::string out = tmp.sub("export3");
  save_hf_checkpoint(golden, out);
  const auto ours = read_safetensors(out + "/model.safetensors");
  const auto python = read_safetensors(fixture("tiny_llama3_hf") + "/model.safetensors");
  EXPECT_EQ(ours.metadata.at("format"), "pt");
  ASSERT_EQ(ours.tensors.size(), python.tensors.size());
  EXPECT_FALSE(ours.tensors.count("lm_head.weight"));
  for (const auto& [name, t] : python.tensors) {
    ASSERT_TRUE(ours.tensors.count(name)) << name;
    EXPECT_TRUE(torch::equal(ours.tensors.at(name), t)) << name;
  }
  auto loaded = load_model(out, ModelOptions{});
  expect_same_weights(loaded, golden);
  const auto config = Json::parse(read_file(out + "/config.json"));
  EXPECT_EQ(config.at("num_key_value_heads"), 2);
  EXPECT_EQ(config.at("rope_scaling").at("rope_type"), "llama3");
  EXPECT_EQ(config.at("torch_dtype"), "float32");

  // A preset with random weights, untied: exported and loaded back identically, same logits.
  auto tiny = load_model("tiny", ModelOptions{}, 11);
  const std::string out2 = tmp.sub("export_tiny");
  save_hf_checkpoint(tiny, out2);
  auto back = load_model(out2, ModelOptions{});
  expect_same_weights(back, tiny);
  EXPECT_TRUE(read_safetensors(out2 + "/model.safetensors").tensors.count("lm_head.weight"));
  torch::NoGradGuard no_grad;
  auto prompt = torch::randint(3, 512, {2, 9}, torch::kInt64);
  EXPECT_TRUE(torch::equal(back->forward(prompt), tiny->forward(prompt)));
  // Over a previous export: fine; into a directory holding other files: refused.
  EXPECT_NO_THROW(save_hf_checkpoint(tiny, out2));
  write_bytes(out2 + "/params.json", "{}");
  expect_error([&] { save_hf_checkpoint(tiny, out2); }, {"holds params.json"});
}

TEST(Checkpoints, ExportMergesLoraAndConvertsDtype) {
  TempDir tmp;
  auto model = golden_model("tiny_llama2");
  apply_lora(model, {"wq", "wk", "wv", "w2"}, LoraOptions{4, 8.0, 0.0}, 5);
  {
    torch::NoGradGuard no_grad;
    auto gen = at::detail::createCPUGenerator(9);
    for (auto& item : model->named_parameters())
      if (item.key().find("lora_b") != std::string::npos)
        item.value().copy_(torch::randn(item.value().sizes(), gen) * 0.1);
  }
  model->eval();
  torch::NoGradGuard no_grad;
  const auto prompt = torch::randint(3, 320, {1, 7}, torch::kInt64);
  const auto adapted = model->forward(prompt);

  const std::string out = tmp.sub("merged");
  expect_error([&] { save_hf_checkpoint(model, out); }, {"LoRA adapters", "--lora-merge"});
  save_hf_checkpoint(model, out, HfExportOptions{std::nullopt, /*merge_lora=*/true});
  for (const auto& item : model->named_parameters()) EXPECT_FALSE(is_lora_param(item.key()));
  auto loaded = load_model(out, ModelOptions{});
  loaded->eval();
  // Merging re-associates W x + s B (A x) as (W + s B A) x in fp32: a few ulps.
  EXPECT_LT((loaded->forward(prompt) - adapted).abs().max().item<double>(), 1e-4);
  expect_same_weights(loaded, model);

  const std::string bf16 = tmp.sub("bf16");
  save_hf_checkpoint(model, bf16, HfExportOptions{torch::kBFloat16, false});
  const auto file = read_safetensors(bf16 + "/model.safetensors");
  EXPECT_EQ(file.tensors.at("model.norm.weight").scalar_type(), torch::kBFloat16);
  EXPECT_EQ(Json::parse(read_file(bf16 + "/config.json")).at("torch_dtype"), "bfloat16");
  auto from_bf16 = load_model(bf16, ModelOptions{});
  EXPECT_TRUE(torch::equal(from_bf16->norm->weight,
                           model->norm->weight.to(torch::kBFloat16).to(torch::kFloat32)));
}

// ---- PEFT LoRA adapters (tests/hf/test_hf_interop.py compares with PEFT itself) ----

// A PEFT adapter directory for `model`'s shapes: B of q_proj/k_proj in HF's row layout.
void write_peft_adapter(const std::string& dir, const Json& config, const TensorMap& tensors) {
  fs::create_directories(dir);
  write_bytes(dir + "/adapter_config.json", config.dump());
  write_safetensors(dir + "/adapter_model.safetensors", ordered(tensors), {{"format", "pt"}});
}

TEST(Checkpoints, PeftAdapterLoadsWithHfRowLayoutAndStrictly) {
  TempDir tmp;
  const Json config = {{"peft_type", "LORA"},
                       {"r", 4},
                       {"lora_alpha", 8},
                       {"lora_dropout", 0.1},
                       {"target_modules", {"v_proj", "q_proj"}},
                       {"bias", "none"},
                       {"use_dora", false},
                       {"rank_pattern", Json::object()},
                       {"modules_to_save", nullptr}};
  auto reference = golden_model("tiny_llama3");  // dim 64, 4 heads, 2 kv heads, 2 layers
  const auto& c = reference->config();
  // The adapter in our layout, from a seed; PEFT's file holds B of q_proj permuted like q_proj.
  TensorMap ours, file;
  auto gen = at::detail::createCPUGenerator(3);
  for (int64_t layer = 0; layer < c.n_layers; ++layer) {
    for (const auto& [peft, target, out] :
         {std::tuple{"q_proj", "wq", c.n_heads * c.head_dim()},
          std::tuple{"v_proj", "wv", c.n_kv_heads * c.head_dim()}}) {
      const std::string hf =
          "base_model.model.model.layers." + std::to_string(layer) + ".self_attn." + peft;
      const std::string our = "layers." + std::to_string(layer) + ".attention." + target;
      auto a = torch::randn({4, c.dim}, gen), b = torch::randn({out, 4}, gen);
      ours[our + ".lora_a.weight"] = a;
      ours[our + ".lora_b.weight"] = b;
      file[hf + ".lora_A.weight"] = a;
      file[hf + ".lora_B.weight"] = std::string(target) == "wq" ? permute_to_hf(b, c.n_heads) : b;
    }
  }
  const std::string dir = tmp.sub("adapter");
  write_peft_adapter(dir, config, file);
  const auto read = read_peft_adapter_config(dir, c.n_layers);
  EXPECT_EQ(read.options.r, 4);
  EXPECT_EQ(read.options.alpha, 8.0);
  EXPECT_EQ(read.options.dropout, 0.1);
  EXPECT_EQ(read.targets, (std::vector<std::string>{"wq", "wv"}));

  auto model = golden_model("tiny_llama3");
  load_peft_adapter(model, dir);
  const auto params = model->named_parameters();
  EXPECT_EQ(trainable_param_count(model), 2 * (4 * 64 + 64 * 4) + 2 * (4 * 64 + 32 * 4));
  for (const auto& [name, t] : ours) {
    ASSERT_TRUE(params.contains(name)) << name;
    EXPECT_TRUE(torch::equal(params[name], t)) << name;
    EXPECT_TRUE(params[name].requires_grad()) << name;
  }
  EXPECT_FALSE(params["layers.0.attention.wq.weight"].requires_grad());

  // Errors name the file and the key.
  const std::string weights = dir + "/adapter_model.safetensors";
  const std::string q0 = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight";
  auto fresh = [] { return golden_model("tiny_llama3"); };
  auto edited = [&](auto&& edit) {
    TensorMap t = file;
    edit(t);
    write_peft_adapter(dir, config, t);
    auto m = fresh();
    load_peft_adapter(m, dir);
  };
  expect_error([&] { edited([&](TensorMap& t) { t.erase(q0); }); },
               {weights, "missing tensor " + q0, "layers.0.attention.wq.lora_b.weight"});
  expect_error([&] { edited([&](TensorMap& t) {
                       t[q0] = torch::zeros({64, 8});
                     }); },
               {weights, q0, "shape [64, 8] where the model expects [64, 4]"});
  const std::string k0 = "base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight";
  expect_error([&] { edited([&](TensorMap& t) {
                       t[k0] = torch::zeros({4, 64});
                     }); },
               {weights, "unexpected tensor " + k0});
  const std::string cfg = dir + "/adapter_config.json";
  auto with = [&](const char* key, Json value) {
    auto k = config;
    k[key] = std::move(value);
    write_peft_adapter(dir, k, file);
    return dir;
  };
  auto read_with = [&](const char* key, Json value) {
    return read_peft_adapter_config(with(key, std::move(value)), c.n_layers);
  };
  expect_error([&] { read_with("use_dora", true); }, {cfg, "use_dora is true"});
  expect_error(
      [&] {
        read_with("target_modules", {"q_proj", "lm_head"});
      },
      {cfg, "\"lm_head\" is no linear layer of a LLaMA block"});
  expect_error([&] { read_with("target_modules", {"model.layers.1.self_attn.q_proj"}); },
               {cfg, "selects other linears in block 1 than in block 0"});
  expect_error([&] { read_with("rank_pattern", {{"q_proj", 8}}); }, {cfg, "rank_pattern"});
  expect_error([&] { read_with("peft_type", "IA3"); }, {cfg, "peft_type \"IA3\""});
  // PEFT's matching: full names (what save_pretrained writes for "all-linear"), suffixes, regex.
  EXPECT_EQ(read_with("target_modules", "all-linear").targets, lora_target_names());
  EXPECT_EQ(read_with("target_modules",
                      {"model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj", "k_proj"})
                .targets,
            (std::vector<std::string>{"wk", "w2"}));
  EXPECT_EQ(read_with("target_modules", ".*\\.(q_proj|up_proj)").targets,
            (std::vector<std::string>{"wq", "w3"}));
}

}  // namespace
}  // namespace hx
