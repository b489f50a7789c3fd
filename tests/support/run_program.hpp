// Test support: runs a command line through the shell and returns what it printed (standard
// output and error together) and its exit status (-1 when it did not exit normally).
#pragma once

#include <sys/wait.h>

#include <cstdio>
#include <string>

namespace kvc_test {

struct program_run {
  std::string output;
  int status = -1;
};

inline program_run run_program(const std::string& command_line) {
  program_run r;
  std::FILE* p = ::popen((command_line + " 2>&1").c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  while (std::size_t n = std::fread(buf, 1, sizeof buf, p)) r.output.append(buf, n);
  const int w = ::pclose(p);
  r.status = WIFEXITED(w) ? WEXITSTATUS(w) : -1;
  return r;
}

}  // namespace kvc_test
