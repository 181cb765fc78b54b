// init_params: a deterministic function of (seed, name, global index), drawn in
// parallel over OpenMP threads. The values must not depend on the thread count,
// must equal a plain serial walk of every element, and must stay those of the
// serial implementation that preceded the threaded one (the checksums below were
// computed with it: a change of init changes every run's losses).
#include <catch2/catch.hpp>
#include <omp.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "glam/model/config.h"
#include "glam/mesh/mesh.h"
#include "glam/model/params.h"

using namespace glam;

namespace {

// A small MoE model whose every sharded dim splits over 2 model and 4 data ranks,
// with tensors of several of init_params' chunks (2^15 elements) whose chunk
// boundaries fall inside rows: the embedding [3000, 32], experts [2, 32, 1200].
ModelConfig small_config() {
  ModelConfig c;
  c.vocab_size = 3000;
  c.d_model = 32;
  c.n_layers = 3;
  c.n_heads = 4;
  c.d_head = 8;
  c.d_ff = 1200;
  c.n_experts = 2;  // 2 experts on 4 data ranks: replicated twice
  c.seq_len = 16;
  c.group_size = 16;
  return c;
}

// A cell of a D x M mesh without communicators: build_params and init_params
// read only the shape and this rank's cell.
Mesh cell(int D, int M, int d, int m) {
  Mesh mesh;
  mesh.data_size = D;
  mesh.model_size = M;
  mesh.data_rank = d;
  mesh.model_rank = m;
  mesh.world_size = D * M;
  mesh.world_rank = d * M + m;
  return mesh;
}

// FNV-1a over the bit patterns of every weight, tensor by tensor.
uint64_t checksum(const ParamTable& t) {
  uint64_t h = 1469598103934665603ULL;
  for (const Param& p : t.params)
    for (float x : p.w) {
      uint32_t bits;
      std::memcpy(&bits, &x, sizeof bits);
      for (int b = 0; b < 4; b++) h = (h ^ ((bits >> (8 * b)) & 0xffu)) * 1099511628211ULL;
    }
  return h;
}

ParamTable init_with_threads(const ModelConfig& c, const Mesh& mesh, uint64_t seed, int threads) {
  ParamTable t = build_params(c, mesh);
  const int before = omp_get_max_threads();
  omp_set_num_threads(threads);
  init_params(t, seed, mesh);
  omp_set_num_threads(before);
  return t;
}

bool bitwise_equal(const ParamTable& a, const ParamTable& b) {
  if (a.params.size() != b.params.size()) return false;
  for (size_t i = 0; i < a.params.size(); i++) {
    const auto& x = a.params[i].w;
    const auto& y = b.params[i].w;
    if (x.size() != y.size() || std::memcmp(x.data(), y.data(), sizeof(float) * x.size()) != 0) return false;
  }
  return true;
}

struct Case {
  int D, M, d, m;
  uint64_t seed;
  uint64_t sum;  // checksum with the serial init_params before it was threaded
};

// Computed by the serial init_params (commit 069fb3e).
const Case cases[] = {
    {1, 1, 0, 0, 1234, 0x6a7eec639c567dbcULL},
    {1, 1, 0, 0, 7, 0x11c862012353ef6aULL},
    {2, 2, 1, 1, 1234, 0x0c9288e827327d26ULL},
    {4, 1, 3, 0, 1234, 0x7702a097118dd2c9ULL},
    {1, 2, 0, 1, 99, 0x9956383a2cdafda5ULL},
};

}  // namespace

TEST_CASE("init_params: the same bits for 1, 2 and 4 threads, and as before threading") {
  const ModelConfig c = small_config();
  for (const Case& k : cases) {
    const Mesh mesh = cell(k.D, k.M, k.d, k.m);
    INFO("mesh " << k.D << "x" << k.M << " cell (" << k.d << "," << k.m << ") seed " << k.seed);
    const ParamTable one = init_with_threads(c, mesh, k.seed, 1);
    if (std::getenv("GLAM_PRINT_PARAM_CHECKSUMS"))
      std::printf("{%d, %d, %d, %d, %llu, 0x%016llxULL},\n", k.D, k.M, k.d, k.m,
                  static_cast<unsigned long long>(k.seed), static_cast<unsigned long long>(checksum(one)));
    CHECK(checksum(one) == k.sum);
    for (int threads : {2, 4}) {
      INFO(threads << " threads");
      CHECK(bitwise_equal(init_with_threads(c, mesh, k.seed, threads), one));
    }
  }
}

TEST_CASE("init_params: equal to a serial walk with for_each_element") {
  const ModelConfig c = small_config();
  for (const Mesh& mesh : {cell(1, 1, 0, 0), cell(2, 2, 1, 0), cell(4, 2, 2, 1)}) {
    const ParamTable fast = init_with_threads(c, mesh, 1234, 4);
    // Reference: the global index of each local element from for_each_element,
    // and the value of that element on a 1x1 mesh (init depends on the global
    // index only, so a shard is a slice of the whole tensor).
    const ParamTable whole = init_with_threads(c, cell(1, 1, 0, 0), 1234, 1);
    for (size_t i = 0; i < fast.params.size(); i++) {
      const Param& p = fast.params[i];
      const Param& w = whole.params[i];
      REQUIRE(p.name == w.name);
      int64_t bad = 0;
      for_each_element(p, mesh, [&](int64_t local, int64_t global) {
        if (std::memcmp(&p.w[local], &w.w[global], sizeof(float)) != 0) bad++;
      });
      INFO(p.name << " on cell (" << mesh.data_rank << "," << mesh.model_rank << ")");
      CHECK(bad == 0);
    }
  }
}

TEST_CASE("init_params: a few elements, as hex floats") {
  const ModelConfig c = small_config();
  const ParamTable t = init_with_threads(c, cell(1, 1, 0, 0), 1234, 3);
  char buf[64];
  auto hex = [&](const std::string& name, int64_t i) {
    std::snprintf(buf, sizeof buf, "%a", static_cast<double>(t.get(name).w.at(static_cast<size_t>(i))));
    return std::string(buf);
  };
  if (std::getenv("GLAM_PRINT_PARAM_CHECKSUMS"))
    std::printf("%s %s %s %s %s %s\n", hex("embedding", 0).c_str(), hex("embedding", 95999).c_str(),
                hex("layer_00/moe/wi", 1000).c_str(), hex("layer_00/moe/wi", 70000).c_str(),
                hex("layer_01/ffn/wo", 77).c_str(), hex("layer_01/attn/rel_bias", 5).c_str());
  // the serial init_params's values (commit 069fb3e)
  CHECK(hex("embedding", 0) == "0x1.205decp-1");
  CHECK(hex("embedding", 95999) == "0x1.427514p+0");
  CHECK(hex("layer_00/moe/wi", 1000) == "-0x1.c141c2p-3");
  CHECK(hex("layer_00/moe/wi", 70000) == "0x1.cc4584p-7");
  CHECK(hex("layer_01/ffn/wo", 77) == "0x1.86ad38p-8");
  CHECK(hex("layer_01/attn/rel_bias", 5) == "0x1.7a14d4p-7");
  CHECK(hex("layer_00/attn/norm_scale", 3) == "0x1p+0");
}
