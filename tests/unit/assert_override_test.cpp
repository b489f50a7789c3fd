// A host defines KVC_ASSERT before including kvc: kvc's precondition checks go to the host's
// handler. Here the handler throws, so the test can observe it and go on.
#include <cstdio>
#include <stdexcept>
#include <string>

struct host_assertion : std::runtime_error {
  using std::runtime_error::runtime_error;
};

#define KVC_ASSERT(cond, message) \
  ((cond) ? static_cast<void>(0) : throw host_assertion(std::string(#cond) + ": " + (message)))

#include <kvc/kvc.hpp>

int main() {
  kvc::result<int> r = kvc::errc::invalid_argument;
  try {
    (void)r.value();
  } catch (const host_assertion& e) {
    std::printf("passed: host handler saw \"%s\"\n", e.what());
    return 0;
  }
  std::printf("FAILED: value() on an error did not reach the host's KVC_ASSERT\n");
  return 1;
}
