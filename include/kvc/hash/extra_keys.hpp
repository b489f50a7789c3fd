// kvc/hash/extra_keys.hpp — what besides tokens makes two blocks different: a LoRA adapter,
// a tenant's cache salt, and multimodal content with its token positions.
//
// These are views (string_view, span) into the caller's memory, valid for the duration of the
// call they are passed to; sequence_hasher copies them. The model/namespace salt is not here: it
// is part of the hasher's configuration and folded into the root hash.
//
// Which block each key applies to, and how it is framed into the hashed bytes, is specified in
// docs/design/hashing.md (format version 1):
//   - lora_id and tenant_salt apply to block 0; through the chain they separate every block.
//   - a multimodal item applies to every block its token range [offset, offset + length)
//     overlaps.
//
// Concurrency: plain values and views. Design: docs/design/hashing.md.
#pragma once

#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "kvc/error.hpp"

namespace kvc::inline v0 {

// The token id type: token ids are hashed as 32-bit little-endian integers.
using token_id = std::uint32_t;

// One multimodal input (image, audio clip) spliced into the token sequence as placeholder
// tokens: the placeholders alone do not identify the content, so its hash is a key.
struct mm_item {
  std::string_view content_hash;  // bytes identifying the content (any length from 1 byte)
  std::uint64_t offset = 0;       // index of its first placeholder token in the sequence
  std::uint64_t length = 0;       // number of placeholder tokens, at least 1
};

// The extra keys of one request.
struct extra_keys {
  std::optional<std::uint64_t> lora_id;  // LoRA adapter, absent for the base model
  std::string_view tenant_salt;          // per-tenant cache salt ("" = none): tenants never share
  std::span<const mm_item> mm_items;     // sorted by offset, non-overlapping
};

// Checks the keys: mm items non-empty, sorted by offset, non-overlapping, content hash present,
// every length representable in the format (< 2^32 bytes). With n_tokens, also that every item
// lies inside a sequence of that many tokens. Does not allocate unless it fails.
[[nodiscard]] inline result<void> validate(const extra_keys& keys,
                                           std::optional<std::uint64_t> n_tokens = std::nullopt) {
  constexpr std::uint64_t max_bytes = std::numeric_limits<std::uint32_t>::max();
  if (keys.tenant_salt.size() > max_bytes) {
    return fail(errc::invalid_argument, "tenant salt is longer than 2^32-1 bytes");
  }
  std::uint64_t previous_end = 0;
  for (std::size_t i = 0; i < keys.mm_items.size(); ++i) {
    const mm_item& item = keys.mm_items[i];
    const auto where = [i] { return "multimodal item " + std::to_string(i); };
    if (item.content_hash.empty())
      return fail(errc::invalid_argument, where() + " has no content hash");
    if (item.content_hash.size() > max_bytes) {
      return fail(errc::invalid_argument, where() + " has a content hash longer than 2^32-1 bytes");
    }
    if (item.length == 0) return fail(errc::invalid_argument, where() + " has length 0");
    if (item.offset > std::numeric_limits<std::uint64_t>::max() - item.length) {
      return fail(errc::out_of_range, where() + ": offset + length overflows");
    }
    if (i > 0 && item.offset < previous_end) {
      return fail(errc::invalid_argument,
                  where() + " (offset " + std::to_string(item.offset) +
                      ") overlaps or precedes the previous item, which ends at token " +
                      std::to_string(previous_end) + "; items must be sorted and disjoint");
    }
    previous_end = item.offset + item.length;
    if (n_tokens && previous_end > *n_tokens) {
      return fail(errc::out_of_range, where() + " covers tokens [" + std::to_string(item.offset) +
                                          ", " + std::to_string(previous_end) +
                                          ") outside the sequence of " + std::to_string(*n_tokens) +
                                          " tokens");
    }
  }
  return {};
}

}  // namespace kvc::inline v0
