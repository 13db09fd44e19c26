// Fibers of fiber.h: hand-written switch on x86-64, ucontext elsewhere.
#include "fiber.h"

#include <cstdint>
#include <cstring>

#if defined(__x86_64__)

extern "C" void bnfemu_switch_stack(void** save_sp, void* next_sp);

// Pushes the callee-saved registers, MXCSR and the x87 control word, swaps
// stack pointers, and pops the other context's (System V AMD64 ABI).
asm(R"(
  .text
  .globl bnfemu_switch_stack
  .hidden bnfemu_switch_stack
  .type bnfemu_switch_stack, @function
bnfemu_switch_stack:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size bnfemu_switch_stack, .-bnfemu_switch_stack
)");

namespace bnfemu {

void fiber_init(Fiber& f, char* stack, size_t bytes, void (*entry)()) {
  uintptr_t top = (reinterpret_cast<uintptr_t>(stack) + bytes) & ~uintptr_t(15);
  auto* slot = reinterpret_cast<uint64_t*>(top);
  *--slot = 0;  // entry's return address: it never returns; keeps rsp = 8 (mod 16) at entry
  *--slot = reinterpret_cast<uint64_t>(entry);
  for (int r = 0; r < 6; ++r) *--slot = 0;  // rbp, rbx, r12-r15
  uint32_t csr[2] = {__builtin_ia32_stmxcsr(), 0};
  uint16_t cw;
  asm volatile("fnstcw %0" : "=m"(cw));
  csr[1] = cw;
  --slot;
  std::memcpy(slot, csr, 8);
  f.sp = slot;
}

void fiber_switch(Fiber& from, Fiber& to) { bnfemu_switch_stack(&from.sp, to.sp); }

}  // namespace bnfemu

#else

#include <ucontext.h>

namespace bnfemu {
namespace {
ucontext_t* context_of(Fiber& f) {
  if (f.context == nullptr) f.context = new ucontext_t();  // one per fiber, reused
  return static_cast<ucontext_t*>(f.context);
}
}  // namespace

void fiber_init(Fiber& f, char* stack, size_t bytes, void (*entry)()) {
  ucontext_t* c = context_of(f);
  getcontext(c);
  c->uc_stack.ss_sp = stack;
  c->uc_stack.ss_size = bytes;
  c->uc_link = nullptr;
  makecontext(c, entry, 0);
}

void fiber_switch(Fiber& from, Fiber& to) { swapcontext(context_of(from), context_of(to)); }

}  // namespace bnfemu

#endif
