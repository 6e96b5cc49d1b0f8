#include "model/torch_pickle.h"

#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

namespace hx {
namespace {

// How an opcode's argument is laid out (Python's pickletools.opcodes).
enum class Arg {
  kNone,
  kFixed,     // `size` bytes
  kLine,      // up to and including a newline
  kTwoLines,  // GLOBAL, INST: module and name, each up to a newline
  kCounted,   // a little-endian length of `size` bytes, then that many bytes
  kUnknown,   // not a pickle opcode
};

struct Layout {
  Arg arg = Arg::kUnknown;
  int size = 0;
};

// The opcodes by argument layout (Python's pickletools.opcodes, protocols 0 to 5).
using namespace std::string_view_literals;
constexpr std::string_view kNoArgument =
    "(.012NQR}abd]elt)suo\x81\x85\x86\x87\x88\x89\x8f\x90\x91\x92\x93\x94\x97\x98"sv;
constexpr std::string_view kOneByte = "Khq\x80\x82"sv;    // BININT1 BINGET BINPUT PROTO EXT1
constexpr std::string_view kTwoBytes = "M\x83"sv;         // BININT2 EXT2
constexpr std::string_view kFourBytes = "Jjr\x84"sv;      // BININT LONG_BINGET LONG_BINPUT EXT4
constexpr std::string_view kEightBytes = "G\x95"sv;       // BINFLOAT FRAME
constexpr std::string_view kOneLine = "ILFSVPgp"sv;       // INT LONG ... PERSID GET PUT
constexpr std::string_view kTwoLineOps = "ci"sv;          // GLOBAL INST
constexpr std::string_view kCounted1 = "UC\x8c\x8a"sv;    // SHORT_BIN{STRING,BYTES,UNICODE} LONG1
constexpr std::string_view kCounted4 = "TXB\x8b"sv;       // BIN{STRING,UNICODE,BYTES} LONG4
constexpr std::string_view kCounted8 = "\x8d\x8e\x96"sv;  // BINUNICODE8 BINBYTES8 BYTEARRAY8

Layout layout(uint8_t op) {
  const auto in = [op](std::string_view ops) {
    return ops.find(static_cast<char>(op)) != std::string_view::npos;
  };
  if (in(kNoArgument)) return {Arg::kNone, 0};
  if (in(kOneByte)) return {Arg::kFixed, 1};
  if (in(kTwoBytes)) return {Arg::kFixed, 2};
  if (in(kFourBytes)) return {Arg::kFixed, 4};
  if (in(kEightBytes)) return {Arg::kFixed, 8};
  if (in(kOneLine)) return {Arg::kLine, 0};
  if (in(kTwoLineOps)) return {Arg::kTwoLines, 0};
  if (in(kCounted1)) return {Arg::kCounted, 1};
  if (in(kCounted4)) return {Arg::kCounted, 4};
  if (in(kCounted8)) return {Arg::kCounted, 8};
  return {};
}

uint64_t little_endian(const char* p, int size) {
  uint64_t v = 0;
  for (int i = size - 1; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

}  // namespace

void check_torch_pickle(std::string_view pickle, const std::string& where) {
  auto fail = [&](size_t at, const std::string& what) {
    return std::invalid_argument(where + ": byte " + std::to_string(at) + " of the pickle: " +
                                 what + " (corrupt, or not a torch.save file)");
  };
  std::vector<bool> stored;  // memo indices that a PUT wrote
  size_t ops = 0;
  size_t i = 0;
  while (i < pickle.size()) {
    const size_t at = i;
    const auto op = static_cast<uint8_t>(pickle[i++]);
    ++ops;
    const Layout l = layout(op);
    const size_t left = pickle.size() - i;
    uint64_t index = 0;
    bool put = false, get = false;
    switch (l.arg) {
      case Arg::kUnknown: {
        char hex[8];
        std::snprintf(hex, sizeof hex, "0x%02X", op);
        throw fail(at, std::string("unknown opcode ") + hex);
      }
      case Arg::kNone:
        break;
      case Arg::kFixed:
        if (left < static_cast<size_t>(l.size)) throw fail(at, "an argument runs past the end");
        if (op == 'q' || op == 'r') put = true;
        if (op == 'h' || op == 'j') get = true;
        index = little_endian(pickle.data() + i, l.size);
        i += static_cast<size_t>(l.size);
        break;
      case Arg::kLine:
      case Arg::kTwoLines: {
        for (int line = 0; line < (l.arg == Arg::kLine ? 1 : 2); ++line) {
          const size_t end = pickle.find('\n', i);
          if (end == std::string_view::npos) throw fail(at, "an argument line runs past the end");
          if (op == 'p' || op == 'g') {
            const std::string_view text = pickle.substr(i, end - i);
            if (text.empty() || text.size() > 19 ||
                text.find_first_not_of("0123456789") != std::string_view::npos)
              throw fail(at, "a memo index that is not a number");
            index = std::stoull(std::string(text));
            put = op == 'p';
            get = op == 'g';
          }
          i = end + 1;
        }
        break;
      }
      case Arg::kCounted: {
        if (left < static_cast<size_t>(l.size)) throw fail(at, "a length runs past the end");
        const uint64_t n = little_endian(pickle.data() + i, l.size);
        i += static_cast<size_t>(l.size);
        if (n > pickle.size() - i)
          throw fail(at, "an argument of " + std::to_string(n) + " bytes runs past the end");
        i += static_cast<size_t>(n);
        break;
      }
    }
    if (op == 0x94) {  // MEMOIZE: the next index
      stored.push_back(true);
    } else if (put) {
      // A pickler stores at most one memo entry per opcode: a larger index is corrupt (and makes
      // the unpickler allocate a table of that size).
      if (index >= ops) throw fail(at, "memo index " + std::to_string(index) + " out of range");
      if (index >= stored.size()) stored.resize(static_cast<size_t>(index) + 1, false);
      stored[static_cast<size_t>(index)] = true;
    } else if (get) {
      if (index >= stored.size() || !stored[static_cast<size_t>(index)])
        throw fail(at, "memo index " + std::to_string(index) + " read before it is stored");
    }
    if (op == '.') return;  // STOP
  }
  throw fail(pickle.size(), "no STOP opcode");
}

}  // namespace hx
