#include <kvc/hash/block_hash.hpp>

#include <catch2/catch.hpp>
#include <cstddef>
#include <unordered_set>

TEST_CASE("block hashes encode little-endian and print like xxhsum", "[hash]") {
  const kvc::hash64 h{0x0123456789abcdefULL};
  const auto b = kvc::to_bytes(h);
  CHECK(b[0] == std::byte{0xef});
  CHECK(b[7] == std::byte{0x01});
  CHECK(kvc::to_hex(h) == "0123456789abcdef");

  const kvc::hash128 w{0x0011223344556677ULL, 0x8899aabbccddeeffULL};
  const auto wb = kvc::to_bytes(w);
  CHECK(wb[0] == std::byte{0xff});  // low word first
  CHECK(wb[8] == std::byte{0x77});  // then the high word
  CHECK(wb[15] == std::byte{0x00});
  CHECK(kvc::to_hex(w) == "00112233445566778899aabbccddeeff");
  // from_bytes inverts it.
  CHECK(kvc::from_bytes<kvc::hash64>(b) == h);
  CHECK(kvc::from_bytes<kvc::hash128>(wb) == w);
  static_assert(kvc::from_bytes<kvc::hash64>(kvc::to_bytes(kvc::hash64{42})).value == 42);
}

TEST_CASE("block hashes are ordered and hashable", "[hash]") {
  CHECK(kvc::hash64{1} < kvc::hash64{2});
  CHECK(kvc::hash128{1, 0} > kvc::hash128{0, 99});  // the high word decides first
  CHECK(kvc::hash128{1, 2} == kvc::hash128{1, 2});
  std::unordered_set<kvc::hash128> set{{1, 2}, {1, 2}, {2, 1}};
  CHECK(set.size() == 2);
}
