// Parallel encoding into shards (include/glam/encode.h): plan the shards from
// the documents, tokenize this rank's shards, sum the per-shard numbers over the
// ranks, and let rank 0 write the manifest.
#include "glam/encode.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "glam/check.h"
#include "glam/corpus.h"
#include "glam/shards.h"

namespace glam {

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

struct ShardPlan {
  std::string file, split;
  std::vector<size_t> docs;  // indices into the document list
  int64_t bytes = 0;         // text bytes of those documents
};

bool held_out(size_t i, double f) {
  return std::floor((i + 1) * f) > std::floor(i * f);
}

std::vector<ShardPlan> plan_shards(const std::vector<std::string>& docs, const EncodeOptions& opt) {
  std::vector<ShardPlan> train, val;
  for (size_t i = 0; i < docs.size(); ++i) {
    auto& list = held_out(i, opt.val_fraction) ? val : train;
    if (list.empty() || list.back().bytes >= opt.shard_bytes) list.emplace_back();
    list.back().docs.push_back(i);
    list.back().bytes += static_cast<int64_t>(docs[i].size());
  }
  char name[32];
  for (size_t j = 0; j < train.size(); ++j) {
    std::snprintf(name, sizeof name, "train-%05zu.h5", j);
    train[j].file = name;
    train[j].split = "train";
  }
  for (size_t j = 0; j < val.size(); ++j) {
    std::snprintf(name, sizeof name, "val-%05zu.h5", j);
    val[j].file = name;
    val[j].split = "val";
  }
  train.insert(train.end(), val.begin(), val.end());
  return train;
}

// "encode  45% | 12.3 of 27.0 MB | 3.10 MB/s per rank | ETA 5 s" on rank 0.
class Progress {
 public:
  Progress(bool on, int64_t total_bytes, int ranks)
      : on_(on), tty_(isatty(2)), total_(total_bytes), ranks_(ranks), start_(Clock::now()), last_(start_) {}
  void update(int64_t done, bool final = false) {
    if (!on_) return;
    const double since = std::chrono::duration<double>(Clock::now() - last_).count();
    if (!final && since < (tty_ ? 0.25 : 5.0)) return;
    last_ = Clock::now();
    const double secs = std::max(1e-9, seconds_since(start_));
    const double rate = done / secs;
    const double eta = rate > 0 ? (total_ - done) / rate : 0;
    std::fprintf(stderr, "%sencode %3.0f%% | %.1f of %.1f MB (rank 0 of %d) | %.2f MB/s per rank | ETA %.0f s%s",
                 tty_ ? "\r" : "", total_ ? 100.0 * done / total_ : 100.0, done / 1e6, total_ / 1e6,
                 ranks_, rate / 1e6, eta, tty_ && !final ? "" : "\n");
    std::fflush(stderr);
  }

 private:
  bool on_, tty_;
  int64_t total_;
  int ranks_;
  Clock::time_point start_, last_;
};

// Per shard, summed over ranks: n_docs, n_tokens, checksum, unk_pieces, unk_bytes.
constexpr int kFields = 5;

void encode_shard(const Tokenizer& tok, const std::vector<std::string>& docs, const ShardPlan& plan,
                  const EncodeOptions& opt, int64_t* out, Progress& progress, int64_t& done) {
  std::vector<std::vector<int32_t>> ids;
  ids.reserve(plan.docs.size());
  for (size_t d : plan.docs) {
    ids.push_back(tok.encode(docs[d], out[3], out[4]));
    done += static_cast<int64_t>(docs[d].size());
    progress.update(done);
  }
  CorpusInfo info;
  info.source = opt.source;
  info.tokenizer_hash = tok.hash();
  info.vocab_size = tok.vocab_size();
  info.eod_id = tok.eod_id();
  const CorpusInfo written = write_corpus((fs::path(opt.out_dir) / plan.file).string(), ids, info, true);
  out[0] = written.n_docs;
  out[1] = written.n_tokens;
  out[2] = static_cast<int64_t>(written.checksum);
}

void check_options(const EncodeOptions& opt) {
  GLAM_REQUIRE(!opt.inputs.empty(), "encode needs at least one --input");
  GLAM_REQUIRE(opt.val_fraction >= 0 && opt.val_fraction <= 0.5, "--val-fraction must be in [0, 0.5], not ",
               opt.val_fraction);
  GLAM_REQUIRE(opt.shard_bytes > 0, "--shard-mb must be positive");
  GLAM_REQUIRE(!opt.source.empty() && opt.source.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                                                   "0123456789_-.") == std::string::npos,
               "--source '", opt.source, "' may hold only letters, digits, '_', '-' and '.' (it names the source in mixtures and logs)");
  const fs::path manifest = fs::path(opt.out_dir) / "manifest.json";
  GLAM_REQUIRE(!fs::exists(opt.out_dir) || fs::is_directory(opt.out_dir), "--output-dir '", opt.out_dir,
               "' exists and is not a directory");
  GLAM_REQUIRE(opt.overwrite || !fs::exists(manifest), "output '", manifest.string(),
               "' already exists (pass --overwrite to replace it and its shards)");
}

// Rank 0: the directory exists and holds no shard of an earlier run.
void prepare_out_dir(const std::string& dir) {
  fs::create_directories(dir);
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if ((name.rfind("train-", 0) == 0 || name.rfind("val-", 0) == 0) && entry.path().extension() == ".h5")
      fs::remove(entry.path());
  }
  fs::remove(fs::path(dir) / "manifest.json");
}

}  // namespace

EncodeStats encode_shards(const Tokenizer& tok, const EncodeOptions& opt, MPI_Comm comm) {
  int rank = 0, ranks = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &ranks);
  check_options(opt);
  EncodeStats st;
  const auto t_read = Clock::now();
  std::vector<std::string> docs;
  for (const auto& path : opt.inputs) {
    int64_t bytes = 0;
    auto part = read_documents(path, opt.input, &bytes);
    st.bytes += bytes;
    for (auto& d : part) docs.push_back(std::move(d));
  }
  GLAM_REQUIRE(!docs.empty(), "no documents in the input (", opt.inputs.front(),
               opt.inputs.size() > 1 ? " ..." : "", " holds only blank lines)");
  const std::vector<ShardPlan> plan = plan_shards(docs, opt);
  GLAM_REQUIRE(std::any_of(plan.begin(), plan.end(), [](const ShardPlan& p) { return p.split == "train"; }),
               "--val-fraction ", opt.val_fraction, " leaves no training document");
  st.read_s = seconds_since(t_read);
  std::string failure;
  if (rank == 0) {
    try {
      prepare_out_dir(opt.out_dir);
    } catch (const std::exception& e) {
      failure = e.what();
    }
  }
  int bad = !failure.empty();
  MPI_Bcast(&bad, 1, MPI_INT, 0, comm);
  GLAM_REQUIRE(!bad, "cannot prepare --output-dir '", opt.out_dir, "'", failure.empty() ? "" : ": ", failure);

  int64_t mine = 0;
  for (size_t j = rank; j < plan.size(); j += ranks) mine += plan[j].bytes;
  Progress progress(opt.progress && rank == 0, mine, ranks);
  std::vector<int64_t> fields(plan.size() * kFields, 0);
  const auto t_encode = Clock::now();
  int64_t done = 0;
  try {
    for (size_t j = rank; j < plan.size(); j += ranks)
      encode_shard(tok, docs, plan[j], opt, &fields[j * kFields], progress, done);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "glam-tokenize: error on rank %d: %s\n", rank, e.what());
    bad = 1;
  }
  progress.update(done, true);
  double secs = seconds_since(t_encode), mb_per_s = done / 1e6 / std::max(secs, 1e-9);
  int busy = done > 0;
  MPI_Allreduce(MPI_IN_PLACE, &bad, 1, MPI_INT, MPI_MAX, comm);
  GLAM_REQUIRE(!bad, "encoding into '", opt.out_dir, "' failed on a rank (see its message above)");
  MPI_Allreduce(MPI_IN_PLACE, fields.data(), static_cast<int>(fields.size()), MPI_INT64_T, MPI_SUM, comm);
  MPI_Allreduce(MPI_IN_PLACE, &secs, 1, MPI_DOUBLE, MPI_MAX, comm);
  MPI_Allreduce(MPI_IN_PLACE, &mb_per_s, 1, MPI_DOUBLE, MPI_SUM, comm);
  MPI_Allreduce(MPI_IN_PLACE, &busy, 1, MPI_INT, MPI_SUM, comm);

  ShardManifest m;
  m.source = opt.source;
  m.tokenizer_hash = tok.hash();
  m.vocab_size = tok.vocab_size();
  m.eod_id = tok.eod_id();
  m.input_bytes = st.bytes;
  for (size_t j = 0; j < plan.size(); ++j) {
    const int64_t* f = &fields[j * kFields];
    m.shards.push_back({plan[j].file, plan[j].split, f[0], f[1], static_cast<uint64_t>(f[2])});
    m.unk_pieces += f[3];
    m.unk_bytes += f[4];
    st.tokens += f[1];
    if (plan[j].split == "val") st.val_docs += f[0];
  }
  if (rank == 0) write_manifest((fs::path(opt.out_dir) / "manifest.json").string(), m);
  MPI_Barrier(comm);
  st.docs = static_cast<int64_t>(docs.size());
  st.unk_pieces = m.unk_pieces;
  st.unk_bytes = m.unk_bytes;
  st.shards = static_cast<int64_t>(plan.size());
  st.encode_s = secs;
  st.rank_mb_per_s = mb_per_s / std::max(busy, 1);
  return st;
}

}  // namespace glam
