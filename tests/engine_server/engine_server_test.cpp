// kvc-engine-server as a process: two servers attached to one kvc-memnode reuse each other's
// blocks through it (and check every byte they load), a repeat hits the device, /metrics speaks
// the Prometheus format, bad bodies get 400, bad options and an unreachable memory node stop the
// server at start, and SIGTERM / SIGINT stop it cleanly.
#include <fcntl.h>
#include <httplib.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "../support/unique_name.hpp"

extern char** environ;

namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;

std::string unique_stem() { return "/tmp/" + kvc_test::unique_name("kvc-engine-server-test"); }

// A child process (kvc-memnode or kvc-engine-server) with its stdout and stderr in files.
// With a ready file, the constructor waits (bounded) until the child wrote its port there, or
// exited.
class process {
 public:
  process(const std::string& program, std::vector<std::string> args, bool wait_ready = true) {
    const std::string stem = unique_stem();
    ready_ = stem + ".port";
    log_ = stem + ".log";
    err_ = stem + ".err";
    std::remove(ready_.c_str());
    args.insert(args.begin(), program);
    if (wait_ready) args.insert(args.end(), {"--port", "0", "--ready-file", ready_});
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_addopen(&fa, 2, err_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    // Without KVC_SECRET: a test says what the secret is.
    std::vector<char*> env;
    for (char** e = environ; *e != nullptr; ++e) {
      if (std::strncmp(*e, "KVC_SECRET=", 11) != 0) env.push_back(*e);
    }
    env.push_back(nullptr);
    const int spawned = posix_spawn(&pid_, program.c_str(), &fa, nullptr, argv.data(), env.data());
    posix_spawn_file_actions_destroy(&fa);
    REQUIRE(spawned == 0);
    if (!wait_ready) return;
    const auto until = std::chrono::steady_clock::now() + 10s;
    while (port == 0 && std::chrono::steady_clock::now() < until) {
      if (::waitpid(pid_, &status_, WNOHANG) == pid_) {
        reaped_ = true;
        break;
      }
      std::ifstream in(ready_);
      if (!(in >> port)) std::this_thread::sleep_for(10ms);
    }
  }
  process(const process&) = delete;
  process& operator=(const process&) = delete;
  ~process() {
    if (pid_ > 0 && !reaped_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    std::remove(ready_.c_str());
    std::remove(log_.c_str());
    std::remove(err_.c_str());
  }

  // Sends `sig` and returns the exit status (128 + signal when killed by one).
  int stop(int sig = SIGTERM) {
    if (!reaped_) {
      ::kill(pid_, sig);
      ::waitpid(pid_, &status_, 0);
      reaped_ = true;
    }
    return exit_code();
  }
  // The exit status of a process that ends by itself, waiting at most `limit`; nullopt when it is
  // still running then.
  std::optional<int> exited_within(std::chrono::milliseconds limit) {
    const auto until = std::chrono::steady_clock::now() + limit;
    while (!reaped_ && std::chrono::steady_clock::now() < until) {
      if (::waitpid(pid_, &status_, WNOHANG) == pid_) {
        reaped_ = true;
      } else {
        std::this_thread::sleep_for(10ms);
      }
    }
    if (!reaped_) return std::nullopt;
    return exit_code();
  }
  [[nodiscard]] std::string output() const { return read(log_); }  // stdout
  [[nodiscard]] std::string errors() const { return read(err_); }  // stderr

  std::uint16_t port = 0;

 private:
  static std::string read(const std::string& path) {
    std::ifstream in(path);
    return {std::istreambuf_iterator<char>(in), {}};
  }
  [[nodiscard]] int exit_code() const {
    return WIFEXITED(status_) ? WEXITSTATUS(status_) : 128 + WTERMSIG(status_);
  }
  pid_t pid_ = -1;
  int status_ = 0;
  bool reaped_ = false;
  std::string ready_, log_, err_;
};

// A secret file, removed at the end.
struct secret_file {
  explicit secret_file(const std::string& secret) : path(unique_stem() + ".secret") {
    std::ofstream(path) << secret << "\n";
  }
  ~secret_file() { std::remove(path.c_str()); }
  std::string path;
};

// kvc-memnode on a unique shm segment, formatted for blocks of `block_bytes`.
struct memnode {
  memnode(const std::string& secret_path, const std::string& block_bytes)
      : segment(kvc_test::unique_name("/kvc-es")),
        proc(KVC_MEMNODE, {"--name", segment, "--size", "16M", "--block-bytes", block_bytes,
                           "--secret-file", secret_path}) {}
  ~memnode() { ::shm_unlink(segment.c_str()); }
  std::string segment;
  process proc;
};

std::string prompt_body(std::uint32_t first, std::size_t n, const std::string& extra = {}) {
  std::string body = "{\"tokens\":[";
  for (std::size_t i = 0; i < n; ++i) {
    if (i > 0) body += ",";
    body += std::to_string(first + i);
  }
  return body + "]" + extra + "}";
}

// POSTs a prefill; returns the status and the parsed JSON body (null when not JSON).
struct answer {
  int status = 0;
  json body;
};
answer prefill(std::uint16_t port, const std::string& body) {
  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(10s);
  auto res = client.Post("/v1/prefill", body, "application/json");
  REQUIRE(res);
  return {res->status, json::parse(res->body, nullptr, false)};
}

// Sends `request` as it is over a fresh connection; what comes back until the end of the
// answer's header (or the server closes the connection, or 10 s pass).
std::string raw_exchange(std::uint16_t port, const std::string& request) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(port);
  const timeval wait{10, 0};
  (void)::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof wait);
  std::string got;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
      ::send(fd, request.data(), request.size(), MSG_NOSIGNAL) ==
          static_cast<ssize_t>(request.size())) {
    char buf[4096];
    for (ssize_t n;
         got.find("\r\n\r\n") == std::string::npos && (n = ::recv(fd, buf, sizeof buf, 0)) > 0;) {
      got.append(buf, static_cast<std::size_t>(n));
    }
  }
  ::close(fd);
  return got;
}

std::string get(std::uint16_t port, const std::string& path) {
  httplib::Client client("127.0.0.1", port);
  auto res = client.Get(path.c_str());
  REQUIRE(res);
  REQUIRE(res->status == 200);
  return res->body;
}

// The value of the sample line `name` (with its labels) in a Prometheus text; nullopt if absent.
std::optional<double> metric(const std::string& text, const std::string& name) {
  const std::string key = "\n" + name + " ";
  const auto at = ("\n" + text).find(key);
  if (at == std::string::npos) return std::nullopt;
  return std::stod(text.substr(at + key.size() - 1));
}

// Small tiers of 4 KiB blocks of 16 tokens, and a fast simulated prefill.
std::vector<std::string> small_server(const std::string& device_blocks = "64") {
  return {"--block-size",  "16", "--block-bytes",       "4K", "--device-blocks", device_blocks,
          "--host-blocks", "64", "--cost-per-token-us", "1"};
}

std::vector<std::string> with(std::vector<std::string> base, const std::vector<std::string>& more) {
  base.insert(base.end(), more.begin(), more.end());
  return base;
}

}  // namespace

TEST_CASE("two engine servers share blocks through one memory node", "[engine_server]") {
  secret_file secret("engine-server-test");
  memnode node(secret.path, "4K");
  REQUIRE(node.proc.port != 0);
  const std::string where = "127.0.0.1:" + std::to_string(node.proc.port);
  const auto remote = with(small_server(), {"--memnode", where, "--secret-file", secret.path,
                                            "--model-salt", "engine-server-test"});
  process a(KVC_ENGINE_SERVER, remote);
  process b(KVC_ENGINE_SERVER, remote);
  INFO(a.output() << a.errors() << b.output() << b.errors());
  REQUIRE(a.port != 0);
  REQUIRE(b.port != 0);
  CHECK(get(a.port, "/healthz") == "ok\n");

  // A computes all 16 blocks of a 256-token prompt.
  const std::string body = prompt_body(1000, 256);
  const auto first = prefill(a.port, body);
  INFO(first.body.dump());
  REQUIRE(first.status == 200);
  CHECK(first.body["tokens"] == 256);
  CHECK(first.body["blocks"] == 16);
  CHECK(first.body["hits"] == json{{"device", 0}, {"host", 0}, {"ssd", 0}, {"remote", 0}});
  CHECK(first.body["usable"] == 0);
  CHECK(first.body["computed"] == 16);
  CHECK(first.body["verified"] == 0);
  CHECK(first.body["mismatched"] == 0);
  for (const char* t : {"match", "load", "compute", "commit", "total"}) {
    CHECK(first.body["timings_us"][t].is_number_integer());
  }
  // 256 tokens at 1 us each: the compute took real time.
  CHECK(first.body["timings_us"]["compute"].get<std::int64_t>() >= 256);

  // A publishes on its mover thread after the commit: wait (bounded) until it has.
  std::optional<double> published;
  const auto until = std::chrono::steady_clock::now() + 10s;
  while (std::chrono::steady_clock::now() < until) {
    published = metric(get(a.port, "/metrics"), "kvc_published_blocks_total");
    if (published && *published >= 16) break;
    std::this_thread::sleep_for(10ms);
  }
  REQUIRE(published);
  REQUIRE(*published == 16);

  // B loads all of them from the memory node, and every byte is what A computed.
  const auto second = prefill(b.port, body);
  INFO(second.body.dump());
  REQUIRE(second.status == 200);
  CHECK(second.body["hits"] == json{{"device", 0}, {"host", 0}, {"ssd", 0}, {"remote", 16}});
  CHECK(second.body["usable"] == 16);
  CHECK(second.body["computed"] == 0);
  CHECK(second.body["verified"] == 16);
  CHECK(second.body["mismatched"] == 0);

  // A repeat on A hits its device.
  const auto again = prefill(a.port, body);
  REQUIRE(again.status == 200);
  CHECK(again.body["hits"]["device"] == 16);
  CHECK(again.body["usable"] == 16);
  CHECK(again.body["computed"] == 0);
  CHECK(again.body["verified"] == 16);
  CHECK(again.body["mismatched"] == 0);

  // A LoRA adapter or a tenant separates the cache: nothing of the base prompt is reused.
  const auto lora = prefill(a.port, prompt_body(1000, 256, ",\"lora_id\":7"));
  REQUIRE(lora.status == 200);
  CHECK(lora.body["hits"] == json{{"device", 0}, {"host", 0}, {"ssd", 0}, {"remote", 0}});
  CHECK(lora.body["computed"] == 16);
  const auto tenant = prefill(b.port, prompt_body(1000, 256, ",\"tenant\":\"acme\""));
  REQUIRE(tenant.status == 200);
  CHECK(tenant.body["usable"] == 0);
  CHECK(tenant.body["computed"] == 16);

  // B's metrics: Prometheus text with the remote hits and the match latency histogram.
  const std::string text = get(b.port, "/metrics");
  INFO(text);
  CHECK_THAT(text, Catch::Contains("# TYPE kvc_hit_blocks_total counter"));
  CHECK(metric(text, "kvc_hit_blocks_total{tier=\"remote\"}") == 16.0);
  CHECK(metric(text, "kvc_hit_blocks_total{tier=\"device\"}") == 0.0);
  CHECK(metric(text, "kvc_requests_total") == 2.0);
  CHECK(metric(text, "kvc_remote_bytes_in_total") == 16.0 * 4096);
  CHECK_THAT(text, Catch::Contains("# TYPE kvc_mover_failures_total counter"));
  CHECK(metric(text, "kvc_mover_failures_total") == 0.0);
  CHECK_THAT(text, Catch::Contains("# TYPE kvc_index_upkeep_failures_total counter"));
  CHECK(metric(text, "kvc_index_upkeep_failures_total") == 0.0);
  CHECK_THAT(text, Catch::Contains("# TYPE kvc_match_latency_seconds histogram"));
  CHECK(metric(text, "kvc_match_latency_seconds_count") == 2.0);
  CHECK(metric(text, "kvc_match_latency_seconds_bucket{le=\"+Inf\"}") == 2.0);
  CHECK(metric(text, "kvc_match_latency_seconds_sum") > 0.0);
  CHECK(metric(text, "kvc_server_verified_blocks_total") == 16.0);

  CHECK(a.stop() == 0);
  CHECK(b.stop() == 0);
  CHECK_THAT(a.output(), Catch::Contains("stopping on SIGTERM after 3 prefills"));
  CHECK_THAT(b.output(), Catch::Contains("16 blocks verified, 0 mismatched"));
  CHECK(node.proc.stop() == 0);
}

TEST_CASE("the engine server answers bad bodies with 400 and a reason", "[engine_server]") {
  process s(KVC_ENGINE_SERVER, small_server());
  REQUIRE(s.port != 0);
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"not json", "not valid JSON"},
      {"[1, 2, 3]", "JSON object"},
      {"{}", "\"tokens\" is missing"},
      {"{\"tokens\": \"1 2 3\"}", "must be an array"},
      {"{\"tokens\": []}", "empty"},
      {"{\"tokens\": [1, -2]}", "tokens[1]"},
      {"{\"tokens\": [1, 2, 4294967296]}", "tokens[2]"},
      {"{\"tokens\": [1.5]}", "tokens[0]"},
      {"{\"tokens\": [\"1\"]}", "tokens[0]"},
      {"{\"tokens\": [1], \"lora_id\": -1}", "lora_id"},
      {"{\"tokens\": [1], \"lora_id\": \"x\"}", "lora_id"},
      {"{\"tokens\": [1], \"tenant\": 5}", "tenant"},
  };
  for (const auto& [body, why] : bad) {
    INFO(body);
    const auto r = prefill(s.port, body);
    CHECK(r.status == 400);
    REQUIRE(r.body.is_object());
    REQUIRE(r.body["error"].is_string());
    CHECK_THAT(r.body["error"].get<std::string>(), Catch::Contains(why));
  }
  // The largest token id and a prompt shorter than a block are fine.
  const auto ok = prefill(s.port, "{\"tokens\": [4294967295, 0, 7], \"lora_id\": null}");
  CHECK(ok.status == 200);
  CHECK(ok.body["blocks"] == 0);
  CHECK(ok.body["computed"] == 0);
  const std::string text = get(s.port, "/metrics");
  CHECK(metric(text, "kvc_server_prefills_total{outcome=\"bad_request\"}") ==
        static_cast<double>(bad.size()));
  CHECK(metric(text, "kvc_server_prefills_total{outcome=\"ok\"}") == 1.0);
  CHECK(s.stop(SIGINT) == 0);
  CHECK_THAT(s.output(), Catch::Contains("stopping on SIGINT"));
}

TEST_CASE("the engine server refuses a prompt the device can never hold, and goes on",
          "[engine_server]") {
  process s(KVC_ENGINE_SERVER, small_server("4"));
  REQUIRE(s.port != 0);
  const auto big = prefill(s.port, prompt_body(1, 10 * 16));
  CHECK(big.status == 413);
  REQUIRE(big.body.is_object());
  CHECK_THAT(big.body["error"].get<std::string>(),
             Catch::Contains("the prompt has 10 full blocks; the device holds 4"));
  // A body beyond the largest servable prompt's is refused before it is read whole (without a
  // limit the server took a body of any size into memory).
  {
    httplib::Client client("127.0.0.1", s.port);
    client.set_read_timeout(10s);
    auto res =
        client.Post("/v1/prefill", std::string(std::size_t{4} << 20, ' '), "application/json");
    REQUIRE(res);
    CHECK(res->status == 413);
  }
  // A chunked body, alone or beside a Content-Length (cpp-httplib reads the chunks whole,
  // whatever the limit), and a PUT without a length: refused before their bodies are read.
  for (const std::string head :
       {"POST /v1/prefill HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST /v1/prefill HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
        "Transfer-Encoding: chunked\r\n\r\n",
        "PUT /v1/prefill HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"}) {
    INFO(head);
    CHECK_THAT(raw_exchange(s.port, head + "100000\r\n"), Catch::StartsWith("HTTP/1.1 411"));
  }
  // The failed request released what it held: the device still serves a prompt that fits, twice.
  const std::string body = prompt_body(1, 4 * 16);
  const auto fits = prefill(s.port, body);
  CHECK(fits.status == 200);
  CHECK(fits.body["computed"] == 4);
  const auto again = prefill(s.port, body);
  CHECK(again.status == 200);
  CHECK(again.body["hits"]["device"] == 4);
  CHECK(again.body["verified"] == 4);
  const std::string text = get(s.port, "/metrics");
  CHECK(metric(text, "kvc_server_prefills_total{outcome=\"unavailable\"}") == 0.0);
  CHECK(metric(text, "kvc_server_prefills_total{outcome=\"bad_request\"}") == 1.0);
  // Every answer is counted by its code, the HTTP layer's refusals too: 411 three times, 413 from
  // the handler and from the body limit. (Counted just after each answer went out: read until
  // the counts are there: counts only grow.)
  auto answered = [&](int code, double want) {
    const std::string name =
        "kvc_server_http_responses_total{code=\"" + std::to_string(code) + "\"}";
    const auto until = std::chrono::steady_clock::now() + 10s;
    std::optional<double> got = metric(get(s.port, "/metrics"), name);
    while (got.value_or(0.0) < want && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(10ms);
      got = metric(get(s.port, "/metrics"), name);
    }
    return got;
  };
  CHECK(answered(411, 3.0) == 3.0);
  CHECK(answered(413, 2.0) == 2.0);
  CHECK(answered(200, 3.0) >= 3.0);  // the two prefills that fit, and /metrics
  CHECK(metric(get(s.port, "/metrics"), "kvc_server_http_responses_total{code=\"500\"}") ==
        std::nullopt);
  CHECK(s.stop() == 0);
}

TEST_CASE("the engine server runs on its defaults with local tiers only", "[engine_server]") {
  process s(KVC_ENGINE_SERVER, {});
  REQUIRE(s.port != 0);
  CHECK_THAT(s.output(), Catch::Contains("listening on 127.0.0.1:" + std::to_string(s.port)));
  const std::string body = prompt_body(5, 64);
  const auto first = prefill(s.port, body);
  REQUIRE(first.status == 200);
  CHECK(first.body["computed"] == 4);
  const auto second = prefill(s.port, body);
  REQUIRE(second.status == 200);
  CHECK(second.body["hits"]["device"] == 4);
  CHECK(second.body["verified"] == 4);
  CHECK(s.stop() == 0);
}

TEST_CASE("the engine server refuses to start with bad options or an unreachable memory node",
          "[engine_server]") {
  const auto refused = [](const std::vector<std::string>& args, const std::string& why) {
    process s(KVC_ENGINE_SERVER, args, /*wait_ready=*/false);
    const auto code = s.exited_within(10s);
    INFO(s.errors());
    REQUIRE(code);
    CHECK(*code != 0);
    CHECK_THAT(s.errors(), Catch::Contains(why));
  };
  refused({"--block-size", "3"}, "block size 3");
  refused({"--block-bytes", "lots"}, "--block-bytes lots");
  refused({"--policy-device", "nope"}, "unknown eviction policy");
  refused({"--deadline", "never"}, "--deadline");
  refused({"--place-remote", "sometimes"}, "--place-remote: unknown placement");
  refused({"--place-host", "selective:0"}, "--place-host: unknown placement");
  refused({"--device-blocks", "0"}, "device.blocks");
  refused({"--memnode", "127.0.0.1"}, "not host:port");
  refused({"--memnode", "127.0.0.1:7300"}, "shared secret");

  // A port bound but not listening refuses connections, and nobody else can take it meanwhile.
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  socklen_t len = sizeof addr;
  REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  const std::string closed = "127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
  refused({"--memnode", closed, "--secret", "x"}, "cannot attach memory node " + closed);
  ::close(fd);
}
