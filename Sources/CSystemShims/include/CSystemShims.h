#ifndef SYNCBN_SYSTEM_SHIMS_H
#define SYNCBN_SYSTEM_SHIMS_H
/// Asks the kernel to send `signal` to this process when its parent exits, so that workers started by
/// `syncbn launch` never outlive it. Returns 0, or -1 with errno set. (prctl is variadic: Swift cannot call it.)
int syncbn_exit_with_parent(int signal);

/// Asks the CPU to bring `bytes` bytes at `address` into its caches, without waiting for them (a software
/// prefetch per 64-byte line). Changes no value: only when the loads that follow find their data.
void syncbn_prefetch(const void *address, unsigned long bytes);

/// 1 if this CPU has what a build for x86-64-v3 (`-target-cpu haswell`) executes — AVX, AVX2, FMA, BMI1, BMI2,
/// F16C, LZCNT, MOVBE — else 0 (and 0 off x86-64). This file is compiled for the baseline, so the check itself runs
/// on any x86-64.
int syncbn_cpu_supports_x86_64_v3(void);
#endif
