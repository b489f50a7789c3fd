// kvc/transport/bootstrap_server.hpp — the memory node's bootstrap listener: accepts TCP
// connections, reads one hello within a deadline, checks the cluster's shared secret (in
// constant time), asks the host's handler for a welcome, and keeps the session's state (a verbs
// QP) alive until the client closes the connection or the server stops.
//
// Hostile input: a malformed, oversized, slow or unauthenticated hello gets a refuse frame with
// the reason (when the socket still takes it) and the connection is closed; nothing the peer
// sends can crash the server or hold a thread past hello_timeout. Connections beyond
// max_connections are refused at once (a verbs client holds one per lane). TCP keepalive ends
// the sessions of client hosts that vanished. Not yet: a separate budget for connections still
// in their hello, so a flood of silent connections can keep clients out for hello_timeout.
//
// Concurrency: one listener thread plus one thread per open session; the handler is called from
// session threads, concurrently. stop() (also run by the destructor) closes everything and joins.
// Design: docs/design/transport.md.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

#include "kvc/error.hpp"
#include "kvc/transport/bootstrap.hpp"

namespace kvc::inline v0 {

class bootstrap_server {
 public:
  // What the handler gives an accepted client: the welcome, and state kept for the session.
  struct session {
    bootstrap::welcome welcome;
    std::shared_ptr<void> state;
  };
  using handler = std::function<result<session>(const bootstrap::hello&)>;
  using logger = std::function<void(const std::string&)>;

  struct options {
    std::string secret;
    std::string bind_address = "127.0.0.1";
    std::uint16_t port = 0;  // 0: any free port (see port())
    std::size_t max_connections = 256;
    std::chrono::milliseconds hello_timeout{2000};
    logger log;  // one line per refused connection; may be empty
  };

  struct counts {
    std::uint64_t welcomed = 0;
    std::uint64_t refused = 0;
  };

  [[nodiscard]] static result<std::unique_ptr<bootstrap_server>> start(options opts, handler h) {
    if (opts.secret.empty() || opts.secret.size() > bootstrap::max_secret) {
      return fail(errc::invalid_config, "the shared secret must be 1 to 256 bytes");
    }
    std::unique_ptr<bootstrap_server> s(new bootstrap_server(std::move(opts), std::move(h)));
    if (auto ok = s->listen(); !ok) return std::move(ok).take_failure();
    s->listener_ = std::thread([p = s.get()] { p->accept_loop(); });
    return s;
  }

  bootstrap_server(const bootstrap_server&) = delete;
  bootstrap_server& operator=(const bootstrap_server&) = delete;
  ~bootstrap_server() { stop(); }

  [[nodiscard]] std::uint16_t port() const noexcept { return port_; }
  [[nodiscard]] counts stats() const noexcept {
    return {welcomed_.load(std::memory_order_relaxed), refused_.load(std::memory_order_relaxed)};
  }
  [[nodiscard]] std::size_t open_sessions() const noexcept {
    return active_.load(std::memory_order_relaxed);
  }

  // Closes the listener and every session, and joins their threads. Idempotent.
  void stop() noexcept {
    if (stopped_.exchange(true)) return;
    const std::uint64_t one = 1;
    (void)!::write(stop_.get(), &one, sizeof one);
    if (listener_.joinable()) listener_.join();
    std::list<std::thread> threads;
    {
      std::lock_guard lock(mutex_);
      threads.swap(threads_);
    }
    for (auto& t : threads) t.join();
  }

 private:
  bootstrap_server(options opts, handler h) : opts_(std::move(opts)), handler_(std::move(h)) {}

  result<void> listen() {
    stop_ = bootstrap::unique_fd(::eventfd(0, EFD_CLOEXEC));
    if (!stop_) return fail(errc::io_error, "eventfd: " + bootstrap::detail::errno_text(errno));
    listen_ = bootstrap::unique_fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!listen_) return fail(errc::io_error, "socket: " + bootstrap::detail::errno_text(errno));
    const int on = 1;
    ::setsockopt(listen_.get(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(opts_.port);
    const std::string where = opts_.bind_address + ":" + std::to_string(opts_.port);
    if (::inet_pton(AF_INET, opts_.bind_address.c_str(), &addr.sin_addr) != 1) {
      return fail(errc::invalid_config, "bind address " + opts_.bind_address + " is not IPv4");
    }
    if (::bind(listen_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::listen(listen_.get(), 64) != 0) {
      return fail(errc::io_error,
                  "listening on " + where + ": " + bootstrap::detail::errno_text(errno));
    }
    socklen_t len = sizeof addr;
    ::getsockname(listen_.get(), reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    return {};
  }

  void accept_loop() {
    for (;;) {
      pollfd fds[2] = {{listen_.get(), POLLIN, 0}, {stop_.get(), POLLIN, 0}};
      if (::poll(fds, 2, -1) < 0) continue;  // EINTR
      if ((fds[1].revents & POLLIN) != 0) return;
      if ((fds[0].revents & POLLIN) == 0) continue;
      bootstrap::unique_fd fd(::accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC));
      if (!fd) {
        // Out of descriptors (EMFILE, ENFILE) or memory: the pending connection stays queued
        // and poll() would report it again at once; back off instead of spinning.
        if (errno != EINTR && errno != ECONNABORTED) {
          pollfd stop = {stop_.get(), POLLIN, 0};
          ::poll(&stop, 1, 100);
        }
        continue;
      }
      reap();
      if (active_.load() >= opts_.max_connections) {
        refuse(fd.get(), errc::unreachable, "too many connections", std::chrono::milliseconds(0));
        continue;
      }
      // A client host that dies without closing is noticed within about a minute.
      const int on = 1, idle = 30, interval = 10, probes = 3;
      ::setsockopt(fd.get(), SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
      ::setsockopt(fd.get(), IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
      ::setsockopt(fd.get(), IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval);
      ::setsockopt(fd.get(), IPPROTO_TCP, TCP_KEEPCNT, &probes, sizeof probes);
      ++active_;
      if (!spawn_session(std::move(fd))) {
        --active_;  // refused (no thread could be started); the descriptor is closed
      }
    }
  }

  // Starts the thread of one session. False (the client refused) when no thread can be made.
  bool spawn_session(bootstrap::unique_fd fd) {
    auto owned = std::make_shared<bootstrap::unique_fd>(std::move(fd));
    auto body = [this, owned] {
      serve(owned->get());
      owned->reset();
      std::lock_guard done_lock(mutex_);
      finished_.push_back(std::this_thread::get_id());
      --active_;
    };
    std::lock_guard lock(mutex_);
#if defined(__cpp_exceptions)
    try {
      threads_.emplace_back(std::move(body));
    } catch (...) {  // std::system_error (EAGAIN: thread limit) or std::bad_alloc
      refuse(owned->get(), errc::unreachable, "the memory node cannot start a session now",
             std::chrono::milliseconds(0));
      return false;
    }
#else
    threads_.emplace_back(std::move(body));
#endif
    return true;
  }

  // Joins session threads that ended.
  void reap() {
    std::lock_guard lock(mutex_);
    for (const auto id : finished_) {
      for (auto it = threads_.begin(); it != threads_.end(); ++it) {
        if (it->get_id() == id) {
          it->join();
          threads_.erase(it);
          break;
        }
      }
    }
    finished_.clear();
  }

  void serve(int fd) {
    auto msg = bootstrap::read_frame(fd, opts_.hello_timeout);
    if (!msg) {
      refuse(fd, errc::protocol_error, msg.message());
      return;
    }
    const auto* h = std::get_if<bootstrap::hello>(&*msg);
    if (h == nullptr) {
      refuse(fd, errc::protocol_error, "expected a hello");
      return;
    }
    if (!bootstrap::secrets_equal(h->secret, opts_.secret)) {
      refuse(fd, errc::unauthenticated, "wrong shared secret");
      return;
    }
    auto accepted = handler_(*h);
    if (!accepted) {
      refuse(fd, static_cast<errc>(accepted.error().value()), accepted.message());
      return;
    }
    if (!bootstrap::write_frame(fd, accepted->welcome, opts_.hello_timeout)) return;
    welcomed_.fetch_add(1, std::memory_order_relaxed);
    // The session lasts until the client closes (or sends anything: there is nothing more to
    // say) or the server stops; then its state (a QP) is released.
    pollfd fds[2] = {{fd, POLLIN, 0}, {stop_.get(), POLLIN, 0}};
    while (::poll(fds, 2, -1) < 0 && errno == EINTR) {
    }
  }

  // A refuse frame with the reason, then the connection is made ready to close (close_gently):
  // `linger` 0 from the listener, which must not stall.
  void refuse(int fd, errc code, const std::string& why,
              std::chrono::milliseconds linger = refused_linger) {
    refused_.fetch_add(1, std::memory_order_relaxed);
    bootstrap::refuse r;
    r.code = code;
    r.message = why.substr(0, bootstrap::max_refuse_message);
    for (char& c : r.message) {
      if (c == '\0') c = ' ';
    }
    (void)bootstrap::write_frame(fd, r, std::chrono::milliseconds(200));
    if (opts_.log) opts_.log("refused a client: " + r.message);
    close_gently(fd, linger);
  }
  static constexpr std::chrono::milliseconds refused_linger{100};

  // Before a refused connection is closed: a FIN after the refuse frame, then what the peer sent
  // and this side did not read (the rest of an oversized frame, a hello not read yet) is read and
  // dropped, for `linger` at most (and 1 MiB). Closing with unread data resets the connection,
  // and a reset throws away whatever of the refuse frame was still unsent: the peer would see a
  // reset, not the reason. (Until 2026-12-07 the connection was closed at once.)
  static void close_gently(int fd, std::chrono::milliseconds linger) {
    ::shutdown(fd, SHUT_WR);
    const auto until = std::chrono::steady_clock::now() + linger;
    char sink[4096];
    for (std::size_t drained = 0; drained < (std::size_t{1} << 20);) {
      const ssize_t n = ::recv(fd, sink, sizeof sink, MSG_DONTWAIT);
      if (n > 0) {
        drained += static_cast<std::size_t>(n);
        continue;
      }
      if (n == 0) return;  // the peer closed as well
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) return;
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          until - std::chrono::steady_clock::now());
      if (left.count() <= 0) return;
      pollfd p = {fd, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) < 0 && errno != EINTR) return;
    }
  }

  options opts_;
  handler handler_;
  bootstrap::unique_fd listen_;
  bootstrap::unique_fd stop_;
  std::uint16_t port_ = 0;
  std::thread listener_;
  std::mutex mutex_;
  std::list<std::thread> threads_;
  std::vector<std::thread::id> finished_;
  std::atomic<std::size_t> active_{0};
  std::atomic<std::uint64_t> welcomed_{0};
  std::atomic<std::uint64_t> refused_{0};
  std::atomic<bool> stopped_{false};
};

}  // namespace kvc::inline v0
