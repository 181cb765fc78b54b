// Eval tasks: every --format reader on a small made-up file in its public layout,
// bad lines (file:line and the field in the message), task directories with
// train and template files, and the seeded few-shot demonstrations.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <set>

#include "glam/base/check.h"
#include "glam/eval/eval.h"

using namespace glam;
namespace fs = std::filesystem;

namespace {

const fs::path kDir = "eval_tasks_test";

std::string write(const std::string& name, const std::string& text) {
  fs::create_directories(kDir);
  const fs::path p = kDir / name;
  std::ofstream(p) << text;
  return p.string();
}

// A fresh directory of task files.
fs::path task_dir(const std::string& name) {
  const fs::path d = kDir / name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

void put(const fs::path& p, const std::string& text) { std::ofstream(p) << text; }

}  // namespace

TEST_CASE("glam layout: multiple choice and generative lines") {
  const auto mc = read_examples(write("mc.jsonl", R"({"context": "2 + 2 =", "choices": ["3", "4"], "gold": 1}

{"context": "sky:", "choices": ["blue", "green", "red"], "gold": 0, "extra": "ignored"}
)"), "glam");
  REQUIRE(mc.size() == 2);  // the blank line is skipped
  CHECK(mc[0].kind == TaskKind::multiple_choice);
  CHECK(mc[0].context == "2 + 2 =");
  CHECK(mc[0].choices == std::vector<std::string>{"3", "4"});
  CHECK(mc[0].gold == 1);
  CHECK(mc[1].choices.size() == 3);
  const auto gen = read_examples(write("gen.jsonl", R"({"prompt": "Capital of France?", "answers": ["Paris", "paris, France"]})"
                                                    "\n"), "glam");
  REQUIRE(gen.size() == 1);
  CHECK(gen[0].kind == TaskKind::generative);
  CHECK(gen[0].prompt == "Capital of France?");
  CHECK(gen[0].answers == std::vector<std::string>{"Paris", "paris, France"});
}

TEST_CASE("readers of public layouts map their fields onto the two kinds") {
  SECTION("triviaqa: question, answer.value and answer.aliases") {
    const auto e = read_examples(write("tqa.jsonl",
        R"({"question": "Who wrote Hamlet?", "question_id": "tc_1", "answer": {"value": "William Shakespeare", "aliases": ["Shakespeare", "William Shakespeare", "The Bard"], "normalized_value": "william shakespeare"}})" "\n"),
        "triviaqa");
    CHECK(e[0].kind == TaskKind::generative);
    CHECK(e[0].prompt == "Who wrote Hamlet?");
    CHECK(e[0].answers == std::vector<std::string>{"William Shakespeare", "Shakespeare", "The Bard"});
  }
  SECTION("nq_open and webquestions: question and a list of answers") {
    const auto nq = read_examples(write("nq.jsonl", R"({"question": "when was the eiffel tower built", "answer": ["1889", "1887"]})" "\n"), "nq_open");
    CHECK(nq[0].prompt == "when was the eiffel tower built");
    CHECK(nq[0].answers == std::vector<std::string>{"1889", "1887"});
    const auto wq = read_examples(write("wq.jsonl", R"({"url": "http://x", "question": "what is the capital of peru?", "answers": ["Lima"]})" "\n"), "webquestions");
    CHECK(wq[0].answers == std::vector<std::string>{"Lima"});
  }
  SECTION("hellaswag: activity_label and ctx, endings, label as a number or a string") {
    const auto e = read_examples(write("hs.jsonl",
        R"({"ind": 4, "activity_label": "Baking cookies", "ctx_a": "A woman mixes dough.", "ctx_b": "she", "ctx": "A woman mixes dough. she", "endings": ["eats it.", "puts it in the oven.", "sings.", "leaves."], "source_id": "x", "split": "val", "split_type": "indomain", "label": "1"}
{"activity_label": "Running", "ctx_a": "A man runs.", "ctx_b": "he", "endings": ["stops.", "flies."], "label": 0}
)"), "hellaswag");
    CHECK(e[0].context == "Baking cookies: A woman mixes dough. she");
    CHECK(e[0].choices.size() == 4);
    CHECK(e[0].gold == 1);
    CHECK(e[1].context == "Running: A man runs. he");  // no ctx: ctx_a + " " + ctx_b
    CHECK(e[1].gold == 0);
  }
  SECTION("piqa: goal, sol1, sol2, label") {
    const auto e = read_examples(write("piqa.jsonl",
        R"({"goal": "To open a jar", "sol1": "twist the lid", "sol2": "shout at it", "label": 0})" "\n"), "piqa");
    CHECK(e[0].context == "Question: To open a jar\nAnswer:");
    CHECK(e[0].choices == std::vector<std::string>{"twist the lid", "shout at it"});
    CHECK(e[0].gold == 0);
  }
  SECTION("arc: the flat layout and the original nested one") {
    const auto e = read_examples(write("arc.jsonl",
        R"({"id": "q1", "question": "Which is a gas?", "choices": {"text": ["ice", "steam", "rock"], "label": ["A", "B", "C"]}, "answerKey": "B"}
{"id": "q2", "question": {"stem": "Pick two.", "choices": [{"text": "one", "label": "1"}, {"text": "two", "label": "2"}]}, "answerKey": "2"}
)"), "arc");
    CHECK(e[0].context == "Question: Which is a gas?\nAnswer:");
    CHECK(e[0].choices == std::vector<std::string>{"ice", "steam", "rock"});
    CHECK(e[0].gold == 1);
    CHECK(e[1].context == "Question: Pick two.\nAnswer:");
    CHECK(e[1].gold == 1);
  }
  SECTION("boolq: passage, question, answer (bool) or label (int)") {
    const auto e = read_examples(write("boolq.jsonl",
        R"({"question": "is water wet", "title": "Water", "answer": true, "passage": "Water is a liquid."}
{"question": "is fire cold", "passage": "Fire is hot.", "idx": 1, "label": 0}
)"), "boolq");
    CHECK(e[0].context == "Water is a liquid.\nQuestion: is water wet?\nAnswer:");
    CHECK(e[0].choices == std::vector<std::string>{"no", "yes"});
    CHECK(e[0].gold == 1);
    CHECK(e[1].gold == 0);
  }
  SECTION("copa: premise, question cause/effect, choice1, choice2, label") {
    const auto e = read_examples(write("copa.jsonl",
        R"({"premise": "The man broke his toe.", "choice1": "He dropped a hammer on his foot.", "choice2": "He got a hole in his sock.", "question": "cause", "idx": 0, "label": 0}
{"premise": "I tipped the bottle.", "choice1": "The liquid flowed out.", "choice2": "The bottle froze.", "question": "effect", "label": 0}
)"), "copa");
    CHECK(e[0].context == "The man broke his toe because");
    CHECK(e[0].choices[0] == "he dropped a hammer on his foot.");
    CHECK(e[1].context == "I tipped the bottle therefore");
  }
}

TEST_CASE("hellaswag: the WikiHow markup is cleaned from the context and the endings") {
  // a WikiHow line as the public validation split writes it
  const auto e = read_examples(write("hs_wikihow.jsonl",
      R"({"ind": 7, "activity_label": "Home and Garden", "ctx_a": "[header] How to clean a kettle [title] Fill the kettle with vinegar. [step] Pour in  equal parts.", "ctx_b": "", "ctx": "[header] How to clean a kettle [title] Fill the kettle with vinegar. [step] Pour in  equal parts. ", "endings": ["[substeps] Let it soak [title] Rinse it.", "Boil it. [step] Then drink it.", "Done! [title] Dry it.", "[step] [substeps]  Wait ."], "split": "val", "label": 0}
{"activity_label": "Cooking", "ctx_a": "Keep [Note] and [a1] as they are.", "ctx_b": "then", "endings": ["[unknown] goes.", "stays."], "label": "1"}
)"), "hellaswag");
  REQUIRE(e.size() == 2);
  // the header ends a sentence before the title; tags go; doubled and trailing spaces go
  CHECK(e[0].context == "Home and Garden: How to clean a kettle. Fill the kettle with vinegar. Pour in equal parts.");
  CHECK(e[0].choices == std::vector<std::string>{"Let it soak. Rinse it.", "Boil it. Then drink it.", "Done! Dry it.", "Wait ."});
  CHECK(e[0].gold == 0);
  // only lower-case word tags are markup: other brackets are text
  CHECK(e[1].context == "Cooking: Keep [Note] and [a1] as they are. then");
  CHECK(e[1].choices == std::vector<std::string>{"goes.", "stays."});
}

TEST_CASE("hellaswag: a line of the unlabelled test split is refused, naming the file and line") {
  const std::string ok = R"({"activity_label": "Running", "ctx": "A man runs.", "endings": ["stops.", "flies."], "label": 0})";
  for (const std::string& label : {std::string(""), std::string(R"(, "label": "")")}) {
    const std::string path = write("hs_test.jsonl", ok + "\n" +
        R"({"activity_label": "Running", "ctx": "A man runs.", "endings": ["stops.", "flies."], "split": "test")" + label + "}\n");
    CHECK_THROWS_WITH(read_examples(path, "hellaswag"),
                      Catch::Contains("hs_test.jsonl:2: no \"label\": this file looks like HellaSwag's unlabelled test split") &&
                          Catch::Contains("evaluation needs the labelled validation split"));
  }
}

TEST_CASE("bad task lines name file:line and the field") {
  auto fails = [](const std::string& name, const std::string& text, const std::string& format, const std::string& what) {
    const std::string path = write(name, text);
    CHECK_THROWS_WITH(read_examples(path, format), Catch::Contains(what));
  };
  fails("badjson.jsonl", "{\"context\": \"a\", \"choices\": [\"b\"], \"gold\": 0}\n{\"context\": oops}\n", "glam",
        "badjson.jsonl:2: not valid JSON");
  fails("nofield.jsonl", "{\"choices\": [\"b\"], \"gold\": 0}\n", "glam", "nofield.jsonl:1: missing field \"context\"");
  fails("gold.jsonl", "{\"context\": \"a\", \"choices\": [\"b\", \"c\"], \"gold\": 2}\n", "glam",
        "gold.jsonl:1: gold 2 is out of range for 2 choices");
  fails("empty_choices.jsonl", "{\"context\": \"a\", \"choices\": [], \"gold\": 0}\n", "glam",
        "empty_choices.jsonl:1: \"choices\" is empty");
  fails("no_answers.jsonl", "{\"prompt\": \"a\", \"answers\": []}\n", "glam", "no_answers.jsonl:1: \"answers\" is empty");
  fails("neither.jsonl", "{\"text\": \"a\"}\n", "glam", "neither.jsonl:1: expected \"choices\" (multiple choice) or \"answers\"");
  fails("mixed.jsonl", "{\"prompt\": \"a\", \"answers\": [\"b\"]}\n{\"context\": \"a\", \"choices\": [\"b\"], \"gold\": 0}\n",
        "glam", "mixed.jsonl:2: a multiple_choice example in a generative task");
  fails("types.jsonl", "{\"context\": \"a\", \"choices\": \"b\", \"gold\": 0}\n", "glam",
        "types.jsonl:1: field \"choices\" must be a list of strings");
  fails("label.jsonl", R"({"goal": "g", "sol1": "a", "sol2": "b", "label": "x"})" "\n", "piqa",
        "label.jsonl:1: field \"label\" must be an integer");
  fails("key.jsonl", R"({"question": "q", "choices": {"text": ["a"], "label": ["A"]}, "answerKey": "E"})" "\n", "arc",
        "key.jsonl:1: \"answerKey\" 'E' is not one of the choice labels");
  fails("utf8.jsonl", "{\"prompt\": \"caf\xe9\", \"answers\": [\"x\"]}\n", "glam", "utf8.jsonl:1: not valid JSON");
  fails("blank.jsonl", "\n\n", "glam", "holds no examples");
  fails("fmt.jsonl", "{}\n", "squad", "unknown task format 'squad'");
  CHECK_THROWS_WITH(read_examples((kDir / "missing.jsonl").string(), "glam"), Catch::Contains("missing.jsonl' does not exist"));
}

TEST_CASE("a task directory: tasks, train files, template files; few-shot needs enough demonstrations") {
  const fs::path d = task_dir("dir");
  put(d / "b_gen.jsonl", R"({"prompt": "p1", "answers": ["a1"]})" "\n");
  put(d / "a_mc.jsonl", R"({"context": "c1", "choices": ["x", "y"], "gold": 1})" "\n"
                        R"({"context": "c2", "choices": ["x", "y"], "gold": 0})" "\n");
  put(d / "a_mc.train.jsonl", R"({"context": "d1", "choices": ["u", "v"], "gold": 0})" "\n"
                              R"({"context": "d2", "choices": ["u", "v"], "gold": 1})" "\n"
                              R"({"context": "d3", "choices": ["u", "v"], "gold": 0})" "\n");
  put(d / "b_gen.train.jsonl", R"({"prompt": "q1", "answers": ["b1", "other"]})" "\n");
  put(d / "b_gen.template.json", R"({"template": "In: {prompt} Out: {answer}", "separator": " | ", "stop": ["|"]})");
  put(d / "notes.txt", "not a task\n");

  const std::vector<Task> zero = load_tasks(d.string(), "glam", 0);
  REQUIRE(zero.size() == 2);  // sorted by name; train files and other files are not tasks
  CHECK(zero[0].name == "a_mc");
  CHECK(zero[0].kind == TaskKind::multiple_choice);
  CHECK(zero[0].tmpl.text == "{context} {choice}");
  CHECK(zero[0].train.empty());  // not read without --shots
  CHECK(zero[1].name == "b_gen");
  CHECK(zero[1].kind == TaskKind::generative);
  CHECK(zero[1].tmpl.stop == std::vector<std::string>{"|"});
  CHECK(render_example(zero[0], 0, 0, 1).conditioning == "c1");
  CHECK(render_example(zero[0], 0, 0, 1).targets == std::vector<std::string>{"x", "y"});
  CHECK(render_example(zero[1], 0, 0, 1).conditioning == "In: p1 Out:");

  const std::vector<Task> one = load_tasks(d.string(), "glam", 1);
  CHECK(render_example(one[1], 0, 1, 1).conditioning == "In: q1 Out: b1 | In: p1 Out:");  // the first answer

  CHECK_THROWS_WITH(load_tasks(d.string(), "glam", 2), Catch::Contains("--shots 2 needs at least 2 examples in")
                                                           && Catch::Contains("b_gen.train.jsonl', it has 1"));
  fs::remove(d / "b_gen.train.jsonl");
  CHECK_THROWS_WITH(load_tasks(d.string(), "glam", 1), Catch::Contains("b_gen.train.jsonl' does not exist"));
  CHECK_NOTHROW(load_tasks((d / "a_mc.jsonl").string(), "glam", 3));  // one file of a directory
  CHECK_THROWS_WITH(load_tasks((d / "notes.txt").string(), "glam", 0), Catch::Contains("must be named NAME.jsonl"));
  CHECK_THROWS_WITH(load_tasks((kDir / "nowhere").string(), "glam", 0), Catch::Contains("does not exist"));
  CHECK_THROWS_WITH(load_tasks(task_dir("empty").string(), "glam", 0), Catch::Contains("holds no NAME.jsonl files"));
}

TEST_CASE("template files: overrides, format, and checks") {
  const fs::path d = task_dir("tmpl");
  put(d / "t.jsonl", R"({"goal": "open a jar", "sol1": "twist", "sol2": "shout", "label": 0})" "\n");
  put(d / "t.template.json", R"({"format": "piqa", "template": "{context} {choice}.", "unnormalized": true})");
  const std::vector<Task> t = load_tasks(d.string(), "glam", 0);
  CHECK(t[0].format == "piqa");  // the template file picks the reader
  CHECK(t[0].tmpl.unnormalized);
  CHECK(render_example(t[0], 0, 0, 1).conditioning == "Question: open a jar\nAnswer:");

  put(d / "t.template.json", R"({"format": "piqa", "template": "{context} is it"})");
  CHECK_THROWS_WITH(load_tasks(d.string(), "glam", 0), Catch::Contains("must hold {choice} exactly once"));
  put(d / "t.template.json", R"({"format": "piqa", "template": "{choice}"})");
  CHECK_THROWS_WITH(load_tasks(d.string(), "glam", 0), Catch::Contains("must hold {context}"));
  put(d / "t.template.json", R"({"format": "piqa", "templat": "{context} {choice}"})");
  CHECK_THROWS_WITH(load_tasks(d.string(), "glam", 0), Catch::Contains("unknown field \"templat\""));
  put(d / "t.template.json", R"({"format": "piqa", "stop": "x"})");
  CHECK_THROWS_WITH(load_tasks(d.string(), "glam", 0), Catch::Contains("field \"stop\" must be a list of strings"));
  put(d / "t.template.json", "{\"format\": ");
  CHECK_THROWS_WITH(load_tasks(d.string(), "glam", 0), Catch::Contains("t.template.json' is not valid JSON"));
}

TEST_CASE("few-shot demonstrations: K distinct, seeded, filled with the gold choice") {
  const fs::path d = task_dir("shots");
  std::string train, test;
  for (int i = 0; i < 20; i++)
    train += "{\"context\": \"d" + std::to_string(i) + "\", \"choices\": [\"w\", \"g" + std::to_string(i) +
             "\"], \"gold\": 1}\n";
  for (int i = 0; i < 6; i++) test += "{\"context\": \"c" + std::to_string(i) + " {choice}\", \"choices\": [\"x\"], \"gold\": 0}\n";
  put(d / "k.jsonl", test);
  put(d / "k.train.jsonl", train);
  const Task task = load_tasks(d.string(), "glam", 4)[0];
  std::set<std::string> seen;
  for (int64_t i = 0; i < 6; i++) {
    const std::string text = render_example(task, i, 4, 7).conditioning;
    CHECK(text == render_example(task, i, 4, 7).conditioning);  // the same draw every time
    // 4 demonstrations "dN gN" joined by the separator, then the example (its own "{choice}" text kept as it is)
    std::set<std::string> demos;
    size_t at = 0;
    for (int k = 0; k < 4; k++) {
      const size_t end = text.find("\n\n", at);
      REQUIRE(end != std::string::npos);
      const std::string demo = text.substr(at, end - at);
      CHECK(demo.substr(demo.find(' ') + 1) == "g" + demo.substr(1, demo.find(' ') - 1));  // "dN gN": the gold choice
      demos.insert(demo);
      at = end + 2;
    }
    CHECK(demos.size() == 4);  // without replacement
    CHECK(text.substr(at) == "c" + std::to_string(i) + " {choice}");
    seen.insert(text.substr(0, at));
  }
  CHECK(seen.size() > 1);  // each example draws its own demonstrations
  CHECK(render_example(task, 0, 4, 7).conditioning != render_example(task, 0, 4, 8).conditioning);  // the seed matters
}
