/* LD_PRELOAD shim for the DHCP benches (bench/dhcp.sh, bench/ha.sh): every
 * socket perfdhcp binds gets a 16 MB receive buffer (SO_RCVBUFFORCE), so
 * bursts of replies are not dropped by the kernel default, without touching
 * host sysctls. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <sys/socket.h>
int bind(int fd, const struct sockaddr *a, socklen_t l) {
  static int (*real)(int, const struct sockaddr *, socklen_t);
  if (!real) real = dlsym(RTLD_NEXT, "bind");
  int sz = 16 << 20;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &sz, sizeof sz);
  return real(fd, a, l);
}
