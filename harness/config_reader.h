#pragma once
// Reads a run's config keys with defaults, the same way in the worker (which runs it), the
// estimate and the parent (which predict and prepare it): docs/worker-protocol.md lists the keys
// and their defaults.
#include <nlohmann/json.hpp>
#include <string>

namespace hx {

struct ConfigReader {
  const nlohmann::json& j;
  template <typename T>
  T get(const char* key, T fallback) const {
    return j.contains(key) ? j.at(key).get<T>() : fallback;
  }
  // off | on, or a YAML boolean.
  bool on(const char* key, bool fallback) const {
    if (!j.contains(key)) return fallback;
    const auto& v = j.at(key);
    if (v.is_boolean()) return v.get<bool>();
    return v.get<std::string>() == "on";
  }
};

}  // namespace hx
