// The analysis of a KV-cache trace by itself (no cache): how much of it repeats and how. What
// kvc-replay prints first, the figures the study's trace analysis reported:
//
//   requests, block references, unique blocks, tokens in and out, the time span;
//   the infinite-cache hit ratio (references to a block seen before);
//   per request, the share of its blocks seen before: how many requests are above 50%;
//   sequential versus non-sequential hits: a hit in the request's leading run of seen blocks
//     (what a prefix cache can serve) or after a miss (reuse no prefix cache can serve);
//   reuse distance of every repeat, in requests and in seconds since the block's last use
//     (percentiles);
//   the hottest blocks; the prefix tree's shape (roots, leaves, depth, branching).
//
// One pass, memory proportional to the unique blocks, plus 16 bytes per repeat (the reuse
// distances whose percentiles are reported).
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <unordered_map>
#include <utility>
#include <vector>

#include "trace/generator.hpp"

namespace kvc_trace {

struct trace_summary {
  std::size_t requests = 0, block_refs = 0, unique_blocks = 0;
  std::uint64_t input_tokens = 0, output_tokens = 0;
  std::uint64_t first_ms = 0, last_ms = 0;  // the earliest and latest timestamps
  std::size_t hits = 0;                     // references to a block seen before
  std::size_t sequential_hits = 0;          // of them, in the request's leading run of seen blocks
  std::size_t requests_over_half = 0;       // requests with more than half their blocks seen before
  // Reuse distance of each hit: requests since the block's last use (1: the previous request;
  // 0: again within one request) and milliseconds; percentiles 50, 90, 99.
  std::array<std::uint64_t, 3> reuse_requests{}, reuse_ms{};
  std::vector<std::pair<std::uint64_t, std::size_t>> hottest;  // (id, references), up to 10
  // The prefix tree over block ids: chains start at a root; a leaf is never a parent.
  std::size_t roots = 0, leaves = 0, max_depth = 0;
  double mean_children = 0;  // over blocks that are a parent
  // References whose block came after another parent than at its first use: 0 when ids chain
  // (an equal id means an equal prefix, as Mooncake's and kvc's do).
  std::size_t parent_mismatches = 0;

  [[nodiscard]] double hit_ratio() const {
    return block_refs == 0 ? 0.0 : static_cast<double>(hits) / static_cast<double>(block_refs);
  }
  [[nodiscard]] double sequential_share() const {
    return hits == 0 ? 0.0 : static_cast<double>(sequential_hits) / static_cast<double>(hits);
  }
};

class trace_analyzer {
 public:
  void add(const trace_request& r) {
    s_.first_ms = s_.requests == 0 ? r.timestamp_ms : std::min(s_.first_ms, r.timestamp_ms);
    s_.last_ms = std::max(s_.last_ms, r.timestamp_ms);
    s_.input_tokens += r.input_length;
    s_.output_tokens += r.output_length;
    std::size_t seen_here = 0;
    bool leading = true;
    std::uint64_t parent = 0;  // the block before (none for the first: i == 0)
    for (std::size_t i = 0; i < r.hash_ids.size(); ++i) {
      const std::uint64_t id = r.hash_ids[i];
      auto [it, added] = blocks_.try_emplace(id);
      block& b = it->second;
      if (added) {
        b.parent = parent;
        b.root = i == 0;
        b.depth = i + 1;
        if (i > 0) {
          if (blocks_.find(parent)->second.children++ == 0) ++parents_;
        } else {
          ++s_.roots;
        }
        s_.max_depth = std::max(s_.max_depth, b.depth);
        leading = false;
      } else {
        if (b.root != (i == 0) || (i > 0 && b.parent != parent)) ++s_.parent_mismatches;
        ++s_.hits;
        ++seen_here;
        if (leading) ++s_.sequential_hits;
        distance_requests_.push_back(s_.requests - b.last_request);
        distance_ms_.push_back(r.timestamp_ms - std::min(r.timestamp_ms, b.last_ms));
      }
      ++b.refs;
      b.last_request = s_.requests;
      b.last_ms = r.timestamp_ms;
      parent = id;
    }
    s_.block_refs += r.hash_ids.size();
    if (2 * seen_here > r.hash_ids.size()) ++s_.requests_over_half;
    ++s_.requests;
  }

  [[nodiscard]] trace_summary summary() {
    trace_summary out = s_;
    out.unique_blocks = blocks_.size();
    out.leaves = blocks_.size() - parents_;
    std::size_t children = 0;
    std::vector<std::pair<std::uint64_t, std::size_t>> refs;
    refs.reserve(blocks_.size());
    for (const auto& [id, b] : blocks_) {
      children += b.children;
      refs.emplace_back(id, b.refs);
    }
    out.mean_children =
        parents_ == 0 ? 0.0 : static_cast<double>(children) / static_cast<double>(parents_);
    const std::size_t top = std::min<std::size_t>(10, refs.size());
    std::partial_sort(refs.begin(), refs.begin() + static_cast<std::ptrdiff_t>(top), refs.end(),
                      [](const auto& a, const auto& b) {
                        return a.second != b.second ? a.second > b.second : a.first < b.first;
                      });
    out.hottest.assign(refs.begin(), refs.begin() + static_cast<std::ptrdiff_t>(top));
    out.reuse_requests = percentiles(distance_requests_);
    out.reuse_ms = percentiles(distance_ms_);
    return out;
  }

 private:
  struct block {
    std::uint64_t parent = 0;  // the id before it at its first use, unless it was a root
    bool root = false;         // first in its request at its first use
    std::size_t depth = 0, refs = 0, children = 0;
    std::size_t last_request = 0;
    std::uint64_t last_ms = 0;
  };
  static std::array<std::uint64_t, 3> percentiles(std::vector<std::uint64_t>& v) {
    std::array<std::uint64_t, 3> out{};
    if (v.empty()) return out;
    const double qs[] = {0.50, 0.90, 0.99};
    for (std::size_t i = 0; i < 3; ++i) {
      // Nearest rank: the smallest value with at least q of them at or below it.
      const auto rank = static_cast<std::size_t>(std::ceil(qs[i] * static_cast<double>(v.size())));
      const std::size_t k = std::max<std::size_t>(rank, 1) - 1;
      std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
      out[i] = v[k];
    }
    return out;
  }

  trace_summary s_;
  std::unordered_map<std::uint64_t, block> blocks_;
  std::size_t parents_ = 0;
  std::vector<std::uint64_t> distance_requests_, distance_ms_;
};

}  // namespace kvc_trace
