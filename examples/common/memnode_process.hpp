// Starts a kvc-memnode process for a program that needs memory nodes of its own (kvc-replay's
// sweeps start a fresh one per run) and stops it: a shm segment of its own name, a bootstrap port
// chosen by the system, a random secret passed in the environment (never on the command line),
// its output in a log file that a failure quotes. The node stops when the thread that started it
// ends (kvc-memnode --parent-pid): a program that dies does not leave its nodes behind.
//
//   auto node = kvc_examples::memnode_process::start(options::of(path, 64 << 20, 65536));
//   transport.connect("127.0.0.1", node->port(), node->secret());
//   node->stop();   // SIGTERM, then its exit status; the destructor does the same
#pragma once

#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fcntl.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <kvc/error.hpp>
#include <kvc/index/layout.hpp>
#include <kvc/transport/region.hpp>
#include <random>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

extern char** environ;  // NOLINT(readability-redundant-declaration): POSIX declares it nowhere

namespace kvc_examples {

// `name` beside the running program, or in ../<dir>/ of it (a build tree: examples/<dir>/name),
// else `name` itself (looked up in PATH).
inline std::string find_program(const std::string& name, const std::string& dir) {
  std::error_code ec;
  const auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    for (const auto& p :
         {self.parent_path() / name, self.parent_path().parent_path() / dir / name}) {
      if (std::filesystem::exists(p, ec)) return p.string();
    }
  }
  return name;
}

// The smallest region (whole MiB) whose index holds at least `blocks` blocks of `block_bytes`.
[[nodiscard]] inline kvc::result<std::size_t> region_bytes_for(std::size_t blocks,
                                                               std::size_t block_bytes,
                                                               unsigned clients) {
  const auto holds = [&](std::uint64_t mib) -> kvc::result<bool> {
    auto g = kvc::index_layout::geometry::fit(mib << 20, kvc::region_header::reserved_bytes,
                                              block_bytes, clients);
    if (!g && g.error() == kvc::errc::invalid_config) return std::move(g).take_failure();
    return g && g->slabs() >= blocks;
  };
  std::uint64_t lo = 1, hi = std::uint64_t{1} << 20;  // 1 MiB .. 1 TiB
  auto top = holds(hi);
  if (!top) return std::move(top).take_failure();
  if (!*top)
    return kvc::fail(kvc::errc::invalid_config, "no region up to 1 TiB holds that many blocks");
  while (lo < hi) {
    const std::uint64_t mid = lo + (hi - lo) / 2;
    auto h = holds(mid);
    if (!h) return std::move(h).take_failure();
    if (*h) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return static_cast<std::size_t>(lo << 20);
}

class memnode_process {
 public:
  struct options {
    // The usual three, for brace initialisation without naming every field.
    static options of(std::string binary, std::size_t bytes, std::size_t block_bytes) {
      options o;
      o.binary = std::move(binary);
      o.bytes = bytes;
      o.block_bytes = block_bytes;
      return o;
    }
    std::string binary = "kvc-memnode";
    std::size_t bytes = std::size_t{64} << 20;
    std::size_t block_bytes = 65536;  // the index's KV data slot
    unsigned index_clients = 64;
    std::vector<std::string> extra_args;       // e.g. {"--transport", "verbs", "--device", "rxe0"}
    std::chrono::milliseconds timeout{20000};  // to be serving
  };

  [[nodiscard]] static kvc::result<memnode_process> start(const options& o) {
    static std::atomic<unsigned> started{0};
    memnode_process p;
    // The process id and a counter, and a random part: a node killed before its cleanup leaves
    // its segment behind, and a later run given the same process id must not find it taken.
    std::random_device rd;
    char nonce[9];
    std::snprintf(nonce, sizeof nonce, "%08x", rd());
    const std::string tag = "kvc-memnode-" + std::to_string(::getpid()) + "-" + nonce + "-" +
                            std::to_string(started.fetch_add(1));
    const auto dir = std::filesystem::temp_directory_path();
    p.segment_ = "/" + tag;
    p.ready_ = (dir / (tag + ".port")).string();
    p.log_ = (dir / (tag + ".log")).string();
    char secret[33];
    std::snprintf(secret, sizeof secret, "%08x%08x%08x%08x", rd(), rd(), rd(), rd());
    p.secret_ = secret;
    std::vector<std::string> args = {o.binary,
                                     "--name",
                                     p.segment_,
                                     "--size",
                                     std::to_string(o.bytes),
                                     "--block-bytes",
                                     std::to_string(o.block_bytes),
                                     "--index-clients",
                                     std::to_string(o.index_clients),
                                     "--port",
                                     "0",
                                     "--ready-file",
                                     p.ready_,
                                     "--parent-pid",
                                     std::to_string(::getpid())};
    args.insert(args.end(), o.extra_args.begin(), o.extra_args.end());
    std::vector<std::string> env = {"KVC_SECRET=" + p.secret_};
    for (char** e = environ; *e != nullptr; ++e) {
      if (std::string_view(*e).substr(0, 11) != "KVC_SECRET=") env.emplace_back(*e);
    }
    std::vector<char*> argv, envp;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    for (auto& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);
    std::error_code ec;
    std::filesystem::remove(p.ready_, ec);  // a stale one must not pass for this node's
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, p.log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    const int rc = posix_spawnp(&p.pid_, o.binary.c_str(), &fa, nullptr, argv.data(), envp.data());
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
      p.pid_ = -1;
      return kvc::fail(kvc::errc::io_error, "cannot start " + o.binary + ": " + std::strerror(rc));
    }
    const auto deadline = std::chrono::steady_clock::now() + o.timeout;
    for (;;) {
      if (std::ifstream in(p.ready_); in && (in >> p.port_) && p.port_ > 0) return p;
      int status = 0;
      if (::waitpid(p.pid_, &status, WNOHANG) == p.pid_) {
        p.pid_ = -1;
        p.remove_segment();
        return kvc::fail(kvc::errc::io_error, o.binary + " exited before serving: " + p.log());
      }
      if (std::chrono::steady_clock::now() > deadline) {
        (void)p.stop();
        return kvc::fail(kvc::errc::timed_out, o.binary + " was not serving after " +
                                                   std::to_string(o.timeout.count()) +
                                                   " ms: " + p.log());
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }

  memnode_process(memnode_process&& o) noexcept
      : pid_(std::exchange(o.pid_, -1)),
        port_(o.port_),
        secret_(std::move(o.secret_)),
        segment_(std::move(o.segment_)),
        ready_(std::move(o.ready_)),
        log_(std::move(o.log_)) {}
  memnode_process& operator=(memnode_process&&) = delete;
  memnode_process(const memnode_process&) = delete;
  memnode_process& operator=(const memnode_process&) = delete;
  ~memnode_process() {
    (void)stop();
    std::error_code ec;
    if (!ready_.empty()) std::filesystem::remove(ready_, ec);
    if (!log_.empty()) std::filesystem::remove(log_, ec);
  }

  [[nodiscard]] std::uint16_t port() const noexcept { return static_cast<std::uint16_t>(port_); }
  [[nodiscard]] const std::string& secret() const noexcept { return secret_; }
  // The node's shm segment and its process (-1 once stopped).
  [[nodiscard]] const std::string& segment() const noexcept { return segment_; }
  [[nodiscard]] pid_t pid() const noexcept { return pid_; }

  // SIGTERM, then waits (SIGKILL after 5 s): an error when it did not exit with status 0
  // (quoting its log).
  kvc::result<void> stop() {
    if (pid_ < 0) return {};
    const pid_t pid = std::exchange(pid_, -1);
    ::kill(pid, SIGTERM);
    int status = 0;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    for (;;) {
      const pid_t got = ::waitpid(pid, &status, WNOHANG);
      if (got == pid) break;
      if (got < 0 && errno != EINTR) {
        return kvc::fail(kvc::errc::io_error, "kvc-memnode: waiting for it failed: " +
                                                  std::string(std::strerror(errno)));
      }
      if (std::chrono::steady_clock::now() > deadline) {
        ::kill(pid, SIGKILL);
        while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
        }
        remove_segment();
        return kvc::fail(kvc::errc::timed_out,
                         "kvc-memnode did not stop within 5 s of SIGTERM (killed): " + log());
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    remove_segment();
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      return kvc::fail(kvc::errc::io_error, "kvc-memnode did not stop cleanly: " + log());
    }
    return {};
  }

  // The node's output so far.
  [[nodiscard]] std::string log() const {
    std::ifstream in(log_);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

 private:
  memnode_process() = default;
  // A node that exited without its cleanup (killed, crashed) leaves its segment behind: the
  // name is this object's, so it removes it (nothing to do after a clean exit).
  void remove_segment() const {
    if (!segment_.empty()) ::shm_unlink(segment_.c_str());
  }
  pid_t pid_ = -1;
  int port_ = 0;
  std::string secret_, segment_, ready_, log_;
};

}  // namespace kvc_examples
