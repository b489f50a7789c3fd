// Percentiles of latency samples as the example programs report them (kvc-replay, the metadata
// benchmark): nearest rank, in exact integer arithmetic.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace kvc_examples {

// The smallest of the sorted samples with at least permille/1000 of them at or below it (rank
// ceil(n * permille / 1000)); 0 for no samples.
inline std::uint64_t nearest_rank(const std::vector<std::uint64_t>& sorted, unsigned permille) {
  if (sorted.empty()) return 0;
  const std::size_t rank = (sorted.size() * permille + 999) / 1000;
  return sorted[std::clamp<std::size_t>(rank, 1, sorted.size()) - 1];
}

}  // namespace kvc_examples
