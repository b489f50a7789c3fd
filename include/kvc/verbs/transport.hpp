// kvc/verbs/transport.hpp — the production Transport: one-sided RDMA READ, WRITE,
// compare-and-swap and fetch-and-add over rdma-core reliable-connected queue pairs.
//
// Connection: for every memory node and every lane, the client opens the node's bootstrap port
// (TCP), sends hello (shared secret + its QP), gets welcome (region address, rkey, size, the
// node's QP), connects the QPs and keeps the TCP connection open for the QP's life (the node
// destroys its QP when it closes). It then READs the region header and checks it.
//
// Lanes: `lanes` sets of QPs (one per node) with a completion queue each, so that several
// threads run batches at once. A batch takes a free lane when rung and holds it until it
// completed. Within a batch, each node's operations are one chain of work requests posted with
// one ibv_post_send (one doorbell), only the last signalled (selective signalling). The node
// executes a chain in order; a WRITE whose source bytes an earlier READ or atomic of the chain
// writes its result into carries IBV_SEND_FENCE, so it sends the result, not the old bytes.
//
// Errors: bounds, alignment and unknown nodes are checked before posting (the same statuses as
// every transport). Error completions map to errc::rdma_error (remote access errors: a bad key
// or address) or errc::unreachable (retries exhausted); the rest of that node's chain is
// errc::not_executed. A QP that saw an error is in the error state: it is reconnected through
// the bootstrap port when next used, transparently. With no RDMA device, connect() says so
// ("no RDMA device found (asked for device 'x' port 1)").
//
// Guarantees: those of the Transport concept (kvc/concepts.hpp) as RDMA RC gives them: 8-byte
// atomics are atomic against other RDMA atomics (IBV_ATOMIC_HCA; rxe and most NICs; a device
// without atomics is refused) but not against a WRITE to the same word, which is why the concept
// forbids WRITEs to words that are CASed; READs are not atomic beyond 8 bytes. After a
// reconnect the node's region must be the one it had (same size), else errc::format_mismatch.
//
// Concurrency: a verbs_transport may be used from many threads, each with its own batches; a
// batch is used by one thread at a time (it may be rung on one and waited on another). A rung
// batch holds its lane until it completed: with every lane held, ring() waits up to the timeout
// for one, then fails the batch (errc::timed_out), so one thread must not keep more than `lanes`
// batches in flight (max_batches_in_flight()). A batch not completed `timeout` after its
// doorbell (seen by poll() as by wait()) destroys its QPs (no late response can land in the
// caller's buffers) and reports its unfinished operations' outcome as unknown. The transport
// must outlive its batches; registrations keep the device alive. Limits: at most
// max_ops_per_node operations per node in one batch (more fail with errc::invalid_argument),
// and messages up to the port's max_msg_sz.
// Design: docs/design/transport.md.
#pragma once

#include <poll.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "kvc/transport/batch.hpp"
#include "kvc/transport/bootstrap.hpp"
#include "kvc/transport/region.hpp"
#include "kvc/verbs/device.hpp"

namespace kvc::inline v0 {

struct verbs_node_address {
  node_id id = 0;
  std::string host;  // the node's bootstrap address
  std::uint16_t port = 0;
};

struct verbs_config {
  verbs_device_config device;
  std::string secret;  // the cluster's shared secret
  std::size_t lanes = 4;
  std::uint32_t max_ops_per_node = 256;
  std::chrono::milliseconds timeout{5000};  // bootstrap exchanges and a batch's completion
};

class verbs_transport {
  struct connection {
    node_id node = 0;
    bool present = false;
    bool broken = false;
    verbs_qp qp;
    bootstrap::unique_fd tcp;
    std::uint64_t addr = 0;
    std::uint32_t rkey = 0;
    std::uint64_t bytes = 0;
    std::uint64_t identity = 0;           // the transport's identity when it was made
    std::uint64_t region_created_ms = 0;  // the welcome's: which region of the node it reaches
  };
  struct lane {
    std::atomic<bool> busy{false};  // held by one rung batch until it completed (any thread)
    detail::ibv_ptr<ibv_cq> cq;
    std::vector<connection> conns;  // indexed by node id
    std::uint32_t generation = 0;   // tags work requests; completions of older batches ignored
  };
  struct shared {
    verbs_config config;
    std::shared_ptr<verbs_device> dev;
    std::vector<verbs_node_address> nodes;  // indexed by node id (absent: port 0)
    // Indexed by node id: its region's size, known from its first welcome (0: never reached).
    std::unique_ptr<std::atomic<std::uint64_t>[]> region_bytes;
    [[nodiscard]] std::uint64_t region_of(node_id n) const noexcept {
      return n < nodes.size() ? region_bytes[n].load(std::memory_order_acquire) : 0;
    }
    std::vector<std::unique_ptr<lane>> lanes;
    // Sent in every hello; replaced when a memory node refuses it as fenced (the batch that met
    // the refusal fails: only later ones, after the index registered anew, use the new one).
    std::atomic<std::uint64_t> identity{fresh_transport_identity()};

    // (Re)connects lane l's QP to node n through the bootstrap port.
    result<void> connect(lane& l, node_id n) {
      connection& c = l.conns[n];
      c = connection{};
      const verbs_node_address& a = nodes[n];
      const std::string where =
          "memory node " + std::to_string(n) + " at " + a.host + ":" + std::to_string(a.port);
      auto fd = bootstrap::connect_tcp(a.host, a.port, config.timeout);
      if (!fd) return std::move(fd).take_failure();
      c.tcp = bootstrap::unique_fd(*fd);
      auto qp = verbs_qp::create(dev, l.cq.get(), config.max_ops_per_node + 1);
      if (!qp) return std::move(qp).take_failure();
      bootstrap::hello h;
      h.secret = config.secret;
      h.transport = bootstrap::transport_kind::verbs;
      h.endpoint = qp->local_endpoint();
      h.identity = identity.load(std::memory_order_relaxed);
      if (auto ok = bootstrap::write_frame(c.tcp.get(), h, config.timeout); !ok) return ok;
      auto reply = bootstrap::read_frame(c.tcp.get(), config.timeout);
      if (!reply) return std::move(reply).take_failure();
      if (const auto* r = std::get_if<bootstrap::refuse>(&*reply)) {
        failure f = bootstrap::as_failure(*r);
        f.detail = where + " refused: " + f.detail;
        if (f.code == errc::fenced) {
          std::uint64_t sent = h.identity;  // another lane may have replaced it already
          identity.compare_exchange_strong(sent, fresh_transport_identity());
        }
        return f;
      }
      const auto* w = std::get_if<bootstrap::welcome>(&*reply);
      if (w == nullptr || w->transport() != bootstrap::transport_kind::verbs) {
        return fail(errc::protocol_error, where + " did not answer with a verbs welcome");
      }
      if (w->node_id != n || w->format_version != region_header::format) {
        return fail(errc::format_mismatch,
                    where + " is node " + std::to_string(w->node_id) + " with region format " +
                        std::to_string(w->format_version) + ", expected node " + std::to_string(n) +
                        " format " + std::to_string(region_header::format));
      }
      if (const std::uint64_t known = region_of(n); known != 0 && known != w->region_size) {
        return fail(errc::format_mismatch, where + " now has a region of " +
                                               std::to_string(w->region_size) + " bytes, not " +
                                               std::to_string(known) +
                                               ": it restarted with another region");
      }
      const auto& access = std::get<bootstrap::verbs_access>(w->access);
      if (auto ok = qp->connect(access.endpoint); !ok) return ok;
      c.qp = std::move(*qp);
      c.node = n;
      c.addr = access.region_addr;
      c.rkey = access.rkey;
      c.bytes = w->region_size;
      c.identity = h.identity;
      c.region_created_ms = w->region_created_ms;
      c.present = true;
      std::uint64_t unknown = 0;  // a node first reached now (down when the transport was made)
      region_bytes[n].compare_exchange_strong(unknown, w->region_size, std::memory_order_acq_rel);
      return {};
    }
  };

 public:
  // Registered local memory (an ibv_mr), deregistered when destroyed.
  class registration {
   public:
    [[nodiscard]] local_buffer buffer() const noexcept {
      return {static_cast<std::byte*>(mr_->addr), mr_->length, mr_->lkey};
    }

   private:
    friend verbs_transport;
    registration(std::shared_ptr<verbs_device> dev, detail::ibv_ptr<ibv_mr> mr)
        : dev_(std::move(dev)), mr_(std::move(mr)) {}
    std::shared_ptr<verbs_device> dev_;  // outlives the MR: deregistered before the PD goes
    detail::ibv_ptr<ibv_mr> mr_;
  };

  class batch : public batch_base {
   public:
    batch(batch&& o) noexcept
        : batch_base(std::move(o)),
          s_(o.s_),
          lane_(std::exchange(o.lane_, nullptr)),
          chains_(std::move(o.chains_)),
          required_(std::move(o.required_)),
          wrs_(std::move(o.wrs_)),
          sges_(std::move(o.sges_)) {}
    batch& operator=(batch&&) = delete;
    ~batch() {
      if (lane_ != nullptr) (void)wait();  // the lane's QPs must be drained before reuse
    }
    // Waits for a rung batch first: its work requests still use the caller's buffers.
    void clear() {
      if (lane_ != nullptr) (void)wait();
      batch_base::clear();
      required_.clear();
    }

    // The operations for `node` go out only over a connection made under `identity` (what the
    // caller registered with there, kvc::transport_identity); otherwise they fail unposted with
    // errc::fenced. After a fenced refusal the transport connects under a fresh identity, and a
    // client registered under the old one must register anew before it sends anything: a
    // fencing node cuts off only the identity the registration names; `identity` 0 holds them to
    // no identity (a client registering: any connection, but to the region it read).
    // With `region_created_ms` (not 0), they go out only to the region created then (what the
    // caller read the layout of): a node that restarted serves another region, at the same
    // address and of the same size maybe, and the transport reconnects to it unasked; the
    // operations fail unposted with errc::format_mismatch instead, until the caller read the new
    // region's header and requires it.
    void require_identity(node_id node, std::uint64_t identity,
                          std::uint64_t region_created_ms = 0) {
      required_.push_back({node, identity, region_created_ms});
    }

    void ring() {
      KVC_ASSERT(!rung() && !done(), "ring() twice without clear()");
      mark_rung();
      const auto ops = operations();
      if (ops.empty()) {
        mark_done();
        return;
      }
      if (!acquire_lane()) {
        for (std::size_t i = 0; i < ops.size(); ++i) {  // nothing was posted
          if (statuses()[i] == errc{}) {
            fail_op(i, errc::timed_out,
                    "no free lane: all " + std::to_string(s_->lanes.size()) +
                        " lanes are held by batches rung and not completed (a thread can hold "
                        "at most verbs_config::lanes batches in flight)");
          }
        }
        mark_done();
        return;
      }
      chains_.clear();
      for (std::size_t i = 0; i < ops.size(); ++i) {
        if (statuses()[i] != errc{}) continue;
        const node_id n = ops[i].remote.node();
        if (n >= s_->nodes.size() || s_->nodes[n].port == 0) {
          fail_op(i, errc::invalid_argument, "no memory node with that id is configured");
          continue;
        }
        if (s_->region_of(n) == 0) {
          // Never reached (down when the transport was made): connected first, so that the
          // operations are checked against its region.
          // One try per node and batch: failing marks its later operations not executed. What
          // someone must fix keeps its code (a wrong secret, a node fenced, another node or
          // region format); anything else (a node restarting that drops the connection) is
          // unreachable, as for a lost connection.
          if (auto ok = s_->connect(*lane_, n); !ok) {
            const bool to_fix = ok.error() == errc::unauthenticated || ok.error() == errc::fenced ||
                                ok.error() == errc::format_mismatch;
            fail_op(i, to_fix ? static_cast<errc>(ok.error().value()) : errc::unreachable,
                    "connecting: " + std::move(ok).take_failure().detail);
            continue;
          }
        }
        const std::uint64_t region = s_->region_of(n);
        if (const errc e = check(ops[i], region); e != errc{}) {
          fail_check(i, e, region);
          continue;
        }
        if (ops[i].local.size > s_->dev->port_attributes().max_msg_sz) {
          fail_op(i, errc::invalid_argument,
                  "larger than the port's largest message (" +
                      std::to_string(s_->dev->port_attributes().max_msg_sz) + " bytes)");
          continue;
        }
        chain_of(n).ops.push_back(i);
      }
      for (chain& c : chains_) post_chain(c);
      deadline_ = std::chrono::steady_clock::now() + s_->config.timeout;
      if (pending_chains() == 0) finish();
    }

    bool poll() {
      if (done()) return true;
      KVC_ASSERT(rung(), "poll() before ring()");
      ibv_wc wcs[16];
      const int got = ::ibv_poll_cq(lane_->cq.get(), 16, wcs);
      if (got < 0) {
        for (chain& c : chains_)
          abandon(c, errc::rdma_error, "ibv_poll_cq failed; outcome unknown");
      }
      for (int k = 0; k < got; ++k) complete(wcs[k]);
      if (pending_chains() == 0) {
        finish();
      } else if (std::chrono::steady_clock::now() > deadline_) {
        // The timeout runs from the doorbell, for poll() as for wait(): a batch a node never
        // completes ends for a caller that only polls too.
        for (chain& c : chains_) {
          abandon(c, errc::timed_out, "no completion before the deadline; outcome unknown");
        }
        finish();
      }
      return done();
    }

    result<void> wait() {
      KVC_ASSERT(rung() || done(), "wait() before ring()");
      while (!poll()) {
      }
      return outcome();
    }

   private:
    friend verbs_transport;
    struct chain {
      node_id node = 0;
      std::vector<std::size_t> ops;
      bool pending = false;
      std::size_t failed_at = npos;  // index into ops of the failing work request
      errc error{};
      std::string why;
      bool unknown = false;      // the later operations may have run: they report `error` too
      bool client_side = false;  // refused before posting: the connection is fine
    };

    explicit batch(shared* s) noexcept : s_(s) {}

    chain& chain_of(node_id n) {
      for (chain& c : chains_) {
        if (c.node == n) return c;
      }
      chains_.push_back(chain{n, {}, false, npos, errc{}, {}, false, false});
      return chains_.back();
    }
    [[nodiscard]] std::size_t pending_chains() const noexcept {
      std::size_t n = 0;
      for (const chain& c : chains_) n += c.pending;
      return n;
    }

    // Takes a free lane, waiting up to the timeout while all are held (false then).
    bool acquire_lane() {
      const std::size_t count = s_->lanes.size();
      const std::size_t start = std::hash<std::thread::id>{}(std::this_thread::get_id()) % count;
      const auto deadline = std::chrono::steady_clock::now() + s_->config.timeout;
      for (;;) {
        for (std::size_t k = 0; k < count; ++k) {
          lane* l = s_->lanes[(start + k) % count].get();
          bool expected = false;
          if (l->busy.compare_exchange_strong(expected, true, std::memory_order_acquire)) {
            lane_ = l;
            ++lane_->generation;
            return true;
          }
        }
        if (std::chrono::steady_clock::now() > deadline) return false;
        std::this_thread::yield();
      }
    }

    void finish() {
      for (chain& c : chains_) {
        if (c.failed_at == npos) continue;
        if (c.unknown) {
          fail_op_unknown(c.ops[c.failed_at], c.error, c.why);
        } else {
          fail_op(c.ops[c.failed_at], c.error, c.why);
        }
        if (lane_ != nullptr && !c.client_side) lane_->conns[c.node].broken = true;
      }
      if (lane_ != nullptr) lane_->busy.store(false, std::memory_order_release);
      lane_ = nullptr;
      mark_done();
    }

    // Gives up on a chain whose completion will not come (or cannot be read): its QP is
    // destroyed at once, so no late response can land in the caller's buffers afterwards, and
    // its operations' outcome is unknown from the first one not known to have completed.
    void abandon(chain& c, errc e, const char* why) {
      if (!c.pending) return;
      c.pending = false;
      if (c.failed_at == npos) {
        c.failed_at = 0;
        c.error = e;
        c.why = why;
      }
      c.unknown = true;
      lane_->conns[c.node] = connection{};  // destroys the QP; reconnected when next used
    }

    void post_chain(chain& c) {
      if (c.ops.empty()) return;
      if (c.ops.size() > s_->config.max_ops_per_node) {
        c.failed_at = 0;
        c.client_side = true;
        c.error = errc::invalid_argument;
        c.why = std::to_string(c.ops.size()) +
                " operations for one node in a batch; the limit is " +
                std::to_string(s_->config.max_ops_per_node) + " (verbs_config::max_ops_per_node)";
        return;
      }
      connection& conn = lane_->conns[c.node];
      // A connection made under an identity since replaced (refused as fenced) was cut off.
      if (!conn.present || conn.broken ||
          conn.identity != s_->identity.load(std::memory_order_relaxed)) {
        if (auto ok = s_->connect(*lane_, c.node); !ok) {
          c.failed_at = 0;
          c.client_side = true;  // nothing posted; the next batch tries to connect again
          c.error = ok.error() == errc::fenced ? errc::fenced : errc::unreachable;
          c.why = "reconnecting: " + std::move(ok).take_failure().detail;
          return;
        }
      }
      for (const connection_requirement& r : required_) {
        if (r.node != c.node) continue;
        if (r.identity != 0 && r.identity != conn.identity) {
          c.failed_at = 0;
          c.client_side = true;  // nothing posted
          c.error = errc::fenced;
          c.why = "registered on the node under transport identity " + std::to_string(r.identity) +
                  ", which was refused as fenced since (now " + std::to_string(conn.identity) +
                  "): register anew";
          return;
        }
        if (r.region_created_ms != 0 && r.region_created_ms != conn.region_created_ms) {
          c.failed_at = 0;
          c.client_side = true;  // nothing posted
          c.error = errc::format_mismatch;
          c.why = "the node serves another region (created at " +
                  std::to_string(conn.region_created_ms) + " ms, not " +
                  std::to_string(r.region_created_ms) + "): it restarted; read its header again";
          return;
        }
      }
      const auto ops = operations();
      wrs_.assign(c.ops.size(), ibv_send_wr{});
      sges_.assign(c.ops.size(), ibv_sge{});
      // Local bytes that earlier READs and atomics of the chain write their results into.
      std::uintptr_t results_lo = UINTPTR_MAX, results_hi = 0;
      for (std::size_t k = 0; k < c.ops.size(); ++k) {
        const operation& op = ops[c.ops[k]];
        ibv_send_wr& wr = wrs_[k];
        ibv_sge& sge = sges_[k];
        sge.addr = reinterpret_cast<std::uint64_t>(op.local.data);
        sge.length = static_cast<std::uint32_t>(op.local.size);
        sge.lkey = op.local.lkey;
        wr.wr_id = std::uint64_t{lane_->generation} << 32 | c.ops[k];
        wr.sg_list = &sge;
        wr.num_sge = op.local.size > 0 ? 1 : 0;
        wr.next = k + 1 < c.ops.size() ? &wrs_[k + 1] : nullptr;
        wr.send_flags = k + 1 == c.ops.size() ? IBV_SEND_SIGNALED : 0;
        const std::uint64_t remote = conn.addr + op.remote.offset();
        switch (op.kind) {
          case op_kind::read:
            wr.opcode = IBV_WR_RDMA_READ;
            wr.wr.rdma = {remote, conn.rkey};
            break;
          case op_kind::write:
            wr.opcode = IBV_WR_RDMA_WRITE;
            wr.wr.rdma = {remote, conn.rkey};
            break;
          case op_kind::cas:
            wr.opcode = IBV_WR_ATOMIC_CMP_AND_SWP;
            wr.wr.atomic = {remote, op.compare, op.swap, conn.rkey};
            break;
          case op_kind::faa:
            wr.opcode = IBV_WR_ATOMIC_FETCH_AND_ADD;
            wr.wr.atomic = {remote, op.compare, 0, conn.rkey};
            break;
        }
        // The node executes the chain in order; what a fence adds is on this side: a READ's or
        // atomic's result may still be on its way into local memory when a later WRITE's
        // source is fetched. A WRITE that sends bytes an earlier result may land in waits for
        // it (IBV_SEND_FENCE); no other work request is fenced (rxe in Linux 6.1 sometimes
        // never resumes a fenced queue, so fences are kept to where they matter).
        const auto lo = reinterpret_cast<std::uintptr_t>(op.local.data);
        const auto hi = lo + op.local.size;
        if (op.kind == op_kind::write) {
          if (lo < results_hi && results_lo < hi) wr.send_flags |= IBV_SEND_FENCE;
        } else {
          results_lo = std::min(results_lo, lo);
          results_hi = std::max(results_hi, hi);
        }
      }
      ibv_send_wr* bad = nullptr;
      if (const int err = ::ibv_post_send(conn.qp.get(), wrs_.data(), &bad); err != 0) {
        // The work requests before `bad` were posted and may run: the QP is destroyed now and
        // their outcome is unknown; from `bad` on nothing was posted.
        const auto posted = static_cast<std::size_t>(bad - wrs_.data());
        c.failed_at = posted < c.ops.size() ? 0 : c.ops.size() - 1;
        c.error = errc::rdma_error;
        c.why = detail::verbs_errno("ibv_post_send", err);
        c.unknown = posted > 0;
        lane_->conns[c.node] = connection{};
        return;
      }
      c.pending = true;
    }

    void complete(const ibv_wc& wc) {
      if (static_cast<std::uint32_t>(wc.wr_id >> 32) != lane_->generation) return;  // stale
      const std::size_t op = wc.wr_id & 0xFFFFFFFFu;
      for (chain& c : chains_) {
        if (!c.pending || lane_->conns[c.node].qp.get()->qp_num != wc.qp_num) continue;
        if (wc.status != IBV_WC_SUCCESS && c.failed_at == npos) {
          for (std::size_t k = 0; k < c.ops.size(); ++k) {
            if (c.ops[k] == op) c.failed_at = k;
          }
          map_error(wc.status, c);
        }
        if (op == c.ops.back()) c.pending = false;  // the signalled tail: the chain is over
        return;
      }
    }

    static void map_error(ibv_wc_status status, chain& c) {
      c.why = ::ibv_wc_status_str(status);
      switch (status) {
        case IBV_WC_REM_ACCESS_ERR:
          c.error = errc::rdma_error;
          c.why += " (the memory node refused the key or address)";
          break;
        case IBV_WC_RETRY_EXC_ERR:
        case IBV_WC_RNR_RETRY_EXC_ERR:
          c.error = errc::unreachable;
          break;
        case IBV_WC_WR_FLUSH_ERR:      // flushed without an error of its own: which op failed is
          c.error = errc::rdma_error;  // unknown, so the chain is failed from its start
          c.failed_at = 0;
          break;
        default:
          c.error = errc::rdma_error;
          break;
      }
    }

    shared* s_;
    lane* lane_ = nullptr;
    std::vector<chain> chains_;
    std::chrono::steady_clock::time_point deadline_{};  // the doorbell's time plus the timeout
    std::vector<connection_requirement> required_;      // require_identity()
    std::vector<ibv_send_wr> wrs_;
    std::vector<ibv_sge> sges_;
  };

  // Opens the device, connects `lanes` QPs to every node and checks every region's header. A node
  // that cannot be reached (errc::unreachable or errc::timed_out: down, not started yet) is left
  // unconnected: batches with operations for it connect first (theirs fail with
  // errc::unreachable while it stays down), as after a lost connection. Fails when no node can
  // be reached, or with any other error (a refusal, another region format).
  [[nodiscard]] static result<verbs_transport> connect(const verbs_config& config,
                                                       std::span<const verbs_node_address> nodes) {
    if (config.lanes == 0 || config.max_ops_per_node == 0 || nodes.empty()) {
      return fail(errc::invalid_config,
                  "verbs_config needs lanes > 0, max_ops_per_node > 0 "
                  "and at least one memory node");
    }
    auto s = std::make_unique<shared>();
    s->config = config;
    auto dev = verbs_device::open(config.device);
    if (!dev) return std::move(dev).take_failure();
    s->dev = std::move(*dev);
    if (s->dev->attributes().atomic_cap == IBV_ATOMIC_NONE) {
      return fail(errc::not_supported,
                  "RDMA device " + s->dev->name() + " has no atomic operations (CAS, FAA)");
    }
    for (const auto& a : nodes) {
      if (a.port == 0) return fail(errc::invalid_config, "memory node " + a.host + " has port 0");
      if (a.id >= s->nodes.size()) s->nodes.resize(std::size_t{a.id} + 1);
      s->nodes[a.id] = a;
    }
    s->region_bytes = std::make_unique<std::atomic<std::uint64_t>[]>(s->nodes.size());
    std::vector<bool> down(s->nodes.size(), false);
    std::optional<failure> first_down;
    for (std::size_t i = 0; i < config.lanes; ++i) {
      auto l = std::make_unique<lane>();
      // Room for one batch per node plus the stale completions of an abandoned one.
      const int depth = static_cast<int>(2 * (config.max_ops_per_node + 1) * nodes.size());
      auto cq = make_cq(*s->dev, depth);
      if (!cq) return std::move(cq).take_failure();
      l->cq = std::move(*cq);
      l->conns.resize(s->nodes.size());
      for (const auto& a : nodes) {
        if (down[a.id]) continue;  // connected when a batch needs it
        auto ok = s->connect(*l, a.id);
        if (ok) continue;
        if (i > 0 || (ok.error() != errc::unreachable && ok.error() != errc::timed_out)) {
          return std::move(ok).take_failure();
        }
        down[a.id] = true;
        if (!first_down) first_down = std::move(ok).take_failure();
      }
      s->lanes.push_back(std::move(l));
    }
    if (first_down && std::all_of(nodes.begin(), nodes.end(),
                                  [&](const verbs_node_address& a) { return down[a.id]; })) {
      if (nodes.size() > 1)
        first_down->detail = "no memory node could be reached: " + first_down->detail;
      return std::move(*first_down);
    }
    verbs_transport t(std::move(s));
    if (auto ok = t.check_headers(nodes); !ok) return std::move(ok).take_failure();
    return t;
  }

  [[nodiscard]] batch new_batch() noexcept { return batch(s_.get()); }

  [[nodiscard]] result<registration> register_memory(std::span<std::byte> bytes) {
    auto mr = s_->dev->register_memory(bytes, false);
    if (!mr) return std::move(mr).take_failure();
    return registration(s_->dev, std::move(*mr));
  }

  [[nodiscard]] std::size_t max_ops_per_node() const noexcept {
    return s_->config.max_ops_per_node;
  }
  // Its lanes: a ring() with every lane held waits for one (kvc::max_batches_in_flight).
  [[nodiscard]] std::size_t max_batches_in_flight() const noexcept { return s_->lanes.size(); }
  // This transport object's identity in its hellos (kvc::transport_identity).
  [[nodiscard]] std::uint64_t identity() const noexcept {
    return s_->identity.load(std::memory_order_relaxed);
  }
  // Node `node`'s region size; 0 while it was never reached.
  [[nodiscard]] std::uint64_t region_bytes(node_id node) const noexcept {
    return s_->region_of(node);
  }
  [[nodiscard]] const verbs_device& device() const noexcept { return *s_->dev; }

  // Test hook: the timeout of later batches and bootstraps (a node that never answers in time
  // without waiting seconds for it). Not concurrent with batches.
  void set_timeout_for_testing(std::chrono::milliseconds timeout) noexcept {
    s_->config.timeout = timeout;
  }
  // Test hook: makes every lane's key for `node` wrong, as a faulty memory node's welcome would.
  // Not concurrent with batches.
  void corrupt_rkey_for_testing(node_id node) noexcept {
    for (auto& l : s_->lanes) l->conns[node].rkey ^= 0x5A5A;
  }

 private:
  explicit verbs_transport(std::unique_ptr<shared> s) noexcept : s_(std::move(s)) {}

  result<void> check_headers(std::span<const verbs_node_address> nodes) {
    region_header h;
    auto reg = register_memory({reinterpret_cast<std::byte*>(&h), sizeof h});
    if (!reg) return std::move(reg).take_failure();
    for (const auto& a : nodes) {
      if (s_->region_of(a.id) == 0) continue;  // not reached yet: checked by its first user
      auto b = new_batch();
      b.read({a.id, 0}, reg->buffer());
      b.ring();
      if (auto ok = b.wait(); !ok) return ok;
      if (auto ok = check_region_header(h, s_->region_of(a.id)); !ok) {
        return fail(errc::format_mismatch, "memory node " + std::to_string(a.id) + ": " +
                                               std::move(ok).take_failure().detail);
      }
    }
    return {};
  }

  std::unique_ptr<shared> s_;  // stable address: batches point at it
};

}  // namespace kvc::inline v0
