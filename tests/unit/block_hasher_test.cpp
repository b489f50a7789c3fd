#include <kvc/hash/block_hasher.hpp>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdint>
#include <string>
#include <vector>

#include "hash_test_support.hpp"

namespace {

#include "hash_vectors.inc"

using kvc_test::from_words;
using kvc_test::vector_tokens;

template <class Hash>
kvc::block_hasher<Hash> make(std::uint32_t block_size, std::string_view salt = {}) {
  auto h = kvc::block_hasher<Hash>::create({block_size, salt});
  REQUIRE(h);
  return *h;
}

template <class Hash>
std::vector<Hash> hash_all(const kvc::block_hasher<Hash>& h,
                           const std::vector<std::uint32_t>& tokens,
                           const kvc::extra_keys& keys = {}) {
  std::vector<Hash> out(h.full_blocks(tokens.size()));
  auto n = h.hash_prompt(tokens, out, keys);
  REQUIRE(n);
  REQUIRE(*n == out.size());
  return out;
}

// Checks a generated vector: the root and every block hash.
template <class Hash, std::size_t RootWords, std::size_t BlockWords>
void check_vector(const kvc::block_hasher<Hash>& h, std::size_t n_tokens,
                  const std::uint64_t (&root)[RootWords], const std::uint64_t (&blocks)[BlockWords],
                  const kvc::extra_keys& keys = {}) {
  constexpr std::size_t words = Hash::bits / 64;
  CHECK(h.root() == from_words<Hash>(root));
  const auto got = hash_all(h, vector_tokens(n_tokens), keys);
  REQUIRE(got.size() == BlockWords / words);
  for (std::size_t i = 0; i < got.size(); ++i) {
    INFO("block " << i);
    CHECK(kvc::to_hex(got[i]) == kvc::to_hex(from_words<Hash>(blocks + i * words)));
  }
}

}  // namespace

TEST_CASE("hashes match vectors computed by xxhsum over the documented layout", "[hasher]") {
  check_vector(make<kvc::hash64>(16), 40, plain64_bs16_root, plain64_bs16_blocks);
  check_vector(make<kvc::hash128>(16), 40, plain128_bs16_root, plain128_bs16_blocks);
  check_vector(make<kvc::hash64>(1, "llama-3-8b-instruct"), 5, salted64_bs1_root,
               salted64_bs1_blocks);
  check_vector(make<kvc::hash64>(1024), 2048 + 7, plain64_bs1024_root, plain64_bs1024_blocks);
  check_vector(make<kvc::hash128>(512), 1100, plain128_bs512_root, plain128_bs512_blocks);

  const kvc::mm_item items64[] = {{"\x01image-a", 2, 5}, {"clip-b", 9, 3}};
  check_vector(make<kvc::hash64>(4, "m"), 17, keys64_bs4_root, keys64_bs4_blocks,
               kvc::extra_keys{7, "tenant-a", items64});
  const kvc::mm_item items128[] = {{"image-c", 12, 4}};
  check_vector(make<kvc::hash128>(4, "m"), 17, keys128_bs4_root, keys128_bs4_blocks,
               kvc::extra_keys{0, "", items128});
}

TEST_CASE("block size must be a power of two from 1 to 1024", "[hasher][errors]") {
  for (std::uint32_t bs : {0u, 3u, 17u, 100u, 2048u, 4096u}) {
    auto h = kvc::block_hasher<>::create({bs, {}});
    REQUIRE_FALSE(h);
    CHECK(h.error() == kvc::errc::invalid_config);
    CHECK(h.detail() ==
          "block size " + std::to_string(bs) + " is not a power of two from 1 to 1024");
  }
  for (std::uint32_t bs = 1; bs <= 1024; bs *= 2) {
    auto h = kvc::block_hasher<>::create({bs, {}});
    REQUIRE(h);
    CHECK(h->block_size() == bs);
  }
}

TEMPLATE_TEST_CASE("only full blocks are hashed, each chained to its parent", "[hasher]",
                   kvc::hash64, kvc::hash128) {
  const auto h = make<TestType>(16);
  const auto tokens = vector_tokens(16 * 5 + 9);
  const auto hashes = hash_all(h, tokens);
  REQUIRE(hashes.size() == 5);

  // hash_block from the previous hash reproduces the chain.
  TestType parent = h.root();
  for (std::size_t k = 0; k < hashes.size(); ++k) {
    auto one = h.hash_block(parent, std::span(tokens).subspan(k * 16, 16), k);
    REQUIRE(one);
    CHECK(*one == hashes[k]);
    parent = *one;
  }
  // All distinct, and the partial block does not change anything.
  std::vector<TestType> sorted = hashes;
  std::sort(sorted.begin(), sorted.end());
  CHECK(std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end());
  const auto trimmed = hash_all(h, std::vector<std::uint32_t>(tokens.begin(), tokens.begin() + 80));
  CHECK(trimmed == hashes);
}

TEMPLATE_TEST_CASE("every block size's fast path agrees with block-by-block hashing", "[hasher]",
                   kvc::hash64, kvc::hash128) {
  for (std::uint32_t bs = 1; bs <= 1024; bs *= 2) {
    INFO("block size " << bs);
    const auto h = make<TestType>(bs);
    const auto tokens = vector_tokens(bs * 3 + bs / 2);  // plus a partial block from 2 on
    const auto fast = hash_all(h, tokens);
    REQUIRE(fast.size() == 3);
    TestType parent = h.root();
    for (std::size_t k = 0; k < 3; ++k) {
      auto one = h.hash_block(parent, std::span(tokens).subspan(k * bs, bs), k);
      REQUIRE(one);
      CHECK(*one == fast[k]);
      parent = *one;
    }
  }
}

TEMPLATE_TEST_CASE("a block's hash depends on its whole prefix", "[hasher]", kvc::hash64,
                   kvc::hash128) {
  const auto h = make<TestType>(8);
  auto a = vector_tokens(64);
  auto b = a;
  b[3 * 8 + 5] ^= 1;  // one token of block 3 differs
  const auto ha = hash_all(h, a);
  const auto hb = hash_all(h, b);
  for (std::size_t k = 0; k < 3; ++k) CHECK(ha[k] == hb[k]);
  for (std::size_t k = 3; k < 8; ++k) CHECK(ha[k] != hb[k]);

  // Identical block content after different prefixes hashes differently.
  std::vector<std::uint32_t> c(16, 42);
  const auto hc = hash_all(h, c);
  CHECK(hc[0] != hc[1]);
}

TEMPLATE_TEST_CASE("model salt, block size and width separate caches", "[hasher]", kvc::hash64,
                   kvc::hash128) {
  const auto tokens = vector_tokens(64);
  const auto plain = hash_all(make<TestType>(16), tokens);
  const auto salted = hash_all(make<TestType>(16, "model-b"), tokens);
  CHECK(make<TestType>(16).root() != make<TestType>(16, "model-b").root());
  for (std::size_t k = 0; k < plain.size(); ++k) CHECK(plain[k] != salted[k]);
  CHECK(make<TestType>(16).root() != make<TestType>(32).root());
  // The width is part of the root: the low 64 bits of the 128-bit root are not the 64-bit root.
  CHECK(make<kvc::hash128>(16).root().low != make<kvc::hash64>(16).root().value);
}

TEMPLATE_TEST_CASE(
    "LoRA and tenant salt change every block; multimodal items from where they apply", "[hasher]",
    kvc::hash64, kvc::hash128) {
  const auto h = make<TestType>(4);
  const auto tokens = vector_tokens(32);  // 8 blocks
  const auto base = hash_all(h, tokens);

  const auto lora0 = hash_all(h, tokens, kvc::extra_keys{0, {}, {}});
  const auto lora1 = hash_all(h, tokens, kvc::extra_keys{1, {}, {}});
  const auto tenant = hash_all(h, tokens, kvc::extra_keys{{}, "tenant-x", {}});
  for (std::size_t k = 0; k < base.size(); ++k) {
    CHECK(lora0[k] != base[k]);  // adapter id 0 is an adapter, not "no adapter"
    CHECK(lora1[k] != lora0[k]);
    CHECK(tenant[k] != base[k]);
    CHECK(tenant[k] != lora0[k]);
  }

  // An item over tokens [9, 14) overlaps blocks 2 and 3: blocks 0-1 unchanged, 2 on all changed.
  const kvc::mm_item image[] = {{"image-1", 9, 5}};
  const auto with_image = hash_all(h, tokens, kvc::extra_keys{{}, {}, image});
  CHECK(with_image[0] == base[0]);
  CHECK(with_image[1] == base[1]);
  for (std::size_t k = 2; k < base.size(); ++k) CHECK(with_image[k] != base[k]);

  // Another image at the same place differs from block 2 on; the same image moved does too.
  const kvc::mm_item other[] = {{"image-2", 9, 5}};
  const kvc::mm_item moved[] = {{"image-1", 10, 5}};
  const auto with_other = hash_all(h, tokens, kvc::extra_keys{{}, {}, other});
  const auto with_moved = hash_all(h, tokens, kvc::extra_keys{{}, {}, moved});
  CHECK(with_other[1] == base[1]);
  CHECK(with_other[2] != with_image[2]);
  CHECK(with_moved[2] != with_image[2]);

  // Framing: a tenant salt cannot impersonate a LoRA frame or a multimodal frame.
  const auto tenant_ab = hash_all(h, tokens, kvc::extra_keys{{}, "ab", {}});
  const auto tenant_a = hash_all(h, tokens, kvc::extra_keys{{}, "a", {}});
  CHECK(tenant_ab[0] != tenant_a[0]);
}

TEST_CASE("int32 token ids hash like their uint32 bit patterns", "[hasher]") {
  const auto h = make<kvc::hash64>(4);
  const std::vector<std::int32_t> signed_tokens{-1, 0, 1, -2147483647 - 1, 7, 8, 9, 10};
  std::vector<std::uint32_t> unsigned_tokens(signed_tokens.size());
  std::transform(signed_tokens.begin(), signed_tokens.end(), unsigned_tokens.begin(),
                 [](std::int32_t t) { return static_cast<std::uint32_t>(t); });
  std::vector<kvc::hash64> a(2);
  std::vector<kvc::hash64> b(2);
  REQUIRE(h.hash_prompt(std::span<const std::int32_t>(signed_tokens), a));
  REQUIRE(h.hash_prompt(std::span<const std::uint32_t>(unsigned_tokens), b));
  CHECK(a == b);
}

TEST_CASE("bad input gets a clear error and writes nothing", "[hasher][errors]") {
  const auto h = make<kvc::hash64>(16);
  const auto tokens = vector_tokens(64);
  std::vector<kvc::hash64> out(4, kvc::hash64{0xdead});

  SECTION("output span too small") {
    auto r = h.hash_prompt(tokens, std::span(out).first(3));
    REQUIRE_FALSE(r);
    CHECK(r.error() == kvc::errc::buffer_too_small);
    CHECK(r.detail() == "output holds 3 hashes but the prompt has 4 full blocks");
  }
  SECTION("multimodal item outside the sequence") {
    const kvc::mm_item item[] = {{"img", 60, 5}};
    auto r = h.hash_prompt(tokens, out, kvc::extra_keys{{}, {}, item});
    REQUIRE_FALSE(r);
    CHECK(r.error() == kvc::errc::out_of_range);
    CHECK(r.detail() ==
          "multimodal item 0 covers tokens [60, 65) outside the sequence of 64 tokens");
  }
  SECTION("multimodal items out of order or overlapping") {
    const kvc::mm_item items[] = {{"a", 10, 5}, {"b", 12, 2}};
    auto r = h.hash_prompt(tokens, out, kvc::extra_keys{{}, {}, items});
    REQUIRE_FALSE(r);
    CHECK(r.error() == kvc::errc::invalid_argument);
    CHECK(r.detail().find("multimodal item 1 (offset 12) overlaps or precedes") == 0);
  }
  SECTION("empty multimodal item or content hash") {
    const kvc::mm_item empty_len[] = {{"a", 10, 0}};
    const kvc::mm_item empty_hash[] = {{"", 10, 3}};
    CHECK(h.hash_prompt(tokens, out, kvc::extra_keys{{}, {}, empty_len}).error() ==
          kvc::errc::invalid_argument);
    CHECK(h.hash_prompt(tokens, out, kvc::extra_keys{{}, {}, empty_hash}).error() ==
          kvc::errc::invalid_argument);
  }
  SECTION("offset + length overflows") {
    const kvc::mm_item item[] = {{"a", UINT64_MAX - 1, 5}};
    CHECK(h.hash_prompt(tokens, out, kvc::extra_keys{{}, {}, item}).error() ==
          kvc::errc::out_of_range);
  }
  SECTION("hash_block with the wrong number of tokens") {
    auto r = h.hash_block(h.root(), std::span(tokens).first(15), 0);
    REQUIRE_FALSE(r);
    CHECK(r.error() == kvc::errc::invalid_argument);
    CHECK(r.detail() == "a block holds 16 tokens, got 15");
  }
  CHECK(std::all_of(out.begin(), out.end(), [](kvc::hash64 x) { return x.value == 0xdead; }));
}
