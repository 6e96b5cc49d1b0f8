#pragma once
// bitsandbytes' 4-bit dequantisation on the CPU in one pass over the packed bytes, vectorised
// with AVX-512 (16 codes fit one register, so each lookup is one permute). No libtorch here: the
// caller (model/quant4.cpp) hands over raw buffers. The libtorch-op path stays the reference and
// the fallback for processors without AVX-512 and for CUDA.
#include <cstdint>

namespace hx::quant4_cpu {

enum class OutType { kFloat32, kBFloat16, kFloat16 };

// Whether this processor runs the kernel below (AVX-512F, which implies F16C).
bool available();

// out[i] = code[nibble i] * absmax[i / block], computed in fp32 and rounded once to `type`
// (nearest even, NaN to the canonical quiet NaN), as libtorch's multiply and cast do. Byte j
// holds element 2j in its high nibble and 2j + 1 in its low one; `block` is even. `out` holds n
// elements of `type`. Only call when available().
void dequantize(const uint8_t* packed, const float* absmax, const float* code, int64_t n,
                int64_t block, OutType type, void* out);

}  // namespace hx::quant4_cpu
