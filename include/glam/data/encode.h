// `glam-tokenize encode --output-dir`: text sources -> shards + manifest
// (shards.h), split over MPI ranks.
//
// Rank r of R reads part r of every uncompressed input: the documents that
// start in its R-th of the file's bytes (text_input.h, read_document_range).
// A gzip file cannot be split by bytes: the k-th gzip input is read whole by
// rank k % R. The ranks then share the sizes of all documents (8 bytes each),
// so every rank numbers the documents in input order. Document i is held out
// for validation when floor((i+1)*f) > floor(i*f) (f = val_fraction: every
// 1/f-th document). The documents of each split are cut, in order, into shards
// of about shard_bytes of text: train-00000.h5, ..., val-00000.h5, .... Shard j
// (training shards first) is tokenized and written by rank j % ranks; the
// ranks holding its documents send them there. So the
// shards and the manifest depend on the inputs and options only: any number of
// ranks writes the same bytes.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "glam/data/data_comm.h"
#include "glam/data/text_input.h"
#include "glam/data/tokenizer.h"

namespace glam {

struct EncodeOptions {
  std::vector<std::string> inputs;
  InputOptions input;
  std::string out_dir;             // created if missing; gets the shards and manifest.json
  std::string source;              // name of the text source
  double val_fraction = 0.0;       // share of documents held out, in [0, 0.5]
  int64_t shard_bytes = 16 << 20;  // text bytes per shard (a shard ends after the document that reaches it)
  bool overwrite = false;          // replace an existing manifest.json and its shards
  bool progress = false;           // rank 0 shows a progress line on stderr
};

struct EncodeStats {
  int64_t docs = 0, val_docs = 0, tokens = 0, bytes = 0;
  int64_t unk_pieces = 0, unk_bytes = 0;  // <unk> ids written and the bytes of text they replace
  int64_t shards = 0;
  double read_s = 0;             // slowest rank's reading and splitting, sharing the sizes
  std::vector<int64_t> rank_bytes_read;  // [ranks] bytes each rank read from the input files
  double encode_s = 0;           // slowest rank's tokenizing and writing
  double rank_mb_per_s = 0;      // text MB per second of tokenizing per rank (mean over ranks with shards)
};

// Collective over comm. Bad input is a UserError on every rank (the first in
// input order, whichever rank read it, with the message one rank reading
// everything would give); a failure writing one rank's shard is reported by
// that rank and then a UserError on every rank.
EncodeStats encode_shards(const Tokenizer& tok, const EncodeOptions& opt, const DataComm& comm);

}  // namespace glam
