// kvc/tree/radix_tree.hpp — the local prefix cache: a path-compressed radix tree over chained
// block hashes, with a host-chosen payload per block, pins, and leaf-first eviction through an
// EvictionPolicy.
//
// Shape. Each node holds a run of consecutive blocks (an edge of the radix tree); a node's
// children are keyed by the hash of their first block. Inserting a chain that diverges inside a
// run splits the run. Because block hashes are chained, a block is cached only if its parent is:
// the tree is prefix-closed, and eviction keeps it so by removing only leaf blocks (the last
// block of a node without children).
//
// Blocks. Each cached block is one `block` object at a fixed address until it is removed: match
// hands out pointers to them (handles), valid until the block is removed (a lease keeps it).
// A block derives from Policy::hook, so the policy needs no allocation of its own.
//
// Pins. acquire() pins the matched path with an RAII lease: pinned blocks are never evicted or
// erased. Pins are counted per node; when a match ends inside a run, acquire() first splits the
// run there so that a lease always covers whole nodes.
//
// Eviction. evict(n) asks the policy for victims among the evictable blocks (leaf, unpinned) and
// hands each removed block's hash and payload to a callback, so the host frees its memory.
// Accesses are recorded deepest block first, so a parent is always at least as recently used as
// its children: under LRU the victim is always a leaf, and eviction is exact LRU.
//
// Memory per cached block, beyond the payload: sizeof(Hash) and 8 for the block's pointer in the
// node's run, and the block itself: the policy's hook and 8 for its node, rounded to
// alignment. With hash64: 40 bytes with LRU or FIFO, 48 with SIEVE, 56 with S3-FIFO or LFU;
// plus about 120 bytes per node (its header and two arrays), shared by the node's run.
// bm_radix_tree measures it.
//
// Complexity. match: O(nodes on the path x log(children) + blocks compared), no allocation.
// insert: O(chain length) plus one node allocation per new run or split; blocks come from a
// pool (one allocation per 256 blocks). evict: amortised O(1) per block. acquire: as match,
// plus one split. Nothing throws except allocation failure (std::bad_alloc).
//
// Ownership: the tree is neither copyable nor movable (nodes point at its root). Block storage
// grows in 256-block chunks and is reused after eviction, not returned to the system until the
// tree is destroyed: size the tree's capacity, not the pool.
//
// Concurrency: externally synchronised. const members (match, for_each, size, stats) may run
// concurrently with each other; every other member, and destroying or releasing a lease, needs
// exclusive access (for example, a std::shared_mutex held shared for match, unique otherwise).
// The tree must outlive its leases.
//
// Design: docs/design/radix_tree.md.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <new>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "kvc/concepts.hpp"
#include "kvc/config.hpp"
#include "kvc/evict/queue_policy.hpp"
#include "kvc/hash/block_hash.hpp"

namespace kvc::inline v0 {

// What insert() did: chain[0, existing) was cached already, chain[existing, existing + inserted)
// is new.
struct insert_result {
  std::size_t existing = 0;
  std::size_t inserted = 0;
};

template <BlockHash Hash, class Payload, EvictionPolicy Policy = lru_policy>
class radix_tree {
  struct node;

 public:
  using hash_type = Hash;
  using payload_type = Payload;
  using policy_type = Policy;

  // One cached block. Its address is stable until the block is removed. Its hash lives in its
  // node's run (the caller of match() has it in its chain; for_each() passes it).
  class block : public Policy::hook {
   public:
    [[nodiscard]] Payload& payload() noexcept { return payload_; }
    [[nodiscard]] const Payload& payload() const noexcept { return payload_; }

   private:
    friend radix_tree;
    template <class... Args>
    explicit block(node* owner, Args&&... args)
        : owner_(owner), payload_(std::forward<Args>(args)...) {}

    node* owner_;
    Payload payload_;
  };

  // Pins the blocks of a matched path until destroyed or released. Move-only.
  class lease {
   public:
    lease() = default;
    lease(lease&& other) noexcept
        : tree_(std::exchange(other.tree_, nullptr)),
          deepest_(other.deepest_),
          length_(std::exchange(other.length_, 0)) {}
    lease& operator=(lease&& other) noexcept {
      if (this != &other) {
        release();
        tree_ = std::exchange(other.tree_, nullptr);
        deepest_ = other.deepest_;
        length_ = std::exchange(other.length_, 0);
      }
      return *this;
    }
    lease(const lease&) = delete;
    lease& operator=(const lease&) = delete;
    ~lease() { release(); }

    // Blocks pinned: the matched length when acquired.
    [[nodiscard]] std::size_t length() const noexcept { return length_; }
    [[nodiscard]] bool empty() const noexcept { return length_ == 0; }

    // Unpins now (idempotent). Needs the tree's exclusive access, like any other change.
    void release() noexcept {
      if (tree_ != nullptr) tree_->unpin(deepest_);
      tree_ = nullptr;
      length_ = 0;
    }

   private:
    friend radix_tree;
    lease(radix_tree* tree, node* deepest, std::size_t length) noexcept
        : tree_(tree), deepest_(deepest), length_(length) {}

    radix_tree* tree_ = nullptr;
    node* deepest_ = nullptr;
    std::size_t length_ = 0;
  };

  // The policy is constructed from `policy_args`.
  template <class... PolicyArgs>
  explicit radix_tree(PolicyArgs&&... policy_args)
      : policy_(std::forward<PolicyArgs>(policy_args)...) {}
  radix_tree(const radix_tree&) = delete;
  radix_tree& operator=(const radix_tree&) = delete;
  ~radix_tree() {
    KVC_ASSERT(leases_ == 0, "radix_tree destroyed while leases are alive");
    clear_subtree(root_, [](const Hash&, Payload&&) {});
  }

  // Length of the longest cached prefix of `chain`; writes the matched blocks' handles into
  // out[0, min(length, out.size())). Records no access. O(path), allocates nothing.
  std::size_t match(std::span<const Hash> chain, std::span<const block*> out = {}) const noexcept {
    return match_into(chain, out);
  }
  std::size_t match(std::span<const Hash> chain, std::span<block*> out) noexcept {
    return match_into(chain, out);
  }

  // Like match, and records a use of the matched blocks with the policy (deepest first).
  std::size_t access(std::span<const Hash> chain) noexcept {
    auto [deepest, from, count] = locate(chain);
    touch_path(deepest, count);
    return from;
  }

  // Matches `chain`, records the use, and pins the matched blocks. May split the run the match
  // ends in (one node allocation) so that the lease covers whole nodes.
  [[nodiscard]] lease acquire(std::span<const Hash> chain) {
    auto [deepest, matched, in_node] = locate(chain);
    if (matched == 0) return {};
    touch_path(deepest, in_node);
    // A split leaves the matched part [0, in_node) in a new upper node: the lease ends there.
    if (in_node < deepest->run.size()) deepest = split(deepest, in_node);
    for (node* n = deepest; n != &root_; n = n->parent) ++n->pins;
    ++leases_;
    return lease(this, deepest, matched);
  }

  // Caches `chain`: blocks not cached yet get a payload from make_payload(index in chain), called
  // in chain order. Records a use of the whole chain. Returns what was there and what is new.
  // If make_payload (or an allocation) throws, the new blocks are taken out again and the
  // exception propagates; the tree is as before (a split it made stays, which changes nothing).
  template <class MakePayload>
  requires std::is_invocable_r_v<Payload, MakePayload&, std::size_t> insert_result
  insert(std::span<const Hash> chain, MakePayload&& make_payload) {
    auto [deepest, existing, in_node] = locate(chain);
    insert_result result{existing, chain.size() - existing};
    if (result.inserted > 0) {
      node* parent = deepest;
      if (in_node < deepest->run.size()) parent = split(deepest, in_node);
      node* target = parent;
      const bool fresh = target == &root_ || !target->children.empty() || target->pins != 0;
      if (fresh) target = new_child(parent, chain[existing]);
      // Append the new run. If make_payload or an allocation throws, the guard takes the
      // appended blocks (and a fresh node) out again: the tree is as before, less nothing.
      const std::size_t base = target->run.size();
      rollback guard{this, target, base, fresh};
      target->run.reserve(base + result.inserted);
      for (std::size_t i = existing; i < chain.size(); ++i) {
        block* b = pool_.make(target, std::invoke(make_payload, i));
        target->run.push_back({chain[i], b});  // no reallocation: reserved
      }
      guard.target = nullptr;
      // The policy learns of the deepest block first.
      for (std::size_t i = target->run.size(); i-- > base;) {
        policy_.insert(*target->run[i].blk, key_of(target->run[i].hash));
      }
      size_ += result.inserted;
      deepest = target;
      in_node = target->run.size();
    }
    touch_path(deepest, in_node, result.inserted);
    return result;
  }
  // Caches `chain` with payloads[i] for chain[i] (payloads of cached blocks are not used).
  insert_result insert(std::span<const Hash> chain, std::span<const Payload> payloads) {
    KVC_ASSERT(payloads.size() >= chain.size(), "insert: one payload per block of the chain");
    return insert(chain, [&](std::size_t i) { return payloads[i]; });
  }

  // Evicts up to n blocks, leaves first, in the policy's order, skipping pinned ones; calls
  // on_evict(hash, payload&&) for each (it must not throw: an exception ends the program). Returns
  // the number evicted (fewer when nothing else is evictable).
  template <class OnEvict>
  std::size_t evict(std::size_t n, OnEvict&& on_evict) {
    std::size_t evicted = 0;
    for (; evicted < n; ++evicted) {
      auto* h = policy_.victim(
          [](typename Policy::hook& hook) { return evictable(static_cast<const block&>(hook)); });
      if (h == nullptr) break;
      remove_leaf_block(static_cast<block&>(*h), on_evict);
    }
    return evicted;
  }

  // The hash of the block evict(1) would remove now, if any: what an admission filter weighs a
  // newcomer against. May reorder the policy's queues as a victim search does.
  std::optional<Hash> next_victim() {
    auto* h = policy_.victim(
        [](typename Policy::hook& hook) { return evictable(static_cast<const block&>(hook)); });
    if (h == nullptr) return std::nullopt;
    return static_cast<block&>(*h).owner_->run.back().hash;
  }

  // Erases the last block of `chain` and everything cached below it. Returns the number of blocks
  // removed, calling on_erase(hash, payload&&) for each (descendants first; it must not throw); 0
  // when the chain is not fully cached or any of those blocks is pinned.
  template <class OnErase>
  std::size_t erase(std::span<const Hash> chain, OnErase&& on_erase) {
    auto [n, matched, in_node] = locate(chain);
    if (chain.empty() || matched != chain.size() || n->pins != 0) return 0;
    const std::size_t before = size_;
    const std::size_t keep = in_node - 1;  // blocks of n that stay
    for (const auto& c : n->children) clear_subtree(*c.second, on_erase);
    n->children.clear();
    while (n->run.size() > keep) pop_block(*n, on_erase);
    if (n->run.empty()) remove_node(n);
    return before - size_;
  }

  // Calls fn(hash, block, depth) for every cached block, parents before children; depth is the
  // block's index in its chain.
  template <class Fn>
  void for_each(Fn&& fn) const {
    for_each_in(root_, 0, fn);
  }

  [[nodiscard]] std::size_t size() const noexcept { return size_; }
  [[nodiscard]] bool empty() const noexcept { return size_ == 0; }
  [[nodiscard]] std::size_t node_count() const noexcept { return nodes_; }
  [[nodiscard]] Policy& policy() noexcept { return policy_; }
  [[nodiscard]] const Policy& policy() const noexcept { return policy_; }

  // True when the block could be evicted now: a leaf (last of its run, no children), unpinned.
  [[nodiscard]] static bool evictable(const block& b) noexcept {
    const node* n = b.owner_;
    return n->pins == 0 && n->children.empty() && n->run.back().blk == &b;
  }
  // True when a lease pins the block.
  [[nodiscard]] static bool pinned(const block& b) noexcept { return b.owner_->pins != 0; }

 private:
  struct run_entry {
    Hash hash;
    block* blk;
  };

  struct node {
    node* parent = nullptr;
    std::vector<run_entry> run;                    // the node's consecutive blocks
    std::vector<std::pair<Hash, node*>> children;  // sorted by first hash
    std::uint32_t pins = 0;                        // leases covering this whole node
  };

  // Fixed-size storage for blocks: chunks of 256, a free list through released slots.
  class block_pool {
   public:
    block_pool() = default;
    block_pool(const block_pool&) = delete;
    block_pool& operator=(const block_pool&) = delete;

    template <class... Args>
    block* make(Args&&... args) {
      if (free_ == nullptr) grow();
      slot* s = free_;
      slot* next = s->next;  // the block will overwrite it
      block* b = ::new (static_cast<void*>(s->storage)) block(std::forward<Args>(args)...);
      free_ = next;  // only once the block exists: a throwing constructor loses no slot
      return b;
    }
    void destroy(block* b) noexcept {
      b->~block();
      auto* s = reinterpret_cast<slot*>(b);
      s->next = free_;
      free_ = s;
    }

   private:
    union slot {
      slot* next;
      alignas(block) unsigned char storage[sizeof(block)];
    };
    static constexpr std::size_t chunk_blocks = 256;

    void grow() {
      chunks_.push_back(std::make_unique<slot[]>(chunk_blocks));
      slot* chunk = chunks_.back().get();
      for (std::size_t i = chunk_blocks; i-- > 0;) {
        chunk[i].next = free_;
        free_ = &chunk[i];
      }
    }

    std::vector<std::unique_ptr<slot[]>> chunks_;
    slot* free_ = nullptr;
  };

  // Undoes a partial insert on unwinding (target == nullptr once committed).
  struct rollback {
    radix_tree* tree;
    node* target;
    std::size_t base;
    bool fresh;
    ~rollback() {
      if (target == nullptr) return;
      while (target->run.size() > base) {
        tree->pool_.destroy(target->run.back().blk);
        target->run.pop_back();
      }
      if (fresh && target->run.empty()) tree->remove_node(target);
    }
  };

  struct location {
    node* deepest;        // node holding the last matched block (the root when none)
    std::size_t matched;  // blocks matched
    std::size_t in_node;  // of them, in `deepest`
  };

  template <class Handle>
  std::size_t match_into(std::span<const Hash> chain, std::span<Handle> out) const noexcept {
    std::size_t matched = 0;
    walk(chain, [&](const node& n, std::size_t from, std::size_t count) {
      for (std::size_t i = 0; i < count && matched + i < out.size(); ++i) {
        out[matched + i] = n.run[from + i].blk;
      }
      matched += count;
    });
    return matched;
  }

  static std::uint64_t key_of(const Hash& h) noexcept { return std::hash<Hash>{}(h); }

  static const node* find_child(const node& n, const Hash& first) noexcept {
    auto it = std::lower_bound(n.children.begin(), n.children.end(), first,
                               [](const auto& c, const Hash& h) { return c.first < h; });
    return it != n.children.end() && it->first == first ? it->second : nullptr;
  }

  // Walks the longest cached prefix of chain, calling visit(node, first index, count) per run.
  template <class Visit>
  location walk(std::span<const Hash> chain, Visit&& visit) const noexcept {
    const node* n = &root_;
    std::size_t pos = 0;
    std::size_t in_node = 0;
    while (pos < chain.size()) {
      const node* child = find_child(*n, chain[pos]);
      if (child == nullptr) break;
      const std::size_t limit = std::min(child->run.size(), chain.size() - pos);
      std::size_t k = 1;  // the first hash matched in find_child
      while (k < limit && child->run[k].hash == chain[pos + k]) ++k;
      visit(*child, 0, k);
      pos += k;
      n = child;
      in_node = k;
      if (k < child->run.size()) break;
    }
    return location{const_cast<node*>(n), pos, in_node};
  }
  location locate(std::span<const Hash> chain) noexcept {
    return walk(chain, [](const node&, std::size_t, std::size_t) {});
  }

  // Records a use of the path ending at block in_node of `deepest`, deepest block first; the
  // last `skip_new` blocks were just inserted (the policy already has them as new).
  void touch_path(node* deepest, std::size_t in_node, std::size_t skip_new = 0) noexcept {
    node* n = deepest;
    std::size_t count = in_node;
    while (n != &root_) {
      for (std::size_t i = count; i-- > 0;) {
        if (skip_new > 0) {
          --skip_new;
          continue;
        }
        policy_.access(*n->run[i].blk, key_of(n->run[i].hash));
      }
      n = n->parent;
      if (n != &root_) count = n->run.size();
    }
  }

  node* new_child(node* parent, const Hash& first) {
    auto owned = std::make_unique<node>();
    owned->parent = parent;
    auto it = std::lower_bound(parent->children.begin(), parent->children.end(), first,
                               [](const auto& c, const Hash& h) { return c.first < h; });
    parent->children.insert(it, {first, owned.get()});  // may throw: owned still frees it
    ++nodes_;
    return owned.release();
  }

  // Splits n after its first k blocks: a new node takes blocks [0, k) and takes n's place under
  // n's parent; n keeps the rest and becomes the new node's only child. Leases on n stay valid
  // (they cover the new node too, so it starts with n's pins). Returns the new upper node.
  node* split(node* n, std::size_t k) {
    KVC_ASSERT(k > 0 && k < n->run.size(), "split inside the run");
    auto owned = std::make_unique<node>();
    owned->run.assign(n->run.begin(), n->run.begin() + static_cast<std::ptrdiff_t>(k));
    owned->children.reserve(1);  // every allocation happens before anything is relinked
    node* upper = owned.release();
    ++nodes_;
    upper->parent = n->parent;
    upper->pins = n->pins;
    for (const run_entry& e : upper->run) e.blk->owner_ = upper;
    n->run.erase(n->run.begin(), n->run.begin() + static_cast<std::ptrdiff_t>(k));
    n->run.shrink_to_fit();
    for (auto& c : upper->parent->children) {
      if (c.second == n) c.second = upper;  // same first hash: the order is kept
    }
    upper->children.push_back({n->run.front().hash, n});
    n->parent = upper;
    return upper;
  }

  void unpin(node* deepest) noexcept {
    --leases_;
    for (node* n = deepest; n != &root_; n = n->parent) {
      KVC_ASSERT(n->pins > 0, "unpin of an unpinned node");
      --n->pins;
    }
  }

  // Removal callbacks run here: an exception escaping one ends the program (std::terminate)
  // rather than leaving the tree half-updated.
  template <class OnRemove>
  static void notify(OnRemove& on_remove, const Hash& h, Payload&& payload) noexcept {
    on_remove(h, std::move(payload));
  }

  template <class OnRemove>
  void pop_block(node& n, OnRemove& on_remove) {
    const auto [h, b] = n.run.back();
    n.run.pop_back();
    policy_.erase(*b);
    --size_;
    notify(on_remove, h, std::move(b->payload_));
    pool_.destroy(b);
  }

  // Removes an empty node from its parent.
  void remove_node(node* n) noexcept {
    KVC_ASSERT(n->run.empty() && n->children.empty(), "remove_node of a non-empty node");
    auto& siblings = n->parent->children;
    siblings.erase(std::find_if(siblings.begin(), siblings.end(),
                                [n](const auto& c) { return c.second == n; }));
    delete n;
    --nodes_;
  }

  template <class OnRemove>
  void remove_leaf_block(block& b, OnRemove& on_remove) {
    node* n = b.owner_;
    KVC_ASSERT(evictable(b), "the policy chose a block that is not evictable");
    pop_block(*n, on_remove);
    if (n->run.empty()) remove_node(n);
  }

  // Removes every block of the subtree rooted at n (n itself when it is not the root), deepest
  // first; frees the nodes.
  template <class OnRemove>
  void clear_subtree(node& n, OnRemove&& on_remove) {
    for (const auto& c : n.children) clear_subtree(*c.second, on_remove);
    n.children.clear();
    while (!n.run.empty()) pop_block(n, on_remove);
    if (&n != &root_) {
      delete &n;
      --nodes_;
    }
  }

  template <class Fn>
  static void for_each_in(const node& n, std::size_t depth, Fn& fn) {
    for (const run_entry& e : n.run) fn(e.hash, *e.blk, depth++);
    for (const auto& c : n.children) for_each_in(*c.second, depth, fn);
  }

  Policy policy_;
  block_pool pool_;
  node root_;
  std::size_t size_ = 0;
  std::size_t nodes_ = 0;
  std::size_t leases_ = 0;
};

}  // namespace kvc::inline v0
