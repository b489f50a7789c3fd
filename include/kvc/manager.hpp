// kvc/manager.hpp — the cache manager: what an inference engine calls. It hashes prompts into
// block keys, finds the longest cached prefix across the local tiers (device ids, host DRAM,
// SSD) and the memory nodes, brings it onto the device, caches and publishes what the engine
// computed, and tells a router what it holds.
//
//   auto mgr = kvc::cache_manager<>::create(cfg);          // clear error for a bad config
//   auto m = (*mgr)->match(tokens, keys);                  // longest cached prefix, leased
//   auto l = (*mgr)->load(*m);                             // device ids; copies and reads start
//   const std::size_t usable = l->wait();                  // per the deadline mode
//   auto ids = (*mgr)->allocate(m->blocks() - usable);     // ids for the blocks to compute
//   (*mgr)->commit(*m, usable, *ids);                      // cache, write through, publish
//   (*mgr)->release(*m, &*l, *ids);                        // when the request ends
//
// Tiers: the block pool (docs/design/pool.md) holds the local ones; with a transport attached to
// memory nodes, the remote tier (one-sided prefix index, KV bytes in the nodes) sits behind it.
// match() asks the pool, then the index for the blocks past the local prefix (the local length
// is the lookup's hint). load() shares or copies the local blocks onto device ids at once and
// reads the remote ones on a mover thread (memory nodes -> host slots -> device ids), so the
// caller never blocks on the network. commit() caches computed blocks in the pool (placement
// makes host and SSD copies). Publishing (remote.place) runs on a mover, from host copies:
// write_through writes every block past what the memory nodes held at match time at commit;
// selective, at match, the leading blocks used after_uses times; write_back, a block's chain
// when its last local copy is to leave (the copy stays until then).
//
// Deadlines (load_deadline): all (wait for every block), best_effort (use what arrived within
// `budget` of the load), token_budget (budget + per_token x tokens to bring: a longer prefill can
// wait longer). wait() returns how many leading blocks the engine may read; it recomputes the
// rest. Blocks that arrive late are cached for the next request.
//
// Events: one per copy stored in or removed from a tier (remote: stored when published), with
// hash, parent hash, token count, tier, LoRA id and tenant, delivered in order to the listener
// from a thread of the manager; a listener that falls event_queue events behind loses the
// oldest, and one that throws (or out of memory) loses that event (both counted in
// stats().events_dropped). Out of memory on a mover gives up its work, counted in
// stats().mover_failures; no thread of the manager ends the process.
//
// Errors: create() fails with invalid_config naming the field (and passes on the tiers' and the
// index's errors: an unusable SSD file, an unreachable node); match() with the hasher's errors
// for invalid extra keys; a memory node failing during match, load or publish is counted
// (remote_errors) and the request goes on with the local tiers; commit(), release() and
// allocate() pass on the pool's errors (no_space, invalid_argument for ids it did not hand out).
//
// Concurrency: every member may be called from any thread at once (an engine's scheduler and
// copy threads); a prefix_match and a prefix_load are used by one thread at a time. The engine's
// device copy hook is called under the pool's lock and must not call into the manager.
// Design: docs/design/manager.md.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "kvc/detail/xxhash.hpp"
#include "kvc/error.hpp"
#include "kvc/evict/any_policy.hpp"
#include "kvc/hash/block_hasher.hpp"
#include "kvc/index/shared_index.hpp"
#include "kvc/manager/latency_histogram.hpp"
#include "kvc/pool/block_pool.hpp"
#include "kvc/pool/device_tier.hpp"
#include "kvc/pool/host_tier.hpp"
#include "kvc/pool/remote_tier.hpp"
#include "kvc/pool/ssd_tier.hpp"
#include "kvc/transport/shm.hpp"

namespace kvc::inline v0 {

enum class load_wait : std::uint8_t { all, best_effort, token_budget };

struct load_deadline {
  load_wait mode = load_wait::all;
  std::chrono::microseconds budget{2000};  // best_effort: the whole wait; token_budget: the base
  std::chrono::nanoseconds per_token{0};   // token_budget: added per token to bring

  // When a load of `tokens` tokens started at `start` stops waiting (max() for all, and where
  // the wait would reach past it: a budget meant as "for ever", microseconds::max(), waits for
  // ever instead of overflowing into the past).
  [[nodiscard]] std::chrono::steady_clock::time_point at(
      std::chrono::steady_clock::time_point start, std::size_t tokens) const noexcept {
    using clock = std::chrono::steady_clock;
    constexpr auto never = clock::time_point::max();
    if (mode == load_wait::all || budget.count() < 0 || per_token.count() < 0) return never;
    const clock::duration room = never - start;
    if (budget > std::chrono::duration_cast<std::chrono::microseconds>(room)) return never;
    const auto base = std::chrono::duration_cast<clock::duration>(budget);
    if (mode != load_wait::token_budget || tokens == 0) return start + base;
    const auto per = std::chrono::duration_cast<clock::duration>(per_token);
    if (per.count() > (room - base).count() / static_cast<std::int64_t>(std::min<std::size_t>(
                                                  tokens, std::size_t{INT64_MAX}))) {
      return never;
    }
    return start + base + per * static_cast<std::int64_t>(tokens);
  }
};

struct manager_device_config {
  std::size_t blocks = 0;  // block ids of the engine's KV tensor, > 0
  device_copy_hook copy;   // empty: a host-memory stand-in (tests, demos)
  any_policy_config policy;
};
struct manager_host_config {
  std::size_t blocks = 0;  // > 0: every move goes through host memory
  bool huge_pages = true;
  placement place{};
  any_policy_config policy;
};
struct manager_ssd_config {
  std::string path;  // the slot file; empty: no SSD tier
  std::size_t blocks = 0;
  bool persist = false;  // keep the file's blocks across restarts: needs model_salt
  bool direct = true;
  unsigned io_threads = 4;  // SSD transfers in flight
  placement place{};
  any_policy_config policy;
};
template <Transport T>
struct manager_remote_config {
  T* transport = nullptr;     // attached to the memory nodes (outlives the manager); null: none
  shared_index_config index;  // the nodes, lease and pooled clients
  bool publish = true;        // write blocks to the memory nodes (false: only read them)
  // When a block is published: write_through at commit; selective once it was used after_uses
  // times (its commit and the matches that found it), so that only reused blocks travel;
  // write_back when its last local copy is to leave (it stays until published, then goes).
  placement place{placement_mode::write_through, 2};
  // When a publish finds the memory nodes out of slabs: evict this many least recently used
  // leaves from each node (sampled), at most once per reclaim grace; the publish's blocks stay
  // local, later publishes find the room once the evicted slabs are reclaimed. 0 leaves the
  // nodes full (a caller's evict(tier_kind::remote, n) makes room).
  std::size_t evict_when_full = 64;
  // Blocks held in the local tiers for queued publishes at once (their last copy does not leave
  // before the publish sends it); past it, blocks may be evicted first and are counted in
  // publish_missed. 0: half the smaller of the device and host tiers.
  std::size_t max_held = 0;
};

template <Transport T>
struct manager_config {
  std::uint32_t block_size = 16;  // tokens per block (the hasher's)
  // Separates the caches of different models; name the checkpoint too (a persistent SSD file,
  // and memory nodes, outlive the process, and blocks of equal keys are taken as equal bytes).
  std::string model_salt;
  std::size_t block_bytes = 0;  // KV bytes of one block, all layers, > 0
  manager_device_config device;
  manager_host_config host;
  manager_ssd_config ssd;
  manager_remote_config<T> remote;
  load_deadline deadline;              // load()'s default
  unsigned movers = 1;                 // threads for remote reads and publishing, 1..64
  std::size_t event_queue = 1u << 16;  // events held for a slow listener, > 0
};

// A copy stored in or removed from a tier, with what a KV-aware router needs.
template <BlockHash Hash>
struct block_event {
  using kind = typename pool_event<Hash>::kind;
  kind what = kind::stored;
  tier_kind tier = tier_kind::device;
  Hash hash{};
  Hash parent{};
  bool has_parent = false;  // false for a chain's first block
  std::uint32_t tokens = 0;
  std::optional<std::uint64_t> lora_id;
  std::uint64_t tenant = 0;  // XXH3-64 of the tenant salt; 0 when none
};

struct tier_blocks {
  std::size_t device = 0, host = 0, ssd = 0, remote = 0;
  [[nodiscard]] std::size_t total() const noexcept { return device + host + ssd + remote; }
};

struct manager_stats {
  block_pool_stats pool;  // the local tiers' counters
  std::uint64_t matches = 0, prompt_blocks = 0, matched_blocks = 0;
  std::uint64_t remote_hits = 0;  // blocks matched in the memory nodes past the local prefix
  std::uint64_t loads = 0, remote_loaded = 0;
  std::uint64_t remote_short = 0;  // matched remotely but not brought (evicted since, no room)
  std::uint64_t commits = 0, committed = 0;
  std::uint64_t published = 0;  // blocks this manager wrote to the memory nodes
  // Blocks a publish could not write for want of a local copy to send (they left the cache
  // before it ran: past remote.max_held; every copy failed; or no host slot could be freed).
  std::uint64_t publish_missed = 0;
  std::uint64_t remote_round_trips = 0;                    // of index lookups and inserts
  std::uint64_t remote_lookups = 0;                        // matches that asked the memory nodes
  std::uint64_t lookup_round_trips = 0, lookup_bytes = 0;  // of those lookups
  std::uint64_t remote_bytes_in = 0, remote_bytes_out = 0;
  std::uint64_t remote_errors = 0;   // memory-node calls that failed (the request went on)
  std::uint64_t remote_evicted = 0;  // blocks evicted from full memory nodes to publish
  // A mover's work given up when it ran out of memory: a publish (its blocks stay local, no
  // longer held for it) or a remote load (it ends with its local blocks only).
  std::uint64_t mover_failures = 0;
  // The remote index's upkeep (heartbeats, reclaim, recovery, slab reserves) that failed or
  // threw: shared_index_stats::upkeep_failures (its maintenance thread has no caller to tell).
  std::uint64_t index_upkeep_failures = 0;
  std::uint64_t events = 0, events_dropped = 0;
  latency_histogram::snapshot_type match_latency;
};

template <Transport T = shm_transport, BlockHash Hash = hash64>
class cache_manager {
 public:
  using config = manager_config<T>;
  using pool_type = block_pool<Hash, any_policy>;
  using event = block_event<Hash>;
  using clock = std::chrono::steady_clock;

  // The longest cached prefix of a prompt, leased: its local blocks stay until it is released
  // (or destroyed). Move-only.
  class prefix_match {
   public:
    prefix_match() = default;
    [[nodiscard]] std::span<const Hash> chain() const noexcept { return chain_; }
    [[nodiscard]] std::size_t blocks() const noexcept { return chain_.size(); }
    [[nodiscard]] std::size_t length() const noexcept { return length_; }  // cached, a prefix
    [[nodiscard]] std::size_t local() const noexcept { return local_; }    // of it, held here
    [[nodiscard]] const tier_blocks& by_tier() const noexcept { return by_tier_; }

   private:
    friend cache_manager;
    std::vector<Hash> chain_;
    std::size_t length_ = 0, local_ = 0, remote_published_ = 0;
    tier_blocks by_tier_;
    std::uint32_t label_ = 0;
    typename pool_type::lease pin_;
    index_match remote_;
  };

  // Device ids for a match's blocks as they arrive. ids()[i] holds block i once ready() > i.
  class prefix_load {
   public:
    // Waits as the load's deadline says; returns how many leading blocks the engine may read.
    std::size_t wait() {
      return s_->deadline == clock::time_point::max() ? s_->wait_all() : wait_until(s_->deadline);
    }
    std::size_t wait_until(clock::time_point t) { return s_->wait_until(t); }
    [[nodiscard]] std::size_t ready() const { return s_->ready(); }
    [[nodiscard]] std::size_t requested() const noexcept { return s_->requested; }
    [[nodiscard]] std::vector<std::uint32_t> ids() const { return s_->ids(); }

   private:
    friend cache_manager;
    struct state {
      std::mutex mutex;
      std::condition_variable cv;
      typename pool_type::load_result local, remote;
      std::size_t requested = 0;
      bool remote_pending = false, released = false;
      clock::time_point deadline = clock::time_point::max();

      std::size_t ready() {
        std::lock_guard lock(mutex);
        return ready_locked();
      }
      std::size_t ready_locked() const {
        const std::size_t n = local.ready();
        if (n < local.ids.size() || remote_pending) return n;
        return n + remote.ready();
      }
      std::vector<std::uint32_t> ids() {
        std::lock_guard lock(mutex);
        std::vector<std::uint32_t> v = local.ids;
        if (!remote_pending) v.insert(v.end(), remote.ids.begin(), remote.ids.end());
        return v;
      }
      std::size_t wait_all() {
        (void)local.wait();
        std::unique_lock lock(mutex);
        cv.wait(lock, [&] { return !remote_pending; });
        lock.unlock();
        (void)remote.wait();  // remote is not written again once remote_pending is false
        return ready();
      }
      std::size_t wait_until(clock::time_point t) {
        (void)local.wait_until(t);
        std::unique_lock lock(mutex);
        if (cv.wait_until(lock, t, [&] { return !remote_pending; })) {
          lock.unlock();
          (void)remote.wait_until(t);
        }
        return ready();
      }
    };
    explicit prefix_load(std::shared_ptr<state> s) : s_(std::move(s)) {}
    std::shared_ptr<state> s_;
  };

  // Out of memory for the tiers' tables (a huge device or host tier) throws std::bad_alloc,
  // leaving nothing behind.
  [[nodiscard]] static result<std::unique_ptr<cache_manager>> create(config cfg) {
    if (auto ok = check(cfg); !ok) return std::move(ok).take_failure();
    auto hasher = block_hasher<Hash>::create({cfg.block_size, cfg.model_salt});
    if (!hasher) return std::move(hasher).take_failure();
    std::unique_ptr<cache_manager> m(new cache_manager(std::move(cfg), *hasher));
    if (auto ok = m->open(); !ok) return std::move(ok).take_failure();
    return m;
  }

  cache_manager(const cache_manager&) = delete;
  cache_manager& operator=(const cache_manager&) = delete;
  ~cache_manager() {
    {
      std::lock_guard lock(work_mutex_);
      stopping_ = true;
    }
    work_cv_.notify_all();
    for (auto& t : movers_) t.join();  // they finish the queued work first
    {
      std::lock_guard lock(event_mutex_);
      events_stop_ = true;
    }
    event_cv_.notify_all();
    if (event_thread_.joinable()) event_thread_.join();
  }

  [[nodiscard]] const block_hasher<Hash>& hasher() const noexcept { return hasher_; }
  [[nodiscard]] const config& settings() const noexcept { return cfg_; }
  [[nodiscard]] pool_type& pool() noexcept { return *pool_; }
  [[nodiscard]] bool has_remote() const noexcept { return remote_ != nullptr; }
  // The device stand-in's bytes of block id `id` (empty when the engine supplied a copy hook):
  // where a demo or test engine "computes" its KV blocks.
  [[nodiscard]] std::span<std::byte> stand_in_data(std::uint32_t id) const noexcept {
    return device_->stand_in_data(id);
  }

  // The longest cached prefix of the prompt's full blocks (the keys select LoRA, tenant and
  // multimodal content): the pool's, then the memory nodes' past it.
  [[nodiscard]] result<prefix_match> match(std::span<const token_id> tokens,
                                           const extra_keys& keys = {}) {
    const auto start = clock::now();
    std::vector<Hash> chain(hasher_.full_blocks(tokens.size()));
    if (auto n = hasher_.hash_prompt(tokens, chain, keys); !n) return std::move(n).take_failure();
    return match_keys(std::move(chain), label_of(keys), start);
  }

  // The same for a prompt whose block keys the caller computed: each key must name its whole
  // prefix, as the hasher's chained keys do (an engine with its own block hashes, a trace
  // replayer). `keys` only label the blocks for events and placement.
  [[nodiscard]] result<prefix_match> match_chain(std::span<const Hash> chain,
                                                 const extra_keys& keys = {}) {
    return match_keys(std::vector<Hash>(chain.begin(), chain.end()), label_of(keys), clock::now());
  }

  // Brings match m's blocks onto device ids: local ones now (shared or copied), remote ones
  // through a mover. The deadline (default: the config's) decides how long wait() waits.
  [[nodiscard]] result<prefix_load> load(const prefix_match& m) { return load(m, cfg_.deadline); }
  [[nodiscard]] result<prefix_load> load(const prefix_match& m, const load_deadline& d) {
    if (d.budget.count() < 0 || d.per_token.count() < 0) {
      return fail(errc::invalid_argument,
                  "cache manager: a load deadline's budget and per_token "
                  "must be >= 0");
    }
    auto st = std::make_shared<typename prefix_load::state>();
    const std::size_t to_bring = m.length_ - m.by_tier_.device;
    st->deadline = d.at(clock::now(), to_bring * cfg_.block_size);
    auto local = pool_->load_range(m.chain_, 0, m.local_);
    if (!local) return std::move(local).take_failure();
    st->local = std::move(*local);
    st->requested = st->local.ids.size();
    ++loads_;
    if (remote_ != nullptr && m.length_ > m.local_ && st->local.ids.size() == m.local_) {
      st->requested = m.length_;
      st->remote_pending = true;
      // Out of memory: the local blocks go back before the exception reaches the engine, which
      // never sees this load and so cannot release them.
      detail::undo_if_throws(
          [&] {
            submit([this, st, chain = m.chain_, rm = m.remote_, from = m.local_, to = m.length_,
                    label = m.label_]() mutable { bring_remote(*st, chain, rm, from, to, label); });
          },
          [&] { (void)pool_->release_device(st->local.ids); });
    } else if (m.length_ > m.local_) {
      remote_short_ += m.length_ - m.local_;
    }
    return prefix_load(std::move(st));
  }

  // n device ids for blocks the engine computes (errc::no_space when the device is full of
  // blocks in use).
  [[nodiscard]] result<std::vector<std::uint32_t>> allocate(std::size_t n) {
    return pool_->allocate_device(n);
  }

  // Caches blocks [from, from + ids.size()) of m's prompt, computed into `ids` (still the
  // engine's): host and SSD copies per placement, and, when publishing, every block the memory
  // nodes lacked at match time is written to them by a mover.
  [[nodiscard]] result<typename pool_type::commit_result> commit(
      const prefix_match& m, std::size_t from, std::span<const std::uint32_t> ids) {
    auto c = pool_->commit(m.chain_, from, ids, m.label_);
    if (!c) return c;
    ++commits_;
    committed_ += c->cached;
    const std::size_t end = from + ids.size();
    const placement& p = cfg_.remote.place;
    const bool at_commit = p.mode == placement_mode::write_through ||
                           (p.mode == placement_mode::selective && p.after_uses <= 1);
    if (remote_ != nullptr && cfg_.remote.publish && at_commit && end > m.remote_published_) {
      queue_publish(m.chain_, m.remote_published_, end, c->job, m.label_);
    }
    return c;
  }

  // Ends a request: the match's lease, the load's device ids (those still arriving are released
  // when they arrive) and the ids the engine computed into.
  [[nodiscard]] result<void> release(prefix_match& m, prefix_load* l,
                                     std::span<const std::uint32_t> computed) {
    m.pin_.release();
    result<void> out{};
    if (l != nullptr && l->s_) {
      std::vector<std::uint32_t> ids;
      {
        std::lock_guard lock(l->s_->mutex);
        if (!l->s_->released) {
          l->s_->released = true;
          ids = l->s_->local.ids;
          if (!l->s_->remote_pending) {
            ids.insert(ids.end(), l->s_->remote.ids.begin(), l->s_->remote.ids.end());
          }
        }
      }
      out = pool_->release_device(ids);
    }
    if (auto ok = pool_->release_device(computed); !ok && out) out = std::move(ok);
    return out;
  }

  // Evicts up to n blocks from a local tier, or n leaves from every memory node (remote). A
  // memory node that fails does not stop the others: the blocks they evicted are the answer and
  // the failure is counted in stats().remote_errors; the first failure is the answer only when
  // every node failed.
  [[nodiscard]] result<std::size_t> evict(tier_kind tier, std::size_t n) {
    if (tier != tier_kind::remote) return pool_->evict(tier, n);
    if (remote_ == nullptr) return std::size_t{0};
    std::size_t done = 0, worked = 0;
    std::optional<failure> first;
    for (const node_id node : index_->nodes()) {
      auto e = index_->evict(node, n);
      if (e) {
        done += *e;
        ++worked;
      } else {
        ++remote_errors_;
        if (!first) first = std::move(e).take_failure();
      }
    }
    if (worked == 0 && first) return std::move(*first);
    return done;
  }

  // Subscribes one listener to block events (replacing any), called from the manager's event
  // thread in order; an empty function unsubscribes. Events start when a listener is set. Once
  // it returns the old listener is not running and is not called again (called from the
  // listener itself it returns at once: that call is the one running).
  void on_event(std::function<void(const event&)> listener) {
    std::unique_lock lock(event_mutex_);
    listener_ = std::move(listener);
    listening_.store(static_cast<bool>(listener_), std::memory_order_release);
    if (std::this_thread::get_id() == event_thread_.get_id()) return;
    // Only the delivery running now, not the ones after it (a busy engine's events may never
    // leave the queue empty).
    const std::uint64_t running = deliveries_;
    if (delivering_) {
      idle_cv_events_.wait(lock, [&] { return !delivering_ || deliveries_ != running; });
    }
  }

  // Waits until the movers and the event thread have nothing left to do (tests, shutdown).
  // Called from a listener it returns at once (the event being delivered would never end).
  void flush() {
    if (std::this_thread::get_id() == event_thread_.get_id()) return;
    std::unique_lock lock(work_mutex_);
    idle_cv_.wait(lock, [&] { return work_.empty() && busy_ == 0; });
    lock.unlock();
    std::unique_lock elock(event_mutex_);
    idle_cv_events_.wait(elock, [&] { return events_.empty() && !delivering_; });
  }

  [[nodiscard]] manager_stats stats() const {
    manager_stats s;
    s.pool = pool_->stats();
    s.matches = matches_;
    s.prompt_blocks = prompt_blocks_;
    s.matched_blocks = matched_blocks_;
    s.remote_hits = remote_hits_;
    s.loads = loads_;
    s.remote_loaded = remote_loaded_;
    s.remote_short = remote_short_;
    s.publish_missed = publish_missed_;
    s.commits = commits_;
    s.committed = committed_;
    s.published = published_;
    s.remote_round_trips = round_trips_;
    s.remote_bytes_in = remote_loaded_ * cfg_.block_bytes;
    s.remote_bytes_out = published_ * cfg_.block_bytes;
    s.remote_errors = remote_errors_;
    s.mover_failures = mover_failures_;
    s.remote_evicted = remote_evicted_;
    s.remote_lookups = remote_lookups_;
    s.lookup_round_trips = lookup_round_trips_;
    s.lookup_bytes = lookup_bytes_;
    s.events = events_delivered_;
    s.events_dropped = events_dropped_;
    if (index_) s.index_upkeep_failures = index_->stats().upkeep_failures;
    s.match_latency = match_latency_.snapshot();
    return s;
  }

  // The configuration's errors, without making anything.
  [[nodiscard]] static result<void> check(const config& cfg) {
    const auto bad = [](const std::string& what) {
      return fail(errc::invalid_config, "cache manager: " + what);
    };
    if (cfg.block_bytes == 0) return bad("block_bytes must be > 0");
    if (cfg.device.blocks == 0 || cfg.device.blocks > UINT32_MAX - 1) {
      return bad("device.blocks must be in 1..2^32-2");
    }
    if (cfg.host.blocks == 0) return bad("host.blocks must be > 0 (every move goes through it)");
    if (!cfg.device.copy && cfg.device.blocks > SIZE_MAX / cfg.block_bytes) {
      return bad(
          "device.blocks x block_bytes is more than memory can address (the host-memory "
          "stand-in of the device)");
    }
    if (!cfg.ssd.path.empty() && cfg.ssd.blocks == 0) return bad("ssd.blocks must be > 0");
    if (!cfg.ssd.path.empty() && cfg.ssd.persist && cfg.model_salt.empty()) {
      return bad(
          "ssd.persist needs a model_salt naming the model and its checkpoint (a restart on "
          "another checkpoint would otherwise serve this one's blocks from the file)");
    }
    if (cfg.movers == 0 || cfg.movers > 64) return bad("movers must be in 1..64");
    if (cfg.event_queue == 0) return bad("event_queue must be > 0");
    for (const auto* p : {&cfg.device.policy, &cfg.host.policy, &cfg.ssd.policy}) {
      if (auto ok = validate(*p); !ok) return bad(ok.message());
    }
    if (cfg.deadline.budget.count() < 0 || cfg.deadline.per_token.count() < 0) {
      return bad("deadline budget and per_token must be >= 0");
    }
    if (auto ok = pool_type::check(pool_config(cfg), !cfg.ssd.path.empty()); !ok) {
      return bad(ok.message());
    }
    if (cfg.remote.transport != nullptr && cfg.remote.index.index.nodes.empty()) {
      return bad("remote.index.index.nodes names no memory node");
    }
    if (cfg.remote.place.mode == placement_mode::selective && cfg.remote.place.after_uses == 0) {
      return bad("remote.place: selective placement needs after_uses > 0");
    }
    return {};
  }

 private:
  cache_manager(config cfg, block_hasher<Hash> hasher) : cfg_(std::move(cfg)), hasher_(hasher) {}

  // match() and match_chain() after hashing: the pool's prefix, then the memory nodes' past it.
  result<prefix_match> match_keys(std::vector<Hash> chain, std::uint32_t label,
                                  clock::time_point start) {
    prefix_match m;
    m.chain_ = std::move(chain);
    m.label_ = label;
    auto local = pool_->match(m.chain_, selective() ? cfg_.remote.place.after_uses : 0);
    m.local_ = m.length_ = local.length;
    m.by_tier_.device = local.fastest[pool_type::device_index];
    m.by_tier_.host = local.fastest[pool_type::host_index];
    m.by_tier_.ssd = local.fastest[pool_type::ssd_index];
    m.pin_ = std::move(local.pin);
    m.remote_published_ = m.chain_.size();  // nothing to publish unless the index says otherwise
    // Leading local blocks the memory nodes hold: what the lookup found, else the pool's marks.
    std::size_t held_remotely = local.published;
    if (remote_ != nullptr && m.local_ < m.chain_.size()) {
      auto r = remote_->lookup(m.chain_, m.local_);
      if (r) {
        round_trips_ += r->round_trips;
        ++remote_lookups_;
        lookup_round_trips_ += r->round_trips;
        lookup_bytes_ += r->bytes;
        m.remote_published_ = r->length;
        held_remotely = std::min(r->length, m.local_);
        if (held_remotely > local.published) (void)pool_->mark_published(m.chain_, held_remotely);
        if (held_remotely < local.published) (void)pool_->mark_unpublished(m.chain_, r->length);
        if (r->length > m.local_) {
          m.by_tier_.remote = r->length - m.local_;
          m.length_ = r->length;
          remote_hits_ += m.by_tier_.remote;
        }
        m.remote_ = std::move(*r);
      } else {
        ++remote_errors_;
        m.remote_published_ = m.local_;
      }
    }
    // Selective: the local blocks this match proved reused go to the memory nodes now.
    if (remote_ != nullptr && cfg_.remote.publish && selective() && local.proven > held_remotely) {
      queue_publish(m.chain_, held_remotely, local.proven, nullptr, m.label_);
    }
    ++matches_;
    prompt_blocks_ += m.chain_.size();
    matched_blocks_ += m.length_;
    match_latency_.record(clock::now() - start);
    return m;
  }

  static typename pool_type::config pool_config(const config& cfg) {
    typename pool_type::config pc;
    pc.host = cfg.host.place;
    pc.ssd = cfg.ssd.place;
    pc.max_publish_holds = cfg.remote.max_held;
    pc.make_policy = [device = cfg.device.policy, host = cfg.host.policy,
                      ssd = cfg.ssd.policy](tier_kind k) {
      return std::make_unique<any_policy>(k == tier_kind::device ? device
                                          : k == tier_kind::host ? host
                                                                 : ssd);
    };
    return pc;
  }

  result<void> open() {
    device_ = std::make_unique<device_tier>(
        device_tier_config{cfg_.block_bytes, cfg_.device.blocks, cfg_.device.copy});
    auto host = host_tier::create({cfg_.block_bytes, cfg_.host.blocks, cfg_.host.huge_pages});
    if (!host) return std::move(host).take_failure();
    host_ = std::make_unique<host_tier>(std::move(*host));
    if (!cfg_.ssd.path.empty()) {
      // The file's blocks are keyed under the model salt and the block size (the hasher's root).
      auto ssd = ssd_tier::open(
          {cfg_.ssd.path, cfg_.block_bytes, cfg_.ssd.blocks, cfg_.ssd.persist, cfg_.ssd.direct,
           cfg_.ssd.io_threads,
           cfg_.model_salt + "/" + std::to_string(cfg_.block_size) + " tokens a block"});
      if (!ssd) return std::move(ssd).take_failure();
      ssd_ = std::move(*ssd);
    }
    auto pc = pool_config(cfg_);
    pc.on_event = [this](const pool_event<Hash>& e) { queue_event(e, e.tier); };
    if (cfg_.remote.transport != nullptr && cfg_.remote.publish &&
        cfg_.remote.place.mode == placement_mode::write_back) {
      // Under the pool's lock: the publish runs on a mover, and the block leaves after it.
      pc.on_write_back = [this](std::vector<Hash>&& chain, std::size_t published,
                                std::uint32_t label) {
        submit([this, chain = std::move(chain), published, label] {
          publish(chain, published, nullptr, label);
        });
      };
    }
    pool_ = std::make_unique<pool_type>(*device_, *host_, ssd_.get(), std::move(pc));
    if (cfg_.remote.transport != nullptr) {
      auto ix = shared_index<T, Hash>::open(*cfg_.remote.transport, cfg_.remote.index);
      if (!ix) return std::move(ix).take_failure();
      index_ = std::move(*ix);
      auto r = remote_tier<T, Hash>::create(*cfg_.remote.transport, *index_, *host_);
      if (!r) return std::move(r).take_failure();
      remote_ = std::move(*r);
    }
    for (unsigned i = 0; i < cfg_.movers; ++i) movers_.emplace_back([this] { mover_loop(); });
    event_thread_ = std::thread([this] { event_loop(); });
    return {};
  }

  // ---- labels: (LoRA, tenant) of a request, carried by its blocks' events ----------------------

  std::uint32_t label_of(const extra_keys& keys) {
    if (!keys.lora_id && keys.tenant_salt.empty()) return 0;
    const std::uint64_t tenant =
        keys.tenant_salt.empty() ? 0
                                 : XXH3_64bits(keys.tenant_salt.data(), keys.tenant_salt.size());
    const std::pair<std::optional<std::uint64_t>, std::uint64_t> key{keys.lora_id, tenant};
    std::lock_guard lock(label_mutex_);
    auto [it, added] = labels_.try_emplace(key, static_cast<std::uint32_t>(by_label_.size() + 1));
    if (added) by_label_.push_back(key);
    return it->second;
  }

  [[nodiscard]] bool selective() const noexcept {
    return cfg_.remote.place.mode == placement_mode::selective;
  }

  // ---- movers ----------------------------------------------------------------------------------

  void submit(std::function<void()> task) {
    {
      std::lock_guard lock(work_mutex_);
      work_.push_back(std::move(task));
    }
    work_cv_.notify_one();
  }

  void mover_loop() {
    std::unique_lock lock(work_mutex_);
    for (;;) {
      work_cv_.wait(lock, [&] { return stopping_ || !work_.empty(); });
      if (work_.empty()) return;  // stopping, and nothing left
      auto task = std::move(work_.front());
      work_.pop_front();
      ++busy_;
      lock.unlock();
      // Each task gives back what it took when it runs out of memory (publish, bring_remote);
      // nothing may end a mover, or flush() would wait for ever.
      detail::instead_if_throws([&] { task(); }, [&] { ++mover_failures_; });
      task = nullptr;  // what it captured goes before the lock is taken again
      lock.lock();
      --busy_;
      if (work_.empty() && busy_ == 0) idle_cv_.notify_all();
    }
  }

  // Remote blocks [from, to) of `chain` (found by lookup `rm`): memory nodes -> host slots ->
  // cached in the pool -> device ids, into st.remote.
  void bring_remote(typename prefix_load::state& st, const std::vector<Hash>& chain,
                    index_match& rm, std::size_t from, std::size_t to, std::uint32_t label) {
    typename pool_type::load_result out;
    std::size_t got = 0;
    std::vector<std::uint32_t> slots;  // host slots for the blocks read
    std::size_t kept = 0;              // of them, those the pool took over
    // Out of memory on the way: the device ids taken so far go back (the host slots below) and
    // the load ends with its local blocks only (counted in mover_failures).
    detail::instead_if_throws(
        [&] {
          // Host slots for as many of the blocks as the host can make room for.
          if (auto all = pool_->allocate_host(to - from)) {
            slots = std::move(*all);
          } else {
            slots.reserve(to - from);  // each slot taken is kept: push_back cannot throw
            while (slots.size() < to - from) {
              auto one = pool_->allocate_host(1);
              if (!one) break;
              slots.push_back(one->front());
            }
          }
          if (slots.empty()) return;
          auto read = remote_->load(chain, rm, slots, from);
          if (!read) ++remote_errors_;
          got = read ? *read : 0;
          if (got > 0) {
            auto l = pool_->insert_and_load(
                chain, from, std::span<const std::uint32_t>(slots).first(got), label);
            if (l) {
              out = std::move(*l);
              kept = got;
              if (out.out_of_memory) ++mover_failures_;  // cached, but not brought to the device
              (void)pool_->mark_published(chain, from + got);  // read from the memory nodes
            } else {
              got = 0;
            }
          }
        },
        [&] {
          detail::instead_if_throws([&] { (void)pool_->release_device(out.ids); }, [] {});
          out = {};
          got = 0;
          ++mover_failures_;
        });
    // Nothing leaves the guarded parts by an exception, so the load always gets what was
    // brought and its wait() ends; the host slots not kept are back by then (unless giving
    // them back runs out of memory itself: counted as a mover failure).
    detail::instead_if_throws(
        [&] { (void)pool_->release_host(std::span<const std::uint32_t>(slots).subspan(kept)); },
        [&] { ++mover_failures_; });
    remote_loaded_ += got;
    remote_short_ += (to - from) - out.ids.size();
    std::vector<std::uint32_t> orphaned;
    {
      std::lock_guard lock(st.mutex);
      if (st.released) {
        orphaned = std::move(out.ids);  // the request ended first: nobody will read them
      } else {
        st.remote = std::move(out);
      }
      st.remote_pending = false;
    }
    st.cv.notify_all();
    if (!orphaned.empty()) (void)pool_->release_device(orphaned);
  }

  // Queues the publish of chain[start, end) on a mover. Its blocks not published yet are held
  // until it ends, so that eviction under later requests cannot drop them before it sends them
  // (they may still move down a tier). Write-backs hold theirs in the pool already. When the
  // publish cannot be queued (out of memory), the hold ends before the exception goes on.
  void queue_publish(std::span<const Hash> chain, std::size_t start, std::size_t end,
                     std::shared_ptr<copy_job> job, std::uint32_t label) {
    std::vector<Hash> c(chain.begin(), chain.begin() + static_cast<std::ptrdiff_t>(end));
    (void)pool_->hold_for_publish(chain, start, end);
    detail::undo_if_throws(
        [&] {
          submit([this, c = std::move(c), start, job = std::move(job), label] {
            publish(c, start, job, label);
          });
        },
        // No allocation: the hold already grew the pool's scratch to this chain's length.
        [&] { (void)pool_->settle_publish(chain.first(end), start); });
  }

  // Publishes chain[start, ...) once the commit's copies (if any) are done, from host copies,
  // where start is what the memory nodes were believed to hold; then tells the pool what they
  // hold (only what an insert confirmed) and ends the hold on the rest (queue_publish's or a
  // write-back's).
  // Out of memory on the way: the hold ends as if nothing was stored (what an insert did store
  // is found published by a later publish or lookup), counted in mover_failures.
  void publish(const std::vector<Hash>& chain, std::size_t start,
               const std::shared_ptr<copy_job>& job, std::uint32_t label) {
    detail::instead_if_throws([&] { publish_or_throw(chain, start, job, label); },
                              [&] {
                                // No allocation: the hold grew the pool's scratch to this chain.
                                (void)pool_->settle_publish(chain, start);
                                ++mover_failures_;
                              });
  }
  void publish_or_throw(const std::vector<Hash>& chain, std::size_t start,
                        const std::shared_ptr<copy_job>& job, std::uint32_t label) {
    // A failed write-through copy is dropped; host_copies() makes another.
    if (job != nullptr) (void)job->wait();
    std::size_t missed = 0;
    auto ins = store(chain, start, missed);
    if (ins && ins->stop == insert_stop::parent_missing && start > 0) {
      // The belief was stale (the nodes evicted part of the prefix): publish the whole chain.
      (void)pool_->mark_unpublished(chain, 0);
      start = 0;
      ins = store(chain, 0, missed);
    }
    publish_missed_ += missed;
    std::size_t settled = start;
    if (ins && ins->stop != insert_stop::parent_missing) {
      published_ += ins->published;
      settled = ins->length;
      notify_published(chain, ins->published_runs, label);
      (void)pool_->mark_published(chain, ins->length);
      (void)pool_->mark_unpublished(chain, ins->length);
    }
    (void)pool_->settle_publish(chain, settled);
  }
  // chain[start, ...) into the memory nodes from host copies; nullopt when nothing was stored.
  // `missed`: the blocks past the host copies found (no local copy left to send).
  std::optional<index_insert_result> store(const std::vector<Hash>& chain, std::size_t start,
                                           std::size_t& missed) {
    auto hc = pool_->host_copies(chain, start);
    missed = hc ? chain.size() - start - hc->slots.size() : 0;
    if (!hc || hc->slots.empty()) return std::nullopt;
    if (!hc->wait()) return std::nullopt;  // a copy failed: a later commit or eviction retries
    const auto tokens =
        static_cast<std::uint16_t>(std::min<std::uint32_t>(cfg_.block_size, 0xFFFF));
    auto ins = remote_->store(chain, start, hc->slots, tokens);
    if (!ins) {
      ++remote_errors_;
      return std::nullopt;
    }
    round_trips_ += ins->round_trips;
    if (ins->stop == insert_stop::no_slabs && cfg_.remote.evict_when_full > 0) make_room();
    return std::move(*ins);
  }
  // A publish found the memory nodes out of slabs: evicts their least recently used leaves, at
  // most once per reclaim grace (what it evicts is reusable only once reclaimed, so evicting
  // again sooner would only take more). The blocks of that publish stay local; later publishes
  // find the room.
  void make_room() {
    const auto& ix = cfg_.remote.index.index;
    const auto grace = ix.reclaim_grace.count() > 0 ? ix.reclaim_grace : ix.lease / 4;
    const auto now = clock::now().time_since_epoch();
    auto last = last_make_room_.load(std::memory_order_relaxed);
    if (now - clock::duration(last) < grace) return;
    if (!last_make_room_.compare_exchange_strong(last, now.count())) return;  // another does it
    // evict() counts each node that fails in remote_errors.
    if (auto e = evict(tier_kind::remote, cfg_.remote.evict_when_full)) remote_evicted_ += *e;
  }
  // "Stored" events for the blocks this manager's insert published (not those it found there).
  void notify_published(const std::vector<Hash>& chain,
                        const std::vector<std::pair<std::size_t, std::size_t>>& runs,
                        std::uint32_t label) {
    if (!listening_.load(std::memory_order_acquire)) return;
    for (const auto& [first, end] : runs) {
      for (std::size_t i = first; i < end; ++i) {
        pool_event<Hash> e;
        e.tier = tier_kind::remote;
        e.hash = chain[i];
        e.has_parent = i > 0;
        if (i > 0) e.parent = chain[i - 1];
        e.label = label;
        queue_event(e, tier_kind::remote);
      }
    }
  }

  // ---- events ----------------------------------------------------------------------------------

  void queue_event(const pool_event<Hash>& e, tier_kind tier) {
    if (!listening_.load(std::memory_order_acquire)) return;
    event out;
    out.what = e.what;
    out.tier = tier;
    out.hash = e.hash;
    out.parent = e.parent;
    out.has_parent = e.has_parent;
    out.tokens = cfg_.block_size;
    if (e.label != 0) {
      std::lock_guard lock(label_mutex_);
      out.lora_id = by_label_[e.label - 1].first;
      out.tenant = by_label_[e.label - 1].second;
    }
    {
      std::lock_guard lock(event_mutex_);
      if (events_.size() >= cfg_.event_queue) {
        events_.pop_front();
        ++events_dropped_;
      }
      // Called under the pool's lock, in the middle of its changes: out of memory drops the
      // event (counted), never the change.
      detail::instead_if_throws([&] { events_.push_back(out); }, [&] { ++events_dropped_; });
    }
    event_cv_.notify_one();
  }

  void event_loop() {
    std::unique_lock lock(event_mutex_);
    for (;;) {
      event_cv_.wait(lock, [&] { return events_stop_ || !events_.empty(); });
      if (events_.empty()) return;
      const event e = events_.front();
      events_.pop_front();
      delivering_ = true;
      ++deliveries_;
      // Out of memory (copying the listener, or in it) loses the event, counted as dropped.
      detail::instead_if_throws(
          [&] {
            auto listener = listener_;
            lock.unlock();
            if (listener) {
              listener(e);
              ++events_delivered_;
            } else {
              ++events_dropped_;  // unsubscribed after it was queued
            }
          },
          [&] { ++events_dropped_; });
      if (lock.owns_lock()) lock.unlock();
      lock.lock();
      delivering_ = false;
      idle_cv_events_.notify_all();  // flush() waits for an empty queue, on_event() for this
    }
  }

  config cfg_;
  block_hasher<Hash> hasher_;
  std::unique_ptr<device_tier> device_;
  std::unique_ptr<host_tier> host_;
  std::unique_ptr<ssd_tier> ssd_;
  std::unique_ptr<pool_type> pool_;
  std::unique_ptr<shared_index<T, Hash>> index_;
  std::unique_ptr<remote_tier<T, Hash>> remote_;

  std::mutex label_mutex_;
  std::map<std::pair<std::optional<std::uint64_t>, std::uint64_t>, std::uint32_t> labels_;
  std::vector<std::pair<std::optional<std::uint64_t>, std::uint64_t>> by_label_;

  std::atomic<std::uint64_t> matches_{0}, prompt_blocks_{0}, matched_blocks_{0}, remote_hits_{0};
  std::atomic<std::uint64_t> loads_{0}, remote_loaded_{0}, remote_short_{0};
  std::atomic<std::uint64_t> commits_{0}, committed_{0}, published_{0}, round_trips_{0};
  std::atomic<std::uint64_t> publish_missed_{0}, mover_failures_{0};
  std::atomic<std::uint64_t> remote_errors_{0}, events_delivered_{0}, events_dropped_{0};
  std::atomic<std::uint64_t> remote_evicted_{0}, remote_lookups_{0};
  std::atomic<clock::rep> last_make_room_{std::numeric_limits<clock::rep>::min() / 2};
  std::atomic<std::uint64_t> lookup_round_trips_{0}, lookup_bytes_{0};
  latency_histogram match_latency_;

  std::mutex work_mutex_;
  std::condition_variable work_cv_, idle_cv_;
  std::deque<std::function<void()>> work_;
  unsigned busy_ = 0;
  bool stopping_ = false;
  std::vector<std::thread> movers_;

  std::mutex event_mutex_;
  std::condition_variable event_cv_, idle_cv_events_;
  std::deque<event> events_;
  std::function<void(const event&)> listener_;
  std::atomic<bool> listening_{false};
  bool delivering_ = false, events_stop_ = false;
  std::uint64_t deliveries_ = 0;  // begun, under event_mutex_ (on_event waits for one to end)
  std::thread event_thread_;
};

}  // namespace kvc::inline v0
