// Scores: answer normalisation, exact match and token F1 (generative tasks), the
// log-likelihood of a continuation (multiple choice), and the loss of a token
// stream (perplexity). The model runs with inference routing (every token reaches
// its top-2 experts, no capacity drops), so a row's score never depends on the
// other rows of its batch; requests are split over the data axis and the results
// summed over it (each entry is non-zero on exactly one data rank, so the sum is exact).
#include <algorithm>
#include <cctype>
#include <map>
#include <sstream>

#include "glam/base/check.h"
#include "glam/eval/eval.h"

namespace glam {

// ---- generative: normalisation, exact match, F1 --------------------------------------

std::string normalize_answer(const std::string& text) {
  std::string s;
  for (unsigned char c : text) {
    if (c < 128 && std::ispunct(c)) continue;
    s += static_cast<char>(c < 128 ? std::tolower(c) : c);
  }
  std::istringstream words(s);
  std::string out;
  for (std::string w; words >> w;) {
    if (w == "a" || w == "an" || w == "the") continue;
    out += (out.empty() ? "" : " ") + w;
  }
  return out;
}

bool exact_match(const std::string& prediction, const std::string& answer) {
  return normalize_answer(prediction) == normalize_answer(answer);
}

double token_f1(const std::string& prediction, const std::string& answer) {
  auto words = [](const std::string& s) {
    std::istringstream in(normalize_answer(s));
    std::vector<std::string> w;
    for (std::string x; in >> x;) w.push_back(x);
    return w;
  };
  const std::vector<std::string> p = words(prediction), a = words(answer);
  if (p.empty() || a.empty()) return p.empty() && a.empty() ? 1.0 : 0.0;
  std::map<std::string, int64_t> left;  // the answer's words not yet matched
  for (const std::string& w : a) left[w]++;
  int64_t same = 0;
  for (const std::string& w : p)
    if (left[w] > 0) { left[w]--; same++; }
  if (same == 0) return 0.0;
  const double precision = static_cast<double>(same) / p.size(), recall = static_cast<double>(same) / a.size();
  return 2.0 * precision * recall / (precision + recall);
}

AnswerScore best_answer_score(const std::string& prediction, const std::vector<std::string>& answers) {
  AnswerScore best;
  for (const std::string& a : answers) {
    best.em = std::max(best.em, exact_match(prediction, a) ? 1.0 : 0.0);
    best.f1 = std::max(best.f1, token_f1(prediction, a));
  }
  return best;
}

// ---- multiple choice: log P(continuation | context) -----------------------------------

namespace {

// A batch of rows padded to the longest; a data rank with nothing left runs one
// padding token so that every rank makes the same collective calls.
Batch pad_rows(const std::vector<std::vector<int32_t>>& ids, const std::vector<std::vector<int32_t>>& targets,
               int32_t pad_id) {
  Batch b;
  b.rows = std::max<int64_t>(1, static_cast<int64_t>(ids.size()));
  b.seq_len = 1;
  for (const auto& r : ids) b.seq_len = std::max<int64_t>(b.seq_len, static_cast<int64_t>(r.size()));
  b.ids.assign(b.rows * b.seq_len, pad_id);
  b.targets.assign(b.rows * b.seq_len, -1);
  b.segments.assign(b.rows * b.seq_len, 0);
  for (size_t r = 0; r < ids.size(); r++) {
    std::copy(ids[r].begin(), ids[r].end(), b.ids.begin() + r * b.seq_len);
    std::copy(targets[r].begin(), targets[r].end(), b.targets.begin() + r * b.seq_len);
  }
  return b;
}

}  // namespace

std::vector<Continuation> score_continuations(Model& model, const Mesh& mesh, const std::vector<ScoreRequest>& requests,
                                              int32_t pad_id, int64_t rows) {
  const int64_t S = model.config().seq_len, N = static_cast<int64_t>(requests.size());
  for (const ScoreRequest& q : requests) {
    GLAM_REQUIRE(!q.context.empty(), "a scored continuation needs a context of at least one token");
    GLAM_REQUIRE(!q.continuation.empty() && static_cast<int64_t>(q.continuation.size()) <= S,
                 "a choice of ", q.continuation.size(), " tokens does not fit the model's seq_len ", S);
  }
  std::vector<double> lp(N, 0.0);  // [N] summed over the data axis at the end
  const int64_t per_call = rows * mesh.data_size;
  for (int64_t first = 0; first < N; first += per_call) {
    const int64_t lo = std::min(N, first + mesh.data_rank * rows), hi = std::min(N, lo + rows);
    std::vector<std::vector<int32_t>> ids, targets;
    for (int64_t i = lo; i < hi; i++) {
      const ScoreRequest& q = requests[i];
      std::vector<int32_t> all = q.context;
      all.insert(all.end(), q.continuation.begin(), q.continuation.end());
      // the last S+1 tokens: S inputs, S targets; only the continuation's are scored
      const int64_t keep = std::min<int64_t>(S + 1, static_cast<int64_t>(all.size()));
      const std::vector<int32_t> w(all.end() - keep, all.end());
      const int64_t n = keep - 1, first_scored = keep - static_cast<int64_t>(q.continuation.size()) - 1;
      ids.emplace_back(w.begin(), w.end() - 1);
      targets.emplace_back(n, -1);
      for (int64_t j = first_scored; j < n; j++) targets.back()[j] = w[j + 1];
    }
    const Batch b = pad_rows(ids, targets, pad_id);
    model.forward(b, /*no_drop=*/true);
    const std::vector<double> t = model.target_logprobs();  // [rows * seq_len]
    for (int64_t i = lo; i < hi; i++)
      for (int64_t j = 0; j < b.seq_len; j++)
        if (b.targets[(i - lo) * b.seq_len + j] >= 0) lp[i] += t[(i - lo) * b.seq_len + j];
  }
  mesh.allreduce_sum_data(lp.data(), N);
  std::vector<Continuation> out(N);
  for (int64_t i = 0; i < N; i++) out[i] = {lp[i], static_cast<int64_t>(requests[i].continuation.size())};
  return out;
}

// ---- perplexity: the loss of a stream of documents -----------------------------------------

StreamNll stream_nll(Model& model, const Mesh& mesh, const std::vector<int32_t>& stream, int32_t eod_id, int64_t rows) {
  const int64_t S = model.config().seq_len, N = static_cast<int64_t>(stream.size());
  const int64_t n_windows = N > 1 ? (N - 2) / S + 1 : 0;  // window w: inputs [w*S, w*S+S), targets one later
  double sums[2] = {0.0, 0.0};                            // nll, targets (this data rank's windows)
  const int64_t per_call = rows * mesh.data_size;
  for (int64_t first = 0; first < n_windows; first += per_call) {
    const int64_t lo = std::min(n_windows, first + mesh.data_rank * rows), hi = std::min(n_windows, lo + rows);
    std::vector<std::vector<int32_t>> ids, targets;
    std::vector<std::vector<int32_t>> segments;
    for (int64_t w = lo; w < hi; w++) {
      const int64_t start = w * S, n = std::min(S, N - 1 - start);
      ids.emplace_back(stream.begin() + start, stream.begin() + start + n);
      targets.emplace_back(n);
      segments.emplace_back(n);
      int32_t segment = 0;
      for (int64_t j = 0; j < n; j++) {
        const bool doc_end = stream[start + j] == eod_id;  // no target across a document end
        targets.back()[j] = doc_end ? -1 : stream[start + j + 1];
        segments.back()[j] = segment;
        if (doc_end) segment++;
      }
    }
    Batch b = pad_rows(ids, targets, eod_id);
    for (size_t r = 0; r < segments.size(); r++)  // padding stays in the last segment: it comes after every real token
      for (int64_t j = 0; j < b.seq_len; j++)
        b.segments[r * b.seq_len + j] = j < static_cast<int64_t>(segments[r].size()) ? segments[r][j] : segments[r].back() + 1;
    model.forward(b, /*no_drop=*/true);
    const std::vector<double> t = model.target_logprobs();
    for (size_t k = 0; k < t.size(); k++)
      if (b.targets[k] >= 0) { sums[0] -= t[k]; sums[1] += 1.0; }
  }
  mesh.allreduce_sum_data(sums, 2);
  return {sums[0], static_cast<int64_t>(sums[1])};
}

}  // namespace glam
