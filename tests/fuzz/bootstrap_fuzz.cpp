// Fuzz target for the bootstrap protocol's decoder (kvc/transport/bootstrap.hpp): whatever the
// bytes, decode either rejects them with errc::protocol_error and a detail, or accepts a message
// that validates and encodes back to exactly the same bytes. Built as a libFuzzer binary by
// clang (tests/fuzz/CMakeLists.txt) and, with replay_main.cpp, as a corpus replay by any compiler.
#include <kvc/transport/bootstrap.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

namespace {
void require(bool ok) {
  if (!ok) __builtin_trap();
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  namespace bs = kvc::bootstrap;
  const std::span<const std::byte> in(reinterpret_cast<const std::byte*>(data), size);

  const auto header = bs::decode_header(in);
  const auto decoded = bs::decode(in);
  if (!decoded) {
    require(decoded.error() == kvc::errc::protocol_error);
    require(!decoded.detail().empty());
  } else {
    require(header.has_value());
    require(header->body_length + bs::header_size == size);
    require(header->type == bs::type_of(*decoded));
    require(bs::validate(*decoded).has_value());
    const auto again = bs::encode(*decoded);
    require(std::equal(again.begin(), again.end(), in.begin(), in.end()));
  }

  // The constant-time compare agrees with ==, on the input split in two.
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const std::string_view a = text.substr(0, size / 2);
  const std::string_view b = text.substr(size / 2);
  require(bs::secrets_equal(a, b) == (a == b));
  require(bs::secrets_equal(a, a));
  return 0;
}
