// The tokenized corpus in HDF5, written by `glam-tokenize encode` and read by
// training as packed rows.
//
// File layout (format "glam-corpus", version 1):
//   /tokens        uint32 [n_tokens]      token ids of all documents, each document
//                                         ends with the end-of-document id
//   /doc_offsets   uint64 [n_docs + 1]    document d is tokens[doc_offsets[d], doc_offsets[d+1])
//   attributes on "/": format = "glam-corpus", version = 1, source (name of the
//   text source), tokenizer_hash (hex string identifying the SentencePiece model),
//   vocab_size (int64), eod_id (int64), n_docs, n_tokens (int64)
// A shard of a source written by `glam-tokenize encode` is such a file; the
// shards of one source and their checksums are listed in a manifest (shards.h),
// and a mixture of weighted sources is read by mixture.h.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "glam/data/batch.h"

namespace glam {

struct CorpusInfo {
  std::string source, tokenizer_hash;
  int64_t vocab_size = 0, eod_id = 0, n_docs = 0, n_tokens = 0;
  uint64_t checksum = 0;  // content_checksum of /tokens and /doc_offsets (not stored in the file)
};

// FNV-1a 64 over the little-endian bytes of the token ids, then of the document
// offsets: what a shard manifest records to detect a damaged or swapped shard.
uint64_t content_checksum(const std::vector<uint32_t>& tokens, const std::vector<uint64_t>& offsets);

class Corpus {
 public:
  // Opens and validates the file. Throws UserError naming the file when it is
  // missing, not HDF5, lacks a dataset or attribute, has inconsistent offsets, or
  // holds ids >= expected_vocab (when expected_vocab > 0).
  explicit Corpus(const std::string& path, int64_t expected_vocab = 0);
  // The shards of one source read as one stream, in the order given. Every shard
  // must have the same tokenizer_hash, vocab_size and eod_id (else a UserError
  // naming the shard). info() then describes the whole: n_docs and n_tokens are
  // the totals, checksum that of the first shard.
  Corpus(const std::vector<std::string>& shard_paths, int64_t expected_vocab);
  const CorpusInfo& info() const { return info_; }
  // info() of each shard read, in order (one entry for a single file).
  const std::vector<CorpusInfo>& shard_infos() const { return shards_; }

  // Rows [first_row, first_row + n_rows) of the endless packed stream: row r covers
  // stream positions [r*S, r*S + S] (S+1 tokens: ids and shifted targets), wrapping
  // around the corpus. Deterministic in (first_row, n_rows, seq_len) only.
  // The target of the last token of a document (the eod id) is -1: no loss across
  // a document boundary. Segment ids restart at 0 in every row.
  Batch rows(int64_t first_row, int64_t n_rows, int64_t seq_len) const;
  // The token ids of document d, without its end-of-document id.
  std::vector<int32_t> document(int64_t d) const;
  // Row `row` of that stream written to ids, targets, segments [seq_len] each.
  void pack_row(int64_t row, int64_t seq_len, int32_t* ids, int32_t* targets,
                int32_t* segments) const;

 private:
  void append_shard(const std::string& path, int64_t expected_vocab);

  std::string path_;
  CorpusInfo info_;
  std::vector<CorpusInfo> shards_;
  std::vector<uint32_t> tokens_;     // the whole token stream (demo-sized corpora)
  std::vector<uint64_t> doc_offsets_;
};

// B rows of S positions, sized (values unset) for Corpus::pack_row to fill.
Batch batch_of_shape(int64_t rows, int64_t seq_len);

// One corpus file read whole and validated (the file format, corpus_file.cpp):
// throws UserError naming the file when it is missing, not HDF5, lacks a dataset
// or attribute, has inconsistent offsets, or holds ids >= its vocab_size or
// >= expected_vocab (when expected_vocab > 0). info.checksum is filled in.
struct CorpusFile {
  CorpusInfo info;
  std::vector<uint32_t> tokens;
  std::vector<uint64_t> doc_offsets;
};
CorpusFile read_corpus_file(const std::string& path, int64_t expected_vocab);

// Writes a corpus file from documents already tokenized (each without eod; the
// writer appends eod_id). Refuses to overwrite an existing file unless overwrite.
// The file holds no time stamps: the same documents and info give the same bytes.
// Returns the info written (n_docs, n_tokens and checksum filled in).
CorpusInfo write_corpus(const std::string& path, const std::vector<std::vector<int32_t>>& docs,
                  const CorpusInfo& info, bool overwrite);

}  // namespace glam
