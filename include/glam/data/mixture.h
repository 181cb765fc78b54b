// A training mixture: weighted text sources, each a stream of packed rows
// (corpus.h), and the rule that says which source and which of its rows fill
// global row g of the training stream (docs/DATA.md).
//
// `[data] corpus` names one of
//   FILE.h5         one corpus file: a one-source mixture (weight 1, no held-out split)
//   DIR/manifest.json  the shards of one source (shards.h): a one-source mixture
//   FILE (any other name)  a mixture file, one source per line:
//                   # name    weight  path (relative to this file: .h5 or manifest.json)
//                   fortunes  0.25    fortunes/manifest.json
// Weights are positive and need not sum to 1 (they are normalised).
//
// Row choice: global row g = step * batch_rows + row draws u = U[0,1) from a hash
// of (seed, g) and takes the source whose slice of the cumulative normalised
// weights holds u. Within a source rows are taken in order: the k-th row drawn
// from source s is row k of its packed stream (wrapping at the end: an epoch).
// So row g depends on the seed, the mixture and the shards only, and a
// one-source mixture reads row g of its stream, as a plain corpus always did.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "glam/data/corpus.h"

namespace glam {

struct MixtureSource {
  std::string name;
  double weight = 1.0;                  // normalised: the weights sum to 1
  std::string path;                     // .h5 or manifest.json, as resolved
  std::shared_ptr<const Corpus> train;  // the training rows
  std::shared_ptr<const Corpus> val;    // held-out rows; null when the source has none
};

class Mixture {
 public:
  // Reads a corpus, a shard manifest or a mixture file (see above). Every token
  // id must be < expected_vocab (when > 0) and every source must have the same
  // tokenizer hash. Throws UserError naming the file on any problem.
  static Mixture open(const std::string& path, int64_t expected_vocab = 0);
  // A mixture of sources already loaded (tests).
  explicit Mixture(std::vector<MixtureSource> sources);

  size_t size() const { return sources_.size(); }
  const MixtureSource& source(size_t s) const { return sources_[s]; }
  // tokenizer_hash, vocab_size and eod_id shared by every source; n_docs and
  // n_tokens are the training totals.
  const CorpusInfo& info() const { return info_; }
  // The source of global row g under `seed` (see above).
  size_t source_of_row(uint64_t seed, int64_t global_row) const;

 private:
  std::vector<MixtureSource> sources_;
  std::vector<double> cdf_;  // cumulative normalised weights; the last is exactly 1
  CorpusInfo info_;
};

// U[0,1) from (seed, index): 53 bits of a splitmix64 hash.
double uniform_hash(uint64_t seed, uint64_t index);

}  // namespace glam
