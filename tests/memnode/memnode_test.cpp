// kvc-memnode as a process: it serves shm clients through the bootstrap protocol, refuses
// hostile input without dying, and stops cleanly on SIGTERM with a status line.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "../support/unique_name.hpp"
#include "kvc/index/remote_index.hpp"
#include "kvc/transport/bootstrap.hpp"
#include "kvc/transport/shm.hpp"

extern char** environ;

namespace {

struct memnode_process {
  explicit memnode_process(std::vector<std::string> extra, std::string segment = {}) {
    const std::string id = kvc_test::unique_name("");
    const std::string stem = "/tmp/kvc-memnode-test" + id;
    name = segment.empty() ? "/kvc-mn" + id : segment;
    ready = stem + ".port";
    log = stem + ".log";
    std::remove(ready.c_str());
    std::vector<std::string> args = {KVC_MEMNODE, "--port", "0", "--ready-file",
                                     ready,       "--name", name};
    if (std::find(extra.begin(), extra.end(), "--size") == extra.end()) {
      extra.insert(extra.end(), {"--size", "1M"});
    }
    if (std::find(extra.begin(), extra.end(), "--block-bytes") == extra.end()) {
      extra.insert(extra.end(), {"--block-bytes", "4K"});
    }
    args.insert(args.end(), extra.begin(), extra.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    // The node's environment without KVC_SECRET: a test says what the node's secret is.
    std::vector<char*> env;
    for (char** e = environ; *e != nullptr; ++e) {
      if (std::strncmp(*e, "KVC_SECRET=", 11) != 0) env.push_back(*e);
    }
    env.push_back(nullptr);
    REQUIRE(posix_spawn(&pid, KVC_MEMNODE, &fa, nullptr, argv.data(), env.data()) == 0);
    posix_spawn_file_actions_destroy(&fa);
    for (int i = 0; i < 500 && port == 0; ++i) {
      if (::waitpid(pid, &status, WNOHANG) == pid) {
        reaped = true;
        break;
      }
      std::ifstream in(ready);
      if (!(in >> port)) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  ~memnode_process() {
    if (pid > 0 && !reaped) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
    std::remove(ready.c_str());
    std::remove(log.c_str());
    ::shm_unlink(name.c_str());  // after a failed case, the next ones start clean
  }
  bool alive() const { return ::kill(pid, 0) == 0; }
  // SIGTERM, then the exit status.
  int stop() {
    if (!reaped) {
      ::kill(pid, SIGTERM);
      ::waitpid(pid, &status, 0);
      reaped = true;
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  std::string output() const {
    std::ifstream in(log);
    return {std::istreambuf_iterator<char>(in), {}};
  }
  pid_t pid = -1;
  int status = 0;
  bool reaped = false;
  std::uint16_t port = 0;
  std::string ready, log, name;
};

// Sends raw bytes to the node and returns what it answered (a decoded refuse, or an error).
kvc::result<kvc::bootstrap::message> send_raw(std::uint16_t port,
                                              const std::vector<std::byte>& raw) {
  auto fd = kvc::bootstrap::connect_tcp("127.0.0.1", port, std::chrono::seconds(2));
  if (!fd) return std::move(fd).take_failure();
  kvc::bootstrap::unique_fd owned(*fd);
  if (!raw.empty()) (void)!::send(owned.get(), raw.data(), raw.size(), MSG_NOSIGNAL);
  return kvc::bootstrap::read_frame(owned.get(), std::chrono::seconds(5));
}

kvc::errc refused_with(const kvc::result<kvc::bootstrap::message>& m) {
  if (!m) return kvc::errc{};
  const auto* r = std::get_if<kvc::bootstrap::refuse>(&*m);
  return r == nullptr ? kvc::errc{} : r->code;
}

}  // namespace

TEST_CASE("kvc-memnode serves shm clients and stops on SIGTERM", "[memnode]") {
  // An unformatted region: the snippet below changes a word the index would own.
  memnode_process node({"--secret", "s3cret", "--node", "3", "--block-bytes", "0"});
  REQUIRE(node.port != 0);
  const std::uint16_t port = node.port;
  // [shm_client]
  // Attach the memory node's region: ask its bootstrap port, presenting the cluster's secret.
  kvc::shm_transport t;
  kvc::result<kvc::node_id> node_id = t.connect("127.0.0.1", port, "s3cret");
  REQUIRE(node_id);

  // One batch, one round trip: add 5 to a remote word twice, in order; each FAA returns the
  // word's previous value into local memory.
  std::uint64_t before[2] = {};
  auto local = kvc::unregistered({reinterpret_cast<std::byte*>(before), sizeof before});
  const kvc::remote_ptr word(*node_id, 4096);  // the first byte after the region header
  auto batch = t.new_batch();
  batch.faa(word, 5, local.sub(0, 8));
  batch.faa(word, 5, local.sub(8, 8));
  batch.ring();
  kvc::result<void> done = batch.wait();
  REQUIRE(done);
  CHECK(before[1] == before[0] + 5);
  // [shm_client]
  CHECK(*node_id == 3);
  CHECK(before[0] == 0);

  kvc::shm_transport wrong;
  auto refused = wrong.connect("127.0.0.1", node.port, "guess");
  REQUIRE_FALSE(refused);
  CHECK(refused.error() == kvc::errc::unauthenticated);

  CHECK(node.stop() == 0);
  const std::string out = node.output();
  CHECK_THAT(out, Catch::Contains("node 3, shm segment"));
  CHECK_THAT(out, Catch::Contains("stopping on SIGTERM after 1 clients welcomed, 1 refused"));
}

TEST_CASE("kvc-memnode refuses malformed, oversized and wrong-kind messages and stays up",
          "[memnode]") {
  memnode_process node({"--secret", "s3cret"});
  REQUIRE(node.port != 0);
  // Garbage.
  std::vector<std::byte> garbage(64, std::byte{0x41});
  CHECK(refused_with(send_raw(node.port, garbage)) == kvc::errc::protocol_error);
  // A header announcing a 1 GiB body: refused without waiting for it.
  kvc::bootstrap::hello h;
  h.secret = "s3cret";
  auto frame = kvc::bootstrap::encode(h);
  frame[8] = std::byte{0};
  frame[9] = std::byte{0};
  frame[10] = std::byte{0};
  frame[11] = std::byte{0x40};
  CHECK(refused_with(send_raw(node.port, frame)) == kvc::errc::protocol_error);
  // A truncated frame, then silence: refused at the hello deadline.
  auto good = kvc::bootstrap::encode(h);
  good.resize(good.size() - 2);
  CHECK(refused_with(send_raw(node.port, good)) == kvc::errc::protocol_error);
  // A welcome sent to the node; a verbs hello to an shm node.
  kvc::bootstrap::welcome w;
  w.access = kvc::bootstrap::shm_access{"/x"};
  CHECK(refused_with(send_raw(node.port, kvc::bootstrap::encode(w))) == kvc::errc::protocol_error);
  kvc::bootstrap::hello verbs_hello = h;
  verbs_hello.transport = kvc::bootstrap::transport_kind::verbs;
  verbs_hello.endpoint = kvc::bootstrap::endpoint{};
  CHECK(refused_with(send_raw(node.port, kvc::bootstrap::encode(verbs_hello))) ==
        kvc::errc::not_supported);
  // Random frames with a valid header and random bodies.
  std::mt19937 rng(5);
  for (int i = 0; i < 50; ++i) {
    auto f = kvc::bootstrap::encode(h);
    for (std::size_t k = 12; k < f.size(); ++k) {
      if (rng() % 4 == 0) f[k] = static_cast<std::byte>(rng());
    }
    (void)send_raw(node.port, f);
  }
  CHECK(node.alive());
  kvc::shm_transport t;
  CHECK(t.connect("127.0.0.1", node.port, "s3cret"));
  CHECK(node.stop() == 0);
}

TEST_CASE("kvc-memnode rejects bad command lines with a message", "[memnode]") {
  memnode_process bad_size({"--secret", "x", "--size", "lots"});
  CHECK(bad_size.stop() != 0);
  CHECK_THAT(bad_size.output(), Catch::Contains("is not a size"));
  // A sign, or more than 64 bits, is no size either (not a wrapped-around huge one).
  for (const char* size : {"-1", "-64M", "99999999999999999999", "20000000000G"}) {
    memnode_process bad({"--secret", "x", "--size", size});
    INFO(size);
    CHECK(bad.stop() != 0);
    CHECK_THAT(bad.output(), Catch::Contains("is not a size"));
  }
  memnode_process no_secret({});
  CHECK(no_secret.stop() != 0);
  CHECK_THAT(no_secret.output(), Catch::Contains("shared secret is needed"));
  // -1 alone means "a RoCE v2 IPv4 GID"; another negative index is refused, not taken for it.
  for (const char* gid : {"-5", "256", "x"}) {
    memnode_process bad_gid({"--secret", "x", "--gid-index", gid});
    INFO(gid);
    CHECK(bad_gid.stop() != 0);
    CHECK_THAT(bad_gid.output(), Catch::Contains("--gid-index"));
  }
}

TEST_CASE("kvc-memnode replaces a segment left behind only when asked, never a running node's",
          "[memnode]") {
  const std::string segment = kvc_test::unique_name("/kvc-mn-stale");
  {
    memnode_process crashed({"--secret", "s"}, segment);
    REQUIRE(crashed.port != 0);
    ::kill(crashed.pid, SIGKILL);  // no cleanup: the segment stays
    crashed.stop();
    crashed.name.clear();  // keep the stale segment for the next node
  }
  memnode_process refused({"--secret", "s"}, segment);
  CHECK(refused.stop() != 0);
  CHECK_THAT(refused.output(), Catch::Contains("--replace"));
  refused.name.clear();
  memnode_process replaced({"--secret", "s", "--replace"}, segment);
  REQUIRE(replaced.port != 0);
  // A running node's segment is not replaced (it was unlinked under the running node, whose
  // later clients then found no segment of that name).
  memnode_process second({"--secret", "s", "--replace"}, segment);
  CHECK(second.stop() != 0);
  CHECK_THAT(second.output(), Catch::Contains("belongs to a memory node that is running"));
  second.name.clear();
  kvc::shm_transport t;
  CHECK(t.connect("127.0.0.1", replaced.port, "s"));
  CHECK(replaced.stop() == 0);
}

TEST_CASE("kvc-memnode refuses connections beyond --max-clients", "[memnode]") {
  memnode_process node({"--secret", "s", "--max-clients", "1"});
  REQUIRE(node.port != 0);
  // A silent client holds the only session until its hello deadline.
  auto silent = kvc::bootstrap::connect_tcp("127.0.0.1", node.port, std::chrono::seconds(2));
  REQUIRE(silent);
  const kvc::bootstrap::unique_fd held(*silent);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // accepted by the node
  CHECK(refused_with(send_raw(node.port, {})) == kvc::errc::unreachable);
  CHECK(node.stop() == 0);
  CHECK_THAT(node.output(), Catch::Contains("too many connections"));
}

TEST_CASE("kvc-memnode formats its region for the index; two clients share it", "[memnode]") {
  memnode_process node({"--secret", "s3cret", "--size", "4M", "--block-bytes", "4K"});
  REQUIRE(node.port != 0);
  kvc::shm_transport tb;
  REQUIRE(tb.connect("127.0.0.1", node.port, "s3cret"));
  kvc::remote_index_config cfg;
  cfg.nodes = {0};
  auto b = kvc::remote_index<kvc::shm_transport>::open(tb, cfg);
  REQUIRE(b);
  const std::uint16_t port = node.port;
  std::mt19937_64 rng(5);
  std::vector<kvc::hash64> chain(40);  // a prompt's block hashes (kvc::block_hasher)
  for (auto& h : chain) h.value = rng();
  // [index_client]
  // One client of the index per thread: register on the memory nodes, publish, look up.
  kvc::shm_transport t;
  REQUIRE(t.connect("127.0.0.1", port, "s3cret"));
  kvc::remote_index_config config;
  config.nodes = {0};  // the memory nodes' ids
  auto index = kvc::remote_index<kvc::shm_transport>::open(t, config);
  REQUIRE(index);

  // The longest cached prefix of a chain of block hashes (1 or 2 round trips).
  kvc::result<kvc::index_match> match = (*index)->lookup(chain);
  REQUIRE(match);
  // Publish the rest: KV bytes (none here), record, then the slots (CAS).
  std::vector<kvc::block_info> blocks(chain.size() - match->length,
                                      kvc::block_info{{}, 4096, 1, 0, 16});
  kvc::result<kvc::index_insert_result> added = (*index)->insert(chain, match->length, blocks);
  REQUIRE(added);
  // Call maintain() every heartbeat period and between requests (heartbeats, dead clients,
  // reclaim, and the reserve of free slabs that inserts take from).
  REQUIRE((*index)->maintain());
  // [index_client]
  CHECK(added->published == 40);
  CHECK((*index)->geometry(0).block_bytes == 4096);
  CHECK((*index)->client_id(0) != (*b)->client_id(0));
  auto m = (*b)->lookup(chain);  // the other client finds what the first published
  REQUIRE(m);
  CHECK(m->length == 40);
  CHECK(node.stop() == 0);
  CHECK_THAT(node.output(), Catch::Contains("index of "));
  // A block size that leaves no room is refused with the sizes named.
  memnode_process tiny({"--secret", "s3cret", "--size", "1M", "--block-bytes", "1M"});
  CHECK(tiny.stop() != 0);
  CHECK_THAT(tiny.output(), Catch::Contains("--block-bytes 1M"));
  memnode_process odd({"--secret", "s3cret", "--block-bytes", "100"});
  CHECK(odd.stop() != 0);
  CHECK_THAT(odd.output(), Catch::Contains("not a multiple of 64"));
}

// A node restarted under the same segment name, stopped cleanly or killed and replaced: its shm
// clients map the new segment and register there (the index reads the new header: formatted for
// 16 clients instead of 64), and share it with the new node's other clients. Before, they went on
// in the old segment, which no node served.
TEST_CASE("kvc-memnode restarted: its shm clients take the new region", "[memnode]") {
  const std::string segment = kvc_test::unique_name("/kvc-mn-restart");
  const std::vector<std::string> opts = {"--secret", "s", "--size", "4M", "--block-bytes", "4K"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> all = opts;
    all.insert(all.end(), extra.begin(), extra.end());
    return all;
  };
  auto node = std::make_unique<memnode_process>(opts, segment);
  REQUIRE(node->port != 0);
  kvc::shm_transport t;
  REQUIRE(t.connect("127.0.0.1", node->port, "s"));
  kvc::remote_index_config cfg;
  cfg.nodes = {0};
  cfg.heartbeat = std::chrono::milliseconds(20);
  cfg.lease = std::chrono::milliseconds(400);
  auto ix = kvc::remote_index<kvc::shm_transport>::open(t, cfg);
  REQUIRE(ix);
  std::mt19937_64 rng(11);
  auto chain = [&] {
    std::vector<kvc::hash64> c(16);
    for (auto& h : c) h.value = rng();
    return c;
  };
  const auto first = chain();
  REQUIRE((*ix)->insert(first, 0, std::vector<kvc::block_info>(16, {{}, 4096, 1, 0, 16})));
  // Upkeep until the client is registered on the node's new region, then what it holds.
  auto settle = [&](const std::vector<kvc::hash64>& old_chain, std::size_t clients) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    kvc::result<void> last{};
    while (((*ix)->in_doubt() || (*ix)->geometry(0).clients != clients) &&
           std::chrono::steady_clock::now() < deadline) {
      last = (*ix)->maintain();
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    INFO((last ? std::string("upkeep ok") : last.message()));
    REQUIRE_FALSE((*ix)->in_doubt());
    CHECK((*ix)->geometry(0).clients == clients);
    auto m = (*ix)->lookup(old_chain);
    REQUIRE(m);
    CHECK(m->length == 0);  // the old region's blocks went with it
    const auto fresh = chain();
    auto added = (*ix)->insert(fresh, 0, std::vector<kvc::block_info>(16, {{}, 4096, 1, 0, 16}));
    REQUIRE(added);
    CHECK(added->published == 16);
    kvc::shm_transport other;  // a client of the new node finds it
    REQUIRE(other.connect("127.0.0.1", node->port, "s"));
    auto ox = kvc::remote_index<kvc::shm_transport>::open(other, cfg);
    REQUIRE(ox);
    auto seen = (*ox)->lookup(fresh);
    REQUIRE(seen);
    CHECK(seen->length == 16);
    REQUIRE((*ox)->close());
    return fresh;
  };

  // Stopped cleanly (SIGTERM), then started again.
  CHECK(node->stop() == 0);
  node.reset();  // before the next starts: it removes the segment's name
  node = std::make_unique<memnode_process>(with({"--index-clients", "16"}), segment);
  REQUIRE(node->port != 0);
  const auto second = settle(first, 16);

  // Killed (the segment left behind, not retired), then replaced.
  ::kill(node->pid, SIGKILL);
  node->stop();
  node->name.clear();  // the segment stays for --replace
  node.reset();
  node = std::make_unique<memnode_process>(with({"--index-clients", "32", "--replace"}), segment);
  REQUIRE(node->port != 0);
  settle(second, 32);
  REQUIRE((*ix)->close());
  CHECK(node->stop() == 0);
}
