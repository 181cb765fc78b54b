// The main() of glam, glam-ckpt and glam-tokenize: MPI for the run
// (MpiSession), the top level (usage, help, version, no or unknown command:
// cli.h), the command, and check.h's two error paths:
//  - an error every rank sees the same way: a UserError, a Boost option error
//    ("... (see '<tool> <command> --help')") and, where filesystem_errors_are_input,
//    a std::filesystem error: rank 0 prints "<tool>: error: ..." once, every rank
//    exits 2;
//  - an error of this rank alone: on std::bad_alloc the tool's out_of_memory
//    message and status, then, with several ranks running, MPI_Abort (the others
//    may wait in a collective); any other exception "<tool>: error on rank R: ..."
//    and MPI_Abort with 3.
#pragma once
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "glam/base/cli.h"

namespace glam {

struct Tool {
  Tool(std::string tool_name, std::vector<ToolCommand> tool_commands)
      : name(std::move(tool_name)), commands(std::move(tool_commands)) {}

  std::string name;                   // "glam-ckpt": the usage and the prefix of every error
  std::vector<ToolCommand> commands;  // in the order the usage lists them
  // Rank 0 alone runs the command and every rank exits with its status (a serial
  // tool that initialises MPI only because libhdf5 is the MPI build); else every
  // rank runs it.
  bool root_only = false;
  // The tools act on the user's files: HDF5 prints no error stack of its own (each
  // failure becomes a message naming the file) and a std::filesystem error is bad
  // input. In glam one is an I/O error of one rank.
  bool quiet_hdf5 = false;
  bool filesystem_errors_are_input = false;
  // Prints what this rank says on std::bad_alloc while running `command` (argv[1]
  // or "") and returns the exit status; unset: "out of memory while reading 'FILE'
  // (a damaged size in the file?)" (bounded_read.h's ReadingFile), status 2.
  std::function<int(const Tool& tool, int rank, const std::string& command)> out_of_memory;
};

// Runs tool's command argv[1] on argv[2...]; returns the exit status for main.
int tool_main(const Tool& tool, int argc, char** argv);

}  // namespace glam
