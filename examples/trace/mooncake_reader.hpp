// Reads Mooncake-format traces (JSON lines: timestamp, input_length, output_length, hash_ids;
// see docs/design/trace.md) with simdjson, one request at a time. A malformed line is an error
// naming the file and line, or, with skip_malformed, skipped and counted (the first errors are
// kept for the report). Blank lines are ignored.
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
    const std::size_t n = line_.size();
    line_.resize(n + simdjson::SIMDJSON_PADDING);
    simdjson::padded_string_view json(line_.data(), n, line_.size());
    std::string why = parse_object(json, r);
    line_.resize(n);
    return why;
  }
  std::string parse_object(simdjson::padded_string_view json, trace_request& r) {
    // One object per line: nothing may follow its closing brace (on demand parsing stops there).
    const std::string_view text(json.data(), json.size());
    const auto last = text.find_last_not_of(" \t\r");
    if (last == std::string_view::npos || text[last] != '}') return "not a JSON object";
    simdjson::ondemand::document doc;
    if (parser_.iterate(json).get(doc) != simdjson::SUCCESS) return "not JSON";
    simdjson::ondemand::object obj;
    if (doc.get_object().get(obj) != simdjson::SUCCESS) return "not a JSON object";
    bool has_time = false, has_in = false, has_out = false, has_ids = false;
    for (auto field : obj) {
      std::string_view key;
      if (field.unescaped_key().get(key) != simdjson::SUCCESS) return "not JSON";
      auto value = field.value();
      if (key == "hash_ids") {
        simdjson::ondemand::array ids;
        if (value.get_array().get(ids) != simdjson::SUCCESS) {
          return "\"hash_ids\" is not an array";
        }
        for (auto id : ids) {
          std::uint64_t v = 0;
          if (id.get_uint64().get(v) != simdjson::SUCCESS) {
            return "\"hash_ids\" holds something other than an unsigned integer";
          }
          r.hash_ids.push_back(v);
        }
        has_ids = true;
        continue;
      }
      std::uint64_t* into = key == "timestamp"       ? &r.timestamp_ms
                            : key == "input_length"  ? &r.input_length
                            : key == "output_length" ? &r.output_length
                                                     : nullptr;
      if (into == nullptr) continue;  // other fields are allowed and ignored
      if (value.get_uint64().get(*into) != simdjson::SUCCESS) {
        return "\"" + std::string(key) + "\" is not an unsigned integer";
      }
      (key == "timestamp" ? has_time : key == "input_length" ? has_in : has_out) = true;
    }
    if (!has_time) return "no \"timestamp\"";
    if (!has_in) return "no \"input_length\"";
    if (!has_out) return "no \"output_length\"";
    if (!has_ids) return "no \"hash_ids\"";
    if (opts_.block_tokens > 0 &&
        r.hash_ids.size() != (r.input_length + opts_.block_tokens - 1) / opts_.block_tokens) {
      return std::to_string(r.hash_ids.size()) + " hash ids for " + std::to_string(r.input_length) +
             " tokens in blocks of " + std::to_string(opts_.block_tokens);
    }
    return {};
  }

  std::string path_;
  std::unique_ptr<std::ifstream> in_;
  read_options opts_;
  read_stats stats_;
  std::string line_;
  simdjson::ondemand::parser parser_;
};

}  // namespace kvc_trace
