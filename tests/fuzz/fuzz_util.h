#pragma once
// Helpers of the libFuzzer targets (tests/fuzz): the input as a file where a reader takes a path,
// and the rule every reader of a user's file must keep: malformed input is one documented
// exception whose message names the file; anything else (another exception, a crash, a sanitizer
// report, a hang) is a finding.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <string>
#include <string_view>

namespace hx::fuzz {

// Fuzz targets run in the checkout (relative paths in specs resolve there, as for a user).
inline void enter_source_dir() {
  static const bool entered = ::chdir(HX_SOURCE_DIR) == 0;
  if (!entered) {
    std::fprintf(stderr, "fuzz: cannot enter %s\n", HX_SOURCE_DIR);
    std::abort();
  }
}

// This process's scratch file for inputs (in /dev/shm when there is one: no disk write per
// execution), removed at exit.
class ScratchFile {
 public:
  explicit ScratchFile(const std::string& name)
      : path_(std::string(::access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp") + "/hx_fuzz_" +
              std::to_string(::getpid()) + "_" + name) {}
  ~ScratchFile() { std::remove(path_.c_str()); }
  ScratchFile(const ScratchFile&) = delete;
  ScratchFile& operator=(const ScratchFile&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Writes the input to the scratch file `name` and returns its path.
inline std::string input_file(const uint8_t* data, size_t size, const std::string& name) {
  static const ScratchFile file(name);
  const std::string& path = file.path();
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  out.close();
  if (!out) {
    std::fprintf(stderr, "fuzz: cannot write %s\n", path.c_str());
    std::abort();
  }
  return path;
}

// The message of a rejected input must start with `prefix` (the file, often "FILE:LINE:").
inline void require_prefix(const std::exception& e, const std::string& prefix) {
  if (std::string_view(e.what()).substr(0, prefix.size()) != prefix) {
    std::fprintf(stderr, "fuzz: the error does not start with \"%s\": %s\n", prefix.c_str(),
                 e.what());
    std::abort();
  }
}

// A finding that is not a crash: reported, then aborted so that libFuzzer saves the input.
[[noreturn]] inline void finding(const std::string& what) {
  std::fprintf(stderr, "fuzz: %s\n", what.c_str());
  std::abort();
}

}  // namespace hx::fuzz
