# Runs fault_probe under mpirun with 2 ranks in mode MODE and checks that the job ends on its own
# within a bound, with a non-zero exit code and a message that names the failing rank.
# cmake -DMPIEXEC=... -DFLAGS=... -DNP_FLAG=-n -DPROBE=... -DMODE=abort|unwind|crash -P fault_check.cmake
set(bound 30)
string(TIMESTAMP start "%s")
execute_process(COMMAND ${MPIEXEC} ${FLAGS} ${NP_FLAG} 2 ${PROBE} ${MODE}
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT ${bound})
string(TIMESTAMP stop "%s")
math(EXPR seconds "${stop} - ${start}")
message("mode ${MODE}: exit '${rc}' after ${seconds} s\n--- output ---\n${out}${err}--------------")

if(NOT rc MATCHES "^[0-9]+$")
  message(FATAL_ERROR "the job did not end by itself within ${bound} s (${rc}): a failed rank "
                      "left the others hanging")
endif()
if(rc EQUAL 0)
  message(FATAL_ERROR "the job exited 0 although rank 1 failed")
endif()
if(MODE STREQUAL "abort")
  set(expected "keel: rank 1 of 2: probe failure in mode abort; aborting the job")
elseif(MODE STREQUAL "unwind")
  set(expected "keel: rank 1 of 2: an exception is unwinding past the MPI session")
else()
  set(expected "rank 1")
endif()
string(FIND "${out}${err}" "${expected}" at)
if(at EQUAL -1)
  message(FATAL_ERROR "the output does not say '${expected}'")
endif()
