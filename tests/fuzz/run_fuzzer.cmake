# cmake -DFUZZER=<binary> -DCORPUS=<seed dir> -DWORK_DIR=<dir> -DRUNS=<n> -DMAX_LEN=<n>
#       -DMAX_TIME=<s> -P run_fuzzer.cmake
# Runs a libFuzzer binary over a fresh copy of the seed corpus: libFuzzer adds the inputs it
# finds to its first corpus directory, and the committed seeds must stay as they are. Inputs that
# crash are kept in WORK_DIR/artifacts until the next failing run overwrites them.
file(REMOVE_RECURSE "${WORK_DIR}/corpus")
file(MAKE_DIRECTORY "${WORK_DIR}/corpus" "${WORK_DIR}/artifacts")
file(COPY "${CORPUS}/" DESTINATION "${WORK_DIR}/corpus")
execute_process(
  COMMAND "${FUZZER}" -runs=${RUNS} -max_len=${MAX_LEN} -max_total_time=${MAX_TIME}
          -print_final_stats=1 "-artifact_prefix=${WORK_DIR}/artifacts/" "${WORK_DIR}/corpus"
  RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${FUZZER} failed (${rc}); the input is in ${WORK_DIR}/artifacts/")
endif()
