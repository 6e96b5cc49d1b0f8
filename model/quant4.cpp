#include "model/quant4.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <tuple>

#include "model/quant4_cpu.h"

namespace hx {
namespace {

namespace F = torch::nn::functional;

constexpr int64_t kDoubleQuantBlock = 256;  // bitsandbytes' blocksize of the nested quantisation
// Elements per (de)quantisation chunk on the CPU: bounds the temporaries (dequantising: int32
// indices, 2 bytes an element, plus fp32 values when not written into the output directly;
// quantising: 4 + 4 + 1).
constexpr int64_t kChunkElements = int64_t{1} << 20;

// The CPU tables, copied once to each device that asks for them.
torch::Tensor on_device(const torch::Tensor& table, const torch::Device& device) {
  if (device.is_cpu()) return table;
  static std::mutex mutex;
  static std::map<std::tuple<const void*, int, int>, torch::Tensor> copies;
  const std::lock_guard<std::mutex> lock(mutex);
  auto& copy = copies[{table.data_ptr(), static_cast<int>(device.type()), device.index()}];
  if (!copy.defined()) copy = table.to(device);
  return copy;
}

// bitsandbytes' get_4bit_type: the listed values divided by their largest magnitude, in fp32.
torch::Tensor make_code(QuantType type) {
  if (type == QuantType::kNf4) {
    return torch::tensor(
        {-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
         -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
         0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
         0.7229568362236023, 1.0},
        torch::kFloat32);
  }
  auto fp4 = torch::tensor({0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, -0.0, -0.0625, -8.0, -12.0,
                            -4.0, -6.0, -2.0, -3.0},
                           torch::kFloat32);
  return fp4.div_(fp4.abs().max());
}

// The code indices in ascending value order, and the fp32 midpoints between neighbours.
// argsort as bitsandbytes computes it: FP4's +0 (index 0) sorts before -0 (index 8).
struct SortedCode {
  torch::Tensor order;   // int64 (16)
  torch::Tensor bounds;  // fp32 (15)
};

SortedCode make_sorted(QuantType type) {
  const auto code = quant4_code(type);
  const auto order =
      type == QuantType::kNf4
          ? torch::arange(16, torch::kInt64)
          : torch::tensor({11, 10, 13, 12, 15, 14, 9, 0, 8, 1, 6, 7, 4, 5, 2, 3}, torch::kInt64);
  const auto sorted = code.index_select(0, order);
  return {order, (sorted.slice(0, 0, -1) + sorted.slice(0, 1)) / 2};
}

const SortedCode& sorted_code(QuantType type) {
  static const SortedCode nf4 = make_sorted(QuantType::kNf4);
  static const SortedCode fp4 = make_sorted(QuantType::kFp4);
  return type == QuantType::kNf4 ? nf4 : fp4;
}

// The 4-bit code of every element of `scaled` (values in [-1, 1]): the nearest code value, an
// exact midpoint going to the lower one (torch.bucketize, right=False, on the fp32 midpoints).
torch::Tensor nearest_code(const torch::Tensor& scaled, QuantType type) {
  const SortedCode& sorted = sorted_code(type);
  const auto device = scaled.device();
  const auto rank = torch::bucketize(scaled, on_device(sorted.bounds, device), /*out_int32=*/true);
  return on_device(sorted.order, device).to(torch::kUInt8).index_select(0, rank.view(-1));
}

// 256 rows, one per byte: the two code values it holds (high nibble first), to dequantise a byte
// with one lookup.
torch::Tensor make_pair_table(QuantType type) {
  const auto code = quant4_code(type);
  const auto bytes = torch::arange(256, torch::kInt64);
  return torch::stack({code.index_select(0, bytes.div(16, "floor")),
                       code.index_select(0, bytes.remainder(16))},
                      1)
      .contiguous();
}

const torch::Tensor& pair_table(QuantType type) {
  static const torch::Tensor nf4 = make_pair_table(QuantType::kNf4);
  static const torch::Tensor fp4 = make_pair_table(QuantType::kFp4);
  return type == QuantType::kNf4 ? nf4 : fp4;
}

// bitsandbytes' native 8-bit quantiser for a code (cquantize_blockwise_cpu_fp32) is a lookup on
// a grid of 65536 points over [-1, 1], not an exact nearest search: LUT[i] = the number of fp32
// midpoints of `code` below (2i)/65535 - 1.
torch::Tensor make_dynamic_lut() {
  const auto code = dynamic_map();
  const auto mid = (code.slice(0, 0, -1) + code.slice(0, 1)) * 0.5;
  const auto grid = (2.0 * torch::arange(65536, torch::kFloat32)) / 65535.0 - 1.0;
  return torch::searchsorted(mid, grid, /*out_int32=*/false, /*right=*/false).to(torch::kUInt8);
}

// Blockwise 8-bit quantisation of `x` (fp32, 1-D) to the dynamic map, blocks of 256: the codes
// (uint8, as x) and each block's absmax (fp32). idx = (int)fmaf((v + 1) / 2, 65535, 0.5), done in
// fp64 where the product and sum are exact, then rounded once to fp32 as fmaf rounds.
std::pair<torch::Tensor, torch::Tensor> quantize_8bit_dynamic(const torch::Tensor& x) {
  static const torch::Tensor lut = make_dynamic_lut();
  const int64_t n = x.numel();
  const int64_t blocks = (n + kDoubleQuantBlock - 1) / kDoubleQuantBlock;
  const auto padded = F::pad(x, F::PadFuncOptions({0, blocks * kDoubleQuantBlock - n}))
                          .view({blocks, kDoubleQuantBlock});
  const auto absmax = padded.abs().amax(-1);
  const auto v = torch::clamp(padded * absmax.reciprocal().view({-1, 1}), -1.0, 1.0)
                     .reshape(-1)
                     .slice(0, 0, n);
  const auto u = (v + 1.0) * 0.5;
  const auto grid_index = (u.to(torch::kFloat64) * 65535.0 + 0.5).to(torch::kFloat32);
  auto codes =
      on_device(lut, x.device()).index_select(0, torch::nan_to_num(grid_index).to(torch::kInt64));
  // A block of zeros: every code 0, whatever the lookup of 0 * inf gave.
  const auto zero_block = (absmax == 0).repeat_interleave(kDoubleQuantBlock).slice(0, 0, n);
  codes.masked_fill_(zero_block, 0);
  return {codes, absmax};
}

// The full blocks of `flat` (fp32) into codes: each block scaled by the fp32 reciprocal of its
// absmax (bitsandbytes multiplies), in chunks of whole blocks.
torch::Tensor quantize_full_blocks(const torch::Tensor& flat, const torch::Tensor& absmax,
                                   QuantType type, int64_t block) {
  const int64_t n = flat.numel();
  auto codes = torch::empty({n}, flat.options().dtype(torch::kUInt8));
  const int64_t chunk = std::max<int64_t>(block, kChunkElements / block * block);
  for (int64_t start = 0; start < n; start += chunk) {
    const int64_t end = std::min(n, start + chunk);
    const auto blocks = flat.slice(0, start, end).view({-1, block});
    const auto scale = absmax.slice(0, start / block, end / block).clamp_min(1e-38).reciprocal();
    const auto scaled = torch::clamp(blocks * scale.view({-1, 1}), -1.0, 1.0);
    codes.slice(0, start, end).copy_(nearest_code(scaled.view(-1), type));
  }
  return codes;
}

void check_block(int64_t block) {
  if (block < 2 || block % 2 != 0)
    throw std::invalid_argument("quant_block: " + std::to_string(block) +
                                " is not an even block size of at least 2");
}

}  // namespace

QuantType parse_quant_type(const std::string& name) {
  if (name == "nf4") return QuantType::kNf4;
  if (name == "fp4") return QuantType::kFp4;
  throw std::invalid_argument("quant: unknown type \"" + name + "\" (expected nf4 or fp4)");
}

const char* quant_type_name(QuantType type) { return type == QuantType::kNf4 ? "nf4" : "fp4"; }

Quant4Options quant4_options(const std::string& quant, bool double_quant,
                             torch::Dtype compute_dtype, int64_t block) {
  Quant4Options options;
  options.type = parse_quant_type(quant);
  options.double_quant = double_quant;
  options.compute_dtype = compute_dtype;
  options.block = block;
  return options;
}

int64_t Quant4Weight::numel() const {
  int64_t n = 1;
  for (const int64_t size : shape) n *= size;
  return n;
}

int64_t Quant4Weight::nbytes() const {
  int64_t bytes = 0;
  for (const auto* t : {&packed, &absmax, &offset, &absmax2})
    if (t->defined()) bytes += static_cast<int64_t>(t->nbytes());
  return bytes;
}

torch::Tensor quant4_code(QuantType type) {
  static const torch::Tensor nf4 = make_code(QuantType::kNf4);
  static const torch::Tensor fp4 = make_code(QuantType::kFp4);
  return type == QuantType::kNf4 ? nf4 : fp4;
}

// create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8): for each exponent i, the
// midpoints of linspace(0.1, 1, 2^i + 1) scaled by +-10^(i-6) in fp32, then 0 and 1, sorted.
torch::Tensor dynamic_map() {
  static const torch::Tensor map = [] {
    std::vector<float> values;
    for (int i = 0; i < 7; ++i) {
      const auto bounds = torch::linspace(0.1, 1.0, (int64_t{1} << i) + 1, torch::kFloat32);
      const auto means = (bounds.slice(0, 0, -1) + bounds.slice(0, 1)) / 2.0;
      const double scale = std::pow(10.0, i - 6);
      for (const auto& part : {means * scale, means * -scale}) {
        const auto contiguous = part.contiguous();
        values.insert(values.end(), contiguous.data_ptr<float>(),
                      contiguous.data_ptr<float>() + contiguous.numel());
      }
    }
    values.push_back(0.0F);
    values.push_back(1.0F);
    std::sort(values.begin(), values.end());
    return torch::tensor(values, torch::kFloat32);
  }();
  return map;
}

Quant4Weight quantize_4bit(const torch::Tensor& weight, QuantType type, int64_t block,
                           bool double_quant) {
  check_block(block);
  torch::NoGradGuard no_grad;
  Quant4Weight q;
  q.shape = weight.sizes().vec();
  q.dtype = weight.scalar_type();
  q.type = type;
  q.block = block;
  const auto flat = weight.reshape(-1).to(torch::kFloat32).contiguous();
  const int64_t n = flat.numel();
  const int64_t rest = n % block;
  const int64_t full = n - rest;
  // Full blocks keep their absmax as it is (0 for a block of zeros); the last partial block's is
  // stored clamped to 1e-38, and its elements are divided, not multiplied by a reciprocal.
  auto absmax = flat.slice(0, 0, full).view({full / block, block}).abs().amax(-1);
  auto codes = quantize_full_blocks(flat.slice(0, 0, full), absmax, type, block);
  if (rest > 0) {
    const auto tail = flat.slice(0, full);
    const auto tail_max = tail.abs().max().clamp_min(1e-38);
    absmax = torch::cat({absmax, tail_max.view({1})});
    codes = torch::cat({codes, nearest_code(torch::clamp(tail / tail_max, -1.0, 1.0), type)});
  }
  // An odd count is padded with one scaled 0.0, the code that 0 maps to.
  if (n % 2 != 0)
    codes = torch::cat({codes, nearest_code(torch::zeros({1}, flat.options()), type)});
  const auto pairs = codes.view({-1, 2});
  q.packed = pairs.select(1, 0).bitwise_left_shift(4).bitwise_or(pairs.select(1, 1)).unsqueeze(1);
  if (!double_quant) {
    q.absmax = absmax;
    return q;
  }
  q.offset = absmax.mean();
  std::tie(q.absmax, q.absmax2) = quantize_8bit_dynamic(absmax - q.offset);
  return q;
}

torch::Tensor quant4_absmax(const Quant4Weight& q) {
  if (!q.double_quant()) return q.absmax;
  const auto map = on_device(dynamic_map(), q.absmax.device());
  const int64_t n = q.absmax.numel();
  const auto scales = q.absmax2.repeat_interleave(kDoubleQuantBlock).slice(0, 0, n);
  return map.index_select(0, q.absmax.to(torch::kInt32)) * scales + q.offset;
}

namespace {
std::optional<quant4_cpu::OutType> kernel_type(torch::Dtype dtype) {
  if (dtype == torch::kFloat32) return quant4_cpu::OutType::kFloat32;
  if (dtype == torch::kBFloat16) return quant4_cpu::OutType::kBFloat16;
  if (dtype == torch::kFloat16) return quant4_cpu::OutType::kFloat16;
  return std::nullopt;
}
}  // namespace

torch::Tensor dequantize_4bit(const Quant4Weight& q, torch::Dtype dtype) {
  const auto type = kernel_type(dtype);
  if (!q.packed.is_cpu() || !quant4_cpu::available() || !type) return dequantize_4bit_ops(q, dtype);
  // One pass over the bytes (tests/model/test_qlora.cpp: the same bits as the ops below; 0.1 ms
  // against 0.56 for a 2048 x 768 weight to fp32, tests/bench BM_Dequantize4bit).
  torch::NoGradGuard no_grad;
  const auto absmax = quant4_absmax(q).contiguous();
  const auto code = quant4_code(q.type);
  const auto packed = q.packed.contiguous();
  auto out = torch::empty(q.shape, q.packed.options().dtype(dtype));
  quant4_cpu::dequantize(packed.data_ptr<uint8_t>(), absmax.data_ptr<float>(),
                         code.data_ptr<float>(), q.numel(), q.block, *type, out.data_ptr());
  return out;
}

torch::Tensor dequantize_4bit_ops(const Quant4Weight& q, torch::Dtype dtype) {
  torch::NoGradGuard no_grad;
  const int64_t n = q.numel();
  // Each byte's two fp32 codes as one 64-bit word, so that the lookup is libtorch's 1-D gather:
  // a row gather on the (256, 2) table, a temporary and a copy took 3.2x as long on the CPU
  // (1.7 ms against 0.53 ms for a 2048 x 768 weight, one thread; bitsandbytes' native kernel
  // 0.2 ms). Moving bits changes no value.
  const auto table = on_device(pair_table(q.type), q.packed.device()).view(torch::kInt64).view(-1);
  const auto absmax = quant4_absmax(q);
  const auto bytes = q.packed.view(-1);
  auto out = torch::empty({n}, q.packed.options().dtype(dtype));
  // In chunks of whole blocks: the lookup's int32 indices and fp32 values stay small beside the
  // output (bitsandbytes' kernels write the output directly). Larger chunks on a GPU, where each
  // chunk costs a few kernel launches.
  const int64_t target = q.packed.is_cuda() ? kChunkElements * 16 : kChunkElements;
  const int64_t chunk = std::max<int64_t>(q.block, target / q.block * q.block);
  for (int64_t start = 0; start < n; start += chunk) {
    const int64_t end = std::min(n, start + chunk);
    const int64_t len = end - start;
    const auto index = bytes.slice(0, start / 2, (end + 1) / 2).to(torch::kInt32);
    // fp32 output and whole pairs (all but an odd last chunk): the lookup writes the output
    // itself, scaled in place; otherwise fp32 values, then one cast into the output.
    const bool direct = dtype == torch::kFloat32 && len % 2 == 0;
    torch::Tensor values;
    if (direct) {
      values = out.slice(0, start, end);
      auto words = values.view(torch::kInt64);
      torch::index_select_out(words, table, 0, index);
    } else {
      values = table.index_select(0, index).view(torch::kFloat32).slice(0, 0, len);
    }
    const int64_t full = len - len % q.block;  // only the last chunk ends in a partial block
    values.slice(0, 0, full)
        .view({full / q.block, q.block})
        .mul_(absmax.slice(0, start / q.block, (start + full) / q.block).view({-1, 1}));
    if (full < len) values.slice(0, full).mul_(absmax[-1]);
    if (!direct) out.slice(0, start, end).copy_(values);
  }
  return out.view(q.shape);
}

torch::Tensor unread_output(const torch::Tensor& x, int64_t out, torch::Dtype dtype) {
  auto sizes = x.sizes().vec();
  sizes.back() = out;
  return torch::zeros({}, x.options().dtype(dtype)).expand(sizes);
}

namespace {

// bitsandbytes' MatMul4Bit: the dequantised weight lives only inside forward and backward.
struct Quant4Matmul : public torch::autograd::Function<Quant4Matmul> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               const Quant4Weight& q, torch::Dtype compute_dtype, bool product) {
    ctx->save_for_backward({q.packed, q.absmax, q.offset, q.absmax2});
    ctx->saved_data["shape"] = q.shape;
    ctx->saved_data["dtype"] = static_cast<int64_t>(q.dtype);
    ctx->saved_data["type"] = static_cast<int64_t>(q.type);
    ctx->saved_data["block"] = q.block;
    ctx->saved_data["compute"] = static_cast<int64_t>(compute_dtype);
    if (!product) return unread_output(x, q.shape[0], x.scalar_type());
    const auto w = dequantize_4bit(q, compute_dtype);
    return torch::linear(x.to(compute_dtype), w).to(x.scalar_type());
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    Quant4Weight q;
    q.packed = saved[0];
    q.absmax = saved[1];
    q.offset = saved[2];
    q.absmax2 = saved[3];
    q.shape = ctx->saved_data["shape"].toIntVector();
    q.dtype = static_cast<torch::Dtype>(ctx->saved_data["dtype"].toInt());
    q.type = static_cast<QuantType>(ctx->saved_data["type"].toInt());
    q.block = ctx->saved_data["block"].toInt();
    const auto compute = static_cast<torch::Dtype>(ctx->saved_data["compute"].toInt());
    const auto& grad = grads[0];
    const auto grad_x = torch::matmul(grad.to(compute), dequantize_4bit(q, compute));
    return {grad_x.to(grad.scalar_type()), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor quant4_linear(const torch::Tensor& x, const Quant4Weight& q,
                            torch::Dtype compute_dtype, bool product) {
  return Quant4Matmul::apply(x, q, compute_dtype, product);
}

}  // namespace hx
