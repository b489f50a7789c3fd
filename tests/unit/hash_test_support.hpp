// Helpers shared by the hasher tests.
#pragma once

#include <kvc/hash/block_hash.hpp>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace kvc_test {

// The token formula of scripts/gen_hash_vectors.py (tokens_of).
inline std::vector<std::uint32_t> vector_tokens(std::size_t n) {
  std::vector<std::uint32_t> out(n);
  for (std::size_t i = 0; i < n; ++i) {
    out[i] = static_cast<std::uint32_t>((i * 2654435761ULL + 12345ULL) & 0xFFFF'FFFFULL);
  }
  return out;
}

// A generated vector entry as a hash: one word for hash64, (high, low) for hash128.
template <class Hash>
Hash from_words(const std::uint64_t* words) {
  if constexpr (Hash::bits == 64) {
    return Hash{words[0]};
  } else {
    return Hash{words[0], words[1]};
  }
}

}  // namespace kvc_test
