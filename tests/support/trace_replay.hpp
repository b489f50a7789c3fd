// Test and benchmark support: replays block chains through a radix tree with a policy, the way
// the study counts hits: a request's leading cached run counts as hits, then all its blocks are
// cached and used, then the cache evicts down to its capacity.
#pragma once

#include <kvc/evict/tinylfu.hpp>
#include <kvc/hash/block_hash.hpp>
#include <kvc/tree/radix_tree.hpp>

#include <span>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace kvc_test {

struct replay_result {
  std::size_t hits = 0;
  std::size_t references = 0;

  [[nodiscard]] double hit_ratio() const {
    return references == 0 ? 0.0 : static_cast<double>(hits) / static_cast<double>(references);
  }
};

template <class Policy, class... PolicyArgs>
replay_result replay(const std::vector<std::vector<kvc::hash64>>& chains, std::size_t capacity,
                     PolicyArgs&&... policy_args) {
  kvc::radix_tree<kvc::hash64, std::uint32_t, Policy> tree(
      std::forward<PolicyArgs>(policy_args)...);
  replay_result r;
  for (const auto& chain : chains) {
    r.references += chain.size();
    r.hits += tree.match(chain);
    tree.insert(chain, [](std::size_t) { return std::uint32_t{0}; });
    if (tree.size() > capacity) {
      tree.evict(tree.size() - capacity, [](const kvc::hash64&, std::uint32_t&&) {});
    }
  }
  return r;
}

// The same with TinyLFU admission in front of Inner: a request's missed blocks are recorded,
// and when the cache is full its new blocks are cached only while each is estimated to be used
// more often than the current victim (the first refusal ends the request's insert, keeping the
// tree prefix-closed).
template <class Inner>
replay_result replay_admitted(const std::vector<std::vector<kvc::hash64>>& chains,
                              std::size_t capacity, const kvc::tinylfu_config& config) {
  using policy = kvc::tinylfu<Inner>;
  kvc::radix_tree<kvc::hash64, std::uint32_t, policy> tree(config);
  const auto key = [](const kvc::hash64& h) { return std::hash<kvc::hash64>{}(h); };
  replay_result r;
  for (const auto& chain : chains) {
    r.references += chain.size();
    const std::size_t m = tree.match(chain);
    r.hits += m;
    for (std::size_t i = m; i < chain.size(); ++i) tree.policy().record(key(chain[i]));
    std::size_t take = chain.size();
    if (tree.size() + (chain.size() - m) > capacity) {
      if (const auto victim = tree.next_victim()) {
        std::size_t i = m;
        while (i < chain.size() && (tree.size() + (i - m) < capacity ||
                                    tree.policy().admit(key(chain[i]), key(*victim)))) {
          ++i;
        }
        take = i;
      }
    }
    tree.insert(std::span(chain).first(take), [](std::size_t) { return std::uint32_t{0}; });
    if (tree.size() > capacity) {
      tree.evict(tree.size() - capacity, [](const kvc::hash64&, std::uint32_t&&) {});
    }
  }
  return r;
}

}  // namespace kvc_test
