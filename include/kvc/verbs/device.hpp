// kvc/verbs/device.hpp — rdma-core plumbing shared by the verbs transport (clients) and the
// memory node: opening a device and port, choosing a GID, reliable-connected queue pairs and
// their INIT -> RTR -> RTS transitions, memory registration. Errors name the device and port.
//
// Only kvc/verbs/ includes <infiniband/verbs.h>; link kvc::verbs.
//
// Concurrency: a verbs_device may be shared by threads (ibverbs objects are thread-safe); a
// verbs_qp is used by one thread at a time. Design: docs/design/transport.md.
#pragma once

#include <infiniband/verbs.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "kvc/error.hpp"
#include "kvc/transport/bootstrap.hpp"

namespace kvc::inline v0 {

struct verbs_device_config {
  std::string device;  // "" = the first device found
  std::uint8_t port = 1;
  int gid_index = -1;  // -1 = the first RoCE v2 IPv4-mapped GID, else the first non-zero one
};

namespace detail {

struct ibv_deleter {
  void operator()(ibv_context* p) const noexcept { ::ibv_close_device(p); }
  void operator()(ibv_pd* p) const noexcept { ::ibv_dealloc_pd(p); }
  void operator()(ibv_cq* p) const noexcept { ::ibv_destroy_cq(p); }
  void operator()(ibv_qp* p) const noexcept { ::ibv_destroy_qp(p); }
  void operator()(ibv_mr* p) const noexcept { ::ibv_dereg_mr(p); }
};
template <class T>
using ibv_ptr = std::unique_ptr<T, ibv_deleter>;

inline std::string verbs_errno(std::string_view call, int err) {
  std::string text(call);
  text += ": ";
  text += std::strerror(err);
  return text;
}

}  // namespace detail

// An opened device, its protection domain and the port and GID kvc uses.
class verbs_device {
 public:
  // Opens the device and checks the port. errc::no_rdma_device when there is no device at all,
  // or not the one named, or the port is missing or down; the detail names what was asked for.
  [[nodiscard]] static result<std::shared_ptr<verbs_device>> open(const verbs_device_config& c) {
    const std::string asked = "(asked for device '" +
                              (c.device.empty() ? std::string("any") : c.device) + "' port " +
                              std::to_string(c.port) + ")";
    int count = 0;
    ibv_device** list = ::ibv_get_device_list(&count);
    if (list == nullptr || count == 0) {
      if (list != nullptr) ::ibv_free_device_list(list);
      return fail(errc::no_rdma_device, "no RDMA device found " + asked);
    }
    ibv_device* chosen = nullptr;
    std::string names;
    for (int i = 0; i < count; ++i) {
      const char* name = ::ibv_get_device_name(list[i]);
      names += names.empty() ? "" : ", ";
      names += name;
      if (chosen == nullptr && (c.device.empty() || c.device == name)) chosen = list[i];
    }
    if (chosen == nullptr) {
      ::ibv_free_device_list(list);
      return fail(errc::no_rdma_device, "RDMA device not found " + asked + "; present: " + names);
    }
    auto dev = std::shared_ptr<verbs_device>(new verbs_device());
    dev->name_ = ::ibv_get_device_name(chosen);
    dev->ctx_.reset(::ibv_open_device(chosen));
    const int open_err = errno;
    ::ibv_free_device_list(list);
    if (!dev->ctx_) {
      return fail(errc::no_rdma_device, detail::verbs_errno("ibv_open_device " + asked, open_err));
    }
    if (::ibv_query_device(dev->ctx_.get(), &dev->attr_) != 0) {
      return fail(errc::rdma_error, detail::verbs_errno("ibv_query_device " + asked, errno));
    }
    if (c.port == 0 || c.port > dev->attr_.phys_port_cnt ||
        ::ibv_query_port(dev->ctx_.get(), c.port, &dev->port_attr_) != 0) {
      return fail(errc::no_rdma_device, "RDMA port not found " + asked + "; " + dev->name_ +
                                            " has " + std::to_string(dev->attr_.phys_port_cnt) +
                                            " port(s)");
    }
    if (dev->port_attr_.state != IBV_PORT_ACTIVE) {
      return fail(errc::no_rdma_device, "RDMA port is not active " + asked + ": " +
                                            ::ibv_port_state_str(dev->port_attr_.state));
    }
    dev->port_ = c.port;
    if (auto gid = dev->choose_gid(c.gid_index, asked); !gid) return std::move(gid).take_failure();
    dev->pd_.reset(::ibv_alloc_pd(dev->ctx_.get()));
    if (!dev->pd_) return fail(errc::rdma_error, detail::verbs_errno("ibv_alloc_pd", errno));
    return dev;
  }

  [[nodiscard]] ibv_context* context() const noexcept { return ctx_.get(); }
  [[nodiscard]] ibv_pd* pd() const noexcept { return pd_.get(); }
  [[nodiscard]] std::uint8_t port() const noexcept { return port_; }
  [[nodiscard]] const std::string& name() const noexcept { return name_; }
  [[nodiscard]] const ibv_device_attr& attributes() const noexcept { return attr_; }
  [[nodiscard]] const ibv_port_attr& port_attributes() const noexcept { return port_attr_; }
  [[nodiscard]] int gid_index() const noexcept { return gid_index_; }
  [[nodiscard]] const ibv_gid& gid() const noexcept { return gid_; }
  [[nodiscard]] bool ethernet() const noexcept {
    return port_attr_.link_layer == IBV_LINK_LAYER_ETHERNET;
  }

  // Registers memory for local access and, when `remote`, for remote READ, WRITE and atomics.
  [[nodiscard]] result<detail::ibv_ptr<ibv_mr>> register_memory(std::span<std::byte> bytes,
                                                                bool remote) const {
    unsigned access = IBV_ACCESS_LOCAL_WRITE;
    if (remote) {
      access |= IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_ATOMIC;
    }
    detail::ibv_ptr<ibv_mr> mr(::ibv_reg_mr(pd_.get(), bytes.data(), bytes.size(), access));
    if (!mr) {
      return fail(
          errc::rdma_error,
          detail::verbs_errno(
              "ibv_reg_mr of " + std::to_string(bytes.size()) + " bytes on " + name_, errno));
    }
    return mr;
  }

 private:
  verbs_device() = default;

  result<void> choose_gid(int wanted, const std::string& asked) {
    const int table = port_attr_.gid_tbl_len;
    auto usable = [](const ibv_gid& g) {
      return std::any_of(std::begin(g.raw), std::end(g.raw), [](auto b) { return b != 0; });
    };
    if (wanted >= 0) {
      if (wanted >= table || ::ibv_query_gid(ctx_.get(), port_, wanted, &gid_) != 0 ||
          !usable(gid_)) {
        return fail(errc::no_rdma_device,
                    "GID index " + std::to_string(wanted) + " is not usable " + asked);
      }
      gid_index_ = wanted;
      return {};
    }
    int fallback = -1;
    for (int i = 0; i < table; ++i) {
      ibv_gid_entry e{};
      if (::ibv_query_gid_ex(ctx_.get(), port_, static_cast<std::uint32_t>(i), &e, 0) != 0) {
        continue;
      }
      if (!usable(e.gid)) continue;
      const bool v4_mapped = e.gid.raw[10] == 0xFF && e.gid.raw[11] == 0xFF &&
                             std::all_of(e.gid.raw, e.gid.raw + 10, [](auto b) { return b == 0; });
      if (e.gid_type == IBV_GID_TYPE_ROCE_V2 && v4_mapped) {
        gid_index_ = i;
        gid_ = e.gid;
        return {};
      }
      if (fallback < 0) {
        fallback = i;
        gid_ = e.gid;
      }
    }
    if (fallback < 0 && !ethernet()) {  // InfiniBand: the LID addresses the port, GID 0 is fine
      fallback = 0;
      if (::ibv_query_gid(ctx_.get(), port_, 0, &gid_) != 0) gid_ = {};
    }
    if (fallback < 0) return fail(errc::no_rdma_device, "no usable GID " + asked);
    gid_index_ = fallback;
    return {};
  }

  std::string name_;
  detail::ibv_ptr<ibv_context> ctx_;
  detail::ibv_ptr<ibv_pd> pd_;
  ibv_device_attr attr_{};
  ibv_port_attr port_attr_{};
  std::uint8_t port_ = 1;
  int gid_index_ = 0;
  ibv_gid gid_{};
};

// A reliable-connected queue pair on a completion queue the caller owns.
class verbs_qp {
 public:
  // Creates the QP in INIT state with room for `depth` outstanding sends.
  [[nodiscard]] static result<verbs_qp> create(std::shared_ptr<verbs_device> dev, ibv_cq* cq,
                                               std::uint32_t depth) {
    ibv_qp_init_attr init{};
    init.send_cq = cq;
    init.recv_cq = cq;
    init.qp_type = IBV_QPT_RC;
    init.sq_sig_all = 0;  // selective signalling: only the WRs that ask complete
    init.cap.max_send_wr = depth;
    init.cap.max_recv_wr = 1;
    init.cap.max_send_sge = 1;
    init.cap.max_recv_sge = 1;
    verbs_qp q;
    q.qp_.reset(::ibv_create_qp(dev->pd(), &init));
    if (!q.qp_) {
      return fail(errc::rdma_error, detail::verbs_errno("ibv_create_qp on " + dev->name(), errno));
    }
    ibv_qp_attr attr{};
    attr.qp_state = IBV_QPS_INIT;
    attr.pkey_index = 0;
    attr.port_num = dev->port();
    attr.qp_access_flags =
        IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_ATOMIC;
    if (const int err =
            ::ibv_modify_qp(q.qp_.get(), &attr,
                            IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS);
        err != 0) {
      return fail(errc::rdma_error, detail::verbs_errno("ibv_modify_qp to INIT", err));
    }
    q.psn_ = static_cast<std::uint32_t>(std::random_device{}()) & bootstrap::max_psn;
    q.dev_ = std::move(dev);
    return q;
  }

  // What the peer needs to connect to this QP.
  [[nodiscard]] bootstrap::endpoint local_endpoint() const noexcept {
    bootstrap::endpoint e;
    e.qp_num = qp_->qp_num;
    e.psn = psn_;
    e.lid = dev_->port_attributes().lid;
    std::memcpy(e.gid.data(), dev_->gid().raw, 16);
    e.mtu = static_cast<std::uint8_t>(dev_->port_attributes().active_mtu);
    return e;
  }

  // Connects to the peer's endpoint: INIT -> RTR -> RTS.
  [[nodiscard]] result<void> connect(const bootstrap::endpoint& peer) {
    const auto& dattr = dev_->attributes();
    ibv_qp_attr attr{};
    attr.qp_state = IBV_QPS_RTR;
    attr.path_mtu = static_cast<ibv_mtu>(
        std::min<int>(peer.mtu, static_cast<int>(dev_->port_attributes().active_mtu)));
    attr.dest_qp_num = peer.qp_num;
    attr.rq_psn = peer.psn;
    // Responder resources (reads and atomics this QP serves at once) are bounded by
    // max_qp_rd_atom, the initiator depth below by max_qp_init_rd_atom. Both sides use kvc's
    // 16 or their device's limit; devices with smaller limits than their peer's are not
    // negotiated yet.
    attr.max_dest_rd_atomic = static_cast<std::uint8_t>(std::clamp(dattr.max_qp_rd_atom, 1, 16));
    attr.min_rnr_timer = 12;
    attr.ah_attr.dlid = peer.lid;
    attr.ah_attr.sl = 0;
    attr.ah_attr.port_num = dev_->port();
    if (dev_->ethernet() || peer.lid == 0) {
      attr.ah_attr.is_global = 1;
      std::memcpy(attr.ah_attr.grh.dgid.raw, peer.gid.data(), 16);
      attr.ah_attr.grh.sgid_index = static_cast<std::uint8_t>(dev_->gid_index());
      attr.ah_attr.grh.hop_limit = 64;
    }
    if (const int err =
            ::ibv_modify_qp(qp_.get(), &attr,
                            IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN |
                                IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER);
        err != 0) {
      return fail(errc::rdma_error, detail::verbs_errno("ibv_modify_qp to RTR", err));
    }
    attr = {};
    attr.qp_state = IBV_QPS_RTS;
    attr.timeout = 14;  // 4.096 us * 2^14 = 67 ms per try
    attr.retry_cnt = 7;
    attr.rnr_retry = 7;
    attr.sq_psn = psn_;
    attr.max_rd_atomic = static_cast<std::uint8_t>(std::clamp(dattr.max_qp_init_rd_atom, 1, 16));
    if (const int err =
            ::ibv_modify_qp(qp_.get(), &attr,
                            IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY |
                                IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC);
        err != 0) {
      return fail(errc::rdma_error, detail::verbs_errno("ibv_modify_qp to RTS", err));
    }
    return {};
  }

  // Moves the QP to the error state: from then on it executes no request that reaches it (a
  // responder in error drops them; the peer sees its requests fail). How a memory node fences.
  [[nodiscard]] result<void> to_error() {
    ibv_qp_attr attr{};
    attr.qp_state = IBV_QPS_ERR;
    if (const int err = ::ibv_modify_qp(qp_.get(), &attr, IBV_QP_STATE); err != 0) {
      return fail(errc::rdma_error, detail::verbs_errno("ibv_modify_qp to ERR", err));
    }
    return {};
  }

  [[nodiscard]] ibv_qp* get() const noexcept { return qp_.get(); }

 private:
  std::shared_ptr<verbs_device> dev_;
  detail::ibv_ptr<ibv_qp> qp_;
  std::uint32_t psn_ = 0;
};

// A completion queue.
[[nodiscard]] inline result<detail::ibv_ptr<ibv_cq>> make_cq(const verbs_device& dev, int depth) {
  detail::ibv_ptr<ibv_cq> cq(::ibv_create_cq(dev.context(), depth, nullptr, nullptr, 0));
  if (!cq)
    return fail(errc::rdma_error, detail::verbs_errno("ibv_create_cq on " + dev.name(), errno));
  return cq;
}

}  // namespace kvc::inline v0
