// Byte, text and gzip mutations (fuzz.h). Every choice comes from the caller's
// seeded generator, so a failing mutant is reproduced by its seed and index.
#include <zlib.h>

#include <cstring>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <vector>

#include "fuzz.h"

namespace fuzz {

namespace {

size_t pick(Rng& rng, size_t n) { return n == 0 ? 0 : static_cast<size_t>(rng() % n); }

void put_le(std::string& b, size_t at, uint64_t v, int bytes) {
  for (int i = 0; i < bytes && at + i < b.size(); i++) b[at + i] = static_cast<char>(v >> (8 * i));
}

std::string gzip(const std::string& text) {
  z_stream z{};
  if (deflateInit2(&z, 9, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) throw std::runtime_error("deflateInit2");
  std::string out(deflateBound(&z, text.size()) + 32, '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(text.data()));
  z.avail_in = static_cast<uInt>(text.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  const int rc = deflate(&z, Z_FINISH);
  out.resize(z.total_out);
  deflateEnd(&z);
  if (rc != Z_STREAM_END) throw std::runtime_error("deflate");
  return out;
}

std::string gunzip(const std::string& packed) {
  z_stream z{};
  if (inflateInit2(&z, 15 + 32) != Z_OK) throw std::runtime_error("inflateInit2");
  std::string out;
  char buf[1 << 14];
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(packed.data()));
  z.avail_in = static_cast<uInt>(packed.size());
  int rc = Z_OK;
  while (rc == Z_OK) {
    z.next_out = reinterpret_cast<Bytef*>(buf);
    z.avail_out = sizeof buf;
    rc = inflate(&z, Z_NO_FLUSH);
    out.append(buf, sizeof buf - z.avail_out);
  }
  inflateEnd(&z);
  if (rc != Z_STREAM_END) throw std::runtime_error("the gzip seed does not decompress");
  return out;
}

// Start and length of the n-th run of digits (with a leading '-'), or npos.
std::pair<size_t, size_t> number_at(const std::string& t, size_t n) {
  size_t seen = 0;
  for (size_t i = 0; i < t.size(); i++) {
    if (!std::isdigit(static_cast<unsigned char>(t[i]))) continue;
    size_t start = i > 0 && t[i - 1] == '-' ? i - 1 : i, end = i;
    while (end < t.size() && (std::isdigit(static_cast<unsigned char>(t[end])) || t[end] == '.')) end++;
    if (seen++ == n) return {start, end - start};
    i = end;
  }
  return {std::string::npos, 0};
}

size_t count_numbers(const std::string& t) {
  size_t n = 0;
  while (number_at(t, n).first != std::string::npos) n++;
  return n;
}

std::vector<std::string> lines_of(const std::string& t) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start < t.size()) {
    size_t end = t.find('\n', start);
    if (end == std::string::npos) end = t.size();
    out.push_back(t.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

std::string join_lines(const std::vector<std::string>& lines) {
  std::string out;
  for (const auto& l : lines) out += l + "\n";
  return out;
}

std::string mutate_lines(std::string& text, Rng& rng) {
  auto lines = lines_of(text);
  if (lines.empty()) return mutate_bytes(text, rng);
  const size_t i = pick(rng, lines.size()), j = pick(rng, lines.size());
  std::string what;
  switch (rng() % 3) {
    case 0: lines.erase(lines.begin() + i); what = "delete line " + std::to_string(i + 1); break;
    case 1: lines.insert(lines.begin() + i, lines[j]); what = "repeat line " + std::to_string(j + 1); break;
    default: std::swap(lines[i], lines[j]); what = "swap lines " + std::to_string(i + 1) + ", " + std::to_string(j + 1);
  }
  text = join_lines(lines);
  return what;
}

}  // namespace

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out.flush()) throw std::runtime_error("cannot write " + path);
}

int64_t hostile_int(Rng& rng) {
  static const int64_t values[] = {int64_t{1} << 40, int64_t{1} << 62, INT64_MAX, INT64_MIN, -1, 0, 1,
                                   int64_t{1} << 31, (int64_t{1} << 32) + 1, 1000000007};
  return values[pick(rng, sizeof values / sizeof values[0])];
}

std::string hostile_number(Rng& rng) {
  static const char* values[] = {"1099511627776", "4611686018427387904", "9223372036854775807",
                                 "9223372036854775808", "18446744073709551616", "-1", "0", "-0", "1e308",
                                 "1e-320", "nan", "inf", "-inf", "1.5", "0x10", "4294967297", "99999999999999999999"};
  return values[pick(rng, sizeof values / sizeof values[0])];
}

std::string mutate_bytes(std::string& b, Rng& rng) {
  const size_t at = pick(rng, b.size());
  switch (rng() % 8) {
    case 0: {
      const int n = 1 + static_cast<int>(rng() % 4);
      for (int k = 0; k < n && !b.empty(); k++) b[pick(rng, b.size())] ^= static_cast<char>(1u << (rng() % 8));
      return "flip " + std::to_string(n) + " bits";
    }
    case 1: {
      const char v = rng() % 3 == 0 ? '\0' : rng() % 2 ? '\xff' : static_cast<char>(rng());
      for (size_t k = at; k < std::min(b.size(), at + 1 + pick(rng, 16)); k++) b[k] = v;
      return "set bytes at " + std::to_string(at);
    }
    case 2: b.resize(pick(rng, b.size() + 1)); return "truncate to " + std::to_string(b.size());
    case 3: put_le(b, at, static_cast<uint64_t>(hostile_int(rng)), 8); return "int64 at " + std::to_string(at);
    case 4: put_le(b, at, static_cast<uint64_t>(hostile_int(rng)), 4); return "int32 at " + std::to_string(at);
    case 5: b.erase(at, 1 + pick(rng, 256)); return "delete at " + std::to_string(at);
    case 6: b.insert(at, b.substr(pick(rng, b.size()), 1 + pick(rng, 256))); return "duplicate at " + std::to_string(at);
    default: {
      std::string junk(1 + pick(rng, 64), '\0');
      for (char& c : junk) c = static_cast<char>(rng());
      b.insert(at, junk);
      return "insert junk at " + std::to_string(at);
    }
  }
}

std::string mutate_text(std::string& t, Rng& rng) {
  switch (rng() % 6) {
    case 0: return mutate_bytes(t, rng);
    case 1:
    case 2: {
      const size_t n = count_numbers(t);
      if (n == 0) return mutate_bytes(t, rng);
      const auto [start, len] = number_at(t, pick(rng, n));
      const std::string v = hostile_number(rng);
      t.replace(start, len, v);
      return "number at " + std::to_string(start) + " := " + v;
    }
    case 3: return mutate_lines(t, rng);
    case 4: {
      static const char* bits[] = {"\"", "{", "}", "[", "]", "\\", "\n", "=", "#", ",", ":", "\xc0", "\xed\xa0\x80",
                                   "\r", "\t", "null", "[train]", "{\"text\": 1}"};
      const std::string s = bits[pick(rng, sizeof bits / sizeof bits[0])];
      t.insert(pick(rng, t.size() + 1), s);
      return "insert punctuation";
    }
    default: {
      const std::string open(1000 + pick(rng, 100000), rng() % 2 ? '[' : '{');
      t.insert(pick(rng, t.size() + 1), open);
      return "deep nesting of " + std::to_string(open.size());
    }
  }
}

std::string mutate_gzip(std::string& packed, Rng& rng) {
  if (rng() % 2) return "gzip bytes: " + mutate_bytes(packed, rng);
  std::string text = gunzip(packed);
  const std::string what = mutate_text(text, rng);
  packed = gzip(text);
  return "gzip content: " + what;
}

}  // namespace fuzz
