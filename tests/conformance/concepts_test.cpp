// The role concepts accept kvc's models and reject look-alikes: compile-time checks, plus a
// runtime test case so the file is part of the unit test program.
#include <kvc/kvc.hpp>

#include <array>
#include <catch2/catch.hpp>
#include <cstdint>
#include <span>

namespace {

// Has every member of a Hasher but hash_prompt returns a plain count: not a Hasher (errors must
// come back as result).
struct count_returning_hasher {
  using hash_type = kvc::hash64;
  std::uint32_t block_size() const { return 16; }
  kvc::hash64 root() const { return {}; }
  std::size_t full_blocks(std::size_t n) const { return n / 16; }
  std::size_t hash_prompt(std::span<const kvc::token_id>, std::span<kvc::hash64>,
                          const kvc::extra_keys&) const {
    return 0;
  }
};

// A key type without a canonical byte encoding or std::hash: not a BlockHash.
struct opaque_key {
  static constexpr std::size_t bits = 64;
  std::uint64_t v;
  friend bool operator==(const opaque_key&, const opaque_key&) = default;
  friend auto operator<=>(const opaque_key&, const opaque_key&) = default;
};

// A 32-bit key: too narrow for a global cache key.
struct narrow_key {
  static constexpr std::size_t bits = 32;
  std::uint32_t v;
  friend bool operator==(const narrow_key&, const narrow_key&) = default;
  friend auto operator<=>(const narrow_key&, const narrow_key&) = default;
};

}  // namespace

template <>
struct std::hash<narrow_key> {
  std::size_t operator()(const narrow_key& k) const noexcept { return k.v; }
};

namespace {
[[maybe_unused]] std::array<std::byte, 4> to_bytes(narrow_key) { return {}; }
}  // namespace

static_assert(kvc::BlockHash<kvc::hash64>);
static_assert(kvc::BlockHash<kvc::hash128>);
static_assert(!kvc::BlockHash<std::uint64_t>);
static_assert(!kvc::BlockHash<opaque_key>);
static_assert(!kvc::BlockHash<narrow_key>);

static_assert(kvc::Hasher<kvc::block_hasher<kvc::hash64>>);
static_assert(kvc::Hasher<kvc::block_hasher<kvc::hash128>>);
static_assert(!kvc::Hasher<count_returning_hasher>);
static_assert(!kvc::Hasher<kvc::sequence_hasher<>>);  // stateful and incremental: another role
static_assert(!kvc::Hasher<int>);

TEST_CASE("concepts accept kvc's models and reject look-alikes", "[conformance]") {
  // The static_asserts above are the test; this checks the models are usable as the concept says.
  auto h = kvc::block_hasher<>::create({16, {}});
  REQUIRE(h);
  CHECK(h->full_blocks(33) == 2);
}
