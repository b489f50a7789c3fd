// kvc-quickstart: serves a prompt twice through a cache manager (the second request finds every
// block cached), then shows the parts underneath: the block keys a prompt hashes to, and a local
// radix-tree cache over them.
//
//   kvc-quickstart                 hash the embedded demo prompt (block size 16)
//   kvc-quickstart 4 1 2 3 4 5 6 7 8 9
//                                  block size 4, then the prompt's token ids
#include <kvc/kvc.hpp>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

// The embedded demo: a 70-token prompt whose first 48 tokens are a system prompt shared by
// every request of a deployment.
std::vector<kvc::token_id> demo_prompt() {
  std::vector<kvc::token_id> tokens;
  for (kvc::token_id t = 0; t < 70; ++t) tokens.push_back(1000 + t * 17 % 251);
  return tokens;
}

int usage(const char* why) {
  std::fprintf(stderr, "kvc-quickstart: %s\nusage: kvc-quickstart [BLOCK_SIZE TOKEN...]\n", why);
  return 2;
}

template <class R>
int failed(const char* what, const R& r) {
  std::fprintf(stderr, "kvc-quickstart: %s: %s\n", what, r.message().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::uint32_t block_size = 16;
  std::vector<kvc::token_id> tokens = demo_prompt();
  if (argc >= 2) {
    char* end = nullptr;
    const unsigned long bs = std::strtoul(argv[1], &end, 10);
    if (*end != '\0' || bs > 0xFFFF'FFFFul) return usage("BLOCK_SIZE is not a number");
    block_size = static_cast<std::uint32_t>(bs);
    tokens.clear();
    for (int i = 2; i < argc; ++i) {
      const unsigned long t = std::strtoul(argv[i], &end, 10);
      if (*end != '\0' || t > 0xFFFF'FFFFul) return usage("a token id is not a 32-bit number");
      tokens.push_back(static_cast<kvc::token_id>(t));
    }
  }

  // [manager]
  kvc::cache_manager<>::config cfg;
  cfg.block_size = block_size;  // tokens per block
  cfg.model_salt = "demo-model";
  cfg.block_bytes = 64 << 10;  // KV bytes of one block, all layers
  cfg.device.blocks = 256;     // the engine's KV tensor (no copy hook: a host stand-in)
  cfg.host.blocks = 1024;      // host DRAM; cfg.ssd and cfg.remote add the other tiers
  auto mgr = kvc::cache_manager<>::create(cfg);
  if (!mgr) return failed("create", mgr);
  for (int request = 1; request <= 2; ++request) {
    auto m = (*mgr)->match(tokens);  // the longest cached prefix, leased
    if (!m) return failed("match", m);
    auto l = (*mgr)->load(*m);  // its blocks onto device ids
    if (!l) return failed("load", l);
    const std::size_t usable = l->wait();               // blocks the engine may read now
    auto ids = (*mgr)->allocate(m->blocks() - usable);  // device ids for the rest
    if (!ids) return failed("allocate", ids);
    // ... the engine's prefill computes blocks [usable, m->blocks()) into *ids ...
    if (auto c = (*mgr)->commit(*m, usable, *ids); !c) return failed("commit", c);
    if (auto r = (*mgr)->release(*m, &*l, *ids); !r) return failed("release", r);
    std::printf("request %d: %zu of %zu blocks cached (device %zu, host %zu), %zu computed\n",
                request, m->length(), m->blocks(), m->by_tier().device, m->by_tier().host,
                ids->size());
  }
  // [manager]

  // [quickstart]
  auto hasher = kvc::block_hasher<>::create({.block_size = block_size, .model_salt = "demo-model"});
  if (!hasher) {
    std::fprintf(stderr, "kvc-quickstart: %s\n", hasher.message().c_str());
    return 1;
  }
  std::vector<kvc::hash64> keys(hasher->full_blocks(tokens.size()));
  if (auto n = hasher->hash_prompt(tokens, keys); !n) {
    std::fprintf(stderr, "kvc-quickstart: %s\n", n.message().c_str());
    return 1;
  }
  for (std::size_t i = 0; i < keys.size(); ++i) {
    std::printf("block %zu  tokens [%zu, %zu)  key %s\n", i, i * block_size, (i + 1) * block_size,
                kvc::to_hex(keys[i]).c_str());
  }
  // [quickstart]
  std::printf("%zu tokens, block size %u: %zu full blocks, %zu tokens left for the next block\n",
              tokens.size(), block_size, keys.size(), tokens.size() - keys.size() * block_size);

  // A stand-in for the engine's GPU block allocator: ids of blocks in its KV tensor.
  std::uint32_t next_gpu_block = 0;
  std::vector<std::uint32_t> freed;
  const auto allocate_gpu_block = [&](std::size_t) { return next_gpu_block++; };
  const auto free_gpu_block = [&](std::uint32_t id) { freed.push_back(id); };

  // [tree]
  kvc::radix_tree<kvc::hash64, std::uint32_t, kvc::lru_policy> cache;
  const std::size_t capacity = 1024;          // blocks the engine's KV tensor holds
  const std::size_t hit = cache.match(keys);  // longest cached prefix, no allocation
  cache.insert(keys, [&](std::size_t i) { return allocate_gpu_block(i); });
  auto lease = cache.acquire(keys);  // pinned while the engine uses the request's blocks
  if (cache.size() > capacity) {
    cache.evict(cache.size() - capacity,
                [&](const kvc::hash64&, std::uint32_t&& id) { free_gpu_block(id); });
  }
  // [tree]
  std::printf("first request: %zu of %zu blocks were cached; %zu cached now\n", hit, keys.size(),
              cache.size());

  // The same prompt again hits every block; while the lease lives nothing of it can be evicted.
  const std::size_t again = cache.match(keys);
  const auto evict_all = [&] {
    return cache.evict(cache.size(),
                       [&](const kvc::hash64&, std::uint32_t&& id) { free_gpu_block(id); });
  };
  const std::size_t while_pinned = evict_all();
  lease.release();
  const std::size_t after_release = evict_all();
  std::printf(
      "second request: %zu of %zu blocks cached; evicting all frees %zu while pinned, %zu after "
      "release (GPU blocks freed: %zu)\n",
      again, keys.size(), while_pinned, after_release, freed.size());
  return 0;
}
