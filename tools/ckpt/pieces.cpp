// glam-ckpt: the reads and writes of verify, export and reshard split over the
// ranks of mpirun. Every region a command reads is cut into blocks of at most
// --memory-limit bytes of tensor data (whole slices of the outermost dim that
// fits, so a block is one hyperslab and consecutive in row-major order); blocks
// go to ranks largest first, each to the least loaded. A rank reads its blocks
// in file order into one buffer, adds their checksum terms (the checksum is a sum
// over elements: blocks add up to it in any order, on any rank) and writes them
// with pwrite at their byte offsets in the output, which exists at full size.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <numeric>
#include <queue>

#include "ckpt.h"
#include "glam/layers/cpu/gemm.h"

namespace glam::ckpt {

int64_t Block::elements() const { return product(count); }

std::vector<Block> split_region(size_t region, const std::vector<int64_t>& count, int64_t max_elements,
                                int64_t preferred) {
  const size_t nd = count.size();
  if (nd == 0) return {Block{region, {}, {}, 0}};  // a scalar: one element
  if (product(count) == 0) return {};
  size_t dim = 0;                                 // the outermost dim whose one slice fits
  int64_t step = product(count) / count[0];       // elements of one slice of `dim`
  while (step > max_elements) step /= count[++dim];
  const int64_t want = std::min(max_elements, std::max(preferred, step));
  const int64_t per = std::min(count[dim], std::max<int64_t>(1, want / step));  // slices per block
  int64_t outer = 1;
  for (size_t d = 0; d < dim; d++) outer *= count[d];
  std::vector<Block> blocks;
  std::vector<int64_t> idx(dim, 0);  // the single indices of the dims before `dim`
  for (int64_t o = 0; o < outer; o++) {
    for (int64_t at = 0; at < count[dim]; at += per) {
      Block b{region, std::vector<int64_t>(nd, 0), count, (o * count[dim] + at) * step};
      for (size_t d = 0; d < dim; d++) {
        b.offset[d] = idx[d];
        b.count[d] = 1;
      }
      b.offset[dim] = at;
      b.count[dim] = std::min(per, count[dim] - at);
      blocks.push_back(std::move(b));
    }
    for (int64_t d = static_cast<int64_t>(dim) - 1; d >= 0; d--) {
      if (++idx[d] < count[d]) break;
      idx[d] = 0;
    }
  }
  return blocks;
}

std::vector<int> assign_blocks(const std::vector<Block>& blocks, int ranks) {
  std::vector<size_t> order(blocks.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return blocks[a].elements() > blocks[b].elements(); });
  using Load = std::pair<int64_t, int>;  // (elements so far, rank): the smallest pair is next
  std::priority_queue<Load, std::vector<Load>, std::greater<Load>> loads;
  for (int r = 0; r < ranks; r++) loads.push({0, r});
  std::vector<int> owner(blocks.size(), 0);
  for (size_t i : order) {
    const Load least = loads.top();
    loads.pop();
    owner[i] = least.second;
    loads.push({least.first + blocks[i].elements(), least.second});
  }
  return owner;
}

namespace {

// Reads the hyperslab [at, at + count) of a float32 dataset into out.
void read_block(hid_t ds, const std::vector<int64_t>& at, const std::vector<int64_t>& count, float* out,
                const std::string& what) {
  if (count.empty()) {
    GLAM_REQUIRE_H5(H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, out), what);
    return;
  }
  const h5::Space fspace(GLAM_REQUIRE_H5(H5Dget_space(ds), what));
  const std::vector<hsize_t> off = h5::dims_of(at), cnt = h5::dims_of(count);
  GLAM_REQUIRE_H5(H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, off.data(), nullptr, cnt.data(), nullptr), what);
  const h5::Space mspace(GLAM_REQUIRE_H5(H5Screate_simple(static_cast<int>(cnt.size()), cnt.data(), nullptr), what));
  GLAM_REQUIRE_H5(H5Dread(ds, H5T_NATIVE_FLOAT, mspace.get(), fspace.get(), H5P_DEFAULT, out), what);
}

// Writes bytes [0, n) of data at file offset `at` of fd.
void write_at(int fd, const void* data, int64_t n, int64_t at, const std::string& what) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t done = ::pwrite(fd, p, static_cast<size_t>(std::min<int64_t>(n, 1 << 30)), static_cast<off_t>(at));
    if (done < 0 && errno == EINTR) continue;
    GLAM_REQUIRE(done > 0, what, ": ", done < 0 ? std::strerror(errno) : "nothing written");
    p += done;
    at += done;
    n -= done;
  }
}

// One rank's blocks: the source dataset open, the output file open, and the
// buffer of tensor data (grown by freeing first, so it never holds two at once).
class BlockWorker {
 public:
  BlockWorker(const PieceJob& job, PieceResult& result) : job_(job), result_(result) {}
  ~BlockWorker() {
    if (fd_ >= 0) ::close(fd_);
  }
  BlockWorker(const BlockWorker&) = delete;
  BlockWorker& operator=(const BlockWorker&) = delete;

  void process(const Block& b);
  void finish() { close_output(); }
  int64_t peak() const { return peak_; }

 private:
  hid_t dataset(const std::string& path, const std::string& what);
  template <typename T>
  T* buffer(std::unique_ptr<T[]>& buf, int64_t& capacity, int64_t n);
  void write(const Region& r, const Block& b, const void* data, int64_t bytes);
  void close_output();

  const PieceJob& job_;
  PieceResult& result_;
  std::unique_ptr<float[]> floats_;
  std::unique_ptr<uint16_t[]> halves_;
  int64_t float_capacity_ = 0, half_capacity_ = 0, peak_ = 0;
  std::string ds_path_;
  h5::Dataset ds_;
  int fd_ = -1, fd_file_ = -1;
};

hid_t BlockWorker::dataset(const std::string& path, const std::string& what) {
  if (path != ds_path_ || !ds_.valid()) {
    ds_.close();
    ds_path_ = path;
    ds_ = h5::Dataset(GLAM_REQUIRE_H5(H5Dopen2(job_.c->file.get(), path.c_str(), H5P_DEFAULT), what));
  }
  return ds_.get();
}

template <typename T>
T* BlockWorker::buffer(std::unique_ptr<T[]>& buf, int64_t& capacity, int64_t n) {
  if (n > capacity) {
    buf.reset();
    capacity = 0;
    buf.reset(new T[static_cast<size_t>(n)]);
    capacity = n;
  }
  peak_ = std::max(peak_, float_capacity_ * 4 + half_capacity_ * 2);
  return buf.get();
}

void BlockWorker::process(const Block& b) {
  const Region& r = job_.regions[b.region];
  if (job_.keep_going && result_.unreadable[b.region] > 0) return;  // this rank already found it unreadable
  const int64_t n = b.elements();
  std::vector<int64_t> at = r.offset;  // the block in the dataset
  for (size_t d = 0; d < at.size(); d++) at[d] += b.offset[d];
  float* data = buffer(floats_, float_capacity_, n);
  const std::string what = msg(job_.c->kind(), " '", job_.c->path, "': cannot read dataset ", r.path);
  try {
    read_block(dataset(r.path, what), at, b.count, data, what);
  } catch (const UserError&) {
    if (!job_.keep_going) throw;
    result_.unreadable[b.region]++;
    return;
  }
  result_.sums[b.region] += checksum_block(r.global, at, b.count, data);
  if (r.file < 0) return;
  if (!job_.bf16) return write(r, b, data, n * 4);
  uint16_t* half = buffer(halves_, half_capacity_, n);
  cpu::to_bf16(half, data, n);  // nearest even; NaN stays NaN
  write(r, b, half, n * 2);
}

void BlockWorker::write(const Region& r, const Block& b, const void* data, int64_t bytes) {
  const std::string& path = job_.outputs[static_cast<size_t>(r.file)];
  if (fd_file_ != r.file) {
    close_output();
    fd_ = ::open(path.c_str(), O_WRONLY);
    GLAM_REQUIRE(fd_ >= 0, "cannot open '", path, "' for writing: ", std::strerror(errno));
    fd_file_ = r.file;
  }
  write_at(fd_, data, bytes, r.at + b.first * (job_.bf16 ? 2 : 4),
           msg("cannot write dataset ", r.path, " to '", path, "'"));
}

void BlockWorker::close_output() {
  if (fd_ < 0) return;
  const int rc = ::close(fd_);
  fd_ = -1;
  GLAM_REQUIRE(rc == 0, "cannot write '", job_.outputs[static_cast<size_t>(fd_file_)], "': ", std::strerror(errno));
  fd_file_ = -1;
}

// This process's peak resident memory (VmHWM of /proc/self/status), or -1.
int64_t peak_resident_bytes() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    long long kb = 0;
    if (std::sscanf(line.c_str(), "VmHWM: %lld kB", &kb) == 1) return static_cast<int64_t>(kb) * 1024;
  }
  return -1;
}

// "512.00 KiB", "3.98 MiB", "1.00 GiB": the largest unit that leaves at least 1.
std::string binary_size(int64_t bytes) {
  const char* units[] = {"bytes", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024.0 && u < 4) {
    v /= 1024.0;
    u++;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.2f %s", v, units[u]);
  return buf;
}

}  // namespace

PieceResult run_pieces(const Team& team, const PieceJob& job) {
  // A rank holds a block's float32 values and, for a bf16 output, their bf16 copy.
  const int64_t held_per_element = job.bf16 ? 6 : 4;
  const int64_t max_elements = std::max<int64_t>(1, job.memory_limit / held_per_element);
  std::vector<Block> blocks;
  for (size_t r = 0; r < job.regions.size(); r++)
    for (Block& b : split_region(r, job.regions[r].count, max_elements, std::max<int64_t>(1, job.chunk / 4)))
      blocks.push_back(std::move(b));
  const std::vector<int> owner = assign_blocks(blocks, team.size());
  PieceResult result;
  result.sums.assign(job.regions.size(), 0);
  result.unreadable.assign(job.regions.size(), 0);
  int64_t peak = 0;
  team.agree([&] {
    BlockWorker worker(job, result);
    for (size_t i = 0; i < blocks.size(); i++)
      if (owner[i] == team.rank()) worker.process(blocks[i]);
    worker.finish();
    peak = worker.peak();
  });
  team.sum(result.sums);
  team.sum(result.unreadable);
  result.peak_buffer = team.max(peak);
  return result;
}

void report_memory(const Team& team, int64_t peak_buffer, int64_t memory_limit) {
  const int64_t resident = team.max(peak_resident_bytes());
  if (!team.root()) return;
  std::printf("# peak tensor buffer per rank: %s (limit %s; %" PRId64 " of %" PRId64 " bytes)\n",
              binary_size(peak_buffer).c_str(), binary_size(memory_limit).c_str(), peak_buffer, memory_limit);
  if (resident >= 0)
    std::printf("# peak resident memory per rank (VmHWM): %s (%" PRId64 " bytes)\n", binary_size(resident).c_str(),
                resident);
  std::fflush(stdout);
}

}  // namespace glam::ckpt
