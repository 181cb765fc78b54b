// The build of glam: the project version (CMake's project(VERSION)) and the git
// commit it was configured from (`git describe --always --dirty` when CMake ran,
// "unknown" without git). Every tool prints version_string() for --version and
// `version`; `glam train` writes build_json() into the run dir (build.json).
#pragma once
#include <string>

namespace glam {

const char* project_version();  // "0.1.0"
const char* git_commit();       // "9635f3d", "9635f3d-dirty" or "unknown"

// "<tool> <version> (git <commit>)", e.g. "glam-tokenize 0.1.0 (git 9635f3d)".
std::string version_string(const std::string& tool);

// {"glam_version": "0.1.0", "git_commit": "9635f3d"}, indented, without a final newline.
std::string build_json();

}  // namespace glam
