// Built with -fno-exceptions: the whole public API compiles and works without exceptions, and the
// batch hash and the tree's match allocate nothing (global operator new is counted). A plain
// program, not Catch2, because Catch2 itself needs exceptions.
#include <kvc/kvc.hpp>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <vector>

namespace {
std::atomic<long> allocations{0};
int failures = 0;

void expect(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s\n", what);
    ++failures;
  }
}
}  // namespace

// Replacing the global operators with malloc/free is what the standard allows; GCC 12 reports
// the pair as mismatched once it inlines them.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void* operator new(std::size_t n) {
  allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  std::abort();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
#pragma GCC diagnostic pop

// Every member function of the index clients and their pool compiles without exceptions (their
// -fno-exceptions branches included), not only those main() calls.
template class kvc::remote_index<kvc::shm_transport>;
template class kvc::shared_index<kvc::shm_transport>;

int main() {
  auto hasher = kvc::block_hasher<>::create({16, "model"});
  expect(hasher.has_value(), "create a hasher");
  auto bad = kvc::block_hasher<kvc::hash128>::create({12, {}});
  expect(!bad && bad.error() == kvc::errc::invalid_config, "block size 12 is rejected");

  std::vector<kvc::token_id> tokens(4096);
  for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<kvc::token_id>(i * 7);
  std::vector<kvc::hash64> out(hasher->full_blocks(tokens.size()));
  const kvc::mm_item items[] = {{"image", 100, 300}};
  const kvc::extra_keys keys{3, "tenant", items};

  const long before = allocations.load();
  auto n = hasher->hash_prompt(tokens, out, keys);
  auto one = hasher->hash_block(out[0], std::span(tokens).subspan(16, 16), 1, keys);
  const long after = allocations.load();
  expect(n.has_value() && *n == 256, "hash a 4096-token prompt into 256 blocks");
  expect(one.has_value() && *one == out[1], "hash_block agrees with hash_prompt");
  expect(after == before, "hash_prompt and hash_block allocate nothing");

  auto seq = kvc::sequence_hasher<>::create(*hasher, keys);
  expect(seq.has_value(), "create a sequence hasher");
  seq->reserve(tokens.size());
  const long before_append = allocations.load();
  for (auto t : tokens) seq->push_back(t);
  expect(allocations.load() == before_append, "append after reserve allocates nothing");
  expect(seq->block_hashes().size() == out.size() &&
             std::equal(out.begin(), out.end(), seq->block_hashes().begin()),
         "the sequence hasher agrees with hash_prompt");

  // The radix tree: match allocates nothing, whatever it finds.
  kvc::radix_tree<kvc::hash64, std::uint32_t> tree;
  tree.insert(out, [](std::size_t i) { return static_cast<std::uint32_t>(i); });
  std::vector<kvc::hash64> diverging(out.begin(), out.end());
  diverging[100] = kvc::hash64{12345};
  std::vector<const kvc::radix_tree<kvc::hash64, std::uint32_t>::block*> handles(out.size());
  const auto& ctree = tree;
  const long before_match = allocations.load();
  const std::size_t full = ctree.match(out, handles);
  const std::size_t part = ctree.match(diverging, handles);
  const std::size_t none = ctree.match(std::span(out).subspan(1));
  expect(allocations.load() == before_match, "radix_tree::match allocates nothing");
  expect(full == out.size() && part == 100 && none == 0, "radix_tree::match finds the prefixes");

  std::printf("%s: %d failed\n", failures == 0 ? "passed" : "FAILED", failures);
  return failures == 0 ? 0 : 1;
}
