// Test support: fork() for tests whose children must never outlive them. A forked child shares
// the test's standard output with ctest, and ctest waits for that pipe to close: a child left
// behind (its parent ended by a failed REQUIRE, a crash or ctest's timeout) would hold the whole
// run, not just its test. The child is killed with SIGKILL when its parent dies.
#pragma once

#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

namespace kvc_test {

// fork(); in the child, the parent's death kills it (strictly: the exit of the thread that
// forked, so fork from the test's main thread). Returns what fork() returns. A child whose parent
// died before the request took effect leaves at once.
inline pid_t fork_child() {
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(0);
  }
  return pid;
}

}  // namespace kvc_test
