#include "harness/plan/fields.h"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <utility>

#include "harness/plan/config_keys.h"

namespace hx {

const Field* find_metric_field(std::string_view name) {
  for (const Field& field : kMetricFields) {
    if (field.name == name) return &field;
  }
  return nullptr;
}

Field metric_field_or_raw(std::string_view name) {
  if (const Field* field = find_metric_field(name)) return *field;
  return Field{name, "", "REAL", name, NumberFormat::kSignificant, 4};
}

std::vector<const Field*> gated_metrics(GateTest test) {
  std::vector<const Field*> out;
  for (const Field& field : kMetricFields) {
    if (field.gate == test) out.push_back(&field);
  }
  return out;
}

const Field& first_metric_of(MetricRole role) {
  for (const Field& field : kMetricFields) {
    if (field.role == role) return field;
  }
  throw std::logic_error("no metric of this role in kMetricFields");
}

int display_decimals(const Field& field, double value) {
  if (field.format == NumberFormat::kFixed) return field.digits;
  if (!std::isfinite(value) || value == 0.0) return field.digits - 1;
  // Enough decimals for `digits` significant ones, and never fewer than zero: a large value keeps
  // all its integer digits rather than turning into 1.23e+04.
  const int magnitude = static_cast<int>(std::floor(std::log10(std::fabs(value))));
  const int decimals = field.digits - 1 - magnitude;
  return decimals < 0 ? 0 : decimals;
}

std::string format_fixed(double value, int decimals) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), "%.*f", decimals, value);
  std::string text = buffer;
  // "-0.000" (a tiny negative rounded away) is noise, not a sign.
  if (text.front() == '-' && text.find_first_not_of("-0.") == std::string::npos) text.erase(0, 1);
  return text;
}

std::string format_full(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  char buffer[64];
  const auto result = std::to_chars(buffer, buffer + sizeof(buffer), value);
  return {buffer, result.ptr};
}

std::string axis_label(std::string_view key) {
  const ConfigKey* config_key = find_config_key(key);
  if (config_key != nullptr && !config_key->label.empty()) return std::string(config_key->label);
  return std::string(key);
}

}  // namespace hx
