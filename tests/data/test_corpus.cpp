// Tests of the corpus file (include/glam/data/corpus.h): write_corpus -> Corpus round
// trip, packing of rows (shifted targets, -1 at document ends, segment ids,
// wraparound, determinism) and the UserErrors of the reader and the writer.
// Files go to ./corpus/ under the working directory CTest gives (the build tree).
#include <hdf5.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>

#include "glam/base/check.h"
#include "glam/data/corpus.h"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;

namespace {

// A fresh path under ./corpus/ (any previous file of that name is removed).
std::string temp_path(const std::string& name) {
  fs::create_directories("corpus");
  const std::string path = "corpus/" + name;
  fs::remove(path);
  fs::remove(path + ".tmp");
  return path;
}

glam::CorpusInfo make_info(int64_t vocab, int64_t eod) {
  glam::CorpusInfo info;
  info.source = "unit-test";
  info.tokenizer_hash = "0123456789abcdef";
  info.vocab_size = vocab;
  info.eod_id = eod;
  return info;
}

// Four documents; with eod = 1 appended the stream is
//   position: 0 1 2 3 | 4 5 | 6 | 7 8  9
//   token:    5 6 7 1 | 8 1 | 1 | 9 10 1
const std::vector<std::vector<int32_t>> kDocs = {{5, 6, 7}, {8}, {}, {9, 10}};

std::string write_small(const std::string& name) {
  const std::string path = temp_path(name);
  glam::write_corpus(path, kDocs, make_info(16, 1), false);
  return path;
}

// The message of the UserError f throws, or "no error".
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const glam::UserError& e) {
    return e.what();
  }
  return "no error";
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

// Opens a corpus file read-write to damage it on purpose.
void edit_file(const std::string& path, const std::function<void(hid_t)>& edit) {
  hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  REQUIRE(file >= 0);
  edit(file);
  H5Fclose(file);
}

void replace_string_attr(hid_t file, const char* name, const std::string& value) {
  H5Adelete(file, name);
  hid_t type = H5Tcopy(H5T_C_S1);
  H5Tset_size(type, value.size() + 1);
  hid_t space = H5Screate(H5S_SCALAR);
  hid_t attr = H5Acreate2(file, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
  H5Awrite(attr, type, value.c_str());
  H5Aclose(attr);
  H5Sclose(space);
  H5Tclose(type);
}

// Reference packing, written independently of Corpus::rows: position by
// position with a linear search for the document.
struct Expected {
  std::vector<int32_t> ids, targets, segments;
};
Expected reference_row(const std::vector<uint32_t>& tok, const std::vector<uint64_t>& off,
                       int64_t row, int64_t seq_len) {
  const int64_t n = static_cast<int64_t>(tok.size());
  auto doc_of = [&](int64_t p) {
    size_t d = 0;
    while (off[d + 1] <= static_cast<uint64_t>(p)) ++d;
    return d;
  };
  Expected e;
  int32_t segment = 0;
  for (int64_t j = 0; j < seq_len; ++j) {
    const int64_t p = (row * seq_len + j) % n;
    if (j > 0 && off[doc_of(p)] == static_cast<uint64_t>(p)) ++segment;
    const bool doc_end = off[doc_of(p) + 1] == static_cast<uint64_t>(p + 1);
    e.ids.push_back(static_cast<int32_t>(tok[p]));
    e.targets.push_back(doc_end ? -1 : static_cast<int32_t>(tok[(p + 1) % n]));
    e.segments.push_back(segment);
  }
  return e;
}

std::vector<int32_t> slice(const std::vector<int32_t>& v, int64_t row, int64_t seq_len) {
  return std::vector<int32_t>(v.begin() + row * seq_len, v.begin() + (row + 1) * seq_len);
}

}  // namespace

TEST_CASE("write_corpus then Corpus round-trips tokens, offsets and attributes", "[corpus]") {
  const std::string path = write_small("roundtrip.h5");
  CHECK_FALSE(fs::exists(path + ".tmp"));
  const glam::Corpus corpus(path, 16);
  const auto& info = corpus.info();
  CHECK(info.source == "unit-test");
  CHECK(info.tokenizer_hash == "0123456789abcdef");
  CHECK(info.vocab_size == 16);
  CHECK(info.eod_id == 1);
  CHECK(info.n_docs == 4);
  CHECK(info.n_tokens == 10);

  const auto b = corpus.rows(0, 1, 10);
  CHECK(b.ids == std::vector<int32_t>{5, 6, 7, 1, 8, 1, 1, 9, 10, 1});
  CHECK(b.segments == std::vector<int32_t>{0, 0, 0, 0, 1, 1, 2, 3, 3, 3});
}

TEST_CASE("Corpus reads variable-length UTF-8 string attributes (as h5py writes them)",
          "[corpus]") {
  const std::string path = write_small("vlen_source.h5");
  edit_file(path, [](hid_t f) {
    H5Adelete(f, "source");
    hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, H5T_VARIABLE);
    H5Tset_cset(type, H5T_CSET_UTF8);
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t attr = H5Acreate2(f, "source", type, space, H5P_DEFAULT, H5P_DEFAULT);
    const char* value = "na\xc3\xafve source";
    H5Awrite(attr, type, &value);
    H5Aclose(attr);
    H5Sclose(space);
    H5Tclose(type);
  });
  CHECK(glam::Corpus(path).info().source == "na\xc3\xafve source");
}

TEST_CASE("rows shift targets, end documents with -1, count segments and wrap", "[corpus][rows]") {
  const glam::Corpus corpus(write_small("rows.h5"));
  const auto b = corpus.rows(0, 4, 4);
  REQUIRE(b.rows == 4);
  REQUIRE(b.seq_len == 4);
  REQUIRE(b.n_tokens() == 16);
  REQUIRE(b.ids.size() == 16);
  REQUIRE(b.targets.size() == 16);
  REQUIRE(b.segments.size() == 16);

  SECTION("row 0: one document, target -1 on its eod") {
    CHECK(slice(b.ids, 0, 4) == std::vector<int32_t>{5, 6, 7, 1});
    CHECK(slice(b.targets, 0, 4) == std::vector<int32_t>{6, 7, 1, -1});
    CHECK(slice(b.segments, 0, 4) == std::vector<int32_t>{0, 0, 0, 0});
  }
  SECTION("row 1: three documents start inside the row") {
    CHECK(slice(b.ids, 1, 4) == std::vector<int32_t>{8, 1, 1, 9});
    CHECK(slice(b.targets, 1, 4) == std::vector<int32_t>{1, -1, -1, 10});
    CHECK(slice(b.segments, 1, 4) == std::vector<int32_t>{0, 0, 1, 2});
  }
  SECTION("row 2 wraps around the corpus end into document 0") {
    CHECK(slice(b.ids, 2, 4) == std::vector<int32_t>{10, 1, 5, 6});
    CHECK(slice(b.targets, 2, 4) == std::vector<int32_t>{1, -1, 6, 7});
    CHECK(slice(b.segments, 2, 4) == std::vector<int32_t>{0, 0, 1, 1});
  }
  SECTION("row 3 starts inside document 0 after the wrap") {
    CHECK(slice(b.ids, 3, 4) == std::vector<int32_t>{7, 1, 8, 1});
    CHECK(slice(b.targets, 3, 4) == std::vector<int32_t>{1, -1, 1, -1});
    CHECK(slice(b.segments, 3, 4) == std::vector<int32_t>{0, 0, 1, 1});
  }
}

TEST_CASE("rows matches a position-by-position reference for many shapes", "[corpus][rows]") {
  const glam::Corpus corpus(write_small("reference.h5"));
  const std::vector<uint32_t> tok = {5, 6, 7, 1, 8, 1, 1, 9, 10, 1};
  const std::vector<uint64_t> off = {0, 4, 6, 7, 10};
  for (int64_t seq_len : {1, 2, 3, 7, 10, 11, 25}) {
    const auto b = corpus.rows(3, 5, seq_len);
    for (int64_t r = 0; r < 5; ++r) {
      INFO("seq_len " << seq_len << " row " << 3 + r);
      const auto e = reference_row(tok, off, 3 + r, seq_len);
      CHECK(slice(b.ids, r, seq_len) == e.ids);
      CHECK(slice(b.targets, r, seq_len) == e.targets);
      CHECK(slice(b.segments, r, seq_len) == e.segments);
    }
  }
}

TEST_CASE("rows depend only on (first_row, n_rows, seq_len)", "[corpus][rows]") {
  const std::string path = write_small("determinism.h5");
  const glam::Corpus a(path), b(path);
  const auto all = a.rows(0, 6, 3);
  const auto again = b.rows(0, 6, 3);
  CHECK(all.ids == again.ids);
  CHECK(all.targets == again.targets);
  CHECK(all.segments == again.segments);
  const auto part = a.rows(4, 2, 3);  // rows 4 and 5 asked for alone
  CHECK(part.ids == std::vector<int32_t>(all.ids.begin() + 12, all.ids.end()));
  CHECK(part.targets == std::vector<int32_t>(all.targets.begin() + 12, all.targets.end()));
  CHECK(part.segments == std::vector<int32_t>(all.segments.begin() + 12, all.segments.end()));
  const auto far = a.rows(1000001, 1, 3);  // row far past the end: plain modular position
  CHECK(far.ids == slice(a.rows(1, 1, 3).ids, 0, 3));  // 1000001*3 = 3 (mod 10)
}

TEST_CASE("a row longer than the corpus wraps more than once", "[corpus][rows]") {
  const glam::Corpus corpus(write_small("long_row.h5"));
  const auto b = corpus.rows(0, 1, 21);
  CHECK(slice(b.ids, 0, 21) ==
        std::vector<int32_t>{5, 6, 7, 1, 8, 1, 1, 9, 10, 1, 5, 6, 7, 1, 8, 1, 1, 9, 10, 1, 5});
  CHECK(b.segments.back() == 8);  // documents 0..3, then 0..3 again, then 0
  CHECK(b.targets[9] == -1);
  CHECK(b.targets[10] == 6);
}

TEST_CASE("Corpus rejects missing, foreign and damaged files, naming them", "[corpus][errors]") {
  SECTION("missing file") {
    const std::string path = temp_path("does-not-exist.h5");
    CHECK_THAT(error_of([&] { glam::Corpus c(path); }),
               Contains(path) && Contains("does not exist"));
  }
  SECTION("not an HDF5 file") {
    const std::string path = temp_path("garbage.h5");
    write_bytes(path, std::string(4096, '\x5a') + "this is not HDF5");
    CHECK_THAT(error_of([&] { glam::Corpus c(path); }),
               Contains(path) && Contains("not an HDF5 file"));
  }
  SECTION("truncated HDF5 file") {
    const std::string good = write_small("whole.h5");
    const std::string path = temp_path("truncated.h5");
    const std::string bytes = read_bytes(good);
    write_bytes(path, bytes.substr(0, bytes.size() / 2));
    CHECK_THAT(error_of([&] { glam::Corpus c(path); }),
               Contains(path) && Contains("truncated or corrupt"));
  }
  SECTION("ids beyond the expected vocabulary") {
    const std::string path = write_small("big_ids.h5");
    CHECK_NOTHROW(glam::Corpus(path, 11));
    CHECK_THAT(error_of([&] { glam::Corpus c(path, 10); }),
               Contains(path) && Contains("token id 10 at position 8") &&
                   Contains("expected vocabulary size 10"));
  }
  SECTION("missing attribute") {
    const std::string path = write_small("no_eod.h5");
    edit_file(path, [](hid_t f) { H5Adelete(f, "eod_id"); });
    CHECK_THAT(error_of([&] { glam::Corpus c(path); }),
               Contains(path) && Contains("attribute 'eod_id' is missing"));
  }
  SECTION("missing dataset") {
    const std::string path = write_small("no_offsets.h5");
    edit_file(path, [](hid_t f) { H5Ldelete(f, "doc_offsets", H5P_DEFAULT); });
    CHECK_THAT(error_of([&] { glam::Corpus c(path); }),
               Contains(path) && Contains("dataset /doc_offsets is missing"));
  }
  SECTION("wrong format string") {
    const std::string path = write_small("wrong_format.h5");
    edit_file(path, [](hid_t f) { replace_string_attr(f, "format", "something-else"); });
    CHECK_THAT(error_of([&] { glam::Corpus c(path); }),
               Contains(path) && Contains("format is 'something-else'"));
  }
  SECTION("wrong version") {
    const std::string path = write_small("wrong_version.h5");
    edit_file(path, [](hid_t f) {
      hid_t attr = H5Aopen(f, "version", H5P_DEFAULT);
      const int64_t v = 2;
      H5Awrite(attr, H5T_NATIVE_INT64, &v);
      H5Aclose(attr);
    });
    CHECK_THAT(error_of([&] { glam::Corpus c(path); }),
               Contains(path) && Contains("version 2 is not supported"));
  }
  SECTION("offsets not increasing") {
    const std::string path = write_small("bad_offsets.h5");
    edit_file(path, [](hid_t f) {
      hid_t d = H5Dopen2(f, "doc_offsets", H5P_DEFAULT);
      const uint64_t off[5] = {0, 6, 4, 7, 10};
      H5Dwrite(d, H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, off);
      H5Dclose(d);
    });
    CHECK_THAT(error_of([&] { glam::Corpus c(path); }),
               Contains(path) && Contains("not strictly increasing at document 1"));
  }
  SECTION("offsets not ending at n_tokens") {
    const std::string path = write_small("short_offsets.h5");
    edit_file(path, [](hid_t f) {
      hid_t d = H5Dopen2(f, "doc_offsets", H5P_DEFAULT);
      const uint64_t off[5] = {0, 4, 6, 7, 9};
      H5Dwrite(d, H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, off);
      H5Dclose(d);
    });
    CHECK_THAT(error_of([&] { glam::Corpus c(path); }),
               Contains(path) && Contains("/doc_offsets ends at 9 but /tokens holds 10"));
  }
}

TEST_CASE("write_corpus refuses to overwrite and checks its input", "[corpus][errors]") {
  const std::string path = write_small("existing.h5");
  SECTION("existing file without overwrite") {
    CHECK_THAT(error_of([&] { glam::write_corpus(path, {{3}}, make_info(16, 1), false); }),
               Contains(path) && Contains("already exists"));
    CHECK(glam::Corpus(path).info().n_docs == 4);  // untouched
  }
  SECTION("existing file with overwrite is replaced atomically") {
    glam::write_corpus(path, {{3}}, make_info(16, 1), true);
    CHECK(glam::Corpus(path).info().n_tokens == 2);
    CHECK_FALSE(fs::exists(path + ".tmp"));
  }
  SECTION("id outside the vocabulary") {
    const std::string fresh = temp_path("bad_id.h5");
    CHECK_THAT(error_of([&] {
                 glam::write_corpus(fresh, {{3}, {16}}, make_info(16, 1), false);
               }),
               Contains(fresh) && Contains("document 1 holds token id 16"));
    CHECK_FALSE(fs::exists(fresh));
  }
  SECTION("no documents") {
    const std::string fresh = temp_path("empty.h5");
    CHECK_THAT(error_of([&] { glam::write_corpus(fresh, {}, make_info(16, 1), false); }),
               Contains(fresh) && Contains("no documents"));
  }
  SECTION("directory that does not exist") {
    const std::string fresh = "corpus/no-such-dir/x.h5";
    CHECK_THAT(error_of([&] { glam::write_corpus(fresh, {{3}}, make_info(16, 1), false); }),
               Contains("corpus/no-such-dir/x.h5.tmp") && Contains("cannot create"));
  }
}
