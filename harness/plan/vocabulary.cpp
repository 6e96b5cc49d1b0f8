#include "harness/plan/vocabulary.h"

#include <nlohmann/json.hpp>
#include <ostream>
#include <stdexcept>
#include <string>

namespace hx {

void to_json(nlohmann::json& j, Status status) { j = std::string(to_string(status)); }

void from_json(const nlohmann::json& j, Status& status) {
  const auto parsed = parse_status(j.get<std::string>());
  if (!parsed) throw std::invalid_argument("unknown run status \"" + j.get<std::string>() + "\"");
  status = *parsed;
}

void to_json(nlohmann::json& j, Workload workload) { j = std::string(to_string(workload)); }

void from_json(const nlohmann::json& j, Workload& workload) {
  const auto parsed = parse_workload(j.get<std::string>());
  if (!parsed) throw std::invalid_argument("unknown workload \"" + j.get<std::string>() + "\"");
  workload = *parsed;
}

std::ostream& operator<<(std::ostream& out, Status status) { return out << to_string(status); }

std::ostream& operator<<(std::ostream& out, Workload workload) {
  return out << to_string(workload);
}

}  // namespace hx
