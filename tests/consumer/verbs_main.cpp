// A program that links kvc::verbs: rdma-core's headers and libraries come with the target.
#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>

#include <cstdio>

int main() {
  int n = 0;
  ibv_device** devices = ibv_get_device_list(&n);
  std::printf("kvc::verbs consumer: %d RDMA device(s)\n", devices ? n : 0);
  if (devices) ibv_free_device_list(devices);
  return 0;
}
