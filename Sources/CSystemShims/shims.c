#include "CSystemShims.h"
#include <sys/prctl.h>
#include <signal.h>

int syncbn_exit_with_parent(int sig) {
    return prctl(PR_SET_PDEATHSIG, (unsigned long)sig, 0, 0, 0);
}

void syncbn_prefetch(const void *address, unsigned long bytes) {
    const char *p = (const char *)address;
    for (unsigned long offset = 0; offset < bytes; offset += 64) __builtin_prefetch(p + offset, 0, 3);
    if (bytes > 0) __builtin_prefetch(p + bytes - 1, 0, 3);
}

int syncbn_cpu_supports_x86_64_v3(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
        && __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("f16c")
        && __builtin_cpu_supports("lzcnt") && __builtin_cpu_supports("movbe");
#else
    return 0;
#endif
}
