// The --ready-file handshake of the example servers: once a server is serving and has printed
// its status line, it writes the bound port to a file, whole (written beside it, then renamed),
// so that whoever waits on the file never reads a partial number or an empty log.
#pragma once

#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>

namespace kvc_examples {

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
