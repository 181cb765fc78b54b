// The fuzz driver's mutations (tests/fuzz): seeded changes to a valid file that a
// glam reader must refuse cleanly (exit 2 naming the file) or accept (exit 0).
//   bytes: bit flips, hostile 4- and 8-byte integers, truncations, deletions,
//          duplications of byte ranges (any file; HDF5 metadata included)
//   text:  the byte mutations plus hostile numbers, deleted or repeated lines,
//          JSON and INI punctuation, invalid UTF-8, deep nesting
//   gzip:  the byte mutations of the compressed stream, or text mutations of the
//          content compressed again
//   hdf5:  the byte mutations, or edits through the HDF5 C API: hostile attribute
//          values (step 2^62, vocab_size 2^40 inside the stored config), array or
//          mistyped attributes, deleted attributes and datasets, datasets declared
//          with huge shapes and no storage, other element types, a flipped bit
#pragma once
#include <cstdint>
#include <random>
#include <string>

namespace fuzz {

using Rng = std::mt19937_64;

std::string read_file(const std::string& path);
void write_file(const std::string& path, const std::string& bytes);

// One mutation of `bytes`; returns a short description ("flip 3 bits at 1234").
std::string mutate_bytes(std::string& bytes, Rng& rng);
std::string mutate_text(std::string& text, Rng& rng);
std::string mutate_gzip(std::string& packed, Rng& rng);

// Edits the HDF5 file at `path` in place through the HDF5 API; returns what it
// did, or "" when the file could not be opened (the caller then mutates bytes).
std::string mutate_hdf5(const std::string& path, Rng& rng);

// `glam_fuzz edit FILE OP ARGS`: one hostile edit on purpose (h5_edit.cpp).
int edit_main(int argc, char** argv);

// Hostile integers and their decimal text.
int64_t hostile_int(Rng& rng);
std::string hostile_number(Rng& rng);

}  // namespace fuzz
