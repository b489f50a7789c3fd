// kvc/verbs/fencing.hpp — a verbs memory node that fences the index's clients declared dead:
// it admits clients through the bootstrap port (recording each queue pair under the identity
// the client's hello names), watches its region's client table, and for every entry declared
// dead moves all queue pairs of that entry's identity to the error state, refuses the identity
// from then on (errc::fenced), and only then stores the fence word, on which other clients
// recover the entry at once instead of after recovery_delay. A client that was only slow finds
// its requests failing and its reconnection refused; its transport takes a fresh identity and
// its index registers anew. Design: docs/design/remote_index.md ("Fencing").
//
// Concurrency: admit() is called from the bootstrap server's session threads, concurrently; the
// watcher runs on a thread of its own. A hello and a fence of the same identity are serialised,
// so a queue pair is either refused or recorded before the fence collects it.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "kvc/error.hpp"
#include "kvc/index/fencer.hpp"
#include "kvc/transport/bootstrap.hpp"
#include "kvc/transport/bootstrap_server.hpp"
#include "kvc/verbs/region.hpp"

namespace kvc::inline v0 {

struct verbs_fencing_config {
  std::chrono::milliseconds poll{10};  // how often the client table is read
  // From cutting a client's queue pairs to storing its fence word: a responder may still be
  // finishing a request it accepted before its queue pair went to the error state.
  std::chrono::milliseconds settle{20};
};

class verbs_fencing {
 public:
  struct counts {
    std::uint64_t fenced = 0;       // client incarnations cut off
    std::uint64_t queue_pairs = 0;  // queue pairs moved to the error state
    std::uint64_t refused = 0;      // hellos refused: their identity was fenced
    std::uint64_t failed = 0;       // passes in which a queue pair would not go to the error state
  };

  // `region` must be formatted for the index and outlive this object; its header is marked as
  // fencing (clients read that when they attach: start this before the bootstrap server).
  [[nodiscard]] static result<std::unique_ptr<verbs_fencing>> start(verbs_region& region,
                                                                    verbs_fencing_config cfg = {}) {
    if (cfg.poll.count() <= 0 || cfg.settle.count() < 0) {
      return fail(errc::invalid_config, "verbs_fencing: poll must be > 0 and settle >= 0");
    }
    auto f = index_fencer::attach(region.base());
    if (!f) return std::move(f).take_failure();
    std::unique_ptr<verbs_fencing> v(new verbs_fencing(region, std::move(*f), cfg));
    v->watcher_ = std::thread([p = v.get()] { p->watch(); });
    return v;
  }

  verbs_fencing(const verbs_fencing&) = delete;
  verbs_fencing& operator=(const verbs_fencing&) = delete;
  ~verbs_fencing() { stop(); }

  // The bootstrap handler's work for a verbs hello: refused when its identity was fenced,
  // otherwise a queue pair accepted on the region and recorded under the identity.
  [[nodiscard]] result<bootstrap_server::session> admit(const bootstrap::hello& h) {
    if (h.transport != bootstrap::transport_kind::verbs || !h.endpoint) {
      return fail(errc::not_supported,
                  "this memory node serves verbs; the hello needs a queue pair");
    }
    std::lock_guard lock(mutex_);
    if (h.identity != 0 && banned_.contains(h.identity)) {
      ++counts_.refused;
      return fail(errc::fenced, "client identity " + std::to_string(h.identity) +
                                    " was declared dead and cut off; register anew");
    }
    auto accepted = region_.accept(*h.endpoint);
    if (!accepted) return std::move(accepted).take_failure();
    auto qp = std::make_shared<verbs_qp>(std::move(accepted->second));
    if (h.identity != 0) {
      const auto expired = [](const std::weak_ptr<verbs_qp>& w) { return w.expired(); };
      if (qps_.size() >= prune_at_) {
        // Identities whose queue pairs have all gone (clients that left): forgotten, at a cost
        // of O(1) per admission (each sweep waits for the map to double).
        for (auto it = qps_.begin(); it != qps_.end();) {
          std::erase_if(it->second, expired);
          it = it->second.empty() ? qps_.erase(it) : std::next(it);
        }
        prune_at_ = std::max<std::size_t>(min_prune_at, 2 * qps_.size());
      }
      auto& list = qps_[h.identity];
      std::erase_if(list, expired);
      list.push_back(qp);
    }
    return bootstrap_server::session{std::move(accepted->first), std::move(qp)};
  }

  // One pass of the watcher, at once (tests; the thread runs it every poll). For each entry
  // declared dead (still dead when its turn comes): ban its identity, move every queue pair
  // admitted under it to the error state (those that will not go are kept, tried again next
  // pass, and the entry is not fenced meanwhile), and once all are cut and `settle` has passed
  // (requests the responders had accepted are done), store the fence word.
  void fence_due() {
    std::lock_guard pass(pass_mutex_);  // one pass at a time
    const auto now = std::chrono::steady_clock::now();
    std::map<std::pair<std::uint32_t, std::uint32_t>, std::chrono::steady_clock::time_point> cut;
    fencer_.clear_stale();
    for (const fence_target& t : fencer_.due()) {
      if (!fencer_.still_due(t)) continue;
      std::vector<std::shared_ptr<verbs_qp>> qps;
      {
        std::lock_guard lock(mutex_);
        banned_.insert(t.identity);  // from here on no hello of it gets a queue pair
        if (auto it = qps_.find(t.identity); it != qps_.end()) {
          for (auto& w : it->second) {
            if (auto qp = w.lock()) qps.push_back(std::move(qp));
          }
          qps_.erase(it);
        }
      }
      std::vector<std::weak_ptr<verbs_qp>> kept;
      for (auto& qp : qps) {
        if (qp->to_error()) {
          std::lock_guard lock(mutex_);
          ++counts_.queue_pairs;
        } else {
          kept.push_back(qp);
        }
      }
      const auto key = std::make_pair(t.entry, t.incarnation);
      std::lock_guard lock(mutex_);
      if (!kept.empty()) {
        ++counts_.failed;  // not fenced: tried again next pass (recovery_delay meanwhile)
        auto& list = qps_[t.identity];
        list.insert(list.end(), kept.begin(), kept.end());
        continue;
      }
      const auto since = cut_since_.find(key);
      const auto at = since == cut_since_.end() ? now : since->second;
      if (now - at >= cfg_.settle && fencer_.mark_fenced(t)) {
        ++counts_.fenced;
        continue;
      }
      cut[key] = at;  // cut; fenced on a later pass
    }
    cut_since_ = std::move(cut);  // entries no longer due are forgotten
  }

  [[nodiscard]] counts stats() const {
    std::lock_guard lock(mutex_);
    return counts_;
  }

  // Client identities whose queue pairs are remembered (for a fence to cut them).
  [[nodiscard]] std::size_t tracked_identities() const {
    std::lock_guard lock(mutex_);
    return qps_.size();
  }

  // Stops the watcher (also done by the destructor). Idempotent.
  void stop() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    if (watcher_.joinable()) watcher_.join();
  }

 private:
  verbs_fencing(verbs_region& region, index_fencer fencer, verbs_fencing_config cfg)
      : region_(region), fencer_(std::move(fencer)), cfg_(cfg) {}

  void watch() {
    std::unique_lock lock(mutex_);
    while (!stopping_) {
      wake_.wait_for(lock, cfg_.poll, [this] { return stopping_; });
      if (stopping_) break;
      lock.unlock();
      fence_due();
      lock.lock();
    }
  }

  verbs_region& region_;
  index_fencer fencer_;
  verbs_fencing_config cfg_;
  std::mutex pass_mutex_;     // a pass of fence_due(): the fencer's one thread at a time
  mutable std::mutex mutex_;  // the queue pairs, banned identities, counts, stopping_
  std::condition_variable wake_;
  bool stopping_ = false;
  // Queue pairs by client identity; entries of clients that left are swept once the map has
  // doubled since the last sweep (they grew without end before).
  std::unordered_map<std::uint64_t, std::vector<std::weak_ptr<verbs_qp>>> qps_;
  static constexpr std::size_t min_prune_at = 32;
  std::size_t prune_at_ = min_prune_at;
  std::unordered_set<std::uint64_t> banned_;
  // (entry, incarnation) cut off and not fenced yet: since when (the fence pass's own).
  std::map<std::pair<std::uint32_t, std::uint32_t>, std::chrono::steady_clock::time_point>
      cut_since_;
  counts counts_;
  std::thread watcher_;
};

}  // namespace kvc::inline v0
