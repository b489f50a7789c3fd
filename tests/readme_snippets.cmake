# Checks that the README's code blocks are copies of compiled examples: each region between
# "// [name]" markers in an example must appear in README.md verbatim (dedented by two spaces).
# Invoked by ctest with -DSOURCE_DIR=<kvc checkout>.
cmake_minimum_required(VERSION 3.21)

file(READ "${SOURCE_DIR}/README.md" readme)
foreach(pair "examples/quickstart/main.cpp:manager" "examples/quickstart/main.cpp:quickstart" "examples/quickstart/main.cpp:tree"
             "tests/memnode/memnode_test.cpp:shm_client"
             "tests/memnode/memnode_test.cpp:index_client")
  string(REPLACE ":" ";" pair "${pair}")
  list(GET pair 0 file)
  list(GET pair 1 name)
  file(READ "${SOURCE_DIR}/${file}" source)
  string(REGEX MATCH "// \\[${name}\\]\n(.*)\n[ ]*// \\[${name}\\]" region "${source}")
  if(NOT region)
    message(FATAL_ERROR "${file} has no region marked // [${name}]")
  endif()
  # Dedent by two spaces with a literal replace (a regex "^" would match after every match).
  string(REPLACE "\n  " "\n" snippet "\n${CMAKE_MATCH_1}")
  string(SUBSTRING "${snippet}" 1 -1 snippet)
  string(FIND "${readme}" "${snippet}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "README.md does not contain the region '${name}' of ${file} as it is now:\n${snippet}")
  endif()
endforeach()
message(STATUS "README snippets match their examples")
