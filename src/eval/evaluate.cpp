// Running one task (multiple choice: rank the choices; generative: beam search,
// then exact match / F1) and the perplexity of a text file. Collective: every rank
// renders the same text, tokenizes it the same way and gets the same scores.
#include <algorithm>
#include <cmath>
#include <fstream>
#include <iterator>
#include <sstream>

#include "glam/base/check.h"
#include "glam/eval/eval.h"

namespace glam {

namespace {

// Conditioning tokens; an empty conditioning is the end-of-document token.
std::vector<int32_t> encode_context(const Tokenizer& tok, const std::string& text) {
  std::vector<int32_t> ids = tok.encode(text);
  if (ids.empty()) ids.push_back(tok.eod_id());
  return ids;
}

TaskResult multiple_choice(const Task& task, int64_t n, Model& model, const Tokenizer& tok, const Mesh& mesh,
                           const EvalOptions& opt) {
  std::vector<ScoreRequest> requests;
  std::vector<std::string> prompts;      // [n]
  std::vector<int64_t> first(n + 1, 0);  // example i's choices are requests [first[i], first[i+1])
  for (int64_t i = 0; i < n; i++) {
    const Rendered r = render_example(task, i, opt.shots, opt.seed);
    prompts.push_back(r.conditioning);
    const std::vector<int32_t> ctx = encode_context(tok, r.conditioning);
    for (size_t c = 0; c < r.targets.size(); c++) {
      std::vector<int32_t> cont = tok.encode(r.targets[c]);
      GLAM_REQUIRE(!cont.empty(), task.path, ": example ", i + 1, ": choice ", c, " encodes to no tokens");
      requests.push_back({ctx, std::move(cont)});
    }
    first[i + 1] = static_cast<int64_t>(requests.size());
  }
  const std::vector<Continuation> scores = score_continuations(model, mesh, requests, tok.eod_id(), opt.rows);
  const bool plain_sum = opt.unnormalized || task.tmpl.unnormalized;
  TaskResult res;
  int64_t correct = 0;
  for (int64_t i = 0; i < n; i++) {
    ExampleResult ex;
    ex.prompt = std::move(prompts[i]);
    for (int64_t c = 0; c < first[i + 1] - first[i]; c++) {
      const Continuation& s = scores[first[i] + c];
      ex.scores.push_back(plain_sum ? s.logprob : s.logprob / static_cast<double>(s.n_tokens));
    }
    ex.predicted = std::max_element(ex.scores.begin(), ex.scores.end()) - ex.scores.begin();  // the first on a tie
    ex.em = ex.f1 = ex.predicted == task.examples[i].gold ? 1.0 : 0.0;
    correct += ex.predicted == task.examples[i].gold;
    res.examples.push_back(std::move(ex));
    res.chance += 1.0 / static_cast<double>(first[i + 1] - first[i]);
  }
  res.accuracy = static_cast<double>(correct) / static_cast<double>(n);
  res.chance /= static_cast<double>(n);
  return res;
}

TaskResult generative(const Task& task, int64_t n, Model& model, const Tokenizer& tok, const Mesh& mesh,
                      const EvalOptions& opt) {
  std::vector<std::string> texts;  // [n]
  std::vector<std::vector<int32_t>> prompts;
  for (int64_t i = 0; i < n; i++) {
    texts.push_back(render_example(task, i, opt.shots, opt.seed).conditioning);
    prompts.push_back(encode_context(tok, texts.back()));
  }
  SamplingOptions so;
  so.beam = opt.beam;
  so.max_tokens = opt.max_tokens;
  so.stop = task.tmpl.stop;
  so.seed = opt.seed;
  Generator generator(model, tok, mesh);
  const std::vector<Generation> out = generator.generate(prompts, so);
  TaskResult res;
  for (int64_t i = 0; i < n; i++) {
    const AnswerScore s = best_answer_score(out[i].text, task.examples[i].answers);
    res.em += s.em;
    res.f1 += s.f1;
    ExampleResult ex;
    ex.prompt = std::move(texts[i]);
    ex.prediction = out[i].text;
    ex.em = s.em;
    ex.f1 = s.f1;
    res.examples.push_back(std::move(ex));
  }
  res.em /= static_cast<double>(n);
  res.f1 /= static_cast<double>(n);
  return res;
}

}  // namespace

TaskResult evaluate_task(const Task& task, Model& model, const Tokenizer& tok, const Mesh& mesh, const EvalOptions& opt) {
  GLAM_REQUIRE(opt.limit >= 0, "--limit must be >= 0, got ", opt.limit);
  GLAM_REQUIRE(opt.beam >= 1, "--beam must be >= 1, got ", opt.beam);
  GLAM_REQUIRE(opt.max_tokens >= 1, "--max-tokens must be >= 1, got ", opt.max_tokens);
  GLAM_REQUIRE(opt.shots == 0 || static_cast<int64_t>(task.train.size()) >= opt.shots, "task ", task.name,
               ": --shots ", opt.shots, " needs that many demonstrations");
  const int64_t size = static_cast<int64_t>(task.examples.size());
  const int64_t n = opt.limit > 0 ? std::min(opt.limit, size) : size;
  TaskResult res = task.kind == TaskKind::multiple_choice ? multiple_choice(task, n, model, tok, mesh, opt)
                                                         : generative(task, n, model, tok, mesh, opt);
  res.name = task.name;
  res.format = task.format;
  res.kind = task.kind;
  res.shots = opt.shots;
  res.n = n;
  return res;
}

double TextResult::perplexity() const { return std::exp(nll / static_cast<double>(std::max<int64_t>(1, n_tokens))); }

double TextResult::bits_per_byte() const { return nll / std::log(2.0) / static_cast<double>(std::max<int64_t>(1, n_bytes)); }

TextResult evaluate_text(const std::string& path, Model& model, const Tokenizer& tok, const Mesh& mesh, int64_t rows) {
  std::ifstream in(path, std::ios::binary);
  GLAM_REQUIRE(in, "cannot open text file '", path, "'");
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  TextResult res;
  res.path = path;
  res.n_bytes = static_cast<int64_t>(text.size());
  // documents: runs of non-blank lines
  std::vector<int32_t> stream;
  std::istringstream lines(text);
  std::string doc;
  auto end_doc = [&] {
    if (doc.empty()) return;
    const std::vector<int32_t> ids = tok.encode(doc);
    stream.insert(stream.end(), ids.begin(), ids.end());
    stream.push_back(tok.eod_id());
    res.n_docs++;
    doc.clear();
  };
  for (std::string line; std::getline(lines, line);) {
    if (line.find_first_not_of(" \t\r\f\v") == std::string::npos) { end_doc(); continue; }
    doc += (doc.empty() ? "" : "\n") + line;
  }
  end_doc();
  GLAM_REQUIRE(res.n_docs > 0, "text file '", path, "' holds no text");
  const StreamNll s = stream_nll(model, mesh, stream, tok.eod_id(), rows);
  res.nll = s.nll;
  res.n_tokens = s.n_targets;
  return res;
}

}  // namespace glam
