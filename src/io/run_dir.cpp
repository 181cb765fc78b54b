// The run dir's lock and its checked, atomic small-file writes (include/glam/io/run_dir.h).
// Every system call is checked; a failure throws UserError naming the file and
// strerror(errno).
#include "glam/io/run_dir.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "glam/base/check.h"
#include "glam/base/version.h"

namespace fs = std::filesystem;

namespace glam {

namespace {

UserError sys_error(const char* what, const std::string& path) {
  return UserError(msg("cannot ", what, " '", path, "': ", std::strerror(errno)));
}

// Writes all of text to fd at its offset (or its end with O_APPEND).
bool write_all(int fd, const std::string& text) {
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      if (n == 0) errno = EIO;
      return false;
    }
    done += static_cast<size_t>(n);
  }
  return true;
}

std::string read_fd(int fd) {
  std::string out;
  char buf[4096];
  off_t at = 0;
  for (;;) {
    const ssize_t n = ::pread(fd, buf, sizeof buf, at);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
    at += n;
  }
  return out;
}

void fsync_dir(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw sys_error("open directory", dir);
  const int rc = ::fsync(fd);
  const int saved = errno;
  ::close(fd);
  errno = saved;
  if (rc != 0 && errno != EINVAL) throw sys_error("fsync directory", dir);
}

std::string parent_of(const std::string& path) {
  const fs::path p = fs::path(path).parent_path();
  return p.empty() ? "." : p.string();
}

// The holder of a lock, as its file names it.
struct Holder {
  long long pid = -1;
  std::string host;
  long long start = -1;  // /proc/PID/stat field 22, -1 if unknown
};

std::string this_host() {
  char buf[256] = {0};
  if (::gethostname(buf, sizeof buf - 1) != 0) return "unknown";
  return buf;
}

// Start time of a process in clock ticks since boot; -1 if there is no such process.
// The start time (field 22 of /proc/PID/stat) of a process, -1 if unknown; -2 for
// a zombie: dead, its lock released, waiting to be reaped (in a container whose
// init does not reap, the ranks of an aborted job stay so).
long long start_time_of(long long pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  if (!in || !std::getline(in, stat)) return -1;
  const size_t paren = stat.rfind(')');  // the command name may hold spaces
  if (paren == std::string::npos) return -1;
  std::istringstream fields(stat.substr(paren + 2));
  std::string field;
  for (int i = 3; i <= 22 && fields >> field; i++) {
    if (i == 3 && (field == "Z" || field == "X")) return -2;
    if (i == 22) return std::atoll(field.c_str());
  }
  return -1;
}

Holder parse_holder(const std::string& text) {
  Holder h;
  std::istringstream in(text);
  std::string key;
  while (in >> key) {
    if (key == "pid") in >> h.pid;
    else if (key == "host") in >> h.host;
    else if (key == "start") in >> h.start;
  }
  return h;
}

std::string describe(const Holder& h) {
  if (h.pid < 0) return "an unknown process (unreadable lock file)";
  return msg("pid ", h.pid, " on host ", h.host);
}

// Whether the holder of a lock on this host still runs.
bool alive_here(const Holder& h) {
  if (h.pid <= 0) return false;
  const long long start = start_time_of(h.pid);
  if (start == -2) return false;  // a zombie
  if (start < 0) return ::kill(static_cast<pid_t>(h.pid), 0) == 0 || errno == EPERM;
  return h.start < 0 || start == h.start;
}

[[noreturn]] void refuse(const std::string& path, const Holder& h, const std::string& why) {
  throw UserError(msg("run dir '", parent_of(path), "' is in use: its lock file ", path, " is held by ", describe(h),
                      why));
}

// Decides on the content of a lock whose flock() we got: stale (take over) or refuse.
void check_previous_holder(const std::string& path, const std::string& content) {
  if (content.empty()) return;
  const Holder h = parse_holder(content);
  if (h.pid < 0 || h.host.empty())
    refuse(path, h, "; if no run uses this run dir, delete the lock file");
  if (h.host != this_host())
    refuse(path, h, " (another host: glam cannot tell whether it still runs); wait for that run to end, or delete "
                    "the lock file if it is gone");
  if (h.pid != ::getpid() && alive_here(h))
    refuse(path, h, " (still running); wait for it to end or use another --run-dir");
  std::fprintf(stderr, "glam: note: taking over the stale lock %s of %s (that process is gone)\n", path.c_str(),
               describe(h).c_str());
}

}  // namespace

std::string lock_path(const std::string& run_dir) { return (fs::path(run_dir) / "glam.lock").string(); }

void make_run_dir(const std::string& dir) {
  std::error_code ec;
  if (fs::exists(dir, ec) && !fs::is_directory(dir, ec))
    throw UserError(msg("run dir '", dir, "' exists and is not a directory; choose another --run-dir"));
  fs::create_directories(dir, ec);
  if (ec) throw UserError(msg("cannot create run dir '", dir, "': ", ec.message()));
  if (::access(dir.c_str(), W_OK | X_OK) != 0)
    throw UserError(msg("run dir '", dir, "' is not writable: ", std::strerror(errno)));
}

RunDirLock::RunDirLock(const std::string& run_dir) : path_(lock_path(run_dir)) {
  make_run_dir(run_dir);
  for (int attempt = 0; attempt < 20; attempt++) {
    const int fd = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) throw sys_error("create the lock file", path_);
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      const int saved = errno;
      const std::string content = read_fd(fd);
      ::close(fd);
      if (saved == EWOULDBLOCK) refuse(path_, parse_holder(content), " (still running); wait for it to end or use "
                                                                      "another --run-dir");
      errno = saved;
      throw sys_error("lock", path_);
    }
    struct stat open_st, path_st;  // the path may have been unlinked by a holder releasing it
    if (::fstat(fd, &open_st) != 0 || ::stat(path_.c_str(), &path_st) != 0 || open_st.st_ino != path_st.st_ino ||
        open_st.st_dev != path_st.st_dev) {
      ::close(fd);
      continue;
    }
    try {
      check_previous_holder(path_, read_fd(fd));
    } catch (...) {
      ::close(fd);
      throw;
    }
    const std::string me = msg("pid ", ::getpid(), " host ", this_host(), " start ", start_time_of(::getpid()), "\n");
    if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, me.data(), me.size(), 0) != static_cast<ssize_t>(me.size()) ||
        ::fsync(fd) != 0) {
      const int saved = errno;
      ::unlink(path_.c_str());
      ::close(fd);
      errno = saved;
      throw sys_error("write the lock file", path_);
    }
    fd_ = fd;
    return;
  }
  throw UserError(msg("cannot take the lock file ", path_, ": it keeps being replaced by other runs"));
}

void RunDirLock::release() {
  if (fd_ < 0) return;
  ::unlink(path_.c_str());  // while still holding the flock: the next run creates a new file
  ::close(fd_);
  fd_ = -1;
}

RunDirLock::~RunDirLock() { release(); }

RunDirLock::RunDirLock(RunDirLock&& other) noexcept : path_(std::move(other.path_)), fd_(other.fd_) {
  other.fd_ = -1;
}

RunDirLock& RunDirLock::operator=(RunDirLock&& other) noexcept {
  if (this != &other) {
    release();
    path_ = std::move(other.path_);
    fd_ = other.fd_;
    other.fd_ = -1;
  }
  return *this;
}

void write_file_atomic(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw sys_error("create", tmp);
  int err = 0;
  if (!write_all(fd, text) || ::fsync(fd) != 0) err = errno;
  if (::close(fd) != 0 && err == 0) err = errno;
  if (err != 0) {
    errno = err;
    const UserError e = sys_error("write", tmp);
    ::unlink(tmp.c_str());
    throw e;
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const UserError e = sys_error("rename the new file over", path);
    ::unlink(tmp.c_str());
    throw e;
  }
  fsync_dir(parent_of(path));
}

void write_build_info(const std::string& run_dir) {
  write_file_atomic((fs::path(run_dir) / "build.json").string(), build_json() + "\n");
}

std::string read_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw sys_error("open", path);
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw UserError(msg("'", path, "' is not a regular file"));
  }
  std::string out = read_fd(fd);
  ::close(fd);
  return out;
}

bool copy_file_atomic(const std::string& from, const std::string& path) {
  const std::string content = read_file(from);
  std::error_code ec;
  if (fs::is_regular_file(path, ec) && read_file(path) == content) return false;
  write_file_atomic(path, content);
  return true;
}

AppendLog::AppendLog(const std::string& path, bool truncate) : path_(path) {
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | (truncate ? O_TRUNC : 0), 0644);
  if (fd_ < 0) throw sys_error("open", path);
}

AppendLog::~AppendLog() {
  if (fd_ >= 0) ::close(fd_);
}

AppendLog::AppendLog(AppendLog&& other) noexcept
    : path_(std::move(other.path_)), error_(std::move(other.error_)), fd_(other.fd_) {
  other.fd_ = -1;
}

AppendLog& AppendLog::operator=(AppendLog&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    path_ = std::move(other.path_);
    error_ = std::move(other.error_);
    fd_ = other.fd_;
    other.fd_ = -1;
  }
  return *this;
}

bool AppendLog::append(const std::string& line) {
  if (fd_ < 0 || !error_.empty()) return false;
  struct stat st;
  const off_t before = ::fstat(fd_, &st) == 0 ? st.st_size : -1;
  if (write_all(fd_, line + "\n")) return true;
  error_ = msg("cannot write '", path_, "': ", std::strerror(errno));
  if (before >= 0 && ::ftruncate(fd_, before) != 0) error_ += " (and a partial line may remain at its end)";
  return false;
}

int64_t checkpoint_step_of_name(const std::string& path) {
  const std::string name = fs::path(path).filename().string();
  long long step = -1;
  int end = 0;
  if (std::sscanf(name.c_str(), "step_%lld.h5%n", &step, &end) == 1 && end == static_cast<int>(name.size()) &&
      step >= 0)
    return step;
  return -1;
}

}  // namespace glam
