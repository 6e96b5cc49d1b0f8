// The libtorch-free checks of checkpoint files (checkpoint_formats): the safetensors header,
// config.json / params.json with validate_config, and the pickle of a torch.save file; with the
// inputs that fuzzing (tests/fuzz) found, each kept in tests/fuzz/corpus/<target>/crash-*.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "model/checkpoint_config.h"
#include "model/safetensors_header.h"
#include "model/torch_pickle.h"

namespace hx {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

const fs::path kCorpus = fs::path(HX_SOURCE_DIR) / "tests/fuzz/corpus";

std::string slurp(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

// The message of the std::invalid_argument that `f` throws ("(no error)" when it returns).
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "(no error)";
}

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.rfind(prefix, 0) == 0;
}

// ---- safetensors header ----

std::string safetensors(const std::string& header, size_t data_bytes) {
  const uint64_t n = header.size();
  std::string out(8, '\0');
  std::memcpy(out.data(), &n, 8);
  return out + header + std::string(data_bytes, '\0');
}

SafetensorsHeader parse(const std::string& file) {
  return parse_safetensors_header(reinterpret_cast<const uint8_t*>(file.data()), file.size(),
                                  "m.safetensors");
}

TEST(SafetensorsHeader, ParsesEntriesAndMetadata) {
  const auto h = parse(safetensors(
      R"({"__metadata__":{"format":"pt"},"b":{"dtype":"BF16","shape":[2,3],"data_offsets":[8,20]},)"
      R"("a":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})",
      20));
  ASSERT_EQ(h.entries.size(), 2U);
  EXPECT_EQ(h.entries[0].name, "a");
  EXPECT_EQ(h.entries[1].shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(h.entries[1].begin, 8U);
  EXPECT_EQ(h.metadata.at("format"), "pt");
  EXPECT_EQ(safetensors_element_size("BF16"), 2U);
  EXPECT_EQ(safetensors_element_size("F8_E4M3"), 0U);
}

TEST(SafetensorsHeader, EverySeedOfTheFuzzerParsesOrNamesTheFile) {
  for (const auto& entry : fs::directory_iterator(kCorpus / "fuzz_safetensors")) {
    const std::string file = slurp(entry.path());
    const std::string error = error_of([&] { parse(file); });
    EXPECT_TRUE(error == "(no error)" || starts_with(error, "m.safetensors: "))
        << entry.path() << ": " << error;
  }
}

TEST(SafetensorsHeader, MalformedHeadersNameTheFileAndTheTensor) {
  const auto error = [](const std::string& header, size_t data = 8) {
    return error_of([&] { parse(safetensors(header, data)); });
  };
  EXPECT_EQ(error(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}})"),
            "m.safetensors: tensor \"a\": data_offsets [0, 16] out of range of the data section "
            "(8 bytes): truncated or corrupt file");
  // Shapes whose element count passes 2^63 (a tensor library multiplies sizes in int64).
  EXPECT_EQ(error(R"({"a":{"dtype":"U8","shape":[0,4294967296,4294967296],"data_offsets":[0,0]}})"),
            "m.safetensors: tensor \"a\": shape [0, 4294967296] times 4294967296 is too large "
            "(more than 2^63 - 1 elements)");
  // A nested value in an error message is named by its type: its text could be deep enough to
  // exhaust the stack of a recursive dump.
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  EXPECT_EQ(error(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[)" + deep + ",2]}}"),
            "m.safetensors: tensor \"a\": data_offsets must be a non-negative integer, got an "
            "array");
}

// ---- config.json / params.json ----

TEST(CheckpointConfig, SizesBeyondAnyModelAreRefusedBeforeAnyArithmetic) {
  // Meta's FFN size of a dim near 2^62 overflowed int64 (undefined behaviour) before the size
  // check; now it is 0, and validate_config names the size.
  const Json params = {{"dim", int64_t{1} << 62}, {"n_layers", 2}, {"n_heads", 2}};
  LlamaConfig c = config_from_meta_params(params, "params.json");
  EXPECT_EQ(c.ffn_hidden, 0);
  c.vocab_size = 32;
  c.name = "x";
  EXPECT_EQ(error_of([&] { validate_config(c); }),
            "model config x: dim 4611686018427387904 is above the limit of 2^31");
  EXPECT_EQ(meta_ffn_hidden(4096, 1024, 1.3), 14336);          // Llama 3 8B
  EXPECT_EQ(meta_ffn_hidden(4096, 256, std::nullopt), 11008);  // Llama 2 7B
  EXPECT_EQ(meta_ffn_hidden(4096, 256, -1.0), 0);
  EXPECT_EQ(meta_ffn_hidden(4096, int64_t{1} << 40, std::nullopt), 0);
}

TEST(CheckpointConfig, ParameterCountAndRopeScalingAreChecked) {
  LlamaConfig c = config_from_name("tiny");
  c.dim = c.ffn_hidden = 1 << 20;
  c.n_layers = 1 << 20;
  EXPECT_EQ(error_of([&] { validate_config(c); }),
            "model config tiny: 6.92e+18 parameters: above the limit of 10^13");
  c = config_from_name("tiny");
  c.rope_scaling = RopeScaling{8.0, 4.0, 4.0, 8192};  // Meta's scaling divides by high - low
  EXPECT_TRUE(starts_with(error_of([&] { validate_config(c); }),
                          "model config tiny: rope scaling needs factor > 0"));
  c = config_from_name("tiny");
  c.max_seq_len = 0;
  EXPECT_EQ(error_of([&] { validate_config(c); }),
            "model config tiny: all sizes must be positive (max_seq_len is 0)");
}

TEST(CheckpointConfig, NestedValuesInMessagesAreNamedByType) {
  const Json j = Json::parse(R"({"hidden_size": [[[1]]]})");
  EXPECT_EQ(error_of([&] { config_from_hf_json(j, "config.json"); }),
            "config.json: hidden_size: expected an integer, got an array");
}

// ---- torch.save pickles ----

TEST(TorchPickle, PicklesOfTorchSaveAndPythonPass) {
  int seeds = 0;
  for (const auto& entry : fs::directory_iterator(kCorpus / "fuzz_torch_pickle")) {
    if (starts_with(entry.path().filename().string(), "crash-")) continue;
    EXPECT_EQ(error_of([&] { check_torch_pickle(slurp(entry.path()), "x.pth"); }), "(no error)")
        << entry.path();
    ++seeds;
  }
  EXPECT_GE(seeds, 8);
}

// Found by fuzzing fuzz_torch_pth (tests/fuzz/corpus/fuzz_torch_pth/crash-memo-index.pth, its
// data.pkl in fuzz_torch_pickle/crash-memo-index.pkl): LONG_BINPUT 1596876899 made libtorch's
// unpickler grow its memo table to 25 GB (AddressSanitizer: allocator out of memory).
TEST(TorchPickle, MemoIndicesBeyondTheOpcodesAreRefused) {
  EXPECT_EQ(error_of([&] {
              check_torch_pickle(slurp(kCorpus / "fuzz_torch_pickle/crash-memo-index.pkl"),
                                 "x.pth");
            }),
            "x.pth: byte 17 of the pickle: memo index 1596876899 out of range (corrupt, or not a "
            "torch.save file)");
  // PROTO 2, EMPTY_DICT, LONG_BINGET 0 (never stored), STOP.
  EXPECT_TRUE(starts_with(
      error_of([] { check_torch_pickle(std::string("\x80\x02}j\0\0\0\0.", 9), "x.pth"); }),
      "x.pth: byte 3 of the pickle: memo index 0 read before it is stored"));
  EXPECT_TRUE(
      starts_with(error_of([] { check_torch_pickle("\x80\x02}X\xff\xff\xff\x7f", "x.pth"); }),
                  "x.pth: byte 3 of the pickle: an argument of 2147483647 bytes"));
  EXPECT_TRUE(starts_with(error_of([] { check_torch_pickle("\x80\x02}", "x.pth"); }),
                          "x.pth: byte 3 of the pickle: no STOP opcode"));
  EXPECT_TRUE(starts_with(error_of([] { check_torch_pickle("\x80\x02\xff.", "x.pth"); }),
                          "x.pth: byte 2 of the pickle: unknown opcode 0xFF"));
}

}  // namespace
}  // namespace hx
