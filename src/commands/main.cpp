// glam: train, serve and evaluate GLaM-style Mixture-of-Experts language models.
#include <mpi.h>

#include <cstdio>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "glam/base/check.h"
#include "glam/base/cli.h"
#include "glam/commands/commands.h"

namespace {

const std::string& usage() {
  static const std::string text = glam::tool_usage(
      "glam", {{"train", "train a model:  glam train --config input/glam-tiny.cfg --run-dir runs/tiny"},
               {"plan", "parameters, FLOPs, memory, bytes and step time on a mesh:  glam plan --config C --mesh 4x2"},
               {"generate", "continue a prompt:  glam generate --run-dir runs/tiny --prompt \"The\""},
               {"eval", "evaluate tasks or perplexity:  glam eval --run-dir runs/tiny --tasks tasks/"}});
  return text;
}

// Out of memory: say what was being done and how to make it fit. One rank alone
// ends cleanly with 3; with several, the others may wait in a collective, so
// the job is aborted with 3.
int out_of_memory(int rank, const std::string& command) {
  const std::string& what = glam::current_activity();
  std::fprintf(stderr,
               "glam: error on rank %d: out of memory while %s: the model or its batch does not fit in this "
               "machine's memory (`glam plan --config C --mesh DxM` shows the memory per rank; lower the model.* "
               "sizes or train.batch_rows, or use more ranks)\n",
               rank, what.empty() ? ("running glam " + command).c_str() : what.c_str());
  int world = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  if (world > 1) MPI_Abort(MPI_COMM_WORLD, 3);
  return 3;
}

int dispatch(const std::string& cmd, const std::vector<std::string>& args) {
  if (cmd == "train") return glam::train_main(args);
  if (cmd == "plan") return glam::plan_main(args);
  if (cmd == "generate") return glam::generate_main(args);
  if (cmd == "eval") return glam::eval_main(args);
  throw glam::unknown_command(cmd, usage());
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  int rc = 0;
  try {
    if (!glam::top_level_request("glam", usage(), argc, argv))
      rc = dispatch(argv[1], std::vector<std::string>(argv + 2, argv + argc));
  } catch (const glam::UserError& e) {
    if (rank == 0) std::fprintf(stderr, "glam: error: %s\n", e.what());
    rc = 2;
  } catch (const std::bad_alloc&) {
    rc = out_of_memory(rank, argc > 1 ? argv[1] : "");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "glam: error on rank %d: %s\n", rank, e.what());
    MPI_Abort(MPI_COMM_WORLD, 3);
  }
  MPI_Finalize();
  return rc;
}
