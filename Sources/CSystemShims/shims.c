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
