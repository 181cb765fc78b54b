# Runs an MPI job in which one rank dies (SIGKILL) and checks that the whole job
# ends promptly instead of hanging:
#   cmake -DMAX_SECONDS=<s> [-DEXPECT_STDOUT=<regex>] [-DREJECT_STDOUT=<regex>]
#         [-DEXPECT_STDERR=<regex>] -P expect_killed.cmake -- <command> <args...>
# Passes only when the command exits with a non-zero status (a number or a signal
# description both count) within MAX_SECONDS, its stdout matches EXPECT_STDOUT (the
# job got as far as the kill point), does not match REJECT_STDOUT (it stopped there)
# and its stderr matches EXPECT_STDERR (mpirun says which rank died of what).
include(${CMAKE_CURRENT_LIST_DIR}/../command_after_dashes.cmake)
if(NOT DEFINED MAX_SECONDS)
  message(FATAL_ERROR "expect_killed.cmake: set -DMAX_SECONDS=<seconds>")
endif()

string(TIMESTAMP t0 "%s" UTC)
# The TIMEOUT here is a second guard under the CTest one, so a hang is reported as such.
math(EXPR guard "${MAX_SECONDS} * 2")
execute_process(COMMAND ${command} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err
                TIMEOUT ${guard})
string(TIMESTAMP t1 "%s" UTC)
math(EXPR elapsed "${t1} - ${t0}")
message("exit status: ${rc} after ${elapsed} s\n--- stdout ---\n${out}--- stderr ---\n${err}")
if(rc STREQUAL "0")
  message(FATAL_ERROR "expected a non-zero exit status, got 0")
endif()
if(rc MATCHES "[Tt]imeout|timed out")
  message(FATAL_ERROR "the job hung: still running after ${guard} s")
endif()
if(elapsed GREATER MAX_SECONDS)
  message(FATAL_ERROR "the job took ${elapsed} s to end, more than ${MAX_SECONDS} s")
endif()
if(DEFINED EXPECT_STDOUT AND NOT out MATCHES "${EXPECT_STDOUT}")
  message(FATAL_ERROR "stdout does not match: ${EXPECT_STDOUT} (the job did not reach the kill point)")
endif()
if(DEFINED REJECT_STDOUT AND out MATCHES "${REJECT_STDOUT}")
  message(FATAL_ERROR "stdout matches ${REJECT_STDOUT}: the job went on past the kill point")
endif()
if(DEFINED EXPECT_STDERR AND NOT err MATCHES "${EXPECT_STDERR}")
  message(FATAL_ERROR "stderr does not match: ${EXPECT_STDERR}")
endif()
message("ok: the job ended with status ${rc} after ${elapsed} s")
