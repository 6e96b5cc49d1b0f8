#pragma once
// The ranks of a data-parallel run on one node: the worker started by the runner becomes the
// launcher of `world_size` rank processes (itself again, told its rank by the environment), all
// in the runner's process group, so a timeout or Ctrl-C kills them together. The first rank
// that fails stops the run: the others are killed, and the run is recorded once with the status
// of the rank that caused it (a signal before out-of-memory before an error: a rank whose peer
// died fails its next collective with an error, which is the consequence, not the cause).
#include <string>

namespace hx {

// Environment of a rank process.
inline constexpr const char* kRankEnv = "HX_RANK";
inline constexpr const char* kWorldSizeEnv = "HX_WORLD_SIZE";
inline constexpr const char* kStoreEnv = "HX_DP_STORE";

struct RankIdentity {
  int rank = 0;
  int world_size = 1;
  std::string store_path;
};

// This process's rank from HX_RANK / HX_WORLD_SIZE / HX_DP_STORE, or from Slurm's SLURM_PROCID /
// SLURM_NTASKS (one task per rank; the store beside the result file); world_size 1 when neither.
RankIdentity rank_identity(const std::string& result_path);

// Whether this worker must launch the ranks (world_size > 1 and it is none of them).
bool must_launch_ranks(int world_size);

// Runs `argv` (this worker's command line) as `world_size` rank processes and waits for them.
// Rank r > 0 writes its result beside rank 0's (`result_path`.rank<r>); on a failure that file
// becomes result.json. Returns the exit code to exit with, or re-raises the signal a rank died
// of. Prints one line per failed rank to stderr.
int launch_ranks(char** argv, int world_size, const std::string& result_path);

// The result file rank `rank` writes.
std::string rank_result_path(const std::string& result_path, int rank);

}  // namespace hx
