// A history checker for the one-sided index: every client records its operations (invocation
// and response times on the steady clock, arguments and results), and check_history() holds the
// merged history against what a sequential index allows. Block hashes stand for tree nodes:
// the tests build chains from random hashes, so one hash has one prefix.
//
// Checked (a lookup "returns" chain[0, length)):
//   1. published: every block a lookup returns was in the range of an insert invoked before the
//      lookup's response;
//   2. not stale: a block whose eviction (reported by evict()) responded before the lookup was
//      invoked is returned only if an insert of it was invoked before the lookup's response and
//      responded after the eviction was invoked (or never responded);
//   3. no lost insert (optional): a block that an insert reported present (published or found)
//      before a lookup was invoked is found by that lookup, unless an eviction of the block or
//      of one of its prefix blocks was reported by an evict that responded after the insert was
//      invoked and was invoked before the lookup responded.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace kvc_test {

enum class op_type : std::uint8_t { lookup, insert, evict };

inline constexpr std::int64_t no_response = std::numeric_limits<std::int64_t>::max();

struct op_record {
  op_type type = op_type::lookup;
  int client = 0;
  std::int64_t invoked = 0;
  std::int64_t responded = no_response;  // no_response: failed or never answered
  std::vector<std::uint64_t> chain;      // lookup, insert: the chain's hashes
  std::size_t from = 0;                  // insert: the first block it was asked to publish
  std::size_t length = 0;  // lookup: blocks found; insert: chain[0, length) present after it
  std::vector<std::uint64_t> evicted;  // evict: the blocks it reports unpublished
};

inline std::int64_t history_now() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// One client's operations (one thread; merged after the clients stopped).
struct client_history {
  int client = 0;
  std::vector<op_record> ops;
};

struct history_report {
  std::uint64_t lookups = 0, inserts = 0, evicts = 0, blocks_checked = 0;
  std::uint64_t unpublished = 0, stale = 0, lost = 0;
  std::vector<std::string> messages;  // the first few violations
  [[nodiscard]] bool ok() const noexcept { return unpublished + stale + lost == 0; }
  [[nodiscard]] std::string summary() const {
    std::string s = "lookups " + std::to_string(lookups) + ", inserts " + std::to_string(inserts) +
                    ", evicts " + std::to_string(evicts) + ", blocks checked " +
                    std::to_string(blocks_checked) + "; never published " +
                    std::to_string(unpublished) + ", stale " + std::to_string(stale) +
                    ", lost inserts " + std::to_string(lost);
    for (const auto& m : messages) s += "\n  " + m;
    return s;
  }
};

inline history_report check_history(const std::vector<client_history>& clients,
                                    bool check_lost_inserts = true, std::size_t max_messages = 8) {
  history_report rep;
  auto note = [&](std::uint64_t& count, std::string m) {
    ++count;
    if (rep.messages.size() < max_messages) rep.messages.push_back(std::move(m));
  };
  struct span_t {
    std::int64_t invoked, responded;
  };
  // Per block: inserts whose range held it (sorted by invocation, with the running maximum of
  // their responses), inserts that reported it present (sorted by response, with the running
  // maximum of their invocations), and the evictions reporting it.
  struct block_ops {
    std::vector<span_t> tried;
    std::vector<std::int64_t> tried_max_response;
    std::vector<span_t> present;
    std::vector<std::int64_t> present_max_invoked;
    std::vector<span_t> evicted;
  };
  std::unordered_map<std::uint64_t, block_ops> blocks;
  std::vector<const op_record*> lookups;
  for (const client_history& c : clients) {
    for (const op_record& op : c.ops) {
      switch (op.type) {
        case op_type::lookup:
          ++rep.lookups;
          if (op.responded != no_response) lookups.push_back(&op);
          break;
        case op_type::insert:
          ++rep.inserts;
          for (std::size_t k = op.from; k < op.chain.size(); ++k) {
            blocks[op.chain[k]].tried.push_back({op.invoked, op.responded});
          }
          if (op.responded != no_response) {
            for (std::size_t k = op.from; k < op.length && k < op.chain.size(); ++k) {
              blocks[op.chain[k]].present.push_back({op.invoked, op.responded});
            }
          }
          break;
        case op_type::evict:
          ++rep.evicts;
          for (std::uint64_t h : op.evicted) {
            blocks[h].evicted.push_back({op.invoked, op.responded});
          }
          break;
      }
    }
  }
  for (auto& [h, b] : blocks) {
    std::sort(b.tried.begin(), b.tried.end(),
              [](const span_t& x, const span_t& y) { return x.invoked < y.invoked; });
    std::int64_t mx = std::numeric_limits<std::int64_t>::min();
    for (const span_t& s : b.tried) b.tried_max_response.push_back(mx = std::max(mx, s.responded));
    std::sort(b.present.begin(), b.present.end(),
              [](const span_t& x, const span_t& y) { return x.responded < y.responded; });
    mx = std::numeric_limits<std::int64_t>::min();
    for (const span_t& s : b.present) b.present_max_invoked.push_back(mx = std::max(mx, s.invoked));
  }
  const block_ops none{};
  auto ops_of = [&](std::uint64_t h) -> const block_ops& {
    auto it = blocks.find(h);
    return it == blocks.end() ? none : it->second;
  };

  for (const op_record* lk : lookups) {
    const std::size_t n = lk->chain.size();
    // The latest response of an eviction of chain[0..k] invoked before the lookup responded.
    std::int64_t prefix_evicted = std::numeric_limits<std::int64_t>::min();
    for (std::size_t k = 0; k < n; ++k) {
      const std::uint64_t h = lk->chain[k];
      const block_ops& b = ops_of(h);
      for (const span_t& e : b.evicted) {
        if (e.invoked < lk->responded) prefix_evicted = std::max(prefix_evicted, e.responded);
      }
      // Inserts of h invoked before the lookup responded: tried[0, tried_before).
      const std::size_t tried_before = static_cast<std::size_t>(
          std::lower_bound(b.tried.begin(), b.tried.end(), lk->responded,
                           [](const span_t& s, std::int64_t t) { return s.invoked < t; }) -
          b.tried.begin());
      if (k < lk->length) {
        ++rep.blocks_checked;
        if (tried_before == 0) {
          note(rep.unpublished, "client " + std::to_string(lk->client) + " lookup at " +
                                    std::to_string(lk->invoked) + " returned block " +
                                    std::to_string(k) + " (" + std::to_string(h) +
                                    "), which no insert invoked before its response published");
          break;
        }
        bool stale = false;
        for (const span_t& e : b.evicted) {
          if (e.responded >= lk->invoked) continue;
          if (b.tried_max_response[tried_before - 1] > e.invoked) continue;  // re-inserted
          stale = true;
        }
        if (stale) {
          note(rep.stale, "client " + std::to_string(lk->client) + " lookup at " +
                              std::to_string(lk->invoked) + " returned block " + std::to_string(k) +
                              " (" + std::to_string(h) +
                              "), evicted before it and not inserted again");
          break;
        }
        continue;
      }
      if (!check_lost_inserts) break;
      // Inserts that reported h present before the lookup was invoked: present[0, before).
      const std::size_t before = static_cast<std::size_t>(
          std::lower_bound(b.present.begin(), b.present.end(), lk->invoked,
                           [](const span_t& s, std::int64_t t) { return s.responded < t; }) -
          b.present.begin());
      if (before == 0) continue;
      const std::int64_t latest_invoked = b.present_max_invoked[before - 1];
      if (prefix_evicted > latest_invoked) continue;  // an eviction may explain the miss
      note(rep.lost, "client " + std::to_string(lk->client) + " lookup at " +
                         std::to_string(lk->invoked) + " found " + std::to_string(lk->length) +
                         " blocks, but block " + std::to_string(k) + " (" + std::to_string(h) +
                         ") was reported present by an insert invoked at " +
                         std::to_string(latest_invoked) + " and nothing of its prefix evicted");
      break;
    }
  }
  return rep;
}

}  // namespace kvc_test
