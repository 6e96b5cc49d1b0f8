#include "model/quant4_cpu.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

namespace hx::quant4_cpu {
namespace {

// c10::BFloat16's round_to_nearest_even, bit for bit.
uint16_t bf16_bits(float value) {
  if (std::isnan(value)) return 0x7FC0;
  uint32_t u = 0;
  std::memcpy(&u, &value, sizeof u);
  return static_cast<uint16_t>((u + 0x7FFFU + ((u >> 16) & 1U)) >> 16);
}

__attribute__((target("avx512f,f16c"))) void store_scalar(float value, OutType type, void* out,
                                                          int64_t i) {
  switch (type) {
    case OutType::kFloat32:
      static_cast<float*>(out)[i] = value;
      break;
    case OutType::kBFloat16:
      static_cast<uint16_t*>(out)[i] = bf16_bits(value);
      break;
    case OutType::kFloat16:
      static_cast<uint16_t*>(out)[i] = _cvtss_sh(value, _MM_FROUND_TO_NEAREST_INT);
      break;
  }
}

// 16 values to out[i, i + 16) as `Type`.
template <OutType Type>
__attribute__((target("avx512f,f16c"))) inline void store16(__m512 v, void* out, int64_t i) {
  if constexpr (Type == OutType::kFloat32) {
    _mm512_storeu_ps(static_cast<float*>(out) + i, v);
  } else if constexpr (Type == OutType::kFloat16) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(out) + i),
                        _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  } else {
    // bf16_bits on 16 lanes: add 0x7FFF plus the kept part's lowest bit, keep the high half.
    const __m512i u = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(
        _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), lsb), 16);
    r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(out) + i),
                        _mm512_cvtepi32_epi16(r));
  }
}

template <OutType Type>
__attribute__((target("avx512f,f16c"))) void dequantize_as(const uint8_t* packed,
                                                           const float* absmax, const float* code,
                                                           int64_t n, int64_t block, void* out) {
  const __m512 table = _mm512_loadu_ps(code);
  const __m512i low_nibble = _mm512_set1_epi32(0xF);
  // Interleave the high-nibble values (a) and the low-nibble ones (b): a0 b0 a1 b1 ...
  const __m512i first = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i second =
      _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  for (int64_t begin = 0; begin < n; begin += block) {
    const int64_t end = std::min(n, begin + block);
    const float scale = absmax[begin / block];
    const __m512 scales = _mm512_set1_ps(scale);
    int64_t i = begin;  // even: blocks are
    for (; i + 32 <= end; i += 32) {
      const __m512i bytes =
          _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(packed + i / 2)));
      const __m512 high = _mm512_permutexvar_ps(_mm512_srli_epi32(bytes, 4), table);
      const __m512 low = _mm512_permutexvar_ps(_mm512_and_si512(bytes, low_nibble), table);
      store16<Type>(_mm512_mul_ps(_mm512_permutex2var_ps(high, first, low), scales), out, i);
      store16<Type>(_mm512_mul_ps(_mm512_permutex2var_ps(high, second, low), scales), out, i + 16);
    }
    for (; i < end; ++i) {
      const uint8_t byte = packed[i / 2];
      const int nibble = i % 2 == 0 ? byte >> 4 : byte & 0xF;
      store_scalar(code[nibble] * scale, Type, out, i);
    }
  }
}

}  // namespace

bool available() {
  // Every processor with AVX-512F has F16C too (clang 14's builtin does not know "f16c").
  static const bool yes = __builtin_cpu_supports("avx512f");
  return yes;
}

void dequantize(const uint8_t* packed, const float* absmax, const float* code, int64_t n,
                int64_t block, OutType type, void* out) {
  switch (type) {
    case OutType::kFloat32:
      return dequantize_as<OutType::kFloat32>(packed, absmax, code, n, block, out);
    case OutType::kBFloat16:
      return dequantize_as<OutType::kBFloat16>(packed, absmax, code, n, block, out);
    case OutType::kFloat16:
      return dequantize_as<OutType::kFloat16>(packed, absmax, code, n, block, out);
  }
}

}  // namespace hx::quant4_cpu
