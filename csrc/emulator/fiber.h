// Minimal cooperative fibers for the emulator: a saved stack pointer and a
// switch that saves only what the calling convention makes the callee keep.
// (ucontext's swapcontext also saves the signal mask: two system calls per
// switch, which dominated the emulator's time.)
#pragma once

#include <cstddef>

namespace bnfemu {

struct Fiber {
  void* sp = nullptr;
#if !defined(__x86_64__)
  void* context = nullptr;  // ucontext_t on other architectures
#endif
};

// Prepares `f` to run entry() on [stack, stack + bytes) at its first switch;
// entry must never return (it switches away for the last time instead).
void fiber_init(Fiber& f, char* stack, size_t bytes, void (*entry)());
// Saves the running context in `from` and continues `to`.
void fiber_switch(Fiber& from, Fiber& to);

}  // namespace bnfemu
