#include <kvc/transport/bootstrap.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

namespace bs = kvc::bootstrap;
using namespace std::chrono_literals;
using Catch::Matchers::Contains;

namespace {

bs::endpoint sample_endpoint() {
  bs::endpoint e;
  e.qp_num = 0x123456;
  e.psn = 0xABCDEF;
  e.lid = 0x0102;
  for (std::size_t i = 0; i < e.gid.size(); ++i) e.gid[i] = static_cast<std::uint8_t>(0xF0 + i);
  e.mtu = 3;
  return e;
}

bs::hello sample_hello() {
  bs::hello h;
  h.secret = "s3cret";
  h.transport = bs::transport_kind::verbs;
  h.endpoint = sample_endpoint();
  return h;
}

bs::welcome shm_welcome(std::string name = "/kvc-node-7") {
  bs::welcome w;
  w.node_id = 7;
  w.region_size = std::uint64_t{1} << 30;
  w.format_version = 1;
  w.region_created_ms = 1'765'000'000'123;
  w.access = bs::shm_access{std::move(name)};
  return w;
}

bs::welcome verbs_welcome() {
  bs::welcome w;
  w.node_id = 0xFFFF;
  w.region_size = ~std::uint64_t{0};
  w.format_version = 0xFFFFFFFF;
  w.region_created_ms = ~std::uint64_t{0};
  w.access = bs::verbs_access{0x7F00'0000'1000, 0xDEADBEEF, sample_endpoint()};
  return w;
}

std::vector<std::byte> bytes_of(std::initializer_list<int> values) {
  // Sized up front and filled by index: GCC 12 -O2 misreports push_back into small vectors
  // (-Warray-bounds).
  std::vector<std::byte> out(values.size());
  std::size_t i = 0;
  for (const int v : values) out[i++] = static_cast<std::byte>(v);
  return out;
}

void put_u16(std::vector<std::byte>& f, std::size_t at, std::uint16_t v) {
  f[at] = static_cast<std::byte>(v & 0xFF);
  f[at + 1] = static_cast<std::byte>(v >> 8);
}
void put_u32(std::vector<std::byte>& f, std::size_t at, std::uint32_t v) {
  for (std::size_t i = 0; i < 4; ++i) f[at + i] = static_cast<std::byte>((v >> (8 * i)) & 0xFF);
}

// A frame made of a hand-written body and a header that matches it.
std::vector<std::byte> frame_of(bs::message_type type, const std::vector<std::byte>& body) {
  std::vector<std::byte> f(bs::header_size + body.size());
  put_u32(f, 0, bs::frame_magic);
  put_u16(f, 4, bs::protocol_version);
  put_u16(f, 6, static_cast<std::uint16_t>(type));
  put_u32(f, 8, static_cast<std::uint32_t>(body.size()));
  std::copy(body.begin(), body.end(), f.begin() + bs::header_size);
  return f;
}

// The encoded frame with its body cut to `body_len` bytes and the header saying so.
std::vector<std::byte> cut(std::vector<std::byte> f, std::size_t body_len) {
  f.resize(bs::header_size + body_len);
  put_u32(f, 8, static_cast<std::uint32_t>(body_len));
  return f;
}

void check_round_trip(const bs::message& m) {
  const auto frame = bs::encode(m);
  REQUIRE(frame.size() >= bs::header_size);
  auto decoded = bs::decode(frame);
  INFO((decoded ? std::string() : decoded.message()));
  REQUIRE(decoded);
  CHECK(*decoded == m);
  CHECK(bs::encode(*decoded) == frame);
}

void check_rejected(const std::vector<std::byte>& frame, const std::string& detail_part) {
  auto r = bs::decode(frame);
  REQUIRE_FALSE(r);
  CHECK(r.error() == kvc::errc::protocol_error);
  CHECK_THAT(r.detail(), Contains(detail_part));
}

struct socket_pair {
  kvc::bootstrap::unique_fd a, b;
  socket_pair() {
    int fds[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0);
    a.reset(fds[0]);
    b.reset(fds[1]);
  }
};

void send_all(int fd, const std::vector<std::byte>& bytes) {
  REQUIRE(::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) ==
          static_cast<ssize_t>(bytes.size()));
}

}  // namespace

TEST_CASE("bootstrap: the header is 12 little-endian bytes starting with KVCB", "[bootstrap]") {
  const auto frame = bs::encode(bs::refuse{kvc::errc::unauthenticated, "no"});
  REQUIRE(frame.size() == bs::header_size + 4 + 2 + 2);
  CHECK(frame[0] == std::byte{'K'});
  CHECK(frame[1] == std::byte{'V'});
  CHECK(frame[2] == std::byte{'C'});
  CHECK(frame[3] == std::byte{'B'});
  CHECK(frame[4] == std::byte{2});  // version
  CHECK(frame[5] == std::byte{0});
  CHECK(frame[6] == std::byte{3});    // refuse
  CHECK(frame[8] == std::byte{8});    // body length
  CHECK(frame[12] == std::byte{10});  // errc::unauthenticated
  CHECK(frame[16] == std::byte{2});   // msg_len

  auto h = bs::decode_header(frame);
  REQUIRE(h);
  CHECK(h->type == bs::message_type::refuse);
  CHECK(h->body_length == 8);
  CHECK(h->version == 2);
  CHECK(h->magic == bs::frame_magic);
}

TEST_CASE("bootstrap: hello round trips, edge values included", "[bootstrap]") {
  check_round_trip(sample_hello());

  bs::hello empty;  // empty secret, shm, no endpoint
  check_round_trip(empty);

  bs::hello big;
  for (std::size_t i = 0; i < bs::max_secret; ++i) big.secret += static_cast<char>(i);  // NULs too
  big.transport = bs::transport_kind::verbs;
  bs::endpoint e;
  e.qp_num = bs::max_qp_num;
  e.psn = bs::max_psn;
  e.lid = 0xFFFF;
  e.gid.fill(0xFF);
  e.mtu = bs::max_mtu;
  big.endpoint = e;
  check_round_trip(big);
  CHECK(bs::encode(big).size() == bs::header_size + 2 + 256 + 1 + 1 + 27);

  e = bs::endpoint{};
  e.mtu = bs::min_mtu;
  big.endpoint = e;
  check_round_trip(big);

  // shm with an endpoint is not the codec's business: it encodes what it is given.
  bs::hello odd;
  odd.endpoint = sample_endpoint();
  check_round_trip(odd);
}

TEST_CASE("bootstrap: a hello's identity is an optional last field, never 0", "[bootstrap]") {
  bs::hello h = sample_hello();
  const std::size_t without = bs::encode(h).size();
  h.identity = (std::uint64_t{1} << 40) - 1;
  check_round_trip(h);
  const auto frame = bs::encode(h);
  REQUIRE(frame.size() == without + 8);
  // Cut it off whole: a hello without identity (what a client without one sends); cut it
  // partly: rejected.
  auto cut = frame;
  cut.resize(without);
  put_u32(cut, 8, static_cast<std::uint32_t>(cut.size() - bs::header_size));
  auto decoded = bs::decode(cut);
  REQUIRE(decoded);
  CHECK(std::get<bs::hello>(*decoded).identity == 0);
  for (std::size_t drop = 1; drop < 8; ++drop) {
    cut = frame;
    cut.resize(frame.size() - drop);
    put_u32(cut, 8, static_cast<std::uint32_t>(cut.size() - bs::header_size));
    check_rejected(cut, std::to_string(8 - drop) + " trailing bytes after the last field");
  }
  // Zero on the wire would not encode back to the same bytes.
  auto zero = frame;
  for (std::size_t i = without; i < frame.size(); ++i) zero[i] = std::byte{0};
  check_rejected(zero, "hello: identity 0 is sent by leaving the field out");
}

TEST_CASE("bootstrap: welcome round trips for shm and verbs", "[bootstrap]") {
  check_round_trip(shm_welcome());
  check_round_trip(shm_welcome("/x"));
  check_round_trip(shm_welcome("/" + std::string(254, '~')));
  check_round_trip(shm_welcome("/ !\"#$%&'()*+,-.0123456789:;<=>?@AZ[\\]^_`az{|}~"));
  check_round_trip(verbs_welcome());
  bs::welcome zero;
  zero.access = bs::verbs_access{};
  check_round_trip(zero);
  CHECK(bs::encode(verbs_welcome()).size() == bs::header_size + 2 + 8 + 4 + 8 + 1 + 8 + 4 + 27);
  // The region's creation time follows the format version, little-endian.
  const auto f = bs::encode(shm_welcome());
  std::uint64_t created = 0;
  for (std::size_t i = 0; i < 8; ++i) {
    created |= std::uint64_t{std::to_integer<std::uint8_t>(f[bs::header_size + 14 + i])} << (8 * i);
  }
  CHECK(created == shm_welcome().region_created_ms);
  CHECK(shm_welcome().transport() == bs::transport_kind::shm);
  CHECK(verbs_welcome().transport() == bs::transport_kind::verbs);
}

TEST_CASE("bootstrap: refuse round trips and becomes a failure", "[bootstrap]") {
  check_round_trip(bs::refuse{kvc::errc::unauthenticated, ""});
  check_round_trip(bs::refuse{kvc::errc::format_mismatch, std::string(1024, 'x')});
  check_round_trip(bs::refuse{kvc::errc::not_supported, "transport verbs: h\xC3\xA9"});
  // A code newer than this build survives as a number.
  check_round_trip(bs::refuse{static_cast<kvc::errc>(0x7FFFFFFF), "future"});

  const auto f = bs::as_failure(bs::refuse{kvc::errc::unauthenticated, "wrong secret"});
  CHECK(f.code == kvc::errc::unauthenticated);
  CHECK_THAT(f.detail, Contains("wrong secret"));
}

TEST_CASE("bootstrap: bad headers are rejected with what is wrong", "[bootstrap]") {
  const auto good = bs::encode(sample_hello());

  check_rejected({}, "short header: 0 of 12 bytes");
  check_rejected(std::vector<std::byte>(good.begin(), good.begin() + 11),
                 "short header: 11 of 12 bytes");
  CHECK_FALSE(bs::decode_header(std::span(good).first(5)));

  auto f = good;
  f[3] = std::byte{'X'};
  check_rejected(f, "bad magic 0x5843564B");

  f = good;
  put_u16(f, 4, 1);  // before welcome said when its region was created
  check_rejected(f, "unsupported protocol version 1 (this build speaks 2)");
  put_u16(f, 4, 3);
  check_rejected(f, "unsupported protocol version 3 (this build speaks 2)");
  put_u16(f, 4, 0);
  check_rejected(f, "unsupported protocol version 0");

  for (const int type : {0, 4, 0xFFFF}) {
    f = good;
    put_u16(f, 6, static_cast<std::uint16_t>(type));
    check_rejected(f, "unknown message type " + std::to_string(type));
  }

  f = good;
  put_u32(f, 8, bs::max_body + 1);
  check_rejected(f, "body length 4097 exceeds the maximum 4096");
  put_u32(f, 8, 0xFFFFFFFF);
  check_rejected(f, "exceeds the maximum");
  auto h = bs::decode_header(f);
  REQUIRE_FALSE(h);
  CHECK(h.error() == kvc::errc::protocol_error);

  // The header's length and the frame's disagree, both ways.
  f = good;
  f.resize(f.size() + 1);
  check_rejected(f, "body length mismatch: the header says " +
                        std::to_string(good.size() - bs::header_size) + " bytes, the frame has " +
                        std::to_string(good.size() - bs::header_size + 1));
  f = good;
  f.pop_back();
  check_rejected(f, "body length mismatch");
  // A frame of the maximum body size passes the header check (and fails on its content).
  f = frame_of(bs::message_type::refuse, std::vector<std::byte>(bs::max_body));
  REQUIRE(bs::decode_header(f));
  check_rejected(f, "refuse: code 0");
}

TEST_CASE("bootstrap: every truncation of every message is rejected", "[bootstrap]") {
  const std::vector<bs::message> messages = {sample_hello(), bs::hello{}, shm_welcome(),
                                             verbs_welcome(),
                                             bs::refuse{kvc::errc::io_error, "disk"}};
  for (const auto& m : messages) {
    const auto frame = bs::encode(m);
    const std::size_t body = frame.size() - bs::header_size;
    for (std::size_t len = 0; len < body; ++len) {
      INFO("type " << static_cast<int>(bs::type_of(m)) << " body cut to " << len << " of " << body);
      check_rejected(cut(frame, len), "body truncated at ");
    }
  }
  // The detail names the field.
  check_rejected(cut(bs::encode(sample_hello()), 1), "hello: body truncated at secret_len");
  check_rejected(cut(bs::encode(sample_hello()), 5), "hello: body truncated at secret (needs 6");
  check_rejected(cut(bs::encode(sample_hello()), 10), "hello: body truncated at endpoint qp_num");
  check_rejected(cut(bs::encode(sample_hello()), 20), "hello: body truncated at endpoint gid");
  check_rejected(cut(bs::encode(verbs_welcome()), 20),
                 "welcome: body truncated at region_created_ms");
  check_rejected(cut(bs::encode(verbs_welcome()), 28), "welcome: body truncated at region_addr");
  check_rejected(cut(bs::encode(shm_welcome()), 24), "welcome: body truncated at name_len");
  check_rejected(cut(bs::encode(bs::refuse{kvc::errc::io_error, "disk"}), 7),
                 "refuse: body truncated at message");
}

TEST_CASE("bootstrap: trailing bytes are rejected", "[bootstrap]") {
  const std::vector<bs::message> messages = {sample_hello(), bs::hello{}, shm_welcome(),
                                             verbs_welcome(), bs::refuse{kvc::errc::io_error, ""}};
  for (const auto& m : messages) {
    auto frame = bs::encode(m);
    frame.resize(frame.size() + 1);
    put_u32(frame, 8, static_cast<std::uint32_t>(frame.size() - bs::header_size));
    check_rejected(frame, "1 trailing bytes after the last field");
  }
}

TEST_CASE("bootstrap: hello fields out of range are rejected", "[bootstrap]") {
  // secret_len 257 with 257 bytes present
  std::vector<std::byte> body = bytes_of({1, 1});
  body.resize(2 + 257 + 2);
  body[2 + 257] = std::byte{1};
  check_rejected(frame_of(bs::message_type::hello, body), "secret_len 257 exceeds the maximum 256");

  for (const int t : {0, 3, 255})
    check_rejected(frame_of(bs::message_type::hello, bytes_of({0, 0, t, 0})),
                   "hello: transport " + std::to_string(t) + " is neither shm (1) nor verbs (2)");
  check_rejected(frame_of(bs::message_type::hello, bytes_of({0, 0, 1, 2})),
                 "has_endpoint 2 is neither 0 nor 1");

  const auto good = bs::encode(sample_hello());
  const std::size_t ep = bs::header_size + 2 + 6 + 2;  // the endpoint's offset
  auto f = good;
  put_u32(f, ep + 4, bs::max_psn + 1);
  check_rejected(f, "hello: endpoint psn 16777216 does not fit in 24 bits");
  f = good;
  put_u32(f, ep, 0xFFFFFFFF);
  check_rejected(f, "hello: endpoint qp_num 4294967295 does not fit in 24 bits");
  for (const int mtu : {0, 6, 255}) {
    f = good;
    f[ep + 4 + 4 + 2 + 16] = static_cast<std::byte>(mtu);
    check_rejected(f, "hello: endpoint mtu " + std::to_string(mtu) + " is not an IB MTU");
  }
}

TEST_CASE("bootstrap: welcome fields out of range are rejected", "[bootstrap]") {
  const std::size_t transport_at = bs::header_size + 2 + 8 + 4 + 8;
  auto f = bs::encode(shm_welcome());
  for (const int t : {0, 3}) {
    f[transport_at] = static_cast<std::byte>(t);
    check_rejected(f, "welcome: transport " + std::to_string(t) + " is neither");
  }

  // A shm welcome whose name_len says name.size().
  const auto with_name = [&](const std::string& name) {
    std::vector<std::byte> body(2 + 8 + 4 + 8 + 1 + 2 + name.size());
    body[transport_at - bs::header_size] = std::byte{1};
    put_u16(body, transport_at - bs::header_size + 1, static_cast<std::uint16_t>(name.size()));
    std::transform(name.begin(), name.end(), body.end() - static_cast<std::ptrdiff_t>(name.size()),
                   [](char c) { return static_cast<std::byte>(c); });
    return frame_of(bs::message_type::welcome, body);
  };
  check_rejected(with_name(""), "welcome: name_len 0 is not 1..255");
  check_rejected(with_name("/" + std::string(255, 'a')), "welcome: name_len 256 is not 1..255");
  CHECK(bs::decode(with_name("/" + std::string(254, 'a'))));

  // Segment names that shm_open would not take, or that would escape /dev/shm.
  CHECK(bs::decode(with_name("/ok")));
  check_rejected(with_name("kvc"), "segment name does not start with '/'");
  check_rejected(with_name("/"), "segment name \"/\" has nothing after the '/'");
  check_rejected(with_name("/a/b"), "segment name has a second '/' at offset 2");
  check_rejected(with_name("/../x"), "second '/' at offset 3");
  check_rejected(with_name(std::string("/a\0b", 4)), "non-printable byte 0x00 at offset 2");
  check_rejected(with_name("/a\x7F"), "non-printable byte 0x7F at offset 2");
  check_rejected(with_name("/\xC3\xA9"), "non-printable byte 0xC3 at offset 1");

  auto v = bs::encode(verbs_welcome());
  const std::size_t ep = transport_at + 1 + 8 + 4;
  put_u32(v, ep + 4, 0x01000000);
  check_rejected(v, "welcome: endpoint psn 16777216 does not fit in 24 bits");
  v = bs::encode(verbs_welcome());
  v[ep + 4 + 4 + 2 + 16] = std::byte{6};
  check_rejected(v, "welcome: endpoint mtu 6");
}

TEST_CASE("bootstrap: refuse fields out of range are rejected", "[bootstrap]") {
  check_rejected(frame_of(bs::message_type::refuse, bytes_of({0, 0, 0, 0, 0, 0})),
                 "refuse: code 0 is not an error code");
  check_rejected(frame_of(bs::message_type::refuse, bytes_of({0, 0, 0, 0x80, 0, 0})),
                 "refuse: code 2147483648 is not an error code");
  std::vector<std::byte> body = bytes_of({9, 0, 0, 0, 0x01, 0x04});  // msg_len 1025
  body.resize(body.size() + 1025, std::byte{'a'});
  check_rejected(frame_of(bs::message_type::refuse, body),
                 "refuse: msg_len 1025 exceeds the maximum 1024");
  check_rejected(frame_of(bs::message_type::refuse, bytes_of({9, 0, 0, 0, 3, 0, 'a', 0, 'b'})),
                 "refuse: message has a NUL byte at offset 1");
}

TEST_CASE("bootstrap: validate names what encode cannot take", "[bootstrap]") {
  CHECK(bs::validate(sample_hello()));
  CHECK(bs::validate(shm_welcome()));

  bs::hello h;
  h.secret.assign(257, 's');
  auto r = bs::validate(h);
  REQUIRE_FALSE(r);
  CHECK(r.error() == kvc::errc::invalid_argument);
  CHECK_THAT(r.detail(), Contains("hello: secret is 257 bytes, more than 256"));

  h = sample_hello();
  h.transport = static_cast<bs::transport_kind>(9);
  CHECK_THAT(bs::validate(h).detail(), Contains("hello: transport 9"));
  h = sample_hello();
  h.endpoint->psn = 0x01000000;
  CHECK_THAT(bs::validate(h).detail(), Contains("psn 16777216"));

  CHECK_THAT(bs::validate(shm_welcome("")).detail(), Contains("segment name is 0 bytes"));
  CHECK_THAT(bs::validate(shm_welcome("/" + std::string(255, 'a'))).detail(),
             Contains("segment name is 256 bytes"));
  CHECK_THAT(bs::validate(bs::refuse{kvc::errc::io_error, std::string(1025, 'x')}).detail(),
             Contains("refuse: message is 1025 bytes"));
  CHECK_THAT(bs::validate(bs::refuse{static_cast<kvc::errc>(0), ""}).detail(),
             Contains("refuse: code 0"));
}

TEST_CASE("bootstrap: secrets compare in full, whatever their content", "[bootstrap]") {
  CHECK(bs::secrets_equal("", ""));
  CHECK(bs::secrets_equal("abc", "abc"));
  CHECK(bs::secrets_equal(std::string_view("a\0b", 3), std::string_view("a\0b", 3)));
  CHECK_FALSE(bs::secrets_equal("abc", "abd"));
  CHECK_FALSE(bs::secrets_equal("abc", "xbc"));
  CHECK_FALSE(bs::secrets_equal("abc", "ab"));
  CHECK_FALSE(bs::secrets_equal("ab", "abc"));
  CHECK_FALSE(bs::secrets_equal("", "a"));
  // A prefix padded with NULs is still different: the lengths differ.
  CHECK_FALSE(bs::secrets_equal("ab", std::string_view("ab\0", 3)));
  const std::string s(256, 'k');
  for (std::size_t i = 0; i < s.size(); i += 37) {
    std::string t = s;
    t[i] = static_cast<char>(t[i] ^ 1);
    CHECK_FALSE(bs::secrets_equal(s, t));
  }
}

TEST_CASE("bootstrap: frames cross a socket both ways", "[bootstrap][socket]") {
  socket_pair p;
  const std::vector<bs::message> messages = {sample_hello(), shm_welcome(), verbs_welcome(),
                                             bs::refuse{kvc::errc::unauthenticated, "no"}};
  for (const auto& m : messages) {
    REQUIRE(bs::write_frame(p.a.get(), m, 1s));
    auto got = bs::read_frame(p.b.get(), 1s);
    INFO((got ? std::string() : got.message()));
    REQUIRE(got);
    CHECK(*got == m);
  }
  // Two frames sent back to back are read one at a time.
  REQUIRE(bs::write_frame(p.b.get(), messages[0], 1s));
  REQUIRE(bs::write_frame(p.b.get(), messages[3], 1s));
  auto first = bs::read_frame(p.a.get(), 1s);
  auto second = bs::read_frame(p.a.get(), 1s);
  REQUIRE(first);
  REQUIRE(second);
  CHECK(*first == messages[0]);
  CHECK(*second == messages[3]);
}

TEST_CASE("bootstrap: a timeout of milliseconds::max() waits for ever, not for nothing",
          "[bootstrap][socket]") {
  // now + max() wrapped into the past (a signed overflow): every call timed out at once.
  socket_pair p;
  constexpr auto for_ever = std::chrono::milliseconds::max();
  std::thread late([&] {
    std::this_thread::sleep_for(50ms);
    (void)bs::write_frame(p.a.get(), sample_hello(), for_ever);
  });
  auto got = bs::read_frame(p.b.get(), for_ever);
  late.join();
  INFO((got ? std::string() : got.message()));
  REQUIRE(got);
  CHECK(*got == bs::message{sample_hello()});
}

TEST_CASE("bootstrap: read_frame fails fast on a bad or oversized header", "[bootstrap][socket]") {
  socket_pair p;
  auto f = bs::encode(sample_hello());
  put_u32(f, 8, bs::max_body + 1);
  f.resize(bs::header_size);  // no body follows, and the peer stays open
  send_all(p.a.get(), f);
  // A reader that waited for the body would time out instead (after 10 s).
  auto r = bs::read_frame(p.b.get(), 10s);
  REQUIRE_FALSE(r);
  CHECK(r.error() == kvc::errc::protocol_error);
  CHECK_THAT(r.detail(), Contains("body length 4097 exceeds the maximum 4096"));

  socket_pair q;
  send_all(q.a.get(), bytes_of({'H', 'T', 'T', 'P', '/', '1', '.', '1', ' ', '2', '0', '0'}));
  r = bs::read_frame(q.b.get(), 10s);
  REQUIRE_FALSE(r);
  CHECK(r.error() == kvc::errc::protocol_error);
  CHECK_THAT(r.detail(), Contains("bad magic"));
}

TEST_CASE("bootstrap: read_frame reports a peer that closes mid-frame", "[bootstrap][socket]") {
  const auto frame = bs::encode(sample_hello());
  SECTION("inside the header") {
    socket_pair p;
    send_all(p.a.get(), std::vector<std::byte>(frame.begin(), frame.begin() + 5));
    p.a.reset();
    auto r = bs::read_frame(p.b.get(), 5s);
    REQUIRE_FALSE(r);
    CHECK(r.error() == kvc::errc::protocol_error);
    CHECK_THAT(r.detail(), Contains("peer closed the connection after 5 of 12 bytes"));
  }
  SECTION("inside the body") {
    socket_pair p;
    send_all(p.a.get(), std::vector<std::byte>(frame.begin(), frame.begin() + 20));
    p.a.reset();
    auto r = bs::read_frame(p.b.get(), 5s);
    REQUIRE_FALSE(r);
    CHECK(r.error() == kvc::errc::protocol_error);
    CHECK_THAT(r.detail(), Contains("peer closed the connection after 20 of " +
                                    std::to_string(frame.size()) + " bytes"));
  }
  SECTION("before the frame") {
    socket_pair p;
    p.a.reset();
    auto r = bs::read_frame(p.b.get(), 5s);
    REQUIRE_FALSE(r);
    CHECK_THAT(r.detail(), Contains("after 0 of 12 bytes"));
  }
}

TEST_CASE("bootstrap: read_frame keeps to its deadline", "[bootstrap][socket]") {
  SECTION("a silent peer") {
    socket_pair p;
    auto r = bs::read_frame(p.b.get(), 50ms);
    REQUIRE_FALSE(r);
    CHECK(r.error() == kvc::errc::timed_out);
    CHECK_THAT(r.detail(), Contains("within 50 ms (received 0 of 12 bytes)"));
  }
  SECTION("a peer that stops after the header") {
    socket_pair p;
    const auto frame = bs::encode(sample_hello());
    send_all(p.a.get(), std::vector<std::byte>(frame.begin(), frame.begin() + 14));
    auto r = bs::read_frame(p.b.get(), 50ms);
    REQUIRE_FALSE(r);
    CHECK(r.error() == kvc::errc::timed_out);
    CHECK_THAT(r.detail(), Contains("received 14 of " + std::to_string(frame.size())));
  }
  SECTION("a peer that sends one byte at a time, slowly") {
    // Each byte arrives well within the timeout; the frame as a whole does not.
    socket_pair p;
    const auto frame = bs::encode(sample_hello());
    std::atomic<bool> stop{false};
    std::thread dribbler([&] {
      for (const std::byte b : frame) {
        if (stop.load() || ::send(p.a.get(), &b, 1, MSG_NOSIGNAL) != 1) return;
        std::this_thread::sleep_for(20ms);
      }
    });
    auto r = bs::read_frame(p.b.get(), 200ms);
    stop.store(true);
    dribbler.join();
    REQUIRE_FALSE(r);
    CHECK(r.error() == kvc::errc::timed_out);
  }
}

TEST_CASE("bootstrap: write_frame errors", "[bootstrap][socket]") {
  SECTION("an invalid message is not sent") {
    socket_pair p;
    bs::hello h;
    h.secret.assign(300, 'x');
    auto r = bs::write_frame(p.a.get(), h, 1s);
    REQUIRE_FALSE(r);
    CHECK(r.error() == kvc::errc::invalid_argument);
    CHECK_THAT(r.detail(), Contains("secret is 300 bytes"));
  }
  SECTION("a closed peer is an I/O error, not SIGPIPE") {
    socket_pair p;
    p.b.reset();
    auto r = bs::write_frame(p.a.get(), sample_hello(), 1s);
    REQUIRE_FALSE(r);
    CHECK(r.error() == kvc::errc::io_error);
    CHECK_THAT(r.detail(), Contains("Broken pipe"));
  }
  SECTION("a peer that does not read makes the writer time out") {
    socket_pair p;
    int small = 4096;
    REQUIRE(::setsockopt(p.a.get(), SOL_SOCKET, SO_SNDBUF, &small, sizeof small) == 0);
    kvc::result<void> r;
    const bs::refuse big{kvc::errc::io_error, std::string(1024, 'x')};
    for (int i = 0; i < 10000 && r; ++i) r = bs::write_frame(p.a.get(), big, 20ms);
    REQUIRE_FALSE(r);
    CHECK(r.error() == kvc::errc::timed_out);
    CHECK_THAT(r.detail(), Contains("could not send a bootstrap frame within 20 ms"));
  }
  SECTION("a bad descriptor") {
    auto r = bs::read_frame(-1, 10ms);
    REQUIRE_FALSE(r);
    CHECK(r.error() == kvc::errc::io_error);
    auto w = bs::write_frame(-1, sample_hello(), 10ms);
    REQUIRE_FALSE(w);
    CHECK(w.error() == kvc::errc::io_error);
  }
}

TEST_CASE("bootstrap: connect_tcp and a whole exchange over TCP", "[bootstrap][socket]") {
  bs::unique_fd listener(::socket(AF_INET, SOCK_STREAM, 0));
  REQUIRE(listener);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  REQUIRE(::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  REQUIRE(::listen(listener.get(), 4) == 0);
  socklen_t len = sizeof addr;
  REQUIRE(::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  const auto port = ntohs(addr.sin_port);

  auto fd = bs::connect_tcp("127.0.0.1", port, 2s);
  INFO((fd ? std::string() : fd.message()));
  REQUIRE(fd);
  bs::unique_fd client(*fd);
  bs::unique_fd server(::accept(listener.get(), nullptr, nullptr));
  REQUIRE(server);

  REQUIRE(bs::write_frame(client.get(), sample_hello(), 1s));
  auto hello = bs::read_frame(server.get(), 1s);
  REQUIRE(hello);
  const auto* h = std::get_if<bs::hello>(&*hello);
  REQUIRE(h != nullptr);
  CHECK(bs::secrets_equal(h->secret, "s3cret"));
  REQUIRE(bs::write_frame(server.get(), verbs_welcome(), 1s));
  auto welcome = bs::read_frame(client.get(), 1s);
  REQUIRE(welcome);
  CHECK(*welcome == bs::message(verbs_welcome()));

  // "localhost" resolves without DNS.
  auto by_name = bs::connect_tcp("localhost", port, 2s);
  REQUIRE(by_name);
  bs::unique_fd named(*by_name);

  // A port nobody listens on (just closed) is refused.
  listener.reset();
  auto refused = bs::connect_tcp("127.0.0.1", port, 2s);
  REQUIRE_FALSE(refused);
  CHECK(refused.error() == kvc::errc::unreachable);
  CHECK_THAT(refused.detail(), Contains("127.0.0.1:" + std::to_string(port)));
  CHECK_THAT(refused.detail(), Contains("refused"));

  auto bad = bs::connect_tcp("", port, 1s);
  REQUIRE_FALSE(bad);
  CHECK(bad.error() == kvc::errc::invalid_argument);
  CHECK(bs::connect_tcp("127.0.0.1", 0, 1s).error() == kvc::errc::invalid_argument);
}

TEST_CASE("bootstrap: unique_fd owns one descriptor", "[bootstrap]") {
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  bs::unique_fd a(fds[0]);
  bs::unique_fd b(fds[1]);
  bs::unique_fd c(std::move(a));
  CHECK_FALSE(a);
  CHECK(c.get() == fds[0]);
  b = std::move(c);  // closes fds[1]
  CHECK(b.get() == fds[0]);
  CHECK(::fcntl(fds[1], F_GETFD) == -1);
  const int raw = b.release();
  CHECK_FALSE(b);
  CHECK(::close(raw) == 0);
}
