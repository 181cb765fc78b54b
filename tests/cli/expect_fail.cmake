# Runs a command that must fail cleanly, for the CLI tests of `glam`:
#   cmake -DEXPECT_STDERR=<regex> [-DEXPECT_RC=<status>] [-DGARBAGE_FILE=<path>]
#         -P expect_fail.cmake -- <command> <args...>
# Passes only when the command exits with a non-zero status (EXPECT_RC when given;
# a crash or signal never counts) AND its stderr matches EXPECT_STDERR.
# GARBAGE_FILE: written just before the command runs, for the corrupt-input tests;
# GARBAGE_KIND text (plain junk, the default) or signature (the 8-byte HDF5
# signature followed by junk: looks like HDF5 at a glance, but is truncated).
include(${CMAKE_CURRENT_LIST_DIR}/../command_after_dashes.cmake)
if(NOT DEFINED EXPECT_STDERR)
  message(FATAL_ERROR "expect_fail.cmake: set -DEXPECT_STDERR=<regex>")
endif()

if(DEFINED GARBAGE_FILE)
  if(GARBAGE_KIND STREQUAL "signature")
    string(ASCII 137 hdf_byte)
    string(ASCII 26 sub_byte)
    file(WRITE "${GARBAGE_FILE}" "${hdf_byte}HDF\r\n${sub_byte}\nonly the first eight bytes of this file look like HDF5\n")
  else()
    file(WRITE "${GARBAGE_FILE}" "this is not a corpus\n")
  endif()
endif()

execute_process(COMMAND ${command} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
message("exit status: ${rc}\n--- stdout ---\n${out}--- stderr ---\n${err}")
if(NOT rc MATCHES "^[0-9]+$")
  message(FATAL_ERROR "the command did not exit normally: ${rc}")
endif()
if(rc EQUAL 0)
  message(FATAL_ERROR "expected a non-zero exit status, got 0")
endif()
if(DEFINED EXPECT_RC AND NOT rc EQUAL EXPECT_RC)
  message(FATAL_ERROR "expected exit status ${EXPECT_RC}, got ${rc}")
endif()
if(NOT err MATCHES "${EXPECT_STDERR}")
  message(FATAL_ERROR "stderr does not match: ${EXPECT_STDERR}")
endif()
