#pragma once
// 4-bit weight quantisation exactly as bitsandbytes 0.50.2 stores and computes it (QLoRA's NF4 and
// FP4, with optional double quantisation of the scales): docs/bitsandbytes-4bit.md has the
// semantics measured on that library, tests/hf/test_bnb4bit.py checks ours against it byte for
// byte. Plain libtorch ops, so the same code runs on the CPU and on CUDA.
#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

namespace hx {

enum class QuantType { kNf4, kFp4 };
QuantType parse_quant_type(const std::string& name);  // "nf4" | "fp4"
const char* quant_type_name(QuantType type);

struct Quant4Options {
  QuantType type = QuantType::kNf4;
  bool double_quant = false;                     // bnb_4bit_use_double_quant
  int64_t block = 64;                            // bitsandbytes' blocksize
  torch::Dtype compute_dtype = torch::kFloat32;  // bnb_4bit_compute_dtype
};

// The options of the config keys quant, double_quant, compute_dtype and quant_block.
Quant4Options quant4_options(const std::string& quant, bool double_quant,
                             torch::Dtype compute_dtype, int64_t block = 64);

// A weight in bitsandbytes' layout (its packed tensor and QuantState).
struct Quant4Weight {
  torch::Tensor packed;  // uint8 (ceil(n/2), 1): two codes a byte, the even element high
  // Without double quantisation: fp32 (ceil(n/block)), one absmax a block. With it: uint8 codes
  // of (absmax - offset) in the signed dynamic map, blocks of 256.
  torch::Tensor absmax;
  torch::Tensor offset;   // double quantisation: fp32 0-d, the mean of the absmax vector
  torch::Tensor absmax2;  // double quantisation: fp32 (ceil(n_blocks/256)), the second scales
  std::vector<int64_t> shape;
  torch::Dtype dtype = torch::kFloat32;  // of the weight it was made from (QuantState.dtype)
  QuantType type = QuantType::kNf4;
  int64_t block = 64;

  bool double_quant() const { return offset.defined(); }
  int64_t numel() const;
  // Bytes of the tensors above (the code tables are shared by every weight of a device).
  int64_t nbytes() const;
};

// The 16 code values (fp32, as bitsandbytes' get_4bit_type), and the 256 of the signed dynamic
// map that double quantisation uses (create_dynamic_map(signed=True)).
torch::Tensor quant4_code(QuantType type);
torch::Tensor dynamic_map();

// bitsandbytes.functional.quantize_4bit(w, blocksize, compress_statistics, quant_type) on a
// weight of any float dtype and shape, on its device.
Quant4Weight quantize_4bit(const torch::Tensor& weight, QuantType type, int64_t block,
                           bool double_quant);
// dequantize_4bit: code * absmax in fp32, then one cast to `dtype`; the weight's shape. On a CPU
// with AVX-512 one vectorised pass (model/quant4_cpu.h), else dequantize_4bit_ops.
torch::Tensor dequantize_4bit(const Quant4Weight& q, torch::Dtype dtype);
// The same values by libtorch ops (any device; the CPU kernel's reference in tests).
torch::Tensor dequantize_4bit_ops(const Quant4Weight& q, torch::Dtype dtype);
// The fp32 absmax vector of `q` (double quantisation undone: code2[q8] * absmax2 + offset).
torch::Tensor quant4_absmax(const Quant4Weight& q);

// A stand-in for a projection's output whose value is never read: a zero of x's shape with the
// last dimension `out`, in `dtype`, broadcast from one element.
torch::Tensor unread_output(const torch::Tensor& x, int64_t out, torch::Dtype dtype);

// Linear4bit's forward: x cast to `compute_dtype`, y = x W^T with W dequantised to
// `compute_dtype` for the product only, y cast back to x's dtype. Backward gives x's gradient
// (W dequantised again) and no weight gradient: the quantised weight is frozen.
// With `product` false the output is a broadcast zero of the product's shape and dtype and only
// the backward is real: for an output whose value is never read (ProjectionOutput).
torch::Tensor quant4_linear(const torch::Tensor& x, const Quant4Weight& q,
                            torch::Dtype compute_dtype, bool product = true);

}  // namespace hx
