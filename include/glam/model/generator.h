// Text generation with a KV cache: incremental decoding (relative bias included),
// greedy, temperature / top-k / top-p sampling, beam search, stop strings; and
// log-likelihood scoring for evaluation. Runs on any mesh: every rank passes the
// same prompts (tensor and expert parallel; the batch is replicated over data),
// tokens are routed to their top-2 experts without capacity drops.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "glam/mesh/mesh.h"
#include "glam/model/model.h"
#include "glam/data/tokenizer.h"

namespace glam {

// Bounds of the options (checked by generate(); eval and generate name them).
constexpr int64_t kMaxBeam = 1024;                    // GLaM used 4; tests search a 200-token vocabulary exhaustively
constexpr int64_t kMaxNewTokens = int64_t{1} << 20;   // tokens generated per prompt

struct SamplingOptions {
  int64_t max_tokens = 64;
  double temperature = 0.0;        // 0 = greedy (argmax)
  int64_t top_k = 0;               // sample among the k most likely (0 = all)
  double top_p = 1.0;              // nucleus: smallest set with probability >= top_p
  int64_t beam = 1;                // beam width (> 1: beam search, deterministic)
  std::vector<std::string> stop;   // stop strings: generation ends at the first one (not included)
  uint64_t seed = 1;
};

struct Generation {
  std::vector<int32_t> tokens;     // generated tokens (prompt excluded, stop string removed)
  std::string text;                // decoded generated text
  double logprob = 0.0;            // sum of log P of the generated tokens
  std::string finish;              // "eod", "stop", "length"
};

// The ranges of the options (beam, max_tokens, temperature, top_k, top_p):
// UserError naming the flag. generate() checks them too.
void check_sampling_options(const SamplingOptions& opt);

class Generator {
 public:
  Generator(Model& model, const Tokenizer& tokenizer, const Mesh& mesh);

  // Continues every prompt. Collective: all ranks pass the same prompts and options.
  // UserError for options out of range, a KV cache larger than this machine's
  // memory, or log-probabilities that are not finite (NaN or Inf weights).
  std::vector<Generation> generate(const std::vector<std::vector<int32_t>>& prompts, const SamplingOptions& opt);

  // log P(token | previous tokens) for every position of ids after the first:
  // result[i] = log P(ids[i+1] | ids[0..i]), from one full forward (no cache).
  // Collective. ids longer than seq_len are scored in windows of seq_len.
  std::vector<double> token_logprobs(const std::vector<int32_t>& ids);

  // Full-recompute greedy decoding, one forward per token (the reference the KV
  // cache is tested against).
  std::vector<int32_t> greedy_recompute(const std::vector<int32_t>& prompt, int64_t max_tokens);

 private:
  Model& model_;
  const Tokenizer& tok_;
  const Mesh& mesh_;
};

}  // namespace glam
