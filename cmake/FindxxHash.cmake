# FindxxHash: locates xxHash (Debian: libxxhash-dev), which ships no CMake config.
#
# Imported targets:
#   xxHash::headers  — include directory only (kvc inlines XXH3 with XXH_INLINE_ALL)
#   xxHash::xxhash   — the shared library, for programs that want the compiled functions
# Result variables: xxHash_FOUND, xxHash_VERSION, xxHash_INCLUDE_DIR, xxHash_LIBRARY
find_path(xxHash_INCLUDE_DIR NAMES xxhash.h)
find_library(xxHash_LIBRARY NAMES xxhash)

if(xxHash_INCLUDE_DIR AND EXISTS "${xxHash_INCLUDE_DIR}/xxhash.h")
  file(STRINGS "${xxHash_INCLUDE_DIR}/xxhash.h" _xxh_version_lines
       REGEX "^#define XXH_VERSION_(MAJOR|MINOR|RELEASE) +[0-9]+")
  foreach(_part MAJOR MINOR RELEASE)
    string(REGEX REPLACE ".*#define XXH_VERSION_${_part} +([0-9]+).*" "\\1" _xxh_${_part}
           "${_xxh_version_lines}")
  endforeach()
  set(xxHash_VERSION "${_xxh_MAJOR}.${_xxh_MINOR}.${_xxh_RELEASE}")
endif()

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(xxHash REQUIRED_VARS xxHash_INCLUDE_DIR VERSION_VAR xxHash_VERSION)
mark_as_advanced(xxHash_INCLUDE_DIR xxHash_LIBRARY)

if(xxHash_FOUND)
  if(NOT TARGET xxHash::headers)
    add_library(xxHash::headers INTERFACE IMPORTED)
    set_target_properties(xxHash::headers PROPERTIES
      INTERFACE_INCLUDE_DIRECTORIES "${xxHash_INCLUDE_DIR}")
  endif()
  if(xxHash_LIBRARY AND NOT TARGET xxHash::xxhash)
    add_library(xxHash::xxhash UNKNOWN IMPORTED)
    set_target_properties(xxHash::xxhash PROPERTIES
      IMPORTED_LOCATION "${xxHash_LIBRARY}"
      INTERFACE_INCLUDE_DIRECTORIES "${xxHash_INCLUDE_DIR}")
  endif()
endif()
