#ifndef SYNCBN_SYSTEM_SHIMS_H
#define SYNCBN_SYSTEM_SHIMS_H
/// Asks the kernel to send `signal` to this process when its parent exits, so that workers started by
/// `syncbn launch` never outlive it. Returns 0, or -1 with errno set. (prctl is variadic: Swift cannot call it.)
int syncbn_exit_with_parent(int signal);

/// Asks the CPU to bring `bytes` bytes at `address` into its caches, without waiting for them (a software
/// prefetch per 64-byte line). Changes no value: only when the loads that follow find their data.
void syncbn_prefetch(const void *address, unsigned long bytes);
#endif
