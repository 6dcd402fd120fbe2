// Developers' instrumentation (built only with -DDG_TRACE or -DDG_LIFETRACE through DEEPERGEMM_NVCC_DEFINES, part of
// a unit's digest; compiled out otherwise). The log is GemmParams::trace_log, zeroed by the caller before the launch.
//   DG_TRACE      256-row tiles: CTA 0 logs the SM clock (32 bits) at each step's events (bench/trace_case.py reads
//                 them): where the tensor cores idle. Event e of step s of math warpgroup w at
//                 [(s * 2 + w) * kTraceEvents + e]; the producer's issue times after all of those.
//   DG_LIFETRACE  every CTA logs 16 64-bit stamps of its life into [cta * 16 + e] (bench/lifetrace_case.py), e =
//                 LifeEvent. Builds with it are timed without PDL (the first stamps come before griddepcontrol.wait).
#pragma once

#include <cstdint>

namespace dg {

#ifdef DG_TRACE
constexpr uint32_t kTraceSteps = 320, kTraceEvents = 8;
#endif

// 0 globaltimer at entry, 1 clock at entry, 2 clock after the barrier-init sync (thread 0); 3 clock when math
// warpgroup 0 found its first stage full, 4 after its last step's promotion and stores, 5 after its stores drained,
// 6 after the exit sync, 7 globaltimer then (math warpgroup 0, thread 0); stream-K (math warpgroup 0, thread 0):
// 8 the head's flag raised, 9 the tail's wait (a fill: the owner's join's) begins, 10 it ends, 11 the tail's first
// promotion begins.
enum LifeEvent {
  kLifeEntryNs, kLifeEntry, kLifeInit, kLifeFirstData, kLifeLoopEnd, kLifeDrained, kLifeExit, kLifeExitNs,
  kLifeHeadPublished, kLifeTailWait, kLifeTailGo, kLifeTailPromote, kLifeEvents = 16
};

__device__ __forceinline__ void life_stamp(const void* log, int e, bool ns = false) {
#ifdef DG_LIFETRACE
  uint64_t t;
  if (ns) asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  else asm volatile("mov.u64 %0, %%clock64;" : "=l"(t));
  static_cast<uint64_t*>(const_cast<void*>(log))[blockIdx.x * kLifeEvents + e] = t;
#endif
}
// ...read once `after` is computed (an input of the clock read: no earlier).
__device__ __forceinline__ void life_stamp_after(const void* log, int e, float after) {
#ifdef DG_LIFETRACE
  uint64_t t;
  asm volatile("mov.u64 %0, %%clock64;" : "=l"(t) : "f"(after));
  static_cast<uint64_t*>(const_cast<void*>(log))[blockIdx.x * kLifeEvents + e] = t;
#endif
}

// DG_TRACE: a predicated clock read and store (no memory clobber: the wgmma and barrier asm around it are volatile
// too, so the events stay in program order with them).
__device__ __forceinline__ void trace_clock(const void* log, uint32_t slot) {
#ifdef DG_TRACE
  uint32_t t;
  asm volatile("mov.u32 %0, %%clock;" : "=r"(t));
  static_cast<uint32_t*>(const_cast<void*>(log))[slot] = t;
#endif
}

}  // namespace dg
