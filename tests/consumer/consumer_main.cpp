// A program of a project that uses kvc: it includes the umbrella header and hashes a prompt.
#include <kvc/kvc.hpp>

#include <cstdio>
#include <vector>

int main() {
  auto hasher = kvc::block_hasher<>::create({4, {}});
  if (!hasher) return 1;
  const std::vector<kvc::token_id> tokens{1, 2, 3, 4, 5, 6, 7, 8};
  std::vector<kvc::hash64> keys(2);
  auto n = hasher->hash_prompt(tokens, keys);
  if (!n || *n != 2 || keys[0] == keys[1]) return 1;
  std::printf("consumer of kvc %s: %s\n", kvc::version_string, kvc::to_hex(keys[1]).c_str());
  return 0;
}
