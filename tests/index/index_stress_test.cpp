// The one-sided index under concurrency: threads with a checked history, processes killed with
// SIGKILL at random points, and clients over the faulty transport that crash mid-batch; every
// run ends with recover_everything() from a fresh client and a clean region audit.
//
// KVC_STRESS_SCALE (a factor, default 1) scales the operation counts; ThreadSanitizer builds
// run a tenth of them.
#include <catch2/catch.hpp>

#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstring>
#include <new>
#include <numeric>
#include <optional>
#include <thread>

#include "../support/fork_child.hpp"
#include "history.hpp"
#include "index_audit.hpp"
#include "index_fixture.hpp"
#include "kvc/transport/faulty.hpp"

using kvc_test::client_history;
using kvc_test::index_nodes;
using kvc_test::op_record;
using kvc_test::op_type;

namespace {

#if defined(__SANITIZE_THREAD__)
constexpr double sanitizer_factor = 0.1;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
constexpr double sanitizer_factor = 0.1;
#else
constexpr double sanitizer_factor = 1.0;
#endif
#else
constexpr double sanitizer_factor = 1.0;
#endif

std::uint64_t scaled(std::uint64_t n) {
  double f = sanitizer_factor;
  if (const char* s = std::getenv("KVC_STRESS_SCALE"); s != nullptr && *s != '\0') {
    f *= std::strtod(s, nullptr);
  }
  return std::max<std::uint64_t>(1, static_cast<std::uint64_t>(static_cast<double>(n) * f));
}

// Base chains that share prefixes: a tree of a few hundred paths.
std::vector<std::vector<kvc::hash64>> make_bases(std::uint64_t seed, std::size_t count) {
  std::mt19937_64 rng(seed);
  std::vector<std::vector<kvc::hash64>> bases;
  for (std::size_t i = 0; i < count; ++i) {
    const std::size_t len = 4 + rng() % 61;
    if (i > 0 && rng() % 3 != 0) {
      const auto& other = bases[rng() % bases.size()];
      bases.push_back(kvc_test::make_chain(rng, len, other, 1 + rng() % other.size()));
    } else {
      bases.push_back(kvc_test::make_chain(rng, len));
    }
  }
  return bases;
}

std::vector<kvc_test::audited_region> regions_of(const index_nodes& nodes) {
  std::vector<kvc_test::audited_region> v;
  for (const auto& r : nodes.regions) v.push_back({r.base(), &r.header()});
  return v;
}

std::vector<std::uint64_t> raw(std::span<const kvc::hash64> c) {
  std::vector<std::uint64_t> v;
  v.reserve(c.size());
  for (const auto& h : c) v.push_back(h.value);
  return v;
}

// What a worker saw go wrong, countable from threads and from processes (shared memory).
struct failures {
  std::atomic<std::uint64_t> errors{0};     // operations that failed unexpectedly
  std::atomic<std::uint64_t> integrity{0};  // records or data read back that were not the block's
  std::atomic<std::uint64_t> ops{0};
  std::atomic<std::uint64_t> stop{0};
  std::atomic<std::uint64_t> message_taken{0};
  char message[512] = {};

  void record(std::atomic<std::uint64_t>& counter, const std::string& m) {
    counter.fetch_add(1, std::memory_order_relaxed);
    if (message_taken.exchange(1) == 0) {
      std::snprintf(message, sizeof message, "%s", m.c_str());
    }
  }
};

// One client's operations: lookups (some reading their blocks back), inserts under what a lookup
// found, evictions and upkeep, over chains drawn Zipf-like from the bases and extended at random.
template <class Index>
class worker {
 public:
  worker(Index& ix, const std::vector<std::vector<kvc::hash64>>& bases, std::uint64_t seed,
         failures& f, client_history* history, std::size_t nodes)
      : ix_(ix), bases_(bases), rng_(seed), f_(f), history_(history), nodes_(nodes) {}

  // One operation; false when an index call failed (the caller decides whether that was
  // expected, as after an injected crash).
  bool step() {
    if (auto ok = ix_.maintain(); !ok) return failed("maintain", ok.message());
    const auto chain = pick();
    const unsigned dice = static_cast<unsigned>(rng_() % 100);
    if (dice < 86) {
      auto m = lookup(chain);
      if (!m) return false;
      if (dice < 25) return read_back(chain, *m);
      if (dice < 55) return true;
      const std::size_t from = dice < 60 ? 0 : m->length;
      if (from == chain.size()) return true;
      // Half the inserts after a lookup pass its match: the located parent, and round A from
      // the lookup's reads when nothing ran on the client in between.
      return insert(chain, from, dice >= 73 ? &*m : nullptr);
    }
    if (dice < 97) return evict();
    return true;
  }

 private:
  // A base's prefix, or the whole base and one of four fixed extensions (fresh hashes at every
  // call would fan a popular prefix out over more blocks than its buckets hold: an insert of a
  // block whose two buckets are full stops with no_room). Four branches at one point put two
  // blocks in their second buckets, so that the overflow words are named concurrently too.
  std::vector<kvc::hash64> pick() {
    const double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng_);
    const std::size_t which =
        std::min(bases_.size() - 1,
                 static_cast<std::size_t>(static_cast<double>(bases_.size()) * u * u * u));
    const auto& base = bases_[which];
    if (rng_() % 4 != 0) {
      return {base.begin(), base.begin() + static_cast<std::ptrdiff_t>(1 + rng_() % base.size())};
    }
    std::vector<kvc::hash64> c = base;
    const std::uint64_t variant = rng_() % 4;
    const std::size_t extra = 1 + rng_() % 20;
    for (std::size_t i = 0; i < extra; ++i) {
      c.push_back(
          kvc::hash64{kvc::detail::index::mix(0x5EED0000u + which * 128 + variant * 32 + i + 1)});
    }
    return c;
  }

  bool failed(const char* what, const std::string& why) {
    last_error_ = std::string(what) + ": " + why;
    return false;
  }

  op_record* begin(op_type t) {
    if (history_ == nullptr) return nullptr;
    history_->ops.push_back({});
    op_record& op = history_->ops.back();
    op.type = t;
    op.client = history_->client;
    op.invoked = kvc_test::history_now();
    return &op;
  }

  std::optional<kvc::index_match> lookup(const std::vector<kvc::hash64>& chain) {
    op_record* op = begin(op_type::lookup);
    const std::size_t hint = rng_() % 2 == 0 ? rng_() % (chain.size() + 1) : 0;
    auto m = ix_.lookup(chain, hint);
    if (op != nullptr) {
      op->chain = raw(chain);
      if (m) {
        op->responded = kvc_test::history_now();
        op->length = m->length;
      }
    }
    if (!m) {
      failed("lookup", m.message());
      return std::nullopt;
    }
    return std::move(*m);
  }

  static void pattern(std::uint64_t h, std::span<std::byte> out) {
    for (std::size_t i = 0; i + 8 <= out.size(); i += 8) std::memcpy(out.data() + i, &h, 8);
  }

  bool read_back(const std::vector<kvc::hash64>& chain, const kvc::index_match& m) {
    std::vector<kvc::block_ref> refs;
    std::vector<std::size_t> at;
    for (std::size_t k = 0; k < m.length; ++k) {
      if (m.blocks[k].known()) {
        refs.push_back(m.blocks[k]);
        at.push_back(k);
      }
    }
    if (refs.empty()) return true;
    std::vector<std::byte> bytes(refs.size() * block_bytes);
    std::vector<kvc::local_buffer> dst;
    for (std::size_t i = 0; i < refs.size(); ++i) {
      dst.push_back(kvc::unregistered(std::span(bytes).subspan(i * block_bytes, block_bytes)));
    }
    std::vector<kvc::index_layout::record> recs(refs.size());
    auto got = ix_.read_blocks(refs, dst, recs);
    if (!got) return failed("read_blocks", got.message());
    std::array<std::byte, block_bytes> want{};
    for (std::size_t i = 0; i < *got; ++i) {
      const std::uint64_t h = chain[at[i]].value;
      pattern(h, want);
      if (recs[i].hash_lo != h ||
          std::memcmp(bytes.data() + i * block_bytes, want.data(), block_bytes) != 0) {
        f_.record(f_.integrity, "read_blocks returned another block's record or data at " +
                                    std::to_string(at[i]));
      }
    }
    return true;
  }

  bool insert(const std::vector<kvc::hash64>& chain, std::size_t from,
              const kvc::index_match* match) {
    const std::size_t n = chain.size() - from;
    payload_.assign(n * block_bytes, std::byte{0});
    std::vector<kvc::block_info> info(n);
    for (std::size_t i = 0; i < n; ++i) {
      auto bytes = std::span(payload_).subspan(i * block_bytes, block_bytes);
      pattern(chain[from + i].value, bytes);
      info[i] = {kvc::unregistered(bytes), static_cast<std::uint32_t>(block_bytes), 1, 0, 16};
    }
    op_record* op = begin(op_type::insert);
    auto r = match != nullptr ? ix_.insert(chain, *match, info) : ix_.insert(chain, from, info);
    if (op != nullptr) {
      op->chain = raw(chain);
      op->from = from;
      if (r) {
        op->responded = kvc_test::history_now();
        op->length = r->length;
      }
    }
    if (!r) return failed("insert", r.message());
    return true;
  }

  bool evict() {
    op_record* op = begin(op_type::evict);
    std::vector<kvc::hash64> out;
    const auto node = static_cast<kvc::node_id>(rng_() % nodes_);
    auto e = ix_.evict(node, 1 + rng_() % 4, &out);
    if (op != nullptr) {
      // What it reports is kept even when it failed later: those blocks did go.
      op->evicted = raw(out);
      if (e) op->responded = kvc_test::history_now();
    }
    if (!e) return failed("evict", e.message());
    return true;
  }

 public:
  static constexpr std::size_t block_bytes = 64;
  std::string last_error_;

 private:
  Index& ix_;
  const std::vector<std::vector<kvc::hash64>>& bases_;
  std::mt19937_64 rng_;
  failures& f_;
  client_history* history_;
  std::size_t nodes_;
  std::vector<std::byte> payload_;
};

// The audit, with the placement of `ix` (any client of these nodes) to check that every block
// in its second bucket has its offset named in its first group's overflow word.
kvc_test::audit_report audit_placed(const index_nodes& nodes, const kvc_test::shm_index& ix) {
  kvc_test::audit_options opt;
  opt.first_bucket = [&ix](std::span<const std::uint64_t> lo) {
    std::vector<kvc::hash64> chain(lo.size());
    for (std::size_t i = 0; i < lo.size(); ++i) chain[i].value = lo[i];
    return ix.address_of(chain, chain.size() - 1).bucket[0];
  };
  return kvc_test::audit_index(regions_of(nodes), opt);
}

// recover_everything() from a fresh client, then the audit; returns the report.
kvc_test::audit_report recover_and_audit(const index_nodes& nodes, std::uint64_t seed) {
  kvc_test::client fresh(nodes, nodes.config(seed));
  auto ok = fresh.index->recover_everything();
  if (!ok) FAIL("recover_everything: " << ok.message());
  return audit_placed(nodes, *fresh.index);
}

}  // namespace

TEST_CASE("index history checker: a fabricated bad history fails, a good one passes",
          "[index][stress]") {
  using kvc_test::check_history;
  const std::vector<std::uint64_t> chain = {11, 12, 13, 14};
  auto ins = [&](std::int64_t a, std::int64_t b, std::size_t from, std::size_t len) {
    op_record op;
    op.type = op_type::insert;
    op.invoked = a;
    op.responded = b;
    op.chain =
        std::vector<std::uint64_t>(chain.begin(), chain.begin() + static_cast<std::ptrdiff_t>(len));
    op.from = from;
    op.length = len;
    return op;
  };
  auto look = [&](std::int64_t a, std::int64_t b, std::size_t len) {
    op_record op;
    op.type = op_type::lookup;
    op.invoked = a;
    op.responded = b;
    op.chain = chain;
    op.length = len;
    return op;
  };
  auto ev = [&](std::int64_t a, std::int64_t b, std::vector<std::uint64_t> gone) {
    op_record op;
    op.type = op_type::evict;
    op.invoked = a;
    op.responded = b;
    op.evicted = std::move(gone);
    return op;
  };
  client_history good{0,
                      {ins(10, 20, 0, 4), look(30, 40, 4), ev(50, 60, {14}), look(70, 80, 3),
                       ins(90, 100, 3, 4), look(95, 105, 4), look(110, 120, 4)}};
  const auto g = check_history({good});
  INFO(g.summary());
  CHECK(g.ok());
  CHECK(g.blocks_checked == 4 + 3 + 4 + 4);

  // 1. A lookup that returns a block no insert published before its response.
  client_history never{1, {ins(10, 20, 0, 2), look(30, 40, 3), look(5, 8, 1)}};
  const auto n = check_history({never});
  CHECK(n.unpublished == 2);
  CHECK(!n.ok());
  // 2. A lookup that returns a block evicted before it, and not inserted again.
  client_history stale{2, {ins(10, 20, 0, 4), ev(30, 40, {14}), look(50, 60, 4)}};
  const auto s = check_history({stale});
  CHECK(s.stale == 1);
  // ... while an insert overlapping the eviction may have published it again.
  client_history again{2,
                       {ins(10, 20, 0, 4), ins(35, 45, 0, 4), ev(30, 40, {14}), look(50, 60, 4)}};
  CHECK(check_history({again}).ok());
  // 3. A lost insert: present, nothing evicted, a later lookup misses it.
  client_history lost{3, {ins(10, 20, 0, 4), look(30, 40, 2)}};
  const auto l = check_history({lost});
  CHECK(l.lost == 1);
  CHECK(check_history({lost}, false).ok());
  // ... unless an eviction of its prefix overlaps, or the lookup overlapped the insert.
  client_history explained{3, {ins(10, 20, 0, 4), ev(25, 35, {12}), look(30, 40, 2)}};
  CHECK(check_history({explained}).ok());
  client_history overlapping{3, {ins(10, 35, 0, 4), look(30, 40, 2)}};
  CHECK(check_history({overlapping}).ok());
  // Histories of several clients are merged.
  const auto both = check_history({never, stale, lost});
  CHECK(both.unpublished == 1);  // the others' inserts explain the first lookup
  CHECK(both.stale == 1);
  CHECK(both.lost == 1);
  CHECK(!both.messages.empty());
}

TEST_CASE("index audit: a fresh index is clean, corruption is found", "[index][stress]") {
  index_nodes nodes(1, std::uint64_t{4} << 20);
  {
    kvc_test::client a(nodes, nodes.config(3));
    std::mt19937_64 rng(5);
    const auto chain = kvc_test::make_chain(rng, 40);
    REQUIRE(a.index->insert(chain, 0, kvc_test::no_data(40))->published == 40);
    const auto rep = kvc_test::audit_index(regions_of(nodes));
    INFO(rep.summary());
    CHECK(rep.clean());
    CHECK(rep.valid == 40);
    CHECK(rep.live_slabs == 40);
    CHECK(rep.held_slabs > 0);  // the rest of its chunk
    CHECK(rep.closure_violations == 0);
    CHECK(rep.count_mismatches == 0);
    // Point a second slot at the first VALID slot's slab: found twice.
    namespace L = kvc::index_layout;
    const auto& r = nodes.regions[0];
    const auto geo = *L::read_layout(r.header());
    const std::uint64_t data_off = r.header().data_offset;
    std::uint64_t first_valid = 0, first_empty = 0;
    bool have_valid = false, have_empty = false;
    for (std::uint64_t s = 0; s < geo.slots(); ++s) {
      std::uint64_t w;
      std::memcpy(&w, r.base() + geo.slot_offset(data_off, s) + 8, 8);
      const auto st = L::slot_word::decode(w).state;
      if (st == L::slot_state::valid && !have_valid) {
        first_valid = w;
        have_valid = true;
      }
      if (st == L::slot_state::empty && !have_empty) {
        first_empty = s;
        have_empty = true;
      }
    }
    REQUIRE((have_valid && have_empty));
    std::memcpy(r.base() + geo.slot_offset(data_off, first_empty) + 8, &first_valid, 8);
    const auto bad = kvc_test::audit_index(regions_of(nodes));
    CHECK(!bad.clean());
    CHECK(bad.error_count >= 2);  // referenced twice, and a record naming another slot
    const std::uint64_t zero = 0;
    std::memcpy(r.base() + geo.slot_offset(data_off, first_empty) + 8, &zero, 8);
    CHECK(kvc_test::audit_index(regions_of(nodes)).clean());
  }
  const auto rep = recover_and_audit(nodes, 4);
  INFO(rep.summary());
  CHECK(rep.clean());
  CHECK(rep.held_slabs == 0);
}

TEST_CASE("index audit: a block in its second bucket needs its offset named", "[index][stress]") {
  index_nodes nodes(1, std::uint64_t{4} << 20);
  kvc_test::client a(nodes, nodes.config(3));
  std::mt19937_64 rng(6);
  // Twelve branches after one 4-block prompt: their fifth blocks share a first bucket, and all
  // but the first two take their second buckets (offset 4 named).
  const auto prompt = kvc_test::make_chain(rng, 4);
  REQUIRE(a.index->insert(prompt, 0, kvc_test::no_data(4))->published == 4);
  std::vector<kvc::hash64> branch;
  for (int i = 0; i < 12; ++i) {
    branch = kvc_test::make_chain(rng, 5, prompt, 4);
    REQUIRE(a.index->insert(branch, 4, kvc_test::no_data(1))->published == 1);
  }
  const auto rep = audit_placed(nodes, *a.index);
  INFO(rep.summary());
  CHECK(rep.clean());
  CHECK(rep.second_bucket_blocks == 10);
  // Offset 4 not named: every one of the ten is reported.
  const kvc::remote_ptr first = a.index->address_of(branch, 4).bucket[0];
  std::byte* word =
      nodes.regions[0].base() + first.offset() - 4 * kvc::index_layout::bucket_bytes - 8;
  const std::uint64_t zero = 0;
  std::memcpy(word, &zero, 8);
  const auto bad = audit_placed(nodes, *a.index);
  CHECK(bad.error_count == 10);
}

TEST_CASE("index stress: threads inserting the same branches at once publish each block once",
          "[index][stress]") {
  // Each round a fresh 4-block prompt and 6 branches after it; 4 threads insert all 6 at once,
  // each in its own order. The branches' fifth blocks share a first bucket that holds at most
  // one of them before the others go to their second buckets (naming offset 4), so inserters
  // of one block may choose differently: one its first bucket, another its second. Round B's
  // re-reads (the overflow word standing in for an unread second bucket) must leave one copy.
  // How often the threads meet in that window depends on the scheduler: with round B's check of
  // the overflow word removed, a run of 3,000 rounds left 77 duplicates, this one's 600 some
  // of the time; "remote index: a block reserved in its first bucket yields ..." pins the case
  // down deterministically.
  constexpr int threads = 4;
  constexpr std::size_t branches = 6;
  const std::uint64_t rounds = scaled(600);
  // 16 MiB per 600 rounds: the table stays as full at any KVC_STRESS_SCALE (at 5x on 16 MiB,
  // a few pairs of buckets filled up and their blocks could not be published).
  index_nodes nodes(1, (std::uint64_t{16} << 20) * std::max<std::uint64_t>(1, (rounds + 599) / 600),
                    64, 64);
  std::vector<std::unique_ptr<kvc_test::client>> clients;
  for (int t = 0; t < threads; ++t) {
    auto cfg = nodes.config(700 + static_cast<std::uint64_t>(t));
    cfg.lease = std::chrono::milliseconds(3000);
    clients.push_back(std::make_unique<kvc_test::client>(nodes, cfg));
  }
  std::mt19937_64 rng(71);
  std::vector<std::vector<std::vector<kvc::hash64>>> work(rounds);
  for (auto& round : work) {
    const auto prompt = kvc_test::make_chain(rng, 4);
    REQUIRE(clients[0]->index->insert(prompt, 0, kvc_test::no_data(4))->published == 4);
    for (std::size_t b = 0; b < branches; ++b)
      round.push_back(kvc_test::make_chain(rng, 6, prompt, 4));
  }
  std::barrier<> sync(threads);
  std::atomic<int> errors{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      auto& ix = *clients[static_cast<std::size_t>(t)]->index;
      std::mt19937_64 order_rng(static_cast<std::uint64_t>(t) + 1);
      std::vector<std::size_t> order(branches);
      for (const auto& round : work) {
        std::iota(order.begin(), order.end(), std::size_t{0});
        std::shuffle(order.begin(), order.end(), order_rng);
        sync.arrive_and_wait();
        for (std::size_t b : order) {
          auto r = ix.insert(round[b], 4, kvc_test::no_data(2));
          if (!r || (r->length != 6 && r->stop != kvc::insert_stop::pending &&
                     r->stop != kvc::insert_stop::contention)) {
            errors.fetch_add(1);
          }
        }
      }
    });
  }
  for (auto& th : pool) th.join();
  CHECK(errors.load() == 0);
  std::uint64_t late = 0;
  for (const auto& c : clients) late += c->index->stats().overflow_named_late;
  for (const auto& round : work) {
    for (const auto& branch : round) {
      auto r = clients[0]->index->insert(branch, 4, kvc_test::no_data(2));  // what a race left
      REQUIRE(r);
      CHECK(r->length == 6);
    }
  }
  const auto rep = audit_placed(nodes, *clients[0]->index);
  INFO(rep.summary() << "; blocks named late: " << late);
  CHECK(rep.clean());
  CHECK(rep.duplicates == 0);
  CHECK(rep.valid == rounds * (4 + 2 * branches));
}

TEST_CASE("index stress: threads with a checked history, then recovery and a clean audit",
          "[index][stress]") {
  index_nodes nodes(2, std::uint64_t{8} << 20, 64, 64);
  const auto bases = make_bases(21, 300);
  constexpr int threads = 4;
  const std::uint64_t ops = scaled(5000);
  failures f;
  std::vector<client_history> hist(threads);
  std::vector<std::string> errors(threads);
  std::vector<std::unique_ptr<kvc_test::client>> clients;
  for (int t = 0; t < threads; ++t) {
    auto cfg = nodes.config(100 + static_cast<std::uint64_t>(t));
    cfg.lease = std::chrono::milliseconds(3000);  // no live thread is declared dead
    cfg.heartbeat = std::chrono::milliseconds(50);
    clients.push_back(std::make_unique<kvc_test::client>(nodes, cfg));
  }
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      const auto ut = static_cast<std::size_t>(t);
      hist[ut].client = t;
      worker<kvc_test::shm_index> w(*clients[ut]->index, bases, 1000 + ut, f, &hist[ut], 2);
      for (std::uint64_t i = 0; i < ops; ++i) {
        if (!w.step()) {
          if (errors[ut].empty()) errors[ut] = w.last_error_;
          f.errors.fetch_add(1);
        }
      }
    });
  }
  for (auto& th : pool) th.join();
  for (const auto& e : errors) {
    if (!e.empty()) UNSCOPED_INFO("thread error: " << e);
  }
  CHECK(f.errors.load() == 0);
  INFO(f.message);
  CHECK(f.integrity.load() == 0);
  std::uint64_t after_lookup = 0;  // inserts whose round A came from their lookup's reads
  for (const auto& c : clients) after_lookup += c->index->stats().inserts_after_lookup;
  CHECK(after_lookup > 0);

  // Quiescent, every client still live: the audit holds as it stands.
  const auto before = audit_placed(nodes, *clients[0]->index);
  const auto h = kvc_test::check_history(hist);
  INFO(h.summary());
  INFO("the region before recovery: " << before.summary());
  CHECK(h.ok());
  CHECK(h.blocks_checked > 0);
  {
    INFO(before.summary());
    CHECK(before.clean());
    CHECK(before.closure_violations == 0);
    CHECK(before.count_mismatches == 0);
  }
  // Half leave cleanly, half vanish; a fresh client recovers everything.
  for (int t = 0; t < threads; ++t) {
    if (t % 2 == 0) {
      REQUIRE(clients[static_cast<std::size_t>(t)]->index->close());
    } else {
      clients[static_cast<std::size_t>(t)]->index->abandon();
    }
  }
  const auto rep = recover_and_audit(nodes, 7);
  INFO(rep.summary());
  CHECK(rep.clean());
  CHECK(rep.held_slabs == 0);
  CHECK(rep.closure_violations == 0);
  CHECK(rep.count_mismatches == 0);
  CHECK(rep.valid > 0);
}

namespace {

// A worker process: its own transport and index after fork(); runs until told to stop and
// leaves with _exit (its entries stay live: a crash, as far as the index can tell).
[[noreturn]] void process_worker(const index_nodes& nodes,
                                 const std::vector<std::vector<kvc::hash64>>& bases, failures& f,
                                 std::uint64_t seed) {
  auto t = std::make_unique<kvc::shm_transport>();
  for (std::size_t n = 0; n < nodes.regions.size(); ++n) {
    if (auto ok = t->add_node(static_cast<kvc::node_id>(n), nodes.regions[n].name()); !ok) {
      f.record(f.errors, "add_node: " + ok.message());
      ::_exit(3);
    }
  }
  auto ix = kvc_test::shm_index::open(*t, nodes.config(seed));
  if (!ix) {
    f.record(f.errors, "open: " + ix.message());
    ::_exit(4);
  }
  worker<kvc_test::shm_index> w(**ix, bases, seed, f, nullptr, nodes.regions.size());
  while (f.stop.load(std::memory_order_relaxed) == 0) {
    if (!w.step()) f.record(f.errors, w.last_error_);
    f.ops.fetch_add(1, std::memory_order_relaxed);
  }
  ::_exit(0);
}

}  // namespace

TEST_CASE("index stress: processes killed with SIGKILL, then recovery and a clean audit",
          "[index][stress]") {
  index_nodes nodes(1, std::uint64_t{32} << 20, 64, 1024);
  const auto bases = make_bases(33, 300);
  void* page =
      ::mmap(nullptr, sizeof(failures), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  REQUIRE(page != MAP_FAILED);
  auto* f = new (page) failures{};
  const std::uint64_t target_ops = scaled(1'000'000);
  const std::uint64_t min_kills = 50;
  constexpr std::size_t workers = 4;
  std::mt19937_64 rng(99);
  std::uint64_t seed = 5000;
  auto spawn = [&]() -> pid_t {
    const std::uint64_t s = ++seed;
    const pid_t pid = kvc_test::fork_child();
    if (pid == 0) process_worker(nodes, bases, *f, s);
    return pid;
  };
  std::vector<pid_t> pids;
  for (std::size_t i = 0; i < workers; ++i) pids.push_back(spawn());
  REQUIRE(std::all_of(pids.begin(), pids.end(), [](pid_t p) { return p > 0; }));
  std::uint64_t kills = 0, unexpected = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(150);
  // Worker 0 is never killed: a long-lived client (as an engine is) that sees the dead ones
  // through two leases and recovers them. The others are killed at random points, 10-40 ms
  // apart, until min_kills; then the run goes on until target_ops.
  while ((f->ops.load() < target_ops || kills < min_kills) &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::microseconds(10'000 + rng() % 30'000));
    if (kills >= min_kills) continue;
    const std::size_t victim = 1 + rng() % (workers - 1);
    ::kill(pids[victim], SIGKILL);
    int status = 0;
    ::waitpid(pids[victim], &status, 0);
    if (!(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)) ++unexpected;
    ++kills;
    pids[victim] = spawn();
    REQUIRE(pids[victim] > 0);
  }
  f->stop.store(1);
  for (pid_t p : pids) {
    int status = 0;
    ::waitpid(p, &status, 0);
    if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0)) ++unexpected;
  }
  INFO("operations " << f->ops.load() << ", kills " << kills << "; " << f->message);
  CHECK(f->ops.load() >= target_ops);
  CHECK(kills >= min_kills);
  CHECK(unexpected == 0);
  CHECK(f->errors.load() == 0);
  CHECK(f->integrity.load() == 0);

  const auto rep = recover_and_audit(nodes, 8);
  INFO(rep.summary());
  CHECK(rep.clean());
  CHECK(rep.held_slabs == 0);
  CHECK(rep.closure_violations == 0);
  CHECK(rep.count_mismatches == 0);  // recounted by recover_everything()
  f->~failures();
  ::munmap(page, sizeof(failures));
}

TEST_CASE("index stress: clients crashing mid-batch over the faulty transport", "[index][stress]") {
  using faulty_shm = kvc::faulty<kvc::shm_transport>;
  using faulty_index = kvc::remote_index<faulty_shm>;
  index_nodes nodes(1, std::uint64_t{16} << 20, 64, 256);
  const auto bases = make_bases(44, 200);
  constexpr int threads = 4;
  const std::uint64_t ops = scaled(4000);
  failures f;
  std::vector<client_history> hist(threads);
  std::vector<std::string> errors(threads);
  std::atomic<std::uint64_t> crashes{0}, torn{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      const auto ut = static_cast<std::size_t>(t);
      hist[ut].client = t;
      std::uint64_t done = 0;
      for (std::uint64_t life = 0; done < ops; ++life) {
        kvc::fault_config fc;
        fc.seed = 7000 + ut * 1000 + life;
        fc.torn_read_probability = 0.05;
        fc.tear_pause = std::chrono::microseconds(5);
        fc.crash_probability = 0.002;
        faulty_shm transport(std::move(*nodes.attach()), fc);
        auto ix = faulty_index::open(transport, nodes.config(fc.seed));
        if (!ix) {
          if (!transport.crashed()) {
            f.errors.fetch_add(1);
            if (errors[ut].empty()) errors[ut] = "open: " + ix.message();
          }
          crashes.fetch_add(1);
          continue;
        }
        worker<faulty_index> w(**ix, bases, fc.seed, f, &hist[ut], 1);
        for (; done < ops; ++done) {
          if (w.step()) continue;
          if (!transport.crashed()) {
            f.errors.fetch_add(1);
            if (errors[ut].empty()) errors[ut] = w.last_error_;
            continue;
          }
          (*ix)->abandon();  // a dead client: others recover what it held
          crashes.fetch_add(1);
          ++done;
          break;
        }
        torn.fetch_add(transport.torn_reads());
      }
    });
  }
  for (auto& th : pool) th.join();
  for (const auto& e : errors) {
    if (!e.empty()) UNSCOPED_INFO("thread error: " << e);
  }
  INFO("crashes " << crashes.load() << ", torn reads " << torn.load() << "; " << f.message);
  CHECK(crashes.load() > 0);
  CHECK(torn.load() > 0);
  CHECK(f.errors.load() == 0);
  CHECK(f.integrity.load() == 0);
  // Crashed evictions report nothing: only what lookups return is checked.
  const auto h = kvc_test::check_history(hist, false);
  INFO(h.summary());
  CHECK(h.ok());

  const auto rep = recover_and_audit(nodes, 9);
  INFO(rep.summary());
  CHECK(rep.clean());
  CHECK(rep.held_slabs == 0);
  CHECK(rep.closure_violations == 0);
  CHECK(rep.count_mismatches == 0);  // recounted by recover_everything()
}
