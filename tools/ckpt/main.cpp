// glam-ckpt: looks after glam checkpoints (schema: docs/CHECKPOINT.md).
//   inspect  prints the training state, the config and every dataset of a checkpoint
//   verify   recomputes every checksum and checks the shapes against the stored config
//   export   writes the weights alone as a glam weights file (HDF5) or as safetensors
//   reshard  splits a checkpoint into one file per rank of a DxM mesh
//   convert  converts a checkpoint to another format version
// One file per command in tools/ckpt/, the shared pieces in ckpt.h. Every
// subcommand takes --help. Bad input is a glam::UserError: main prints
// "glam-ckpt: error: <message>" on stderr and exits with status 2 (verify also
// exits 2 after naming each bad dataset; glam/base/tool_main.h).
// Every rank of mpirun runs the command: verify, export and reshard split their
// reads and writes over the ranks (pieces.cpp), each rank holding at most
// --memory-limit bytes of tensor data; inspect and convert run on rank 0. A
// failure on one rank reaches every rank (Team::agree, team.cpp): all exit 2.
#include "ckpt.h"
#include "glam/base/tool_main.h"

int main(int argc, char** argv) {
  namespace ckpt = glam::ckpt;
  glam::Tool tool{
      "glam-ckpt",
      {{"inspect", "print the training state, config and datasets of a checkpoint", ckpt::inspect},
       {"verify", "recompute every checksum and check shapes against the stored config (parallel under mpirun)",
        ckpt::verify},
       {"export", "write the weights alone (glam HDF5 weights file or safetensors, f32 or bf16; parallel)",
        ckpt::export_weights},
       {"reshard", "write one file per rank of a DxM mesh holding that rank's shards (parallel)", ckpt::reshard},
       {"convert", "convert a checkpoint to another format version", ckpt::convert}}};
  tool.root_only = false;  // every rank runs the command: verify, export, reshard share the work
  tool.quiet_hdf5 = true;
  tool.filesystem_errors_are_input = true;
  return glam::tool_main(tool, argc, argv);
}
