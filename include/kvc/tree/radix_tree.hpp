// kvc/tree/radix_tree.hpp — the local prefix cache: a path-compressed radix tree over chained
// block hashes, with a host-chosen payload per block, pins, and leaf-first eviction through an
// EvictionPolicy.
//
// Shape. Each node holds a run of consecutive blocks (an edge of the radix tree); a node's
// children are keyed by the hash of their first block. Inserting a chain that diverges inside a
// run splits the run; a run is stored in segments of at most 256 blocks (one node each). Because
// block hashes are chained, a block is cached only if its parent is:
// the tree is prefix-closed, and eviction keeps it so by removing only leaf blocks (the last
// block of a node without children).
//
// Blocks. Each cached block is one `block` object at a fixed address until it is removed: match
// hands out pointers to them (handles), valid until the block is removed (a lease keeps it).
// A block derives from Policy::hook, so the policy needs no allocation of its own. Blocks and
// their hashes live in segments: one allocation per inserted run of up to 256 blocks, sized to
// it, shared by the nodes a split makes of it (no block moves), grown in place by a leaf while
// it has free slots after the leaf's run, and freed with its last block.
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
// Memory per cached block, beyond the payload: sizeof(Hash), and the block itself: the policy's
// hook and 8 for its node, rounded to alignment. With hash64: 32 bytes with LRU or FIFO, 40 with
// SIEVE, 48 with S3-FIFO or LFU; plus, shared by a node's run, the node (48 bytes from malloc),
// its children array, and 16 per segment. Slots freed at the end of a node that is not a leaf
// stay allocated until its segment empties. bm_radix_tree measures it: 40 bytes per block with
// an 8-byte payload and LRU for a long chain, 55 for a forest of short chains.
//
// Complexity. match: O(nodes on the path x log(children) + blocks compared), no allocation.
// insert: O(chain length) plus, per new run, one node and one segment per 256 blocks, and one
// node per split. evict: amortised O(1) per block. acquire: as match, plus one split. Nothing
// throws except allocation failure (std::bad_alloc).
//
// Ownership: the tree is neither copyable nor movable (nodes point at its root).
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
#include <cstring>
#include <functional>
#include <memory>
#include <new>
#include <optional>
#include <span>
#include <type_traits>
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

  // One cached block. Its address is stable until the block is removed. Its hash lives beside
  // it in its segment (the caller of match() has it in its chain; for_each() passes it).
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
    if (in_node < deepest->count) deepest = split(deepest, in_node);
    for (node* n = deepest; n != &root_; n = n->parent) ++n->pins;
    ++leases_;
    return lease(this, deepest, matched);
  }

  // Caches `chain`: blocks not cached yet get a payload from make_payload(index in chain), called
  // in chain order. Records a use of the whole chain. Returns what was there and what is new.
  // If make_payload (or an allocation) throws, every block this call added is taken out again
  // (in every segment it filled) and the exception propagates; the tree is as before, but for a
  // split it made, which changes no match.
  template <class MakePayload>
  requires std::is_invocable_r_v<Payload, MakePayload&, std::size_t> insert_result
  insert(std::span<const Hash> chain, MakePayload&& make_payload) {
    auto [deepest, existing, in_node] = locate(chain);
    insert_result result{existing, chain.size() - existing};
    if (result.inserted > 0) {
      node* target = deepest;
      if (in_node < deepest->count) target = split(deepest, in_node);
      // If make_payload or an allocation throws, the guard takes the new blocks out again.
      unwind_guard guard{this, target, 0};
      for (std::size_t next = existing; next < chain.size();) {
        // Grow an unpinned leaf in place while its segment has room; else start a child.
        const bool grows = target != &root_ && target->children.empty() && target->pins == 0 &&
                           target->first + target->count < target->seg->capacity();
        if (!grows) {
          target =
              new_child(target, chain[next], std::min(chain.size() - next, segment::max_capacity));
          guard.deepest = target;
        }
        const std::size_t end =
            std::min(chain.size(), next + target->seg->capacity() - target->first - target->count);
        for (; next < end; ++next, ++guard.added) {
          target->seg->construct(target->first + target->count, chain[next],
                                 [&] { return block(target, std::invoke(make_payload, next)); });
          ++target->count;
        }
      }
      guard.tree = nullptr;
      // The policy learns of the deepest block first.
      const location above = touch_new(target, result.inserted);
      size_ += result.inserted;
      deepest = above.deepest;
      in_node = above.in_node;
    }
    touch_path(deepest, in_node);
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
    const node* n = static_cast<block&>(*h).owner_;
    return n->hash(n->count - 1);
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
    while (n->count > keep) pop_block(*n, on_erase);
    if (n->count == 0) remove_node(n);
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
    return n->pins == 0 && n->children.empty() && &n->blk(n->count - 1) == &b;
  }
  // True when a lease pins the block.
  [[nodiscard]] static bool pinned(const block& b) noexcept { return b.owner_->pins != 0; }
  // The block's hash.
  [[nodiscard]] static const Hash& hash_of(const block& b) noexcept {
    return b.owner_->hash(index_in_run(b));
  }
  // The block before b in its chain, or nullptr for the first block of a chain.
  [[nodiscard]] static const block* parent_of(const block& b) noexcept {
    const node* n = b.owner_;
    if (const std::size_t i = index_in_run(b); i > 0) return &n->blk(i - 1);
    const node* up = n->parent;
    return up->count > 0 ? &up->blk(up->count - 1) : nullptr;  // the root holds no block
  }

  // Removes block b when it is evictable (a leaf, unpinned), calling on_remove(hash, payload&&)
  // (it must not throw); false, changing nothing, when it is not. For hosts that choose victims
  // themselves, as a tiered pool does when a block's last copy leaves.
  template <class OnRemove>
  bool erase_leaf(block& b, OnRemove&& on_remove) {
    if (!evictable(b)) return false;
    remove_leaf_block(b, on_remove);
    return true;
  }

 private:
  // Storage for consecutive blocks of one chain: a single allocation holding a header, the
  // blocks, then their hashes (so a match scans hashes only). An inserted run gets segments of at
  // most max_capacity blocks, each sized to what it holds; a split makes two nodes share one, and
  // a leaf grows in place into free slots after its run. Slots are handed out only at the
  // segment's end, so the nodes sharing a segment are a chain of ancestors whose runs follow each
  // other and the slots after a leaf's run are free. Freed with its last block.
  class segment {
   public:
    static constexpr std::size_t max_capacity = 256;

    static segment* make(std::size_t capacity) {
      KVC_ASSERT(capacity > 0 && capacity <= max_capacity, "segment capacity");
      void* raw = alignment > __STDCPP_DEFAULT_NEW_ALIGNMENT__
                      ? ::operator new (bytes(capacity), std::align_val_t{alignment})
                      : ::operator new(bytes(capacity));
      return ::new (raw) segment(static_cast<std::uint32_t>(capacity));
    }
    static void free(segment* s) noexcept {
      KVC_ASSERT(s->live_ == 0, "a segment freed with live blocks");
      s->~segment();
      if constexpr (alignment > __STDCPP_DEFAULT_NEW_ALIGNMENT__) {
        ::operator delete (static_cast<void*>(s), std::align_val_t{alignment});
      } else {
        ::operator delete(static_cast<void*>(s));
      }
    }

    [[nodiscard]] std::size_t capacity() const noexcept { return capacity_; }
    [[nodiscard]] std::uint32_t live() const noexcept { return live_; }

    void* block_slot(std::size_t i) noexcept { return base() + blocks_offset + i * sizeof(block); }
    block& blk(std::size_t i) const noexcept {
      return *std::launder(reinterpret_cast<block*>(base() + blocks_offset + i * sizeof(block)));
    }
    const Hash* hashes() const noexcept {
      return std::launder(reinterpret_cast<const Hash*>(base() + hashes_offset(capacity_)));
    }
    void* hash_slot(std::size_t i) noexcept {
      return base() + hashes_offset(capacity_) + i * sizeof(Hash);
    }

    // Slot i gets `h` and a block made by make() (which may throw: then nothing changed).
    template <class Make>
    void construct(std::size_t i, const Hash& h, Make&& make) {
      ::new (block_slot(i)) block(make());
      ::new (hash_slot(i)) Hash(h);
      ++live_;
    }
    void destroy(std::size_t i) noexcept {
      blk(i).~block();
      --live_;
    }

   private:
    explicit segment(std::uint32_t capacity) noexcept : capacity_(capacity) {}

    static constexpr std::size_t round_up(std::size_t n, std::size_t a) noexcept {
      return (n + a - 1) / a * a;
    }
    static constexpr std::size_t alignment =
        std::max({alignof(std::uint64_t), alignof(block), alignof(Hash)});
    static constexpr std::size_t blocks_offset =
        round_up(2 * sizeof(std::uint32_t), alignof(block));
    static constexpr std::size_t hashes_offset(std::size_t capacity) noexcept {
      return round_up(blocks_offset + capacity * sizeof(block), alignof(Hash));
    }
    static constexpr std::size_t bytes(std::size_t capacity) noexcept {
      return hashes_offset(capacity) + capacity * sizeof(Hash);
    }
    unsigned char* base() const noexcept {
      return reinterpret_cast<unsigned char*>(const_cast<segment*>(this));
    }

    std::uint32_t capacity_;
    std::uint32_t live_ = 0;
  };
  static_assert(std::is_trivially_destructible_v<Hash>);

  // A node's children, {first hash, node}, sorted by hash: one pointer in the node (a leaf
  // allocates nothing), the size and capacity in front of the entries.
  class child_array {
   public:
    struct entry {
      Hash first;  // the child's first block
      node* second;
    };
    static_assert(std::is_trivially_copyable_v<entry>);

    child_array() = default;
    child_array(const child_array&) = delete;
    child_array& operator=(const child_array&) = delete;
    ~child_array() { clear(); }

    [[nodiscard]] bool empty() const noexcept { return size() == 0; }
    [[nodiscard]] std::size_t size() const noexcept { return p_ == nullptr ? 0 : p_->size; }
    entry* begin() const noexcept { return p_ == nullptr ? nullptr : entries(p_); }
    entry* end() const noexcept { return begin() + size(); }

    // Room for n entries (may throw std::bad_alloc; then nothing changed).
    void reserve(std::size_t n) {
      if (n <= capacity()) return;
      auto* grown = static_cast<header*>(::operator new(offset + n * sizeof(entry)));
      grown->size = static_cast<std::uint32_t>(size());
      grown->capacity = static_cast<std::uint32_t>(n);
      if (p_ != nullptr) std::memcpy(entries(grown), entries(p_), size() * sizeof(entry));
      ::operator delete(p_);
      p_ = grown;
    }
    // Inserts before `pos` (may throw std::bad_alloc; then nothing changed).
    void insert(entry* pos, const entry& e) {
      const std::size_t at = pos == nullptr ? 0 : static_cast<std::size_t>(pos - begin());
      if (size() == capacity()) reserve(std::max<std::size_t>(1, 2 * capacity()));
      entry* first = entries(p_);
      std::memmove(first + at + 1, first + at, (p_->size - at) * sizeof(entry));
      ::new (static_cast<void*>(first + at)) entry(e);
      ++p_->size;
    }
    void push_back(const entry& e) { insert(end(), e); }
    void erase(entry* pos) noexcept {
      std::memmove(pos, pos + 1, static_cast<std::size_t>(end() - pos - 1) * sizeof(entry));
      --p_->size;
    }
    void clear() noexcept {
      ::operator delete(p_);
      p_ = nullptr;
    }

   private:
    struct header {
      std::uint32_t size;
      std::uint32_t capacity;
    };
    static constexpr std::size_t offset =
        (sizeof(header) + alignof(entry) - 1) / alignof(entry) * alignof(entry);
    static_assert(alignof(entry) <= __STDCPP_DEFAULT_NEW_ALIGNMENT__);
    static entry* entries(header* h) noexcept {
      return reinterpret_cast<entry*>(reinterpret_cast<unsigned char*>(h) + offset);
    }
    [[nodiscard]] std::size_t capacity() const noexcept { return p_ == nullptr ? 0 : p_->capacity; }

    header* p_ = nullptr;
  };

  struct node {
    node* parent = nullptr;
    segment* seg = nullptr;   // holds the run: slots [first, first + count)
    std::uint32_t first = 0;  //
    std::uint32_t count = 0;  // blocks in the run
    std::uint32_t pins = 0;   // leases covering this whole node
    child_array children;

    [[nodiscard]] const Hash* hashes() const noexcept { return seg->hashes() + first; }
    [[nodiscard]] const Hash& hash(std::size_t i) const noexcept { return hashes()[i]; }
    [[nodiscard]] block& blk(std::size_t i) const noexcept { return seg->blk(first + i); }
  };

  struct location {
    node* deepest;        // node holding the last matched block (the root when none)
    std::size_t matched;  // blocks matched
    std::size_t in_node;  // of them, in `deepest`
  };

  template <class Handle>
  std::size_t match_into(std::span<const Hash> chain, std::span<Handle> out) const noexcept {
    std::size_t matched = 0;
    walk(chain, [&](const node& n, std::size_t count) {
      for (std::size_t i = 0; i < count && matched + i < out.size(); ++i)
        out[matched + i] = &n.blk(i);
      matched += count;
    });
    return matched;
  }

  static std::uint64_t key_of(const Hash& h) noexcept { return std::hash<Hash>{}(h); }

  static std::size_t index_in_run(const block& b) noexcept {
    const auto* first = reinterpret_cast<const unsigned char*>(&b.owner_->blk(0));
    return static_cast<std::size_t>(reinterpret_cast<const unsigned char*>(&b) - first) /
           sizeof(block);
  }

  static const node* find_child(const node& n, const Hash& first) noexcept {
    auto it = std::lower_bound(n.children.begin(), n.children.end(), first,
                               [](const auto& c, const Hash& h) { return c.first < h; });
    return it != n.children.end() && it->first == first ? it->second : nullptr;
  }

  // Walks the longest cached prefix of chain, calling visit(node, count) per run it matches
  // (count blocks from the run's start).
  template <class Visit>
  location walk(std::span<const Hash> chain, Visit&& visit) const noexcept {
    const node* n = &root_;
    std::size_t pos = 0;
    std::size_t in_node = 0;
    while (pos < chain.size()) {
      const node* child = find_child(*n, chain[pos]);
      if (child == nullptr) break;
      const std::size_t limit = std::min<std::size_t>(child->count, chain.size() - pos);
      const Hash* run = child->hashes();
      std::size_t k = 1;  // the first hash matched in find_child
      while (k < limit && run[k] == chain[pos + k]) ++k;
      visit(*child, k);
      pos += k;
      n = child;
      in_node = k;
      if (k < child->count) break;
    }
    return location{const_cast<node*>(n), pos, in_node};
  }
  location locate(std::span<const Hash> chain) noexcept {
    return walk(chain, [](const node&, std::size_t) {});
  }

  // Records a use of the path ending at block in_node of `deepest`, deepest block first.
  void touch_path(node* deepest, std::size_t in_node) noexcept {
    for (node* n = deepest; n != &root_; n = n->parent, in_node = n->count) {
      for (std::size_t i = in_node; i-- > 0;) policy_.access(n->blk(i), key_of(n->hash(i)));
    }
  }
  // Tells the policy of the `fresh` blocks that end at `deepest`'s run, deepest first; returns
  // the node and in-node position above them, where the cached path they extend ends.
  location touch_new(node* deepest, std::size_t fresh) noexcept {
    node* n = deepest;
    std::size_t count = n->count;
    for (; fresh > 0; --fresh) {
      if (count == 0) {
        n = n->parent;
        count = n->count;
      }
      --count;
      policy_.insert(n->blk(count), key_of(n->hash(count)));
    }
    return location{n, 0, count};
  }

  // Takes the blocks of an insert that threw out again (tree == nullptr once committed).
  struct unwind_guard {
    radix_tree* tree;
    node* deepest;
    std::size_t added;
    ~unwind_guard() {
      if (tree != nullptr) tree->unwind_new(deepest, added);
    }
  };
  struct segment_deleter {
    void operator()(segment* s) const noexcept { segment::free(s); }
  };

  // Takes out the last `added` blocks of the path ending at `deepest` (an insert that threw:
  // the policy has not seen them), and the nodes this leaves empty.
  void unwind_new(node* deepest, std::size_t added) noexcept {
    node* n = deepest;
    for (;;) {
      if (n->count == 0 && n != &root_) {
        node* up = n->parent;
        remove_node(n);
        n = up;
        continue;
      }
      if (added == 0) break;
      n->seg->destroy(n->first + --n->count);
      --added;
    }
  }

  // A new child of `parent` whose run starts with `first`, with an empty segment of `capacity`.
  node* new_child(node* parent, const Hash& first, std::size_t capacity) {
    auto owned = std::make_unique<node>();
    owned->parent = parent;
    std::unique_ptr<segment, segment_deleter> seg(segment::make(capacity));
    auto it = std::lower_bound(parent->children.begin(), parent->children.end(), first,
                               [](const auto& c, const Hash& h) { return c.first < h; });
    parent->children.insert(it, {first, owned.get()});  // may throw: both are freed
    owned->seg = seg.release();
    ++nodes_;
    return owned.release();
  }

  // Splits n after its first k blocks: a new node takes blocks [0, k) and takes n's place under
  // n's parent; n keeps the rest and becomes the new node's only child. Both share n's segment;
  // no block moves. Leases on n stay valid (they cover the new node too, so it starts with n's
  // pins). Returns the new upper node.
  node* split(node* n, std::size_t k) {
    KVC_ASSERT(k > 0 && k < n->count, "split inside the run");
    auto owned = std::make_unique<node>();
    owned->children.reserve(1);  // every allocation happens before anything is relinked
    node* upper = owned.release();
    ++nodes_;
    upper->parent = n->parent;
    upper->pins = n->pins;
    upper->seg = n->seg;
    upper->first = n->first;
    upper->count = static_cast<std::uint32_t>(k);
    for (std::size_t i = 0; i < k; ++i) upper->blk(i).owner_ = upper;
    n->first += static_cast<std::uint32_t>(k);
    n->count -= static_cast<std::uint32_t>(k);
    for (auto& c : upper->parent->children) {
      if (c.second == n) c.second = upper;  // same first hash: the order is kept
    }
    upper->children.push_back({n->hash(0), n});
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
    const std::size_t i = n.count - 1;
    block& b = n.blk(i);
    policy_.erase(b);
    --size_;
    notify(on_remove, n.hash(i), std::move(b.payload_));
    n.seg->destroy(n.first + i);
    --n.count;
  }

  // Frees a node taken out of the tree, and its segment when no other node has blocks there.
  void delete_node(node* n) noexcept {
    if (n->seg != nullptr && n->seg->live() == 0) segment::free(n->seg);
    delete n;
    --nodes_;
  }

  // Removes an empty node from its parent.
  void remove_node(node* n) noexcept {
    KVC_ASSERT(n->count == 0 && n->children.empty(), "remove_node of a non-empty node");
    auto& siblings = n->parent->children;
    siblings.erase(std::find_if(siblings.begin(), siblings.end(),
                                [n](const auto& c) { return c.second == n; }));
    delete_node(n);
  }

  template <class OnRemove>
  void remove_leaf_block(block& b, OnRemove& on_remove) {
    node* n = b.owner_;
    KVC_ASSERT(evictable(b), "the policy chose a block that is not evictable");
    pop_block(*n, on_remove);
    if (n->count == 0) remove_node(n);
  }

  // Removes every block of the subtree rooted at n (n itself when it is not the root), deepest
  // first; frees the nodes.
  template <class OnRemove>
  void clear_subtree(node& n, OnRemove&& on_remove) {
    for (const auto& c : n.children) clear_subtree(*c.second, on_remove);
    n.children.clear();
    while (n.count > 0) pop_block(n, on_remove);
    if (&n != &root_) delete_node(&n);
  }

  template <class Fn>
  static void for_each_in(const node& n, std::size_t depth, Fn& fn) {
    for (std::size_t i = 0; i < n.count; ++i) fn(n.hash(i), n.blk(i), depth++);
    for (const auto& c : n.children) for_each_in(*c.second, depth, fn);
  }

  Policy policy_;
  node root_;
  std::size_t size_ = 0;
  std::size_t nodes_ = 0;
  std::size_t leases_ = 0;
};

}  // namespace kvc::inline v0
