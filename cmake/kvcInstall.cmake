# Install rules: headers, the exported targets, kvcConfig.cmake with its version file, the Find
# modules the config needs (Debian ships no CMake config for xxHash and rdma-core), and kvc.pc.
include(CMakePackageConfigHelpers)

set(KVC_CMAKE_INSTALL_DIR "${CMAKE_INSTALL_DATADIR}/cmake/kvc")

install(DIRECTORY "${PROJECT_SOURCE_DIR}/include/kvc" DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}")

set(kvc_export_targets kvc)
if(TARGET kvc_verbs)
  list(APPEND kvc_export_targets kvc_verbs)
endif()
install(TARGETS ${kvc_export_targets} EXPORT kvcTargets)
install(EXPORT kvcTargets NAMESPACE kvc:: DESTINATION "${KVC_CMAKE_INSTALL_DIR}")

configure_package_config_file("${PROJECT_SOURCE_DIR}/cmake/kvcConfig.cmake.in"
  "${PROJECT_BINARY_DIR}/kvcConfig.cmake" INSTALL_DESTINATION "${KVC_CMAKE_INSTALL_DIR}")
# Header-only: any architecture may consume it.
write_basic_package_version_file("${PROJECT_BINARY_DIR}/kvcConfigVersion.cmake"
  COMPATIBILITY SameMinorVersion ARCH_INDEPENDENT)
install(FILES
  "${PROJECT_BINARY_DIR}/kvcConfig.cmake"
  "${PROJECT_BINARY_DIR}/kvcConfigVersion.cmake"
  "${PROJECT_SOURCE_DIR}/cmake/FindxxHash.cmake"
  "${PROJECT_SOURCE_DIR}/cmake/FindIBVerbs.cmake"
  DESTINATION "${KVC_CMAKE_INSTALL_DIR}")

configure_file("${PROJECT_SOURCE_DIR}/cmake/kvc.pc.in" "${PROJECT_BINARY_DIR}/kvc.pc" @ONLY)
install(FILES "${PROJECT_BINARY_DIR}/kvc.pc" DESTINATION "${CMAKE_INSTALL_DATADIR}/pkgconfig")
