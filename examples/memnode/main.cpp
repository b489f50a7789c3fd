// kvc-memnode: a memory node. Allocates its region, makes it reachable (a shared-memory segment,
// or memory registered with an RDMA device), writes the region header, and serves the bootstrap
// protocol that tells authenticated clients how to reach the region. After that it only waits:
// clients read and write the region one-sided, without this process.
//
//   kvc-memnode --size 256M --secret-file /etc/kvc/secret                 (shm, the default)
//   kvc-memnode --transport verbs --device rxe0 --size 1G --listen 0.0.0.0 --port 7300 ...
//
// Prints one status line when ready and one when it stops (SIGTERM, SIGINT, SIGHUP, SIGQUIT).
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <variant>

#include "common/cli_checks.hpp"
#include "common/server_support.hpp"
#include "kvc/index/remote_index.hpp"
#include "kvc/transport/bootstrap_server.hpp"
#include "kvc/transport/shm.hpp"
#ifdef KVC_MEMNODE_VERBS
#include "kvc/verbs/fencing.hpp"
#include "kvc/verbs/region.hpp"
#endif

namespace {

struct settings {
  std::string transport = "shm";
  std::string size = "64M";
  unsigned node = 0;
  std::string name;  // shm segment
  std::string listen = "127.0.0.1";
  unsigned port = 7300;
  std::string secret;
  std::string secret_file;
  std::string device;
  unsigned ib_port = 1;
  int gid_index = -1;
  std::string ready_file;
  unsigned max_clients = 1024;
  bool replace = false;
  int parent_pid = 0;               // > 0: stop when that process ends
  std::string block_bytes = "64K";  // the index's KV data slot; 0 leaves the region unformatted
  unsigned index_clients = 64;
  unsigned fence_poll_ms = 10;  // verbs: how often to look for clients to fence; 0: never fence
};

int die(const std::string& message) {
  std::fprintf(stderr, "kvc-memnode: %s\n", message.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  settings s;
  CLI::App app{"kvc-memnode: a kvc memory node (shared memory or RDMA verbs)"};
  app.add_option("--transport", s.transport, "shm or verbs")
      ->check(CLI::IsMember({"shm", "verbs"}))
      ->capture_default_str();
  app.add_option("--size", s.size, "region size, e.g. 64M, 1G")->capture_default_str();
  app.add_option("--node", s.node, "this node's id (0..65535)")
      ->check(kvc_examples::decimal_count)
      ->check(CLI::Range(0u, 65535u))
      ->capture_default_str();
  app.add_option("--name", s.name, "shm segment name (default /kvc-node<id>)");
  app.add_option("--listen", s.listen, "bootstrap address (IPv4)")->capture_default_str();
  app.add_option("--port", s.port, "bootstrap port (0: any free port)")
      ->check(kvc_examples::decimal_count)
      ->check(CLI::Range(0u, 65535u))
      ->capture_default_str();
  auto* secret =
      app.add_option("--secret", s.secret, "the cluster's shared secret (default: $KVC_SECRET)");
  app.add_option("--secret-file", s.secret_file, "read the shared secret from this file")
      ->excludes(secret);
  app.add_option("--max-clients", s.max_clients,
                 "bootstrap connections held at once (a verbs client holds one per lane)")
      ->check(kvc_examples::decimal_count)
      ->check(CLI::Range(1u, 65536u))
      ->capture_default_str();
  app.add_option("--parent-pid", s.parent_pid,
                 "stop (as on SIGTERM) when the process with this pid, which started this node, "
                 "ends: a program's own node never outlives it")
      ->check(CLI::PositiveNumber);
  app.add_flag("--replace", s.replace,
               "remove a segment of the same name left by a node that did not stop cleanly");
  app.add_option("--device", s.device, "RDMA device (verbs; default: the first)");
  app.add_option("--ib-port", s.ib_port, "RDMA port (verbs)")
      ->check(kvc_examples::decimal_count)
      ->check(CLI::Range(1u, 255u))
      ->capture_default_str();
  app.add_option("--gid-index", s.gid_index, "GID index (verbs; -1: a RoCE v2 IPv4 GID)")
      ->check(CLI::Range(-1, 255))  // a port's GID table; -5 is no GID (was taken as -1)
      ->capture_default_str();
  app.add_option("--ready-file", s.ready_file, "write the bootstrap port here once serving");
  app.add_option("--block-bytes", s.block_bytes,
                 "format the region for the prefix index with KV data slots of this size "
                 "(a multiple of 64; 0: leave the region unformatted)")
      ->capture_default_str();
  app.add_option("--index-clients", s.index_clients, "client entries of the index")
      ->check(kvc_examples::decimal_count)
      ->check(CLI::Range(1u, 4194303u))
      ->capture_default_str();
  app.add_option("--fence-poll-ms", s.fence_poll_ms,
                 "verbs: how often (ms) to look for index clients declared dead and cut them off "
                 "(their queue pairs to the error state, their identity refused); others then "
                 "recover them at once. 0: no fencing (recovery waits recovery_delay)")
      ->check(kvc_examples::decimal_count)
      ->check(CLI::Range(0u, 60000u))
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  if (!s.secret_file.empty()) {
    std::ifstream in(s.secret_file);
    if (!in || !std::getline(in, s.secret)) return die("cannot read " + s.secret_file);
  } else if (s.secret.empty()) {
    if (const char* env = std::getenv("KVC_SECRET")) s.secret = env;
  }
  if (s.secret.empty())
    return die("a shared secret is needed: --secret, --secret-file or KVC_SECRET");
  const std::size_t bytes = kvc_examples::parse_size(s.size);
  if (bytes == 0) return die("--size " + s.size + " is not a size (examples: 4096, 64M, 2G)");
  const std::size_t block_bytes =
      s.block_bytes == "0" ? 0 : kvc_examples::parse_size(s.block_bytes);
  if (s.block_bytes != "0" && (block_bytes == 0 || block_bytes % 64 != 0)) {
    return die("--block-bytes " + s.block_bytes + " is not a multiple of 64 bytes (or 0)");
  }
  const auto node = static_cast<kvc::node_id>(s.node);
  if (s.name.empty()) s.name = "/kvc-node" + std::to_string(node);

  // SIGTERM and SIGINT are taken by sigwait() below; every thread inherits the mask.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGHUP);
  sigaddset(&stop_signals, SIGQUIT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  // A reader of stderr that went away must not end the node (its log lines, a client's socket).
  ::signal(SIGPIPE, SIG_IGN);
  if (s.parent_pid > 0) {
    // SIGTERM when the starting thread ends; a parent that is gone already ends this now.
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (::getppid() != static_cast<pid_t>(s.parent_pid)) return die("the parent process is gone");
  }

  kvc::bootstrap_server::options opts;
  opts.secret = s.secret;
  opts.bind_address = s.listen;
  opts.port = static_cast<std::uint16_t>(s.port);
  opts.max_connections = s.max_clients;
  opts.log = [](const std::string& line) {
    std::fprintf(stderr, "kvc-memnode: %s\n", line.c_str());
  };

  std::string what;
  kvc::shm_region shm;
#ifdef KVC_MEMNODE_VERBS
  std::unique_ptr<kvc::verbs_region> verbs;
  std::unique_ptr<kvc::verbs_fencing> fencing;  // declared after the region: stopped before it
#endif
  kvc::bootstrap_server::handler handler;
  if (s.transport == "shm") {
    if (s.replace) {
      // Only a segment left behind: a running node's (it holds its segment locked) is not
      // taken from it. Its region is retired first: clients still mapping it take this node's.
      if (kvc::shm_region::in_use(s.name)) {
        return die("shm segment " + s.name +
                   " belongs to a memory node that is running; --replace takes only a segment "
                   "left behind by a node that stopped without cleaning up");
      }
      if (auto ok = kvc::shm_region::remove_left_behind(s.name); !ok) return die(ok.message());
    }
    auto region = kvc::shm_region::create(s.name, bytes, node);
    if (!region && region.detail().find("File exists") != std::string::npos) {
      return die(region.message() +
                 "; a node with this name is running, or one stopped without cleaning up "
                 "(then start with --replace)");
    }
    if (!region) return die(region.message());
    shm = std::move(*region);
    what = "shm segment " + s.name;
    what += (shm.header().flags & kvc::region_header::flag_huge_pages) != 0 ? " (THP advised)" : "";
    handler = [&](const kvc::bootstrap::hello& h) -> kvc::result<kvc::bootstrap_server::session> {
      if (h.transport != kvc::bootstrap::transport_kind::shm) {
        return kvc::fail(kvc::errc::not_supported, "this memory node serves shm, not verbs");
      }
      kvc::bootstrap::welcome w;
      w.node_id = node;
      w.region_size = shm.bytes();
      w.format_version = kvc::region_header::format;
      w.region_created_ms = shm.header().created_unix_ms;
      w.access = kvc::bootstrap::shm_access{shm.name()};
      return kvc::bootstrap_server::session{std::move(w), nullptr};
    };
  } else {
#ifdef KVC_MEMNODE_VERBS
    kvc::verbs_device_config dc;
    dc.device = s.device;
    dc.port = static_cast<std::uint8_t>(s.ib_port);
    dc.gid_index = s.gid_index;
    auto dev = kvc::verbs_device::open(dc);
    if (!dev) return die(dev.message());
    auto region = kvc::verbs_region::create(*dev, bytes, node);
    if (!region) return die(region.message());
    verbs = std::make_unique<kvc::verbs_region>(std::move(*region));
    what = "verbs " + verbs->device().name() + " port " + std::to_string(s.ib_port);
    what += verbs->huge_pages() ? " (huge pages)" : " (4 KiB pages)";
    handler = [&](const kvc::bootstrap::hello& h) -> kvc::result<kvc::bootstrap_server::session> {
      if (fencing) return fencing->admit(h);
      if (h.transport != kvc::bootstrap::transport_kind::verbs || !h.endpoint) {
        return kvc::fail(kvc::errc::not_supported,
                         "this memory node serves verbs; the hello needs a queue pair");
      }
      auto accepted = verbs->accept(*h.endpoint);
      if (!accepted) return std::move(accepted).take_failure();
      auto qp = std::make_shared<kvc::verbs_qp>(std::move(accepted->second));
      return kvc::bootstrap_server::session{std::move(accepted->first), std::move(qp)};
    };
#else
    return die("this build has no verbs transport (configure with KVC_WITH_VERBS=ON)");
#endif
  }

  // The index's geometry goes into the header before the node serves (a shm client that maps the
  // segment by name meanwhile, its node restarted, finds it unformatted and tries again).
  std::string index_what = "unformatted";
  if (block_bytes > 0) {
    kvc::region_header* header = &shm.header();
#ifdef KVC_MEMNODE_VERBS
    if (verbs) header = &verbs->header();
#endif
    auto g = kvc::format_index(*header, block_bytes, s.index_clients);
    if (!g)
      return die("--size " + s.size + " with --block-bytes " + s.block_bytes + ": " + g.message());
    index_what = "index of " + std::to_string(g->slabs()) + " blocks of " +
                 std::to_string(block_bytes) + " bytes";
#ifdef KVC_MEMNODE_VERBS
    if (verbs && s.fence_poll_ms > 0) {
      kvc::verbs_fencing_config fc;
      fc.poll = std::chrono::milliseconds(s.fence_poll_ms);
      auto f = kvc::verbs_fencing::start(*verbs, fc);
      if (!f) return die("fencing: " + f.message());
      fencing = std::move(*f);
      index_what += ", fencing dead clients";
    }
#endif
  }

  auto server = kvc::bootstrap_server::start(opts, handler);
  if (!server) return die(server.message());
  std::printf("kvc-memnode: node %u, %s, %zu bytes, %s, listening on %s:%u\n", s.node, what.c_str(),
              bytes, index_what.c_str(), s.listen.c_str(),
              static_cast<unsigned>((*server)->port()));
  std::fflush(stdout);
  if (!s.ready_file.empty() && !kvc_examples::write_ready_file(s.ready_file, (*server)->port())) {
    (*server)->stop();
    return die("cannot write " + s.ready_file);
  }

  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  (*server)->stop();  // sessions (and their QPs) end before the region goes
#ifdef KVC_MEMNODE_VERBS
  if (fencing) {
    fencing->stop();
    const auto fc = fencing->stats();
    std::printf("kvc-memnode: fenced %llu clients (%llu queue pairs, %llu hellos refused)\n",
                static_cast<unsigned long long>(fc.fenced),
                static_cast<unsigned long long>(fc.queue_pairs),
                static_cast<unsigned long long>(fc.refused));
  }
#endif
  const auto counts = (*server)->stats();
  std::printf("kvc-memnode: stopping on %s after %llu clients welcomed, %llu refused\n",
              sigabbrev_np(signal_number) != nullptr
                  ? (std::string("SIG") + sigabbrev_np(signal_number)).c_str()
                  : "a signal",
              static_cast<unsigned long long>(counts.welcomed),
              static_cast<unsigned long long>(counts.refused));
  return 0;
}
