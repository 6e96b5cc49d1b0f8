#include "harness/report/table.h"

namespace hx {
namespace {

void markdown_row(std::ostringstream& out, const std::vector<std::string>& cells) {
  out << "|";
  for (const std::string& cell : cells) {
    out << (cell.empty() ? std::string() : " " + markdown_escape(cell)) << " |";
  }
  out << "\n";
}

}  // namespace

std::string markdown_table(const TextTable& table) {
  std::ostringstream out;
  if (table.header.empty()) return {};
  markdown_row(out, table.header);
  out << "|";
  for (size_t i = 0; i < table.header.size(); ++i) {
    const bool right = i < table.align.size() && table.align[i] == Align::kRight;
    out << (right ? "---:|" : "---|");
  }
  out << "\n";
  for (const std::vector<std::string>& row : table.rows) markdown_row(out, row);
  return out.str();
}

std::string csv_table(const TextTable& table) {
  std::ostringstream out;
  if (!table.header.empty()) csv_line(out, table.header);
  for (const std::vector<std::string>& row : table.rows) csv_line(out, row);
  return out.str();
}

std::string markdown_escape(const std::string& text) {
  std::string out;
  for (const char c : text) {
    if (c == '|') out += '\\';
    out += c;
  }
  return out;
}

std::string csv_quote_field(const std::string& text) {
  if (text.find_first_of(",\"\n\r") == std::string::npos) return text;
  std::string out = "\"";
  for (const char c : text) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

void csv_line(std::ostringstream& out, const std::vector<std::string>& fields) {
  std::vector<std::string> escaped;
  escaped.reserve(fields.size());
  for (const std::string& field : fields) escaped.push_back(csv_quote_field(field));
  out << join(escaped, ",") << "\n";
}

std::string join(const std::vector<std::string>& parts, const std::string& separator) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (i > 0) out += separator;
    out += parts[i];
  }
  return out;
}

}  // namespace hx
