// Checks for the example programs' command lines (CLI11) that CLI11 does not make itself.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

namespace kvc_examples {

// A whole number written in decimal digits. CLI11 2.1 reads unsigned options with strtoull in
// base 0: "-1" would wrap to 2^64 - 1, "0512" would be octal and "0x10" hexadecimal. Put it on
// every unsigned option.
inline const CLI::Validator decimal_count(
    [](const std::string& s) -> std::string {
      if (s.empty() || s.find_first_not_of("0123456789") != std::string::npos) {
        return "not a whole number in decimal digits: " + s;
      }
      if (s.size() > 1 && s[0] == '0') return "a number with a leading zero: " + s;
      // Beyond 2^64 - 1 (CLI11 itself refuses what does not fit a narrower option).
      if (s.size() > 20 || (s.size() == 20 && s > "18446744073709551615")) {
        return "too large: " + s;
      }
      return {};
    },
    "UINT");

}  // namespace kvc_examples
