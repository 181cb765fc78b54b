// GLAM_CHECK_MPI can fire: MpiSession sets MPI_ERRORS_RETURN on MPI_COMM_WORLD
// and MPI_COMM_SELF, the communicators the mesh makes from WORLD inherit it, and
// the error names the call and MPI's error string. The hidden [.fatal] cases are
// the whole path (message on stderr, exit 3), run by CTest as separate processes
// (tests/CMakeLists.txt: test_mpi_check_fatal_*).
#include <catch2/catch.hpp>
#include <mpi.h>

#include <string>
#include <vector>

#include "glam/base/check.h"
#include "glam/base/mpi_session.h"
#include "glam/mesh/mesh.h"

using Catch::Matchers::Contains;
using glam::MpiSession;

namespace {

bool returns_errors(MPI_Comm comm) {
  MPI_Errhandler handler = MPI_ERRHANDLER_NULL;
  REQUIRE(MPI_Comm_get_errhandler(comm, &handler) == MPI_SUCCESS);
  const bool returns = handler == MPI_ERRORS_RETURN;
  MPI_Errhandler_free(&handler);
  return returns;
}

std::string error_string(int rc) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  REQUIRE(MPI_Error_string(rc, text, &length) == MPI_SUCCESS);
  return std::string(text, length);
}

}  // namespace

TEST_CASE("MpiSession makes MPI return errors on WORLD, SELF and what the mesh derives from WORLD") {
  const MpiSession mpi(nullptr, nullptr);  // MPI is initialised already: the handler only
  CHECK(returns_errors(MPI_COMM_WORLD));
  CHECK(returns_errors(MPI_COMM_SELF));
  // What Mesh::create builds: a Cartesian communicator on WORLD and its two axes.
  int dims[2] = {mpi.size(), 1}, periods[2] = {0, 0}, keep_data[2] = {1, 0}, keep_model[2] = {0, 1};
  MPI_Comm cart = MPI_COMM_NULL, data = MPI_COMM_NULL, model = MPI_COMM_NULL;
  REQUIRE(MPI_Cart_create(MPI_COMM_WORLD, 2, dims, periods, 0, &cart) == MPI_SUCCESS);
  REQUIRE(MPI_Cart_sub(cart, keep_data, &data) == MPI_SUCCESS);
  REQUIRE(MPI_Cart_sub(cart, keep_model, &model) == MPI_SUCCESS);
  CHECK(returns_errors(cart));
  CHECK(returns_errors(data));
  CHECK(returns_errors(model));
  for (MPI_Comm* c : {&model, &data, &cart}) MPI_Comm_free(c);
}

TEST_CASE("A failed MPI call returns its code, and mpi_error names the call and MPI's error string") {
  const MpiSession mpi(nullptr, nullptr);
  int rank = -1;
  const int rc = MPI_Comm_rank(MPI_COMM_NULL, &rank);  // the default handler would abort here
  REQUIRE(rc != MPI_SUCCESS);
  const std::string expected = error_string(rc);
  CHECK_FALSE(expected.empty());
  const std::string what = glam::mpi_error(rc, "MPI_Comm_rank(MPI_COMM_NULL, &rank)");
  CHECK(what == "MPI call failed: MPI_Comm_rank(MPI_COMM_NULL, &rank): " + expected);
}

// GLAM_CHECK_MPI on a call with an invalid communicator: "glam: fatal on rank 0:
// MPI call failed: MPI_Comm_rank(MPI_COMM_NULL, &rank): <MPI's string> (file:line)", exit 3.
TEST_CASE("GLAM_CHECK_MPI ends the job naming the call", "[.fatal_world]") {
  const MpiSession mpi(nullptr, nullptr);
  int rank = -1;
  GLAM_CHECK_MPI(MPI_Comm_rank(MPI_COMM_NULL, &rank));
  FAIL("GLAM_CHECK_MPI returned after a failed call");
}

// The same on the mesh's data axis (2 ranks or more): an all-to-all with an
// invalid datatype fails inside Mesh, on a communicator derived from WORLD.
TEST_CASE("GLAM_CHECK_MPI fires on the mesh's communicators", "[.fatal_mesh]") {
  const MpiSession mpi(nullptr, nullptr);
  const glam::Mesh mesh = glam::Mesh::create("");
  REQUIRE(mesh.data_size > 1);
  const std::vector<int64_t> rows(static_cast<size_t>(mesh.data_size), 1);
  std::vector<float> send(rows.size()), recv(rows.size());
  mesh.alltoallv_rows(send.data(), rows, recv.data(), rows, 1, MPI_DATATYPE_NULL, sizeof(float));
  FAIL("GLAM_CHECK_MPI returned after a failed call");
}
