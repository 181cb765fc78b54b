// The run dir of `glam train`: one run at a time (a lock file held for the
// whole run), and every small file written whole or not at all.
//
// The lock is RUN_DIR/glam.lock, holding "pid P host H start T" (T: the
// process's start time in clock ticks since boot, so a reused pid is not taken
// for the holder). It is flock()ed for as long as it is held: a second run on the
// same host fails at once. A lock whose holder is gone (same host, dead pid or
// another process under that pid) is taken over with a message; a lock from
// another host, or of a live process, is refused with UserError (exit 2) naming
// the file and the holder. Only rank 0 takes it; a rank that dies without
// releasing it leaves a stale lock, which the next run takes over.
//
// Writes either finish or throw: UserError naming the file and strerror (ENOSPC,
// EROFS, ...). Atomic writes go to PATH.tmp, are fsync()ed and renamed over
// PATH, then the directory is fsync()ed.
#pragma once
#include <cstdint>
#include <string>

namespace glam {

// Exit status of `glam train` when a write fails mid-run (metrics.jsonl on a full
// disk): the same as an internal error's MPI_Abort status, but every rank exits cleanly.
constexpr int kExitIoError = 3;

class RunDirLock {
 public:
  RunDirLock() = default;
  // Creates run_dir if needed and takes its lock; throws UserError if it cannot.
  explicit RunDirLock(const std::string& run_dir);
  ~RunDirLock();
  RunDirLock(const RunDirLock&) = delete;
  RunDirLock& operator=(const RunDirLock&) = delete;
  RunDirLock(RunDirLock&& other) noexcept;
  RunDirLock& operator=(RunDirLock&& other) noexcept;

  bool held() const { return fd_ >= 0; }
  const std::string& path() const { return path_; }
  // Removes the lock file and closes it; the destructor does this too.
  void release();

 private:
  std::string path_;
  int fd_ = -1;
};

// The lock file of a run dir: RUN_DIR/glam.lock.
std::string lock_path(const std::string& run_dir);

// Creates dir (and its parents); throws UserError naming dir and the cause when
// it cannot (a file in the way, a read-only file system, no permission).
void make_run_dir(const std::string& dir);

// Writes text to path atomically; throws UserError naming the file on any failure.
void write_file_atomic(const std::string& path, const std::string& text);
// Copies from to path atomically, unless path already holds the same bytes.
// Returns true if it copied.
bool copy_file_atomic(const std::string& from, const std::string& path);
// Writes RUN_DIR/build.json atomically: the version and git commit of the glam
// that trains in the run dir (glam/base/version.h); rewritten when a run starts or resumes.
void write_build_info(const std::string& run_dir);
// The whole content of a file; throws UserError naming it if it cannot be read.
std::string read_file(const std::string& path);

// An append-only log (metrics.jsonl): every line goes to the kernel in one
// write(2) (O_APPEND), so a line is never half in a buffer at exit. Rank 0 only.
class AppendLog {
 public:
  AppendLog() = default;
  // Opens path for appending; truncate: start it empty. Throws UserError.
  AppendLog(const std::string& path, bool truncate);
  ~AppendLog();
  AppendLog(const AppendLog&) = delete;
  AppendLog& operator=(const AppendLog&) = delete;
  AppendLog(AppendLog&& other) noexcept;
  AppendLog& operator=(AppendLog&& other) noexcept;

  bool is_open() const { return fd_ >= 0; }
  // Appends line + "\n". On failure returns false and keeps the first error
  // ("cannot write PATH: No space left on device"); later calls do nothing.
  bool append(const std::string& line);
  const std::string& error() const { return error_; }

 private:
  std::string path_, error_;
  int fd_ = -1;
};

// The step of a checkpoint file name "step_00000012.h5" (any directory); -1 if
// the name is not one.
int64_t checkpoint_step_of_name(const std::string& path);

}  // namespace glam
