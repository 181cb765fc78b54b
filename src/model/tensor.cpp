// Tensor views and arenas (tensor.h).
#include "glam/model/tensor.h"

#include <cstdio>

#include "glam/base/check.h"

namespace glam {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::f64: return 8;
    case DType::f32: case DType::i32: return 4;
    case DType::bf16: return 2;
    case DType::u8: return 1;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "f32";
    case DType::bf16: return "bf16";
    case DType::i32: return "i32";
    case DType::u8: return "u8";
    case DType::f64: return "f64";
  }
  return "?";
}

int64_t Tensor::numel() const {
  int64_t n = ndim > 0 ? 1 : 0;
  for (int i = 0; i < ndim; i++) n *= shape[i];
  return n;
}

namespace {
// The tensor's data as T, which must be what its dtype holds.
template <typename T>
T* data_as(const Tensor& t, DType want) {
  if (t.dtype != want)
    fatal(msg("internal check failed: a ", dtype_name(t.dtype), " tensor read as ", dtype_name(want)), __FILE__,
          __LINE__);
  return static_cast<T*>(t.ptr);
}
}  // namespace

float* Tensor::f32() const { return data_as<float>(*this, DType::f32); }
uint16_t* Tensor::bf16() const { return data_as<uint16_t>(*this, DType::bf16); }
int32_t* Tensor::i32() const { return data_as<int32_t>(*this, DType::i32); }
double* Tensor::f64() const { return data_as<double>(*this, DType::f64); }
uint8_t* Tensor::u8() const { return data_as<uint8_t>(*this, DType::u8); }

Tensor Tensor::rows(int64_t r0, int64_t n) const {
  GLAM_ASSERT(ndim >= 1 && r0 >= 0 && n >= 0 && r0 + n <= shape[0]);
  Tensor t = *this;
  const int64_t row = shape[0] > 0 ? numel() / shape[0] : 0;
  t.ptr = static_cast<char*>(ptr) + static_cast<size_t>(r0 * row) * dtype_size(dtype);
  t.shape[0] = n;
  return t;
}

Tensor Tensor::view(std::initializer_list<int64_t> s) const {
  Tensor t = *this;
  t.ndim = 0;
  for (int64_t d : s) t.shape[t.ndim++] = d;
  GLAM_ASSERT(t.numel() == numel());
  return t;
}

std::string Tensor::describe() const {
  std::string s = dtype_name(dtype);
  s += "[";
  for (int i = 0; i < ndim; i++) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "] " + (device == Device::cpu ? "cpu" : "cuda");
}

Arena::~Arena() {
  if (base_) alloc_->deallocate(base_);
}

void Arena::add(Tensor& dst, const std::string& name, DType dtype, std::initializer_list<int64_t> shape) {
  add(dst, name, dtype, std::vector<int64_t>(shape));
}

void Arena::add(Tensor& dst, const std::string& name, DType dtype, const std::vector<int64_t>& shape) {
  GLAM_ASSERT(!shape.empty() && shape.size() <= 4);
  for (int64_t d : shape) GLAM_ASSERT(d >= 0);
  specs_.push_back({name, dtype, shape, &dst});
}

namespace {
constexpr size_t kAlign = 256;  // cuBLAS and vector loads like 256-byte alignment
size_t aligned(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }
}  // namespace

bool Arena::commit() {
  size_t total = 0;
  for (const TensorSpec& s : specs_) {
    size_t n = dtype_size(s.dtype);
    for (int64_t d : s.shape) n *= static_cast<size_t>(d);
    total += aligned(n);
  }
  bool grew = false;
  if (total > capacity_) {
    if (base_) alloc_->deallocate(base_);
    base_ = nullptr;
    capacity_ = 0;
    base_ = alloc_->allocate(total);
    capacity_ = total;
    grew = true;
  }
  size_t off = 0;
  for (const TensorSpec& s : specs_) {
    Tensor t;
    t.ptr = static_cast<char*>(base_) + off;
    t.dtype = s.dtype;
    t.device = alloc_->device();
    t.ndim = static_cast<int>(s.shape.size());
    for (int i = 0; i < t.ndim; i++) t.shape[i] = s.shape[i];
    *s.dst = t;
    off += aligned(t.bytes());
  }
  return grew;
}

std::string Arena::report() const {
  std::string out;
  char line[160];
  for (const TensorSpec& s : specs_) {
    std::snprintf(line, sizeof line, "  %-28s %s %12zu bytes\n", s.name.c_str(), s.dst->describe().c_str(),
                  s.dst->bytes());
    out += line;
  }
  return out;
}

}  // namespace glam
