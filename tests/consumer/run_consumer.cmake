# Runs one consumer project end to end: (install kvc,) configure, build, run its tests, and check
# that only the consumer's own tests exist. Invoked by ctest with
#   -DMODE=fetchcontent|installed -DKVC_SOURCE_DIR -DKVC_BINARY_DIR -DWORK_DIR
#   -DCMAKE_BUILD_TYPE -DCXX_COMPILER -DGENERATOR
cmake_minimum_required(VERSION 3.21)

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    string(REPLACE ";" " " cmd "${ARGN}")
    message(FATAL_ERROR "failed (${rc}): ${cmd}\n${out}\n${err}")
  endif()
  set(last_output "${out}" PARENT_SCOPE)
endfunction()

set(dir "${WORK_DIR}/${MODE}")
file(REMOVE_RECURSE "${dir}")
file(MAKE_DIRECTORY "${dir}")
set(configure_args -G "${GENERATOR}" -DCMAKE_CXX_COMPILER=${CXX_COMPILER}
                   -DCMAKE_BUILD_TYPE=${CMAKE_BUILD_TYPE})

if(MODE STREQUAL "fetchcontent")
  list(APPEND configure_args -DKVC_SOURCE_DIR=${KVC_SOURCE_DIR})
elseif(MODE STREQUAL "installed")
  set(prefix "${dir}/prefix")
  run(${CMAKE_COMMAND} --install "${KVC_BINARY_DIR}" --prefix "${prefix}")
  file(STRINGS "${KVC_SOURCE_DIR}/CMakeLists.txt" project_line REGEX "^project\\(kvc VERSION")
  string(REGEX REPLACE ".*VERSION ([0-9.]+).*" "\\1" version "${project_line}")
  list(APPEND configure_args -DCMAKE_PREFIX_PATH=${prefix} -DKVC_EXPECTED_VERSION=${version})

  # The pkg-config file works too: compile the consumer with its flags alone.
  set(ENV{PKG_CONFIG_PATH} "${prefix}/share/pkgconfig")
  run(pkg-config --cflags kvc)
  string(STRIP "${last_output}" pc_flags)
  separate_arguments(pc_flags UNIX_COMMAND "${pc_flags}")
  run(${CXX_COMPILER} ${pc_flags} "${KVC_SOURCE_DIR}/tests/consumer/consumer_main.cpp"
      -o "${dir}/pkgconfig_consumer")
  run("${dir}/pkgconfig_consumer")
else()
  message(FATAL_ERROR "MODE is fetchcontent or installed, not '${MODE}'")
endif()

run(${CMAKE_COMMAND} -S "${KVC_SOURCE_DIR}/tests/consumer/${MODE}" -B "${dir}/build" ${configure_args})
run(${CMAKE_COMMAND} --build "${dir}/build")
run(${CMAKE_COMMAND} -E chdir "${dir}/build" ctest --output-on-failure)
run(${CMAKE_COMMAND} -E chdir "${dir}/build" ctest -N)
if(NOT last_output MATCHES "Total Tests: 1\n")
  message(FATAL_ERROR "the consumer should have exactly its own test, ctest lists:\n${last_output}")
endif()
run("${dir}/build/verbs_consumer")
message(STATUS "${MODE} consumer: ok")
