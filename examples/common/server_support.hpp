// What the example programs (kvc-memnode, kvc-engine-server, kvc-replay, the metadata benchmark)
// share: sizes and host:port addresses on the command line, and the --ready-file handshake (once
// serving and after printing its status line, a server writes the bound port to a file, whole:
// written beside it, then renamed, so that whoever waits on the file never reads a partial number
// or an empty log).
#pragma once

#include <charconv>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>

namespace kvc_examples {

// "4096", "64K", "64KiB", "1M", "2G" -> bytes; 0 when malformed (a sign, spaces, another suffix,
// or more than 64 bits).
inline std::size_t parse_size(std::string_view text) {
  std::uint64_t value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc{} || end == text.data()) return 0;
  const std::string_view suffix(end, static_cast<std::size_t>(text.data() + text.size() - end));
  unsigned shift = 0;
  if (suffix == "K" || suffix == "KiB") {
    shift = 10;
  } else if (suffix == "M" || suffix == "MiB") {
    shift = 20;
  } else if (suffix == "G" || suffix == "GiB") {
    shift = 30;
  } else if (!suffix.empty()) {
    return 0;
  }
  if (value > (UINT64_MAX >> shift)) return 0;
  return static_cast<std::size_t>(value << shift);
}

// A server's address.
struct endpoint {
  std::string host;
  std::uint16_t port = 0;
};

// "host:port" (the last colon separates them); nullopt when malformed: no host, a port that is
// not all digits, or outside 1..65535.
inline std::optional<endpoint> parse_endpoint(std::string_view text) {
  const auto colon = text.rfind(':');
  if (colon == std::string_view::npos || colon == 0) return std::nullopt;
  unsigned port = 0;
  const char* first = text.data() + colon + 1;
  const char* last = text.data() + text.size();
  const auto [end, ec] = std::from_chars(first, last, port);
  if (ec != std::errc{} || end != last || first == last || port == 0 || port > 65535) {
    return std::nullopt;
  }
  return endpoint{std::string(text.substr(0, colon)), static_cast<std::uint16_t>(port)};
}

inline bool write_ready_file(const std::string& path, int port) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    if (!(out << port << "\n")) return false;
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  return !ec;
}

}  // namespace kvc_examples
