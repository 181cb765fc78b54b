// One-line JSON records (include/glam/io/json_line.h).
#include "glam/io/json_line.h"

#include <cmath>
#include <sstream>

namespace glam {

namespace {

using nlohmann::ordered_json;

// A string as JSON; invalid UTF-8 (a file name, say) becomes U+FFFD instead of throwing.
std::string quoted(const std::string& s) {
  return ordered_json(s).dump(-1, ' ', false, ordered_json::error_handler_t::replace);
}

std::string number(double v, int precision) {
  if (!std::isfinite(v)) return "null";
  std::ostringstream os;
  os.imbue(std::locale::classic());
  os.precision(precision);
  os << v;
  return os.str();
}

void append(std::string& out, const ordered_json& v, int precision) {
  switch (v.type()) {
    case ordered_json::value_t::object: {
      out += '{';
      const char* sep = "";
      for (const auto& item : v.items()) {
        out += sep + quoted(item.key()) + ": ";
        append(out, item.value(), precision);
        sep = ", ";
      }
      out += '}';
      return;
    }
    case ordered_json::value_t::array: {
      out += '[';
      for (size_t i = 0; i < v.size(); i++) {
        if (i) out += ", ";
        append(out, v[i], precision);
      }
      out += ']';
      return;
    }
    case ordered_json::value_t::number_float:
      out += number(v.get<double>(), precision);
      return;
    case ordered_json::value_t::string:
      out += quoted(v.get_ref<const std::string&>());
      return;
    default:  // integers, booleans, null
      out += v.dump();
  }
}

}  // namespace

std::string json_line(const ordered_json& value, int precision) {
  std::string out;
  append(out, value, precision);
  return out;
}

}  // namespace glam
