// One batch of packed training rows: what the data module produces (corpus.h,
// loader.h) and the model consumes (model.h), so neither depends on the other.
#pragma once
#include <cstdint>
#include <vector>

namespace glam {

// B rows of S positions.
struct Batch {
  int64_t rows = 0, seq_len = 0;   // B, S
  std::vector<int32_t> ids;        // [B, S] input token ids
  std::vector<int32_t> targets;    // [B, S] next token, or -1 where no loss is taken
  std::vector<int32_t> segments;   // [B, S] document index within the row (0, 1, 2, ...);
                                   // a token attends only to earlier tokens of its segment
  int64_t n_tokens() const { return rows * seq_len; }
};

}  // namespace glam
