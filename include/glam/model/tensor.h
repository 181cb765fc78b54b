// Tensor views and the arena they are carved from. A Tensor names memory it does
// not own: a pointer, its element type, its shape and the device it lives on.
// Every buffer of the model (parameters, activations, backward scratch, the KV
// cache) is a Tensor carved from one Arena per purpose: the model lists the specs
// (name, dtype, shape), the arena sums them, asks its backend for ONE allocation
// (only when the total grew) and hands out aligned views. So a training step of
// a fixed shape allocates nothing, and a reader finds every buffer in one table.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <string>
#include <vector>

#include "glam/mesh/device.h"

namespace glam {

enum class DType : uint8_t { f32, bf16, i32, u8, f64 };
size_t dtype_size(DType t);
const char* dtype_name(DType t);

struct Tensor {
  void* ptr = nullptr;
  DType dtype = DType::f32;
  Device device = Device::cpu;
  std::array<int64_t, 4> shape{};  // the first ndim entries
  int ndim = 0;

  int64_t numel() const;
  bool empty() const { return ptr == nullptr || numel() == 0; }
  size_t bytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
  // Typed access; the dtype must match (checked).
  float* f32() const;
  uint16_t* bf16() const;
  int32_t* i32() const;
  uint8_t* u8() const;
  double* f64() const;
  // Rows [r0, r0 + n) of dim 0 (a view of the same memory).
  Tensor rows(int64_t r0, int64_t n) const;
  // The same memory seen as another shape of equal element count.
  Tensor view(std::initializer_list<int64_t> shape) const;
  std::string describe() const;  // "f32[4, 128] cpu"
};

// One request for memory from an Arena.
struct TensorSpec {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  Tensor* dst;
};

// Raw memory of one device (what a backend provides to arenas).
class Allocator {
 public:
  virtual ~Allocator() = default;
  virtual Device device() const = 0;
  virtual void* allocate(size_t bytes) = 0;  // 256-byte aligned, never null; throws on failure
  virtual void deallocate(void* p) = 0;
};

class Arena {
 public:
  explicit Arena(Allocator& alloc) : alloc_(&alloc) {}
  ~Arena();
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  // Starts a new table; the tensors of the previous one stay valid until commit().
  void clear() { specs_.clear(); }
  void add(Tensor& dst, const std::string& name, DType dtype, std::initializer_list<int64_t> shape);
  void add(Tensor& dst, const std::string& name, DType dtype, const std::vector<int64_t>& shape);
  // Carves the table; allocates only when it needs more bytes than the arena holds.
  // Returns true when it (re)allocated (the old views are then invalid).
  bool commit();
  size_t bytes() const { return capacity_; }
  const std::vector<TensorSpec>& specs() const { return specs_; }
  std::string report() const;  // one line per tensor: name, dtype, shape, bytes

 private:
  Allocator* alloc_;
  std::vector<TensorSpec> specs_;
  void* base_ = nullptr;
  size_t capacity_ = 0;
};

}  // namespace glam
