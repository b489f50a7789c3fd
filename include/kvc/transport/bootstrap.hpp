// kvc/transport/bootstrap.hpp — the memory node's bootstrap protocol: the only messages that
// ever reach a memory node's CPU. A client connects over TCP once, says hello (the cluster's
// shared secret and, for verbs, its queue pair), and the node answers welcome (how to reach its
// region: a shared-memory segment name, or address, rkey and queue pair) or refuse (an errc and
// a sentence). Everything after that is one-sided.
//
// Wire format v2 (v1 had no region_created_ms in welcome). Every integer is little-endian and is
// encoded byte by byte (never a struct memcpy), so the format does not depend on the compiler's
// layout.
//
//   frame   = header body
//   header  = u32 magic 0x4243564B ('K','V','C','B') | u16 version (2) | u16 type | u32 body_len
//   body    ≤ max_body (4096) bytes; a longer body_len is refused before the body is read
//   hello   (type 1) = u16 secret_len (≤ 256) | secret | u8 transport (1 shm, 2 verbs)
//                      | u8 has_endpoint (0/1) | [endpoint] | [u64 identity (≠ 0)]
//   welcome (type 2) = u16 node_id | u64 region_size | u32 format_version
//                      | u64 region_created_ms | u8 transport
//                      | shm:   u16 name_len (1..255) | name ('/' then printable ASCII, no '/')
//                      | verbs: u64 region_addr | u32 rkey | endpoint
//   refuse  (type 3) = u32 code (a kvc::errc, > 0) | u16 msg_len (≤ 1024) | message (no NUL)
//   endpoint         = u32 qp_num (24-bit) | u32 psn (24-bit) | u16 lid | 16 bytes gid
//                      | u8 mtu (IB enum, 1..5)
//
// Guarantees: decode() accepts exactly one whole frame and rejects anything else with
// errc::protocol_error and a detail naming the problem (short header, bad magic, version, type,
// lengths, a field out of range, truncation, trailing bytes); every message it accepts encodes
// back to the same bytes. read_frame() validates the header before it reads the body and keeps
// to one deadline for the whole frame, so neither a huge length nor a slow sender can hold it.
// Nothing throws; everything that can fail returns a kvc::result.
//
// Concurrency: the codec is pure functions over values. read_frame/write_frame use the socket
// they are given; the caller serialises calls on one socket (one reader and one writer at a
// time). After any read_frame error the stream is out of step: close the socket.
// Design: docs/design/transport.md.
#pragma once

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <variant>
#include <vector>

#include "kvc/config.hpp"
#include "kvc/error.hpp"
#include "kvc/transport/region.hpp"

namespace kvc::inline v0::bootstrap {

inline constexpr std::uint32_t frame_magic = 0x4243564B;  // bytes 'K','V','C','B' on the wire
inline constexpr std::uint16_t protocol_version = 2;
inline constexpr std::size_t header_size = 12;
inline constexpr std::size_t max_body = 4096;
inline constexpr std::size_t max_secret = 256;
inline constexpr std::size_t max_segment_name = 255;
inline constexpr std::size_t max_refuse_message = 1024;
inline constexpr std::uint32_t max_qp_num = 0xFFFFFF;  // QPNs and PSNs are 24-bit in IB
inline constexpr std::uint32_t max_psn = 0xFFFFFF;
inline constexpr std::uint8_t min_mtu = 1;  // IBV_MTU_256
inline constexpr std::uint8_t max_mtu = 5;  // IBV_MTU_4096

enum class message_type : std::uint16_t { hello = 1, welcome = 2, refuse = 3 };
// The region header's kind (kvc/transport/region.hpp), carried on the wire as one byte.
using transport_kind = kvc::transport_kind;

// The 12 bytes in front of every body.
struct frame_header {
  std::uint32_t magic = frame_magic;
  std::uint16_t version = protocol_version;
  message_type type = message_type::hello;
  std::uint32_t body_length = 0;

  bool operator==(const frame_header&) const = default;
};

// One side's reliable-connected queue pair, as the other side needs it to connect (the values
// of ibv_qp_attr / ibv_port_attr / ibv_gid, without including <infiniband/verbs.h>).
struct endpoint {
  std::uint32_t qp_num = 0;  // ≤ max_qp_num
  std::uint32_t psn = 0;     // ≤ max_psn
  std::uint16_t lid = 0;
  std::array<std::uint8_t, 16> gid{};
  std::uint8_t mtu = max_mtu;  // enum ibv_mtu: 1 = 256 bytes … 5 = 4096 bytes

  bool operator==(const endpoint&) const = default;
};

// Client → node. The endpoint is the client's queue pair (verbs; absent for shm).
struct hello {
  std::string secret;  // ≤ max_secret bytes, any byte values
  transport_kind transport = transport_kind::shm;
  std::optional<bootstrap::endpoint> endpoint;
  // The client transport's identity (the same in every hello of one transport object, across
  // its lanes and reconnections; 0 = none): what a fencing memory node cuts off and refuses.
  std::uint64_t identity = 0;

  bool operator==(const hello&) const = default;
};

// How a client maps a shared-memory node's region: shm_open(segment_name).
struct shm_access {
  std::string segment_name;  // "/name": 2..255 bytes, printable ASCII, one '/' at the front

  bool operator==(const shm_access&) const = default;
};

// How a client reaches a verbs node's region: READ/WRITE/atomics at region_addr with rkey over
// a queue pair connected to the node's endpoint.
struct verbs_access {
  std::uint64_t region_addr = 0;
  std::uint32_t rkey = 0;
  bootstrap::endpoint endpoint;

  bool operator==(const verbs_access&) const = default;
};

// Node → client: the region and how to reach it. The transport on the wire is the access's.
struct welcome {
  std::uint16_t node_id = 0;
  std::uint64_t region_size = 0;
  std::uint32_t format_version = 0;  // of the region header (kvc/transport/region.hpp)
  // The region's creation time (region_header::created_unix_ms): a memory node that restarted
  // serves another region, maybe at the same address and of the same size, and says so here.
  std::uint64_t region_created_ms = 0;
  std::variant<shm_access, verbs_access> access;

  [[nodiscard]] transport_kind transport() const noexcept {
    return access.index() == 0 ? transport_kind::shm : transport_kind::verbs;
  }
  bool operator==(const welcome&) const = default;
};

// Node → client: why not (wrong secret → errc::unauthenticated, wrong transport, ...).
struct refuse {
  errc code = errc::unauthenticated;  // > 0; codes newer than this build are kept as numbers
  std::string message;                // ≤ max_refuse_message bytes, no NUL (UTF-8 not checked)

  bool operator==(const refuse&) const = default;
};

using message = std::variant<hello, welcome, refuse>;

[[nodiscard]] inline message_type type_of(const message& m) noexcept {
  return static_cast<message_type>(m.index() + 1);
}

// The refusal as a failure for the client's own result: the node's code, its message in the
// detail. Allocates.
[[nodiscard]] inline failure as_failure(const refuse& r) {
  return fail(r.code, "the memory node refused the connection: " + r.message);
}

// Compares two secrets in time that depends on their lengths only, never on where they first
// differ (no early exit), so a client cannot find the secret byte by byte. O(max length).
[[nodiscard]] inline bool secrets_equal(std::string_view a, std::string_view b) noexcept {
  const std::size_t n = std::max(a.size(), b.size());
  std::size_t diff = a.size() ^ b.size();
  for (std::size_t i = 0; i < n; ++i) {
    // Indexes stay in bounds without a data-dependent branch: a missing byte reads as 0 and the
    // length difference above already makes the result false.
    const auto x = static_cast<unsigned char>(i < a.size() ? a[i] : 0);
    const auto y = static_cast<unsigned char>(i < b.size() ? b[i] : 0);
    diff |= static_cast<std::size_t>(x ^ y);
#if defined(__GNUC__) || defined(__clang__)
    __asm__ volatile("" : "+r"(diff));  // keeps the compiler from turning this into an early exit
#endif
  }
  return diff == 0;
}

namespace detail {

inline const char* type_name(message_type t) noexcept {
  switch (t) {
    case message_type::hello:
      return "hello";
    case message_type::welcome:
      return "welcome";
    case message_type::refuse:
      return "refuse";
  }
  return "unknown";
}

// "0x" and the `digits` low hex digits of v, upper case.
inline std::string hex(std::uint32_t v, int digits) {
  static constexpr char table[] = "0123456789ABCDEF";
  std::string s = "0x";
  for (int shift = 4 * (digits - 1); shift >= 0; shift -= 4) s += table[(v >> shift) & 0xFU];
  return s;
}

// The problem with a message's fields, or "" when it can be encoded. Shared by encode's
// precondition, validate() and decode (which also checks lengths before it reads them).
inline std::string endpoint_problem(const endpoint& e, const char* where) {
  if (e.qp_num > max_qp_num)
    return std::string(where) + " qp_num " + std::to_string(e.qp_num) + " does not fit in 24 bits";
  if (e.psn > max_psn)
    return std::string(where) + " psn " + std::to_string(e.psn) + " does not fit in 24 bits";
  if (e.mtu < min_mtu || e.mtu > max_mtu)
    return std::string(where) + " mtu " + std::to_string(e.mtu) +
           " is not an IB MTU enum value (1..5)";
  return {};
}

inline std::string segment_name_problem(std::string_view name) {
  if (name.empty() || name.size() > max_segment_name)
    return "welcome: segment name is " + std::to_string(name.size()) + " bytes, not 1.." +
           std::to_string(max_segment_name);
  if (name.front() != '/') return "welcome: segment name does not start with '/'";
  if (name.size() == 1) return "welcome: segment name \"/\" has nothing after the '/'";
  for (std::size_t i = 1; i < name.size(); ++i) {
    const auto c = static_cast<unsigned char>(name[i]);
    if (c == '/') return "welcome: segment name has a second '/' at offset " + std::to_string(i);
    if (c < 0x20 || c > 0x7E)
      return "welcome: segment name has a non-printable byte " + hex(c, 2) + " at offset " +
             std::to_string(i);
  }
  return {};
}

inline std::string problem(const hello& h) {
  if (h.secret.size() > max_secret)
    return "hello: secret is " + std::to_string(h.secret.size()) + " bytes, more than " +
           std::to_string(max_secret);
  if (h.transport != transport_kind::shm && h.transport != transport_kind::verbs)
    return "hello: transport " + std::to_string(static_cast<unsigned>(h.transport)) +
           " is neither shm (1) nor verbs (2)";
  if (h.endpoint) return endpoint_problem(*h.endpoint, "hello: endpoint");
  return {};
}

inline std::string problem(const welcome& w) {
  if (const auto* shm = std::get_if<shm_access>(&w.access))
    return segment_name_problem(shm->segment_name);
  return endpoint_problem(std::get_if<verbs_access>(&w.access)->endpoint, "welcome: endpoint");
}

inline std::string problem(const refuse& r) {
  if (static_cast<int>(r.code) <= 0)
    return "refuse: code " + std::to_string(static_cast<int>(r.code)) + " is not an error code";
  if (r.message.size() > max_refuse_message)
    return "refuse: message is " + std::to_string(r.message.size()) + " bytes, more than " +
           std::to_string(max_refuse_message);
  if (const auto nul = r.message.find('\0'); nul != std::string::npos)
    return "refuse: message has a NUL byte at offset " + std::to_string(nul);
  return {};
}

inline std::string problem(const message& m) {
  if (const auto* h = std::get_if<hello>(&m)) return problem(*h);
  if (const auto* w = std::get_if<welcome>(&m)) return problem(*w);
  return problem(*std::get_if<refuse>(&m));
}

class byte_writer {
 public:
  explicit byte_writer(std::vector<std::byte>& out) noexcept : out_(out) {}

  void u8(std::uint8_t v) { out_.push_back(static_cast<std::byte>(v)); }
  void u16(std::uint16_t v) { put(v); }
  void u32(std::uint32_t v) { put(v); }
  void u64(std::uint64_t v) { put(v); }
  void bytes(std::string_view s) {
    for (const char c : s) u8(static_cast<std::uint8_t>(c));
  }
  void ep(const endpoint& e) {
    u32(e.qp_num);
    u32(e.psn);
    u16(e.lid);
    for (const std::uint8_t b : e.gid) u8(b);
    u8(e.mtu);
  }

 private:
  template <class U>
  void put(U v) {
    for (std::size_t i = 0; i < sizeof(U); ++i) u8(static_cast<std::uint8_t>(v >> (8 * i)));
  }
  std::vector<std::byte>& out_;
};

// Reads fields from a body; a read past the end fails with a detail naming the field.
class byte_reader {
 public:
  byte_reader(std::span<const std::byte> in, const char* what) noexcept : in_(in), what_(what) {}

  template <class U>
  bool uint(U& v, const char* field) {
    if (!need(sizeof(U), field)) return false;
    U x = 0;
    for (std::size_t i = 0; i < sizeof(U); ++i)
      x = static_cast<U>(
          x |
          static_cast<U>(static_cast<U>(std::to_integer<std::uint8_t>(in_[pos_ + i])) << (8 * i)));
    pos_ += sizeof(U);
    v = x;
    return true;
  }
  bool bytes(std::string& out, std::size_t n, const char* field) {
    if (!need(n, field)) return false;
    out.resize(n);
    for (std::size_t i = 0; i < n; ++i)
      out[i] = static_cast<char>(std::to_integer<unsigned char>(in_[pos_ + i]));
    pos_ += n;
    return true;
  }
  bool ep(endpoint& e) {
    if (!uint(e.qp_num, "endpoint qp_num") || !uint(e.psn, "endpoint psn") ||
        !uint(e.lid, "endpoint lid"))
      return false;
    if (!need(e.gid.size(), "endpoint gid")) return false;
    for (auto& b : e.gid) b = std::to_integer<std::uint8_t>(in_[pos_++]);
    return uint(e.mtu, "endpoint mtu");
  }

  [[nodiscard]] std::size_t remaining() const noexcept { return in_.size() - pos_; }
  [[nodiscard]] std::size_t offset() const noexcept { return pos_; }
  [[nodiscard]] failure take_failure() { return std::move(failure_); }
  [[nodiscard]] failure trailing() const {
    return fail(errc::protocol_error, std::string(what_) + ": " + std::to_string(remaining()) +
                                          " trailing bytes after the last field (body is " +
                                          std::to_string(in_.size()) + " bytes)");
  }

 private:
  bool need(std::size_t n, const char* field) {
    if (remaining() >= n) return true;
    failure_ = fail(errc::protocol_error, std::string(what_) + ": body truncated at " + field +
                                              " (needs " + std::to_string(n) + " bytes at offset " +
                                              std::to_string(pos_) + ", " +
                                              std::to_string(remaining()) + " left)");
    return false;
  }

  std::span<const std::byte> in_;
  std::size_t pos_ = 0;
  const char* what_;
  failure failure_;
};

inline result<message> decode_hello(std::span<const std::byte> body) {
  byte_reader r(body, "hello");
  hello h;
  std::uint16_t secret_len = 0;
  if (!r.uint(secret_len, "secret_len")) return r.take_failure();
  if (secret_len > max_secret)
    return fail(errc::protocol_error, "hello: secret_len " + std::to_string(secret_len) +
                                          " exceeds the maximum " + std::to_string(max_secret));
  if (!r.bytes(h.secret, secret_len, "secret")) return r.take_failure();
  std::uint8_t transport = 0;
  if (!r.uint(transport, "transport")) return r.take_failure();
  if (transport != 1 && transport != 2)
    return fail(errc::protocol_error, "hello: transport " + std::to_string(transport) +
                                          " is neither shm (1) nor verbs (2)");
  h.transport = static_cast<transport_kind>(transport);
  std::uint8_t has_endpoint = 0;
  if (!r.uint(has_endpoint, "has_endpoint")) return r.take_failure();
  if (has_endpoint > 1)
    return fail(errc::protocol_error,
                "hello: has_endpoint " + std::to_string(has_endpoint) + " is neither 0 nor 1");
  if (has_endpoint == 1) {
    endpoint e;
    if (!r.ep(e)) return r.take_failure();
    h.endpoint = e;
  }
  if (r.remaining() == 8) {
    if (!r.uint(h.identity, "identity")) return r.take_failure();
    if (h.identity == 0) {
      return fail(errc::protocol_error, "hello: identity 0 is sent by leaving the field out");
    }
  }
  if (r.remaining() != 0) return r.trailing();
  if (auto p = problem(h); !p.empty()) return fail(errc::protocol_error, std::move(p));
  return message(std::move(h));
}

inline result<message> decode_welcome(std::span<const std::byte> body) {
  byte_reader r(body, "welcome");
  welcome w;
  if (!r.uint(w.node_id, "node_id") || !r.uint(w.region_size, "region_size") ||
      !r.uint(w.format_version, "format_version") ||
      !r.uint(w.region_created_ms, "region_created_ms"))
    return r.take_failure();
  std::uint8_t transport = 0;
  if (!r.uint(transport, "transport")) return r.take_failure();
  if (transport == static_cast<std::uint8_t>(transport_kind::shm)) {
    std::uint16_t name_len = 0;
    if (!r.uint(name_len, "name_len")) return r.take_failure();
    if (name_len == 0 || name_len > max_segment_name)
      return fail(errc::protocol_error, "welcome: name_len " + std::to_string(name_len) +
                                            " is not 1.." + std::to_string(max_segment_name));
    shm_access shm;
    if (!r.bytes(shm.segment_name, name_len, "segment name")) return r.take_failure();
    w.access = std::move(shm);
  } else if (transport == static_cast<std::uint8_t>(transport_kind::verbs)) {
    verbs_access v;
    if (!r.uint(v.region_addr, "region_addr") || !r.uint(v.rkey, "rkey") || !r.ep(v.endpoint))
      return r.take_failure();
    w.access = v;
  } else {
    return fail(errc::protocol_error, "welcome: transport " + std::to_string(transport) +
                                          " is neither shm (1) nor verbs (2)");
  }
  if (r.remaining() != 0) return r.trailing();
  if (auto p = problem(w); !p.empty()) return fail(errc::protocol_error, std::move(p));
  return message(std::move(w));
}

inline result<message> decode_refuse(std::span<const std::byte> body) {
  byte_reader r(body, "refuse");
  std::uint32_t code = 0;
  if (!r.uint(code, "code")) return r.take_failure();
  if (code == 0 || code > static_cast<std::uint32_t>(INT_MAX))
    return fail(errc::protocol_error, "refuse: code " + std::to_string(code) +
                                          " is not an error code (1.." + std::to_string(INT_MAX) +
                                          ")");
  std::uint16_t msg_len = 0;
  if (!r.uint(msg_len, "msg_len")) return r.take_failure();
  if (msg_len > max_refuse_message)
    return fail(errc::protocol_error, "refuse: msg_len " + std::to_string(msg_len) +
                                          " exceeds the maximum " +
                                          std::to_string(max_refuse_message));
  refuse f;
  f.code = static_cast<errc>(static_cast<int>(code));
  if (!r.bytes(f.message, msg_len, "message")) return r.take_failure();
  if (r.remaining() != 0) return r.trailing();
  if (auto p = problem(f); !p.empty()) return fail(errc::protocol_error, std::move(p));
  return message(std::move(f));
}

}  // namespace detail

// Checks that a message can be encoded: errc::invalid_argument naming the field otherwise.
// Allocates only for the detail.
[[nodiscard]] inline result<void> validate(const message& m) {
  if (auto p = detail::problem(m); !p.empty()) return fail(errc::invalid_argument, std::move(p));
  return {};
}

// The frame (header and body) of a message. Precondition (KVC_ASSERT): validate(m) succeeds —
// check messages built from configuration or input first. Allocates the returned bytes.
[[nodiscard]] inline std::vector<std::byte> encode(const message& m) {
  KVC_ASSERT(detail::problem(m).empty(), "bootstrap::encode: invalid message (see validate())");
  std::vector<std::byte> out;
  out.reserve(header_size + 64);
  detail::byte_writer w(out);
  w.u32(frame_magic);
  w.u16(protocol_version);
  w.u16(static_cast<std::uint16_t>(type_of(m)));
  w.u32(0);  // body length, patched below
  if (const auto* h = std::get_if<hello>(&m)) {
    w.u16(static_cast<std::uint16_t>(h->secret.size()));
    w.bytes(h->secret);
    w.u8(static_cast<std::uint8_t>(h->transport));
    w.u8(h->endpoint ? 1 : 0);
    if (h->endpoint) w.ep(*h->endpoint);
    if (h->identity != 0) w.u64(h->identity);
  } else if (const auto* wel = std::get_if<welcome>(&m)) {
    w.u16(wel->node_id);
    w.u64(wel->region_size);
    w.u32(wel->format_version);
    w.u64(wel->region_created_ms);
    w.u8(static_cast<std::uint8_t>(wel->transport()));
    if (const auto* shm = std::get_if<shm_access>(&wel->access)) {
      w.u16(static_cast<std::uint16_t>(shm->segment_name.size()));
      w.bytes(shm->segment_name);
    } else {
      const auto& v = *std::get_if<verbs_access>(&wel->access);
      w.u64(v.region_addr);
      w.u32(v.rkey);
      w.ep(v.endpoint);
    }
  } else {
    const auto& r = *std::get_if<refuse>(&m);
    w.u32(static_cast<std::uint32_t>(static_cast<int>(r.code)));
    w.u16(static_cast<std::uint16_t>(r.message.size()));
    w.bytes(r.message);
  }
  const auto body = static_cast<std::uint32_t>(out.size() - header_size);
  for (std::size_t i = 0; i < 4; ++i) out[8 + i] = static_cast<std::byte>(body >> (8 * i));
  return out;
}

// Parses and checks the first header_size bytes of `bytes` (the rest is ignored), so a server
// can refuse a frame before it reads the body. errc::protocol_error on a short header, bad
// magic, other version, unknown type or a body longer than max_body. Allocates only on error.
[[nodiscard]] inline result<frame_header> decode_header(std::span<const std::byte> bytes) {
  if (bytes.size() < header_size)
    return fail(errc::protocol_error, "short header: " + std::to_string(bytes.size()) + " of " +
                                          std::to_string(header_size) + " bytes");
  const auto at = [&](std::size_t i) { return std::to_integer<std::uint32_t>(bytes[i]); };
  frame_header h;
  h.magic = at(0) | at(1) << 8 | at(2) << 16 | at(3) << 24;
  h.version = static_cast<std::uint16_t>(at(4) | at(5) << 8);
  const auto type = static_cast<std::uint16_t>(at(6) | at(7) << 8);
  h.body_length = at(8) | at(9) << 8 | at(10) << 16 | at(11) << 24;
  if (h.magic != frame_magic)
    return fail(errc::protocol_error, "bad magic " + detail::hex(h.magic, 8) + " (expected " +
                                          detail::hex(frame_magic, 8) +
                                          ", \"KVCB\"): not a kvc bootstrap peer");
  if (h.version != protocol_version)
    return fail(errc::protocol_error, "unsupported protocol version " + std::to_string(h.version) +
                                          " (this build speaks " +
                                          std::to_string(protocol_version) + ")");
  if (type < 1 || type > 3)
    return fail(errc::protocol_error, "unknown message type " + std::to_string(type));
  h.type = static_cast<message_type>(type);
  if (h.body_length > max_body)
    return fail(errc::protocol_error, "body length " + std::to_string(h.body_length) +
                                          " exceeds the maximum " + std::to_string(max_body));
  return h;
}

// Parses the body of a frame whose header decode_header accepted. The body must be exactly
// header.body_length bytes. errc::protocol_error naming the problem otherwise.
[[nodiscard]] inline result<message> decode_body(const frame_header& header,
                                                 std::span<const std::byte> body) {
  if (body.size() != header.body_length)
    return fail(errc::protocol_error, "body length mismatch: the header says " +
                                          std::to_string(header.body_length) +
                                          " bytes, the frame has " + std::to_string(body.size()));
  switch (header.type) {
    case message_type::hello:
      return detail::decode_hello(body);
    case message_type::welcome:
      return detail::decode_welcome(body);
    case message_type::refuse:
      return detail::decode_refuse(body);
  }
  return fail(errc::protocol_error,
              "unknown message type " + std::to_string(static_cast<unsigned>(header.type)));
}

// Parses exactly one whole frame. errc::protocol_error with a detail naming the problem for
// anything else. Allocates the message's strings (and the detail on error). O(frame size).
[[nodiscard]] inline result<message> decode(std::span<const std::byte> frame) {
  auto header = decode_header(frame);
  if (!header) return std::move(header).take_failure();
  return decode_body(*header, frame.subspan(header_size));
}

// Owns a file descriptor and closes it. Move-only.
class unique_fd {
 public:
  unique_fd() noexcept = default;
  explicit unique_fd(int fd) noexcept : fd_(fd) {}
  unique_fd(unique_fd&& other) noexcept : fd_(other.release()) {}
  unique_fd& operator=(unique_fd&& other) noexcept {
    if (this != &other) reset(other.release());
    return *this;
  }
  unique_fd(const unique_fd&) = delete;
  unique_fd& operator=(const unique_fd&) = delete;
  ~unique_fd() { reset(); }

  [[nodiscard]] int get() const noexcept { return fd_; }
  explicit operator bool() const noexcept { return fd_ >= 0; }
  // Gives up ownership; returns the descriptor (-1 when empty).
  [[nodiscard]] int release() noexcept { return std::exchange(fd_, -1); }
  // Closes the descriptor held (Linux closes it even when close() reports EINTR), takes `fd`.
  void reset(int fd = -1) noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

namespace detail {

using io_clock = std::chrono::steady_clock;

inline std::string errno_text(int err) { return std::generic_category().message(err); }

// now + timeout, saturating: a timeout longer than the clock has left (milliseconds::max(), "for
// ever") is the clock's last moment, not a wrap into the past; a negative one is now.
inline io_clock::time_point deadline_after(std::chrono::milliseconds timeout) noexcept {
  const auto now = io_clock::now();
  if (timeout <= std::chrono::milliseconds::zero()) return now;
  const auto room =
      std::chrono::duration_cast<std::chrono::milliseconds>(io_clock::time_point::max() - now);
  return timeout >= room ? io_clock::time_point::max() : now + timeout;
}

// poll() timeout until the deadline: 0 once it has passed, rounded up, capped at INT_MAX.
inline int ms_until(io_clock::time_point deadline) noexcept {
  const auto left = deadline - io_clock::now();
  if (left <= io_clock::duration::zero()) return 0;
  const auto ms = std::chrono::ceil<std::chrono::milliseconds>(left).count();
  return static_cast<int>(std::min<std::chrono::milliseconds::rep>(ms, INT_MAX));
}

// Waits until `fd` is ready for `events`: 1 ready, 0 deadline passed, -1 error (errno set).
inline int wait_ready(int fd, short events, io_clock::time_point deadline) noexcept {
  for (;;) {
    pollfd p{fd, events, 0};
    const int n = ::poll(&p, 1, ms_until(deadline));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return -1;
    if (n == 0) return io_clock::now() >= deadline ? 0 : 1;  // poll may round down: retry
    if ((p.revents & POLLNVAL) != 0) {
      errno = EBADF;
      return -1;
    }
    return 1;
  }
}

// Reads into frame[done, want) before the deadline; `done` says how far it got.
inline result<void> recv_until(int fd, std::span<std::byte> frame, std::size_t& done,
                               std::size_t want, io_clock::time_point deadline,
                               std::chrono::milliseconds timeout) {
  while (done < want) {
    const ssize_t n = ::recv(fd, frame.data() + done, want - done, MSG_DONTWAIT);
    if (n > 0) {
      done += static_cast<std::size_t>(n);
      continue;
    }
    if (n == 0)
      return fail(errc::protocol_error, "peer closed the connection after " + std::to_string(done) +
                                            " of " + std::to_string(want) +
                                            " bytes of a bootstrap frame");
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK)
      return fail(errc::io_error, "recv on a bootstrap connection failed after " +
                                      std::to_string(done) + " of " + std::to_string(want) +
                                      " bytes: " + errno_text(errno));
    const int ready = wait_ready(fd, POLLIN, deadline);
    if (ready < 0)
      return fail(errc::io_error, "poll on a bootstrap connection failed: " + errno_text(errno));
    if (ready == 0)
      return fail(errc::timed_out, "no whole bootstrap frame within " +
                                       std::to_string(timeout.count()) + " ms (received " +
                                       std::to_string(done) + " of " + std::to_string(want) +
                                       " bytes)");
  }
  return {};
}

}  // namespace detail

// Sends one frame on a connected stream socket within `timeout` (the whole frame; ≤ 0: only what
// fits now). errc::invalid_argument for a message validate() rejects, errc::timed_out, or
// errc::io_error with the system's reason (a closed peer is EPIPE; never SIGPIPE). Blocking or
// non-blocking sockets both work. Allocates the frame.
[[nodiscard]] inline result<void> write_frame(int fd, const message& m,
                                              std::chrono::milliseconds timeout) {
  if (auto ok = validate(m); !ok) return ok;
  const auto deadline = detail::deadline_after(timeout);
  const std::vector<std::byte> frame = encode(m);
  std::size_t done = 0;
  while (done < frame.size()) {
    const ssize_t n =
        ::send(fd, frame.data() + done, frame.size() - done, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n >= 0) {
      done += static_cast<std::size_t>(n);
      continue;
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK)
      return fail(errc::io_error, "send on a bootstrap connection failed after " +
                                      std::to_string(done) + " of " + std::to_string(frame.size()) +
                                      " bytes: " + detail::errno_text(errno));
    const int ready = detail::wait_ready(fd, POLLOUT, deadline);
    if (ready < 0)
      return fail(errc::io_error,
                  "poll on a bootstrap connection failed: " + detail::errno_text(errno));
    if (ready == 0)
      return fail(errc::timed_out, "could not send a bootstrap frame within " +
                                       std::to_string(timeout.count()) + " ms (sent " +
                                       std::to_string(done) + " of " +
                                       std::to_string(frame.size()) + " bytes)");
  }
  return {};
}

// Receives one frame within `timeout`, a deadline for the whole frame (≤ 0: only what has
// arrived). The header is checked before the body is read, so a bad or oversized header fails
// at once. Errors: errc::protocol_error (bad frame, or the peer closed the connection mid-frame
// — "after N of M bytes"), errc::timed_out, errc::io_error. After any error the stream is out
// of step: close the socket. Allocates the frame (≤ header_size + max_body bytes).
[[nodiscard]] inline result<message> read_frame(int fd, std::chrono::milliseconds timeout) {
  const auto deadline = detail::deadline_after(timeout);
  std::vector<std::byte> frame(header_size);
  std::size_t done = 0;
  if (auto ok = detail::recv_until(fd, frame, done, header_size, deadline, timeout); !ok)
    return std::move(ok).take_failure();
  auto header = decode_header(frame);
  if (!header) return std::move(header).take_failure();
  frame.resize(header_size + header->body_length);
  if (auto ok = detail::recv_until(fd, frame, done, frame.size(), deadline, timeout); !ok)
    return std::move(ok).take_failure();
  return decode_body(*header, std::span<const std::byte>(frame).subspan(header_size));
}

// Connects to host:port over TCP (IPv4 or IPv6, every address getaddrinfo gives, in order)
// within `timeout`, and returns a blocking socket with TCP_NODELAY and FD_CLOEXEC that the
// caller owns (wrap it in a unique_fd). errc::unreachable naming host:port and the reason
// (resolution failure, refused, no answer in time); errc::invalid_argument for an empty host or
// port 0. Name resolution itself is not bounded by the timeout (getaddrinfo blocks).
[[nodiscard]] inline result<int> connect_tcp(std::string_view host, std::uint16_t port,
                                             std::chrono::milliseconds timeout) {
  const std::string host_str(host);
  const std::string port_str = std::to_string(port);
  const std::string where =
      (host_str.find(':') != std::string::npos ? "[" + host_str + "]" : host_str) + ":" + port_str;
  if (host.empty() || port == 0)
    return fail(errc::invalid_argument,
                "cannot connect to \"" + where + "\": the host is empty or the port is 0");
  const auto deadline = detail::deadline_after(timeout);

  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_ADDRCONFIG;
  addrinfo* found = nullptr;
  const int gai = ::getaddrinfo(host_str.c_str(), port_str.c_str(), &hints, &found);
  if (gai != 0)
    return fail(errc::unreachable,
                "cannot resolve " + where + ": " +
                    (gai == EAI_SYSTEM ? detail::errno_text(errno) : ::gai_strerror(gai)));
  std::string reason = "no address";
  for (const addrinfo* a = found; a != nullptr; a = a->ai_next) {
    unique_fd fd(
        ::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol));
    if (!fd) {
      reason = "socket: " + detail::errno_text(errno);
      continue;
    }
    int rc = ::connect(fd.get(), a->ai_addr, a->ai_addrlen);
    if (rc != 0 && errno != EINPROGRESS && errno != EINTR) {
      reason = detail::errno_text(errno);
      continue;
    }
    if (rc != 0) {
      const int ready = detail::wait_ready(fd.get(), POLLOUT, deadline);
      if (ready == 0) {
        reason = "no answer within " + std::to_string(timeout.count()) + " ms";
        break;  // the deadline is shared by all addresses
      }
      int err = 0;
      socklen_t len = sizeof err;
      if (ready < 0)
        err = errno;
      else if (::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0)
        err = errno;
      if (err != 0) {
        reason = detail::errno_text(err);
        continue;
      }
    }
    const int flags = ::fcntl(fd.get(), F_GETFL);
    if (flags < 0 || ::fcntl(fd.get(), F_SETFL, flags & ~O_NONBLOCK) != 0) {
      reason = "fcntl: " + detail::errno_text(errno);
      continue;
    }
    const int one = 1;
    static_cast<void>(::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one));
    ::freeaddrinfo(found);
    return fd.release();
  }
  ::freeaddrinfo(found);
  return fail(errc::unreachable, "cannot connect to " + where + ": " + reason);
}

}  // namespace kvc::inline v0::bootstrap
