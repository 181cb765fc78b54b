// Tensor views, arenas and what the model asks of its backend: one allocation per
// tensor table, no allocation in a step once the buffers exist, the full phase
// report, and the backward contract (weight gradients accumulate).
#include <catch2/catch.hpp>

#include <cstdint>
#include <new>
#include <random>
#include <set>

#include "glam/model/adafactor.h"
#include "glam/model/backend.h"
#include "glam/model/model.h"
#include "glam/model/tensor.h"

using namespace glam;

namespace {

// Host memory that counts what it hands out.
class CountingAllocator : public Allocator {
 public:
  Device device() const override { return Device::cpu; }
  void* allocate(size_t bytes) override {
    calls++;
    return ::operator new(bytes, std::align_val_t(256));
  }
  void deallocate(void* p) override { ::operator delete(p, std::align_val_t(256)); }
  int calls = 0;
};

Config small_config(int64_t n_experts) {
  Config c;
  c.model.vocab_size = 64;
  c.model.d_model = 32;
  c.model.n_layers = 2;
  c.model.n_heads = 2;
  c.model.d_head = 16;
  c.model.d_ff = 64;
  c.model.n_experts = n_experts;
  c.model.group_size = 32;
  c.model.seq_len = 16;
  c.train.batch_rows = 4;
  c.validate();
  return c;
}

Batch batch_of(const Config& c, int64_t rows, uint64_t seed) {
  Batch b;
  b.rows = rows;
  b.seq_len = c.model.seq_len;
  std::mt19937_64 rng(seed);
  for (int64_t t = 0; t < b.n_tokens(); t++) {
    b.ids.push_back(static_cast<int32_t>(rng() % c.model.vocab_size));
    b.targets.push_back(static_cast<int32_t>(rng() % c.model.vocab_size));
    b.segments.push_back(static_cast<int32_t>((t % c.model.seq_len) / 6));
  }
  return b;
}

}  // namespace

TEST_CASE("an arena carves its table from one allocation, aligned, and grows only when it must") {
  CountingAllocator alloc;
  Arena arena(alloc);
  Tensor a, b, c;
  arena.add(a, "a", DType::f32, {3, 5});
  arena.add(b, "b", DType::bf16, {7});
  arena.add(c, "c", DType::u8, {2, 2, 2});
  REQUIRE(arena.commit());
  CHECK(alloc.calls == 1);
  CHECK(a.numel() == 15);
  CHECK(a.bytes() == 60);
  CHECK(b.bytes() == 14);
  CHECK(c.ndim == 3);
  for (const Tensor* t : {&a, &b, &c}) CHECK(reinterpret_cast<uintptr_t>(t->ptr) % 256 == 0);
  CHECK(static_cast<char*>(b.ptr) >= static_cast<char*>(a.ptr) + a.bytes());
  CHECK(arena.report().find("b ") != std::string::npos);
  // a smaller table fits: carved again without allocating
  arena.clear();
  arena.add(a, "a", DType::f32, {2, 5});
  CHECK_FALSE(arena.commit());
  CHECK(alloc.calls == 1);
  // a larger one allocates once
  arena.clear();
  arena.add(a, "a", DType::f32, {1000});
  CHECK(arena.commit());
  CHECK(alloc.calls == 2);
}

TEST_CASE("tensor views: rows, reshapes and checked dtypes") {
  std::vector<float> data(24);
  for (size_t i = 0; i < data.size(); i++) data[i] = static_cast<float>(i);
  Tensor t;
  t.ptr = data.data();
  t.ndim = 2;
  t.shape = {6, 4, 0, 0};
  const Tensor r = t.rows(2, 3);
  CHECK(r.shape[0] == 3);
  CHECK(r.f32()[0] == 8.0f);
  const Tensor v = t.view({2, 3, 4});
  CHECK(v.ndim == 3);
  CHECK(v.numel() == 24);
  CHECK(t.describe() == "f32[6, 4] cpu");
}

TEST_CASE("a CPU training step allocates nothing once its buffers exist, and reports every phase") {
  const Config cfg = small_config(4);
  Mesh mesh = Mesh::single();
  Model model(cfg, mesh);
  Adafactor opt(model.params(), AdafactorOptions::from(cfg.train));
  auto step = [&](int64_t s, int64_t rows) {
    model.zero_grad();
    model.set_step(s);
    model.forward(batch_of(cfg, rows, 10 + s));
    model.backward();
    model.grad_norm();
    model.optimizer_step(opt, 0.01, s);
  };
  step(0, 4);
  const int64_t before = model.backend().stats().allocations;
  step(1, 4);
  step(2, 2);  // a smaller batch fits the same arena
  step(3, 4);
  CHECK(model.backend().stats().allocations == before);
  CHECK(model.activation_bytes() > 0);
  std::set<std::string> phases;
  for (const auto& [name, s] : model.timers.phases()) phases.insert(name);
  for (const char* want : {"attention", "router", "dispatch", "experts", "combine", "dense_ffn", "output", "grad_reduce",
                           "optimizer"}) {
    INFO(want);
    CHECK(phases.count(want) == 1);
  }
}

TEST_CASE("backward accumulates weight gradients: two backwards give twice the gradient") {
  const Config cfg = small_config(4);
  Mesh mesh = Mesh::single();
  Model model(cfg, mesh);
  const Batch b = batch_of(cfg, 4, 3);
  model.zero_grad();
  model.forward(b);
  model.backward();
  std::vector<std::vector<float>> once;
  for (const Param& p : model.params().params) once.push_back(p.g);
  model.backward();
  for (size_t i = 0; i < once.size(); i++) {
    INFO(model.params().params[i].name);
    for (size_t j = 0; j < once[i].size(); j++) REQUIRE(model.params().params[i].g[j] == Approx(2 * once[i][j]).margin(1e-7));
  }
  model.zero_grad();
  for (const Param& p : model.params().params)
    for (float g : p.g) REQUIRE(g == 0.0f);
}

TEST_CASE("the CPU attention saves O(S) per query for its backward, not the [S, S] probabilities") {
  Mesh mesh = Mesh::single();
  const int64_t B = 4, S = 1024, nh = 8;
  for (bool reference : {true, false}) {
    INFO((reference ? "reference kernels" : "fast kernels"));
    const auto backend = make_cpu_backend(mesh, reference, cpu::Precision::fp32);
    const std::vector<int64_t> shape = backend->attention_state_shape(B, S, nh);
    int64_t numel = 1;
    for (int64_t n : shape) numel *= n;
    CHECK(shape == std::vector<int64_t>{B, nh, S, 2});  // (row max, 1/denominator) per query
    CHECK(numel == B * nh * S * 2);
  }
}
