// glam::Tokenizer: a SentencePiece model loaded through libsentencepiece.
// The model file is read once; its bytes give the hash (hex FNV-1a 64) that
// corpus files record, and the same bytes are handed to SentencePiece, so the
// hash always describes the model actually in use. Every failure is a
// UserError naming the model file.
#include "glam/data/tokenizer.h"

#include <sentencepiece_processor.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <sstream>

#include "glam/data/bounded_read.h"
#include "glam/base/check.h"

namespace glam {

namespace {

std::string read_model_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  GLAM_REQUIRE(in, "cannot read tokenizer model '", path, "' (missing or unreadable)");
  // A directory opens as an ifstream but fails on the first read (basic_filebuf::underflow).
  file_bytes(path, "tokenizer model");
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  GLAM_REQUIRE(!in.bad(), "error while reading tokenizer model '", path, "'");
  GLAM_REQUIRE(!bytes.empty(), "tokenizer model '", path, "' is empty");
  return bytes;
}

std::string fnv1a64_hex(const std::string& bytes) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  char out[17];
  std::snprintf(out, sizeof out, "%016llx", static_cast<unsigned long long>(h));
  return out;
}

}  // namespace

Tokenizer::Tokenizer(const std::string& model_path)
    : sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {
  ReadingFile reading(model_path);
  const std::string bytes = read_model_bytes(model_path);
  const auto status = sp_->LoadFromSerializedProto(bytes);
  GLAM_REQUIRE(status.ok(), "'", model_path,
               "' is not a valid SentencePiece model: ", status.ToString());
  GLAM_REQUIRE(sp_->eos_id() >= 0, "SentencePiece model '", model_path,
               "' has no end-of-sentence piece </s> (train it with eos_id >= 0); "
               "glam needs it as the end-of-document token");
  hash_ = fnv1a64_hex(bytes);
}

Tokenizer::~Tokenizer() = default;

std::vector<int32_t> Tokenizer::encode(const std::string& text) const {
  std::vector<int> ids;
  const auto status = sp_->Encode(text, &ids);
  GLAM_REQUIRE(status.ok(), "SentencePiece failed to encode text: ", status.ToString());
  return std::vector<int32_t>(ids.begin(), ids.end());
}

std::vector<int32_t> Tokenizer::encode(const std::string& text, int64_t& unk_pieces,
                                       int64_t& unk_bytes) const {
  const auto spt = sp_->EncodeAsImmutableProto(text);
  std::vector<int32_t> ids;
  ids.reserve(spt.pieces_size());
  const int unk = sp_->unk_id();
  for (const auto& piece : spt.pieces()) {
    const int32_t id = static_cast<int32_t>(piece.id());
    ids.push_back(id);
    if (id == unk) {
      ++unk_pieces;
      unk_bytes += static_cast<int64_t>(piece.end()) - static_cast<int64_t>(piece.begin());
    }
  }
  GLAM_REQUIRE(!ids.empty() || text.find_first_not_of(" \t\r\n") == std::string::npos,
               "SentencePiece failed to encode a text of ", text.size(), " bytes");
  return ids;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  const int64_t n = vocab_size();
  for (int32_t id : ids)
    GLAM_REQUIRE(id >= 0 && id < n, "token id ", id, " is outside the vocabulary [0, ", n, ")");
  const std::vector<int> sp_ids(ids.begin(), ids.end());
  std::string text;
  const auto status = sp_->Decode(sp_ids, &text);
  GLAM_REQUIRE(status.ok(), "SentencePiece failed to decode ids: ", status.ToString());
  return text;
}

int64_t Tokenizer::vocab_size() const { return sp_->GetPieceSize(); }

int32_t Tokenizer::eod_id() const { return sp_->eos_id(); }

int32_t Tokenizer::unk_id() const { return sp_->unk_id(); }

}  // namespace glam
