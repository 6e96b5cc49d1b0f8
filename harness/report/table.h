#pragma once
// The one table model and its printers: report, compare, gate and estimate fill a TextTable with
// cell texts and print it with the printer of the format asked for, so that every Markdown table
// (and every CSV record) of the tool is written by one function.
#include <sstream>
#include <string>
#include <vector>

namespace hx {

enum class Align { kLeft, kRight };

struct TextTable {
  std::vector<std::string> header;             // column titles; Markdown needs one
  std::vector<std::vector<std::string>> rows;  // cell texts, as many as the header's (or fewer)
  std::vector<Align> align;  // per column: Markdown's `---` or `---:`; missing ones are left
};

// `| a | b |` lines: the header, the `|---|` separator, the rows; `|` in a cell escaped, an
// empty cell as `| |`. Nothing for a table without a header.
std::string markdown_table(const TextTable& table);

// The header (when it has one) and the rows as CSV records (csv_line).
std::string csv_table(const TextTable& table);

// `|` escaped for a Markdown table cell.
std::string markdown_escape(const std::string& text);

// RFC 4180: quoted (with "" for a quote) when it holds a comma, quote or line break.
std::string csv_quote_field(const std::string& text);

// One CSV record of `fields`, quoted as needed, ending in a newline.
void csv_line(std::ostringstream& out, const std::vector<std::string>& fields);

// parts[0] + separator + parts[1] + ...
std::string join(const std::vector<std::string>& parts, const std::string& separator);

}  // namespace hx
