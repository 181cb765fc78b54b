// glam-tokenize: prepares training data for glam.
//   train-spm  trains a SentencePiece model on plain text files
//   encode     turns plain text files into a glam corpus file (HDF5, see corpus.h)
//   info       prints the header of a corpus file
// Every subcommand takes --help. Bad input is a glam::UserError: main prints
// "glam-tokenize: error: <message>" on stderr and exits with status 2.
// MPI is initialised only because libhdf5 is the MPI build; this tool is serial.
#include <mpi.h>
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <algorithm>
#include <boost/program_options.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <iterator>
#include <map>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "glam/check.h"
#include "glam/corpus.h"
#include "glam/tokenizer.h"

namespace po = boost::program_options;
namespace fs = std::filesystem;

namespace {

constexpr const char* kUsage =
    "usage: glam-tokenize <command> [options]\n"
    "commands:\n"
    "  train-spm  train a SentencePiece model on plain text files\n"
    "  encode     tokenize plain text files into a glam corpus file (.h5)\n"
    "  info       print the header of a corpus file\n"
    "'glam-tokenize <command> --help' lists the options of a command.\n";

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Parses the options of one subcommand. Returns false when --help was printed.
bool parse_options(const std::vector<std::string>& args, const std::string& command,
                   const std::string& synopsis, const po::options_description& options,
                   const po::positional_options_description& positional, po::variables_map& vm) {
  po::store(po::command_line_parser(args).options(options).positional(positional).run(), vm);
  if (vm.count("help")) {
    std::cout << "usage: glam-tokenize " << command << " " << synopsis << "\n" << options;
    return false;
  }
  po::notify(vm);
  return true;
}

void require_input_files(const std::vector<std::string>& paths) {
  for (const auto& p : paths) {
    GLAM_REQUIRE(fs::exists(p), "input file '", p, "' does not exist");
    GLAM_REQUIRE(fs::is_regular_file(p), "input '", p, "' is not a regular file");
  }
}

void require_parent_dir(const std::string& path, const char* what) {
  const fs::path parent = fs::path(path).parent_path();
  GLAM_REQUIRE(parent.empty() || fs::is_directory(parent), "directory '", parent.string(),
               "' for the ", what, " '", path, "' does not exist");
}

std::string join(const std::vector<std::string>& parts, const char* sep) {
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : sep) + p;
  return out;
}

// ---- train-spm ------------------------------------------------------------

int train_spm(const std::vector<std::string>& args) {
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  po::options_description opt("train-spm options");
  // clang-format off
  opt.add_options()
      ("help,h", "show this help")
      ("input", po::value<std::vector<std::string>>()->required()->composing(),
       "plain text file, one sentence per line (repeat for several files)")
      ("model-prefix", po::value<std::string>()->required(), "writes PREFIX.model and PREFIX.vocab")
      ("vocab-size", po::value<int>()->required(), "number of pieces (a soft limit)")
      ("model-type", po::value<std::string>()->default_value("unigram"), "unigram or bpe")
      ("byte-fallback", po::bool_switch(),
       "spell unknown characters as UTF-8 bytes instead of <unk>")
      ("input-sentence-size", po::value<int64_t>()->default_value(0),
       "train on a random sample of at most N sentences (0: all)")
      ("seed", po::value<uint32_t>()->default_value(1), "random seed of the sentence sample")
      ("threads", po::value<int>()->default_value(cores), "training threads")
      ("verbose", po::bool_switch(), "show SentencePiece's training log");
  // clang-format on
  po::variables_map vm;
  const char* synopsis =
      "--input F [--input F2 ...] --model-prefix PREFIX --vocab-size N [options]";
  if (!parse_options(args, "train-spm", synopsis, opt, {}, vm)) return 0;

  const auto inputs = vm["input"].as<std::vector<std::string>>();
  const auto prefix = vm["model-prefix"].as<std::string>();
  const auto type = vm["model-type"].as<std::string>();
  const int vocab = vm["vocab-size"].as<int>();
  require_input_files(inputs);
  for (const auto& p : inputs)
    GLAM_REQUIRE(p.find(',') == std::string::npos, "input path '", p,
                 "' contains a comma, which SentencePiece cannot take");
  require_parent_dir(prefix, "model prefix");
  GLAM_REQUIRE(type == "unigram" || type == "bpe", "--model-type must be unigram or bpe, not '",
               type, "'");
  GLAM_REQUIRE(vocab >= 8, "--vocab-size must be at least 8, not ", vocab);
  GLAM_REQUIRE(!vm["byte-fallback"].as<bool>() || vocab > 259,
               "--byte-fallback needs --vocab-size above 259 "
               "(256 byte pieces, <unk>, <s>, </s> and the characters of the text), not ",
               vocab);
  GLAM_REQUIRE(vm["input-sentence-size"].as<int64_t>() >= 0, "--input-sentence-size must be >= 0");
  GLAM_REQUIRE(vm["threads"].as<int>() >= 1, "--threads must be >= 1");

  const std::unordered_map<std::string, std::string> spec = {
      {"input", join(inputs, ",")},
      {"model_prefix", prefix},
      {"vocab_size", std::to_string(vocab)},
      {"model_type", type},
      {"byte_fallback", vm["byte-fallback"].as<bool>() ? "true" : "false"},
      {"input_sentence_size", std::to_string(vm["input-sentence-size"].as<int64_t>())},
      {"shuffle_input_sentence", "true"},
      {"num_threads", std::to_string(vm["threads"].as<int>())},
      {"pad_id", "-1"},
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"hard_vocab_limit", "false"},
      {"character_coverage", "1.0"},
      {"max_sentence_length", "1048576"},
      {"minloglevel", vm["verbose"].as<bool>() ? "0" : "1"},
  };
  sentencepiece::SetRandomGeneratorSeed(vm["seed"].as<uint32_t>());
  const auto start = Clock::now();
  const auto status = sentencepiece::SentencePieceTrainer::Train(spec);
  GLAM_REQUIRE(status.ok(), "SentencePiece training failed: ", status.ToString());
  const glam::Tokenizer tok(prefix + ".model");
  std::printf(
      "glam-tokenize: trained %s model (%lld pieces, hash %s) on %s in %.1f s -> %s.model, "
      "%s.vocab\n",
      type.c_str(), static_cast<long long>(tok.vocab_size()), tok.hash().c_str(),
      join(inputs, " ").c_str(), seconds_since(start), prefix.c_str(), prefix.c_str());
  return 0;
}

// ---- encode ---------------------------------------------------------------

// Byte offset of the first invalid UTF-8 sequence in s, or npos. Rejects
// overlong forms, surrogates and code points above U+10FFFF.
size_t find_invalid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    int len = 0;
    unsigned lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF)
      len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else
      return i;
    if (i + len > s.size()) return i;
    for (int k = 1; k < len; ++k) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) return i;
    }
    i += len;
  }
  return std::string_view::npos;
}

bool is_blank(std::string_view line) {
  return line.find_first_not_of(" \t\r\f\v") == std::string_view::npos;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  GLAM_REQUIRE(in, "cannot read input file '", path, "'");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  GLAM_REQUIRE(!in.bad(), "error while reading input file '", path, "'");
  return text;
}

// Splits a text file into documents: one per line ("line") or one per block of
// lines separated by blank lines ("blank"). Blank documents are dropped, lines
// keep their order and are joined by '\n', a trailing '\r' is removed.
std::vector<std::string> split_documents(const std::string& path, const std::string& text,
                                         bool per_line) {
  std::vector<std::string> docs;
  std::string doc;
  auto finish = [&] {
    if (!doc.empty()) docs.push_back(std::move(doc));
    doc.clear();
  };
  size_t start = 0;
  for (int64_t line_no = 1; start < text.size(); ++line_no) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + start, end - start);
    start = end + 1;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    const size_t bad = find_invalid_utf8(line);
    GLAM_REQUIRE(bad == std::string_view::npos, "input file '", path, "' line ", line_no,
                 ": invalid UTF-8 at byte ", bad + 1, " of the line (convert it with iconv first)");
    if (is_blank(line)) {
      finish();
      continue;
    }
    if (!doc.empty()) doc += '\n';
    doc.append(line);
    if (per_line) finish();
  }
  finish();
  return docs;
}

struct EncodeStats {
  int64_t docs = 0, tokens = 0, unk = 0, bytes = 0;
};

void encode_file(const glam::Tokenizer& tok, const std::string& path, bool per_line,
                 std::vector<std::vector<int32_t>>& out, EncodeStats& stats) {
  const std::string text = read_file(path);
  stats.bytes += static_cast<int64_t>(text.size());
  for (const auto& doc : split_documents(path, text, per_line)) {
    auto ids = tok.encode(doc);
    for (int32_t id : ids) stats.unk += id == tok.unk_id();
    stats.tokens += static_cast<int64_t>(ids.size()) + 1;  // + the eod the writer appends
    ++stats.docs;
    out.push_back(std::move(ids));
  }
}

int encode(const std::vector<std::string>& args) {
  po::options_description opt("encode options");
  // clang-format off
  opt.add_options()
      ("help,h", "show this help")
      ("tokenizer", po::value<std::string>()->required(), "SentencePiece .model file")
      ("input", po::value<std::vector<std::string>>()->required()->composing(),
       "UTF-8 text file (repeat for several files)")
      ("output", po::value<std::string>()->required(), "corpus file to write (.h5)")
      ("source", po::value<std::string>()->required(),
       "name of the text source, stored in the file")
      ("doc-split", po::value<std::string>()->default_value("blank"),
       "blank: documents are separated by blank lines; line: one document per line")
      ("overwrite", po::bool_switch(), "replace an existing output file");
  // clang-format on
  po::variables_map vm;
  const char* synopsis =
      "--tokenizer M.model --input F [--input F2 ...] --output OUT.h5 --source NAME [options]";
  if (!parse_options(args, "encode", synopsis, opt, {}, vm)) return 0;

  const auto inputs = vm["input"].as<std::vector<std::string>>();
  const auto output = vm["output"].as<std::string>();
  const auto split = vm["doc-split"].as<std::string>();
  GLAM_REQUIRE(split == "blank" || split == "line", "--doc-split must be blank or line, not '",
               split, "'");
  require_input_files(inputs);
  GLAM_REQUIRE(vm["overwrite"].as<bool>() || !fs::exists(output), "output file '", output,
               "' already exists (pass --overwrite to replace it)");
  require_parent_dir(output, "output file");

  const auto start = Clock::now();
  const glam::Tokenizer tok(vm["tokenizer"].as<std::string>());
  std::vector<std::vector<int32_t>> docs;
  EncodeStats stats;
  for (const auto& path : inputs) encode_file(tok, path, split == "line", docs, stats);
  GLAM_REQUIRE(!docs.empty(), "no documents in the input (", join(inputs, ", "),
               " holds only blank lines)");

  glam::CorpusInfo info;
  info.source = vm["source"].as<std::string>();
  info.tokenizer_hash = tok.hash();
  info.vocab_size = tok.vocab_size();
  info.eod_id = tok.eod_id();
  glam::write_corpus(output, docs, info, vm["overwrite"].as<bool>());
  const double secs = seconds_since(start);
  const double mb = stats.bytes / 1e6;
  std::printf(
      "glam-tokenize: encoded %lld docs, %lld tokens (%lld unk) from %.2f MB of text "
      "in %.1f s (%.2f MB/s) -> %s\n",
      static_cast<long long>(stats.docs), static_cast<long long>(stats.tokens),
      static_cast<long long>(stats.unk), mb, secs, mb / std::max(secs, 1e-9), output.c_str());
  return 0;
}

// ---- info -----------------------------------------------------------------

int info(const std::vector<std::string>& args) {
  po::options_description opt("info options");
  // clang-format off
  opt.add_options()
      ("help,h", "show this help")
      ("file", po::value<std::string>(), "corpus file (.h5), also the first positional argument");
  // clang-format on
  po::positional_options_description pos;
  pos.add("file", 1);
  po::variables_map vm;
  if (!parse_options(args, "info", "FILE.h5", opt, pos, vm)) return 0;

  GLAM_REQUIRE(vm.count("file"), "info needs a corpus file: glam-tokenize info FILE.h5");
  const auto path = vm["file"].as<std::string>();
  const glam::Corpus corpus(path);
  const auto& i = corpus.info();
  std::printf("file            %s\n", path.c_str());
  std::printf("source          %s\n", i.source.c_str());
  std::printf("tokenizer_hash  %s\n", i.tokenizer_hash.c_str());
  std::printf("vocab_size      %lld\n", static_cast<long long>(i.vocab_size));
  std::printf("eod_id          %lld\n", static_cast<long long>(i.eod_id));
  std::printf("n_docs          %lld\n", static_cast<long long>(i.n_docs));
  std::printf("n_tokens        %lld\n", static_cast<long long>(i.n_tokens));
  std::printf("tokens/doc      %.1f\n",
              static_cast<double>(i.n_tokens) / static_cast<double>(i.n_docs));
  return 0;
}

int run(int argc, char** argv) {
  const std::map<std::string, std::function<int(const std::vector<std::string>&)>> commands = {
      {"train-spm", train_spm}, {"encode", encode}, {"info", info}};
  if (argc < 2) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  const std::string command = argv[1];
  if (command == "--help" || command == "-h" || command == "help") {
    std::fputs(kUsage, stdout);
    return 0;
  }
  const auto it = commands.find(command);
  GLAM_REQUIRE(it != commands.end(), "unknown command '", command, "'\n", kUsage);
  return it->second(std::vector<std::string>(argv + 2, argv + argc));
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(nullptr, nullptr);
  int rc = 0;
  try {
    rc = run(argc, argv);
  } catch (const glam::UserError& e) {
    std::fprintf(stderr, "glam-tokenize: error: %s\n", e.what());
    rc = 2;
  } catch (const po::error& e) {
    std::fprintf(stderr, "glam-tokenize: error: %s (see 'glam-tokenize %s --help')\n", e.what(),
                 argc > 1 ? argv[1] : "");
    rc = 2;
  }
  MPI_Finalize();
  return rc;
}
