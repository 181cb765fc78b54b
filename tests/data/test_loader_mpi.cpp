// Under mpirun at 1, 2 and 4 ranks: every rank runs its own loader as data rank
// r of N (no coordination), rank 0 gathers the rows and checks that the global
// batch of every step equals the one a single loader (N = 1) makes, before and
// after a restart at step 7. Each rank writes its own copy of the sources.
#include <mpi.h>

#include <catch2/catch.hpp>
#include <filesystem>

#include "glam/data/corpus.h"
#include "glam/data/loader.h"
#include "glam/data/mixture.h"

namespace fs = std::filesystem;

namespace {

std::string write_source(const std::string& dir, const std::string& name, int base, int n_docs) {
  std::vector<std::vector<int32_t>> docs;
  for (int d = 0; d < n_docs; ++d) {
    docs.emplace_back();
    for (int t = 0; t <= d % 5; ++t) docs.back().push_back(base + (d * 5 + t) % 90);
  }
  glam::CorpusInfo info;
  info.source = name;
  info.tokenizer_hash = "00000000000000aa";
  info.vocab_size = 1000;
  info.eod_id = 1;
  const std::string path = dir + "/" + name + ".h5";
  glam::write_corpus(path, docs, info, true);
  return path;
}

glam::MixtureSource source(const std::string& name, double weight, const std::string& path) {
  glam::MixtureSource s;
  s.name = name;
  s.weight = weight;
  s.train = std::make_shared<glam::Corpus>(path);
  return s;
}

}  // namespace

TEST_CASE("every data rank's loader makes its slice of the same global batch", "[loader][mpi]") {
  int rank = 0, ranks = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  const std::string dir = "loader_mpi/rank" + std::to_string(rank);
  fs::create_directories(dir);
  const glam::Mixture mix({source("a", 0.6, write_source(dir, "a", 100, 30)),
                           source("b", 0.3, write_source(dir, "b", 200, 20)),
                           source("c", 0.1, write_source(dir, "c", 300, 9))});
  glam::LoaderOptions opt;
  opt.seed = 2024;
  opt.batch_rows = 8;
  opt.seq_len = 10;
  glam::LoaderOptions whole = opt;
  opt.data_rank = rank;
  opt.data_size = ranks;
  const int64_t local = opt.batch_rows / ranks * opt.seq_len;

  for (int64_t first : {0, 7}) {
    opt.first_step = whole.first_step = first;
    glam::DataLoader mine(mix, opt);
    std::unique_ptr<glam::DataLoader> reference;
    if (rank == 0) reference = std::make_unique<glam::DataLoader>(mix, whole);
    for (int64_t step = first; step < first + 12; ++step) {
      const glam::LoadedBatch b = mine.next();
      REQUIRE(b.step == step);
      std::vector<int32_t> ids(rank == 0 ? ranks * local : 0), targets(ids.size()), segments(ids.size());
      MPI_Gather(b.batch.ids.data(), static_cast<int>(local), MPI_INT32_T, ids.data(),
                 static_cast<int>(local), MPI_INT32_T, 0, MPI_COMM_WORLD);
      MPI_Gather(b.batch.targets.data(), static_cast<int>(local), MPI_INT32_T, targets.data(),
                 static_cast<int>(local), MPI_INT32_T, 0, MPI_COMM_WORLD);
      MPI_Gather(b.batch.segments.data(), static_cast<int>(local), MPI_INT32_T, segments.data(),
                 static_cast<int>(local), MPI_INT32_T, 0, MPI_COMM_WORLD);
      if (rank != 0) continue;
      const glam::LoadedBatch want = reference->next();
      INFO("step " << step << " on " << ranks << " ranks, first step " << first);
      CHECK(ids == want.batch.ids);
      CHECK(targets == want.batch.targets);
      CHECK(segments == want.batch.segments);
      CHECK(b.rows_drawn == want.rows_drawn);
    }
  }
}
