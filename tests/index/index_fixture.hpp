// Shared by the index tests: shm memory nodes formatted for the index, clients, and chains.
#pragma once

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "../support/unique_name.hpp"
#include "kvc/hash/block_hash.hpp"
#include "kvc/index/remote_index.hpp"
#include "kvc/transport/shm.hpp"

namespace kvc_test {

// `count` shm memory nodes of `bytes` each, formatted for blocks of `block_bytes`.
struct index_nodes {
  explicit index_nodes(std::size_t count = 1, std::uint64_t bytes = std::uint64_t{8} << 20,
                       std::uint64_t block_bytes = 64, std::uint64_t clients = 64) {
    const std::string stem = unique_name("/kvc-ix") + "-";
    for (std::size_t n = 0; n < count; ++n) {
      auto r =
          kvc::shm_region::create(stem + std::to_string(n), bytes, static_cast<kvc::node_id>(n));
      if (!r) {
        std::fprintf(stderr, "shm_region::create: %s\n", r.message().c_str());
        std::abort();
      }
      auto g = kvc::format_index(r->header(), block_bytes, clients);
      if (!g) {
        std::fprintf(stderr, "format_index: %s\n", g.message().c_str());
        std::abort();
      }
      regions.push_back(std::move(*r));
    }
  }
  // A transport attached to every node (its own mappings: as another process would have).
  [[nodiscard]] std::unique_ptr<kvc::shm_transport> attach() const {
    auto t = std::make_unique<kvc::shm_transport>();
    for (std::size_t n = 0; n < regions.size(); ++n) {
      if (auto ok = t->add_node(static_cast<kvc::node_id>(n), regions[n].name()); !ok) {
        std::fprintf(stderr, "add_node: %s\n", ok.message().c_str());
        std::abort();
      }
    }
    return t;
  }
  [[nodiscard]] std::vector<kvc::node_id> ids() const {
    std::vector<kvc::node_id> v;
    for (std::size_t n = 0; n < regions.size(); ++n) v.push_back(static_cast<kvc::node_id>(n));
    return v;
  }
  [[nodiscard]] kvc::remote_index_config config(std::uint64_t seed = 1) const {
    kvc::remote_index_config c;
    c.nodes = ids();
    c.lease = std::chrono::milliseconds(400);
    c.heartbeat = std::chrono::milliseconds(20);
    c.reclaim_grace = std::chrono::milliseconds(20);
    c.scratch_bytes = std::size_t{1} << 20;
    c.seed = seed;
    return c;
  }
  std::vector<kvc::shm_region> regions;
};

using shm_index = kvc::remote_index<kvc::shm_transport>;

// A client: its own transport and index.
struct client {
  client(const index_nodes& nodes, kvc::remote_index_config cfg) : t(nodes.attach()) {
    auto ix = shm_index::open(*t, std::move(cfg));
    if (!ix) {
      std::fprintf(stderr, "remote_index::open: %s\n", ix.message().c_str());
      std::abort();
    }
    index = std::move(*ix);
  }
  std::unique_ptr<kvc::shm_transport> t;
  std::unique_ptr<shm_index> index;
};

// A chain of `n` distinct random block hashes; `prefix` copies the first blocks of another.
inline std::vector<kvc::hash64> make_chain(std::mt19937_64& rng, std::size_t n,
                                           const std::vector<kvc::hash64>& prefix = {},
                                           std::size_t shared = 0) {
  std::vector<kvc::hash64> c;
  for (std::size_t i = 0; i < n; ++i) {
    c.push_back(i < shared && i < prefix.size() ? prefix[i] : kvc::hash64{rng()});
  }
  return c;
}

inline std::vector<kvc::block_info> no_data(std::size_t n) {
  return std::vector<kvc::block_info>(n, kvc::block_info{{}, 0, 1, 0, 16});
}

// A chain of `n` blocks whose super-segments lie on `homes` in order (the first on homes[0], the
// blocks from 256 on homes[1], ...) as `ix` places them.
template <class Index>
std::vector<kvc::hash64> chain_on(const Index& ix, std::mt19937_64& rng, std::size_t n,
                                  const std::vector<kvc::node_id>& homes) {
  for (;;) {
    auto c = make_chain(rng, n);
    bool fits = true;
    for (std::size_t s = 0; s < homes.size() && s * 256 < n; ++s) {
      fits = fits && ix.node_for(c, s * 256) == homes[s];
    }
    if (fits) return c;
  }
}

}  // namespace kvc_test
