// Test and benchmark support: names for shm segments and temporary files that no other process
// has used. The process id alone is not enough: a process killed before its cleanup leaves its
// segment in /dev/shm, and a later process given the same id (ids are reused, and a fresh
// machine hands out the same small ones run after run) would find the name taken.
#pragma once

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <random>
#include <string>
#include <string_view>

namespace kvc_test {

// `stem` + "-<process id>-<random tag of this process>-<counter>". The process id is read on
// each call, so a forked child's names differ from its parent's.
inline std::string unique_name(std::string_view stem) {
  static const std::string tag = [] {
    std::random_device rd;
    char text[17];
    std::snprintf(text, sizeof text, "%08x%08x", rd(), rd());
    return std::string(text);
  }();
  static std::atomic<unsigned> counter{0};
  return std::string(stem) + "-" + std::to_string(::getpid()) + "-" + tag + "-" +
         std::to_string(counter.fetch_add(1));
}

}  // namespace kvc_test
