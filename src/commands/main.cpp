// glam: train, serve and evaluate GLaM-style Mixture-of-Experts language models.
#include <cstdio>
#include <string>

#include "glam/base/cli.h"
#include "glam/base/tool_main.h"
#include "glam/commands/commands.h"

namespace {

// Out of memory: say what was being done and how to make it fit. Status 3 (with
// several ranks tool_main then aborts the job: the others may wait in a collective).
int out_of_memory(const glam::Tool&, int rank, const std::string& command) {
  const std::string& what = glam::current_activity();
  std::fprintf(stderr,
               "glam: error on rank %d: out of memory while %s: the model or its batch does not fit in this "
               "machine's memory (`glam plan --config C --mesh DxM` shows the memory per rank; lower the model.* "
               "sizes or train.batch_rows, or use more ranks)\n",
               rank, what.empty() ? ("running glam " + command).c_str() : what.c_str());
  return 3;
}

}  // namespace

int main(int argc, char** argv) {
  glam::Tool glam{"glam",
                  {{"train", "train a model:  glam train --config input/glam-tiny.cfg --run-dir runs/tiny",
                    glam::train_main},
                   {"plan",
                    "parameters, FLOPs, memory, bytes and step time on a mesh:  glam plan --config C --mesh 4x2",
                    glam::plan_main},
                   {"generate", "continue a prompt:  glam generate --run-dir runs/tiny --prompt \"The\"",
                    glam::generate_main},
                   {"eval", "evaluate tasks or perplexity:  glam eval --run-dir runs/tiny --tasks tasks/",
                    glam::eval_main}}};
  glam.out_of_memory = out_of_memory;
  return glam::tool_main(glam, argc, argv);
}
