// The subcommands of the `glam` executable. Each takes its arguments without the
// subcommand name, returns the process exit code, and throws UserError for bad input.
#pragma once
#include <string>
#include <vector>

namespace glam {

// Exit status of `glam train` after SIGTERM or SIGUSR1: the current step was
// finished and a checkpoint written; job scripts requeue on it (EX_TEMPFAIL).
constexpr int kExitPreempted = 75;

int train_main(const std::vector<std::string>& args);
int plan_main(const std::vector<std::string>& args);
int generate_main(const std::vector<std::string>& args);
int eval_main(const std::vector<std::string>& args);

}  // namespace glam
