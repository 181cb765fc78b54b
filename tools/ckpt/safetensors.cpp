// glam-ckpt export --format safetensors: u64 LE header length N, N bytes of JSON
// (space-padded to a multiple of 8), then the tensors' bytes in sorted-name order;
// and the model config as JSON beside it. JSON through nlohmann-json.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <fstream>

#include "ckpt.h"
#include "glam/layers/cpu/gemm.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "glam-ckpt writes safetensors and bfloat16 from memory and assumes a little-endian host"
#endif

namespace glam::ckpt {

namespace {

using ordered_json = nlohmann::ordered_json;

// A tensor of the file: its safetensors name ("layer_00.attn.wq") and byte range.
struct Entry {
  std::string name;
  const CheckpointDataset* t;
  int64_t begin, end;
};

// The entries in sorted-name order with contiguous byte ranges.
std::vector<Entry> layout(const std::vector<CheckpointDataset>& params, bool bf16) {
  std::vector<Entry> entries;
  for (const CheckpointDataset& t : params) {
    std::string name = t.desc.name;
    std::replace(name.begin(), name.end(), '/', '.');
    entries.push_back({name, &t, 0, 0});
  }
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) { return a.name < b.name; });
  int64_t at = 0;
  for (Entry& e : entries) {
    e.begin = at;
    at += product(e.t->desc.global_shape) * (bf16 ? 2 : 4);
    e.end = at;
  }
  return entries;
}

// The header's JSON (compact, in entry order), padded with spaces to a multiple of 8.
std::string header_text(const std::vector<Entry>& entries, const std::string& config_ini, bool bf16) {
  ordered_json header;
  header["__metadata__"] = {{"format", "pt"}, {"glam_config", config_ini}};
  for (const Entry& e : entries)
    header[e.name] = {{"dtype", bf16 ? "BF16" : "F32"},
                      {"shape", e.t->desc.global_shape},
                      {"data_offsets", {e.begin, e.end}}};
  std::string text = header.dump(-1, ' ', false, ordered_json::error_handler_t::replace);
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

void write_header(std::ofstream& os, const std::string& header) {
  const uint64_t n = header.size();
  unsigned char len[8];
  for (int i = 0; i < 8; i++) len[i] = static_cast<unsigned char>(n >> (8 * i));
  os.write(reinterpret_cast<const char*>(len), 8);
  os.write(header.data(), static_cast<std::streamsize>(header.size()));
}

}  // namespace

int64_t write_safetensors(const Checkpoint& c, const std::vector<CheckpointDataset>& params, bool bf16,
                          int64_t chunk, const std::string& out) {
  const std::vector<Entry> entries = layout(params, bf16);
  std::ofstream os(out, std::ios::binary | std::ios::trunc);
  GLAM_REQUIRE(os, "cannot create '", out, "'");
  write_header(os, header_text(entries, c.config_ini, bf16));
  std::vector<uint16_t> half;
  for (const Entry& e : entries) {
    const h5::Dataset src = open_tensor(c, *e.t);
    const int64_t inner = product(e.t->desc.global_shape) / std::max<int64_t>(e.t->desc.global_shape[0], 1);
    stream_param(c, *e.t, src.get(), chunk, [&](int64_t, int64_t rows, const float* data) {
      const size_t count = static_cast<size_t>(rows * inner);
      if (!bf16) return void(os.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(count * 4)));
      half.resize(count);
      cpu::to_bf16(half.data(), data, static_cast<int64_t>(count));
      os.write(reinterpret_cast<const char*>(half.data()), static_cast<std::streamsize>(count * 2));
    });
  }
  os.flush();
  GLAM_REQUIRE(os, "cannot write '", out, "'");
  return entries.empty() ? 0 : entries.back().end;
}

std::string config_json(const Config& cfg, const std::optional<int64_t>& step) {
  const ModelConfig& m = cfg.model;
  std::vector<int64_t> moe_layers;
  for (int64_t l = 0; l < m.n_layers; l++)
    if (m.is_moe_layer(l)) moe_layers.push_back(l);
  // clang-format off
  ordered_json j = {{"format", "glam"}, {"vocab_size", m.vocab_size}, {"d_model", m.d_model},
                    {"n_layers", m.n_layers}, {"n_heads", m.n_heads}, {"d_head", m.d_head}, {"d_ff", m.d_ff},
                    {"n_experts", m.n_experts}, {"expert_act", m.expert_act}, {"second_policy", m.second_policy},
                    {"group_size", m.group_size}, {"capacity_factor", m.capacity_factor}, {"seq_len", m.seq_len},
                    {"moe_layers", moe_layers}};
  // clang-format on
  if (step) j["step"] = *step;
  j["tensor_layout"] =
      "weights are [in, out] (y = x @ W; torch.nn.Linear stores the transpose); "
      "moe/wi [E, d_model, d_ff] and moe/wo [E, d_ff, d_model] are per expert; "
      "embedding [vocab_size, d_model] is tied with the output layer; "
      "attn/rel_bias [n_heads, 32] holds T5 relative-position buckets";
  return j.dump(2, ' ', false, ordered_json::error_handler_t::replace) + "\n";
}

}  // namespace glam::ckpt
