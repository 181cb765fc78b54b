// The 2D device mesh (data x model). Every layer receives `const Mesh&` and asks it
// for the collectives it needs; on a 1x1 mesh each call returns at once, so the
// single-rank code path is the multi-rank one with trivial communicators.
// All MPI traffic of the model goes through this module.
#pragma once
#include <mpi.h>
#include <cstdint>
#include <string>

namespace glam {

struct Mesh {
  int data_size = 1, model_size = 1;   // mesh shape D x M
  int data_rank = 0, model_rank = 0;   // this rank's cell
  int world_rank = 0, world_size = 1;
  MPI_Comm world = MPI_COMM_NULL;      // all ranks of the mesh
  MPI_Comm data_comm = MPI_COMM_NULL;  // ranks that share model_rank (the data axis)
  MPI_Comm model_comm = MPI_COMM_NULL; // ranks that share data_rank (the model axis)

  // Builds a D x M mesh over MPI_COMM_WORLD. shape "DxM"; empty = all ranks on data.
  static Mesh create(const std::string& shape);
  // A 1x1 mesh on MPI_COMM_SELF, for tests and tools.
  static Mesh single();

  bool is_root() const { return world_rank == 0; }

  // Sum (or max) in place over one axis or over the whole mesh.
  void allreduce_sum_model(float* buf, int64_t n) const;
  void allreduce_sum_model(double* buf, int64_t n) const;
  void allreduce_max_model(float* buf, int64_t n) const;
  void allreduce_sum_data(float* buf, int64_t n) const;
  void allreduce_sum_data(double* buf, int64_t n) const;
  void allreduce_sum_world(double* buf, int64_t n) const;

  // Which share of a global dim of size n this rank holds on an axis.
  static int64_t shard_size(int64_t n, int parts) { return n / parts; }
};

}  // namespace glam
