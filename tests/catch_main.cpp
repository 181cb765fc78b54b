// Catch2's main for every test executable; MPI is initialised for the whole run
// so tests can build meshes and call HDF5's MPI build.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <mpi.h>

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rc = Catch::Session().run(argc, argv);
  MPI_Finalize();
  return rc;
}
