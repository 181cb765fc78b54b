// glam_fuzz: runs a glam tool on seeded mutants of one valid file and checks how
// it ends (tests/fuzz/CMakeLists.txt registers one fuzz_<reader> test each).
//
//   glam_fuzz --seed-file F --kind bytes|text|gzip|hdf5 --count N --seed S --work DIR
//             [--jobs J] [--timeout SEC] [--also TEXT]... --cmd "TOOL ARGS {} ..." [--cmd ...]
//
// Mutant i is written to DIR/m_<i>/<name of F>, beside links to every other entry
// of F's directory (a manifest finds its shards, a run dir its config), and
// command i % (number of --cmd) runs with {} replaced by the mutant's path and
// {dir} by its directory. A run passes when it exits 0, or exits 2 with a stderr
// that names the mutant (its m_<i> directory) or holds one of the --also texts.
// It fails on a signal, a timeout, any other status, or HDF5's own error stack
// on stderr. Failing mutants are kept with a README of the mutation; the rest are
// removed. Exit status: 0 when every run passed, 1 otherwise.
// `glam_fuzz edit ...` makes one hostile HDF5 file on purpose (h5_edit.cpp).
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "fuzz.h"

namespace fs = std::filesystem;

namespace {

struct Options {
  std::string seed_file, kind, work;
  int64_t count = 100, seed = 1, jobs = 4;
  double timeout = 20;
  std::vector<std::string> also, cmds;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--seed-file") o.seed_file = v;
    else if (k == "--kind") o.kind = v;
    else if (k == "--work") o.work = v;
    else if (k == "--count") o.count = std::stoll(v);
    else if (k == "--seed") o.seed = std::stoll(v);
    else if (k == "--jobs") o.jobs = std::stoll(v);
    else if (k == "--timeout") o.timeout = std::stod(v);
    else if (k == "--also") o.also.push_back(v);
    else if (k == "--cmd") o.cmds.push_back(v);
    else throw std::runtime_error("glam_fuzz: unknown option " + k);
  }
  if (o.seed_file.empty() || o.work.empty() || o.cmds.empty()) throw std::runtime_error("glam_fuzz: see the usage in glam_fuzz.cpp");
  return o;
}

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size())) s.replace(at, from.size(), to);
  return s;
}

// Writes mutant i; returns what was done to it.
std::string make_mutant(const Options& o, const std::string& seed_bytes, const fs::path& dir, int64_t i) {
  fuzz::Rng rng(static_cast<uint64_t>(o.seed) * 1000003u + static_cast<uint64_t>(i));
  fs::create_directories(dir);
  const fs::path seed(o.seed_file), target = dir / seed.filename();
  for (const auto& e : fs::directory_iterator(seed.parent_path()))
    if (e.path().filename() != seed.filename()) fs::create_symlink(fs::absolute(e.path()), dir / e.path().filename());
  std::string bytes = seed_bytes, what;
  if (o.kind == "hdf5" && rng() % 2) {
    fuzz::write_file(target.string(), bytes);
    what = fuzz::mutate_hdf5(target.string(), rng);
    if (!what.empty()) return "hdf5 edit: " + what;
  }
  if (o.kind == "text") what = fuzz::mutate_text(bytes, rng);
  else if (o.kind == "gzip") what = fuzz::mutate_gzip(bytes, rng);
  else what = fuzz::mutate_bytes(bytes, rng);
  if (rng() % 4 == 0) what += "; " + (o.kind == "text" ? fuzz::mutate_text(bytes, rng) : fuzz::mutate_bytes(bytes, rng));
  fuzz::write_file(target.string(), bytes);
  return what;
}

struct Run {
  int64_t index = 0;
  pid_t pid = -1;
  fs::path dir, err;
  std::string cmd, what, tmp;
  std::chrono::steady_clock::time_point start;
};

// Runs cmd with its own TMPDIR (short, under /tmp): Open MPI's session
// directories of concurrent singletons otherwise race for the same name.
pid_t spawn(const std::string& cmd, const fs::path& err, const std::string& tmp) {
  std::vector<std::string> words;
  std::istringstream in(cmd);
  for (std::string w; in >> w;) words.push_back(w);
  const pid_t pid = fork();
  if (pid != 0) {
    if (pid > 0) setpgid(pid, pid);  // the child does too: whichever runs first
    return pid;
  }
  setpgid(0, 0);
  setenv("TMPDIR", tmp.c_str(), 1);
  setenv("OMPI_MCA_orte_tmpdir_base", tmp.c_str(), 1);
  const int null = open("/dev/null", O_WRONLY), fd = open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  dup2(null, 1);
  dup2(fd, 2);
  std::vector<char*> argv;
  for (auto& w : words) argv.push_back(w.data());
  argv.push_back(nullptr);
  execvp(argv[0], argv.data());
  std::perror("exec");
  _exit(127);
}

// "" when the run passed, else why not.
std::string judge(const Options& o, const Run& r, int status, bool timed_out) {
  if (timed_out) return "timed out (a hang?)";
  if (WIFSIGNALED(status)) return std::string("killed by signal ") + strsignal(WTERMSIG(status));
  const int rc = WEXITSTATUS(status);
  const std::string err = fuzz::read_file(r.err.string());
  if (err.find("HDF5-DIAG") != std::string::npos) return "HDF5 printed its error stack";
  if (rc == 0) return "";
  if (rc != 2) return "exit status " + std::to_string(rc) + ": " + err.substr(0, 400);
  if (err.find(r.dir.filename().string()) != std::string::npos) return "";
  for (const auto& a : o.also)
    if (err.find(a) != std::string::npos) return "";
  return "exit 2 without naming the file: " + err.substr(0, 400);
}

bool finish(const Options& o, Run& r, int status, bool timed_out, std::map<std::string, int>& outcomes) {
  const std::string why = judge(o, r, status, timed_out);
  std::error_code ec;
  fs::remove_all(r.tmp, ec);
  const int rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  outcomes[why.empty() ? "exit " + std::to_string(rc) : "FAIL"]++;
  if (why.empty()) {
    fs::remove_all(r.dir);
    return true;
  }
  fuzz::write_file((r.dir / "README").string(), "mutation: " + r.what + "\ncommand: " + r.cmd + "\nfailure: " + why + "\n");
  std::fprintf(stderr, "FAIL mutant %lld (%s): %s\n  command: %s\n  kept in %s\n", static_cast<long long>(r.index),
               r.what.c_str(), why.c_str(), r.cmd.c_str(), r.dir.c_str());
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "edit") return fuzz::edit_main(argc, argv);
  const Options o = parse(argc, argv);
  const std::string seed_bytes = fuzz::read_file(o.seed_file);
  fs::remove_all(o.work);
  fs::create_directories(o.work);
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<Run> running;
  std::map<std::string, int> outcomes;
  int64_t next = 0, failed = 0;
  while (next < o.count || !running.empty()) {
    while (next < o.count && static_cast<int64_t>(running.size()) < o.jobs) {
      Run r;
      r.index = next++;
      r.dir = fs::path(o.work) / ("m_" + std::to_string(r.index));
      r.what = make_mutant(o, seed_bytes, r.dir, r.index);
      r.err = r.dir / "stderr.txt";
      const std::string target = (r.dir / fs::path(o.seed_file).filename()).string();
      r.cmd = replace_all(replace_all(o.cmds[r.index % o.cmds.size()], "{dir}", r.dir.string()), "{}", target);
      r.start = std::chrono::steady_clock::now();
      char tmpl[] = "/tmp/glam-fuzz-XXXXXX";
      if (!mkdtemp(tmpl)) throw std::runtime_error("mkdtemp failed");
      r.tmp = tmpl;
      r.pid = spawn(r.cmd, r.err, r.tmp);
      running.push_back(r);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    for (size_t k = 0; k < running.size();) {
      Run& r = running[k];
      int status = 0;
      bool timed_out = false;
      pid_t done = waitpid(r.pid, &status, WNOHANG);
      if (done == 0 && std::chrono::duration<double>(std::chrono::steady_clock::now() - r.start).count() > o.timeout) {
        kill(-r.pid, SIGKILL);
        waitpid(r.pid, &status, 0);
        timed_out = true;
        done = r.pid;
      }
      if (done == 0) { k++; continue; }
      if (!finish(o, r, status, timed_out, outcomes)) failed++;
      running.erase(running.begin() + static_cast<long>(k));
    }
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("glam_fuzz: %lld mutants of %s (%s, seed %lld) in %.1f s:", static_cast<long long>(o.count),
              o.seed_file.c_str(), o.kind.c_str(), static_cast<long long>(o.seed), secs);
  for (const auto& [k, n] : outcomes) std::printf(" %s: %d;", k.c_str(), n);
  std::printf("\n");
  return failed == 0 ? 0 : 1;
}
