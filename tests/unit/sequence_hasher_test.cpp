#include <kvc/hash/sequence_hasher.hpp>

#include <catch2/catch.hpp>
#include <random>
#include <vector>

#include "hash_test_support.hpp"

using kvc_test::vector_tokens;

TEMPLATE_TEST_CASE("appending in any chunks gives the same hashes as hashing the prompt at once",
                   "[sequence]", kvc::hash64, kvc::hash128) {
  std::mt19937 rng(1234);
  for (std::uint32_t bs : {1u, 4u, 16u, 512u}) {
    const auto hasher = *kvc::block_hasher<TestType>::create({bs, "m"});
    const auto tokens = vector_tokens(bs * 7 + bs / 2);
    const kvc::mm_item items[] = {{"img", bs, bs + 1}, {"audio", 3 * bs + 1, 1}};
    const kvc::extra_keys keys{42, "tenant", items};
    std::vector<TestType> expected(hasher.full_blocks(tokens.size()));
    REQUIRE(hasher.hash_prompt(tokens, expected, keys));

    INFO("block size " << bs);
    auto seq = kvc::sequence_hasher<TestType>::create(hasher, keys);
    REQUIRE(seq);
    std::size_t pos = 0;
    std::size_t emitted = 0;
    while (pos < tokens.size()) {
      const std::size_t chunk = std::min<std::size_t>(rng() % (2 * bs + 2), tokens.size() - pos);
      emitted += seq->append(std::span(tokens).subspan(pos, chunk));
      pos += chunk;
      CHECK(seq->size() == pos);
      CHECK(seq->pending() == pos % bs);
      CHECK(seq->block_hashes().size() == pos / bs);
    }
    CHECK(emitted == expected.size());
    CHECK(std::equal(expected.begin(), expected.end(), seq->block_hashes().begin(),
                     seq->block_hashes().end()));
    CHECK(seq->check_complete());
  }
}

TEST_CASE("push_back reports each completed block during decoding", "[sequence]") {
  const auto hasher = *kvc::block_hasher<>::create({4, {}});
  auto seq = std::move(*kvc::sequence_hasher<>::create(hasher));
  seq.reserve(12);
  const auto tokens = vector_tokens(12);
  std::vector<std::size_t> completed_at;
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    if (seq.push_back(tokens[i])) completed_at.push_back(i);
  }
  CHECK(completed_at == std::vector<std::size_t>{3, 7, 11});
  std::vector<kvc::hash64> expected(3);
  REQUIRE(hasher.hash_prompt(tokens, expected));
  CHECK(std::equal(expected.begin(), expected.end(), seq.block_hashes().begin()));
}

TEST_CASE("the sequence hasher owns its keys", "[sequence]") {
  const auto hasher = *kvc::block_hasher<>::create({4, {}});
  const auto tokens = vector_tokens(16);
  std::vector<kvc::hash64> expected(4);
  std::string content = "image-content";
  std::string tenant = "tenant-a";
  const kvc::mm_item items[] = {{content, 5, 2}};
  REQUIRE(hasher.hash_prompt(tokens, expected, kvc::extra_keys{{}, tenant, items}));

  auto created = kvc::sequence_hasher<>::create(hasher, kvc::extra_keys{{}, tenant, items});
  REQUIRE(created);
  kvc::sequence_hasher<> seq = std::move(*created);  // moved: views must follow
  content.assign(content.size(), 'x');               // the caller's buffers change
  tenant.assign(tenant.size(), 'y');
  seq.append(tokens);
  CHECK(std::equal(expected.begin(), expected.end(), seq.block_hashes().begin()));
}

TEST_CASE("the sequence hasher rejects invalid keys and reports items that never applied",
          "[sequence][errors]") {
  const auto hasher = *kvc::block_hasher<>::create({4, {}});
  const kvc::mm_item unsorted[] = {{"a", 8, 2}, {"b", 2, 2}};
  auto bad = kvc::sequence_hasher<>::create(hasher, kvc::extra_keys{{}, {}, unsorted});
  REQUIRE_FALSE(bad);
  CHECK(bad.error() == kvc::errc::invalid_argument);

  const kvc::mm_item later[] = {{"a", 6, 4}};
  auto seq = std::move(*kvc::sequence_hasher<>::create(hasher, kvc::extra_keys{{}, {}, later}));
  seq.append(vector_tokens(8));
  auto incomplete = seq.check_complete();
  REQUIRE_FALSE(incomplete);
  CHECK(incomplete.error() == kvc::errc::out_of_range);
  seq.append(vector_tokens(2));
  CHECK(seq.check_complete());
}
