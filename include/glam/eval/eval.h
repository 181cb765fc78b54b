// Evaluation as in the GLaM paper (Du et al., 2022): multiple-choice tasks ranked by the
// (length-normalised) log-likelihood of each choice, generative tasks decoded with
// beam search and scored by exact match and token F1, zero- or few-shot with
// demonstrations drawn from the task's train file; and perplexity / bits per byte
// of held-out text. Task files are JSON Lines in our layout or in the field layouts
// of public copies of the benchmarks (docs/EVAL.md).
//
// Every function that runs the model is collective: all ranks of the mesh pass the
// same tasks and options and get the same results.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "glam/model/generator.h"
#include "glam/mesh/mesh.h"
#include "glam/model/model.h"
#include "glam/data/tokenizer.h"

namespace glam {

// ---- tasks (src/eval/tasks.cpp) ---------------------------------------------------

enum class TaskKind { multiple_choice, generative };
const char* kind_name(TaskKind kind);

// One example of either kind; the fields of the other kind stay empty.
struct Example {
  TaskKind kind = TaskKind::multiple_choice;
  std::string context;               // multiple choice: the text the choices continue
  std::vector<std::string> choices;  //   the options
  int64_t gold = -1;                 //   index of the right option
  std::string prompt;                // generative: the question
  std::vector<std::string> answers;  //   every acceptable answer
};

// How a task's examples become text. `text` holds {context} and {choice} (multiple
// choice) or {prompt} and {answer} (generative); what precedes the choice/answer
// is the conditioning, a demonstration is the whole template filled with the gold
// choice / first answer. Demonstrations and the example are joined by `separator`.
struct TaskTemplate {
  std::string text;
  std::string separator = "\n\n";
  std::vector<std::string> stop;     // generative: decoding ends at the first of these
  bool unnormalized = false;         // multiple choice: rank by the plain sum of log-probs
};

struct Task {
  std::string name;                  // file name without .jsonl
  std::string path;                  // the examples' file
  std::string format;                // the reader that parsed it (glam, hellaswag, ...)
  TaskKind kind = TaskKind::multiple_choice;
  TaskTemplate tmpl;
  std::vector<Example> examples;
  std::string train_path;            // NAME.train.jsonl beside it ("" when absent)
  std::vector<Example> train;        // demonstrations to draw from
};

// The readers --format selects.
const std::vector<std::string>& task_formats();
// Parses one JSON Lines file. Errors name file:line and the field.
std::vector<Example> read_examples(const std::string& path, const std::string& format);
// The default template of a kind.
TaskTemplate default_template(TaskKind kind);
// PATH is NAME.jsonl or a directory of them (NAME.train.jsonl files are the
// demonstrations, NAME.template.json optional overrides). Reads the train file
// only when shots > 0 and requires at least `shots` examples in it.
std::vector<Task> load_tasks(const std::string& path, const std::string& format, int64_t shots);

// The text of one filled template, split where the scored part starts.
struct Rendered {
  std::string conditioning;          // demonstrations + the template up to the choice/answer
  std::vector<std::string> targets;  // multiple choice: each choice as the template writes it
};
// `shots` demonstrations drawn without replacement from task.train, seeded by
// (seed, example index), so every rank and every run draws the same ones.
Rendered render_example(const Task& task, int64_t index, int64_t shots, uint64_t seed);

// ---- scoring (src/eval/score.cpp) ---------------------------------------------------

// SQuAD-style answer normalisation: lower case, punctuation removed, the articles
// a/an/the removed, whitespace collapsed.
std::string normalize_answer(const std::string& text);
bool exact_match(const std::string& prediction, const std::string& answer);
double token_f1(const std::string& prediction, const std::string& answer);
// The best exact match and F1 of the prediction over all acceptable answers.
struct AnswerScore { double em = 0.0, f1 = 0.0; };
AnswerScore best_answer_score(const std::string& prediction, const std::vector<std::string>& answers);

// log P(continuation | context) as a sum over the continuation's tokens.
struct ScoreRequest {
  std::vector<int32_t> context;       // at least one token
  std::vector<int32_t> continuation;  // at least one token, at most seq_len
};
struct Continuation {
  double logprob = 0.0;              // sum of log P over the continuation's tokens
  int64_t n_tokens = 0;
};
// Scores every request through training forward passes with inference routing (no
// capacity drops): rows of at most seq_len tokens (the context is cut from the left
// to fit), `rows` rows per forward per data rank, the requests split over the data
// axis. Collective; every rank gets every result.
std::vector<Continuation> score_continuations(Model& model, const Mesh& mesh, const std::vector<ScoreRequest>& requests,
                                              int32_t pad_id, int64_t rows = 8);

// Negative log-likelihood of a token stream of documents, each ended by eod, as the
// training loss counts it (no target across a document end, attention within a
// document), in non-overlapping windows of seq_len. Collective.
struct StreamNll {
  double nll = 0.0;                  // nats, summed
  int64_t n_targets = 0;
};
StreamNll stream_nll(Model& model, const Mesh& mesh, const std::vector<int32_t>& stream, int32_t eod_id,
                     int64_t rows = 8);

// ---- running a task (src/eval/evaluate.cpp) ---------------------------------------

struct EvalOptions {
  int64_t shots = 0;
  uint64_t seed = 1;
  bool unnormalized = false;         // every multiple-choice task ranks by the plain sum
  int64_t beam = 4;
  int64_t max_tokens = 32;
  int64_t limit = 0;                 // first N examples of each task (0: all)
  int64_t rows = 8;                  // rows per forward per data rank (glam eval: the training batch's share)
};

// What the model did on one example (for --predictions).
struct ExampleResult {
  std::string prompt;                // the conditioning as scored: demonstrations + the filled template
  std::vector<double> scores;        // multiple choice: each choice's ranking score
  int64_t predicted = -1;            //   the chosen index
  std::string prediction;            // generative: the decoded answer
  double em = 0.0, f1 = 0.0;         //   its scores; multiple choice: em = 1 when right
};

struct TaskResult {
  std::string name, format;
  TaskKind kind = TaskKind::multiple_choice;
  int64_t shots = 0, n = 0;
  double accuracy = 0.0, chance = 0.0;  // multiple choice
  double em = 0.0, f1 = 0.0;            // generative
  std::vector<ExampleResult> examples;  // [n]
  double score() const { return kind == TaskKind::multiple_choice ? accuracy : em; }
};

TaskResult evaluate_task(const Task& task, Model& model, const Tokenizer& tok, const Mesh& mesh,
                         const EvalOptions& opt);

struct TextResult {
  std::string path;
  int64_t n_bytes = 0, n_docs = 0, n_tokens = 0;  // n_tokens: scored targets
  double nll = 0.0;                               // nats
  double perplexity() const;
  double bits_per_byte() const;
};
// Documents are separated by blank lines (as glam-tokenize encodes by default).
TextResult evaluate_text(const std::string& path, Model& model, const Tokenizer& tok, const Mesh& mesh,
                         int64_t rows = 8);

}  // namespace glam
