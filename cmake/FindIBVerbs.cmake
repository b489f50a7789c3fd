# FindIBVerbs: locates rdma-core's libibverbs and librdmacm (Debian: libibverbs-dev,
# librdmacm-dev), which ship no CMake config.
#
# Imported targets: IBVerbs::ibverbs, IBVerbs::rdmacm
# Result variables: IBVerbs_FOUND, IBVerbs_INCLUDE_DIR, IBVerbs_LIBRARY, IBVerbs_RDMACM_LIBRARY
find_path(IBVerbs_INCLUDE_DIR NAMES infiniband/verbs.h)
find_path(IBVerbs_RDMACM_INCLUDE_DIR NAMES rdma/rdma_cma.h)
find_library(IBVerbs_LIBRARY NAMES ibverbs)
find_library(IBVerbs_RDMACM_LIBRARY NAMES rdmacm)

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(IBVerbs REQUIRED_VARS
  IBVerbs_LIBRARY IBVerbs_INCLUDE_DIR IBVerbs_RDMACM_LIBRARY IBVerbs_RDMACM_INCLUDE_DIR)
mark_as_advanced(IBVerbs_INCLUDE_DIR IBVerbs_RDMACM_INCLUDE_DIR IBVerbs_LIBRARY
                 IBVerbs_RDMACM_LIBRARY)

if(IBVerbs_FOUND)
  if(NOT TARGET IBVerbs::ibverbs)
    add_library(IBVerbs::ibverbs UNKNOWN IMPORTED)
    set_target_properties(IBVerbs::ibverbs PROPERTIES
      IMPORTED_LOCATION "${IBVerbs_LIBRARY}"
      INTERFACE_INCLUDE_DIRECTORIES "${IBVerbs_INCLUDE_DIR}")
  endif()
  if(NOT TARGET IBVerbs::rdmacm)
    add_library(IBVerbs::rdmacm UNKNOWN IMPORTED)
    set_target_properties(IBVerbs::rdmacm PROPERTIES
      IMPORTED_LOCATION "${IBVerbs_RDMACM_LIBRARY}"
      INTERFACE_INCLUDE_DIRECTORIES "${IBVerbs_RDMACM_INCLUDE_DIR}"
      INTERFACE_LINK_LIBRARIES IBVerbs::ibverbs)
  endif()
endif()
