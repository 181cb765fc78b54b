// SentencePiece through libsentencepiece: the one tokenizer of glam.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace sentencepiece { class SentencePieceProcessor; }

namespace glam {

class Tokenizer {
 public:
  // Loads a .model file; throws UserError naming the file on failure.
  explicit Tokenizer(const std::string& model_path);
  ~Tokenizer();
  std::vector<int32_t> encode(const std::string& text) const;
  // Like encode, and adds to unk_pieces / unk_bytes the <unk> ids written and
  // the bytes of text they stand for (text the model could not spell).
  std::vector<int32_t> encode(const std::string& text, int64_t& unk_pieces, int64_t& unk_bytes) const;
  std::string decode(const std::vector<int32_t>& ids) const;
  int64_t vocab_size() const;
  int32_t eod_id() const;              // the </s> piece
  int32_t unk_id() const;              // the <unk> piece (text the model cannot spell)
  const std::string& hash() const { return hash_; }  // hex digest of the model file bytes
 private:
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  std::string hash_;
};

}  // namespace glam
