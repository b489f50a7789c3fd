// Reads Mooncake-format traces (JSON lines: timestamp, input_length, output_length, hash_ids;
// see docs/design/trace.md) with simdjson, one request at a time. A malformed line is an error
// naming the file and line, or, with skip_malformed, skipped and counted (the first errors are
// kept for the report). Blank lines are ignored, and so is a UTF-8 byte order mark before the
// first line; every line is validated whole (one object, each value well-formed, each of the
// four fields once).
//
//   auto r = kvc_trace::mooncake_reader::open("trace.jsonl", {});
//   while (auto req = r->next()) { if (!*req) break; use(**req); }   // a failure: req.message()
#pragma once

#include <simdjson.h>

#include <cstdint>
#include <fstream>
#include <kvc/error.hpp>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "trace/generator.hpp"

namespace kvc_trace {

// Token counts above this are refused: no model's context comes near, and the analysis sums
// them over every request without overflowing.
inline constexpr std::uint64_t max_tokens = std::uint64_t{1} << 32;

struct read_options {
  bool skip_malformed = false;     // false: the first malformed line ends the read with its error
  std::uint32_t block_tokens = 0;  // > 0: hash_ids must hold ceil(input_length / block_tokens)
};

struct read_stats {
  std::size_t lines = 0;                  // read, blank ones included
  std::size_t requests = 0;               // returned
  std::size_t skipped = 0;                // malformed lines skipped
  std::vector<std::string> first_errors;  // up to 5 of the skipped lines' errors
};

class mooncake_reader {
 public:
  [[nodiscard]] static kvc::result<mooncake_reader> open(const std::string& path,
                                                         read_options opts) {
    auto in = std::make_unique<std::ifstream>(path);
    if (!*in) return kvc::fail(kvc::errc::io_error, "cannot open trace " + path);
    return mooncake_reader(path, std::move(in), opts);
  }

  // The next request; nullopt at the end of the file. Errors: malformed_input naming the file and
  // line (unless skip_malformed), io_error when reading fails.
  [[nodiscard]] kvc::result<std::optional<trace_request>> next() {
    while (std::getline(*in_, line_)) {
      ++stats_.lines;
      if (line_.find_first_not_of(" \t\r") == std::string::npos) continue;
      trace_request r;
      if (auto why = parse(r); !why.empty()) {
        const std::string where = path_ + ":" + std::to_string(stats_.lines) + ": " + why;
        if (!opts_.skip_malformed) return kvc::fail(kvc::errc::malformed_input, where);
        ++stats_.skipped;
        if (stats_.first_errors.size() < 5) stats_.first_errors.push_back(where);
        continue;
      }
      ++stats_.requests;
      return std::optional<trace_request>(std::move(r));
    }
    if (in_->bad()) return kvc::fail(kvc::errc::io_error, "reading " + path_ + " failed");
    return std::optional<trace_request>();
  }

  [[nodiscard]] const read_stats& stats() const noexcept { return stats_; }

 private:
  mooncake_reader(std::string path, std::unique_ptr<std::ifstream> in, read_options opts)
      : path_(std::move(path)), in_(std::move(in)), opts_(opts) {}

  // Fills r from line_; returns why the line is malformed, or "".
  std::string parse(trace_request& r) {
    std::size_t from = 0;
    // A UTF-8 byte order mark before the first line (editors on some systems write one).
    if (stats_.lines == 1 && line_.compare(0, 3, "\xEF\xBB\xBF") == 0) from = 3;
    const std::size_t n = line_.size();
    line_.resize(n + simdjson::SIMDJSON_PADDING);
    std::string why = parse_object(std::string_view(line_).substr(from, n - from), r);
    line_.resize(n);
    return why;
  }
  // The whole line is validated (the DOM parser reads all of it: a second object after the
  // first, or a malformed value of a field that is otherwise ignored, is an error).
  std::string parse_object(std::string_view text, trace_request& r) {
    simdjson::dom::element doc;
    if (auto e = parser_.parse(text.data(), text.size(), false).get(doc); e != simdjson::SUCCESS) {
      return std::string("not JSON (") + simdjson::error_message(e) + ")";
    }
    simdjson::dom::object obj;
    if (doc.get_object().get(obj) != simdjson::SUCCESS) return "not a JSON object";
    bool has_time = false, has_in = false, has_out = false, has_ids = false;
    for (const auto field : obj) {
      const std::string_view key = field.key;
      bool* seen = key == "timestamp"       ? &has_time
                   : key == "input_length"  ? &has_in
                   : key == "output_length" ? &has_out
                   : key == "hash_ids"      ? &has_ids
                                            : nullptr;
      if (seen == nullptr) continue;  // other fields are allowed and ignored
      if (*seen) return "\"" + std::string(key) + "\" appears twice";
      *seen = true;
      if (key == "hash_ids") {
        simdjson::dom::array ids;
        if (field.value.get_array().get(ids) != simdjson::SUCCESS) {
          return "\"hash_ids\" is not an array";
        }
        r.hash_ids.reserve(ids.size());
        for (const auto id : ids) {
          std::uint64_t v = 0;
          if (id.get_uint64().get(v) != simdjson::SUCCESS) {
            return "\"hash_ids\" holds something other than an unsigned integer";
          }
          r.hash_ids.push_back(v);
        }
        continue;
      }
      std::uint64_t* into = key == "timestamp"      ? &r.timestamp_ms
                            : key == "input_length" ? &r.input_length
                                                    : &r.output_length;
      if (field.value.get_uint64().get(*into) != simdjson::SUCCESS) {
        return "\"" + std::string(key) + "\" is not an unsigned integer";
      }
      if (into != &r.timestamp_ms && *into > max_tokens) {
        return "\"" + std::string(key) + "\" is " + std::to_string(*into) +
               ", more than a request can hold (" + std::to_string(max_tokens) + " tokens)";
      }
    }
    if (!has_time) return "no \"timestamp\"";
    if (!has_in) return "no \"input_length\"";
    if (!has_out) return "no \"output_length\"";
    if (!has_ids) return "no \"hash_ids\"";
    if (const std::uint64_t bt = opts_.block_tokens; bt > 0) {
      const std::uint64_t blocks = r.input_length / bt + (r.input_length % bt != 0 ? 1 : 0);
      if (r.hash_ids.size() != blocks) {
        return std::to_string(r.hash_ids.size()) + " hash ids for " +
               std::to_string(r.input_length) + " tokens in blocks of " + std::to_string(bt);
      }
    }
    return {};
  }

  std::string path_;
  std::unique_ptr<std::ifstream> in_;
  read_options opts_;
  read_stats stats_;
  std::string line_;
  simdjson::dom::parser parser_;
};

}  // namespace kvc_trace
