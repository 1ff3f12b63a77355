#include "CSystemShims.h"
#include <sys/prctl.h>
#include <signal.h>

int syncbn_exit_with_parent(int sig) {
    return prctl(PR_SET_PDEATHSIG, (unsigned long)sig, 0, 0, 0);
}
