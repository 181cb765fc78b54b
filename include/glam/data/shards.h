// The shards of one text source and their manifest, written by
// `glam-tokenize encode` (one shard per MPI rank's share of the input).
//
// DIR/manifest.json (format "glam-shards", version 1):
//   {"format": "glam-shards", "version": 1, "source": NAME, "tokenizer_hash": HEX,
//    "vocab_size": V, "eod_id": ID, "input_bytes": B, "unk_pieces": U, "unk_bytes": UB,
//    "shards": [{"file": "train-00000.h5", "split": "train", "n_docs": D,
//                "n_tokens": T, "checksum": "HEX"}, ...]}
// Shard files are corpus files (corpus.h) named relative to the manifest's
// directory; "split" is "train" or "val" (the held-out documents). checksum is
// content_checksum (corpus.h) of the shard's tokens and offsets, as 16 hex digits.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "glam/data/corpus.h"

namespace glam {

constexpr const char* kShardsFormat = "glam-shards";
constexpr int64_t kShardsVersion = 1;

struct ShardEntry {
  std::string file;           // relative to the manifest's directory
  std::string split;          // "train" | "val"
  int64_t n_docs = 0, n_tokens = 0;
  uint64_t checksum = 0;
};

struct ShardManifest {
  std::string source, tokenizer_hash;
  int64_t vocab_size = 0, eod_id = 0;
  int64_t input_bytes = 0;    // bytes of text read
  int64_t unk_pieces = 0;     // <unk> ids written: text the model could not spell
  int64_t unk_bytes = 0;      // bytes of text those <unk> pieces stand for
  std::vector<ShardEntry> shards;

  int64_t n_tokens(const std::string& split) const;
};

// Writes the manifest to a temporary name and renames it over `path`.
void write_manifest(const std::string& path, const ShardManifest& manifest);
// Reads and checks a manifest; a UserError names the file and the field.
ShardManifest read_manifest(const std::string& path);
// Paths of the shards of one split, resolved against the manifest's directory.
std::vector<std::string> shard_paths(const std::string& manifest_path, const ShardManifest& m,
                                     const std::string& split);
// Reads the shards of one split as one corpus and checks each against the
// manifest (tokenizer hash, vocabulary, token count, checksum): a truncated,
// damaged or foreign shard is a UserError naming the shard file.
Corpus load_shards(const std::string& manifest_path, const ShardManifest& m,
                   const std::string& split, int64_t expected_vocab);

}  // namespace glam
