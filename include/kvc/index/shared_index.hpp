// kvc/index/shared_index.hpp — one process's front of the one-sided prefix index for many
// threads: a pool of remote_index clients over one transport, with identical in-flight lookups
// and inserts combined, and the pool's upkeep and heartbeats kept by two threads of its own.
//
// A remote_index is one client and serves one thread at a time. An engine has a scheduler
// thread, copy threads and often several requests sharing a system prompt at once; shared_index
// lets them all call in: each call borrows a pooled client (waiting when all are busy), and a
// call that finds the same call already in flight (same chain: its last block hash and length,
// which name the whole chain because block hashes chain through their parents; same hint, or
// the same insert range) waits for that call's answer instead of repeating its round trips.
//
// Concurrency: every member function may be called from any number of threads at once. The
// transport must be safe to use from many threads (shm, verbs, and the decorators over them
// are). Design: docs/design/remote_index.md.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <span>
#include <stop_token>
#include <string>
#include <system_error>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "kvc/config.hpp"
#include "kvc/index/remote_index.hpp"

namespace kvc::inline v0 {

struct shared_index_config {
  remote_index_config index;  // every pooled client's configuration
  std::size_t clients = 4;    // pooled remote_index clients (entries in each node's table)
  // Two threads of the pool's own: one runs maintain() (recovery, reclaim, slab reserves) every
  // heartbeat period, one the idle clients' heartbeats, so that one client's slow upkeep does
  // not hold up the others' (a node that takes batches and never completes them still holds up
  // the heartbeats sent there, up to the transport's timeout). Off: call maintain() every
  // heartbeat period yourself.
  bool maintenance_thread = true;
};

struct shared_index_stats {
  std::uint64_t lookups = 0, lookups_combined = 0;
  std::uint64_t inserts = 0, inserts_combined = 0;
  std::uint64_t waits_for_client = 0;  // calls that found every pooled client busy
  std::uint64_t upkeep_failures = 0;   // pooled clients' maintain() that failed or threw
  std::uint64_t upkeep_waits = 0;      // upkeep waiting for a busy client whose upkeep was overdue
};

template <Transport T, BlockHash H = hash64>
class shared_index {
 public:
  using index_type = remote_index<T, H>;

  [[nodiscard]] static result<std::unique_ptr<shared_index>> open(T& transport,
                                                                  shared_index_config cfg) {
    if (cfg.clients == 0) return fail(errc::invalid_config, "shared_index needs a client");
    std::unique_ptr<shared_index> s(new shared_index(std::move(cfg)));
    // Heartbeats in flight at once: half the transport's batches (verbs: its lanes, shared with
    // every caller), at least one.
    s->beats_at_once_ =
        std::clamp<std::size_t>(kvc::max_batches_in_flight(transport) / 2, 1, s->cfg_.clients);
    // Never grows past the pool: returning a client (a destructor) cannot need memory.
    s->free_.reserve(s->cfg_.clients);
    s->upkept_.reserve(s->cfg_.clients);
    for (std::size_t i = 0; i < s->cfg_.clients; ++i) {
      auto ix = s->open_client(transport, i);
      if (!ix) return std::move(ix).take_failure();
      s->free_.push_back(ix->get());
      s->pool_.push_back(std::move(*ix));
      s->upkept_.push_back(std::chrono::steady_clock::now());
    }
    if (s->cfg_.maintenance_thread) {
      s->maintainer_ = std::jthread([raw = s.get()](std::stop_token stop) {
        raw->every_beat(stop, [raw] { (void)raw->maintain(); });
      });
      s->beater_ = std::jthread([raw = s.get()](std::stop_token stop) {
        raw->every_beat(stop, [raw] { raw->keep_idle_alive(); });
      });
    }
    return s;
  }

  shared_index(const shared_index&) = delete;
  shared_index& operator=(const shared_index&) = delete;
  ~shared_index() {
    maintainer_.request_stop();
    beater_.request_stop();
    wake_.notify_all();
    if (maintainer_.joinable()) maintainer_.join();
    if (beater_.joinable()) beater_.join();
  }

  // As remote_index::lookup; a lookup of the same chain and hint already in flight is shared.
  [[nodiscard]] result<index_match> lookup(std::span<const H> chain, std::size_t hint = 0) {
    if (chain.empty()) return index_match{};
    const key k{chain.back(), chain.size(), hint, 0, false};
    return combined<index_match>(k, lookups_, &shared_index_stats::lookups,
                                 &shared_index_stats::lookups_combined,
                                 [&](index_type& ix) { return ix.lookup(chain, hint); });
  }

  // As remote_index::insert; an insert of the same chain range already in flight is shared
  // (its blocks are the same blocks: equal hashes are equal content).
  [[nodiscard]] result<index_insert_result> insert(std::span<const H> chain, std::size_t from,
                                                   std::span<const block_info> blocks) {
    return shared_insert(chain, from, blocks.size(),
                         [&](index_type& ix) { return ix.insert(chain, from, blocks); });
  }
  // As remote_index::insert(chain, match, blocks): after lookup `m` of `chain`, its located last
  // block is the parent (two READs fewer). Shared like the insert above (same chain range).
  [[nodiscard]] result<index_insert_result> insert(std::span<const H> chain, const index_match& m,
                                                   std::span<const block_info> blocks) {
    return shared_insert(chain, m.length, blocks.size(),
                         [&](index_type& ix) { return ix.insert(chain, m, blocks); });
  }

  [[nodiscard]] result<std::size_t> locate(std::span<const H> chain, index_match& m) {
    auto lease = borrow();
    return lease->locate(chain, m);
  }
  [[nodiscard]] result<std::size_t> read_blocks(std::span<const block_ref> refs,
                                                std::span<const local_buffer> data,
                                                std::span<index_layout::record> records) {
    auto lease = borrow();
    return lease->read_blocks(refs, data, records);
  }
  [[nodiscard]] result<void> touch(std::span<const block_ref> refs) {
    auto lease = borrow();
    return lease->touch(refs);
  }
  [[nodiscard]] result<std::size_t> evict(node_id node, std::size_t n,
                                          std::vector<H>* evicted = nullptr) {
    auto lease = borrow();
    return lease->evict(node, n, evicted);
  }

  // Heartbeats and upkeep for every pooled client (the maintenance thread calls this every
  // heartbeat period; call it yourself when it is off). One client at a time: upkeep may claim
  // chunks for a client's slab reserve (round trips), and the other clients stay free for calls
  // meanwhile. First the clients idle now; then each busy one whose last upkeep is older than
  // half a lease is waited for: its own calls keep its lease, but only upkeep reclaims what it
  // evicted, recovers dead clients and refills its slab reserve, so a pool kept busy would
  // otherwise never have them. Without the beat thread (maintenance_thread off), the idle
  // clients' heartbeats that are due go out after each client's upkeep (keep_idle_alive). The
  // first failure is returned; each one is counted in stats().upkeep_failures (the maintenance
  // thread has no one to return it to).
  [[nodiscard]] result<void> maintain() {
    result<void> first{};
    const auto overdue = cfg_.index.lease / 2;
    std::optional<std::chrono::steady_clock::time_point> wait_until;
    for (const bool busy_too : {false, true}) {
      for (std::size_t k = 0; k < pool_.size(); ++k) {
        index_type* ix = pool_[k].get();
        {
          std::unique_lock lock(mutex_);
          const auto free_now = [&] {
            return std::find(free_.begin(), free_.end(), ix) != free_.end();
          };
          if (busy_too) {
            if (std::chrono::steady_clock::now() - upkept_[k] < overdue) continue;
            // All of one call's waits together last a heartbeat period at most: the idle
            // clients' leases run meanwhile (only upkeep heartbeats them), and a client held
            // longer is tried again on the next beat. Callers are handed another free client
            // while upkeep wants this one.
            if (!free_now()) {
              const auto now = std::chrono::steady_clock::now();
              if (!wait_until) wait_until = now + cfg_.index.heartbeat;
              if (now >= *wait_until) continue;  // this call's waiting is over: the next beat
              ++waiting_for_one_;
              ++stats_.upkeep_waits;
              wanted_ = ix;
              const bool got = upkeep_wait_.wait_until(lock, *wait_until, free_now);
              if (wanted_ == ix) wanted_ = nullptr;
              --waiting_for_one_;
              if (!got) continue;
            }
          } else if (!free_now()) {
            continue;
          }
          free_.erase(std::find(free_.begin(), free_.end(), ix));
        }
        auto ok = upkeep(k);
        if (!ok && first) first = std::move(ok);
        if (!cfg_.maintenance_thread) keep_idle_alive();  // else the beat thread does
      }
    }
    return first;
  }

  // Pooled clients free for a call now.
  [[nodiscard]] std::size_t idle_clients() const {
    std::lock_guard lock(mutex_);
    return free_.size();
  }

  // Every pooled client calls `hook` at its protocol steps (remote_index::on_step; for tests).
  // Set it while no call is in flight and with the maintenance thread off (its upkeep calls it).
  void on_step(const std::function<void(const char*)>& hook) {
    for (auto& ix : pool_) ix->on_step(hook);
  }

  [[nodiscard]] shared_index_stats stats() const {
    std::lock_guard lock(mutex_);
    return stats_;
  }
  [[nodiscard]] std::size_t clients() const noexcept { return pool_.size(); }
  // The size of a block's data slot on every node.
  [[nodiscard]] std::uint64_t block_bytes() const noexcept { return pool_.front()->block_bytes(); }
  // The memory nodes holding the index.
  [[nodiscard]] const std::vector<node_id>& nodes() const noexcept { return cfg_.index.nodes; }

 private:
  struct key {
    H last;
    std::size_t length;
    std::size_t a;  // lookup: hint; insert: from
    std::size_t b;  // insert: block count
    bool insert;
    friend bool operator==(const key&, const key&) = default;
  };
  struct key_hash {
    std::size_t operator()(const key& k) const noexcept {
      return std::hash<H>{}(k.last) ^ (k.length * 0x9E3779B97F4A7C15u) ^ (k.a << 1) ^ (k.b << 7) ^
             static_cast<std::size_t>(k.insert);
    }
  };
  template <class R>
  struct flight {
    std::uint64_t inserts_before = 0;  // inserts_landed_ when it began
    bool done = false;
    std::optional<result<R>> answer;
    std::condition_variable ready;
  };
  template <class R>
  using flights = std::unordered_map<key, std::shared_ptr<flight<R>>, key_hash>;

  // A borrowed pooled client, returned on destruction.
  class borrowed {
   public:
    borrowed(shared_index& s, index_type* ix) : s_(s), ix_(ix) {}
    borrowed(const borrowed&) = delete;
    borrowed& operator=(const borrowed&) = delete;
    ~borrowed() { s_.give_back_and_notify(ix_); }
    index_type* operator->() const noexcept { return ix_; }
    index_type& operator*() const noexcept { return *ix_; }

   private:
    shared_index& s_;
    index_type* ix_;
  };

  explicit shared_index(shared_index_config cfg) : cfg_(std::move(cfg)) {}

  // Pooled client i. A full client table is waited for (remote_index_config::full_table_wait)
  // by every client, but only the first waits inside remote_index::open(): a later one would
  // watch the table a lease without heartbeats of its own pool's open clients, see them silent,
  // declare them dead and take their entries. So a later one looks once per try, and between
  // tries the open clients keep their leases (maintain()).
  result<std::unique_ptr<index_type>> open_client(T& transport, std::size_t i) {
    auto cfg_i = cfg_.index;
    if (cfg_i.seed != 0) cfg_i.seed += i;
    if (i == 0) return index_type::open(transport, std::move(cfg_i));
    cfg_i.full_table_wait = std::chrono::milliseconds(0);
    const auto wait = pool_.front()->config().full_table_wait;
    const auto deadline = std::chrono::steady_clock::now() + wait;
    for (;;) {
      auto ix = index_type::open(transport, cfg_i);
      if (ix || ix.error() != errc::out_of_range) return ix;  // out_of_range: the table is full
      const auto now = std::chrono::steady_clock::now();
      if (now >= deadline) {
        return fail(ix.error(), "shared_index: pooled client " + std::to_string(i + 1) + " of " +
                                    std::to_string(cfg_.clients) + ", after " +
                                    std::to_string(wait.count()) + " ms of tries: " + ix.detail());
      }
      // A failing node is counted and reported by the pool's calls; no other thread yet.
      for (std::size_t k = 0; k < pool_.size(); ++k) (void)upkeep_held(k);
      std::this_thread::sleep_for(
          std::min<std::chrono::steady_clock::duration>(cfg_.index.heartbeat, deadline - now));
    }
  }

  // maintain() of pooled client k, taken from free_ by the caller and given back here whatever
  // happens.
  result<void> upkeep(std::size_t k) {
    const borrowed guard{*this, pool_[k].get()};
    return upkeep_held(k);
  }

  // maintain() of pooled client k, which no other thread uses now. An exception fails this
  // client's beat, not the loop, and is reported by its kind; every failure is counted.
  result<void> upkeep_held(std::size_t k) {
    index_type* ix = pool_[k].get();
    result<void> ok{};
#if defined(__cpp_exceptions)
    try {
      ok = ix->maintain();
    } catch (const std::bad_alloc&) {
      // A short text (no allocation for it): memory is what ran out.
      ok = fail(std::make_error_code(std::errc::not_enough_memory), "out of memory");
    } catch (const std::system_error& e) {
      ok = fail(e.code(), std::string("upkeep threw: ") + e.what());
    } catch (const std::exception& e) {
      ok = fail(std::make_error_code(std::errc::operation_canceled),
                std::string("upkeep threw: ") + e.what());
    } catch (...) {
      ok = fail(std::make_error_code(std::errc::operation_canceled),
                "upkeep threw an exception of unknown type");
    }
#else
    ok = ix->maintain();
#endif
    std::lock_guard lock(mutex_);
    upkept_[k] = std::chrono::steady_clock::now();
    if (!ok) ++stats_.upkeep_failures;
    return ok;
  }

  // The heartbeats of the idle clients that are due (remote_index::start_keep_alive), several in
  // flight at once (beats_at_once_: half the transport's batches in flight, verbs' lanes being
  // shared with every caller), each finished as it completes: one node that does not answer holds
  // them up about once per window, not once each. Upkeep goes one client at a time, and one
  // client's can be slow (a node out of reach: over verbs each try to register there waits out
  // the queue pair's retries, about half a second, or a connect's timeout): the beat thread runs
  // this every heartbeat period beside it, and maintain() without that thread between two
  // clients' upkeep, so the clients after a slow one do not miss their heartbeats for as long
  // (a few such in a row would outlast a lease, and they would be declared dead on the nodes
  // that are fine). The idle clients are taken for it, so callers wait for them meanwhile (a
  // round trip; when a node first stops answering, its retries) and maintain()'s first pass skips
  // them (its second takes those whose upkeep is overdue). Busy clients keep their leases by
  // their own calls.
  void keep_idle_alive() {
    // Memory first: a throw here takes no client.
    std::vector<index_type*> idle;
    idle.reserve(pool_.size());
    {
      std::lock_guard lock(mutex_);
      idle.assign(free_.begin(), free_.end());
      free_.clear();
    }
    // Each goes back as soon as it is done with, and whatever happens.
    struct give_back_rest {
      shared_index& pool;
      std::vector<index_type*>& taken;
      ~give_back_rest() {
        for (index_type*& ix : taken) {
          if (ix != nullptr) pool.give_back_and_notify(std::exchange(ix, nullptr));
        }
      }
    } const rest{*this, idle};
    std::uint64_t failed = 0;
    std::vector<std::size_t> in_flight;  // of idle[]
    in_flight.reserve(beats_at_once_);
    // Finishes the oldest beat in flight (waiting for it) and the others that completed; with
    // `all`, every one in turn. The transport's timeout bounds each wait (verbs: from the
    // doorbell, so beats stuck together end together).
    auto finish = [&](bool all) {
      bool oldest = true;
      for (std::size_t f = 0; f < in_flight.size();) {
        index_type*& ix = idle[in_flight[f]];
        if (!all && !oldest && !ix->keep_alive_done()) {
          ++f;
          continue;
        }
        oldest = false;
        detail::instead_if_throws([&] { ix->finish_keep_alive(); }, [&] { ++failed; });
        give_back_and_notify(std::exchange(ix, nullptr));
        in_flight.erase(in_flight.begin() + static_cast<std::ptrdiff_t>(f));
      }
    };
    for (std::size_t i = 0; i < idle.size(); ++i) {
      if (in_flight.size() == beats_at_once_) finish(false);  // the oldest at least
      bool rung = false;
      detail::instead_if_throws([&] { rung = idle[i]->start_keep_alive(); }, [&] { ++failed; });
      if (rung) {
        in_flight.push_back(i);
      } else {
        give_back_and_notify(std::exchange(idle[i], nullptr));  // none due (or it threw)
      }
    }
    finish(true);
    if (failed > 0) {
      std::lock_guard lock(mutex_);
      stats_.upkeep_failures += failed;
    }
  }

  // A free client: the last returned (its lines warm), unless it is in doubt (it may fail every
  // call until it registers again, which on a full table takes others' recovery of an entry):
  // those go to the front and are taken last.
  borrowed borrow() {
    std::unique_lock lock(mutex_);
    if (free_.empty()) ++stats_.waits_for_client;
    client_free_.wait(lock, [&] { return !free_.empty(); });
    auto at = free_.end() - 1;
    // Upkeep waits for that one: another, unless the other is in doubt (taken last).
    if (*at == wanted_ && free_.size() > 1 && !(*(at - 1))->in_doubt()) --at;
    index_type* ix = *at;
    free_.erase(at);
    return borrowed(*this, ix);
  }
  // Under mutex_. Never allocates (free_ holds every client's place).
  void give_back(index_type* ix) noexcept {
    if (ix->in_doubt()) {
      free_.insert(free_.begin(), ix);
    } else {
      free_.push_back(ix);
    }
  }
  // Gives `ix` back and wakes a caller waiting for any client, and upkeep if it waits for a
  // given one (on a condition of its own: a single wake-up on one shared by both could go to
  // upkeep waiting for another client and leave the caller asleep).
  void give_back_and_notify(index_type* ix) {
    bool upkeep_waits = false;
    {
      std::lock_guard lock(mutex_);
      give_back(ix);
      upkeep_waits = waiting_for_one_ > 0;
    }
    client_free_.notify_one();
    if (upkeep_waits) upkeep_wait_.notify_all();
  }

  // An insert of `n` blocks from `from` of `chain` by `f`, shared with one of the same range in
  // flight.
  template <class F>
  result<index_insert_result> shared_insert(std::span<const H> chain, std::size_t from,
                                            std::size_t n, F&& f) {
    if (chain.empty() || n == 0) {
      index_insert_result r;
      r.length = from;
      return r;
    }
    const key k{chain.back(), chain.size(), from, n, true};
    struct landed {  // returned or thrown: lookups in flight since may miss what it published
      shared_index& s;
      ~landed() {
        std::lock_guard lock(s.mutex_);
        ++s.inserts_landed_;
      }
    } const count{*this};
    return combined<index_insert_result>(k, inserts_, &shared_index_stats::inserts,
                                         &shared_index_stats::inserts_combined, std::forward<F>(f));
  }

  // The call in flight with key k answers everyone who asks meanwhile. If it throws (out of
  // memory), its flight ends without an answer and those waiting make the call themselves.
  template <class R, class F>
  result<R> combined(const key& k, flights<R>& table, std::uint64_t shared_index_stats::*calls,
                     std::uint64_t shared_index_stats::*joined, F&& call) {
    std::shared_ptr<flight<R>> f;
    {
      std::unique_lock lock(mutex_);
      ++(stats_.*calls);
      auto it = table.find(k);
      // A lookup joins one in flight only if no insert returned since that one began: a caller
      // must find what an insert that returned before it asked published (an engine's publish,
      // then its next match of the same chain).
      if constexpr (std::is_same_v<R, index_match>) {
        if (it != table.end() && it->second->inserts_before != inserts_landed_) it = table.end();
      }
      if (it != table.end()) {
        ++(stats_.*joined);
        f = it->second;
        f->ready.wait(lock, [&] { return f->done; });
        if (f->answer) {
          result<R> out = *f->answer;
          if constexpr (std::is_same_v<R, index_insert_result>) {
            if (out) {  // the caller found what the call in flight published
              out->present += out->published;
              out->published = 0;
              out->published_runs.clear();
            }
          }
          return out;
        }
        f = nullptr;  // the call in flight threw: make it here, alone
      } else {
        f = std::make_shared<flight<R>>();
        f->inserts_before = inserts_landed_;
        table.insert_or_assign(k, f);  // an older flight it replaces still answers its own
      }
    }
    if (f == nullptr) {
      auto lease = borrow();
      return call(*lease);
    }
    const auto land = [&](std::optional<result<R>> answer) {
      {
        std::lock_guard lock(mutex_);
        f->answer = std::move(answer);
        f->done = true;
        if (auto it = table.find(k); it != table.end() && it->second == f) table.erase(it);
      }
      f->ready.notify_all();
    };
    std::optional<result<R>> answer;
    detail::undo_if_throws(
        [&] {
          auto lease = borrow();
          answer.emplace(call(*lease));
        },
        [&] { land(std::nullopt); });
    // A copy for those waiting; out of memory for it, they make the call themselves and this
    // caller still gets its answer.
    detail::instead_if_throws([&] { land(answer); }, [&] { land(std::nullopt); });
    return std::move(*answer);
  }

  // Runs f every heartbeat period until stopped (the maintenance and beat threads). A failing
  // node (or out of memory) is retried on the next beat; calls report it, and
  // stats().upkeep_failures counts it.
  template <class F>
  void every_beat(std::stop_token stop, F f) {
    const auto period = cfg_.index.heartbeat;
    while (!stop.stop_requested()) {
      detail::instead_if_throws(f, [] {});
      std::unique_lock lock(mutex_);
      wake_.wait_for(lock, stop, period, [] { return false; });
    }
  }

  shared_index_config cfg_;
  std::vector<std::unique_ptr<index_type>> pool_;
  mutable std::mutex mutex_;
  std::condition_variable client_free_;
  std::condition_variable_any wake_;
  std::vector<index_type*> free_;
  std::vector<std::chrono::steady_clock::time_point> upkept_;  // per pooled client, under mutex_
  std::condition_variable upkeep_wait_;  // upkeep waiting for a given busy client
  std::size_t waiting_for_one_ = 0;      // how many (under mutex_)
  std::size_t beats_at_once_ = 1;        // keep_idle_alive's heartbeats in flight at once
  index_type* wanted_ = nullptr;         // the client it waits for, if one (under mutex_)
  std::uint64_t inserts_landed_ = 0;     // inserts returned so far (under mutex_)
  flights<index_match> lookups_;
  flights<index_insert_result> inserts_;
  shared_index_stats stats_;
  // Last: stopped and joined before the rest goes. The maintenance thread runs maintain(), the
  // beat thread keep_idle_alive(), every heartbeat period.
  std::jthread maintainer_, beater_;
};

}  // namespace kvc::inline v0
