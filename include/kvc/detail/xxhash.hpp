// kvc/detail/xxhash.hpp — not API. Includes xxHash with every function inlined (XXH_INLINE_ALL),
// so kvc stays header-only and the compiler can specialise XXH3 for the fixed input lengths the
// hasher uses. XXH_INLINE_ALL renames the symbols it defines, so a host that also links
// libxxhash normally is unaffected.
#pragma once

#ifndef XXH_INLINE_ALL
#define XXH_INLINE_ALL  // NOLINT(readability-identifier-naming): xxHash's own switch
#define KVC_DETAIL_DEFINED_XXH_INLINE_ALL
#endif
#include <xxhash.h>
#ifdef KVC_DETAIL_DEFINED_XXH_INLINE_ALL
#undef XXH_INLINE_ALL
#undef KVC_DETAIL_DEFINED_XXH_INLINE_ALL
#endif

#include <cstddef>

#include "kvc/hash/block_hash.hpp"

namespace kvc::inline v0::detail {

// XXH3 at the width of Hash: one-shot over a buffer, and the streaming interface (whose result
// equals the one-shot result over the concatenation of all updates).
template <class Hash>
struct xxh3;

template <>
struct xxh3<hash64> {
  static hash64 oneshot(const void* data, std::size_t len) noexcept {
    return hash64{XXH3_64bits(data, len)};
  }
  static void reset(XXH3_state_t* s) noexcept { XXH3_64bits_reset(s); }
  static void update(XXH3_state_t* s, const void* data, std::size_t len) noexcept {
    XXH3_64bits_update(s, data, len);
  }
  static hash64 digest(const XXH3_state_t* s) noexcept { return hash64{XXH3_64bits_digest(s)}; }
};

template <>
struct xxh3<hash128> {
  static hash128 from(XXH128_hash_t h) noexcept { return hash128{h.high64, h.low64}; }
  static hash128 oneshot(const void* data, std::size_t len) noexcept {
    return from(XXH3_128bits(data, len));
  }
  static void reset(XXH3_state_t* s) noexcept { XXH3_128bits_reset(s); }
  static void update(XXH3_state_t* s, const void* data, std::size_t len) noexcept {
    XXH3_128bits_update(s, data, len);
  }
  static hash128 digest(const XXH3_state_t* s) noexcept { return from(XXH3_128bits_digest(s)); }
};

}  // namespace kvc::inline v0::detail
