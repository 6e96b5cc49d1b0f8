#pragma once
// A check of the pickle inside a torch.save file (its data.pkl) before libtorch's unpickler reads
// it, without libtorch. The unpickler trusts the file: a memo index of 2^32 - 1 (LONG_BINPUT)
// makes it grow its memo table to 64 GB, and it reads memo entries that were never written. Meta's
// .pth checkpoints are such pickles (model/weights.h read_torch_dict).
#include <string>
#include <string_view>

namespace hx {

// Walks the opcodes of `pickle` (protocols 0 to 5) up to STOP and throws std::invalid_argument
// "WHERE: ..." naming the byte offset when an opcode is unknown, an argument runs past the end,
// there is no STOP, a PUT stores at an index above the number of opcodes before it (a pickler
// numbers its memo entries from 0, one per opcode at most), or a GET reads an index never stored.
void check_torch_pickle(std::string_view pickle, const std::string& where);

}  // namespace hx
