// Test support: a KV block's bytes derived from its key, so any engine (thread, process, server)
// can check that what it loaded is that block's.
#pragma once

#include <algorithm>
#include <cstddef>
#include <span>
#include <vector>

#include "kvc/hash/block_hash.hpp"

namespace kvc_test {

inline void fill(std::span<std::byte> b, kvc::hash64 h) {
  for (std::size_t i = 0; i < b.size(); ++i) {
    b[i] = static_cast<std::byte>((h.value >> ((i % 8) * 8)) + i / 8);
  }
}
inline bool holds(std::span<const std::byte> b, kvc::hash64 h) {
  std::vector<std::byte> expect(b.size());
  fill(expect, h);
  return std::equal(b.begin(), b.end(), expect.begin());
}

}  // namespace kvc_test
