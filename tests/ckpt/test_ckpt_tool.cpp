// glam-ckpt against glam's own checkpoint code: a checkpoint written by
// save_checkpoint (one rank) is verified by the tool; its reshard output is checked
// against checkpoint_tensors() and for_each_element() of the table glam builds for
// each rank of the mesh (local shapes, offsets and every element); an exported f32
// weights file loads with load_weights, and so does the export of a weights file
// (version 2, or version 1 without checksums). GLAM_CKPT_EXE is the tool (set by CMake);
// files go to the working directory (the test's tmp dir).
#include <catch2/catch.hpp>
#include <hdf5.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "glam/model/adafactor.h"
#include "glam/checkpoint/checkpoint.h"
#include "glam/model/params.h"
#include "glam/checkpoint/weights.h"

using namespace glam;
namespace fs = std::filesystem;

namespace {

Config tiny_config() {
  Config c;
  c.model.vocab_size = 64;
  c.model.d_model = 32;
  c.model.n_layers = 3;
  c.model.n_heads = 2;
  c.model.d_head = 16;
  c.model.d_ff = 64;
  c.model.n_experts = 4;
  c.model.group_size = 32;
  c.model.seq_len = 16;
  c.train.batch_rows = 4;
  c.train.factored_min_dim = 16;  // factored states, some of them split over the model axis
  c.validate();
  return c;
}

int run_tool(const std::string& args) {
  const std::string cmd = std::string(GLAM_CKPT_EXE) + " " + args;
  INFO(cmd);
  const int status = std::system(cmd.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// A trained-looking 1x1 state: initialised weights and two Adafactor updates.
struct State {
  Config cfg = tiny_config();
  Mesh mesh = Mesh::single();
  ParamTable table = build_params(cfg.model, mesh);
  Adafactor opt{table, AdafactorOptions::from(cfg.train)};
  std::string path;

  explicit State(const std::string& run_dir) {
    init_params(table, cfg.train.seed, mesh);
    for (int64_t t = 0; t < 2; t++) {
      for (Param& p : table.params)
        for (size_t i = 0; i < p.g.size(); i++) p.g[i] = static_cast<float>(std::sin(0.37 * double(i) + double(t)));
      opt.step(table, 0.01, t, mesh);
    }
    TrainState st;
    st.step = 2;
    st.updates = 2;
    st.data_next_row = 2 * cfg.train.batch_rows;
    st.seed = cfg.train.seed;
    fs::remove_all(run_dir);
    path = save_checkpoint(run_dir, table, opt, st, cfg, mesh, 0);
  }
};

std::vector<int64_t> int_array_attr(hid_t ds, const char* name) {
  hid_t attr = H5Aopen(ds, name, H5P_DEFAULT);
  REQUIRE(attr >= 0);
  hid_t space = H5Aget_space(attr);
  std::vector<int64_t> v(static_cast<size_t>(H5Sget_simple_extent_npoints(space)));
  REQUIRE(H5Aread(attr, H5T_NATIVE_INT64, v.data()) >= 0);
  H5Sclose(space);
  H5Aclose(attr);
  return v;
}

}  // namespace

TEST_CASE("glam-ckpt verifies a checkpoint that save_checkpoint wrote") {
  State s("verify_run");
  CHECK(run_tool("verify " + s.path) == 0);
  CHECK(run_tool("inspect " + s.path + " > inspect.txt") == 0);
}

TEST_CASE("glam-ckpt reshard matches glam's sharding of weights and optimizer state") {
  State s("reshard_run");
  // the 1x1 tensors are the global ones
  std::vector<CheckpointTensor> global = checkpoint_tensors(s.table, s.opt);
  for (auto [D, M] : std::vector<std::pair<int, int>>{{1, 1}, {2, 2}, {1, 2}, {2, 1}, {8, 1}, {4, 2}}) {
    const std::string dir = "reshard_" + std::to_string(D) + "x" + std::to_string(M);
    INFO("mesh " << D << "x" << M);
    REQUIRE(run_tool("reshard " + s.path + " --mesh " + std::to_string(D) + "x" + std::to_string(M) +
                     " --output-dir " + dir + " --overwrite --chunk-bytes 100 > /dev/null") == 0);
    for (int r = 0; r < D * M; r++) {
      const Mesh mesh = mesh_stand_in(D, M, r);
      ParamTable table = build_params(s.cfg.model, mesh);
      Adafactor opt(table, AdafactorOptions::from(s.cfg.train));
      const std::vector<CheckpointTensor> local = checkpoint_tensors(table, opt);
      REQUIRE(local.size() == global.size());
      const std::string file_name = dir + "/rank_" + std::to_string(r) + ".h5";
      hid_t file = H5Fopen(file_name.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
      REQUIRE(file >= 0);
      for (size_t k = 0; k < local.size(); k++) {
        const CheckpointTensor& t = local[k];
        INFO("rank " << r << " " << t.path);
        hid_t ds = H5Dopen2(file, t.path.c_str(), H5P_DEFAULT);
        REQUIRE(ds >= 0);
        hid_t space = H5Dget_space(ds);
        std::vector<hsize_t> dims(static_cast<size_t>(H5Sget_simple_extent_ndims(space)));
        H5Sget_simple_extent_dims(space, dims.data(), nullptr);
        H5Sclose(space);
        CHECK(std::vector<int64_t>(dims.begin(), dims.end()) == t.desc.shape);
        CHECK(int_array_attr(ds, "global_shape") == t.desc.global_shape);
        CHECK(int_array_attr(ds, "offset") == t.desc.shard_offset(mesh));
        std::vector<float> data(static_cast<size_t>(t.desc.size()));
        REQUIRE(H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data.data()) >= 0);
        H5Dclose(ds);
        // every element is the global tensor's element at glam's own global index
        const float* whole = global[k].data;
        int64_t wrong = 0;
        for_each_element(t.desc, mesh, [&](int64_t i, int64_t g) { wrong += data[i] != whole[g]; });
        CHECK(wrong == 0);
      }
      H5Fclose(file);
    }
  }
}

TEST_CASE("an f32 export loads with load_weights on any mesh") {
  State s("export_run");
  REQUIRE(run_tool("export " + s.path + " --output exported.h5 --overwrite > /dev/null") == 0);
  ParamTable fresh = build_params(s.cfg.model, s.mesh);
  load_weights("exported.h5", fresh, s.mesh);
  for (size_t i = 0; i < fresh.params.size(); i++) CHECK(fresh.params[i].w == s.table.params[i].w);
  // a 2x2 rank reads its hyperslabs of the same file
  const Mesh mesh = mesh_stand_in(2, 2, 3);
  ParamTable part = build_params(s.cfg.model, mesh);
  load_weights("exported.h5", part, mesh);
  for (size_t i = 0; i < part.params.size(); i++) {
    const Param& p = part.params[i];
    const std::vector<float>& whole = s.table.params[i].w;
    int64_t wrong = 0;
    for_each_element(p, mesh, [&](int64_t j, int64_t g) { wrong += p.w[j] != whole[g]; });
    CHECK(wrong == 0);
  }
}

TEST_CASE("glam-ckpt exports a weights file that save_weights wrote, and a version 1 one") {
  State s("weights_run");
  save_weights("saved_weights.h5", s.table, s.cfg, s.mesh);
  REQUIRE(run_tool("export saved_weights.h5 --output exported_weights.h5 --overwrite > /dev/null") == 0);
  REQUIRE(run_tool("verify exported_weights.h5 > /dev/null") == 0);
  ParamTable fresh = build_params(s.cfg.model, s.mesh);
  load_weights("exported_weights.h5", fresh, s.mesh);
  for (size_t i = 0; i < fresh.params.size(); i++) CHECK(fresh.params[i].w == s.table.params[i].w);

  // version 1: no checksums to check; the export is version 2 and checksummed
  fs::copy_file("saved_weights.h5", "v1_weights.h5", fs::copy_options::overwrite_existing);
  hid_t file = H5Fopen("v1_weights.h5", H5F_ACC_RDWR, H5P_DEFAULT);
  REQUIRE(file >= 0);
  const int64_t one = 1;
  hid_t version = H5Aopen(file, "version", H5P_DEFAULT);
  REQUIRE(H5Awrite(version, H5T_NATIVE_INT64, &one) >= 0);
  H5Aclose(version);
  for (const Param& p : s.table.params) REQUIRE(H5Adelete_by_name(file, ("params/" + p.name).c_str(), "checksum",
                                                                  H5P_DEFAULT) >= 0);
  H5Fclose(file);
  REQUIRE(run_tool("export v1_weights.h5 --output exported_v1.h5 --overwrite > /dev/null") == 0);
  REQUIRE(run_tool("verify exported_v1.h5 > /dev/null") == 0);  // checksums again
  ParamTable again = build_params(s.cfg.model, s.mesh);
  load_weights("exported_v1.h5", again, s.mesh);
  for (size_t i = 0; i < again.params.size(); i++) CHECK(again.params[i].w == s.table.params[i].w);
}
