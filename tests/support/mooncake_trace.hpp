// Test and benchmark support: reads the block chains of a Mooncake-format trace (JSON lines with
// "hash_ids"). Not part of the library. A malformed line is an error naming the file and line.
#pragma once

#include <kvc/error.hpp>
#include <kvc/hash/block_hash.hpp>

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace kvc_test {

// Where the public trace lives: $KVC_TRACE, or ../shared/traces/ beside the checkout.
inline std::string conversation_trace_path() {
  if (const char* env = std::getenv("KVC_TRACE")) return env;
  return KVC_SHARED_TRACES_DIR "/conversation_trace.jsonl";
}

inline bool file_exists(const std::string& path) { return std::ifstream(path).good(); }

// The block chains of every request, in trace order, as hash64 keys (ids are chained already).
inline kvc::result<std::vector<std::vector<kvc::hash64>>> read_chains(const std::string& path) {
  std::ifstream in(path);
  if (!in) return kvc::fail(kvc::errc::io_error, "cannot open trace " + path);
  std::vector<std::vector<kvc::hash64>> chains;
  std::string line;
  for (std::size_t line_no = 1; std::getline(in, line); ++line_no) {
    if (line.empty()) continue;
    const auto doc = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    const auto where = path + ":" + std::to_string(line_no);
    if (doc.is_discarded()) return kvc::fail(kvc::errc::malformed_input, where + ": not JSON");
    const auto it = doc.find("hash_ids");
    if (it == doc.end() || !it->is_array()) {
      return kvc::fail(kvc::errc::malformed_input, where + ": no \"hash_ids\" array");
    }
    std::vector<kvc::hash64> chain;
    chain.reserve(it->size());
    for (const auto& id : *it) {
      if (!id.is_number_unsigned()) {
        return kvc::fail(kvc::errc::malformed_input,
                         where + ": a hash id is not an unsigned integer");
      }
      chain.push_back(kvc::hash64{id.get<std::uint64_t>()});
    }
    chains.push_back(std::move(chain));
  }
  return chains;
}

}  // namespace kvc_test
