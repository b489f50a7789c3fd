// kvc/pool/ssd_tier.hpp — the local SSD tier: one file of fixed-size block slots, read and
// written by a few I/O threads in batches (O_DIRECT where the filesystem and the buffers allow),
// and, when configured to persist, a directory of which block each slot holds, so that a
// restarted process finds its blocks again.
//
//   auto ssd = kvc::ssd_tier::open({.path = "/nvme/kvc.blocks", .block_bytes = 64 << 10,
//                                   .blocks = 100000, .persist = true});
//   for (const auto& b : (*ssd)->recovered()) pool.adopt(b.slot, b.key);   // after a restart
//   (*ssd)->copy(kvc::copy_direction::from_host, copies, job);             // store
//   (*ssd)->tag(slot, key);                      // once the store completed: persisted
//
// File: a 4 KiB header (magic "KVCSSD01", format, geometry, model, checksum), one 64-byte directory
// record per slot (key, parent key, data checksum, record checksum), then the slots, 4 KiB
// aligned. The file
// is allocated in full when made (posix_fallocate), so a full disk is reported then, not halfway
// through a store. A record is written only after its slot's data (tag() after the copy
// completed) and cleared before the slot is handed out again (release()), so a record never
// names data that is not there; every read of a slot whose checksum is known is verified.
//
// Errors, all clear and losing nothing: invalid_config for a bad config; format_mismatch for a
// file that is not a kvc SSD tier file, was made with another geometry or by another format, or
// (persist) holds another model's blocks (it is not touched);
// no_space when the disk (or a file size limit) has no room for the file or a write; io_error
// for a failing open, read or write; malformed_input when a slot's data does not match its
// checksum (the copy fails; nothing wrong is handed out).
//
// Concurrency: every member may be called from any thread. copy() queues the batch for the I/O
// threads and returns; the destructor finishes queued batches first. The I/O threads take a
// batch's blocks one at a time, all of them at once on one batch (up to io_threads transfers in
// flight), loads (to_host) before stores (but a store block after 16 load blocks in a row), each
// kind in the order queued. A store must not name a slot twice (its blocks are written at once),
// and no two copies in flight may name one slot if one of them writes it (their order is not
// kept: the block pool never does this).
// Design: docs/design/pool.md.
#pragma once

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <list>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "kvc/detail/xxhash.hpp"
#include "kvc/error.hpp"
#include "kvc/pool/tier.hpp"

namespace kvc::inline v0 {

struct ssd_tier_config {
  std::string path;             // the slot file (made when absent)
  std::size_t block_bytes = 0;  // > 0
  std::size_t blocks = 0;       // slots, > 0
  bool persist = false;         // keep and reopen the file's blocks; false: start empty
  bool direct = true;           // O_DIRECT where possible (block_bytes a multiple of 4 KiB)
  unsigned io_threads = 4;      // 1..64: transfers in flight (each thread does one at a time)
  // What the blocks are of: the model, its checkpoint and whatever else decides the bytes of a
  // block under a key (the cache manager passes its model_salt and block size). Needed with
  // persist: a file is reopened only under the model it was made for, since a process on another
  // checkpoint would otherwise find blocks under its keys whose bytes are another model's.
  std::string model;
};

class ssd_tier {
 public:
  using slot = std::uint32_t;
  static constexpr std::size_t max_key_bytes = 16;

  // A block found in the file when it was opened: its slot is held (refs 1) until the owner
  // adopts it or releases it.
  struct persisted_block {
    slot where;
    std::array<std::byte, max_key_bytes> key;
    std::array<std::byte, max_key_bytes> parent;  // the block before it in its chain
    std::uint8_t key_bytes;
    std::uint8_t parent_bytes;  // 0: the first block of a chain
    [[nodiscard]] std::span<const std::byte> key_view() const noexcept {
      return {key.data(), key_bytes};
    }
    [[nodiscard]] std::span<const std::byte> parent_view() const noexcept {
      return {parent.data(), parent_bytes};
    }
  };

  [[nodiscard]] static result<std::unique_ptr<ssd_tier>> open(const ssd_tier_config& cfg) {
    if (cfg.path.empty() || cfg.block_bytes == 0 || cfg.blocks == 0 ||
        cfg.blocks > std::size_t{UINT32_MAX} || cfg.io_threads == 0 || cfg.io_threads > 64) {
      return fail(errc::invalid_config,
                  "ssd tier: needs a path, block_bytes > 0, 1 to 2^32-1 blocks and 1 to 64 I/O "
                  "threads");
    }
    if (cfg.persist && cfg.model.empty()) {
      return fail(errc::invalid_config,
                  "ssd tier: persist needs a model (what the blocks are of: a file reopened by a "
                  "process of another model would hand it that model's blocks)");
    }
    const std::uint64_t data_off = data_offset(cfg.blocks);
    if (cfg.block_bytes > (UINT64_MAX - data_off) / cfg.blocks) {
      return fail(errc::invalid_config, "ssd tier: the file would be larger than 2^64 bytes");
    }
    std::unique_ptr<ssd_tier> t(new ssd_tier(cfg));
    if (auto ok = t->open_file(); !ok) return std::move(ok).take_failure();
    t->start_threads();
    return t;
  }

  ssd_tier(const ssd_tier&) = delete;
  ssd_tier& operator=(const ssd_tier&) = delete;
  ~ssd_tier() {
    {
      std::lock_guard lock(queue_mutex_);
      stopping_ = true;
    }
    queue_cv_.notify_all();
    for (auto& w : workers_) w.join();
    if (direct_fd_ >= 0) ::close(direct_fd_);
    if (fd_ >= 0) ::close(fd_);
  }

  [[nodiscard]] tier_kind kind() const noexcept { return tier_kind::ssd; }
  [[nodiscard]] std::size_t block_bytes() const noexcept { return cfg_.block_bytes; }
  [[nodiscard]] std::size_t capacity() const noexcept { return slots_->capacity(); }
  [[nodiscard]] std::size_t free_slots() const { return slots_->free_slots(); }
  // Whether tag() records blocks for a restarted process (config persist).
  [[nodiscard]] bool persistent() const noexcept { return cfg_.persist; }
  // Whether reads and writes of 4 KiB-aligned buffers bypass the page cache.
  [[nodiscard]] bool direct() const noexcept { return direct_fd_ >= 0; }
  [[nodiscard]] const std::string& path() const noexcept { return cfg_.path; }

  [[nodiscard]] result<slot> allocate() { return slots_->allocate("ssd"); }
  [[nodiscard]] result<void> share(slot s) {
    std::lock_guard lock(release_mutex_);
    return slots_->share(s);
  }
  // Drops one reference; after the last, the slot's record is cleared (when it had one) before
  // the slot can be handed out again.
  [[nodiscard]] result<void> release(slot s) {
    std::lock_guard lock(release_mutex_);  // no share() between the count and the clearing
    if (auto held = slots_->held(s); !held) return held;
    const bool last = slots_->refs(s) == 1;
    if (last && tagged(s)) {
      if (auto ok = write_record(s, {}, {}, 0); !ok) return ok;
    }
    // Forgotten before it can be handed out again (and written by its next holder).
    if (last) forget(s);
    auto freed = slots_->release(s);
    if (!freed) return std::move(freed).take_failure();
    return {};
  }
  [[nodiscard]] std::uint32_t refs(slot s) const { return slots_->refs(s); }

  // Records that slot `s` holds the block `key` (at most 16 bytes), whose parent in its chain is
  // `parent` (empty for a chain's first block), and whose data a completed from_host copy wrote:
  // a restarted process finds it in recovered(). Needs persist.
  [[nodiscard]] result<void> tag(slot s, std::span<const std::byte> key,
                                 std::span<const std::byte> parent = {}) {
    if (!cfg_.persist) return fail(errc::invalid_argument, "ssd tier: tag() needs persist");
    if (key.empty() || key.size() > max_key_bytes || parent.size() > max_key_bytes) {
      return fail(errc::invalid_argument, "ssd tier: a key is 1 to 16 bytes");
    }
    std::lock_guard release_lock(release_mutex_);  // not released meanwhile: no record left
    if (auto held = slots_->held(s); !held) return held;
    std::uint64_t sum = 0;
    {
      std::lock_guard lock(sums_mutex_);
      if (!sum_known_[s]) {
        return fail(errc::invalid_argument,
                    "ssd tier: slot " + std::to_string(s) + " was not written yet");
      }
      sum = sums_[s];
    }
    if (auto ok = write_record(s, key, parent, sum); !ok) return ok;
    std::lock_guard lock(sums_mutex_);
    tagged_[s] = 1;
    return {};
  }

  // The blocks the file held when opened (persist only), each slot held once; empty after
  // take_recovered().
  [[nodiscard]] const std::vector<persisted_block>& recovered() const noexcept {
    return recovered_;
  }
  // Hands the blocks found when opened over to their one owner (a block pool) and forgets them:
  // a second owner must not adopt slots the first has reused since.
  [[nodiscard]] std::vector<persisted_block> take_recovered() {
    std::lock_guard lock(release_mutex_);
    return std::exchange(recovered_, {});
  }
  // Directory records found damaged when opened (their slots were freed).
  [[nodiscard]] std::size_t discarded_records() const noexcept { return discarded_; }

  [[nodiscard]] result<void> copy(copy_direction dir, std::span<const block_copy<slot>> copies,
                                  const std::shared_ptr<copy_job>& job) {
    if (auto ok = slots_->check_copies(copies); !ok) return ok;
    if (copies.empty()) return {};
    if (dir == copy_direction::from_host && copies.size() > 1) {
      // Its blocks are written at once by several threads: one slot twice would leave either
      // block's bytes under either block's checksum.
      std::vector<slot> written(copies.size());
      for (std::size_t i = 0; i < copies.size(); ++i) written[i] = copies[i].slot;
      std::sort(written.begin(), written.end());
      if (std::adjacent_find(written.begin(), written.end()) != written.end()) {
        return fail(errc::invalid_argument, "ssd tier: a store names a slot twice");
      }
    }
    // Made before the job counts the copies: out of memory leaves the job as it was.
    std::list<batch> one;
    one.push_back(batch{{copies.begin(), copies.end()}, job, 0});
    {
      std::lock_guard lock(queue_mutex_);
      auto& q = dir == copy_direction::to_host ? loads_ : stores_;
      q.splice(q.end(), one);
      job->expect(copies.size());
    }
    if (copies.size() > 1) {
      queue_cv_.notify_all();
    } else {
      queue_cv_.notify_one();
    }
    return {};
  }

 private:
  static constexpr std::size_t header_bytes = 4096;
  static constexpr std::size_t record_bytes = 64;
  static constexpr std::size_t alignment = 4096;
  static constexpr char magic[8] = {'K', 'V', 'C', 'S', 'S', 'D', '0', '1'};
  // The header while the file is being made: a file left so (the process died making it) is
  // kvc's own, and made again.
  static constexpr char making_magic[8] = {'K', 'V', 'C', 'S', 'S', 'D', 'M', 'K'};
  // 2: the header names the model (format 1 files are refused, not touched).
  static constexpr std::uint32_t format = 2;
  static constexpr std::size_t model_name_bytes = 256;  // of the model's name kept for messages

  // A queued batch of one direction; `next`: its first block no I/O thread took yet.
  struct batch {
    std::vector<block_copy<slot>> copies;
    std::shared_ptr<copy_job> job;
    std::size_t next = 0;
  };

  // Header words: magic, format, block_bytes, blocks, data offset, the model (a hash of its
  // name, and the name's length and first bytes for messages), checksum of the bytes before.
  struct header {
    char magic[8];
    std::uint32_t format;
    std::uint32_t record_bytes;
    std::uint64_t block_bytes;
    std::uint64_t blocks;
    std::uint64_t data_offset;
    std::uint64_t model_hash;
    std::uint64_t model_bytes;
    char model_name[model_name_bytes];
    std::uint64_t checksum;
  };
  static_assert(sizeof(header) <= header_bytes);
  // Directory record: valid flag, key and parent key with their lengths, data checksum,
  // checksum of the bytes before.
  struct record {
    std::uint32_t valid;
    std::uint8_t key_bytes;
    std::uint8_t parent_bytes;
    std::uint16_t unused;
    std::array<std::byte, max_key_bytes> key;
    std::array<std::byte, max_key_bytes> parent;
    std::uint64_t data_checksum;
    std::uint64_t checksum;
  };
  static_assert(sizeof(record) <= record_bytes);

  static std::uint64_t data_offset(std::size_t blocks) noexcept {
    const std::uint64_t end = header_bytes + std::uint64_t{blocks} * record_bytes;
    return (end + alignment - 1) / alignment * alignment;
  }
  static std::uint64_t sum(const void* p, std::size_t n) noexcept {
    return detail::xxh3<hash64>::oneshot(p, n).value;
  }
  [[nodiscard]] std::uint64_t model_hash() const noexcept {
    return sum(cfg_.model.data(), cfg_.model.size());
  }

  explicit ssd_tier(const ssd_tier_config& cfg)
      : cfg_(cfg),
        data_off_(data_offset(cfg.blocks)),
        sums_(cfg.blocks, 0),
        sum_known_(cfg.blocks, 0),
        tagged_(cfg.blocks, 0) {}

  static failure io_failure(const std::string& what, int err) {
    const errc code =
        (err == ENOSPC || err == EFBIG || err == EDQUOT) ? errc::no_space : errc::io_error;
    return fail(code, what + ": " + std::strerror(err));
  }

  result<void> open_file() {
    fd_ = ::open(cfg_.path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd_ < 0) return io_failure("ssd tier: opening " + cfg_.path, errno);
    struct stat st {};
    if (::fstat(fd_, &st) != 0) return io_failure("ssd tier: fstat " + cfg_.path, errno);
    if (!S_ISREG(st.st_mode)) {
      return fail(errc::io_error, "ssd tier: " + cfg_.path + " is not a regular file");
    }
    // One tier per file: a second (another process's, or this one's) would reformat or reuse
    // slots under the first. Where the filesystem has no such locks, none is taken. What the
    // file holds is read once the lock is held (another tier may have made it meanwhile).
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK) {
      return fail(errc::io_error, "ssd tier: " + cfg_.path +
                                      " is in use by another SSD tier (locked); not touched");
    }
    if (::fstat(fd_, &st) != 0) return io_failure("ssd tier: fstat " + cfg_.path, errno);
    bool reuse = false;
    if (st.st_size > 0) {
      // Someone's file: only a kvc SSD tier file of this geometry is used (or reformatted).
      header h{};
      if (auto ok = pread_all(fd_, &h, sizeof h, 0, "reading the header"); !ok) {
        return fail(errc::format_mismatch, "ssd tier: " + cfg_.path +
                                               " is not a kvc SSD tier file (too short); "
                                               "not touched");
      }
      const bool ours = h.checksum == sum(&h, offsetof(header, checksum));
      if (std::memcmp(h.magic, magic, sizeof magic) == 0 && h.format != format) {
        // A whole file of another format (the format sits where every format has it; the rest
        // of the header, its checksum's place too, may differ). A half-made one is made again.
        return fail(errc::format_mismatch,
                    "ssd tier: " + cfg_.path + " was made by another version of kvc (format " +
                        std::to_string(h.format) + "; this one reads format " +
                        std::to_string(format) + "); not touched");
      }
      const bool making = std::memcmp(h.magic, making_magic, sizeof making_magic) == 0;
      if (making && (ours || h.format != format)) {
        // Left half made: made again, whatever its geometry (or format) was to be.
      } else if (!ours || std::memcmp(h.magic, magic, sizeof magic) != 0) {
        return fail(errc::format_mismatch,
                    "ssd tier: " + cfg_.path + " is not a kvc SSD tier file; not touched");
      } else if (h.record_bytes != record_bytes || h.block_bytes != cfg_.block_bytes ||
                 h.blocks != cfg_.blocks || h.data_offset != data_off_) {
        return fail(errc::format_mismatch, "ssd tier: " + cfg_.path + " holds " +
                                               std::to_string(h.blocks) + " blocks of " +
                                               std::to_string(h.block_bytes) + " bytes, not " +
                                               std::to_string(cfg_.blocks) + " of " +
                                               std::to_string(cfg_.block_bytes) + "; not touched");
      } else if (cfg_.persist && h.model_bytes == 0) {
        // Made without persist: it holds no block a restart could find (tag() needs persist).
      } else if (cfg_.persist &&
                 (h.model_hash != model_hash() || h.model_bytes != cfg_.model.size())) {
        const std::string held(h.model_name,
                               std::min<std::size_t>(h.model_bytes, model_name_bytes));
        return fail(errc::format_mismatch, "ssd tier: " + cfg_.path + " holds blocks of model \"" +
                                               held +
                                               (h.model_bytes > model_name_bytes ? "...\"" : "\"") +
                                               ", not of \"" + cfg_.model + "\"; not touched");
      } else {
        reuse = cfg_.persist;
      }
    }
    // Marked as being made before it is sized: from here on a process that dies leaves a file
    // the next open() knows as kvc's own.
    if (!reuse) {
      if (auto ok = write_header(making_magic, "marking the file as being made"); !ok) return ok;
    }
    const std::uint64_t total = data_off_ + std::uint64_t{cfg_.blocks} * cfg_.block_bytes;
    if (const int err = ::posix_fallocate(fd_, 0, static_cast<off_t>(total)); err != 0) {
      if (err != EOPNOTSUPP && err != EINVAL) {
        return io_failure(
            "ssd tier: making room for " + std::to_string(total) + " bytes in " + cfg_.path, err);
      }
      if (::ftruncate(fd_, static_cast<off_t>(total)) != 0) {
        return io_failure("ssd tier: sizing " + cfg_.path, errno);
      }
    }
    // A file left half made for a larger geometry keeps no more than this one needs.
    if (!reuse && static_cast<std::uint64_t>(st.st_size) > total &&
        ::ftruncate(fd_, static_cast<off_t>(total)) != 0) {
      return io_failure("ssd tier: sizing " + cfg_.path, errno);
    }
    std::vector<slot> held;
    if (reuse) {
      if (auto ok = read_directory(held); !ok) return ok;
    } else if (auto ok = format_file(); !ok) {
      return ok;
    }
    slots_ = std::make_unique<slot_table>(cfg_.blocks, held);
    if (cfg_.direct && cfg_.block_bytes % alignment == 0) {
      direct_fd_ = ::open(cfg_.path.c_str(), O_RDWR | O_DIRECT | O_CLOEXEC);  // -1: buffered
    }
    return {};
  }

  result<void> format_file() {
    // Directory (all records empty) under the being-made header, then the header that makes
    // the file valid.
    std::vector<std::byte> zeros(std::size_t{64} << 10);
    const std::uint64_t dir_end = header_bytes + std::uint64_t{cfg_.blocks} * record_bytes;
    for (std::uint64_t off = header_bytes; off < dir_end; off += zeros.size()) {
      const std::size_t n =
          static_cast<std::size_t>(std::min<std::uint64_t>(zeros.size(), dir_end - off));
      if (auto ok = pwrite_all(fd_, zeros.data(), n, off, "clearing the directory"); !ok) {
        return ok;
      }
    }
    return write_header(magic, "writing the header");
  }
  result<void> write_header(const char (&which)[8], const char* what) {
    header h{};
    std::memcpy(h.magic, which, sizeof h.magic);
    h.format = format;
    h.record_bytes = record_bytes;
    h.block_bytes = cfg_.block_bytes;
    h.blocks = cfg_.blocks;
    h.data_offset = data_off_;
    // Without persist no block is recorded, so the file names no model: any model may reuse it.
    const std::string_view model = cfg_.persist ? std::string_view(cfg_.model) : "";
    h.model_hash = sum(model.data(), model.size());
    h.model_bytes = model.size();
    std::memcpy(h.model_name, model.data(), std::min(model.size(), model_name_bytes));
    h.checksum = sum(&h, offsetof(header, checksum));
    return pwrite_all(fd_, &h, sizeof h, 0, what);
  }

  result<void> read_directory(std::vector<slot>& held) {
    const std::size_t per = 1024;
    std::vector<std::byte> raw(per * record_bytes);
    for (std::size_t first = 0; first < cfg_.blocks; first += per) {
      const std::size_t n = std::min(per, cfg_.blocks - first);
      if (auto ok = pread_all(fd_, raw.data(), n * record_bytes,
                              header_bytes + first * record_bytes, "reading the directory");
          !ok)
        return ok;
      for (std::size_t i = 0; i < n; ++i) {
        record r{};
        std::memcpy(&r, raw.data() + i * record_bytes, sizeof r);
        if (r.valid == 0) continue;
        const auto s = static_cast<slot>(first + i);
        if (r.valid != 1 || r.key_bytes == 0 || r.key_bytes > max_key_bytes ||
            r.parent_bytes > max_key_bytes || r.checksum != sum(&r, offsetof(record, checksum))) {
          ++discarded_;
          continue;
        }
        persisted_block b{s, r.key, r.parent, r.key_bytes, r.parent_bytes};
        recovered_.push_back(b);
        held.push_back(s);
        sums_[s] = r.data_checksum;
        sum_known_[s] = 1;
        tagged_[s] = 1;
      }
    }
    return {};
  }

  result<void> write_record(slot s, std::span<const std::byte> key,
                            std::span<const std::byte> parent, std::uint64_t data_sum) {
    std::array<std::byte, record_bytes> raw{};
    if (!key.empty()) {
      record r{};
      r.valid = 1;
      r.key_bytes = static_cast<std::uint8_t>(key.size());
      r.parent_bytes = static_cast<std::uint8_t>(parent.size());
      std::memcpy(r.key.data(), key.data(), key.size());
      if (!parent.empty()) std::memcpy(r.parent.data(), parent.data(), parent.size());
      r.data_checksum = data_sum;
      r.checksum = sum(&r, offsetof(record, checksum));
      std::memcpy(raw.data(), &r, sizeof r);
    }
    if (auto ok =
            pwrite_all(fd_, raw.data(), raw.size(), header_bytes + std::uint64_t{s} * record_bytes,
                       "writing a directory record");
        !ok)
      return ok;
    if (key.empty()) {
      std::lock_guard lock(sums_mutex_);
      tagged_[s] = 0;
    }
    return {};
  }

  bool tagged(slot s) const {
    std::lock_guard lock(sums_mutex_);
    return tagged_[s] != 0;
  }
  void forget(slot s) {
    std::lock_guard lock(sums_mutex_);
    sum_known_[s] = 0;
    tagged_[s] = 0;
  }

  result<void> pread_all(int fd, void* buf, std::size_t n, std::uint64_t off,
                         const char* what) const {
    auto* p = static_cast<std::byte*>(buf);
    while (n > 0) {
      const ssize_t got = ::pread(fd, p, n, static_cast<off_t>(off));
      if (got < 0 && errno == EINTR) continue;
      if (got < 0) return io_failure("ssd tier: " + std::string(what) + " of " + cfg_.path, errno);
      if (got == 0) {
        return fail(errc::io_error,
                    "ssd tier: " + std::string(what) + ": " + cfg_.path + " ends early");
      }
      p += got;
      n -= static_cast<std::size_t>(got);
      off += static_cast<std::uint64_t>(got);
    }
    return {};
  }
  result<void> pwrite_all(int fd, const void* buf, std::size_t n, std::uint64_t off,
                          const char* what) const {
    const auto* p = static_cast<const std::byte*>(buf);
    while (n > 0) {
      const ssize_t put = ::pwrite(fd, p, n, static_cast<off_t>(off));
      if (put < 0 && errno == EINTR) continue;
      if (put < 0) return io_failure("ssd tier: " + std::string(what) + " of " + cfg_.path, errno);
      if (put == 0) {
        return fail(errc::io_error,
                    "ssd tier: " + std::string(what) + " of " + cfg_.path + " wrote nothing");
      }
      p += put;
      n -= static_cast<std::size_t>(put);
      off += static_cast<std::uint64_t>(put);
    }
    return {};
  }

  void start_threads() {
    for (unsigned i = 0; i < cfg_.io_threads; ++i) workers_.emplace_back([this] { work(); });
  }

  // Takes one block at a time: every I/O thread works on the first batch queued (so a batch of
  // N blocks has up to io_threads transfers in flight, not one), loads before stores (an engine
  // waits for a load; a store is a block moving down), each queue in order. Until 2026-12-07 a
  // batch went whole to one thread: its blocks were read one after another.
  void work() {
    for (;;) {
      block_copy<slot> c{};
      copy_direction dir{};
      std::shared_ptr<copy_job> job;
      {
        std::unique_lock lock(queue_mutex_);
        queue_cv_.wait(lock, [&] { return stopping_ || !loads_.empty() || !stores_.empty(); });
        if (loads_.empty() && stores_.empty()) return;  // stopping, and everything queued is done
        // Loads first, but a store block after every loads_before_store loads in a row, so that
        // steady loads cannot hold stores (and the host slots they keep) for ever.
        const bool load =
            !loads_.empty() && (stores_.empty() || loads_in_row_ < loads_before_store);
        loads_in_row_ = load && !stores_.empty() ? loads_in_row_ + 1 : 0;
        dir = load ? copy_direction::to_host : copy_direction::from_host;
        auto& q = load ? loads_ : stores_;
        batch& b = q.front();
        c = b.copies[b.next++];
        if (b.next == b.copies.size()) {
          job = std::move(b.job);
          q.pop_front();
        } else {
          job = b.job;  // copying a shared_ptr allocates nothing
        }
      }
      // Out of memory (an error's text) fails this copy, not the process: the failure without a
      // text allocates nothing.
      result<void> ok;
      detail::instead_if_throws([&] { ok = transfer(dir, c); },
                                [&] {
                                  ok = failure{make_error_code(errc::io_error), {}};
                                });
      if (ok) {
        job->finish(1);
      } else {
        const failure why = std::move(ok).take_failure();
        job->finish(1, &why);
      }
    }
  }

  // One block between its slot and the host buffer; the direct descriptor for aligned buffers.
  result<void> transfer(copy_direction dir, const block_copy<slot>& c) {
    const std::uint64_t off = data_off_ + std::uint64_t{c.slot} * cfg_.block_bytes;
    const bool aligned = reinterpret_cast<std::uintptr_t>(c.host) % alignment == 0;
    const int fd = direct_fd_ >= 0 && aligned ? direct_fd_ : fd_;
    if (dir == copy_direction::from_host) {
      const std::uint64_t s = sum(c.host, cfg_.block_bytes);
      if (auto ok = pwrite_all(fd, c.host, cfg_.block_bytes, off, "writing a block"); !ok) {
        return ok;
      }
      std::lock_guard lock(sums_mutex_);
      sums_[c.slot] = s;
      sum_known_[c.slot] = 1;
      return {};
    }
    if (auto ok = pread_all(fd, c.host, cfg_.block_bytes, off, "reading a block"); !ok) return ok;
    bool known = false;
    std::uint64_t expected = 0;
    {
      std::lock_guard lock(sums_mutex_);
      known = sum_known_[c.slot] != 0;
      expected = sums_[c.slot];
    }
    if (known && sum(c.host, cfg_.block_bytes) != expected) {
      return fail(errc::malformed_input, "ssd tier: slot " + std::to_string(c.slot) + " of " +
                                             cfg_.path + " does not match its checksum");
    }
    return {};
  }

  ssd_tier_config cfg_;
  std::uint64_t data_off_;
  int fd_ = -1;
  int direct_fd_ = -1;
  std::unique_ptr<slot_table> slots_;
  std::mutex release_mutex_;
  std::vector<persisted_block> recovered_;
  std::size_t discarded_ = 0;

  mutable std::mutex sums_mutex_;
  std::vector<std::uint64_t> sums_;      // data checksum per slot, when known
  std::vector<std::uint8_t> sum_known_;  // written (or recovered) since last handed out
  std::vector<std::uint8_t> tagged_;     // has a directory record

  std::mutex queue_mutex_;
  std::condition_variable queue_cv_;
  std::list<batch> loads_;   // to_host
  std::list<batch> stores_;  // from_host
  static constexpr unsigned loads_before_store = 16;
  unsigned loads_in_row_ = 0;  // blocks taken from loads_ while stores_ waited
  bool stopping_ = false;
  std::vector<std::thread> workers_;
};

static_assert(StorageTier<ssd_tier>);

}  // namespace kvc::inline v0
