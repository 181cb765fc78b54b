// The corpus as one endless token stream (corpus.h): the shards of a source read
// one after another (the file format is corpus_file.cpp's), and Corpus::rows
// packing that stream into training rows. Document boundaries come from
// /doc_offsets, never from the eod id value.
#include "glam/data/corpus.h"

#include <algorithm>
#include <limits>

#include "glam/base/check.h"

namespace glam {

Corpus::Corpus(const std::string& path, int64_t expected_vocab) : path_(path) {
  append_shard(path, expected_vocab);
  info_ = shards_.front();
}

Corpus::Corpus(const std::vector<std::string>& shard_paths, int64_t expected_vocab) {
  GLAM_REQUIRE(!shard_paths.empty(), "a corpus needs at least one shard file");
  path_ = shard_paths.front();
  for (const auto& p : shard_paths) {
    append_shard(p, expected_vocab);
    const CorpusInfo& first = shards_.front();
    const CorpusInfo& s = shards_.back();
    GLAM_REQUIRE(s.tokenizer_hash == first.tokenizer_hash, "corpus shard '", p,
                 "' was tokenized with another model (tokenizer_hash ", s.tokenizer_hash,
                 ") than '", path_, "' (", first.tokenizer_hash, ")");
    GLAM_REQUIRE(s.vocab_size == first.vocab_size && s.eod_id == first.eod_id, "corpus shard '", p,
                 "' has vocab_size ", s.vocab_size, " and eod_id ", s.eod_id, " but '", path_,
                 "' has ", first.vocab_size, " and ", first.eod_id);
  }
  info_ = shards_.front();
  info_.n_docs = static_cast<int64_t>(doc_offsets_.size()) - 1;
  info_.n_tokens = static_cast<int64_t>(tokens_.size());
}

void Corpus::append_shard(const std::string& path, int64_t expected_vocab) {
  CorpusFile file = read_corpus_file(path, expected_vocab);
  shards_.push_back(file.info);
  const uint64_t base = tokens_.size();
  if (doc_offsets_.empty()) doc_offsets_.push_back(0);
  for (size_t d = 1; d < file.doc_offsets.size(); ++d) doc_offsets_.push_back(base + file.doc_offsets[d]);
  tokens_.insert(tokens_.end(), file.tokens.begin(), file.tokens.end());
}

Batch batch_of_shape(int64_t rows, int64_t seq_len) {
  Batch b;
  b.rows = rows;
  b.seq_len = seq_len;
  b.ids.resize(rows * seq_len);
  b.targets.resize(rows * seq_len);
  b.segments.resize(rows * seq_len);
  return b;
}

Batch Corpus::rows(int64_t first_row, int64_t n_rows, int64_t seq_len) const {
  GLAM_REQUIRE(first_row >= 0 && n_rows >= 0 && seq_len > 0,
               "Corpus::rows: bad arguments first_row=", first_row, " n_rows=", n_rows,
               " seq_len=", seq_len);
  GLAM_REQUIRE(first_row + n_rows <= std::numeric_limits<int64_t>::max() / seq_len,
               "Corpus::rows: row ", first_row + n_rows, " of length ", seq_len,
               " overflows the stream position");
  Batch b = batch_of_shape(n_rows, seq_len);
  for (int64_t r = 0; r < n_rows; ++r) {
    const int64_t k = r * seq_len;
    pack_row(first_row + r, seq_len, &b.ids[k], &b.targets[k], &b.segments[k]);
  }
  return b;
}

std::vector<int32_t> Corpus::document(int64_t d) const {
  GLAM_REQUIRE(d >= 0 && d < info_.n_docs, "document ", d, " is outside [0, ", info_.n_docs, ")");
  return std::vector<int32_t>(tokens_.begin() + doc_offsets_[d], tokens_.begin() + doc_offsets_[d + 1] - 1);
}

void Corpus::pack_row(int64_t row, int64_t seq_len, int32_t* ids, int32_t* targets,
                      int32_t* segments) const {
  GLAM_REQUIRE(row >= 0 && seq_len > 0, "Corpus::pack_row: bad arguments row=", row,
               " seq_len=", seq_len);
  GLAM_REQUIRE(row < std::numeric_limits<int64_t>::max() / seq_len, "Corpus::rows: row ", row + 1,
               " of length ", seq_len, " overflows the stream position");
  const int64_t n = static_cast<int64_t>(tokens_.size());
  const int64_t last_doc = static_cast<int64_t>(doc_offsets_.size()) - 2;
  int64_t pos = (row * seq_len) % n;
  // The document holding pos: the last offset <= pos.
  int64_t doc =
      std::upper_bound(doc_offsets_.begin(), doc_offsets_.end(), static_cast<uint64_t>(pos)) -
      doc_offsets_.begin() - 1;
  int32_t segment = 0;
  for (int64_t j = 0; j < seq_len; ++j) {
    if (j > 0 && static_cast<uint64_t>(pos) == doc_offsets_[doc]) ++segment;
    const bool doc_end = static_cast<uint64_t>(pos + 1) == doc_offsets_[doc + 1];
    const int64_t next = pos + 1 == n ? 0 : pos + 1;
    ids[j] = static_cast<int32_t>(tokens_[pos]);
    targets[j] = doc_end ? -1 : static_cast<int32_t>(tokens_[next]);
    segments[j] = segment;
    if (doc_end) doc = doc == last_doc ? 0 : doc + 1;
    pos = next;
  }
}

}  // namespace glam
