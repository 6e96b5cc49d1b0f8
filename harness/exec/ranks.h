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
// Set by `harness task` for the workers it starts through `srun --ntasks N`: each is one rank,
// told which by Slurm (SLURM_PROCID, SLURM_NTASKS), possibly on another node.
inline constexpr const char* kSrunRanksEnv = "HX_SRUN_RANKS";

struct RankIdentity {
  int rank = 0;
  int world_size = 1;
  std::string store_path;          // a FileStore every rank can open
  std::string host = "127.0.0.1";  // the address this rank's collectives use
  bool slurm_task = false;
};

// This process's rank from HX_RANK / HX_WORLD_SIZE / HX_DP_STORE, or under HX_SRUN_RANKS from
// Slurm's SLURM_PROCID / SLURM_NTASKS (the store beside the result file, on the shared file system
// Slurm runs need anyway; the node's host name as address); world_size 1 when neither.
RankIdentity rank_identity(const std::string& result_path);

// Whether this worker must launch the ranks (world_size > 1 and it is none of them, nor one of
// srun's).
bool must_launch_ranks(int world_size);

// Runs `argv` (this worker's command line) as `world_size` rank processes and waits for them.
// Rank r > 0 writes its result beside rank 0's (`result_path`.rank<r>); on a failure that file
// becomes result.json. Returns the exit code to exit with, or re-raises the signal a rank died
// of. Prints one line per failed rank to stderr.
int launch_ranks(char** argv, int world_size, const std::string& result_path);

// The result file rank `rank` writes.
std::string rank_result_path(const std::string& result_path, int rank);

// After ranks that srun started have ended (srun stops them all when one fails): the most severe
// failure a rank wrote down (out of memory before an error; a signal leaves no file, and srun's
// exit tells it) becomes result.json; the ranks' files are removed.
void adopt_rank_results(const std::string& result_path, int world_size);

}  // namespace hx
