// The build's version and commit (include/glam/base/version.h); the values come from
// the header CMake generates (src/base/version_info.h.in).
#include "glam/base/version.h"

#include <nlohmann/json.hpp>

#include "glam/base/version_info.h"

namespace glam {

const char* project_version() { return GLAM_PROJECT_VERSION; }
const char* git_commit() { return GLAM_GIT_COMMIT; }

std::string version_string(const std::string& tool) {
  return tool + " " + project_version() + " (git " + git_commit() + ")";
}

std::string build_json() {
  const nlohmann::ordered_json j = {{"glam_version", project_version()}, {"git_commit", git_commit()}};
  return j.dump(2);
}

}  // namespace glam
