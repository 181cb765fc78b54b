// glam-tokenize: prepares training data for glam.
//   train-spm  trains a SentencePiece model on plain text files
//   encode     turns text or JSON Lines files (gzip or not) into one corpus file
//              (HDF5, see corpus.h) or, under mpirun, into shards and a manifest
//              (shards.h, encode.h)
//   info       prints the header of a corpus file, or checks and sums up a manifest
//   mixture    loads a mixture as training does; times the loader (mixture.h, loader.h)
// Every subcommand takes --help. Bad input is a glam::UserError: main prints
// "glam-tokenize: error: <message>" on stderr and exits with status 2 (glam/base/tool_main.h).
// Errors that every rank sees the same way (bad input) are printed by rank 0 only.
#include <mpi.h>
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <algorithm>
#include <boost/program_options.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <unistd.h>
#include <unordered_map>
#include <vector>

#include "glam/base/check.h"
#include "glam/base/cli.h"
#include "glam/base/tool_main.h"
#include "glam/data/corpus.h"
#include "glam/data/data_comm.h"
#include "glam/data/encode.h"
#include "glam/data/loader.h"
#include "glam/data/mixture.h"
#include "glam/data/shards.h"
#include "glam/data/text_input.h"
#include "glam/data/tokenizer.h"

namespace po = boost::program_options;
namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
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

// The lines of every document of inputs SentencePiece cannot read itself (JSON
// Lines, gzip): one sentence each.
class DocumentLines : public sentencepiece::SentenceIterator {
 public:
  DocumentLines(const std::vector<std::string>& inputs, const glam::InputOptions& in) {
    for (const auto& path : inputs)
      for (const auto& doc : glam::read_documents(path, in)) {
        size_t start = 0;
        while (start <= doc.size()) {
          size_t end = doc.find('\n', start);
          if (end == std::string::npos) end = doc.size();
          if (end > start) lines_.push_back(doc.substr(start, end - start));
          start = end + 1;
        }
      }
  }
  bool done() const override { return i_ >= lines_.size(); }
  void Next() override { ++i_; }
  const std::string& value() const override { return lines_[i_]; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  std::vector<std::string> lines_;
  size_t i_ = 0;
};

// True when SentencePiece can read the file itself: plain, uncompressed text.
bool plain_text(const std::string& path, const glam::InputOptions& in) {
  if (glam::input_format(path, in) != "text") return false;
  std::ifstream f(path, std::ios::binary);
  char magic[2] = {0, 0};
  f.read(magic, 2);
  return !(static_cast<unsigned char>(magic[0]) == 0x1f && static_cast<unsigned char>(magic[1]) == 0x8b);
}

int train_spm(const std::vector<std::string>& args) {
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  po::options_description opt("train-spm options");
  // clang-format off
  opt.add_options()
      ("help,h", "show this help")
      ("input", po::value<std::vector<std::string>>()->required()->composing(),
       "text file, one sentence per line, or JSON Lines, or gzip of either (repeat for several files)")
      ("format", po::value<std::string>()->default_value("auto"),
       "auto (jsonl for *.jsonl[.gz], else text), text, or jsonl (objects with a \"text\" field)")
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
  if (!glam::parse_command_options(args, "glam-tokenize train-spm", synopsis, opt, {}, vm)) return 0;

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

  std::unordered_map<std::string, std::string> spec = {
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
  glam::InputOptions in;
  in.format = vm["format"].as<std::string>();
  std::unique_ptr<DocumentLines> lines;
  if (!std::all_of(inputs.begin(), inputs.end(), [&](const std::string& p) { return plain_text(p, in); })) {
    lines = std::make_unique<DocumentLines>(inputs, in);
    spec.erase("input");
  }
  sentencepiece::SetRandomGeneratorSeed(vm["seed"].as<uint32_t>());
  const auto start = Clock::now();
  const auto status = sentencepiece::SentencePieceTrainer::Train(spec, lines.get());
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

// --output FILE.h5: every document of every input in one corpus file, on one rank.
void encode_one_file(const glam::Tokenizer& tok, const std::vector<std::string>& inputs,
                     const glam::InputOptions& in, const std::string& output,
                     const std::string& source, bool overwrite) {
  int ranks = 1;
  GLAM_CHECK_MPI(MPI_Comm_size(MPI_COMM_WORLD, &ranks));
  GLAM_REQUIRE(ranks == 1, "--output writes one file on one rank; under mpirun use --output-dir");
  GLAM_REQUIRE(overwrite || !fs::exists(output), "output file '", output,
               "' already exists (", glam::kOverwriteHint, ")");
  require_parent_dir(output, "output file");
  const auto start = Clock::now();
  std::vector<std::vector<int32_t>> docs;
  int64_t bytes = 0, tokens = 0, unk = 0, unk_bytes = 0;
  for (const auto& path : inputs) {
    int64_t file_bytes = 0;
    for (const auto& doc : glam::read_documents(path, in, &file_bytes)) {
      docs.push_back(tok.encode(doc, unk, unk_bytes));
      tokens += static_cast<int64_t>(docs.back().size()) + 1;  // + the eod the writer appends
    }
    bytes += file_bytes;
  }
  GLAM_REQUIRE(!docs.empty(), "no documents in the input (", join(inputs, ", "),
               " holds only blank lines)");
  glam::CorpusInfo info;
  info.source = source;
  info.tokenizer_hash = tok.hash();
  info.vocab_size = tok.vocab_size();
  info.eod_id = tok.eod_id();
  glam::write_corpus(output, docs, info, overwrite);
  const double secs = seconds_since(start), mb = bytes / 1e6;
  std::printf(
      "glam-tokenize: encoded %zu docs, %lld tokens (%lld unk) from %.2f MB of text "
      "in %.1f s (%.2f MB/s) -> %s\n",
      docs.size(), static_cast<long long>(tokens), static_cast<long long>(unk), mb, secs,
      mb / std::max(secs, 1e-9), output.c_str());
  if (unk > 0)
    std::fprintf(stderr, "glam-tokenize: warning: %lld <unk> ids stand for %lld bytes of text the model cannot spell\n",
                 static_cast<long long>(unk), static_cast<long long>(unk_bytes));
}

// --output-dir DIR: shards and a manifest, split over the MPI ranks (encode.h).
void encode_shards(const glam::Tokenizer& tok, const glam::EncodeOptions& opt, bool verbose) {
  const glam::DataComm comm = glam::DataComm::world();
  const auto st = glam::encode_shards(tok, opt, comm);
  if (!comm.is_root()) return;
  const int64_t most_read = *std::max_element(st.rank_bytes_read.begin(), st.rank_bytes_read.end());
  if (verbose)
    for (size_t r = 0; r < st.rank_bytes_read.size(); ++r)
      std::printf("glam-tokenize: rank %zu read %lld bytes of the inputs (%.1f%% of %lld)\n", r,
                  static_cast<long long>(st.rank_bytes_read[r]), 100.0 * st.rank_bytes_read[r] / std::max<int64_t>(st.bytes, 1),
                  static_cast<long long>(st.bytes));
  std::printf(
      "glam-tokenize: encoded %lld docs (%lld held out), %lld tokens (%lld unk) from %.2f MB of text "
      "in %.1f s (read %.1f s, at most %.2f MB per rank; %.2f MB/s per rank) -> %s/manifest.json, %lld shards\n",
      static_cast<long long>(st.docs), static_cast<long long>(st.val_docs),
      static_cast<long long>(st.tokens), static_cast<long long>(st.unk_pieces), st.bytes / 1e6,
      st.read_s + st.encode_s, st.read_s, most_read / 1e6, st.rank_mb_per_s, opt.out_dir.c_str(),
      static_cast<long long>(st.shards));
  if (st.unk_pieces > 0)
    std::fprintf(stderr, "glam-tokenize: warning: %lld <unk> ids stand for %lld bytes of text the model cannot spell\n",
                 static_cast<long long>(st.unk_pieces), static_cast<long long>(st.unk_bytes));
}

int encode(const std::vector<std::string>& args) {
  po::options_description opt("encode options");
  // clang-format off
  opt.add_options()
      ("help,h", "show this help")
      ("tokenizer", po::value<std::string>()->required(), "SentencePiece .model file")
      ("input", po::value<std::vector<std::string>>()->required()->composing(),
       "text or JSON Lines file, may be gzip-compressed (repeat for several files)")
      ("output", po::value<std::string>(), "one corpus file to write (.h5), on one rank")
      ("output-dir", po::value<std::string>(),
       "directory for shards and manifest.json. Under mpirun the ranks share the work: each rank "
       "reads its byte range of every uncompressed input; a gzip input cannot be split and is "
       "read whole by one rank (the k-th gzip input by rank k mod ranks)")
      ("source", po::value<std::string>()->required(),
       "name of the text source, stored in the file")
      ("format", po::value<std::string>()->default_value("auto"),
       "auto (jsonl for *.jsonl[.gz], else text), text, or jsonl (objects with a \"text\" field)")
      ("doc-split", po::value<std::string>()->default_value("blank"),
       "text: blank: documents are separated by blank lines; line: one document per line")
      ("val-fraction", po::value<double>()->default_value(0.0),
       "--output-dir: share of documents held out for validation (every 1/F-th)")
      ("shard-mb", po::value<double>()->default_value(16.0),
       "--output-dir: megabytes of text per shard")
      ("progress", po::bool_switch(), "show a progress line on stderr (default: when it is a terminal)")
      ("verbose", po::bool_switch(), "--output-dir: print the bytes each rank read from the inputs")
      ("overwrite", po::bool_switch(), glam::overwrite_help("--output file or --output-dir manifest and shards").c_str());
  // clang-format on
  po::variables_map vm;
  const char* synopsis =
      "--tokenizer M.model --input F [--input F2 ...] (--output OUT.h5 | --output-dir DIR) "
      "--source NAME [options]";
  if (!glam::parse_command_options(args, "glam-tokenize encode", synopsis, opt, {}, vm)) return 0;

  GLAM_REQUIRE(vm.count("output") + vm.count("output-dir") == 1,
               "encode needs one of --output FILE.h5 or --output-dir DIR");
  glam::InputOptions in;
  in.format = vm["format"].as<std::string>();
  in.doc_split = vm["doc-split"].as<std::string>();
  const auto inputs = vm["input"].as<std::vector<std::string>>();
  for (const auto& path : inputs) glam::input_format(path, in);  // checks the two options
  require_input_files(inputs);
  const glam::Tokenizer tok(vm["tokenizer"].as<std::string>());
  const bool overwrite = vm["overwrite"].as<bool>();
  if (vm.count("output")) {
    encode_one_file(tok, inputs, in, vm["output"].as<std::string>(), vm["source"].as<std::string>(),
                    overwrite);
    return 0;
  }
  glam::EncodeOptions eo;
  eo.inputs = inputs;
  eo.input = in;
  eo.out_dir = vm["output-dir"].as<std::string>();
  eo.source = vm["source"].as<std::string>();
  eo.val_fraction = vm["val-fraction"].as<double>();
  eo.shard_bytes = static_cast<int64_t>(vm["shard-mb"].as<double>() * 1e6);
  eo.overwrite = overwrite;
  eo.progress = vm["progress"].as<bool>() || isatty(2);
  encode_shards(tok, eo, vm["verbose"].as<bool>());
  return 0;
}

// ---- info -----------------------------------------------------------------

// Reads every shard of a manifest (checking counts and checksums) and sums it up.
int manifest_info(const std::string& path) {
  const glam::ShardManifest m = glam::read_manifest(path);
  std::printf("manifest        %s\n", path.c_str());
  std::printf("source          %s\n", m.source.c_str());
  std::printf("tokenizer_hash  %s\n", m.tokenizer_hash.c_str());
  std::printf("vocab_size      %lld\n", static_cast<long long>(m.vocab_size));
  std::printf("input_bytes     %lld\n", static_cast<long long>(m.input_bytes));
  std::printf("unk             %lld pieces for %lld bytes\n", static_cast<long long>(m.unk_pieces),
              static_cast<long long>(m.unk_bytes));
  for (const char* split : {"train", "val"}) {
    if (m.n_tokens(split) == 0) continue;
    const glam::Corpus c = glam::load_shards(path, m, split, 0);
    std::printf("%-5s           %zu shards, %lld docs, %lld tokens (checksums verified)\n", split,
                c.shard_infos().size(), static_cast<long long>(c.info().n_docs),
                static_cast<long long>(c.info().n_tokens));
  }
  return 0;
}

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
  if (!glam::parse_command_options(args, "glam-tokenize info", "FILE.h5", opt, pos, vm)) return 0;

  GLAM_REQUIRE(vm.count("file"), "info needs a corpus file: glam-tokenize info FILE.h5");
  const auto path = vm["file"].as<std::string>();
  if (fs::path(path).extension() == ".json") return manifest_info(path);
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

// ---- mixture --------------------------------------------------------------

// Loads a corpus or mixture as `glam train` does, prints its sources and, with
// --steps, runs the loader alone and reports its speed and the epochs drawn.
int mixture(const std::vector<std::string>& args) {
  po::options_description opt("mixture options");
  // clang-format off
  opt.add_options()
      ("help,h", "show this help")
      ("corpus", po::value<std::string>(), "mixture file, manifest.json or .h5 (also the first positional argument)")
      ("steps", po::value<int64_t>()->default_value(0), "run the loader for this many steps")
      ("batch-rows", po::value<int64_t>()->default_value(8), "global rows per step")
      ("seq-len", po::value<int64_t>()->default_value(256), "tokens per row")
      ("seed", po::value<uint64_t>()->default_value(1234), "train.seed");
  // clang-format on
  po::positional_options_description pos;
  pos.add("corpus", 1);
  po::variables_map vm;
  if (!glam::parse_command_options(args, "glam-tokenize mixture", "CORPUS [--steps N --batch-rows B --seq-len S]", opt,
                                   pos, vm))
    return 0;
  GLAM_REQUIRE(vm.count("corpus"), "mixture needs a corpus: glam-tokenize mixture FILE");
  const auto load_start = Clock::now();
  const glam::Mixture mix = glam::Mixture::open(vm["corpus"].as<std::string>());
  std::printf("%-12s %7s %12s %10s %12s  %s\n", "source", "weight", "tokens", "docs", "held-out", "path");
  for (size_t s = 0; s < mix.size(); ++s) {
    const auto& src = mix.source(s);
    std::printf("%-12s %7.4f %12lld %10lld %12lld  %s\n", src.name.c_str(), src.weight,
                static_cast<long long>(src.train->info().n_tokens),
                static_cast<long long>(src.train->info().n_docs),
                static_cast<long long>(src.val ? src.val->info().n_tokens : 0), src.path.c_str());
  }
  std::printf("loaded in %.2f s (checksums verified)\n", seconds_since(load_start));
  const int64_t steps = vm["steps"].as<int64_t>();
  if (steps <= 0) return 0;
  glam::LoaderOptions lo;
  lo.seed = vm["seed"].as<uint64_t>();
  lo.batch_rows = vm["batch-rows"].as<int64_t>();
  lo.seq_len = vm["seq-len"].as<int64_t>();
  GLAM_REQUIRE(lo.batch_rows > 0 && lo.seq_len > 0, "--batch-rows and --seq-len must be positive");
  const auto start = Clock::now();
  glam::DataLoader loader(mix, lo);
  glam::LoadedBatch last;
  for (int64_t i = 0; i < steps; ++i) last = loader.next();
  const double secs = seconds_since(start);
  std::printf("loader: %lld steps of %lld x %lld tokens in %.2f s: %.3g tokens/s (one thread)\n",
              static_cast<long long>(steps), static_cast<long long>(lo.batch_rows),
              static_cast<long long>(lo.seq_len), secs, steps * lo.batch_rows * lo.seq_len / secs);
  for (size_t s = 0; s < mix.size(); ++s)
    std::printf("  %-12s %.4f epochs, %.4f of the rows\n", mix.source(s).name.c_str(),
                glam::epochs_of(mix, last.rows_drawn, s, lo.seq_len),
                static_cast<double>(last.rows_drawn[s]) / static_cast<double>(steps * lo.batch_rows));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  glam::Tool tool{"glam-tokenize",
                  {{"train-spm", "train a SentencePiece model on plain text files", train_spm},
                   {"encode", "tokenize text or JSON Lines files into a corpus file (.h5) or shards", encode},
                   {"info", "print the header of a corpus file (.h5) or check a shard manifest (.json)", info},
                   {"mixture", "check a mixture (sources, weights, sizes) and time its loader", mixture}}};
  tool.quiet_hdf5 = true;
  tool.filesystem_errors_are_input = true;
  return glam::tool_main(tool, argc, argv);
}
