// Parallel encoding into shards (include/glam/data/encode.h): each rank reads its
// part of the inputs, the ranks share the documents' sizes and plan the shards
// from them, the documents of each shard travel to the rank that writes it, the
// per-shard numbers are summed over the ranks and rank 0 writes the manifest.
// All communication goes through DataComm (data_comm.h).
#include "glam/data/encode.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "glam/data/bounded_read.h"
#include "glam/base/check.h"
#include "glam/data/corpus.h"
#include "glam/data/shards.h"

namespace glam {

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

struct ShardPlan {
  std::string file, split;
  std::vector<int64_t> docs;  // indices into the document list, ascending
  int64_t bytes = 0;          // text bytes of those documents
};

bool held_out(size_t i, double f) {
  return std::floor((i + 1) * f) > std::floor(i * f);
}

std::vector<ShardPlan> plan_shards(const std::vector<int64_t>& sizes, const EncodeOptions& opt) {
  std::vector<ShardPlan> train, val;
  for (size_t i = 0; i < sizes.size(); ++i) {
    auto& list = held_out(i, opt.val_fraction) ? val : train;
    if (list.empty() || list.back().bytes >= opt.shard_bytes) list.emplace_back();
    list.back().docs.push_back(static_cast<int64_t>(i));
    list.back().bytes += sizes[i];
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

// This rank's share of the inputs: part `rank` of every uncompressed file and
// the gzip files dealt to it (the k-th gzip input goes to rank k % ranks).
struct LocalDocs {
  std::vector<std::string> docs;  // in input order
  std::vector<int64_t> per_file;  // [inputs] documents of each input held here
  int64_t text_bytes = 0;         // uncompressed bytes of the parts held here
  int64_t bytes_read = 0;         // bytes read from the files
};

InputPart read_part(const std::string& path, const InputOptions& in, bool gzip, const DataComm& comm) {
  if (!gzip) return read_document_range(path, in, comm.rank(), comm.size());
  InputPart part;
  part.docs = read_documents(path, in, &part.text_bytes);
  part.bytes_read = file_bytes(path, "input file");
  return part;
}

// Bad input seen by one rank becomes the same UserError on every rank: the
// first in input order, as one rank reading everything would report it.
LocalDocs read_local(const EncodeOptions& opt, const DataComm& comm) {
  LocalDocs local;
  local.per_file.assign(opt.inputs.size(), 0);
  std::string failure;
  int64_t failed_at = 0;
  int64_t gzips = 0;
  for (size_t f = 0; f < opt.inputs.size() && failure.empty(); ++f) {
    try {
      const bool gzip = is_gzip_file(opt.inputs[f]);
      local.bytes_read += 2;  // the magic bytes
      if (gzip && gzips++ % comm.size() != comm.rank()) continue;
      InputPart part = read_part(opt.inputs[f], opt.input, gzip, comm);
      local.per_file[f] = static_cast<int64_t>(part.docs.size());
      local.text_bytes += part.text_bytes;
      local.bytes_read += part.bytes_read;
      for (auto& d : part.docs) local.docs.push_back(std::move(d));
    } catch (const UserError& e) {
      failure = e.what();
      failed_at = static_cast<int64_t>(f) * comm.size() + comm.rank();
    }
  }
  failure = comm.first_failure(failure, failed_at);
  GLAM_REQUIRE(failure.empty(), failure);
  return local;
}

// Where every document is: their sizes in input order and which rank holds
// each. Documents are ordered by input, then by part (rank) within an input.
struct DocTable {
  std::vector<int64_t> sizes;        // [docs] text bytes of each document
  std::vector<int64_t> piece_first;  // [inputs * ranks + 1] first document of (input f, rank r) at f * ranks + r
  std::vector<int64_t> local_first;  // [inputs] this rank's index of its first document of each input
  int ranks = 1;
  int64_t piece(int64_t doc) const {
    return std::upper_bound(piece_first.begin(), piece_first.end(), doc) - piece_first.begin() - 1;
  }
  int holder(int64_t doc) const { return static_cast<int>(piece(doc) % ranks); }
  // This rank's index of a document it holds.
  int64_t local_index(int64_t doc) const {
    const int64_t p = piece(doc);
    return local_first[p / ranks] + doc - piece_first[p];
  }
};

DocTable gather_table(const LocalDocs& local, const DataComm& comm) {
  const int64_t files = static_cast<int64_t>(local.per_file.size()), ranks = comm.size();
  std::vector<int64_t> mine;
  mine.reserve(local.docs.size());
  for (const auto& d : local.docs) mine.push_back(static_cast<int64_t>(d.size()));
  const std::vector<int64_t> counts = comm.allgather(local.per_file);  // [ranks, inputs]
  std::vector<int64_t> per_rank;
  const std::vector<int64_t> sizes = comm.allgather(mine, &per_rank);  // rank by rank
  DocTable t;
  t.ranks = comm.size();
  t.piece_first.assign(files * ranks + 1, 0);
  for (int64_t p = 0; p < files * ranks; ++p) t.piece_first[p + 1] = t.piece_first[p] + counts[(p % ranks) * files + p / ranks];
  t.sizes.resize(sizes.size());
  int64_t from = 0;  // rank r's sizes start at sizes[from]
  for (int64_t r = 0; r < ranks; from += per_rank[r], ++r)
    for (int64_t f = 0, k = from; f < files; ++f)
      for (int64_t i = 0; i < counts[r * files + f]; ++i) t.sizes[t.piece_first[f * ranks + r] + i] = sizes[k++];
  t.local_first.assign(files, 0);
  for (int64_t f = 1; f < files; ++f) t.local_first[f] = t.local_first[f - 1] + local.per_file[f - 1];
  return t;
}

// Collective, once per round of shards: shard round * ranks + d goes to rank d,
// each rank sending the documents of it that it holds. Returns the documents
// of this rank's shard of the round (none when it has no shard).
std::vector<std::string> exchange_round(size_t round, const std::vector<ShardPlan>& plan, const DocTable& t,
                                        const LocalDocs& local, const DataComm& comm) {
  const int ranks = comm.size();
  std::string send, recv;
  std::vector<int64_t> send_counts(ranks, 0), recv_counts(ranks, 0);
  for (int d = 0; d < ranks; ++d) {
    const size_t j = round * ranks + d;
    if (j >= plan.size()) break;
    for (int64_t g : plan[j].docs) {
      if (t.holder(g) != comm.rank()) continue;
      send += local.docs[t.local_index(g)];
      send_counts[d] += t.sizes[g];
    }
  }
  const size_t mine = round * ranks + comm.rank();
  if (mine < plan.size())
    for (int64_t g : plan[mine].docs) recv_counts[t.holder(g)] += t.sizes[g];
  comm.alltoallv_bytes(send, send_counts, recv, recv_counts);
  std::vector<std::string> docs;
  if (mine >= plan.size()) return docs;
  std::vector<int64_t> at(ranks, 0);  // where rank r's next document starts in recv
  for (int r = 1; r < ranks; ++r) at[r] = at[r - 1] + recv_counts[r - 1];
  for (int64_t g : plan[mine].docs) {
    int64_t& pos = at[t.holder(g)];
    docs.push_back(recv.substr(static_cast<size_t>(pos), static_cast<size_t>(t.sizes[g])));
    pos += t.sizes[g];
  }
  return docs;
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
  ids.reserve(docs.size());
  for (const auto& d : docs) {
    ids.push_back(tok.encode(d, out[3], out[4]));
    done += static_cast<int64_t>(d.size());
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

// Tokenizes and writes this rank's shards (j % ranks == rank), one round of
// exchanges at a time; fields [shards, kFields] gets this rank's numbers.
struct EncodeRun {
  std::vector<int64_t> fields;
  int64_t done = 0;  // text bytes tokenized here
  double secs = 0;
  bool bad = false;
};

EncodeRun encode_rounds(const Tokenizer& tok, const EncodeOptions& opt, const std::vector<ShardPlan>& plan,
                        const DocTable& table, const LocalDocs& local, const DataComm& comm) {
  int64_t mine = 0;
  for (size_t j = comm.rank(); j < plan.size(); j += comm.size()) mine += plan[j].bytes;
  Progress progress(opt.progress && comm.is_root(), mine, comm.size());
  EncodeRun run;
  run.fields.assign(plan.size() * kFields, 0);
  const auto t_encode = Clock::now();
  for (size_t round = 0; round * comm.size() < plan.size(); ++round) {
    const std::vector<std::string> docs = exchange_round(round, plan, table, local, comm);
    const size_t j = round * comm.size() + comm.rank();
    if (j >= plan.size() || run.bad) continue;
    try {
      encode_shard(tok, docs, plan[j], opt, &run.fields[j * kFields], progress, run.done);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "glam-tokenize: error on rank %d: %s\n", comm.rank(), e.what());
      run.bad = true;
    }
  }
  progress.update(run.done, true);
  run.secs = seconds_since(t_encode);
  return run;
}

void prepare_output(const EncodeOptions& opt, const DataComm& comm) {
  std::string failure;
  if (comm.is_root()) {
    try {
      prepare_out_dir(opt.out_dir);
    } catch (const std::exception& e) {
      failure = e.what();
    }
  }
  GLAM_REQUIRE(!comm.any(comm.is_root() && !failure.empty()), "cannot prepare --output-dir '", opt.out_dir,
               "'", failure.empty() ? "" : ": ", failure);
}

ShardManifest manifest_of(const Tokenizer& tok, const EncodeOptions& opt, const std::vector<ShardPlan>& plan,
                          const std::vector<int64_t>& fields, int64_t input_bytes) {
  ShardManifest m;
  m.source = opt.source;
  m.tokenizer_hash = tok.hash();
  m.vocab_size = tok.vocab_size();
  m.eod_id = tok.eod_id();
  m.input_bytes = input_bytes;
  for (size_t j = 0; j < plan.size(); ++j) {
    const int64_t* f = &fields[j * kFields];
    m.shards.push_back({plan[j].file, plan[j].split, f[0], f[1], static_cast<uint64_t>(f[2])});
    m.unk_pieces += f[3];
    m.unk_bytes += f[4];
  }
  return m;
}

}  // namespace

EncodeStats encode_shards(const Tokenizer& tok, const EncodeOptions& opt, const DataComm& comm) {
  check_options(opt);
  EncodeStats st;
  const auto t_read = Clock::now();
  const LocalDocs local = read_local(opt, comm);
  const DocTable table = gather_table(local, comm);
  GLAM_REQUIRE(!table.sizes.empty(), "no documents in the input (", opt.inputs.front(),
               opt.inputs.size() > 1 ? " ..." : "", " holds only blank lines)");
  const std::vector<ShardPlan> plan = plan_shards(table.sizes, opt);
  GLAM_REQUIRE(std::any_of(plan.begin(), plan.end(), [](const ShardPlan& p) { return p.split == "train"; }),
               "--val-fraction ", opt.val_fraction, " leaves no training document");
  st.read_s = comm.max(seconds_since(t_read));
  st.rank_bytes_read = comm.allgather({local.bytes_read});
  st.bytes = local.text_bytes;
  comm.sum(&st.bytes, 1);
  prepare_output(opt, comm);

  EncodeRun run = encode_rounds(tok, opt, plan, table, local, comm);
  GLAM_REQUIRE(!comm.any(run.bad), "encoding into '", opt.out_dir, "' failed on a rank (see its message above)");
  comm.sum(run.fields.data(), static_cast<int64_t>(run.fields.size()));
  double rate[2] = {run.done / 1e6 / std::max(run.secs, 1e-9), run.done > 0 ? 1.0 : 0.0};  // MB/s, busy ranks
  comm.sum(rate, 2);
  const ShardManifest m = manifest_of(tok, opt, plan, run.fields, st.bytes);
  if (comm.is_root()) write_manifest((fs::path(opt.out_dir) / "manifest.json").string(), m);
  comm.barrier();
  for (const auto& s : m.shards) {
    st.tokens += s.n_tokens;
    if (s.split == "val") st.val_docs += s.n_docs;
  }
  st.docs = static_cast<int64_t>(table.sizes.size());
  st.unk_pieces = m.unk_pieces;
  st.unk_bytes = m.unk_bytes;
  st.shards = static_cast<int64_t>(plan.size());
  st.encode_s = comm.max(run.secs);
  st.rank_mb_per_s = rate[0] / std::max(rate[1], 1.0);
  return st;
}

}  // namespace glam
