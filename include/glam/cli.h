// Command-line helpers shared by the glam commands: options parsed with every
// stray positional argument refused, strict "DxM" meshes, checked int64
// products, and the activity that main() names when memory runs out.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <boost/program_options.hpp>

namespace glam {

// Largest mesh axis and mesh accepted anywhere (far beyond any cluster; keeps
// D * M and every per-rank count inside int).
constexpr int kMaxMeshAxis = 1 << 20;
constexpr int64_t kMaxMeshRanks = int64_t{1} << 24;

// Runs Boost's command-line parser on args against desc. Boost silently drops
// arguments that are not options; here each one throws UserError naming it and
// `command` ("glam eval"). po::error still escapes for the caller to wrap.
boost::program_options::parsed_options parse_command_line(const std::vector<std::string>& args,
                                                          const boost::program_options::options_description& desc,
                                                          const std::string& command);

// "DxM" -> D, M: two decimal integers from 1 to kMaxMeshAxis joined by 'x', with
// D * M <= kMaxMeshRanks; no sign, space, leading '+', or trailing junk. Anything
// else throws UserError naming `flag`.
void parse_mesh(const std::string& shape, const std::string& flag, int* data, int* model);

// a * b, or false when it does not fit in int64 (both >= 0).
bool checked_mul(int64_t a, int64_t b, int64_t* out);
bool checked_add(int64_t a, int64_t b, int64_t* out);

// Physical memory of this machine in bytes (0 when unknown).
int64_t host_memory_bytes();

// What the process is doing, for the message main() prints on std::bad_alloc.
// An Activity sets it for its lifetime and restores the previous one.
const std::string& current_activity();
class Activity {
 public:
  explicit Activity(std::string what);
  ~Activity();
  Activity(const Activity&) = delete;
  Activity& operator=(const Activity&) = delete;

 private:
  std::string previous_;
};

}  // namespace glam
