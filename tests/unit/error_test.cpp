#include <kvc/error.hpp>

#include <catch2/catch.hpp>
#include <memory>
#include <string>
#include <system_error>

namespace {

kvc::result<int> parse_positive(int v) {
  if (v <= 0)
    return kvc::fail(kvc::errc::invalid_argument,
                     "value " + std::to_string(v) + " is not positive");
  return v;
}

kvc::result<void> check(bool ok) {
  if (!ok) return kvc::errc::timed_out;
  return {};
}

}  // namespace

TEST_CASE("kvc error codes have their own category and readable messages", "[error]") {
  const std::error_code ec = kvc::errc::no_rdma_device;
  CHECK(ec.category() == kvc::error_category());
  CHECK(std::string(ec.category().name()) == "kvc");
  CHECK(ec.message() == "no RDMA device found");
  CHECK(ec == kvc::errc::no_rdma_device);
  CHECK(ec != kvc::errc::rdma_error);
  CHECK(ec != std::make_error_code(std::errc::invalid_argument));
  // Every code has its own message, and none is the fallback.
  for (int code = 1; code <= static_cast<int>(kvc::errc::fenced); ++code) {
    const std::string msg = kvc::error_category().message(code);
    CHECK(msg.find("unknown") == std::string::npos);
  }
  CHECK(kvc::error_category().message(999) == "unknown kvc error 999");
}

TEST_CASE("result<T> holds a value or a failure with detail", "[error]") {
  auto good = parse_positive(5);
  REQUIRE(good.has_value());
  CHECK(static_cast<bool>(good));
  CHECK(*good == 5);
  CHECK(good.value() == 5);
  CHECK(good.value_or(7) == 5);

  auto bad = parse_positive(-2);
  REQUIRE_FALSE(bad.has_value());
  CHECK(bad.error() == kvc::errc::invalid_argument);
  CHECK(bad.detail() == "value -2 is not positive");
  CHECK(bad.message() == "value -2 is not positive (invalid argument)");
  CHECK(bad.value_or(7) == 7);

  // A failure passes on unchanged.
  auto forward = [&]() -> kvc::result<std::string> {
    auto r = parse_positive(0);
    if (!r) return std::move(r).take_failure();
    return std::string("unreachable");
  };
  auto fwd = forward();
  REQUIRE_FALSE(fwd);
  CHECK(fwd.error() == kvc::errc::invalid_argument);
  CHECK(fwd.detail() == "value 0 is not positive");
}

TEST_CASE("result<T> works with move-only values and std::error_code", "[error]") {
  kvc::result<std::unique_ptr<int>> r = std::make_unique<int>(3);
  REQUIRE(r);
  std::unique_ptr<int> p = std::move(r).value();
  CHECK(*p == 3);

  kvc::result<std::unique_ptr<int>> e = std::make_error_code(std::errc::no_such_file_or_directory);
  REQUIRE_FALSE(e);
  CHECK(e.error() == std::errc::no_such_file_or_directory);
  CHECK(e.detail().empty());
  CHECK(e.message() == std::make_error_code(std::errc::no_such_file_or_directory).message());
}

TEST_CASE("result<void> reports success or a failure", "[error]") {
  CHECK(check(true).has_value());
  auto r = check(false);
  REQUIRE_FALSE(r);
  CHECK(r.error() == kvc::errc::timed_out);
  CHECK(r.message() == "timed out");
}
