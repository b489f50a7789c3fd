// kvc/pool/block_pool.hpp — the local tiers as one cache: a radix tree says which blocks this
// process holds and where (device id, host slot, SSD slot); each tier keeps its own eviction
// policy over the blocks it holds; blocks move down on eviction (write-back), at commit
// (write-through) or once proven (selective), and up when an engine loads a match.
//
//   kvc::block_pool<kvc::hash64> pool(device, host, &ssd, {});
//   auto m = pool.match(chain);                  // longest local prefix, pinned by m.pin
//   auto l = pool.load(chain, m);                // device ids for it; copies started
//   l->wait();                                   // the engine may read them now
//   auto ids = pool.allocate_device(n);          // for the blocks it computes next
//   pool.commit(chain, m.length, *ids);          // cache them (and write through)
//   pool.release_device(...);                    // the engine's references, when done
//
// Tiers: device (top), host (the hub every move goes through), SSD (optional). Placement of the
// host and SSD tiers (config): write_back: a block gets a copy there when it leaves the tier
// above and has no copy below; write_through: at commit (SSD write-through needs host
// write-through: the copy goes through the host); selective(n): like write_back, for blocks used
// at least n times (others are dropped when they leave the tier above).
//
// Eviction: when a tier has no free slot, its policy names a victim among the blocks that may
// leave it: not pinned by a match, not held by the engine (device references beyond the cache's
// own), not still being copied, and either copied in another tier, or to be copied down, or a
// leaf of the tree (its last copy may go: the tree stays prefix-closed). A victim's demotion
// copy is waited for before its slot is reused. With on_write_back (the manager's remote
// write-back), a victim whose copy is the block's last is kept and its publish asked for
// instead (at most max_write_backs at once); it may leave once settle_publish() says the
// publish ended, published or not.
//
// Copies: load() and commit() start copies and return at once with the jobs to wait for; a slot
// being filled counts as holding the block, and a later load of the same block waits for the
// same job. A failed copy is found when the block is next used or evicted: the copy it was
// making is dropped (and an SSD copy whose data failed its checksum); a block left with no copy
// leaves the tree, or, an inner block, is marked lost and matches stop before it until it is
// committed again. A persistent SSD's blocks are tagged once written and adopted when a pool
// is made on it again (chains complete back to their first block; the rest is released).
// Under the pool's lock: demotion copies are waited for, and tiers' copy() is called, so the
// engine's device hook must not call into the pool (nor wait on a lock held by a caller that
// does).
//
// Concurrency: every member may be called from any thread (one mutex); copies run outside it
// except demotions. The tiers must outlive the pool.
// Design: docs/design/pool.md.
#pragma once

#include <algorithm>
#include <array>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <unordered_map>
#include <utility>
#include <vector>

#include "kvc/concepts.hpp"
#include "kvc/error.hpp"
#include "kvc/evict/queue_policy.hpp"
#include "kvc/hash/block_hash.hpp"
#include "kvc/pool/device_tier.hpp"
#include "kvc/pool/host_tier.hpp"
#include "kvc/pool/ssd_tier.hpp"
#include "kvc/pool/tier.hpp"
#include "kvc/tree/radix_tree.hpp"

namespace kvc::inline v0 {

enum class placement_mode : std::uint8_t { write_back, write_through, selective };

// What a process knows of a cached block's copy in the memory nodes (the cache manager's
// remote tier): published (a lookup found it or a publish stored it), publishing (held for a
// write-back), or given up (a publish stopped before it: not held again).
enum class remote_state : std::uint8_t { unknown, publishing, published, given_up };

struct placement {
  placement_mode mode = placement_mode::write_back;
  std::uint32_t after_uses = 2;  // selective: uses (commit or match) before a copy is kept
};

// The placement named by `spec`: "write_back", "write_through", "selective" (after 2 uses) or
// "selective:N" (after N >= 1 uses). Errors: invalid_config naming the valid spellings.
[[nodiscard]] inline result<placement> parse_placement(std::string_view spec) {
  constexpr std::string_view selective = "selective";
  if (spec == "write_back") return placement{placement_mode::write_back, 2};
  if (spec == "write_through") return placement{placement_mode::write_through, 2};
  if (spec.substr(0, selective.size()) == selective) {
    std::string_view rest = spec.substr(selective.size());
    if (rest.empty()) return placement{placement_mode::selective, 2};
    std::uint32_t n = 0;
    if (rest.front() == ':') {
      rest.remove_prefix(1);
      const auto [end, ec] = std::from_chars(rest.data(), rest.data() + rest.size(), n);
      if (ec == std::errc{} && end == rest.data() + rest.size() && n > 0) {
        return placement{placement_mode::selective, n};
      }
    }
  }
  return fail(errc::invalid_config, "unknown placement \"" + std::string(spec) +
                                        "\"; valid: write_back, write_through, selective, "
                                        "selective:N (N >= 1 uses)");
}

// Waits for every job of `jobs` (until `t`: a job still running then answers errc::timed_out);
// the first failure in job order.
[[nodiscard]] inline result<void> wait_for_jobs(
    const std::vector<std::shared_ptr<copy_job>>& jobs,
    std::chrono::steady_clock::time_point t = std::chrono::steady_clock::time_point::max()) {
  result<void> out;
  for (const auto& j : jobs) {
    auto ok = t == std::chrono::steady_clock::time_point::max() ? j->wait() : j->wait_until(t);
    if (!ok && out) out = std::move(ok);
  }
  return out;
}

struct tier_counters {
  std::uint64_t hits = 0;     // matched blocks whose fastest copy was here
  std::uint64_t stored = 0;   // copies placed here (commit, load, write-through, demotion)
  std::uint64_t evicted = 0;  // copies that left to make room
  std::uint64_t bytes_in = 0;
};

// A copy of a block arriving in (stored) or leaving (removed) a local tier, for whoever follows
// what this process holds (a KV-aware router, metrics). `label` is the caller's (commit's,
// insert_loaded's): the cache manager names the request's LoRA adapter and tenant with it.
template <BlockHash Hash>
struct pool_event {
  enum class kind : std::uint8_t { stored, removed };
  kind what = kind::stored;
  tier_kind tier = tier_kind::device;
  Hash hash{};
  Hash parent{};
  bool has_parent = false;  // false for a chain's first block
  std::uint32_t label = 0;
};

struct block_pool_stats {
  std::array<tier_counters, 3> tiers{};  // device, host, SSD
  std::uint64_t removed = 0;             // blocks whose last local copy left
  std::uint64_t failed_copies = 0;       // copies found failed (their copy was dropped)
  // Slots whose release failed as their copy left (a persistent SSD whose record could not be
  // cleared: an I/O error): held, unused, until the process restarts.
  std::uint64_t lost_slots = 0;
  std::uint64_t failed_moves = 0;       // moves down to a lower tier that failed (no room)
  std::uint64_t adopted = 0;            // blocks found on a persistent SSD when opened
  std::uint64_t orphans = 0;            // of those, released (their chain was incomplete)
  std::uint64_t write_backs = 0;        // last copies held back until published (on_write_back)
  std::uint64_t unpublished_drops = 0;  // with write-back: last copies that left unpublished
  std::size_t holding = 0;              // blocks held for their publish now
};

template <BlockHash Hash, EvictionPolicy Policy = lru_policy>
class block_pool {
 public:
  static constexpr std::uint32_t none = UINT32_MAX;
  static constexpr std::size_t device_index = 0, host_index = 1, ssd_index = 2;

  struct config {
    placement host{};
    placement ssd{};
    // Makes each tier's policy; empty: default-constructed.
    std::function<std::unique_ptr<Policy>(tier_kind)> make_policy;
    // Called for every copy stored in or removed from a tier, under the pool's lock (queue it;
    // never call into the pool from it). Empty: no events.
    std::function<void(const pool_event<Hash>&)> on_event;
    // Write-back to the memory nodes: when eviction names a block whose copy is its last, the
    // block stays and this hook gets, once, its chain (root first), how many leading blocks of
    // it are marked published, and its label; the block may leave once settle_publish() ends
    // its publish. Called under the pool's lock: queue the publish. At most max_write_backs
    // blocks are held at once; past that, last copies leave unpublished (counted). Empty:
    // nothing is held.
    std::function<void(std::vector<Hash>&& chain, std::size_t published, std::uint32_t label)>
        on_write_back;
    std::size_t max_write_backs = 64;
    // hold_for_publish(): at most this many blocks held for queued publishes at once (with the
    // write-backs'); past it a publish's blocks are not held and may leave before it sends them.
    // 0: half the smaller of the device and host tiers, so that held blocks never fill a tier.
    std::size_t max_publish_holds = 0;
  };

  // A cached block's copies (none where absent) and how often it was used.
  struct location {
    std::array<std::uint32_t, 3> slot{none, none, none};
    std::uint32_t uses = 0;
    std::uint32_t label = 0;  // the committer's label (events carry it)
    bool lost = false;        // every copy failed: not matched until recomputed (an inner block)
    remote_state remote = remote_state::unknown;  // in the memory nodes? (mark_published)
  };
  using tree_type = radix_tree<Hash, location, fifo_policy>;

  // Pins a match's blocks: none leaves any tier while it lives. Move-only; releasing takes the
  // pool's lock.
  class lease {
   public:
    lease() = default;
    lease(lease&& o) noexcept : pool_(std::exchange(o.pool_, nullptr)), pin_(std::move(o.pin_)) {}
    lease& operator=(lease&& o) noexcept {
      if (this != &o) {
        release();
        pool_ = std::exchange(o.pool_, nullptr);
        pin_ = std::move(o.pin_);
      }
      return *this;
    }
    ~lease() { release(); }
    void release() {
      if (pool_ == nullptr) return;
      std::lock_guard lock(pool_->mutex_);
      pin_.release();
      pool_ = nullptr;
    }
    [[nodiscard]] std::size_t length() const noexcept { return pin_.length(); }

   private:
    friend block_pool;
    lease(block_pool* p, typename tree_type::lease pin) : pool_(p), pin_(std::move(pin)) {}
    block_pool* pool_ = nullptr;
    typename tree_type::lease pin_;
  };

  struct match_result {
    std::size_t length = 0;                // blocks of the chain cached locally, a prefix
    std::array<std::size_t, 3> fastest{};  // of them, whose fastest copy is on device/host/SSD
    std::size_t published = 0;             // of them, leading blocks marked published
    std::size_t proven = 0;  // of them, leading blocks used at least match()'s proven_after times
    lease pin;
  };

  // Device ids for a match's blocks, once the copies completed. ids[i] is block first + i's;
  // each is held once for the caller (release_device() when done). job_of[i] is the index in
  // jobs of the copy filling ids[i], or no_job when it is on the device already.
  struct load_result {
    static constexpr std::uint32_t no_job = UINT32_MAX;
    std::vector<std::uint32_t> ids;
    std::vector<std::shared_ptr<copy_job>> jobs;
    std::vector<std::uint32_t> job_of;
    // insert_and_load ran out of memory after taking the slots over: no ids, the blocks cached.
    bool out_of_memory = false;
    // How many leading ids hold their block now (their copies completed without failing).
    [[nodiscard]] std::size_t ready() const {
      std::size_t n = 0;
      while (n < ids.size() &&
             (job_of[n] == no_job || (jobs[job_of[n]]->done() && jobs[job_of[n]]->failed() == 0))) {
        ++n;
      }
      return n;
    }
    // Waits for every job, even past a failed one (a later job may bring blocks before the
    // failed one's); the first failure in job order.
    [[nodiscard]] result<void> wait() const { return wait_for_jobs(jobs); }
    // As wait(), until `t`: a job still running then answers errc::timed_out in its place in
    // job order (so a failed job before it is the answer).
    [[nodiscard]] result<void> wait_until(std::chrono::steady_clock::time_point t) const {
      return wait_for_jobs(jobs, t);
    }
  };

  struct commit_result {
    std::size_t cached = 0;         // blocks newly cached
    std::size_t present = 0;        // blocks that were cached already (the caller's ids not used)
    std::shared_ptr<copy_job> job;  // write-through copies (done at once when none)
  };

  block_pool(device_tier& device, host_tier& host, ssd_tier* ssd, config cfg)
      : device_(device), host_(host), ssd_(ssd), cfg_(std::move(cfg)) {
    KVC_ASSERT(check(cfg_, ssd != nullptr), "block_pool: a configuration check() refuses");
    KVC_ASSERT(device.block_bytes() == host.block_bytes() &&
                   (ssd == nullptr || ssd->block_bytes() == host.block_bytes()),
               "block_pool: every tier has the same block size");
    const std::array<std::size_t, 3> caps{device.capacity(), host.capacity(),
                                          ssd != nullptr ? ssd->capacity() : 0};
    const std::array<tier_kind, 3> kinds{tier_kind::device, tier_kind::host, tier_kind::ssd};
    for (std::size_t t = 0; t < 3; ++t) {
      tiers_[t].policy = cfg_.make_policy ? cfg_.make_policy(kinds[t]) : std::make_unique<Policy>();
      tiers_[t].slots = std::vector<residency>(caps[t]);
    }
    publish_hold_limit_ = cfg_.max_publish_holds > 0
                              ? cfg_.max_publish_holds
                              : std::max<std::size_t>(1, std::min(caps[0], caps[1]) / 2);
    if (ssd_ != nullptr && !ssd_->recovered().empty()) adopt_recovered(ssd_->take_recovered());
  }
  block_pool(const block_pool&) = delete;
  block_pool& operator=(const block_pool&) = delete;
  ~block_pool() {
    // Every copy in flight ends before the tiers' slots are given back.
    for (auto& ts : tiers_) {
      for (auto& r : ts.slots) {
        if (r.pending) (void)r.pending->wait();
      }
    }
    tag_written();
    for (std::size_t t = 0; t < 3; ++t) {
      for (std::uint32_t s = 0; s < tiers_[t].slots.size(); ++s) {
        residency& r = tiers_[t].slots[s];
        if (r.owner == nullptr) continue;
        tiers_[t].policy->erase(r);
        r.owner = nullptr;
        // A persistent SSD keeps its blocks (releasing would clear their records).
        if (t != ssd_index || !ssd_->persistent()) (void)release_slot(t, s);
      }
    }
  }

  // Validates a configuration against the tiers given (create-time errors for a host program).
  [[nodiscard]] static result<void> check(const config& cfg, bool has_ssd) {
    if (cfg.ssd.mode == placement_mode::write_through &&
        cfg.host.mode != placement_mode::write_through) {
      return fail(errc::invalid_config,
                  "block pool: SSD write-through needs host write-through (copies go through "
                  "host memory)");
    }
    if ((cfg.host.mode == placement_mode::selective && cfg.host.after_uses == 0) ||
        (has_ssd && cfg.ssd.mode == placement_mode::selective && cfg.ssd.after_uses == 0)) {
      return fail(errc::invalid_config, "block pool: selective placement needs after_uses > 0");
    }
    return {};
  }

  // The longest prefix of `chain` held in some local tier, pinned. Counts a use of each block
  // (this one included in `proven`: the leading blocks used at least proven_after times).
  [[nodiscard]] match_result match(std::span<const Hash> chain, std::uint32_t proven_after = 0) {
    std::lock_guard lock(mutex_);
    tag_written();
    match_result m;
    auto pin = tree_.acquire(chain);
    handles_.resize(pin.length());
    const std::size_t n = tree_.match(chain.first(pin.length()), std::span(handles_));
    for (std::size_t i = 0; i < n; ++i) {
      auto& b = *handles_[i];
      settle(b);
      location& loc = b.payload();
      if (loc.lost) break;  // no good copy left: the engine recomputes from here
      ++m.length;
      ++loc.uses;
      if (loc.remote == remote_state::published && m.published + 1 == m.length) ++m.published;
      if (loc.uses >= proven_after && m.proven + 1 == m.length) ++m.proven;
      for (std::size_t t = 0; t < 3; ++t) {
        if (loc.slot[t] == none) continue;
        tiers_[t].policy->access(tiers_[t].slots[loc.slot[t]], key_of(b));
      }
      const std::size_t f = fastest(loc);
      ++m.fastest[f];
      ++stats_.tiers[f].hits;
    }
    m.pin = lease(this, std::move(pin));
    return m;
  }

  // Device ids for blocks [first, count) of match `m` of `chain` (all of them by default):
  // blocks on the device are shared; the others get an id and copies from the host (from the
  // SSD through a host slot). Fewer ids than asked when the device has no room left (the
  // engine computes the rest). The blocks are pinned for the call; keep the match's lease until
  // the jobs are done.
  [[nodiscard]] result<load_result> load(std::span<const Hash> chain, const match_result& m,
                                         std::size_t count = SIZE_MAX, std::size_t first = 0) {
    return load_range(chain, first, std::min(count, m.length));
  }
  // The same for blocks [first, last) of `chain`, which must be cached (a match's lease, or
  // blocks the caller just inserted and holds): errc::invalid_argument otherwise.
  [[nodiscard]] result<load_result> load_range(std::span<const Hash> chain, std::size_t first,
                                               std::size_t last) {
    std::lock_guard lock(mutex_);
    return load_range_locked(chain, first, last);
  }

  // insert_loaded() then load_range() of the inserted blocks, in one step: nothing can evict
  // them in between. Returns device ids for blocks [from, from + slots.size()) (fewer when the
  // device has no room; none, and out_of_memory, when the load ran out of memory: the blocks
  // stay cached). Fails (or throws std::bad_alloc) only before taking any slot over: the caller
  // still holds them.
  [[nodiscard]] result<load_result> insert_and_load(std::span<const Hash> chain, std::size_t from,
                                                    std::span<const std::uint32_t> slots,
                                                    std::uint32_t label = 0) {
    std::lock_guard lock(mutex_);
    auto added = insert_loaded_locked(chain, from, slots, label);
    if (!added) return std::move(added).take_failure();
    result<load_result> out = load_result{};
    // The slots are the cache's now: out of memory must not reach a caller that would take
    // them for its own (load_range's guard has undone its part).
    detail::instead_if_throws([&] { out = load_range_locked(chain, from, from + slots.size()); },
                              [&] {
                                out = load_result{};
                                out->out_of_memory = true;
                              });
    return out;
  }

 private:
  result<load_result> load_range_locked(std::span<const Hash> chain, std::size_t first,
                                        std::size_t last) {
    const std::size_t n = last;
    if (first > n || n > chain.size()) {
      return fail(errc::invalid_argument, "block pool: load of a range outside the chain");
    }
    auto pin = tree_.acquire(chain.first(n));  // nothing below leaves while we work
    handles_.resize(n);
    if (pin.length() != n || tree_.match(chain.first(n), std::span(handles_)) != n) {
      return fail(errc::invalid_argument, "block pool: load of blocks no longer cached");
    }
    // Everything that can throw is allocated before any state changes, but take_slot's
    // evictions; the guard undoes this call's adoptions if one throws.
    load_result out;
    out.ids.reserve(n - first);
    out.job_of.reserve(n - first);
    out.jobs.reserve(n - first + 1);
    auto done = std::make_shared<copy_job>();
    auto then_device = std::make_shared<std::vector<block_copy<std::uint32_t>>>();
    then_device->reserve(n);
    auto stage = then_copy(&device_, copy_direction::from_host, then_device, done);
    std::vector<block_copy<std::uint32_t>> from_host;  // host slot -> device id, now
    std::vector<block_copy<std::uint32_t>> from_ssd;   // SSD slot -> host slot, first
    from_host.reserve(n);
    from_ssd.reserve(n);
    // Host slot -> device id once the host slot is filled: a host copy still being made (read
    // from the SSD for a publish, host_copies()) is copied on only after `gate` opens, once
    // every such fill has ended (a fill that failed fails the copy, and the block is dropped).
    auto after_fill = std::make_shared<std::vector<block_copy<std::uint32_t>>>();
    after_fill->reserve(n);
    auto gate = then_copy(&device_, copy_direction::from_host, after_fill, done);
    const auto open_gate = [gate](const result<void>& filled) {  // never throws
      if (filled) {
        gate->finish(1);
        return;
      }
      std::optional<failure> why;
      detail::instead_if_throws([&] { why = fail(filled.error(), filled.detail()); },
                                [&] { why.reset(); });
      if (why) {
        gate->finish(1, &*why);
        return;
      }
      const failure oom = fail(std::make_error_code(std::errc::not_enough_memory), "out of memory");
      gate->finish(1, &oom);
    };
    load_guard guard{this, {}, &out.ids, done, stage, then_device, gate, after_fill};
    guard.adopted.reserve(2 * n);
    std::vector<std::size_t> fresh;  // of out.ids, those `done` fills
    fresh.reserve(n - first);
    for (std::size_t i = first; i < n; ++i) {
      auto& b = *handles_[i];
      settle(b);
      location& loc = b.payload();
      if (loc.lost) break;
      if (const std::uint32_t id = loc.slot[device_index]; id != none) {
        (void)device_.share(id);  // held: cannot fail
        out.ids.push_back(id);
        out.job_of.push_back(load_result::no_job);
        if (auto& p = tiers_[device_index].slots[id].pending; p && !p->done()) {
          out.job_of.back() = static_cast<std::uint32_t>(out.jobs.size());
          out.jobs.push_back(p);  // another load or commit is filling it
        }
        continue;
      }
      std::uint32_t hs = loc.slot[host_index];
      const bool via_ssd = hs == none;
      if (via_ssd) {
        auto h = take_slot(host_index);
        if (!h) break;  // no room: the engine computes the rest
        hs = *h;
      }
      const auto give_back_hs = [&] {
        if (via_ssd) (void)host_.release(hs);
      };
      std::optional<result<std::uint32_t>> id;  // take_slot may also throw (while evicting)
      detail::undo_if_throws([&] { id.emplace(take_slot(device_index)); }, give_back_hs);
      if (!*id) {
        give_back_hs();
        break;
      }
      const std::uint32_t dev = **id;
      (void)device_.share(dev);  // the caller's reference
      fresh.push_back(out.ids.size());
      out.ids.push_back(dev);
      out.job_of.push_back(load_result::no_job);
      adopt(b, device_index, dev, done);
      guard.adopted.push_back({&b, device_index});
      if (via_ssd) {
        // Filled by `stage`, but tracked by `done`, which ends after stage's copies and its
        // callback: stage itself counts as done only once its callback returned, so the slot
        // would look busy for a moment after the engine's wait() returned.
        adopt(b, host_index, hs, done);
        guard.adopted.push_back({&b, host_index});
        from_ssd.push_back({loc.slot[ssd_index], host_.data(hs).data()});
        then_device->push_back({dev, host_.data(hs).data()});
      } else if (const auto& fill = tiers_[host_index].slots[hs].pending; fill) {
        // Ended or not (it may have ended, failing, since settle() looked): then() says how.
        after_fill->push_back({dev, host_.data(hs).data()});
        gate->expect(1);
        detail::undo_if_throws([&] { fill->then(open_gate); }, [&] { gate->finish(1); });
      } else {
        from_host.push_back({dev, host_.data(hs).data()});
      }
    }
    guard.adopted.clear();  // from here on nothing throws before the jobs are sealed
    start(device_index, copy_direction::from_host, from_host, done);
    count_in(device_index, from_host.size() + after_fill->size());
    start(ssd_index, copy_direction::to_host, from_ssd, stage);  // then to the device
    count_in(host_index, from_ssd.size());
    count_in(device_index, from_ssd.size());
    guard.pool = nullptr;
    stage->seal();
    gate->seal();
    done->seal();
    for (const std::size_t k : fresh) out.job_of[k] = static_cast<std::uint32_t>(out.jobs.size());
    out.jobs.push_back(std::move(done));
    return out;
  }

 public:
  // n device ids for blocks the engine computes, each held once for the caller; errc::no_space
  // when the device cannot make room.
  [[nodiscard]] result<std::vector<std::uint32_t>> allocate_device(std::size_t n) {
    std::lock_guard lock(mutex_);
    return take_slots(device_index, n);
  }

  // Drops the caller's references on device ids (from allocate_device or load). An id the
  // caller does not hold (free, out of range, or cached and held by the cache alone: released
  // twice) is refused with errc::invalid_argument naming the first such; every other id of the
  // list is released all the same. Before, the cache's own reference on a cached id could be
  // dropped: the id went back to the free ids while the cache still served its block from it.
  [[nodiscard]] result<void> release_device(std::span<const std::uint32_t> ids) {
    std::lock_guard lock(mutex_);
    result<void> out{};
    for (std::uint32_t id : ids) {
      const auto& slots = tiers_[device_index].slots;
      if (id < slots.size() && slots[id].owner != nullptr && device_.refs(id) <= 1) {
        if (out) {
          out = fail(errc::invalid_argument,
                     "block pool: device id " + std::to_string(id) +
                         " is held by the cache alone (released twice?); not released");
        }
        continue;
      }
      if (auto ok = device_.release(id); !ok && out) out = std::move(ok);
    }
    return out;
  }

  // n host slots for blocks arriving from elsewhere (the remote tier loads into them), each
  // held for the caller until insert_loaded() takes it over or release_host() gives it back;
  // errc::no_space when the host cannot make room.
  [[nodiscard]] result<std::vector<std::uint32_t>> allocate_host(std::size_t n) {
    std::lock_guard lock(mutex_);
    return take_slots(host_index, n);
  }
  [[nodiscard]] result<void> release_host(std::span<const std::uint32_t> slots) {
    std::lock_guard lock(mutex_);
    for (std::uint32_t s : slots) {
      if (s < host_.capacity() && tiers_[host_index].slots[s].owner != nullptr) {
        return fail(errc::invalid_argument,
                    "block pool: host slot " + std::to_string(s) + " belongs to the cache");
      }
      if (auto ok = host_.release(s); !ok) return ok;
    }
    return {};
  }

  // Caches chain[from, from + slots.size()), whose bytes are in the caller's host slots (from
  // allocate_host()): the cache takes each slot over; a slot whose block turns out cached
  // already is released. chain[0, from) must be cached (hold the match's lease). Returns how
  // many blocks are newly cached. Those blocks then match, and load to the device, like others.
  [[nodiscard]] result<std::size_t> insert_loaded(std::span<const Hash> chain, std::size_t from,
                                                  std::span<const std::uint32_t> slots,
                                                  std::uint32_t label = 0) {
    std::lock_guard lock(mutex_);
    return insert_loaded_locked(chain, from, slots, label);
  }

 private:
  result<std::size_t> insert_loaded_locked(std::span<const Hash> chain, std::size_t from,
                                           std::span<const std::uint32_t> slots,
                                           std::uint32_t label) {
    tag_written();
    if (from + slots.size() > chain.size()) {
      return fail(errc::invalid_argument, "block pool: insert beyond the end of the chain");
    }
    for (std::uint32_t s : slots) {
      if (auto held = host_.refs(s); held != 1 || tiers_[host_index].slots[s].owner != nullptr) {
        return fail(errc::invalid_argument, "block pool: host slot " + std::to_string(s) +
                                                " is not one allocate_host() handed out");
      }
    }
    if (tree_.match(chain.first(from)) != from) {
      return fail(errc::invalid_argument,
                  "block pool: insert after the chain's first " + std::to_string(from) +
                      " blocks left the cache (hold the match's lease until the insert)");
    }
    const auto whole = chain.first(from + slots.size());
    const std::size_t before = tree_.match(whole);
    handles_.resize(whole.size());  // before the insert: after it, nothing here allocates
    const std::size_t added = tree_.insert(whole, [](std::size_t) { return location{}; }).inserted;
    tree_.match(whole, std::span(handles_));
    for (std::size_t i = from; i < whole.size(); ++i) {
      const std::uint32_t s = slots[i - from];
      if (i < before) {
        (void)host_.release(s);  // cached already
        continue;
      }
      handles_[i]->payload().uses = 1;
      handles_[i]->payload().label = label;
      adopt(*handles_[i], host_index, s, nullptr);
    }
    count_in(host_index, added);
    return added;
  }

 public:
  // Caches chain[from, from + ids.size()), computed into the caller's device ids (which stay
  // the caller's: the cache takes its own reference). chain[0, from) must be cached (hold the
  // match's lease until now). A block cached meanwhile keeps its copies, and takes the caller's
  // id too when it has none on the device. Write-through copies start; their job is returned.
  // New blocks carry `label` in their events.
  [[nodiscard]] result<commit_result> commit(std::span<const Hash> chain, std::size_t from,
                                             std::span<const std::uint32_t> ids,
                                             std::uint32_t label = 0) {
    std::lock_guard lock(mutex_);
    tag_written();
    commit_result out;
    if (from + ids.size() > chain.size()) {
      return fail(errc::invalid_argument, "block pool: commit beyond the end of the chain");
    }
    for (std::size_t i = 0; i < ids.size(); ++i) {
      const std::uint32_t id = ids[i];
      if (id >= device_.capacity() || device_.refs(id) == 0 ||
          tiers_[device_index].slots[id].owner != nullptr ||
          std::find(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(i), id) !=
              ids.begin() + static_cast<std::ptrdiff_t>(i)) {
        return fail(errc::invalid_argument,
                    "block pool: device id " + std::to_string(id) +
                        " is not one allocate_device() handed out for this commit");
      }
    }
    const auto whole = chain.first(from + ids.size());
    auto pin = tree_.acquire(chain.first(from));  // nothing above leaves while we work
    if (pin.length() != from) {
      return fail(errc::invalid_argument,
                  "block pool: commit after the chain's first " + std::to_string(from) +
                      " blocks left the cache (hold the match's lease until the commit)");
    }
    // Allocations first; the guard takes out blocks left without a copy if something throws.
    out.job = std::make_shared<copy_job>();
    auto to_ssd = std::make_shared<std::vector<block_copy<std::uint32_t>>>();
    to_ssd->reserve(ids.size());
    std::vector<block_copy<std::uint32_t>> to_host;
    to_host.reserve(ids.size());
    handles_.resize(whole.size());
    untagged_.reserve(untagged_.size() + ids.size());
    const std::size_t before = tree_.match(whole);
    commit_guard guard{this, out.job};
    out.cached = tree_.insert(whole, [](std::size_t) { return location{}; }).inserted;
    out.present = before - from;
    auto pin_all = tree_.acquire(whole);  // settle() below must not remove a block we hold
    tree_.match(whole, std::span(handles_));
    guard.blocks = std::span(handles_).subspan(from, whole.size() - from);
    guard.first_new = before - from;
    for (std::size_t i = from; i < whole.size(); ++i) {
      auto& b = *handles_[i];
      location& loc = b.payload();
      const std::uint32_t id = ids[i - from];
      if (i < before) {  // cached meanwhile: the caller's copy helps only where none is
        settle(b);
        if (loc.slot[device_index] != none) continue;
        loc.lost = false;
      }
      (void)device_.share(id);  // the cache's own reference
      if (i >= before) {
        loc.uses = 1;
        loc.label = label;
      }
      adopt(b, device_index, id, nullptr);
      if (cfg_.host.mode != placement_mode::write_through || loc.slot[host_index] != none) {
        continue;
      }
      auto h = take_slot(host_index);
      if (!h) continue;  // no room below: the block stays on the device only
      adopt(b, host_index, *h, out.job);
      to_host.push_back({id, host_.data(*h).data()});
      if (ssd_ == nullptr || cfg_.ssd.mode != placement_mode::write_through ||
          loc.slot[ssd_index] != none) {
        continue;
      }
      auto sl = take_slot(ssd_index);
      if (!sl) continue;
      adopt(b, ssd_index, *sl, out.job);
      to_ssd->push_back({*sl, host_.data(*h).data()});
    }
    guard.pool = nullptr;
    if (to_ssd->empty()) {
      start(device_index, copy_direction::to_host, to_host, out.job);
    } else {
      // Device -> host, then host -> SSD when that job completes (for every host copy made:
      // the ones without an SSD copy simply have none to chain).
      // The host slots stay tracked by out.job (done after stage's copies and its callback).
      auto stage = then_copy(ssd_, copy_direction::from_host, to_ssd, out.job);
      start(device_index, copy_direction::to_host, to_host, stage);
      stage->seal();
      count_in(ssd_index, to_ssd->size());
    }
    count_in(host_index, to_host.size());
    out.job->seal();
    return out;
  }

  // Host copies of the blocks chain[from, ...) cached here, for publishing them (the remote
  // tier reads host memory): a block without one gets a host slot and a copy from the device or
  // the SSD, kept as a cached copy. Stops at the first block not cached, lost, or without room
  // on the host. Wait for the jobs before reading; the lease keeps the slots in place.
  struct host_copies_result {
    std::vector<std::uint32_t> slots;  // of block from + i
    std::vector<std::shared_ptr<copy_job>> jobs;
    lease pin;
    // Every job, even past a failed one; the first failure in job order.
    [[nodiscard]] result<void> wait() const { return wait_for_jobs(jobs); }
  };
  [[nodiscard]] result<host_copies_result> host_copies(std::span<const Hash> chain,
                                                       std::size_t from) {
    std::lock_guard lock(mutex_);
    tag_written();
    host_copies_result out;
    auto pin = tree_.acquire(chain);
    const std::size_t n = pin.length();
    if (from > n) from = n;
    handles_.resize(n);
    tree_.match(chain.first(n), std::span(handles_));
    out.slots.reserve(n - from);
    out.jobs.reserve(n - from + 2);
    auto job = std::make_shared<copy_job>();
    std::vector<block_copy<std::uint32_t>> from_device, from_ssd;
    from_device.reserve(n - from);
    from_ssd.reserve(n - from);
    // take_slot may throw (out of memory while it evicts): the host copies adopted before it,
    // whose copies never started, leave again and the job is sealed. Without this they stayed
    // busy for ever (their job never ended), and the pool's destructor waited on them.
    struct adoption_guard {
      block_pool* pool;
      std::vector<block*> adopted;
      copy_job* job;
      ~adoption_guard() {
        if (pool == nullptr) return;
        for (block* b : adopted) pool->drop(*b, host_index);
        job->seal();
      }
    } guard{this, {}, job.get()};
    guard.adopted.reserve(n - from);
    for (std::size_t i = from; i < n; ++i) {
      auto& b = *handles_[i];
      settle(b);
      location& loc = b.payload();
      if (loc.lost) break;
      if (const std::uint32_t h = loc.slot[host_index]; h != none) {
        out.slots.push_back(h);
        if (auto& p = tiers_[host_index].slots[h].pending; p && !p->done()) out.jobs.push_back(p);
        continue;
      }
      const std::size_t src = loc.slot[device_index] != none ? device_index : ssd_index;
      if (const auto& p = tiers_[src].slots[loc.slot[src]].pending; p && !p->done()) break;
      auto h = take_slot(host_index);
      if (!h) break;
      (src == device_index ? from_device : from_ssd)
          .push_back({loc.slot[src], host_.data(*h).data()});
      adopt(b, host_index, *h, job);
      guard.adopted.push_back(&b);
      out.slots.push_back(*h);
    }
    guard.pool = nullptr;
    start(device_index, copy_direction::to_host, from_device, job);
    start(ssd_index, copy_direction::to_host, from_ssd, job);
    count_in(host_index, from_device.size() + from_ssd.size());
    job->seal();
    out.jobs.push_back(std::move(job));
    out.pin = lease(this, std::move(pin));
    return out;
  }

  // What this process knows of the chain in the memory nodes (the cache manager says):
  // mark_published: the leading cached blocks of chain[0, n) are held there (a lookup found them,
  // a publish stored them), so match() reports them in `published` and they are not published
  // again; mark_unpublished: the cached blocks of chain[from, ...) marked published are not (a
  // lookup found less); settle_publish: a publish of the chain ended without storing its blocks
  // from `from` on: they are given up (a write-back holds them no longer and does not ask again
  // while they are cached). Each returns how many blocks it changed.
  std::size_t mark_published(std::span<const Hash> chain, std::size_t n) {
    return set_remote(chain, 0, n, [](remote_state r) {
      return r == remote_state::published ? r : remote_state::published;
    });
  }
  std::size_t mark_unpublished(std::span<const Hash> chain, std::size_t from) {
    return set_remote(chain, from, chain.size(), [](remote_state r) {
      return r == remote_state::published ? remote_state::unknown : r;
    });
  }
  // hold_for_publish: a publish of chain[from, to) is queued (the manager's write-through or
  // selective publishing): its cached blocks not published yet are held like a write-back's
  // until settle_publish() (their last copy does not leave; they may still move down a tier), so
  // the publish finds them; while fewer than max_publish_holds blocks are held (the rest of the
  // range is not). Returns how many it held.
  std::size_t hold_for_publish(std::span<const Hash> chain, std::size_t from, std::size_t to) {
    return set_remote(chain, from, to, [](remote_state r) {
      return r == remote_state::published ? r : remote_state::publishing;
    });
  }
  std::size_t settle_publish(std::span<const Hash> chain, std::size_t from) {
    return set_remote(chain, from, chain.size(), [](remote_state r) {
      return r == remote_state::published ? r : remote_state::given_up;
    });
  }

  // Evicts up to n copies from tier `tier` (device, host or SSD) as its policy picks them when
  // making room (a last copy moves down where placement says). Returns how many left; fewer
  // when the rest are pinned, in use or being copied.
  [[nodiscard]] result<std::size_t> evict(tier_kind tier, std::size_t n) {
    std::lock_guard lock(mutex_);
    tag_written();
    const std::size_t t = tier == tier_kind::device ? device_index
                          : tier == tier_kind::host ? host_index
                          : tier == tier_kind::ssd  ? ssd_index
                                                    : 3;
    if (t == 3) return fail(errc::invalid_argument, "block pool: no local tier of that kind");
    if (t == ssd_index && ssd_ == nullptr) return std::size_t{0};
    std::size_t done = 0;
    while (done < n) {
      block* v = pick_victim(t);
      if (v == nullptr) break;
      if (auto ok = leave(*v, t); !ok) {
        if (done > 0) break;
        return std::move(ok).take_failure();
      }
      ++done;
    }
    return done;
  }

  [[nodiscard]] block_pool_stats stats() const {
    std::lock_guard lock(mutex_);
    return stats_;
  }
  [[nodiscard]] std::size_t size() const {
    std::lock_guard lock(mutex_);
    return tree_.size();
  }
  // Where block chain.back() has copies (none everywhere when it is not cached).
  [[nodiscard]] location where(std::span<const Hash> chain) {
    std::lock_guard lock(mutex_);
    handles_.resize(chain.size());
    if (chain.empty() || tree_.match(chain, std::span(handles_)) != chain.size()) return {};
    settle(*handles_.back());
    return handles_.back()->payload();
  }

 private:
  using block = typename tree_type::block;

  struct residency : Policy::hook {
    block* owner = nullptr;
    std::shared_ptr<copy_job> pending;  // the copy filling the slot, until settled
    bool tagged = false;                // SSD: its directory record names the block
  };
  struct tier_state {
    std::unique_ptr<Policy> policy;
    std::vector<residency> slots;  // by slot; never resized: hooks stay put
  };

  static std::uint64_t key_of(const block& b) { return std::hash<Hash>{}(tree_type::hash_of(b)); }
  static residency& residency_of(typename Policy::hook& h) { return static_cast<residency&>(h); }

  std::size_t fastest(const location& loc) const {
    for (std::size_t t = 0; t < 3; ++t) {
      if (loc.slot[t] != none) return t;
    }
    return ssd_index;
  }
  // Whether b's copy in tier t was being made by a copy that failed.
  bool failed_copy(const location& loc, std::size_t t) const {
    const residency& r = tiers_[t].slots[loc.slot[t]];
    return r.pending && r.pending->done() && r.pending->failed() > 0;
  }
  // Copies of the block that are good or still arriving.
  std::size_t copies(const location& loc) const {
    std::size_t c = 0;
    for (std::size_t t = 0; t < 3; ++t) {
      if (loc.slot[t] != none && !failed_copy(loc, t)) ++c;
    }
    return c;
  }
  void count_in(std::size_t t, std::size_t blocks) {
    stats_.tiers[t].bytes_in += blocks * host_.block_bytes();
  }

  result<std::uint32_t> allocate(std::size_t t) {
    if (t == device_index) return device_.allocate();
    if (t == host_index) return host_.allocate();
    if (ssd_ == nullptr) return fail(errc::no_space, "no SSD tier");
    return ssd_->allocate();
  }
  result<void> release_slot(std::size_t t, std::uint32_t s) {
    if (t == device_index) return device_.release(s);
    if (t == host_index) return host_.release(s);
    return ssd_->release(s);
  }

  // Block b has a copy in tier t at slot s (being filled by `pending`, if any).
  void adopt(block& b, std::size_t t, std::uint32_t s, std::shared_ptr<copy_job> pending) {
    residency& r = tiers_[t].slots[s];
    r.owner = &b;
    r.pending = std::move(pending);
    b.payload().slot[t] = s;
    tiers_[t].policy->insert(r, key_of(b));
    ++stats_.tiers[t].stored;
    if (t == ssd_index && ssd_->persistent()) untagged_.push_back(s);
    notify(b, t, pool_event<Hash>::kind::stored);
  }
  // Takes block b's copy out of tier t (its slot is released).
  void drop(block& b, std::size_t t) {
    notify(b, t, pool_event<Hash>::kind::removed);
    location& loc = b.payload();
    residency& r = tiers_[t].slots[loc.slot[t]];
    tiers_[t].policy->erase(r);
    r.owner = nullptr;
    r.pending.reset();
    r.tagged = false;
    if (!release_slot(t, loc.slot[t])) ++stats_.lost_slots;
    loc.slot[t] = none;
  }
  // Drops b's copies whose copy failed, and its SSD copy when reading it found the data damaged;
  // forgets finished jobs. A block left without a copy leaves the tree when it is an unpinned
  // leaf (false then: b is gone) and is marked lost otherwise (matches stop before it).
  bool settle(block& b) {
    location& loc = b.payload();
    bool damaged_ssd = false;
    for (std::size_t t = 0; t < 3; ++t) {
      if (loc.slot[t] == none) continue;
      residency& r = tiers_[t].slots[loc.slot[t]];
      if (!r.pending || !r.pending->done()) continue;
      if (r.pending->failed() == 0) {
        r.pending.reset();
        continue;
      }
      if (t == host_index && r.pending->first_error() == errc::malformed_input) damaged_ssd = true;
      ++stats_.failed_copies;
      drop(b, t);
    }
    if (damaged_ssd && loc.slot[ssd_index] != none) drop(b, ssd_index);
    if (copies(loc) > 0) return true;
    if (tree_type::evictable(b)) {
      (void)remove_block(b);
      ++stats_.removed;
      return false;
    }
    loc.lost = true;
    return true;
  }

  // Records the SSD copies whose writes completed, so a restarted process finds them (persistent
  // SSD only). A slot reused since it was listed is tagged for its new block once written.
  void tag_written() {
    std::size_t keep = 0;
    for (const std::uint32_t s : untagged_) {
      residency& r = tiers_[ssd_index].slots[s];
      if (r.owner == nullptr || r.tagged) continue;
      if (r.pending && !r.pending->done()) {
        untagged_[keep++] = s;  // still being written
        continue;
      }
      if (r.pending && r.pending->failed() > 0) continue;  // settle() drops it
      const auto key = to_bytes(tree_type::hash_of(*r.owner));
      const block* parent = tree_type::parent_of(*r.owner);
      std::span<const std::byte> parent_key;
      std::array<std::byte, Hash::bytes> parent_bytes{};
      if (parent != nullptr) {
        parent_bytes = to_bytes(tree_type::hash_of(*parent));
        parent_key = parent_bytes;
      }
      r.tagged = static_cast<bool>(ssd_->tag(s, key, parent_key));
      if (!r.tagged) untagged_[keep++] = s;  // an I/O error: tried again on the next call
    }
    untagged_.resize(keep);
  }

  // Rebuilds the directory from the blocks a persistent SSD held when opened: every block whose
  // chain is complete back to its first block is cached again (on the SSD); the others (a
  // parent missing, a key of another width, a duplicate) are released.
  void adopt_recovered(const std::vector<ssd_tier::persisted_block>& found) {
    std::unordered_map<Hash, std::size_t> by_key;  // hash -> index in found
    std::vector<Hash> keys(found.size());
    std::vector<std::uint8_t> usable(found.size(), 0);
    for (std::size_t i = 0; i < found.size(); ++i) {
      if (found[i].key_bytes != Hash::bytes) continue;
      keys[i] = from_bytes<Hash>(found[i].key_view().template first<Hash::bytes>());
      if (by_key.emplace(keys[i], i).second) usable[i] = 1;
    }
    // A block's parent index, or found.size() for a chain's first block; npos when missing.
    constexpr std::size_t missing = SIZE_MAX;
    auto parent_index = [&](std::size_t i) -> std::size_t {
      if (found[i].parent_bytes == 0) return found.size();
      if (found[i].parent_bytes != Hash::bytes) return missing;
      auto it = by_key.find(from_bytes<Hash>(found[i].parent_view().template first<Hash::bytes>()));
      return it == by_key.end() ? missing : it->second;
    };
    // Chains: from each block that is no one's parent, back to the first block.
    std::vector<std::uint8_t> is_parent(found.size(), 0);
    for (std::size_t i = 0; i < found.size(); ++i) {
      if (!usable[i]) continue;
      if (const std::size_t p = parent_index(i); p < found.size()) is_parent[p] = 1;
    }
    std::vector<std::uint8_t> adopted(found.size(), 0);
    std::vector<std::size_t> path;
    std::vector<Hash> chain;
    for (std::size_t leaf = 0; leaf < found.size(); ++leaf) {
      if (!usable[leaf] || is_parent[leaf]) continue;
      path.clear();
      std::size_t i = leaf;
      while (i < found.size() && path.size() <= found.size()) {  // bounded: no cycles
        path.push_back(i);
        i = parent_index(i);
        if (i < found.size() && !usable[i]) i = missing;
      }
      if (i != found.size()) continue;  // an ancestor is missing (or a cycle)
      chain.clear();
      for (std::size_t k = path.size(); k-- > 0;) chain.push_back(keys[path[k]]);
      tree_.insert(chain, [&](std::size_t k) {
        location loc;
        loc.slot[ssd_index] = found[path[path.size() - 1 - k]].where;
        return loc;
      });
      handles_.resize(chain.size());
      tree_.match(chain, std::span(handles_));
      for (std::size_t k = 0; k < chain.size(); ++k) {
        block& b = *handles_[k];
        const std::size_t idx = path[path.size() - 1 - k];
        if (adopted[idx]) continue;
        adopted[idx] = 1;
        residency& r = tiers_[ssd_index].slots[found[idx].where];
        r.owner = &b;
        r.tagged = true;
        tiers_[ssd_index].policy->insert(r, key_of(b));
        ++stats_.adopted;
        notify(b, ssd_index, pool_event<Hash>::kind::stored);
      }
    }
    for (std::size_t i = 0; i < found.size(); ++i) {
      if (!adopted[i]) {
        (void)ssd_->release(found[i].where);
        ++stats_.orphans;
      }
    }
  }

  // The tier a block leaving tier t goes to, or none.
  std::size_t below(const location& loc, std::size_t t) const {
    const std::size_t u = t + 1;
    if (u == ssd_index && ssd_ == nullptr) return 3;
    if (u > ssd_index) return 3;
    const placement& p = u == host_index ? cfg_.host : cfg_.ssd;
    if (p.mode == placement_mode::selective && loc.uses < p.after_uses) return 3;
    return u;
  }

  // Whether b's copy in tier t may go without a move down: another copy stays, or b leaves the
  // cache altogether (a leaf not being published).
  bool removable(block& b, std::size_t t) {
    return copies(b.payload()) > 1 || (b.payload().slot[t] != none && tree_type::evictable(b) &&
                                       b.payload().remote != remote_state::publishing);
  }
  bool may_leave(block& b, std::size_t t) {
    if (tree_type::pinned(b)) return false;
    location& loc = b.payload();
    if (failed_copy(loc, t)) return true;  // nothing good to keep
    for (std::size_t u = 0; u < 3; ++u) {  // a copy in flight reads or fills one of them
      if (loc.slot[u] == none) continue;
      const residency& r = tiers_[u].slots[loc.slot[u]];
      if (r.pending && !r.pending->done()) return false;
    }
    if (t == device_index && device_.refs(loc.slot[t]) > 1) return false;  // the engine's
    if (copies(loc) > 1) return true;
    if (below(loc, t) < 3) return true;
    return tree_type::evictable(b) && b.payload().remote != remote_state::publishing;
  }

  // Applies `next` to the remote state of the cached blocks [from, to) of chain.
  template <class Next>
  std::size_t set_remote(std::span<const Hash> chain, std::size_t from, std::size_t to,
                         Next&& next) {
    std::lock_guard lock(mutex_);
    to = std::min(to, chain.size());
    if (from >= to) return 0;
    handles_.resize(to);
    const std::size_t got = tree_.match(chain.first(to), std::span(handles_));
    std::size_t changed = 0;
    for (std::size_t i = from; i < got; ++i) {
      location& loc = handles_[i]->payload();
      const remote_state r = next(loc.remote);
      if (r == loc.remote) continue;
      if (r == remote_state::publishing) {  // a hold: at most max_publish_holds at once
        if (stats_.holding >= publish_hold_limit_) break;
        ++stats_.holding;
      }
      if (loc.remote == remote_state::publishing) --stats_.holding;
      loc.remote = r;
      ++changed;
    }
    return changed;
  }

  // Whether eviction from tier t, having named b, must keep b for a write-back instead: its copy
  // there is its last, it is a leaf, nothing asked for its publish yet, and fewer than
  // max_write_backs blocks are held.
  bool wants_write_back(const block& b, std::size_t t) const {
    const location& loc = b.payload();
    return cfg_.on_write_back && loc.remote == remote_state::unknown &&
           stats_.holding < cfg_.max_write_backs && copies(loc) == 1 && below(loc, t) == 3 &&
           tree_type::evictable(b);
  }
  // Holds b and asks for its publish (on_write_back) with its chain, built from parent links
  // (callers may be iterating handles_). If the hook throws, b is not held.
  void request_write_back(block& b) {
    std::vector<Hash> chain;
    std::size_t published = 0;  // counted from b up: reset by every block not published
    for (const block* p = &b; p != nullptr; p = tree_type::parent_of(*p)) {
      chain.push_back(tree_type::hash_of(*p));
      published = p->payload().remote == remote_state::published ? published + 1 : 0;
    }
    std::reverse(chain.begin(), chain.end());
    cfg_.on_write_back(std::move(chain), published, b.payload().label);
    b.payload().remote = remote_state::publishing;
    ++stats_.holding;
    ++stats_.write_backs;
  }
  // The victim tier t's policy names among the blocks that may leave, after holding those a
  // write-back keeps; nullptr when none may leave.
  // leaves_only: the tier below is full of blocks that cannot leave (a move down just failed
  // for want of room), so only blocks that may leave the cache altogether are worth trying.
  block* pick_victim(std::size_t t, const std::vector<const block*>& refused = {},
                     bool leaves_only = false) {
    for (;;) {
      auto* v = tiers_[t].policy->victim([&](typename Policy::hook& h) {
        block& b = *residency_of(h).owner;
        return may_leave(b, t) && (!leaves_only || removable(b, t)) &&
               std::find(refused.begin(), refused.end(), &b) == refused.end();
      });
      if (v == nullptr) return nullptr;
      block& b = *residency_of(*v).owner;
      if (!wants_write_back(b, t)) return &b;
      request_write_back(b);  // held now: may_leave refuses it, the next pick is another
    }
  }
  // Takes b out of the tree (its last copy left); false when it could not (an inner block).
  bool remove_block(block& b) {
    if (b.payload().remote == remote_state::publishing) --stats_.holding;
    if (cfg_.on_write_back && b.payload().remote != remote_state::published) {
      ++stats_.unpublished_drops;
    }
    return tree_.erase_leaf(b, [](const Hash&, location&&) {});
  }

  static tier_kind kind_of(std::size_t t) noexcept {
    return t == device_index ? tier_kind::device
           : t == host_index ? tier_kind::host
                             : tier_kind::ssd;
  }
  static const char* name(std::size_t t) noexcept { return to_string(kind_of(t)); }

  void notify(const block& b, std::size_t t, typename pool_event<Hash>::kind what) {
    if (!cfg_.on_event) return;
    pool_event<Hash> e;
    e.what = what;
    e.tier = kind_of(t);
    e.hash = tree_type::hash_of(b);
    if (const block* parent = tree_type::parent_of(b)) {
      e.parent = tree_type::hash_of(*parent);
      e.has_parent = true;
    }
    e.label = b.payload().label;
    cfg_.on_event(e);
  }

  // n free slots of tier t, held for the caller, or none (all given back) and the reason.
  result<std::vector<std::uint32_t>> take_slots(std::size_t t, std::size_t n) {
    // More than the tier holds: refused before anything is evicted for it.
    if (n > tiers_[t].slots.size()) {
      return fail(errc::no_space, std::to_string(n) + " slots asked of the " +
                                      to_string(kind_of(t)) + " tier, which has " +
                                      std::to_string(tiers_[t].slots.size()));
    }
    std::vector<std::uint32_t> got;
    got.reserve(n);
    const auto give_back = [&] {
      for (std::uint32_t g : got) (void)release_slot(t, g);
    };
    // take_slot may throw (out of memory while evicting for a slot): the slots taken go back.
    std::optional<failure> why;
    detail::undo_if_throws(
        [&] {
          for (std::size_t i = 0; i < n && !why; ++i) {
            auto s = take_slot(t);
            if (s) {
              got.push_back(*s);  // reserved: no allocation
            } else {
              why = std::move(s).take_failure();
            }
          }
        },
        give_back);
    if (why) {
      give_back();
      return std::move(*why);
    }
    return got;
  }

  // A free slot of tier t, evicting for it.
  result<std::uint32_t> take_slot(std::size_t t) {
    std::vector<const block*> refused;  // victims that could not leave (their move down failed)
    std::optional<failure> why;
    bool below_full = false;  // a move down found no room: the tier below stays full meanwhile
    for (;;) {
      auto s = allocate(t);
      if (s || s.error() != errc::no_space) return s;
      block* v = pick_victim(t, refused, below_full);
      if (v == nullptr) {
        if (why) return std::move(*why);
        return fail(errc::no_space,
                    std::string(name(t)) +
                        " tier: every block is pinned, in use, being copied or being published");
      }
      if (auto ok = leave(*v, t, !below_full); !ok) {  // another victim may still go
        refused.push_back(v);
        below_full = below_full || ok.error() == errc::no_space;
        why = std::move(ok).take_failure();
      }
    }
  }

  // Block b's copy leaves tier t: moved down first when it is the last copy and placement says
  // so; removed from the tree when no copy is left. Fails, changing nothing, when the move down
  // failed and b is an inner block (its last copy must stay).
  result<void> leave(block& b, std::size_t t, bool move_down = true) {
    location& loc = b.payload();
    if (!settle(b) || loc.slot[t] == none) return {};  // a failed copy made the room
    if (copies(loc) == 1 && !move_down && !tree_type::evictable(b)) {
      return fail(errc::no_space, std::string(name(t)) + " tier: an inner block's last copy");
    }
    if (copies(loc) == 1 && move_down) {
      if (const std::size_t u = below(loc, t); u < 3) {
        auto moved = demote(b, t, u);
        if (!moved) ++stats_.failed_moves;
        if (!moved && !tree_type::evictable(b)) {
          return fail(moved.error(), std::string(name(t)) + " tier: a block could not move to " +
                                         name(u) + ": " + moved.message());
        }
      }
    }
    ++stats_.tiers[t].evicted;
    drop(b, t);
    if (copies(loc) == 0) {
      const bool gone = remove_block(b);
      KVC_ASSERT(gone, "block_pool: the last copy of an inner block left");
      ++stats_.removed;
    }
    return {};
  }

  // A job whose completion starts the copies in *second (filled until then) on tier `next`
  // into `outer`, which waits for that start (expect(1), finished once they started or the
  // first job failed).
  template <class Tier>
  static std::shared_ptr<copy_job> then_copy(
      Tier* next, copy_direction dir,
      std::shared_ptr<std::vector<block_copy<std::uint32_t>>> second,
      const std::shared_ptr<copy_job>& outer) {
    auto job = std::make_shared<copy_job>([next, dir, outer,
                                           second = std::move(second)](const result<void>& first) {
      // Runs on whichever thread completed the first job, or in a seal(): it never throws
      // (out of memory fails the copies), so `outer` always ends.
      result<void> ok{};
      detail::instead_if_throws(
          [&] { ok = first ? next->copy(dir, *second, outer) : result<void>(first); },
          [&] { ok = fail(std::make_error_code(std::errc::not_enough_memory), "out of memory"); });
      if (!ok) {
        const failure why = std::move(ok).take_failure();
        outer->finish(1, &why);
        return;
      }
      outer->finish(1);
    });
    outer->expect(1);  // last: nothing above left it expecting a start that never comes
    return job;
  }

  // Undoes a commit that threw (pool == nullptr once it cannot): the new blocks left without a
  // copy leave the tree again (deepest first: they are leaves then), and the job is sealed.
  struct commit_guard {
    block_pool* pool;
    std::shared_ptr<copy_job> job;
    std::span<block*> blocks{};  // the committed range
    std::size_t first_new = 0;   // of it, the blocks this commit added
    ~commit_guard() {
      if (pool == nullptr) return;
      for (block* b : blocks) {  // copies to be made by `job`, never started
        for (std::size_t t = host_index; t <= ssd_index; ++t) {
          const std::uint32_t sl = b->payload().slot[t];
          if (sl != none && pool->tiers_[t].slots[sl].pending == job) pool->drop(*b, t);
        }
      }
      for (std::size_t i = blocks.size(); i-- > first_new;) {
        if (pool->copies(blocks[i]->payload()) > 0) break;
        (void)pool->remove_block(*blocks[i]);
      }
      job->seal();
    }
  };

  // Undoes a load that threw (pool == nullptr once it cannot): this call's adoptions (their
  // copies never started), the caller's references, and seals the jobs with nothing to chain.
  struct load_guard {
    block_pool* pool;
    std::vector<std::pair<block*, std::size_t>> adopted;
    std::vector<std::uint32_t>* ids;
    std::shared_ptr<copy_job> done, stage;
    std::shared_ptr<std::vector<block_copy<std::uint32_t>>> second;
    std::shared_ptr<copy_job> gate;  // opens after fills already asked to open it, copies none
    std::shared_ptr<std::vector<block_copy<std::uint32_t>>> after_fill;
    ~load_guard() {
      if (pool == nullptr) return;
      for (auto [b, t] : adopted) pool->drop(*b, t);
      for (std::uint32_t id : *ids) (void)pool->device_.release(id);
      second->clear();
      after_fill->clear();
      stage->seal();
      gate->seal();
      done->seal();
    }
  };

  // Starts copies on tier t into `job`; a copy the tier refuses (it cannot, for held slots)
  // counts as failed on the job, so the copies it was to make are dropped when settled.
  void start(std::size_t t, copy_direction dir, std::span<const block_copy<std::uint32_t>> c,
             const std::shared_ptr<copy_job>& job) {
    if (c.empty()) return;
    result<void> ok{};
    // Out of memory before the tier took the copies: they fail like any copy that cannot start,
    // so the job still ends (a job that never ends would keep its slots busy for ever, and a
    // wait on it would never return). The detail fits std::string's own buffer.
    detail::instead_if_throws(
        [&] {
          ok = t == device_index ? device_.copy(dir, c, job)
               : t == host_index ? host_.copy(dir, c, job)
                                 : ssd_->copy(dir, c, job);
        },
        [&] { ok = fail(std::make_error_code(std::errc::not_enough_memory), "out of memory"); });
    if (!ok) {
      const failure why = std::move(ok).take_failure();
      job->expect(c.size());
      job->finish(c.size(), &why);
    }
  }

  // Copies b from tier t down to tier u and waits (the source slot is reused next).
  result<void> demote(block& b, std::size_t t, std::size_t u) {
    location& loc = b.payload();
    auto s = take_slot(u);
    if (!s) return std::move(s).take_failure();
    std::shared_ptr<copy_job> job;
    const std::uint32_t from = loc.slot[t];
    result<void> started{};
    // Out of memory before the copy started (a tier's copy throws only before it counts the
    // copy in the job): the slot taken below goes back.
    detail::undo_if_throws(
        [&] {
          job = std::make_shared<copy_job>();
          if (t == device_index) {  // device -> host
            const block_copy<std::uint32_t> c{from, host_.data(*s).data()};
            started = device_.copy(copy_direction::to_host, std::span(&c, 1), job);
          } else {  // host -> SSD
            const block_copy<std::uint32_t> c{*s, host_.data(from).data()};
            started = ssd_->copy(copy_direction::from_host, std::span(&c, 1), job);
          }
        },
        [&] { (void)release_slot(u, *s); });
    job->seal();
    if (started) started = job->wait();
    if (!started) {
      ++stats_.failed_copies;
      (void)release_slot(u, *s);
      return started;
    }
    adopt(b, u, *s, nullptr);
    count_in(u, 1);
    return {};
  }

  device_tier& device_;
  host_tier& host_;
  ssd_tier* ssd_;
  config cfg_;
  mutable std::mutex mutex_;
  tree_type tree_;
  std::array<tier_state, 3> tiers_;
  std::vector<block*> handles_;
  std::size_t publish_hold_limit_ = 1;   // config::max_publish_holds, resolved
  std::vector<std::uint32_t> untagged_;  // SSD slots to record once written
  block_pool_stats stats_;
};

}  // namespace kvc::inline v0
