// The block keys a trace's requests are cached under. A Mooncake trace names each block with an
// integer id; the keys chain them (key i = XXH3-64 of id i seeded with key i-1), so a key names
// its whole prefix even where a trace reuses an id under another parent, as kvc's own hasher
// does for tokens. The replayer and the metadata benchmark both key their caches this way.
#pragma once

#include <cstdint>
#include <kvc/detail/xxhash.hpp>
#include <kvc/hash/block_hash.hpp>
#include <span>
#include <vector>

namespace kvc_trace {

inline constexpr std::uint64_t chain_seed = 0x6b7663'7472616365;  // the first block's parent

inline void chain_keys(std::span<const std::uint64_t> ids, std::vector<kvc::hash64>& out) {
  out.resize(ids.size());
  std::uint64_t parent = chain_seed;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const std::uint64_t id = ids[i];
    parent = XXH3_64bits_withSeed(&id, sizeof id, parent);
    out[i] = kvc::hash64{parent};
  }
}

[[nodiscard]] inline std::vector<kvc::hash64> chain_keys(std::span<const std::uint64_t> ids) {
  std::vector<kvc::hash64> out;
  chain_keys(ids, out);
  return out;
}

}  // namespace kvc_trace
