// Test and benchmark support: the block chains of a Mooncake-format trace (JSON lines with
// "hash_ids"), through kvc-replay's reader (examples/trace/). Not part of the library. A
// malformed line is an error naming the file and line.
#pragma once

#include <kvc/error.hpp>
#include <kvc/hash/block_hash.hpp>

#include "trace/mooncake_reader.hpp"

#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

namespace kvc_test {

// Where the public trace lives: $KVC_TRACE, or ../shared/traces/ beside the checkout.
inline std::string conversation_trace_path() {
  if (const char* env = std::getenv("KVC_TRACE")) return env;
  return KVC_SHARED_TRACES_DIR "/conversation_trace.jsonl";
}

inline bool file_exists(const std::string& path) { return std::ifstream(path).good(); }

// The block chains of every request, in trace order, as hash64 keys (the ids themselves: the
// public trace's ids name their prefixes already). Read by kvc-replay's reader.
inline kvc::result<std::vector<std::vector<kvc::hash64>>> read_chains(const std::string& path) {
  auto reader = kvc_trace::mooncake_reader::open(path, {});
  if (!reader) return std::move(reader).take_failure();
  std::vector<std::vector<kvc::hash64>> chains;
  for (;;) {
    auto next = reader->next();
    if (!next) return std::move(next).take_failure();
    if (!*next) return chains;
    std::vector<kvc::hash64> chain;
    chain.reserve((*next)->hash_ids.size());
    for (const std::uint64_t id : (*next)->hash_ids) chain.push_back(kvc::hash64{id});
    chains.push_back(std::move(chain));
  }
}

}  // namespace kvc_test
