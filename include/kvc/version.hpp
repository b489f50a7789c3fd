// kvc/version.hpp — the library's version, as macros and as constants.
//
// Concurrency: constants only. Design: docs/design/core.md.
#pragma once

#define KVC_VERSION_MAJOR 0
#define KVC_VERSION_MINOR 1
#define KVC_VERSION_PATCH 0
// One integer that orders versions: MAJOR * 10000 + MINOR * 100 + PATCH.
#define KVC_VERSION (KVC_VERSION_MAJOR * 10000 + KVC_VERSION_MINOR * 100 + KVC_VERSION_PATCH)

namespace kvc::inline v0 {

struct version_info {
  int major;
  int minor;
  int patch;
};

// The version of the headers this translation unit was compiled against.
inline constexpr version_info version{KVC_VERSION_MAJOR, KVC_VERSION_MINOR, KVC_VERSION_PATCH};
inline constexpr const char* version_string = "0.1.0";

}  // namespace kvc::inline v0
