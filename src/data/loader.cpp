// RowPlan and DataLoader (include/glam/data/loader.h). The thread only packs rows
// from corpora already in memory: no MPI and no HDF5 calls happen on it.
#include "glam/data/loader.h"

#include <chrono>

#include "glam/base/check.h"

namespace glam {

namespace {
constexpr int64_t kMaxReplayRows = int64_t{1} << 40;
}  // namespace

RowPlan::RowPlan(const Mixture& mixture, uint64_t seed, int64_t batch_rows)
    : mixture_(mixture), seed_(seed), batch_rows_(batch_rows), drawn_(mixture.size(), 0) {
  GLAM_REQUIRE(batch_rows > 0, "RowPlan: batch_rows must be positive, got ", batch_rows);
}

void RowPlan::skip_to(int64_t step) {
  GLAM_REQUIRE(step >= step_, "RowPlan: cannot go back from step ", step_, " to ", step);
  // A resume replays the rows before `step` (~30 ns each): bounded, so that a
  // damaged step count is an error, not hours at full CPU (2^40 rows: ~9 h).
  GLAM_REQUIRE(step <= kMaxReplayRows / batch_rows_, "cannot start at step ", step, " with ", batch_rows_,
               " rows per step: more than ", kMaxReplayRows, " rows of the stream (a damaged checkpoint step?)");
  if (mixture_.size() == 1) {  // every row from the one source: no need to replay
    drawn_[0] += (step - step_) * batch_rows_;
    step_ = step;
    return;
  }
  for (; step_ < step; ++step_)
    for (int64_t r = 0; r < batch_rows_; ++r)
      ++drawn_[mixture_.source_of_row(seed_, step_ * batch_rows_ + r)];
}

void RowPlan::next(std::vector<RowRef>& out) {
  out.resize(batch_rows_);
  for (int64_t r = 0; r < batch_rows_; ++r) {
    const size_t s = mixture_.source_of_row(seed_, step_ * batch_rows_ + r);
    out[r] = {static_cast<int64_t>(s), drawn_[s]++};
  }
  ++step_;
}

double epochs_of(const Mixture& mixture, const std::vector<int64_t>& rows_drawn, size_t s,
                 int64_t seq_len) {
  return static_cast<double>(rows_drawn[s]) * static_cast<double>(seq_len) /
         static_cast<double>(mixture.source(s).train->info().n_tokens);
}

LoadedBatch pack_step(const Mixture& mixture, RowPlan& plan, const LoaderOptions& opt) {
  std::vector<RowPlan::RowRef> refs;
  LoadedBatch out;
  out.step = plan.step();
  plan.next(refs);
  out.rows_drawn = plan.rows_drawn();
  const int64_t rows = opt.batch_rows / opt.data_size, S = opt.seq_len;
  out.batch = batch_of_shape(rows, S);
  Batch& b = out.batch;
  for (int64_t r = 0; r < rows; ++r) {
    const RowPlan::RowRef& ref = refs[opt.data_rank * rows + r];
    mixture.source(ref.source).train->pack_row(ref.row, S, &b.ids[r * S], &b.targets[r * S],
                                               &b.segments[r * S]);
  }
  return out;
}

DataLoader::DataLoader(const Mixture& mixture, const LoaderOptions& opt)
    : mixture_(mixture), opt_(opt) {
  GLAM_REQUIRE(opt.data_size > 0 && opt.batch_rows % opt.data_size == 0 && opt.data_rank >= 0 &&
                   opt.data_rank < opt.data_size,
               "DataLoader: ", opt.batch_rows, " rows do not split over data rank ", opt.data_rank,
               " of ", opt.data_size);
  GLAM_REQUIRE(opt.seq_len > 0 && opt.depth > 0 && opt.first_step >= 0,
               "DataLoader: bad seq_len, depth or first step");
  GLAM_REQUIRE(opt.batch_rows > 0 && opt.first_step <= kMaxReplayRows / opt.batch_rows, "cannot start at step ",
               opt.first_step, " with ", opt.batch_rows, " rows per step: more than ", kMaxReplayRows,
               " rows of the stream (a damaged checkpoint step?)");
  thread_ = std::thread([this] { run(); });
}

DataLoader::~DataLoader() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  changed_.notify_all();
  thread_.join();
}

void DataLoader::run() {
  try {
    RowPlan plan(mixture_, opt_.seed, opt_.batch_rows);
    plan.skip_to(opt_.first_step);
    for (;;) {
      LoadedBatch batch = pack_step(mixture_, plan, opt_);
      std::unique_lock<std::mutex> lock(mu_);
      changed_.wait(lock, [this] { return stop_ || static_cast<int64_t>(ready_.size()) < opt_.depth; });
      if (stop_) return;
      ready_.push_back(std::move(batch));
      changed_.notify_all();
    }
  } catch (...) {
    std::lock_guard<std::mutex> lock(mu_);
    error_ = std::current_exception();
    changed_.notify_all();
  }
}

LoadedBatch DataLoader::next() {
  const auto t0 = std::chrono::steady_clock::now();
  std::unique_lock<std::mutex> lock(mu_);
  changed_.wait(lock, [this] { return !ready_.empty() || error_; });
  if (ready_.empty()) std::rethrow_exception(error_);
  LoadedBatch batch = std::move(ready_.front());
  ready_.pop_front();
  lock.unlock();
  changed_.notify_all();
  last_wait_s_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  total_wait_s_ += last_wait_s_;
  return batch;
}

}  // namespace glam
