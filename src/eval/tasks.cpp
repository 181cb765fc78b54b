// Task files: JSON Lines readers (ours and the field layouts of public copies of
// GLaM's benchmarks), per-task templates, and few-shot demonstrations.
// Every reader maps a line onto one Example; a bad line is a UserError naming
// file:line and the field. docs/EVAL.md lists each reader's mapping.
#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>

#include <nlohmann/json.hpp>

#include "glam/base/check.h"
#include "glam/eval/eval.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace glam {

const char* kind_name(TaskKind kind) {
  return kind == TaskKind::multiple_choice ? "multiple_choice" : "generative";
}

namespace {

// ---- typed access to the fields of one line -------------------------------------

struct Line {
  const json& j;
  std::string where;  // "file:line"

  const json& field(const std::string& key) const {
    GLAM_REQUIRE(j.contains(key), where, ": missing field \"", key, "\"");
    return j.at(key);
  }
  std::string str(const std::string& key) const { return as_str(field(key), key); }
  std::string as_str(const json& v, const std::string& key) const {
    GLAM_REQUIRE(v.is_string(), where, ": field \"", key, "\" must be a string");
    return v.get<std::string>();
  }
  std::vector<std::string> strings(const json& v, const std::string& key) const {
    GLAM_REQUIRE(v.is_array(), where, ": field \"", key, "\" must be a list of strings");
    std::vector<std::string> out;
    for (const json& s : v) out.push_back(as_str(s, key + "[]"));
    return out;
  }
  std::vector<std::string> strings(const std::string& key) const { return strings(field(key), key); }
  // An integer, or a string of digits (some copies store labels as "2").
  int64_t integer(const std::string& key) const {
    const json& v = field(key);
    if (v.is_number_integer()) return v.get<int64_t>();
    if (v.is_string()) {
      const std::string s = v.get<std::string>();
      if (!s.empty() && s.size() < 10 && std::all_of(s.begin(), s.end(), ::isdigit)) return std::stoll(s);
    }
    throw UserError(msg(where, ": field \"", key, "\" must be an integer"));
  }
  bool boolean(const std::string& key) const {
    const json& v = field(key);
    GLAM_REQUIRE(v.is_boolean(), where, ": field \"", key, "\" must be true or false");
    return v.get<bool>();
  }
};

// ---- the readers ---------------------------------------------------------------------

Example read_glam(const Line& in) {
  Example e;
  if (in.j.contains("choices")) {
    e.context = in.str("context");
    e.choices = in.strings("choices");
    e.gold = in.integer("gold");
  } else {
    GLAM_REQUIRE(in.j.contains("answers"), in.where,
                 ": expected \"choices\" (multiple choice) or \"answers\" (generative)");
    e.kind = TaskKind::generative;
    e.prompt = in.str("prompt");
    e.answers = in.strings("answers");
  }
  return e;
}

// TriviaQA (rc / unfiltered): question, answer {value, aliases}.
Example read_triviaqa(const Line& in) {
  Example e;
  e.kind = TaskKind::generative;
  e.prompt = in.str("question");
  const json& a = in.field("answer");
  GLAM_REQUIRE(a.is_object(), in.where, ": field \"answer\" must be an object with \"value\" and \"aliases\"");
  const Line answer{a, in.where};
  e.answers.push_back(answer.str("value"));
  if (a.contains("aliases"))
    for (const std::string& s : answer.strings("aliases"))
      if (std::find(e.answers.begin(), e.answers.end(), s) == e.answers.end()) e.answers.push_back(s);
  return e;
}

// Natural Questions open / WebQuestions: question, answer or answers (a list).
Example read_question_answers(const Line& in) {
  Example e;
  e.kind = TaskKind::generative;
  e.prompt = in.str("question");
  e.answers = in.j.contains("answers") ? in.strings("answers") : in.strings("answer");
  return e;
}

// HellaSwag's WikiHow half carries the markup of the scraped pages: "[header]",
// "[title]", "[step]", "[substeps]". A model never saw those tags in training, so
// they go: a title starts a new sentence (a full stop before it unless the text
// before ends one already), any other lower-case tag is dropped, and the runs of
// spaces left behind become one. Text without tags (the ActivityNet half) only
// loses doubled and outer spaces.
std::string clean_wikihow(const std::string& text) {
  std::string out;
  for (size_t i = 0; i < text.size();) {
    size_t close = std::string::npos;
    if (text[i] == '[') {
      size_t j = i + 1;
      while (j < text.size() && std::islower(static_cast<unsigned char>(text[j]))) j++;
      if (j > i + 1 && j < text.size() && text[j] == ']') close = j;
    }
    if (close == std::string::npos) {
      out += text[i++];
      continue;
    }
    if (text.compare(i, close + 1 - i, "[title]") == 0) {
      while (!out.empty() && out.back() == ' ') out.pop_back();
      if (!out.empty() && std::string(".!?:").find(out.back()) == std::string::npos) out += '.';
    }
    out += ' ';
    i = close + 1;
  }
  std::string collapsed;  // one space between words, none at the ends
  for (char c : out)
    if (c != ' ' || (!collapsed.empty() && collapsed.back() != ' ')) collapsed += c;
  while (!collapsed.empty() && collapsed.back() == ' ') collapsed.pop_back();
  return collapsed;
}

// HellaSwag: activity_label, ctx (or ctx_a + ctx_b), endings, label; WikiHow
// markup cleaned from the context and the endings.
Example read_hellaswag(const Line& in) {
  Example e;
  std::string ctx = in.j.contains("ctx") ? in.str("ctx") : in.str("ctx_a") + " " + in.str("ctx_b");
  if (in.j.contains("activity_label")) ctx = in.str("activity_label") + ": " + ctx;
  e.context = clean_wikihow(ctx);
  for (const std::string& ending : in.strings("endings")) e.choices.push_back(clean_wikihow(ending));
  // the public test split hides its answers: no "label", or "" in some copies
  const bool unlabelled = !in.j.contains("label") || (in.j.at("label").is_string() && in.str("label").empty());
  GLAM_REQUIRE(!unlabelled, in.where, ": no \"label\": this file looks like HellaSwag's unlabelled test split; ",
               "evaluation needs the labelled validation split (hellaswag_val.jsonl)");
  e.gold = in.integer("label");
  return e;
}

// PIQA: goal, sol1, sol2, label.
Example read_piqa(const Line& in) {
  Example e;
  e.context = "Question: " + in.str("goal") + "\nAnswer:";
  e.choices = {in.str("sol1"), in.str("sol2")};
  e.gold = in.integer("label");
  return e;
}

// ARC: question, choices {text, label}, answerKey; or the original layout with
// question {stem, choices [{text, label}]}.
Example read_arc(const Line& in) {
  Example e;
  const json& q = in.field("question");
  std::vector<std::string> labels;
  if (q.is_object()) {
    const Line question{q, in.where};
    e.context = question.str("stem");
    const json& list = question.field("choices");
    GLAM_REQUIRE(list.is_array(), in.where, ": field \"question.choices\" must be a list");
    for (const json& c : list) {
      GLAM_REQUIRE(c.is_object(), in.where, ": field \"question.choices[]\" must be {\"text\", \"label\"}");
      const Line choice{c, in.where};
      e.choices.push_back(choice.str("text"));
      labels.push_back(choice.str("label"));
    }
  } else {
    e.context = in.str("question");
    const json& c = in.field("choices");
    GLAM_REQUIRE(c.is_object(), in.where, ": field \"choices\" must be {\"text\": [...], \"label\": [...]}");
    const Line choices{c, in.where};
    e.choices = choices.strings("text");
    labels = choices.strings("label");
    GLAM_REQUIRE(labels.size() == e.choices.size(), in.where, ": \"choices.text\" and \"choices.label\" differ in length");
  }
  e.context = "Question: " + e.context + "\nAnswer:";
  const std::string key = in.str("answerKey");
  const auto at = std::find(labels.begin(), labels.end(), key);
  GLAM_REQUIRE(at != labels.end(), in.where, ": \"answerKey\" '", key, "' is not one of the choice labels");
  e.gold = at - labels.begin();
  return e;
}

// BoolQ: passage, question, answer (true/false) or label (1 = true, SuperGLUE).
Example read_boolq(const Line& in) {
  Example e;
  e.context = in.str("passage") + "\nQuestion: " + in.str("question") + "?\nAnswer:";
  e.choices = {"no", "yes"};
  e.gold = in.j.contains("answer") ? (in.boolean("answer") ? 1 : 0) : in.integer("label");
  return e;
}

// COPA (SuperGLUE): premise, choice1, choice2, question (cause | effect), label.
Example read_copa(const Line& in) {
  Example e;
  std::string premise = in.str("premise");
  if (!premise.empty() && premise.back() == '.') premise.pop_back();
  const std::string q = in.str("question");
  GLAM_REQUIRE(q == "cause" || q == "effect", in.where, ": field \"question\" must be \"cause\" or \"effect\"");
  e.context = premise + (q == "cause" ? " because" : " therefore");
  for (const char* key : {"choice1", "choice2"}) {
    std::string c = in.str(key);
    if (!c.empty()) c[0] = static_cast<char>(std::tolower(static_cast<unsigned char>(c[0])));
    e.choices.push_back(c);
  }
  e.gold = in.integer("label");
  return e;
}

using Reader = std::function<Example(const Line&)>;

const std::map<std::string, Reader>& readers() {
  static const std::map<std::string, Reader> r = {
      {"glam", read_glam},       {"triviaqa", read_triviaqa}, {"nq_open", read_question_answers},
      {"webquestions", read_question_answers},                {"hellaswag", read_hellaswag},
      {"piqa", read_piqa},       {"arc", read_arc},           {"boolq", read_boolq},
      {"copa", read_copa}};
  return r;
}

void check_example(const Example& e, const std::string& where) {
  if (e.kind == TaskKind::multiple_choice) {
    GLAM_REQUIRE(!e.choices.empty(), where, ": \"choices\" is empty");
    GLAM_REQUIRE(e.gold >= 0 && e.gold < static_cast<int64_t>(e.choices.size()), where, ": gold ", e.gold,
                 " is out of range for ", e.choices.size(), " choices (0-based)");
    for (const std::string& c : e.choices) GLAM_REQUIRE(!c.empty(), where, ": a choice is an empty string");
  } else {
    GLAM_REQUIRE(!e.answers.empty(), where, ": \"answers\" is empty");
  }
}

// ---- templates -----------------------------------------------------------------------

const char* slot_before(TaskKind k) { return k == TaskKind::multiple_choice ? "{context}" : "{prompt}"; }
const char* slot_target(TaskKind k) { return k == TaskKind::multiple_choice ? "{choice}" : "{answer}"; }

// Fills the slots of a template in one pass, so text that itself holds "{choice}"
// or "{context}" is copied as it is.
std::string fill(const std::string& text, const std::vector<std::pair<std::string, std::string>>& slots) {
  std::string out;
  for (size_t i = 0; i < text.size();) {
    bool hit = false;
    for (const auto& [slot, value] : slots)
      if (text.compare(i, slot.size(), slot) == 0) { out += value; i += slot.size(); hit = true; break; }
    if (!hit) out += text[i++];
  }
  return out;
}

// The overrides of NAME.template.json; "format" may name the task's reader.
struct TemplateFile {
  bool present = false;
  json j;
};

TemplateFile read_template_file(const fs::path& path) {
  TemplateFile t;
  if (!fs::exists(path)) return t;
  std::ifstream in(path);
  GLAM_REQUIRE(in, "cannot open template file '", path.string(), "'");
  try {
    t.j = json::parse(in);
  } catch (const json::exception& e) {
    throw UserError(msg("template file '", path.string(), "' is not valid JSON: ", e.what()));
  }
  GLAM_REQUIRE(t.j.is_object(), "template file '", path.string(), "' must hold one JSON object");
  for (const auto& [key, value] : t.j.items())
    GLAM_REQUIRE(key == "template" || key == "separator" || key == "stop" || key == "unnormalized" || key == "format",
                 "template file '", path.string(), "': unknown field \"", key,
                 "\" (expected template, separator, stop, unnormalized, format)");
  t.present = true;
  return t;
}

TaskTemplate make_template(TaskKind kind, const TemplateFile& f, const std::string& path) {
  TaskTemplate t = default_template(kind);
  if (!f.present) return t;
  const Line in{f.j, "template file '" + path + "'"};
  if (f.j.contains("template")) t.text = in.str("template");
  if (f.j.contains("separator")) t.separator = in.str("separator");
  if (f.j.contains("stop")) t.stop = in.strings("stop");
  if (f.j.contains("unnormalized")) t.unnormalized = in.boolean("unnormalized");
  const std::string target = slot_target(kind);
  const size_t at = t.text.find(target);
  GLAM_REQUIRE(at != std::string::npos && t.text.find(target, at + 1) == std::string::npos, "template file '", path,
               "': \"template\" must hold ", target, " exactly once (", kind_name(kind), " task)");
  GLAM_REQUIRE(t.text.find(slot_before(kind)) != std::string::npos, "template file '", path,
               "': \"template\" must hold ", slot_before(kind), " (", kind_name(kind), " task)");
  return t;
}

std::string question_of(const Example& e) { return e.kind == TaskKind::multiple_choice ? e.context : e.prompt; }

std::string rstrip_spaces(std::string s) {
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.pop_back();
  return s;
}

}  // namespace

const std::vector<std::string>& task_formats() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> n;
    for (const auto& [name, reader] : readers()) n.push_back(name);
    return n;
  }();
  return names;
}

TaskTemplate default_template(TaskKind kind) {
  TaskTemplate t;
  if (kind == TaskKind::multiple_choice) {
    t.text = "{context} {choice}";
  } else {
    t.text = "Q: {prompt}\nA: {answer}";
    t.stop = {"\n", "Q:"};  // "Q:" too: SentencePiece's default normalisation turns newlines into spaces
  }
  return t;
}

std::vector<Example> read_examples(const std::string& path, const std::string& format) {
  const auto reader = readers().find(format);
  GLAM_REQUIRE(reader != readers().end(), "unknown task format '", format, "' (expected one of ",
               [] { std::string s; for (const auto& n : task_formats()) s += (s.empty() ? "" : ", ") + n; return s; }(), ")");
  GLAM_REQUIRE(fs::exists(path), "task file '", path, "' does not exist");
  GLAM_REQUIRE(!fs::is_directory(path), "task file '", path, "' is a directory");
  std::ifstream in(path);
  GLAM_REQUIRE(in, "cannot open task file '", path, "'");
  std::vector<Example> out;
  int64_t n = 0;
  for (std::string text; std::getline(in, text);) {
    n++;
    if (text.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = msg(path, ":", n);
    json j;
    try {
      j = json::parse(text);
    } catch (const json::exception& e) {
      throw UserError(msg(where, ": not valid JSON: ", e.what()));
    }
    GLAM_REQUIRE(j.is_object(), where, ": expected a JSON object");
    Example e = reader->second(Line{j, where});
    check_example(e, where);
    GLAM_REQUIRE(out.empty() || e.kind == out[0].kind, where, ": a ", kind_name(e.kind),
                 " example in a ", kind_name(out[0].kind), " task (one kind per file)");
    out.push_back(std::move(e));
  }
  GLAM_REQUIRE(!out.empty(), "task file '", path, "' holds no examples");
  return out;
}

std::vector<Task> load_tasks(const std::string& path, const std::string& format, int64_t shots) {
  GLAM_REQUIRE(shots >= 0, "--shots must be >= 0, got ", shots);
  GLAM_REQUIRE(fs::exists(path), "task path '", path, "' does not exist");
  std::vector<fs::path> files;
  auto is_task_file = [](const fs::path& p) {
    const std::string n = p.filename().string();
    const bool train = n.size() >= 12 && n.compare(n.size() - 12, 12, ".train.jsonl") == 0;
    return p.extension() == ".jsonl" && !train;
  };
  if (fs::is_directory(path)) {
    for (const auto& entry : fs::directory_iterator(path))
      if (entry.is_regular_file() && is_task_file(entry.path())) files.push_back(entry.path());
    std::sort(files.begin(), files.end());
    GLAM_REQUIRE(!files.empty(), "task directory '", path, "' holds no NAME.jsonl files");
  } else {
    GLAM_REQUIRE(fs::path(path).extension() == ".jsonl", "task file '", path, "' must be named NAME.jsonl");
    files.push_back(path);
  }
  std::vector<Task> tasks;
  for (const fs::path& file : files) {
    Task t;
    t.name = file.stem().string();
    t.path = file.string();
    const fs::path tmpl_path = file.parent_path() / (t.name + ".template.json");
    const TemplateFile tf = read_template_file(tmpl_path);
    t.format = format;
    if (tf.present && tf.j.contains("format")) t.format = Line{tf.j, "template file '" + tmpl_path.string() + "'"}.str("format");
    t.examples = read_examples(t.path, t.format);
    t.kind = t.examples[0].kind;
    t.tmpl = make_template(t.kind, tf, tmpl_path.string());
    const fs::path train = file.parent_path() / (t.name + ".train.jsonl");
    if (fs::exists(train)) t.train_path = train.string();
    if (shots > 0) {
      GLAM_REQUIRE(!t.train_path.empty(), "--shots ", shots, " needs demonstrations: '", train.string(),
                   "' does not exist");
      t.train = read_examples(t.train_path, t.format);
      GLAM_REQUIRE(t.train[0].kind == t.kind, "train file '", t.train_path, "' is ", kind_name(t.train[0].kind),
                   " but '", t.path, "' is ", kind_name(t.kind));
      GLAM_REQUIRE(static_cast<int64_t>(t.train.size()) >= shots, "--shots ", shots, " needs at least ", shots,
                   " examples in '", t.train_path, "', it has ", t.train.size());
    }
    tasks.push_back(std::move(t));
  }
  return tasks;
}

Rendered render_example(const Task& task, int64_t index, int64_t shots, uint64_t seed) {
  const TaskKind k = task.kind;
  const std::string& text = task.tmpl.text;
  const size_t cut = text.find(slot_target(k));
  GLAM_ASSERT(cut != std::string::npos);
  std::string conditioning;
  if (shots > 0) {
    // K distinct demonstrations: the first K of a seeded partial Fisher-Yates shuffle
    std::seed_seq sq{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32), static_cast<uint32_t>(index)};
    std::mt19937_64 rng(sq);
    std::vector<int64_t> order(task.train.size());
    for (size_t i = 0; i < order.size(); i++) order[i] = static_cast<int64_t>(i);
    for (int64_t i = 0; i < shots; i++) {
      const int64_t j = i + static_cast<int64_t>(rng() % static_cast<uint64_t>(order.size() - i));
      std::swap(order[i], order[j]);
      const Example& d = task.train[order[i]];
      const std::string target = k == TaskKind::multiple_choice ? d.choices[d.gold] : d.answers[0];
      conditioning += fill(text, {{slot_before(k), question_of(d)}, {slot_target(k), target}}) + task.tmpl.separator;
    }
  }
  const Example& e = task.examples[index];
  conditioning += fill(text.substr(0, cut), {{slot_before(k), question_of(e)}});
  Rendered r;
  r.conditioning = rstrip_spaces(conditioning);
  if (k == TaskKind::multiple_choice) r.targets = e.choices;
  return r;
}

}  // namespace glam
