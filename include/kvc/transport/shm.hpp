// kvc/transport/shm.hpp — the shared-memory transport: a memory node's region is a POSIX
// shared-memory segment that client processes on the same host map, and one-sided operations are
// executed by the client's CPU with atomics. No process serves anything: like RDMA, the memory
// node's CPU is not involved, and clients in different processes race for real.
//
// shm_region creates a segment (mode 0600, so only the owner's processes attach), writes the
// region header and removes the segment's name when destroyed (mapped clients keep their mapping).
// shm_transport attaches segments by name, checks their headers, and executes batches.
//
// Guarantees (those of the Transport concept, docs/design/transport.md):
// - CAS and FAA are atomic 8-byte read-modify-writes (seq_cst) against every other operation of
//   every process.
// - READ and WRITE copy 8-byte words with acquire loads and release stores (bytes at unaligned
//   edges one by one): a READ racing a WRITE sees each aligned word whole, old or new, but the
//   words of one READ may come from different moments (torn at 8-byte granularity). Protocols
//   access a given word with one width (8-byte words at 8-byte offsets); mixing byte and word
//   accesses to the same bytes is outside the C++ memory model's data-race-free guarantee.
// - A batch's operations execute in posting order, all of them during ring(), and every other
//   client sees them take effect in that order: a WRITE then CAS is seen in that order by a
//   process that READs the CAS'd word then the data, and a WRITE then READ is fenced (seq_cst) so
//   that two clients each writing their flag then reading the other's cannot both miss.
// - Bounds are checked per operation (errc::out_of_range, nothing touched); unknown nodes give
//   errc::invalid_argument.
//
// Concurrency: shm_transport is safe to use from many threads at once (each with its own
// batches); attach() and add_node() are not concurrent with anything else. Design:
// docs/design/transport.md.
#pragma once

#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "kvc/error.hpp"
#include "kvc/transport/batch.hpp"
#include "kvc/transport/bootstrap.hpp"
#include "kvc/transport/region.hpp"
#include "kvc/transport/remote_ptr.hpp"

namespace kvc::inline v0 {

namespace detail {

// Copies n bytes out of shared memory: 8-byte acquire loads for the aligned middle.
inline void copy_from_shared(std::byte* dst, const std::byte* src, std::size_t n) noexcept {
  auto* s = const_cast<std::byte*>(src);  // atomic_ref needs a non-const object; only loads here
  while (n > 0 && reinterpret_cast<std::uintptr_t>(s) % 8 != 0) {
    *dst++ = std::atomic_ref<std::byte>(*s++).load(std::memory_order_acquire);
    --n;
  }
  for (; n >= 8; n -= 8, s += 8, dst += 8) {
    const std::uint64_t w = std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(s))
                                .load(std::memory_order_acquire);
    std::memcpy(dst, &w, 8);
  }
  for (; n > 0; --n) *dst++ = std::atomic_ref<std::byte>(*s++).load(std::memory_order_acquire);
}

// Copies n bytes into shared memory: 8-byte release stores for the aligned middle.
inline void copy_to_shared(std::byte* dst, const std::byte* src, std::size_t n) noexcept {
  while (n > 0 && reinterpret_cast<std::uintptr_t>(dst) % 8 != 0) {
    std::atomic_ref<std::byte>(*dst++).store(*src++, std::memory_order_release);
    --n;
  }
  for (; n >= 8; n -= 8, src += 8, dst += 8) {
    std::uint64_t w;
    std::memcpy(&w, src, 8);
    std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(dst))
        .store(w, std::memory_order_release);
  }
  for (; n > 0; --n) std::atomic_ref<std::byte>(*dst++).store(*src++, std::memory_order_release);
}

inline std::string errno_text(std::string_view what, std::string_view name, int err) {
  std::string text(what);
  text += ' ';
  text += name;
  text += ": ";
  text += std::strerror(err);
  return text;
}

// A full fence: seq_cst, so that a store before it and a load after it are not reordered as any
// other thread or process sees them. ThreadSanitizer does not model fences (GCC refuses them
// under -fsanitize=thread): there a seq_cst read-modify-write, a locked instruction that drains
// the store buffer on x86 as the fence does, stands in.
inline void full_fence() noexcept {
#if defined(__SANITIZE_THREAD__)
  static std::atomic<unsigned> drain{0};
  drain.fetch_add(0, std::memory_order_seq_cst);
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
  static std::atomic<unsigned> drain{0};
  drain.fetch_add(0, std::memory_order_seq_cst);
#else
  std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
#else
  std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
}

// Executes one validated operation against a region mapped at `base`.
inline void execute_on_mapping(const operation& op, std::byte* base) noexcept {
  std::byte* remote = base + op.remote.offset();
  switch (op.kind) {
    case op_kind::read:
      copy_from_shared(op.local.data, remote, op.local.size);
      break;
    case op_kind::write:
      copy_to_shared(remote, op.local.data, op.local.size);
      break;
    case op_kind::cas: {
      std::uint64_t expected = op.compare;
      std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(remote))
          .compare_exchange_strong(expected, op.swap, std::memory_order_seq_cst);
      std::memcpy(op.local.data, &expected, 8);  // the previous value, swapped or not
      break;
    }
    case op_kind::faa: {
      const std::uint64_t old =
          std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(remote))
              .fetch_add(op.compare, std::memory_order_seq_cst);
      std::memcpy(op.local.data, &old, 8);
      break;
    }
  }
}

// Asks the CPU to start loading the first line a validated READ will copy (the hardware streams
// the rest of a longer READ once it is touched). A hint: it orders nothing and changes no memory.
// One prefetch per READ, not a loop over its lines: GCC deletes a loop of nothing but prefetches.
inline void prefetch_read(const operation& op, const std::byte* base) noexcept {
  __builtin_prefetch(base + op.remote.offset(), 0, 3);
}

// A shared-memory segment mapped into this process.
class shm_mapping {
 public:
  shm_mapping() = default;
  shm_mapping(std::byte* base, std::size_t bytes) noexcept : base_(base), bytes_(bytes) {}
  shm_mapping(shm_mapping&& o) noexcept
      : base_(std::exchange(o.base_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  shm_mapping& operator=(shm_mapping&& o) noexcept {
    if (this != &o) {
      reset();
      base_ = std::exchange(o.base_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
    }
    return *this;
  }
  ~shm_mapping() { reset(); }

  [[nodiscard]] std::byte* base() const noexcept { return base_; }
  [[nodiscard]] std::size_t bytes() const noexcept { return bytes_; }

 private:
  void reset() noexcept {
    if (base_ != nullptr) ::munmap(base_, bytes_);
    base_ = nullptr;
  }
  std::byte* base_ = nullptr;
  std::size_t bytes_ = 0;
};

[[nodiscard]] inline result<void> check_segment_name(std::string_view name) {
  bool ok = name.size() >= 2 && name.size() <= 255 && name[0] == '/';
  for (std::size_t i = 1; ok && i < name.size(); ++i) {
    ok = name[i] > ' ' && name[i] <= '~' && name[i] != '/';
  }
  if (!ok) {
    std::string text = "shared-memory segment name \"";
    text += name;
    text += "\" must be '/' and 1 to 254 printable characters without '/'";
    return fail(errc::invalid_argument, std::move(text));
  }
  return {};
}

}  // namespace detail

// A memory node's region as a shared-memory segment. Move-only; the creator removes the name.
// The creator holds a lock on the segment for the region's life: in_use() tells a live node's
// segment from one left behind by a node that died.
class shm_region {
 public:
  // Creates segment `name` ("/kvc-node0") of `bytes` bytes (at least one page beyond the header)
  // and writes the header for node `node`. Fails if the name exists (errc::io_error, EEXIST).
  [[nodiscard]] static result<shm_region> create(std::string_view name, std::size_t bytes,
                                                 node_id node) {
    if (auto ok = detail::check_segment_name(name); !ok) return std::move(ok).take_failure();
    if (bytes < 2 * region_header::reserved_bytes || bytes > remote_ptr::max_offset) {
      return fail(errc::invalid_argument,
                  "region size " + std::to_string(bytes) + " is below 8 KiB or beyond 2^48 bytes");
    }
    std::string owned(name);
    const int fd = ::shm_open(owned.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0) return fail(errc::io_error, detail::errno_text("shm_open", owned, errno));
    // Locked before anything else, for the region's life: in_use() is true from here on (a
    // brief shared lock of in_use() itself is waited for).
    if (::flock(fd, LOCK_EX) != 0) {
      const int err = errno;
      ::close(fd);
      ::shm_unlink(owned.c_str());
      return fail(errc::io_error, detail::errno_text("locking", owned, err));
    }
    // Backed now, not lazily: a sparse segment larger than /dev/shm has room for would kill
    // clients with SIGBUS in the middle of an operation.
    if (const int err = ::posix_fallocate(fd, 0, static_cast<off_t>(bytes)); err != 0) {
      ::close(fd);
      ::shm_unlink(owned.c_str());
      return fail(
          errc::io_error,
          detail::errno_text("reserving " + std::to_string(bytes) + " bytes for", owned, err) +
              (err == ENOSPC ? " (is /dev/shm large enough?)" : ""));
    }
    bootstrap::unique_fd held(fd);
    void* base = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    const int err = errno;
    if (base == MAP_FAILED) {
      ::shm_unlink(owned.c_str());
      return fail(errc::io_error, detail::errno_text("mmap", owned, err));
    }
    shm_region region;
    region.name_ = std::move(owned);
    region.lock_ = std::move(held);
    region.map_ = detail::shm_mapping(static_cast<std::byte*>(base), bytes);
    // Transparent huge pages for the segment where the kernel's shmem settings allow them.
    const bool huge = ::madvise(base, bytes, MADV_HUGEPAGE) == 0;
    write_region_header(static_cast<std::byte*>(base), bytes, node, transport_kind::shm,
                        huge ? region_header::flag_huge_pages : 0);
    return region;
  }

  // Whether segment `name` exists and its creator still holds it (a running node): a segment
  // left behind by a node that died is not in use, and may be removed.
  [[nodiscard]] static bool in_use(std::string_view name) {
    const std::string owned(name);
    bootstrap::unique_fd fd(::shm_open(owned.c_str(), O_RDONLY, 0));
    if (!fd) return false;
    return ::flock(fd.get(), LOCK_SH | LOCK_NB) != 0 && errno == EWOULDBLOCK;
  }

  shm_region() = default;
  shm_region(shm_region&& o) noexcept
      : name_(std::exchange(o.name_, std::string())),
        map_(std::move(o.map_)),
        lock_(std::move(o.lock_)) {}
  shm_region& operator=(shm_region&& o) noexcept {
    if (this != &o) {
      unlink();
      name_ = std::exchange(o.name_, std::string());
      map_ = std::move(o.map_);
      lock_ = std::move(o.lock_);
    }
    return *this;
  }
  ~shm_region() { unlink(); }

  [[nodiscard]] const std::string& name() const noexcept { return name_; }
  [[nodiscard]] std::size_t bytes() const noexcept { return map_.bytes(); }
  [[nodiscard]] std::byte* base() const noexcept { return map_.base(); }
  [[nodiscard]] const region_header& header() const noexcept {
    return *reinterpret_cast<const region_header*>(map_.base());
  }
  // The header, for the component that formats the region's contents (layout words) before
  // clients are told about the region; afterwards clients read it concurrently.
  [[nodiscard]] region_header& header() noexcept {
    return *reinterpret_cast<region_header*>(map_.base());
  }

 private:
  void unlink() noexcept {
    if (!name_.empty()) ::shm_unlink(name_.c_str());
    name_.clear();
  }
  std::string name_;
  detail::shm_mapping map_;
  bootstrap::unique_fd lock_;  // the segment, locked while this region lives
};

class shm_transport {
  struct node_map {
    detail::shm_mapping map;
    std::string name;
  };
  using node_table = std::vector<node_map>;  // indexed by node id; unmapped ids have no base

 public:
  // Memory needing no registration: every address of the process is reachable.
  struct registration {
    local_buffer buf;
    [[nodiscard]] local_buffer buffer() const noexcept { return buf; }
  };

  class batch : public synchronous_batch {
   public:
    batch() = default;
    // Executes every operation, in posting order.
    void ring() {
      KVC_ASSERT(!rung() && !done(), "ring() twice without clear()");
      mark_rung();
      const auto ops = operations();
      const std::span<errc> status = statuses();
      if (KVC_UNLIKELY(ops.size() > limit_)) refuse_over_limit();
      node_cache cache;
      // First the lines every READ will copy are requested, before any operation runs: their
      // cache and TLB misses overlap (as a NIC pipelines the READs of one doorbell) instead of
      // each READ waiting for its own in turn. Reads of an index round are what misses most (a
      // block's buckets lie anywhere in the region); the atomics and WRITEs that follow a round
      // of READs mostly find their lines in cache, and prefetching those only cost time. A hint
      // only: an operation that fails its check below was prefetched inside its region or not
      // at all.
      if (ops.size() > 1) {
        for (const operation& op : ops) {
          if (op.kind != op_kind::read) continue;
          const detail::shm_mapping* m = cache.find(nodes_, op.remote.node());
          if (m != nullptr && op.remote.offset() < m->bytes()) detail::prefetch_read(op, m->base());
        }
      }
      // Then each operation is checked and run, in order: one that fails its check marks the
      // later operations on its node not executed (the earlier ones ran), as a queue pair does.
      bool stored = false;  // a WRITE ran since the last full fence
      for (std::size_t i = 0; i < ops.size(); ++i) {
        if (status[i] != errc{}) continue;  // not executed after a failure, or over the limit
        const operation& op = ops[i];
        const detail::shm_mapping* m = cache.find(nodes_, op.remote.node());
        if (KVC_UNLIKELY(m == nullptr)) {
          fail_op(i, errc::invalid_argument, "no memory node with that id is attached");
          continue;
        }
        if (const errc e = check(op, m->bytes()); KVC_UNLIKELY(e != errc{})) {
          fail_check(i, e, m->bytes());
          continue;
        }
        // Release stores may wait in the store buffer while later loads go ahead (x86 too):
        // a READ after a WRITE fences first, so every client sees the batch's operations in
        // posting order (a store-buffering pattern across clients stays sequentially
        // consistent). CAS and FAA are full fences themselves.
        if (op.kind == op_kind::read && stored) detail::full_fence();
        stored = op.kind == op_kind::write;  // a fence or an atomic drained the earlier ones
        detail::execute_on_mapping(op, m->base());
      }
      mark_done();
    }

   private:
    friend shm_transport;
    batch(const node_table* nodes, std::size_t limit) noexcept : nodes_(nodes), limit_(limit) {}
    // A node given more operations than the limit fails them all, unposted, as a verbs queue pair
    // would (the first errc::invalid_argument, the rest not executed).
    [[gnu::noinline]] void refuse_over_limit() {
      const auto ops = operations();
      std::vector<std::size_t> count;
      for (const operation& op : ops) {
        if (op.remote.node() >= count.size()) count.resize(std::size_t{op.remote.node()} + 1);
        ++count[op.remote.node()];
      }
      for (std::size_t i = 0; i < ops.size(); ++i) {
        const std::size_t n = count[ops[i].remote.node()];
        if (n > limit_ && statuses()[i] == errc{}) {
          fail_op(i, errc::invalid_argument,
                  std::to_string(n) + " operations for one node in a batch; the limit is " +
                      std::to_string(limit_) + " (shm_transport::set_max_ops_per_node)");
        }
      }
    }
    // The mapping of a node, looked up once per run of operations on the same node.
    struct node_cache {
      node_id id = 0;
      const detail::shm_mapping* map = nullptr;
      const detail::shm_mapping* find(const node_table* nodes, node_id node) noexcept {
        if (map != nullptr && node == id) return map;
        if (nodes == nullptr || node >= nodes->size() || (*nodes)[node].map.base() == nullptr) {
          return nullptr;
        }
        id = node;
        map = &(*nodes)[node].map;
        return map;
      }
    };
    const node_table* nodes_ = nullptr;
    std::size_t limit_ = batch_limit;
  };

  shm_transport() : nodes_(std::make_unique<node_table>()) {}

  // Maps segment `name` as memory node `node` and checks its header (errc::format_mismatch when
  // it is not a kvc region of this format, errc::io_error when it cannot be opened).
  [[nodiscard]] result<void> add_node(node_id node, std::string_view name) {
    if (auto ok = detail::check_segment_name(name); !ok) return ok;
    if (node < nodes_->size() && (*nodes_)[node].map.base() != nullptr) {
      return fail(errc::invalid_argument, "memory node " + std::to_string(node) + " is attached");
    }
    std::string owned(name);
    const int fd = ::shm_open(owned.c_str(), O_RDWR, 0);
    if (fd < 0) return fail(errc::io_error, detail::errno_text("shm_open", owned, errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      const int err = errno;
      ::close(fd);
      return fail(errc::io_error, detail::errno_text("fstat", owned, err));
    }
    const auto bytes = static_cast<std::size_t>(st.st_size);
    if (bytes < sizeof(region_header)) {
      ::close(fd);
      return fail(errc::format_mismatch, owned + " is too small to hold a kvc region header");
    }
    void* base = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    const int err = errno;
    ::close(fd);
    if (base == MAP_FAILED) return fail(errc::io_error, detail::errno_text("mmap", owned, err));
    detail::shm_mapping map(static_cast<std::byte*>(base), bytes);
    region_header h;
    detail::copy_from_shared(reinterpret_cast<std::byte*>(&h), map.base(), sizeof h);
    if (auto ok = check_region_header(h, bytes); !ok) {
      return fail(errc::format_mismatch, owned + ": " + std::move(ok).take_failure().detail);
    }
    if (h.node != node) {
      return fail(errc::format_mismatch, owned + " holds memory node " + std::to_string(h.node) +
                                             ", not " + std::to_string(node));
    }
    if (node >= nodes_->size()) nodes_->resize(std::size_t{node} + 1);
    (*nodes_)[node] = node_map{std::move(map), std::move(owned)};
    return {};
  }

  // Asks the memory node at host:port (kvc-memnode) for its segment, presenting the cluster's
  // shared secret, and attaches it under the node id the node reports. Returns that id.
  [[nodiscard]] result<node_id> connect(
      std::string_view host, std::uint16_t port, std::string_view secret,
      std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
    const std::string where = std::string(host) + ":" + std::to_string(port);
    auto fd = bootstrap::connect_tcp(host, port, timeout);
    if (!fd) return std::move(fd).take_failure();
    const bootstrap::unique_fd owned(*fd);
    bootstrap::hello h;
    h.secret = std::string(secret);
    h.transport = bootstrap::transport_kind::shm;
    if (auto ok = bootstrap::write_frame(owned.get(), h, timeout); !ok) {
      return std::move(ok).take_failure();
    }
    auto reply = bootstrap::read_frame(owned.get(), timeout);
    if (!reply) return std::move(reply).take_failure();
    if (const auto* r = std::get_if<bootstrap::refuse>(&*reply)) {
      failure f = bootstrap::as_failure(*r);
      f.detail = "memory node " + where + " refused: " + f.detail;
      return f;
    }
    const auto* w = std::get_if<bootstrap::welcome>(&*reply);
    if (w == nullptr || w->transport() != bootstrap::transport_kind::shm) {
      return fail(errc::protocol_error, "memory node " + where + " did not offer shared memory");
    }
    if (auto ok = add_node(w->node_id, std::get<bootstrap::shm_access>(w->access).segment_name);
        !ok) {
      return std::move(ok).take_failure();
    }
    return w->node_id;
  }

  [[nodiscard]] result<registration> register_memory(std::span<std::byte> bytes) const {
    return registration{unregistered(bytes)};
  }

  [[nodiscard]] batch new_batch() const noexcept { return batch(nodes_.get(), limit_); }

  // Bytes of node's region (0 when no such node is attached).
  // Operations per node in one batch: no queue to fill (the client executes them), so only a
  // bound that keeps one batch's bookkeeping in memory.
  static constexpr std::size_t batch_limit = std::size_t{1} << 16;
  // This transport object's identity (kvc::transport_identity). Nothing can cut a shm client off
  // (it maps the region), so no shm memory node fences; the index records it all the same.
  [[nodiscard]] std::uint64_t identity() const noexcept { return identity_; }
  [[nodiscard]] std::size_t max_ops_per_node() const noexcept { return limit_; }
  // Lowers the limit (1 to batch_limit) so that a batch is held to a verbs queue pair's depth:
  // tests of what a component posts under such a limit. Batches made before keep theirs.
  [[nodiscard]] result<void> set_max_ops_per_node(std::size_t n) {
    if (n == 0 || n > batch_limit) {
      return fail(errc::invalid_argument,
                  "shm_transport: max_ops_per_node must be 1 to " + std::to_string(batch_limit));
    }
    limit_ = n;
    return {};
  }
  [[nodiscard]] std::uint64_t region_bytes(node_id node) const noexcept {
    return node < nodes_->size() ? (*nodes_)[node].map.bytes() : 0;
  }
  [[nodiscard]] bool has_node(node_id node) const noexcept { return region_bytes(node) != 0; }

 private:
  std::unique_ptr<node_table> nodes_;  // stable address: batches point at it
  std::uint64_t identity_ = fresh_transport_identity();
  std::size_t limit_ = batch_limit;
};

}  // namespace kvc::inline v0
