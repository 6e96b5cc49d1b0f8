"""Plain-torch reference of bitsandbytes 0.50.2 4-bit quantisation on the CPU (docs/bitsandbytes-4bit.md).
Groundwork for issue 16: matched quantize_4bit / dequantize_4bit byte for byte on random tensors; not run by CI yet."""
import torch
NF4 = torch.tensor([-1.0,-0.6961928009986877,-0.5250730514526367,-0.39491748809814453,-0.28444138169288635,
 -0.18477343022823334,-0.09105003625154495,0.0,0.07958029955625534,0.16093020141124725,0.24611230194568634,
 0.33791524171829224,0.44070982933044434,0.5626170039176941,0.7229568362236023,1.0], dtype=torch.float32)
FP4 = torch.tensor([0,0.0625,8.,12.,4.,6.,2.,3.,-0.,-0.0625,-8.,-12.,-4.,-6.,-2.,-3.], dtype=torch.float32) / 12.0
FP4_ORDER = torch.tensor([11,10,13,12,15,14,9,0,8,1,6,7,4,5,2,3])   # argsort(FP4) as bnb computes it (+0 before -0)

def dynamic_map():  # = bnb.functional.create_dynamic_map(signed=True)
    data = []
    for i in range(7):
        b = torch.linspace(0.1, 1, 2**i + 1, dtype=torch.float32)
        m = (b[:-1] + b[1:]) / 2.0
        data += ((10 ** (-6 + i)) * m).tolist(); data += (-(10 ** (-6 + i)) * m).tolist()
    data += [0, 1.0]; data.sort()
    return torch.tensor(data, dtype=torch.float32)

def quant4(A, blocksize=64, quant_type='nf4'):
    code = NF4 if quant_type == 'nf4' else FP4
    order = torch.arange(16) if quant_type == 'nf4' else FP4_ORDER
    sc = code[order]
    bounds = (sc[:-1] + sc[1:]) / 2                      # fp32 midpoints
    a = A.reshape(-1).float(); n = a.numel(); rem = n % blocksize; full = n - rem
    blk = a[:full].reshape(-1, blocksize)
    absmax = blk.abs().amax(-1)                           # stored unclamped
    scaled = torch.clamp(blk * (1.0 / absmax.clamp(min=1e-38)).view(-1, 1), -1, 1).reshape(-1)   # multiply by fp32 reciprocal
    if rem:
        am = a[full:].abs().max().clamp(min=1e-38)        # stored clamped (!)
        absmax = torch.cat([absmax, am.view(1)])
        scaled = torch.cat([scaled, torch.clamp(a[full:] / am, -1, 1)])   # true division for partial block
    if scaled.numel() % 2: scaled = torch.nn.functional.pad(scaled, (0, 1))
    q = order[torch.bucketize(scaled, bounds)].to(torch.uint8)  # #bounds strictly < x -> midpoint goes to lower sorted code
    return ((q[0::2] << 4) | q[1::2]).unsqueeze(1), absmax

def build_lut(code):   # native build_quantize_lut: 65536-bin grid over [-1,1] -> nearest code (midpoint ties -> lower)
    mid = (code[:-1] + code[1:]) * 0.5                                   # fp32
    i = torch.arange(65536, dtype=torch.float32)
    grid = (2.0 * i) / 65535.0 - 1.0                                      # fp32 ops, as in C
    return torch.searchsorted(mid, grid, side='left').to(torch.uint8)    # count of midpoints strictly < grid

def quant8(x, code, blocksize=256):   # native cquantize_blockwise_cpu_fp32 (bnb 0.50.2 scalar LUT path)
    n = x.numel(); nb = -(-n // blocksize)
    xp = torch.nn.functional.pad(x, (0, nb * blocksize - n))
    absmax = xp.view(nb, blocksize).abs().amax(-1)                       # (NaN: C ignores NaN via std::max; not modelled)
    inv = 1.0 / absmax                                                    # fp32 reciprocal
    v = torch.clamp(xp.view(nb, blocksize) * inv.view(-1, 1), -1.0, 1.0).reshape(-1)[:n]
    u = (v + 1.0) * 0.5                                                   # fp32
    t = (u.double() * 65535.0 + 0.5).float()                              # = fmaf(u, 65535, 0.5): exact in fp64, one fp32 rounding
    q = build_lut(code)[torch.nan_to_num(t).long()]                                       # C truncates (cvttss2si)
    q = torch.where((absmax == 0).repeat_interleave(blocksize)[:n], torch.zeros_like(q), q)   # absmax==0 block -> all 0
    return q, absmax

def quant4_full(A, blocksize=64, quant_type='nf4', compress_statistics=False):
    packed, absmax = quant4(A, blocksize, quant_type)
    if not compress_statistics: return packed, absmax, None
    offset = absmax.mean()
    q8, absmax2 = quant8(absmax - offset, dynamic_map())
    return packed, q8, (offset, absmax2)
