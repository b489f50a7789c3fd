// bm_hasher: throughput of kvc's token-block hasher against, over the same token bytes,
//   - raw XXH3-64 of the whole prompt in one call: the ceiling for any XXH3-based hasher;
//   - raw XXH3-64 of each block, unchained: what per-block hashing costs before chaining;
//   - SHA-256 of the whole prompt in one call (OpenSSL): the "same bytes" baseline;
//   - SHA-256 per block, chained (SHA-256 of parent digest || block tokens): vLLM's default
//     block hash without its Python pickling, so still a lower bound on what vLLM pays.
// Prompts of 1k, 8k, 32k and 128k tokens at block sizes 16, 64 and 512. After the usual Google
// Benchmark output it prints a table of ns/token and the ratios, all measured in this run.
#include <benchmark/benchmark.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <kvc/detail/xxhash.hpp>
#include <kvc/kvc.hpp>
#include <map>
#include <random>
#include <string>
#include <vector>
#include "support/ratio_reporter.hpp"

namespace {

constexpr std::int64_t prompt_sizes[] = {1 << 10, 1 << 13, 1 << 15, 1 << 17};
constexpr std::int64_t block_sizes[] = {16, 64, 512};

const std::vector<kvc::token_id>& prompt(std::size_t n) {
  static std::map<std::size_t, std::vector<kvc::token_id>> cache;
  auto& tokens = cache[n];
  if (tokens.empty()) {
    std::mt19937 rng(42);
    std::uniform_int_distribution<kvc::token_id> vocab(0, 151'935);  // a Qwen-sized vocabulary
    tokens.resize(n);
    for (auto& t : tokens) t = vocab(rng);
  }
  return tokens;
}

void label(benchmark::State& state, std::int64_t tokens) {
  state.SetItemsProcessed(state.iterations() * tokens);
  state.SetBytesProcessed(state.iterations() * tokens * 4);
}

template <class Hash>
void bm_kvc(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  const auto bs = static_cast<std::uint32_t>(state.range(1));
  const auto& tokens = prompt(n);
  const auto hasher = *kvc::block_hasher<Hash>::create({bs, "bench-model"});
  std::vector<Hash> out(hasher.full_blocks(n));
  for (auto _ : state) {
    auto r = hasher.hash_prompt(tokens, out);
    benchmark::DoNotOptimize(r);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  label(state, state.range(0));
}

void bm_xxh3_whole(benchmark::State& state) {
  const auto& tokens = prompt(static_cast<std::size_t>(state.range(0)));
  for (auto _ : state) {
    benchmark::DoNotOptimize(XXH3_64bits(tokens.data(), tokens.size() * 4));
  }
  label(state, state.range(0));
}

void bm_xxh3_per_block(benchmark::State& state) {
  const auto& tokens = prompt(static_cast<std::size_t>(state.range(0)));
  const auto bs = static_cast<std::size_t>(state.range(1));
  std::vector<XXH64_hash_t> out(tokens.size() / bs);
  for (auto _ : state) {
    for (std::size_t k = 0; k < out.size(); ++k) out[k] = XXH3_64bits(&tokens[k * bs], bs * 4);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  label(state, state.range(0));
}

void bm_sha256_whole(benchmark::State& state) {
  const auto& tokens = prompt(static_cast<std::size_t>(state.range(0)));
  unsigned char digest[SHA256_DIGEST_LENGTH];
  for (auto _ : state) {
    SHA256(reinterpret_cast<const unsigned char*>(tokens.data()), tokens.size() * 4, digest);
    benchmark::DoNotOptimize(digest);
  }
  label(state, state.range(0));
}

void bm_sha256_chained(benchmark::State& state) {
  const auto& tokens = prompt(static_cast<std::size_t>(state.range(0)));
  const auto bs = static_cast<std::size_t>(state.range(1));
  // The fastest OpenSSL route: the algorithm fetched once, one context reused for every block.
  EVP_MD* md = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  std::vector<unsigned char> out((tokens.size() / bs) * SHA256_DIGEST_LENGTH);
  const unsigned char zero[SHA256_DIGEST_LENGTH] = {};
  for (auto _ : state) {
    const unsigned char* parent = zero;
    for (std::size_t k = 0; k < tokens.size() / bs; ++k) {
      unsigned char* digest = &out[k * SHA256_DIGEST_LENGTH];
      EVP_DigestInit_ex(ctx, md, nullptr);
      EVP_DigestUpdate(ctx, parent, SHA256_DIGEST_LENGTH);
      EVP_DigestUpdate(ctx, &tokens[k * bs], bs * 4);
      EVP_DigestFinal_ex(ctx, digest, nullptr);
      parent = digest;
    }
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  EVP_MD_CTX_free(ctx);
  EVP_MD_free(md);
  label(state, state.range(0));
}

void shapes(benchmark::internal::Benchmark* b) {
  for (auto n : prompt_sizes) {
    for (auto bs : block_sizes) b->Args({n, bs});
  }
}

BENCHMARK(bm_kvc<kvc::hash64>)->Name("kvc_hash64")->Apply(shapes);
BENCHMARK(bm_kvc<kvc::hash128>)->Name("kvc_hash128")->Apply(shapes);
BENCHMARK(bm_xxh3_whole)->Name("xxh3_whole")->Apply(shapes);
BENCHMARK(bm_xxh3_per_block)->Name("xxh3_per_block")->Apply(shapes);
BENCHMARK(bm_sha256_whole)->Name("sha256_whole")->Apply(shapes);
BENCHMARK(bm_sha256_chained)->Name("sha256_chained")->Apply(shapes);

void print_table(const kvc_bench::ratio_reporter& r) {
  const auto per_token = [&](const char* bm, std::int64_t n, std::int64_t bs) {
    return r.ns(std::string(bm) + "/" + std::to_string(n) + "/" + std::to_string(bs)) /
           static_cast<double>(n);
  };
  std::printf(
      "\nns/token, lower is better. Ratios, all from this run: 'of XXH3' = raw XXH3 time / kvc64"
      " time (1.0 = at the ceiling; goal >= 0.8), '128 of' the same for kvc128; 'x SHA' ="
      " SHA-256 (whole) time / kvc64 time (goal >= 50); 'x SHAblk' = chained per-block SHA-256"
      " time / kvc64 time\n");
  std::printf("%7s %5s | %7s %7s %7s %8s %7s %7s | %6s %6s %6s %7s\n", "tokens", "block", "kvc64",
              "kvc128", "xxh3", "xxh3blk", "sha256", "shablk", "of XXH3", "128 of", "x SHA",
              "x SHAblk");
  for (auto n : prompt_sizes) {
    for (auto bs : block_sizes) {
      const double k64 = per_token("kvc_hash64", n, bs);
      const double k128 = per_token("kvc_hash128", n, bs);
      const double raw = per_token("xxh3_whole", n, bs);
      const double blk = per_token("xxh3_per_block", n, bs);
      const double sha = per_token("sha256_whole", n, bs);
      const double shablk = per_token("sha256_chained", n, bs);
      if (k64 <= 0 || k128 <= 0) continue;
      std::printf("%7lld %5lld | %7.3f %7.3f %7.3f %8.3f %7.3f %7.3f | %7.2f %6.2f %6.1f %7.1f\n",
                  static_cast<long long>(n), static_cast<long long>(bs), k64, k128, raw, blk, sha,
                  shablk, raw / k64, raw / k128, sha / k64, shablk / k64);
    }
  }
}

}  // namespace

int main(int argc, char** argv) { return kvc_bench::run_with_table(argc, argv, print_table); }
