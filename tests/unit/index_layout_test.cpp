// The remote index's encodings: every field round-trips at its limits without touching its
// neighbours, versions wrap, and the region geometry fits and refuses as it says.
#include <catch2/catch.hpp>
#include <cstdint>

#include "kvc/index/layout.hpp"

namespace il = kvc::index_layout;

TEST_CASE("index layout: slot word1 fields round-trip at their limits", "[index][layout]") {
  const std::uint64_t ptrs[] = {0, 1, il::mask(il::ptr_bits)};
  const std::uint8_t versions[] = {0, 1, 63};
  const std::uint16_t checks[] = {0, 1, 0xFFFF};
  for (auto ptr : ptrs) {
    for (auto state : {il::slot_state::empty, il::slot_state::reserved, il::slot_state::valid,
                       il::slot_state::tombstone}) {
      for (auto version : versions) {
        for (auto check : checks) {
          const il::slot_word w{ptr, state, version, check};
          CHECK(il::slot_word::decode(w.encode()) == w);
        }
      }
    }
  }
  // The state field is bits 40-41, version 42-47, check 48-63.
  CHECK(il::slot_word{0, il::slot_state::valid, 0, 0}.encode() == std::uint64_t{2} << 40);
  CHECK(il::slot_word{0, il::slot_state::empty, 63, 0}.encode() == std::uint64_t{63} << 42);
  CHECK(il::slot_word{0, il::slot_state::empty, 0, 0xFFFF}.encode() == std::uint64_t{0xFFFF} << 48);
  // An oversized pointer cannot spill into the state.
  CHECK(il::slot_word{~std::uint64_t{0}, il::slot_state::empty, 0, 0}.encode() ==
        il::mask(il::ptr_bits));
}

TEST_CASE("index layout: every transition bumps the version, which wraps", "[index][layout]") {
  il::slot_word w{};
  for (int i = 0; i < 64; ++i) {
    const auto reserved = w.moved_to(il::slot_state::reserved, il::reserved_ptr(5, 0x2AAAA), 7);
    CHECK(reserved.version == ((w.version + 1) & 63));
    const auto valid = reserved.moved_to(il::slot_state::valid, 1234, 7);
    CHECK(valid.version == ((w.version + 2) & 63));
    const auto tomb = valid.moved_to(il::slot_state::tombstone, valid.ptr, valid.check);
    w = tomb.moved_to(il::slot_state::empty, 0, 0);
  }
  CHECK(w.version == (64 * 4) % 64);
}

TEST_CASE("index layout: a reservation names its owner and 18 key bits", "[index][layout]") {
  const auto p = il::reserved_ptr(0x3FFFFF, 0x3FFFF);
  CHECK(p == il::mask(il::ptr_bits));
  CHECK(il::reserved_owner(p) == 0x3FFFFF);
  CHECK(il::reserved_key_bits(p) == 0x3FFFF);
  const auto q = il::reserved_ptr(17, 0xFFFFFFFF);  // key bits beyond 18 are dropped
  CHECK(il::reserved_owner(q) == 17);
  CHECK(il::reserved_key_bits(q) == 0x3FFFF);
}

TEST_CASE("index layout: a slot holds a block only when VALID with agreeing versions",
          "[index][layout]") {
  const std::uint64_t tag = 0x0123456789ABCDEFu;
  const il::slot_word valid{99, il::slot_state::valid, 9, 0xBEEF};
  il::slot s{il::tag_word{tag, 9}.encode(), valid.encode()};
  CHECK(il::holds(s, tag, 0xBEEF));
  CHECK_FALSE(il::holds(s, tag, 0xBEEE));                          // check differs
  CHECK_FALSE(il::holds(s, tag ^ 1, 0xBEEF));                      // tag differs
  CHECK(il::holds(s, tag | (std::uint64_t{0x3F} << 58), 0xBEEF));  // only 58 tag bits count
  s.word0 = il::tag_word{tag, 10}.encode();                        // torn: word0 of another version
  CHECK_FALSE(il::holds(s, tag, 0xBEEF));
  s.word0 = il::tag_word{tag, 9}.encode();
  s.word1 = valid.moved_to(il::slot_state::tombstone, 99, 0xBEEF).encode();
  CHECK_FALSE(il::holds(s, tag, 0xBEEF));
  CHECK(il::tag_word::decode(il::tag_word{tag, 63}.encode()) ==
        il::tag_word{tag & il::mask(58), 63});
}

TEST_CASE("index layout: client and chunk words; the heartbeat FAA leaves the rest alone",
          "[index][layout]") {
  const il::client_word c{il::client_state::live, 0x3FFFFF, 0xFFFFFFFFFFu};
  CHECK(il::client_word::decode(c.encode()) == c);
  il::client_word beat{il::client_state::live, 12345, 0};
  std::uint64_t w = beat.encode();
  for (int i = 0; i < 1000; ++i) w += il::client_word::heartbeat_one;  // what FAA does
  const auto after = il::client_word::decode(w);
  CHECK(after.state == il::client_state::live);
  CHECK(after.incarnation == 12345);
  CHECK(after.heartbeat == 1000);
  const il::chunk_word k{il::chunk_state::owned, 77, 0xABCDEF0123u};
  CHECK(il::chunk_word::decode(k.encode()) == k);
  CHECK(il::pack_shape(0xFFFFFFFF, 3, 1, 512) ==
        (0xFFFFFFFFu | std::uint64_t{3} << 32 | std::uint64_t{1} << 40 | std::uint64_t{512} << 48));
}

TEST_CASE("index layout: identity and fence words name one incarnation", "[index][layout]") {
  const il::identity_word who{0x3FFFFF, 0xFFFFFFFFFFu};
  CHECK(il::identity_word::decode(who.encode()) == who);
  CHECK(il::identity_word::decode(il::identity_word{7, 1}.encode()) == il::identity_word{7, 1});
  CHECK(il::identity_word::decode(0) == il::identity_word{});  // never written: no identity
  CHECK(il::identity_word{7, 1}.encode() != il::identity_word{8, 1}.encode());
  // Bits of an identity beyond 40 do not leak into the incarnation.
  CHECK(il::identity_word::decode(il::identity_word{3, ~std::uint64_t{0}}.encode()).incarnation ==
        3);
  CHECK(il::fence_word::names(il::fence_word::encode(5), 5));
  CHECK_FALSE(il::fence_word::names(il::fence_word::encode(5), 6));
  CHECK_FALSE(il::fence_word::names(0, 0));  // a zeroed entry is not fenced in incarnation 0
  CHECK(il::fence_word::names(il::fence_word::encode(0x3FFFFF), 0x3FFFFF));
  // The words sit between the client word and the hazards.
  CHECK(il::identity_offset == 8);
  CHECK(il::fence_offset == 16);
  CHECK(il::fence_offset + 8 <= il::hazard_offset);
}

TEST_CASE("index layout: geometry fits the region and refuses what cannot fit", "[index][layout]") {
  const std::uint64_t data_offset = kvc::region_header::reserved_bytes;
  for (std::uint64_t region : {std::uint64_t{1} << 24, std::uint64_t{1} << 30}) {
    for (std::uint64_t block : {std::uint64_t{64}, std::uint64_t{4096}, std::uint64_t{1} << 20}) {
      auto g = il::geometry::fit(region, data_offset, block, 64);
      if (!g) {
        CHECK(block == (std::uint64_t{1} << 20));  // 64 MiB chunks do not fit 16 MiB
        CHECK(region == (std::uint64_t{1} << 24));
        continue;
      }
      CHECK(g->end(data_offset) <= region);
      CHECK(g->chunks > 0);
      CHECK((g->groups & (g->groups - 1)) == 0);  // a power of two
      // Offsets ascend, each section 8-byte aligned, records and groups 64-byte aligned.
      CHECK(g->chunks_offset(data_offset) % 8 == 0);
      CHECK(g->groups_offset(data_offset) % 64 == 0);
      CHECK(g->records_offset(data_offset) % 64 == 0);
      CHECK(g->data_offset_of(data_offset) % 64 == 0);
      // Most of the region is used (groups round down to a power of two).
      CHECK(g->end(data_offset) >= region / 2);
    }
  }
  CHECK(il::geometry::fit(1 << 20, data_offset, 100, 4).error() == kvc::errc::invalid_config);
  CHECK(il::geometry::fit(1 << 20, data_offset, 64, 0).error() == kvc::errc::invalid_config);
  auto tiny = il::geometry::fit(8192, data_offset, 4096, 4);
  REQUIRE_FALSE(tiny);
  CHECK_THAT(tiny.detail(), Catch::Contains("holds no chunk"));
}

TEST_CASE("index layout: slab words keep their count under FAA in every state", "[index][layout]") {
  for (auto state : {il::slab_state::free, il::slab_state::held, il::slab_state::live,
                     il::slab_state::evicting}) {
    const il::slab_word w{state, 0xFF, 0x3FFFFF, 0};
    CHECK(il::slab_word::decode(w.encode()) == w);
    std::uint64_t raw = w.encode();
    for (int i = 0; i < 5; ++i) raw += il::count_one;  // what FAA +1 does
    raw += il::count_minus_one;                        // and FAA -1
    const auto after = il::slab_word::decode(raw);
    CHECK(after.state == state);
    CHECK(after.version == 0xFF);
    CHECK(after.owner == 0x3FFFFF);
    CHECK(after.count == 4);
  }
  // The all-zero word (a fresh region) is a FREE slab of version 0 with no children.
  CHECK(il::slab_word::decode(0) == il::slab_word{});
}

TEST_CASE("index layout: hazard ranges", "[index][layout]") {
  const il::hazard_range h{0xFFFFFFFFFFu - 5, il::hazard_range::max_count};
  CHECK(il::hazard_range::decode(h.encode()).first == h.first);
  CHECK(il::hazard_range::decode(h.encode()).count == h.count);
  const il::hazard_range r{100, 3};
  CHECK_FALSE(r.covers(99));
  CHECK(r.covers(100));
  CHECK(r.covers(102));
  CHECK_FALSE(r.covers(103));
  CHECK_FALSE(il::hazard_range{}.covers(0));  // an empty word protects nothing
}

TEST_CASE("index layout: the header's layout words round-trip and are checked", "[index][layout]") {
  kvc::region_header h;
  h.region_bytes = std::uint64_t{1} << 24;
  auto g = il::geometry::fit(h.region_bytes, h.data_offset, 4096, 16);
  REQUIRE(g);
  il::write_layout(h, *g);
  auto back = il::read_layout(h);
  REQUIRE(back);
  CHECK(back->chunks == g->chunks);
  CHECK(back->groups == g->groups);
  CHECK(back->clients == 16);
  CHECK(back->block_bytes == 4096);
  kvc::region_header blank;
  blank.region_bytes = h.region_bytes;
  CHECK(il::read_layout(blank).error() == kvc::errc::format_mismatch);
  auto future = h;
  future.layout[1] = il::layout_format + 1;
  CHECK(il::read_layout(future).error() == kvc::errc::format_mismatch);
  auto too_big = h;
  too_big.layout[4] = g->chunks * 4;  // more chunks than the region holds
  CHECK(il::read_layout(too_big).error() == kvc::errc::format_mismatch);
  auto not_pow2 = h;
  not_pow2.layout[3] = 3;
  CHECK(il::read_layout(not_pow2).error() == kvc::errc::format_mismatch);
}
