// glam-ckpt: looks after glam checkpoints (schema: docs/CHECKPOINT.md).
//   inspect  prints the training state, the config and every dataset of a checkpoint
//   verify   recomputes every checksum and checks the shapes against the stored config
//   export   writes the weights alone as a glam weights file (HDF5) or as safetensors
//   reshard  splits a checkpoint into one file per rank of a DxM mesh
//   convert  converts a checkpoint to another format version
// One file per command in tools/ckpt/, the shared pieces in ckpt.h. Every
// subcommand takes --help. Bad input is a glam::UserError: main prints
// "glam-ckpt: error: <message>" on stderr and exits with status 2 (verify also
// exits 2 after naming each bad dataset). The tool is serial: MPI is initialised
// only because libhdf5 is the MPI build; under mpirun rank 0 does the work.
// Tensors are read in slabs of whole leading-dim slices (--chunk-bytes), so a
// tensor larger than memory can be verified, exported and resharded.
#include <mpi.h>

#include <cstdio>
#include <filesystem>
#include <new>

#include "ckpt.h"
#include "glam/data/bounded_read.h"
#include "glam/base/cli.h"

namespace {

const std::string& usage() {
  static const std::string text = glam::tool_usage(
      "glam-ckpt",
      {{"inspect", "print the training state, config and datasets of a checkpoint"},
       {"verify", "recompute every checksum and check shapes against the stored config"},
       {"export", "write the weights alone (glam HDF5 weights file or safetensors, f32 or bf16)"},
       {"reshard", "write one file per rank of a DxM mesh holding that rank's shards"},
       {"convert", "convert a checkpoint to another format version"}});
  return text;
}

int run(int argc, char** argv) {
  namespace ckpt = glam::ckpt;
  if (glam::top_level_request("glam-ckpt", usage(), argc, argv)) return 0;  // help, version
  const std::string command = argv[1];
  const std::vector<std::string> args(argv + 2, argv + argc);
  if (command == "inspect") return ckpt::inspect(args);
  if (command == "verify") return ckpt::verify(args);
  if (command == "export") return ckpt::export_weights(args);
  if (command == "reshard") return ckpt::reshard(args);
  if (command == "convert") return ckpt::convert(args);
  throw glam::unknown_command(command, usage());
}

// run(), every error it throws printed as "glam-ckpt: error: ..." with status 2.
int run_reporting(int argc, char** argv) {
  std::string what;
  try {
    return run(argc, argv);
  } catch (const glam::UserError& e) {
    what = e.what();
  } catch (const boost::program_options::error& e) {
    what = glam::msg(e.what(), " (see 'glam-ckpt ", argc > 1 ? argv[1] : "", " --help')");
  } catch (const std::filesystem::filesystem_error& e) {
    what = e.what();
  } catch (const std::bad_alloc&) {
    const std::string file = glam::ReadingFile::current();
    what = glam::msg("out of memory while reading '", file.empty() ? "the input" : file,
                     "' (a damaged size in the file?)");
  }
  std::fflush(stdout);
  std::fprintf(stderr, "glam-ckpt: error: %s\n", what.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(nullptr, nullptr);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);  // failures become messages naming the file
  int rc = rank == 0 ? run_reporting(argc, argv) : 0;
  MPI_Bcast(&rc, 1, MPI_INT, 0, MPI_COMM_WORLD);
  MPI_Finalize();
  return rc;
}
