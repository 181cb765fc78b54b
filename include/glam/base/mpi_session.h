// MPI for the life of a program: MPI_Init, then MPI_ERRORS_RETURN on
// MPI_COMM_WORLD and MPI_COMM_SELF, and MPI_Finalize at the end. Under MPI's default handler
// (MPI_ERRORS_ARE_FATAL) a failed call aborts the job inside MPI, before
// GLAM_CHECK_MPI (check.h) sees its code; with MPI_ERRORS_RETURN the call returns
// the code and the check names the call, the file and line and MPI's error
// string. Communicators made from WORLD inherit its handler (MPI-3.1 section 8.3):
// the mesh's Cartesian communicator, its two axes (MPI_Cart_sub), the replica
// groups and every MPI_Comm_split or MPI_Comm_dup of them (tests/test_mpi_check.cpp
// checks it). tool_main (tool_main.h) holds one for glam, glam-ckpt and glam-tokenize.
#pragma once

namespace glam {

class MpiSession {
 public:
  // Initialises MPI (argc and argv may be null). Where MPI is already initialised
  // (the test runner's main), only sets the handler and leaves finalising to the
  // code that initialised it.
  MpiSession(int* argc, char*** argv);
  ~MpiSession();  // MPI_Finalize, when this session called MPI_Init
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

  int rank() const { return rank_; }  // in MPI_COMM_WORLD
  int size() const { return size_; }

  // Rank 0's value on every rank. Collective over MPI_COMM_WORLD.
  int broadcast_from_root(int value) const;
  // Ends every rank of the job with `status` (MPI_Abort on MPI_COMM_WORLD).
  [[noreturn]] void abort(int status) const;

 private:
  bool owner_ = false;  // this session called MPI_Init
  int rank_ = 0, size_ = 1;
};

}  // namespace glam
