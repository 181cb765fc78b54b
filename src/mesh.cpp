// The data x model mesh over MPI. Ranks of one model group are consecutive in
// MPI_COMM_WORLD (row-major Cartesian layout, model the fast axis), so a model
// group stays inside a node when ranks are placed node by node.
#include "glam/mesh.h"

#include <cstdio>

#include "glam/check.h"

namespace glam {

namespace {

void parse_shape(const std::string& shape, int world, int* D, int* M) {
  if (shape.empty()) { *D = world; *M = 1; return; }
  int d = 0, m = 0;
  char x = 0, extra = 0;
  GLAM_REQUIRE(std::sscanf(shape.c_str(), "%d%c%d%c", &d, &x, &m, &extra) == 3 && x == 'x' && d > 0 && m > 0,
               "--mesh: expected DxM with positive integers (e.g. 2x2), got '", shape, "'");
  GLAM_REQUIRE(d * m == world, "--mesh ", shape, " has ", d * m, " cells but ", world,
               " MPI ranks were started; use mpirun -np ", d * m);
  *D = d; *M = m;
}

}  // namespace

Mesh Mesh::create(const std::string& shape) {
  Mesh mesh;
  GLAM_CHECK_MPI(MPI_Comm_size(MPI_COMM_WORLD, &mesh.world_size));
  parse_shape(shape, mesh.world_size, &mesh.data_size, &mesh.model_size);
  int dims[2] = {mesh.data_size, mesh.model_size}, periods[2] = {0, 0};
  GLAM_CHECK_MPI(MPI_Cart_create(MPI_COMM_WORLD, 2, dims, periods, 0, &mesh.world));
  GLAM_CHECK_MPI(MPI_Comm_rank(mesh.world, &mesh.world_rank));
  int coords[2];
  GLAM_CHECK_MPI(MPI_Cart_coords(mesh.world, mesh.world_rank, 2, coords));
  mesh.data_rank = coords[0];
  mesh.model_rank = coords[1];
  int keep_data[2] = {1, 0}, keep_model[2] = {0, 1};
  GLAM_CHECK_MPI(MPI_Cart_sub(mesh.world, keep_data, &mesh.data_comm));
  GLAM_CHECK_MPI(MPI_Cart_sub(mesh.world, keep_model, &mesh.model_comm));
  return mesh;
}

Mesh Mesh::single() {
  Mesh mesh;
  mesh.world = mesh.data_comm = mesh.model_comm = MPI_COMM_SELF;
  return mesh;
}

void Mesh::allreduce_sum_model(float* buf, int64_t n) const {
  if (model_size == 1) return;
  GLAM_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, buf, static_cast<int>(n), MPI_FLOAT, MPI_SUM, model_comm));
}

void Mesh::allreduce_sum_model(double* buf, int64_t n) const {
  if (model_size == 1) return;
  GLAM_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, buf, static_cast<int>(n), MPI_DOUBLE, MPI_SUM, model_comm));
}

void Mesh::allreduce_max_model(float* buf, int64_t n) const {
  if (model_size == 1) return;
  GLAM_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, buf, static_cast<int>(n), MPI_FLOAT, MPI_MAX, model_comm));
}

void Mesh::allreduce_sum_data(float* buf, int64_t n) const {
  if (data_size == 1) return;
  GLAM_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, buf, static_cast<int>(n), MPI_FLOAT, MPI_SUM, data_comm));
}

void Mesh::allreduce_sum_data(double* buf, int64_t n) const {
  if (data_size == 1) return;
  GLAM_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, buf, static_cast<int>(n), MPI_DOUBLE, MPI_SUM, data_comm));
}

void Mesh::allreduce_sum_world(double* buf, int64_t n) const {
  if (world_size == 1) return;
  GLAM_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, buf, static_cast<int>(n), MPI_DOUBLE, MPI_SUM, world));
}

}  // namespace glam
