// kvc/pool/remote_tier.hpp — the remote DRAM tier: KV blocks in memory nodes, shared by every
// engine, found through the one-sided prefix index. Blocks move straight between the nodes and
// the host tier's arena, which this tier registers with the transport.
//
//   kvc::remote_tier<kvc::shm_transport> remote(transport, index, host);   // index: shared_index
//   auto m = remote.lookup(chain);                       // the longest prefix cached remotely
//   auto got = remote.load(chain, *m, host_slots);       // its KV bytes into host slots
//   remote.store(chain, from, host_slots, tokens);       // publish newly computed blocks
//
// Not a StorageTier: a remote block's data slot is allocated by the index with its record and
// reclaimed with it, and it is named by its chain, not by a slot this process holds (see
// docs/design/pool.md). The index's sampling eviction decides what memory nodes keep.
//
// What a load promises: the bytes of each block it counts were that block's (read_blocks
// validates after reading); a block evicted since its lookup ends the loaded prefix there.
//
// Errors: create() fails with invalid_config when the host arena's blocks are larger than the
// index's data slots, and passes on the transport's registration failure; store() and load()
// with invalid_argument for a host slot out of range, and pass on the index's failures.
//
// Concurrency: every member may be called from any thread (the shared_index pools clients).
// Calls are synchronous in the calling thread; the pool runs them on its mover threads.
// Design: docs/design/pool.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kvc/error.hpp"
#include "kvc/index/shared_index.hpp"
#include "kvc/pool/host_tier.hpp"
#include "kvc/pool/tier.hpp"

namespace kvc::inline v0 {

template <Transport T, BlockHash H = hash64>
class remote_tier {
 public:
  using index_type = shared_index<T, H>;

  [[nodiscard]] static result<std::unique_ptr<remote_tier>> create(T& transport, index_type& index,
                                                                   host_tier& host) {
    // Every node has the same data slot (a node formatted otherwise is not used).
    if (const std::uint64_t slot_bytes = index.block_bytes(); slot_bytes < host.block_bytes()) {
      return fail(errc::invalid_config,
                  "remote tier: the memory nodes store blocks of " + std::to_string(slot_bytes) +
                      " bytes, smaller than the host tier's " + std::to_string(host.block_bytes()));
    }
    auto reg = transport.register_memory(host.memory());
    if (!reg) return std::move(reg).take_failure();
    return std::unique_ptr<remote_tier>(new remote_tier(index, host, std::move(*reg)));
  }

  [[nodiscard]] tier_kind kind() const noexcept { return tier_kind::remote; }
  [[nodiscard]] index_type& index() noexcept { return index_; }

  // The longest prefix of `chain` published in the memory nodes (see remote_index::lookup).
  [[nodiscard]] result<index_match> lookup(std::span<const H> chain, std::size_t hint = 0) {
    return index_.lookup(chain, hint);
  }

  // Publishes chain[from, from + slots.size()) with the KV bytes of the host slots, each block of
  // `tokens` tokens. The result says how far the chain is published now (by this call or others).
  [[nodiscard]] result<index_insert_result> store(std::span<const H> chain, std::size_t from,
                                                  std::span<const host_tier::slot> slots,
                                                  std::uint16_t tokens) {
    if (from > chain.size() || slots.size() > chain.size() - from) {
      return fail(errc::invalid_argument, "remote tier: store beyond the end of the chain");
    }
    std::vector<block_info> infos(slots.size());
    for (std::size_t i = 0; i < slots.size(); ++i) {
      auto buf = buffer(slots[i]);
      if (!buf) return std::move(buf).take_failure();
      infos[i].data = *buf;
      infos[i].length = static_cast<std::uint32_t>(host_.block_bytes());
      infos[i].tier = static_cast<std::uint8_t>(tier_kind::remote);
      infos[i].tokens = tokens;
    }
    return index_.insert(chain, from, infos);
  }

  // Reads the KV bytes of blocks [from, from + slots.size()) of `m` (a lookup of `chain`) into
  // the host slots, locating the blocks the lookup did not (one more round trip). Returns how
  // many leading blocks were read whole and validated; a block evicted since the lookup ends
  // them.
  [[nodiscard]] result<std::size_t> load(std::span<const H> chain, index_match& m,
                                         std::span<const host_tier::slot> slots,
                                         std::size_t from = 0) {
    if (from > m.length || slots.size() > m.length - from) {
      return fail(errc::invalid_argument, "remote tier: more host slots than matched blocks");
    }
    std::vector<local_buffer> data(slots.size());
    for (std::size_t i = 0; i < slots.size(); ++i) {
      auto buf = buffer(slots[i]);
      if (!buf) return std::move(buf).take_failure();
      data[i] = *buf;
    }
    auto located = index_.locate(chain, m);
    if (!located) return located;
    const std::size_t n = std::min(*located, from + slots.size()) - std::min(*located, from);
    return index_.read_blocks(std::span<const block_ref>(m.blocks).subspan(from, n),
                              std::span<const local_buffer>(data).first(n), {});
  }

 private:
  remote_tier(index_type& index, host_tier& host, typename T::registration reg)
      : index_(index), host_(host), reg_(std::move(reg)) {}

  result<local_buffer> buffer(host_tier::slot s) const {
    if (s >= host_.capacity()) {
      return fail(errc::invalid_argument,
                  "remote tier: host slot " + std::to_string(s) + " is out of range");
    }
    return reg_.buffer().sub(std::size_t{s} * host_.block_bytes(), host_.block_bytes());
  }

  index_type& index_;
  host_tier& host_;
  typename T::registration reg_;
};

}  // namespace kvc::inline v0
