// The main() of every glam program (include/glam/base/tool_main.h).
#include "glam/base/tool_main.h"

#include <hdf5.h>

#include <cstdio>
#include <filesystem>
#include <new>

#include "glam/base/check.h"
#include "glam/base/mpi_session.h"
#include "glam/data/bounded_read.h"

namespace po = boost::program_options;

namespace glam {

namespace {

int run_command(const Tool& tool, const std::string& usage, int argc, char** argv) {
  if (top_level_request(tool.name, usage, argc, argv)) return 0;  // help, version
  const std::string command = argv[1];
  for (const ToolCommand& c : tool.commands)
    if (c.name == command) return c.run(std::vector<std::string>(argv + 2, argv + argc));
  throw unknown_command(command, usage);
}

int reading_file_out_of_memory(const Tool& tool, int rank, const std::string&) {
  const std::string file = ReadingFile::current();
  std::fprintf(stderr, "%s: error: out of memory while reading '%s' (a damaged size in the file?)\n",
               tool.name.c_str(), file.empty() ? "the input" : file.c_str());
  return 2;
}

// Bad input every rank sees the same way: rank 0 says it once.
int input_error(const Tool& tool, const MpiSession& mpi, const std::string& what) {
  if (mpi.rank() == 0) {
    std::fflush(stdout);
    std::fprintf(stderr, "%s: error: %s\n", tool.name.c_str(), what.c_str());
  }
  return 2;
}

// run_command with check.h's two error paths (tool_main.h).
int run_reporting(const Tool& tool, const MpiSession& mpi, int argc, char** argv) {
  const std::string command = argc > 1 ? argv[1] : "";
  const bool alone = tool.root_only || mpi.size() == 1;
  try {
    return run_command(tool, tool_usage(tool.name, tool.commands), argc, argv);
  } catch (const UserError& e) {
    return input_error(tool, mpi, e.what());
  } catch (const po::error& e) {
    return input_error(tool, mpi, msg(e.what(), " (see '", tool.name, " ", command, " --help')"));
  } catch (const std::filesystem::filesystem_error& e) {
    if (!tool.filesystem_errors_are_input) throw;
    return input_error(tool, mpi, e.what());
  } catch (const std::bad_alloc&) {
    const auto& say = tool.out_of_memory ? tool.out_of_memory : reading_file_out_of_memory;
    const int status = say(tool, mpi.rank(), command);
    if (!alone) mpi.abort(status);
    return status;
  }
}

}  // namespace

int tool_main(const Tool& tool, int argc, char** argv) {
  MpiSession mpi(&argc, &argv);
  if (tool.quiet_hdf5) GLAM_CHECK_H5(H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr));
  int status = 0;
  try {
    if (!tool.root_only || mpi.rank() == 0) status = run_reporting(tool, mpi, argc, argv);
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "%s: error on rank %d: %s\n", tool.name.c_str(), mpi.rank(), e.what());
    mpi.abort(3);
  }
  return tool.root_only ? mpi.broadcast_from_root(status) : status;
}

}  // namespace glam
