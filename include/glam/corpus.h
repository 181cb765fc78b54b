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
// A later issue adds several sources and a manifest; the per-file layout stays.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace glam {

// One batch of packed training rows: B rows of S positions.
struct Batch {
  int64_t rows = 0, seq_len = 0;   // B, S
  std::vector<int32_t> ids;        // [B, S] input token ids
  std::vector<int32_t> targets;    // [B, S] next token, or -1 where no loss is taken
  std::vector<int32_t> segments;   // [B, S] document index within the row (0, 1, 2, ...);
                                   // a token attends only to earlier tokens of its segment
  int64_t n_tokens() const { return rows * seq_len; }
};

struct CorpusInfo {
  std::string source, tokenizer_hash;
  int64_t vocab_size = 0, eod_id = 0, n_docs = 0, n_tokens = 0;
};

class Corpus {
 public:
  // Opens and validates the file. Throws UserError naming the file when it is
  // missing, not HDF5, lacks a dataset or attribute, has inconsistent offsets, or
  // holds ids >= expected_vocab (when expected_vocab > 0).
  explicit Corpus(const std::string& path, int64_t expected_vocab = 0);
  const CorpusInfo& info() const { return info_; }

  // Rows [first_row, first_row + n_rows) of the endless packed stream: row r covers
  // stream positions [r*S, r*S + S] (S+1 tokens: ids and shifted targets), wrapping
  // around the corpus. Deterministic in (first_row, n_rows, seq_len) only.
  // The target of the last token of a document (the eod id) is -1: no loss across
  // a document boundary. Segment ids restart at 0 in every row.
  Batch rows(int64_t first_row, int64_t n_rows, int64_t seq_len) const;

 private:
  std::string path_;
  CorpusInfo info_;
  std::vector<uint32_t> tokens_;     // the whole token stream (demo-sized corpora)
  std::vector<uint64_t> doc_offsets_;
};

// Writes a corpus file from documents already tokenized (each without eod; the
// writer appends eod_id). Refuses to overwrite an existing file unless overwrite.
void write_corpus(const std::string& path, const std::vector<std::vector<int32_t>>& docs,
                  const CorpusInfo& info, bool overwrite);

}  // namespace glam
