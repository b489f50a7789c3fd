// kvc/hash/sequence_hasher.hpp — incremental block hashing for a sequence that grows token by
// token during decoding: each block's hash is emitted once the block fills, and equals what
// block_hasher::hash_prompt gives for the same tokens and keys.
//
// Concurrency: one sequence_hasher per sequence, used by one thread at a time (it is mutable
// state); the block_hasher it copies from stays shareable. Move-only: it owns copies of the extra
// keys. Allocation: create() copies the keys and the partial-block buffer; append() allocates
// only when the list of hashes grows past its capacity (reserve() avoids that).
// Design: docs/design/hashing.md.
#pragma once

#include <algorithm>
#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "kvc/error.hpp"
#include "kvc/hash/block_hasher.hpp"
#include "kvc/hash/extra_keys.hpp"

namespace kvc::inline v0 {

template <class Hash = hash64>
class sequence_hasher;

template <class Hash>
class sequence_hasher {
 public:
  using hash_type = Hash;

  // A sequence hasher over `hasher`, with a copy of the keys. Errors as validate(keys): items
  // may lie beyond the tokens seen so far (the sequence grows), see check_complete().
  [[nodiscard]] static result<sequence_hasher> create(const block_hasher<Hash>& hasher,
                                                      const extra_keys& keys = {}) {
    if (auto ok = validate(keys); !ok) return std::move(ok).take_failure();
    return sequence_hasher(hasher, keys);
  }

  sequence_hasher(sequence_hasher&&) noexcept = default;
  sequence_hasher& operator=(sequence_hasher&&) noexcept = default;
  sequence_hasher(const sequence_hasher&) = delete;
  sequence_hasher& operator=(const sequence_hasher&) = delete;
  ~sequence_hasher() = default;

  // Appends tokens and hashes every block they fill; returns how many block hashes were added.
  // Whole blocks are hashed in place from `tokens`; only a partial block is buffered.
  std::size_t append(std::span<const token_id> tokens) {
    const std::size_t bs = hasher_.block_size();
    const std::size_t before = hashes_.size();
    tokens_seen_ += tokens.size();
    // Top up a partially filled block first.
    if (!partial_.empty()) {
      const std::size_t take = std::min(bs - partial_.size(), tokens.size());
      partial_.insert(partial_.end(), tokens.begin(),
                      tokens.begin() + static_cast<std::ptrdiff_t>(take));
      tokens = tokens.subspan(take);
      if (partial_.size() == bs) {
        emit(partial_.data(), 1);
        partial_.clear();
      }
    }
    const std::size_t whole = hasher_.full_blocks(tokens.size());
    if (whole > 0) emit(tokens.data(), whole);
    const auto rest = tokens.subspan(whole * bs);
    partial_.insert(partial_.end(), rest.begin(), rest.end());
    return hashes_.size() - before;
  }
  std::size_t append(std::span<const std::int32_t> tokens) {
    return append(block_hasher<Hash>::as_token_ids(tokens));
  }
  // Appends one token; returns true when it completed a block.
  bool push_back(token_id token) { return append(std::span<const token_id>(&token, 1)) == 1; }

  // The hashes of all full blocks so far, in order. Valid until the next append.
  [[nodiscard]] std::span<const Hash> block_hashes() const noexcept { return hashes_; }
  // Tokens appended so far, and how many of them wait in the partial block.
  [[nodiscard]] std::size_t size() const noexcept { return tokens_seen_; }
  [[nodiscard]] std::size_t pending() const noexcept { return partial_.size(); }
  // Reserves room for the hashes of a sequence of n_tokens, so append() will not allocate.
  void reserve(std::size_t n_tokens) { hashes_.reserve(hasher_.full_blocks(n_tokens)); }

  // Errors with out_of_range when a multimodal item extends past the tokens appended so far:
  // call once the sequence is complete to catch keys that never applied.
  [[nodiscard]] result<void> check_complete() const {
    return validate(keys(), std::uint64_t{tokens_seen_});
  }

 private:
  sequence_hasher(const block_hasher<Hash>& hasher, const extra_keys& keys)
      : hasher_(hasher), lora_id_(keys.lora_id), tenant_salt_(keys.tenant_salt) {
    mm_content_.reserve(keys.mm_items.size());
    mm_items_.reserve(keys.mm_items.size());
    for (const mm_item& item : keys.mm_items) mm_content_.emplace_back(item.content_hash);
    // The views point into mm_content_'s elements, which a move of the vector does not relocate.
    for (std::size_t i = 0; i < keys.mm_items.size(); ++i) {
      mm_items_.push_back(
          mm_item{mm_content_[i], keys.mm_items[i].offset, keys.mm_items[i].length});
    }
    partial_.reserve(hasher.block_size());
  }

  [[nodiscard]] extra_keys keys() const noexcept {
    return extra_keys{lora_id_, tenant_salt_, mm_items_};
  }

  void emit(const token_id* tokens, std::size_t count) {
    const std::size_t first = hashes_.size();
    const Hash parent = first == 0 ? hasher_.root() : hashes_.back();
    hashes_.resize(first + count);
    hasher_.hash_blocks_unchecked(parent, tokens, first, count, keys(), hashes_.data() + first);
  }

  block_hasher<Hash> hasher_;
  std::optional<std::uint64_t> lora_id_;
  std::string tenant_salt_;
  std::vector<std::string> mm_content_;
  std::vector<mm_item> mm_items_;
  std::vector<token_id> partial_;
  std::vector<Hash> hashes_;
  std::size_t tokens_seen_ = 0;
};

}  // namespace kvc::inline v0
