// kvc/transport/shm.hpp — the shared-memory transport: a memory node's region is a POSIX
// shared-memory segment that client processes on the same host map, and one-sided operations are
// executed by the client's CPU with atomics. No process serves anything: like RDMA, the memory
// node's CPU is not involved, and clients in different processes race for real.
//
// shm_region creates a segment (mode 0600, so only the owner's processes attach), writes the
// region header, and when destroyed retires the region (region.hpp's state word) and removes the
// segment's name. shm_transport attaches segments by name, checks their headers, and executes
// batches; a node whose region it finds retired it maps anew by the same name (a memory node that
// restarted), or fails its operations as unreachable while none serves it.
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
// - A node whose region was retired (its node stopped; region.hpp's state word) is mapped anew by
//   its segment's name when a batch next needs it; while no node serves that name its operations
//   fail with errc::unreachable. A batch held to a region (require_identity) refuses a node's
//   operations with errc::format_mismatch when the node serves another. Either is decided once
//   per ring() and node, before any of the node's operations run.
//
// Concurrency: shm_transport is safe to use from many threads at once (each with its own
// batches; a restarted node's new segment is mapped under a mutex, and every mapping stays valid
// until the transport goes); connect() and add_node() are not concurrent with anything else.
// Design: docs/design/transport.md.
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
#include <mutex>
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

// When the region mapped at `m` was created (its header's created_unix_ms), read now: a region
// rewritten in place is another region too.
[[nodiscard]] inline std::uint64_t created_ms(const shm_mapping& m) noexcept {
  auto* word =
      reinterpret_cast<std::uint64_t*>(m.base() + offsetof(region_header, created_unix_ms));
  return std::atomic_ref<std::uint64_t>(*word).load(std::memory_order_acquire);
}

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

// A memory node's region as a shared-memory segment. Move-only; the creator removes the name
// (and retires the region first) when the region goes, in the process that created it: a copy in
// a forked child leaves both alone, and so does a process that creates a region and then hands
// it to a forked child (a daemon), whose region's name then stays when it goes. The creator holds
// a lock on the segment for the region's life: in_use() tells a live node's segment from one left
// behind by a node that died.
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
    region.creator_ = ::getpid();
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

  // Removes segment `name` left behind by a node that died (a memory node started to replace
  // it): its region is retired first, so that clients still mapping it stop using it and map the
  // new node's segment of the same name. A running node's segment is refused
  // (errc::invalid_argument); none of that name is not an error.
  [[nodiscard]] static result<void> remove_left_behind(std::string_view name) {
    if (auto ok = detail::check_segment_name(name); !ok) return ok;
    const std::string owned(name);
    bootstrap::unique_fd fd(::shm_open(owned.c_str(), O_RDWR, 0));
    if (!fd) {
      if (errno == ENOENT) return {};
      return fail(errc::io_error, detail::errno_text("shm_open", owned, errno));
    }
    // Held while retiring and removing: a node that starts meanwhile cannot take it (in_use()).
    if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
      if (errno == EWOULDBLOCK) {
        return fail(errc::invalid_argument,
                    "shm segment " + owned + " belongs to a memory node that is running");
      }
      return fail(errc::io_error, detail::errno_text("locking", owned, errno));
    }
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) {
      return fail(errc::io_error, detail::errno_text("fstat", owned, errno));
    }
    if (static_cast<std::size_t>(st.st_size) >= region_state_offset + 8) {
      void* base = ::mmap(nullptr, static_cast<std::size_t>(st.st_size), PROT_READ | PROT_WRITE,
                          MAP_SHARED, fd.get(), 0);
      if (base != MAP_FAILED) {
        const detail::shm_mapping map(static_cast<std::byte*>(base),
                                      static_cast<std::size_t>(st.st_size));
        region_header h;
        detail::copy_from_shared(reinterpret_cast<std::byte*>(&h), map.base(), sizeof h);
        if (h.magic == region_header::magic_value) retire_region(map.base());
      }
    }
    // The name only while it is still this segment's (another starter may have replaced it).
    bootstrap::unique_fd named(::shm_open(owned.c_str(), O_RDONLY, 0));
    struct stat now {};
    if (!named || ::fstat(named.get(), &now) != 0 || now.st_ino != st.st_ino ||
        now.st_dev != st.st_dev) {
      return {};
    }
    if (::shm_unlink(owned.c_str()) != 0 && errno != ENOENT) {
      return fail(errc::io_error, detail::errno_text("shm_unlink", owned, errno));
    }
    return {};
  }

  shm_region() = default;
  shm_region(shm_region&& o) noexcept
      : name_(std::exchange(o.name_, std::string())),
        map_(std::move(o.map_)),
        lock_(std::move(o.lock_)),
        creator_(o.creator_) {}
  shm_region& operator=(shm_region&& o) noexcept {
    if (this != &o) {
      unlink();
      name_ = std::exchange(o.name_, std::string());
      map_ = std::move(o.map_);
      lock_ = std::move(o.lock_);
      creator_ = o.creator_;
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
  // The node stops serving the region: clients that still map it see it retired (and look for
  // a new segment of its name) before its name goes. Only in the process that created it: a
  // forked child's copy going (a test's child unwinding) leaves the parent's node serving.
  void unlink() noexcept {
    if (!name_.empty() && creator_ == ::getpid()) {
      // (a region with a name always has its mapping: the test only tells GCC so)
      if (map_.base() != nullptr) retire_region(map_.base());
      ::shm_unlink(name_.c_str());
    }
    name_.clear();
  }
  std::string name_;
  detail::shm_mapping map_;
  bootstrap::unique_fd lock_;  // the segment, locked while this region lives
  pid_t creator_ = 0;          // the process that created it
};

class shm_transport {
 public:
  // How long a node whose region was retired, and found with no new one, is not looked for again
  // (batches for it fail as unreachable meanwhile, without a system call).
  static constexpr std::chrono::milliseconds retry_pause{10};

 private:
  // A memory node as this transport reaches it: the mapping batches run on (`current`; null once
  // the node's region was retired and no new one could be mapped) and every mapping made for it,
  // kept (their addresses valid) until the transport goes: a batch on another thread may still be
  // running on a mapping when it is replaced. A replaced one's pages are given back at once.
  struct node_slot {
    std::atomic<const detail::shm_mapping*> current{nullptr};
    std::atomic<std::uint64_t> bytes{0};  // the current region's size, or the last one's
    // While no region of the node could be mapped: not looked for again before this time
    // (steady_clock, in its ticks), so that a node that stays down costs a batch no system call.
    std::atomic<std::int64_t> retry_at{0};
    std::string name;
    std::mutex remap;                                            // taking a new segment
    std::vector<std::unique_ptr<detail::shm_mapping>> mappings;  // under remap

    // The mapping batches use for node `node` now, `seen` having been found retired (or gone:
    // null): the node's segment mapped anew by its name, or errc::unreachable while no node
    // serves it.
    [[nodiscard]] result<const detail::shm_mapping*> replace_retired(
        node_id node, const detail::shm_mapping* seen) {
      const std::string why = "memory node " + std::to_string(node) +
                              " stopped serving its region (the node stopped or restarted) and ";
      const auto now = std::chrono::steady_clock::now().time_since_epoch().count();
      if (seen == nullptr && now < retry_at.load(std::memory_order_relaxed)) {
        return fail(errc::unreachable, why + "no new one was found under the name " + name +
                                           " (looked for again every " +
                                           std::to_string(retry_pause.count()) + " ms)");
      }
      const std::lock_guard lock(remap);
      const detail::shm_mapping* held = current.load(std::memory_order_relaxed);
      if (held != nullptr && !region_is_retired(held->base())) {
        return held;  // another thread took the new segment meanwhile
      }
      if (held == nullptr && now < retry_at.load(std::memory_order_relaxed)) {  // or looked
        return fail(errc::unreachable, why + "no new one was found under the name " + name +
                                           " (looked for again every " +
                                           std::to_string(retry_pause.count()) + " ms)");
      }
      if (held != nullptr) {
        release_pages(*held);
        current.store(nullptr, std::memory_order_release);
      }
      auto fresh = map_segment(node, name);
      if (!fresh || region_is_retired(fresh->base())) {
        // Not there (yet), or not written (yet): a node that is starting, maybe.
        retry_at.store(
            now + std::chrono::duration_cast<std::chrono::steady_clock::duration>(retry_pause)
                      .count(),
            std::memory_order_relaxed);
        return fail(errc::unreachable, why + (fresh ? "no node serves segment " + name + " now"
                                                    : "no new one could be mapped: " +
                                                          std::move(fresh).take_failure().detail));
      }
      mappings.push_back(std::make_unique<detail::shm_mapping>(std::move(*fresh)));
      const detail::shm_mapping* mapped = mappings.back().get();
      bytes.store(mapped->bytes(), std::memory_order_relaxed);
      retry_at.store(0, std::memory_order_relaxed);
      current.store(mapped, std::memory_order_release);
      return mapped;
    }

    // Gives the pages of a retired mapping back while its addresses stay valid: anonymous memory
    // whose state word reads retired is moved over it in one step (mremap). A thread that loaded
    // the mapping before and reads its state word only now finds it retired too (and takes the
    // new mapping); an operation it admitted there before runs on that memory, as one in flight
    // when a node stops: its effect is lost with the region (a READ there gives zeros). Should
    // the blank not be made, the old segment stays mapped (its memory in use until the transport
    // goes). (In a process that locks all its memory, mlockall(MCL_FUTURE), the blank is locked
    // and committed whole: a region's worth of memory per restart.)
    static void release_pages(const detail::shm_mapping& m) noexcept {
      void* blank = ::mmap(nullptr, m.bytes(), PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (blank == MAP_FAILED) return;
      (void)::madvise(blank, m.bytes(), MADV_NOHUGEPAGE);  // one small page is all it uses
      retire_region(static_cast<std::byte*>(blank));
      if (::mremap(blank, m.bytes(), m.bytes(), MREMAP_MAYMOVE | MREMAP_FIXED, m.base()) !=
          MAP_FAILED) {
        return;
      }
      ::munmap(blank, m.bytes());
      // mremap may have unmapped the target before failing: then the hole is filled (a thread
      // still on the mapping must not fault), else the old segment is still there (EEXIST).
      void* refill =
          ::mmap(m.base(), m.bytes(), PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
      if (refill == static_cast<void*>(m.base())) {
        retire_region(m.base());
      } else if (refill != MAP_FAILED) {  // a kernel before 4.17 takes it as a hint
        ::munmap(refill, m.bytes());
      }
    }
  };

 public:
  // Memory needing no registration: every address of the process is reachable.
  struct registration {
    local_buffer buf;
    [[nodiscard]] local_buffer buffer() const noexcept { return buf; }
  };

 private:
  using node_table = std::vector<std::unique_ptr<node_slot>>;  // by node id; grown by add_node()

 public:
  class batch : public synchronous_batch {
   public:
    batch() = default;

    // The region a batch's operations for `node` must reach: the one created at
    // `region_created_ms` (the region header's created_unix_ms; 0: any). On another (the node
    // restarted) they fail unposted with errc::format_mismatch, as over verbs, instead of landing
    // at offsets of a layout read from the old one. `identity` is not checked: nothing cuts a shm
    // client off.
    void require_identity(node_id node, std::uint64_t identity,
                          std::uint64_t region_created_ms = 0) {
      required_.push_back({node, identity, region_created_ms});
    }
    void clear() noexcept {
      synchronous_batch::clear();
      required_.clear();
    }

    // Executes every operation, in posting order.
    void ring() {
      KVC_ASSERT(!rung() && !done(), "ring() twice without clear()");
      mark_rung();
      const auto ops = operations();
      const std::span<errc> status = statuses();
      if (KVC_UNLIKELY(ops.size() > limit_)) refuse_over_limit();
      admitted_.clear();
      reasons_.clear();
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
          const admission& a = admit(cache, op.remote.node());
          if (a.map != nullptr && op.remote.offset() < a.map->bytes()) {
            detail::prefetch_read(op, a.map->base());
          }
        }
      }
      // Then each operation is checked and run, in order: one that fails its check marks the
      // later operations on its node not executed (the earlier ones ran), as a queue pair does.
      bool stored = false;  // a WRITE ran since the last full fence
      for (std::size_t i = 0; i < ops.size(); ++i) {
        if (status[i] != errc{}) continue;  // not executed after a failure, or over the limit
        const operation& op = ops[i];
        const admission& a = admit(cache, op.remote.node());
        if (KVC_UNLIKELY(a.map == nullptr)) {
          fail_op(i, a.refused, reasons_[a.why]);
          continue;
        }
        if (const errc e = check(op, a.map->bytes()); KVC_UNLIKELY(e != errc{})) {
          fail_check(i, e, a.map->bytes());
          continue;
        }
        // Release stores may wait in the store buffer while later loads go ahead (x86 too):
        // a READ after a WRITE fences first, so every client sees the batch's operations in
        // posting order (a store-buffering pattern across clients stays sequentially
        // consistent). CAS and FAA are full fences themselves.
        if (op.kind == op_kind::read && stored) detail::full_fence();
        stored = op.kind == op_kind::write;  // a fence or an atomic drained the earlier ones
        detail::execute_on_mapping(op, a.map->base());
      }
      mark_done();
    }

   private:
    friend shm_transport;
    batch(node_table* nodes, std::size_t limit) noexcept : nodes_(nodes), limit_(limit) {}
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

    // Where one ring() runs a node's operations: one mapping for all of them (a node that
    // restarts during the ring does not get the rest), or why none (`map` null: `refused`, and
    // reasons_[why]).
    struct admission {
      node_id node = 0;
      const detail::shm_mapping* map = nullptr;
      errc refused{};
      std::size_t why = 0;
    };
    // The admission of the node of the last operation, looked up once per run of operations on
    // the same node.
    struct node_cache {
      node_id id = 0;
      const admission* a = nullptr;  // in admitted_, which grows only in admit_new()
    };
    KVC_ALWAYS_INLINE const admission& admit(node_cache& cache, node_id node) {
      if (KVC_LIKELY(cache.a != nullptr && cache.id == node)) return *cache.a;
      std::size_t at = 0;
      while (at < admitted_.size() && admitted_[at].node != node) ++at;
      if (at == admitted_.size()) admit_new(node);
      cache.id = node;
      cache.a = &admitted_[at];
      return *cache.a;
    }
    void refuse(admission& a, errc code, std::string why) {
      a.refused = code;
      a.why = reasons_.size();
      reasons_.push_back(std::move(why));
    }
    // Decides, once per ring(), where `node`'s operations run: its current mapping, unless its
    // region was retired (then the node's new segment, mapped by its name) or is not the one a
    // requirement names.
    void admit_new(node_id node) {
      admission& a = admitted_.emplace_back();
      a.node = node;
      if (nodes_ == nullptr || node >= nodes_->size() || !(*nodes_)[node]) {
        refuse(a, errc::invalid_argument, "no memory node with that id is attached");
        return;
      }
      node_slot& slot = *(*nodes_)[node];
      const detail::shm_mapping* m = slot.current.load(std::memory_order_acquire);
      if (KVC_UNLIKELY(m == nullptr || region_is_retired(m->base()))) {
        auto fresh = slot.replace_retired(node, m);
        if (!fresh) {
          refuse(a, errc::unreachable, std::move(fresh).take_failure().detail);
          return;
        }
        m = *fresh;
      }
      for (const connection_requirement& r : required_) {
        if (r.node != node || r.region_created_ms == 0) continue;
        const std::uint64_t created = detail::created_ms(*m);
        if (created != r.region_created_ms) {
          refuse(a, errc::format_mismatch,
                 "the node serves another region (created at " + std::to_string(created) +
                     " ms, not " + std::to_string(r.region_created_ms) +
                     "): it restarted; read its header again");
          return;
        }
      }
      a.map = m;
    }

    node_table* nodes_ = nullptr;
    std::size_t limit_ = batch_limit;
    std::vector<connection_requirement> required_;  // require_identity()
    std::vector<admission> admitted_;               // this ring's nodes
    std::vector<std::string> reasons_;              // why admitted_ refused some
  };

  shm_transport() : nodes_(std::make_unique<node_table>()) {}

  // Maps segment `name` as memory node `node` and checks its header (errc::format_mismatch when
  // it is not a kvc region of this format, errc::io_error when it cannot be opened). Should the
  // node's region be retired later (its node stopped or restarted), the next batch for the node
  // maps the segment of this name anew.
  [[nodiscard]] result<void> add_node(node_id node, std::string_view name) {
    if (auto ok = detail::check_segment_name(name); !ok) return ok;
    if (node < nodes_->size() && (*nodes_)[node]) {
      return fail(errc::invalid_argument, "memory node " + std::to_string(node) + " is attached");
    }
    auto map = map_segment(node, std::string(name));
    if (!map) return std::move(map).take_failure();
    if (node >= nodes_->size()) nodes_->resize(std::size_t{node} + 1);
    auto slot = std::make_unique<node_slot>();
    slot->name = std::string(name);
    slot->bytes.store(map->bytes(), std::memory_order_relaxed);
    slot->mappings.push_back(std::make_unique<detail::shm_mapping>(std::move(*map)));
    slot->current.store(slot->mappings.back().get(), std::memory_order_release);
    (*nodes_)[node] = std::move(slot);
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
  // Bytes of node's region (0 when no such node is attached; the last region's while its node
  // serves none).
  [[nodiscard]] std::uint64_t region_bytes(node_id node) const noexcept {
    return node < nodes_->size() && (*nodes_)[node]
               ? (*nodes_)[node]->bytes.load(std::memory_order_relaxed)
               : 0;
  }
  [[nodiscard]] bool has_node(node_id node) const noexcept { return region_bytes(node) != 0; }

 private:
  // Maps segment `name`, which must hold memory node `node`'s region.
  [[nodiscard]] static result<detail::shm_mapping> map_segment(node_id node,
                                                               const std::string& name) {
    const int fd = ::shm_open(name.c_str(), O_RDWR, 0);
    if (fd < 0) return fail(errc::io_error, detail::errno_text("shm_open", name, errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      const int err = errno;
      ::close(fd);
      return fail(errc::io_error, detail::errno_text("fstat", name, err));
    }
    const auto bytes = static_cast<std::size_t>(st.st_size);
    if (bytes < region_state_offset + 8) {
      ::close(fd);
      return fail(errc::format_mismatch, name + " is too small to hold a kvc region header");
    }
    void* base = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    const int err = errno;
    ::close(fd);
    if (base == MAP_FAILED) return fail(errc::io_error, detail::errno_text("mmap", name, err));
    detail::shm_mapping map(static_cast<std::byte*>(base), bytes);
    region_header h;
    detail::copy_from_shared(reinterpret_cast<std::byte*>(&h), map.base(), sizeof h);
    if (auto ok = check_region_header(h, bytes); !ok) {
      return fail(errc::format_mismatch, name + ": " + std::move(ok).take_failure().detail);
    }
    if (h.node != node) {
      return fail(errc::format_mismatch, name + " holds memory node " + std::to_string(h.node) +
                                             ", not " + std::to_string(node));
    }
    return map;
  }

  std::unique_ptr<node_table> nodes_;  // stable address: batches point at it
  std::uint64_t identity_ = fresh_transport_identity();
  std::size_t limit_ = batch_limit;
};

}  // namespace kvc::inline v0
