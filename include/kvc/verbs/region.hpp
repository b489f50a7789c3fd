// kvc/verbs/region.hpp — the memory node's side of the verbs transport: the region, allocated
// (huge pages when the system has them reserved) and registered for remote READ, WRITE and
// atomics, and the answer to a client's hello: a queue pair connected to the client's.
//
// Concurrency: accept() may be called from several threads at once (one per client
// connection); the region's bytes are accessed only by clients, one-sided. Design:
// docs/design/transport.md.
#pragma once

#include <sys/mman.h>

#include <chrono>
#include <cstddef>
#include <cstring>
#include <fstream>
#include <memory>
#include <span>
#include <string>
#include <utility>

#include "kvc/transport/bootstrap.hpp"
#include "kvc/transport/region.hpp"
#include "kvc/verbs/device.hpp"

namespace kvc::inline v0 {

class verbs_region {
  struct mapping_deleter {
    std::size_t bytes;
    void operator()(std::byte* p) const noexcept { ::munmap(p, bytes); }
  };

 public:
  // Allocates `bytes` (huge pages first), registers them and writes the region header.
  [[nodiscard]] static result<verbs_region> create(std::shared_ptr<verbs_device> dev,
                                                   std::size_t bytes, node_id node) {
    if (bytes < 2 * region_header::reserved_bytes || bytes > remote_ptr::max_offset) {
      return fail(errc::invalid_argument,
                  "region size " + std::to_string(bytes) + " is below 8 KiB or beyond 2^48 bytes");
    }
    bool huge = true;
    // A hugetlb mapping is a whole number of huge pages (munmap insists on it).
    const std::size_t page = huge_page_bytes();
    std::size_t mapped = (bytes + page - 1) / page * page;
    void* base = ::mmap(nullptr, mapped, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_POPULATE, -1, 0);
    if (base == MAP_FAILED) {
      huge = false;
      mapped = bytes;
      base = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (base == MAP_FAILED) {
        return fail(errc::io_error, detail::verbs_errno("mmap of the region", errno));
      }
      (void)::madvise(base, bytes, MADV_HUGEPAGE);  // transparent huge pages, where enabled
    }
    verbs_region r;
    r.mem_ = std::unique_ptr<std::byte, mapping_deleter>(static_cast<std::byte*>(base),
                                                         mapping_deleter{mapped});
    r.bytes_ = bytes;
    write_region_header(static_cast<std::byte*>(base), bytes, node, transport_kind::verbs,
                        huge ? region_header::flag_huge_pages : 0);
    auto mr = dev->register_memory({static_cast<std::byte*>(base), bytes}, true);
    if (!mr) return std::move(mr).take_failure();
    r.mr_ = std::move(*mr);
    auto cq = make_cq(*dev, 16);
    if (!cq) return std::move(cq).take_failure();
    r.cq_ = std::move(*cq);
    r.dev_ = std::move(dev);
    r.node_ = node;
    return r;
  }

  [[nodiscard]] std::byte* base() const noexcept { return mem_.get(); }
  [[nodiscard]] std::size_t bytes() const noexcept { return bytes_; }
  [[nodiscard]] region_header& header() noexcept {
    return *reinterpret_cast<region_header*>(mem_.get());
  }
  [[nodiscard]] bool huge_pages() const noexcept {
    return (reinterpret_cast<const region_header*>(mem_.get())->flags &
            region_header::flag_huge_pages) != 0;
  }
  [[nodiscard]] const verbs_device& device() const noexcept { return *dev_; }

  // A queue pair connected to the client's endpoint, and the welcome that tells the client how
  // to reach the region through it. The caller keeps the QP as long as the client is connected,
  // and destroys it before the region.
  [[nodiscard]] result<std::pair<bootstrap::welcome, verbs_qp>> accept(
      const bootstrap::endpoint& client) {
    auto qp = verbs_qp::create(dev_, cq_.get(), 16);
    if (!qp) return std::move(qp).take_failure();
    if (auto ok = qp->connect(client); !ok) return std::move(ok).take_failure();
    bootstrap::welcome w;
    w.node_id = node_;
    w.region_size = bytes_;
    w.format_version = region_header::format;
    w.region_created_ms = header().created_unix_ms;
    w.access = bootstrap::verbs_access{reinterpret_cast<std::uint64_t>(mem_.get()), mr_->rkey,
                                       qp->local_endpoint()};
    return std::pair<bootstrap::welcome, verbs_qp>(std::move(w), std::move(*qp));
  }

 private:
  verbs_region() = default;

  // The system's default huge page size (/proc/meminfo), 2 MiB when it does not say.
  static std::size_t huge_page_bytes() {
    std::ifstream meminfo("/proc/meminfo");
    std::string key;
    std::size_t kib = 0;
    while (meminfo >> key) {
      if (key == "Hugepagesize:" && (meminfo >> kib) && kib > 0) return kib * 1024;
      meminfo.ignore(256, '\n');
    }
    return std::size_t{2} << 20;
  }
  std::shared_ptr<verbs_device> dev_;
  std::unique_ptr<std::byte, mapping_deleter> mem_{nullptr, mapping_deleter{0}};
  std::size_t bytes_ = 0;
  detail::ibv_ptr<ibv_mr> mr_;
  detail::ibv_ptr<ibv_cq> cq_;  // the node's QPs post nothing; RC needs a CQ all the same
  node_id node_ = 0;
};

}  // namespace kvc::inline v0
