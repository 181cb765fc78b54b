// The training data loader: plans the global batch of every step from a mixture
// (mixture.h) and packs this data rank's rows on a background thread, a few
// steps ahead of the training loop, into a bounded queue.
//
// No communication: every data rank plans the whole global batch (cheap: one
// hash per row) and packs only its own slice, rows [d*B/D, (d+1)*B/D). So the
// global batch of a step is the same for any number of data ranks, and a loader
// started at step k (a resumed run) replays the plan of steps < k to know how
// far into each source it is, then yields exactly the rows an uninterrupted
// loader yields.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "glam/data/corpus.h"
#include "glam/data/mixture.h"

namespace glam {

struct LoaderOptions {
  uint64_t seed = 0;
  int64_t batch_rows = 0;   // B: global rows per step
  int64_t seq_len = 0;      // S
  int64_t data_rank = 0;    // d of D
  int64_t data_size = 1;    // D; must divide B
  int64_t first_step = 0;   // the first step next() returns
  int64_t depth = 4;        // batches packed ahead of the loop at most
};

struct LoadedBatch {
  int64_t step = 0;
  Batch batch;                      // this rank's rows [B/D, S]
  std::vector<int64_t> rows_drawn;  // [sources] global rows taken from each source in steps <= step
};

// Which source, and which of its rows, fills each global row of each step.
class RowPlan {
 public:
  struct RowRef {
    int64_t source = 0, row = 0;  // row `row` of source `source`'s packed stream
  };
  RowPlan(const Mixture& mixture, uint64_t seed, int64_t batch_rows);
  // Replays the steps before `step` (only counting), so next() plans `step`.
  void skip_to(int64_t step);
  // Plans the global batch of step(), then advances: out[r] for r in [0, B).
  void next(std::vector<RowRef>& out);
  int64_t step() const { return step_; }
  const std::vector<int64_t>& rows_drawn() const { return drawn_; }

 private:
  const Mixture& mixture_;
  uint64_t seed_;
  int64_t batch_rows_, step_ = 0;
  std::vector<int64_t> drawn_;  // [sources] rows taken so far
};

// Epochs of source s consumed after `rows_drawn` rows of seq_len tokens.
double epochs_of(const Mixture& mixture, const std::vector<int64_t>& rows_drawn, size_t s,
                 int64_t seq_len);

// Packs this rank's rows of the step `plan` is at, and advances the plan.
LoadedBatch pack_step(const Mixture& mixture, RowPlan& plan, const LoaderOptions& opt);

class DataLoader {
 public:
  // Starts the thread. The mixture must outlive the loader.
  DataLoader(const Mixture& mixture, const LoaderOptions& opt);
  ~DataLoader();
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  // The next step's batch; blocks while the thread has none ready (rethrows an
  // error the thread met). last_wait_s() is how long this call blocked.
  LoadedBatch next();
  double last_wait_s() const { return last_wait_s_; }
  double total_wait_s() const { return total_wait_s_; }

 private:
  void run();

  const Mixture& mixture_;
  LoaderOptions opt_;
  std::mutex mu_;
  std::condition_variable changed_;
  std::deque<LoadedBatch> ready_;  // packed batches, oldest first, at most opt_.depth
  std::exception_ptr error_;
  bool stop_ = false;
  double last_wait_s_ = 0, total_wait_s_ = 0;
  std::thread thread_;             // last: starts after every other member exists
};

}  // namespace glam
