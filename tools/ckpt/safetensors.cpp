// glam-ckpt export --format safetensors: u64 LE header length N, N bytes of JSON
// (space-padded to a multiple of 8), then the tensors' bytes in sorted-name order
// (written in place by the ranks, pieces.cpp); and the model config as JSON beside
// it. JSON through nlohmann-json.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "ckpt.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "glam-ckpt writes safetensors and bfloat16 from memory and assumes a little-endian host"
#endif

namespace glam::ckpt {

namespace {

using ordered_json = nlohmann::ordered_json;

// A tensor of the file: its safetensors name ("layer_00.attn.wq"), its parameter
// (an index into params) and byte range.
struct Entry {
  std::string name;
  size_t param;
  int64_t begin, end;
};

// The entries in sorted-name order with contiguous byte ranges.
std::vector<Entry> layout(const std::vector<CheckpointDataset>& params, bool bf16) {
  std::vector<Entry> entries;
  for (size_t i = 0; i < params.size(); i++) {
    std::string name = params[i].desc.name;
    std::replace(name.begin(), name.end(), '/', '.');
    entries.push_back({name, i, 0, 0});
  }
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) { return a.name < b.name; });
  int64_t at = 0;
  for (Entry& e : entries) {
    e.begin = at;
    at += product(params[e.param].desc.global_shape) * (bf16 ? 2 : 4);
    e.end = at;
  }
  return entries;
}

// The header's JSON (compact, in entry order), padded with spaces to a multiple of 8.
std::string header_text(const std::vector<Entry>& entries, const std::vector<CheckpointDataset>& params,
                        const std::string& config_ini, bool bf16) {
  ordered_json header;
  header["__metadata__"] = {{"format", "pt"}, {"glam_config", config_ini}};
  for (const Entry& e : entries)
    header[e.name] = {{"dtype", bf16 ? "BF16" : "F32"},
                      {"shape", params[e.param].desc.global_shape},
                      {"data_offsets", {e.begin, e.end}}};
  std::string text = header.dump(-1, ' ', false, ordered_json::error_handler_t::replace);
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

}  // namespace

SafetensorsLayout safetensors_layout(const Checkpoint& c, const std::vector<CheckpointDataset>& params, bool bf16) {
  const std::vector<Entry> entries = layout(params, bf16);
  const std::string header = header_text(entries, params, c.config_ini, bf16);
  SafetensorsLayout out;
  const uint64_t n = header.size();
  for (int i = 0; i < 8; i++) out.head.push_back(static_cast<char>(n >> (8 * i)));  // u64 little endian
  out.head += header;
  out.at.assign(params.size(), 0);
  for (const Entry& e : entries) {
    out.at[e.param] = static_cast<int64_t>(out.head.size()) + e.begin;
    out.order.push_back(e.param);
  }
  out.bytes = entries.empty() ? 0 : entries.back().end;
  return out;
}

void create_safetensors(const SafetensorsLayout& layout, const std::string& out) {
  {
    std::ofstream os(out, std::ios::binary | std::ios::trunc);
    GLAM_REQUIRE(os, "cannot create '", out, "'");
    os.write(layout.head.data(), static_cast<std::streamsize>(layout.head.size()));
    os.flush();
    GLAM_REQUIRE(os, "cannot write '", out, "'");
  }
  std::error_code ec;  // the tensors' bytes are written in place by every rank (pieces.cpp)
  const auto size = static_cast<uintmax_t>(layout.head.size()) + static_cast<uintmax_t>(layout.bytes);
  std::filesystem::resize_file(out, size, ec);
  GLAM_REQUIRE(!ec, "cannot write '", out, "': ", ec.message());
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
