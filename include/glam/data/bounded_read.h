// Bounded reads of untrusted files: every size a file declares (a dataset's
// shape, a count in an attribute, the length of a decompressed stream or of a
// line) is checked against what the file really holds before anything is
// allocated from it. The readers of corpus shards, checkpoints, weights files
// and text inputs use these checks, so a damaged or hostile file is a UserError
// naming the file and the field, never std::bad_alloc or a hang.
//
// ReadingFile names the file a thread is reading for the tools' last line of
// defence: when an allocation fails anyway (std::bad_alloc), main() reports
// "out of memory while reading 'FILE'" and exits 2.
#pragma once
#include <hdf5.h>

#include <cstdint>
#include <string>
#include <vector>

namespace glam {

// Limits on text input (text_input.h): a decompressed file and a single line.
// GLAM_MAX_INPUT_BYTES and GLAM_MAX_LINE_BYTES (bytes, in the environment)
// replace the defaults (16 GiB and 64 MiB) for unusual inputs.
int64_t max_input_bytes();
int64_t max_line_bytes();

// Size in bytes of a regular file; a UserError naming it (as `what`) otherwise.
int64_t file_bytes(const std::string& path, const char* what);

// a * b, or -1 when it overflows int64 or either is negative.
int64_t checked_mul(int64_t a, int64_t b);

// The shape of an HDF5 dataset, checked against the file it lives in: every dim
// and the element count fit int64, and the dataset's storage holds every element
// (elem_bytes each) within the file's size: a dataset that declares 2^40 ids in
// a 6 KB file, or whose storage was never written, is refused.
// `what` names the file in messages ("corpus file 'x.h5'"), `name` the dataset.
std::vector<int64_t> checked_dataset_shape(hid_t dataset, const std::string& what, const std::string& name,
                                           int64_t elem_bytes, int64_t file_size);

// Turns off HDF5's automatic error-stack printing for its lifetime: readers and
// writers report failures through glam's own messages.
class QuietHdf5 {
 public:
  QuietHdf5();
  ~QuietHdf5();
  QuietHdf5(const QuietHdf5&) = delete;
  QuietHdf5& operator=(const QuietHdf5&) = delete;

 private:
  H5E_auto2_t func_ = nullptr;
  void* data_ = nullptr;
};

// The file this thread is reading while one is alive (innermost wins).
class ReadingFile {
 public:
  explicit ReadingFile(const std::string& path);
  ~ReadingFile();
  ReadingFile(const ReadingFile&) = delete;
  ReadingFile& operator=(const ReadingFile&) = delete;
  // The innermost file being read, or "" when none. A ReadingFile that ends by
  // an exception leaves its name here so main() can still report it.
  static std::string current();

 private:
  std::string previous_;
};

// Before writing `file` into `dir` (created when missing): "" when dir is a
// writable directory with room for about `bytes`, else the problem in words
// (naming the file and the cause: read-only, ENOSPC).
std::string write_room_problem(const std::string& dir, const std::string& file, int64_t bytes);

// errno after a failed write as words ("No space left on device"), or a generic
// reason when the library that failed did not set it.
std::string io_error_reason(int err);

}  // namespace glam
