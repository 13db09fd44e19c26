// Where a barrier or shuffle was called, for the emulator's fault messages and its
// check that a block's threads wait at the same __syncthreads.
//
// std::source_location in C++17: GCC and Clang evaluate __builtin_FILE/LINE/COLUMN
// in a default argument at the call site, so `SourceSite site = SourceSite::current()`
// as a parameter default names the caller's line. torch before 2.14 builds extensions
// as C++17, where <source_location> does not exist.
#pragma once

// GCC before 13 has no __builtin_COLUMN: sites on one line then compare equal.
#if defined(__has_builtin) && __has_builtin(__builtin_COLUMN)
#define BNFEMU_CALL_COLUMN() __builtin_COLUMN()
#else
#define BNFEMU_CALL_COLUMN() 0u
#endif

namespace bnfemu {

class SourceSite {
 public:
  static constexpr SourceSite current(const char* file = __builtin_FILE(), unsigned line = __builtin_LINE(),
                                      unsigned column = BNFEMU_CALL_COLUMN()) {
    return SourceSite(file, line, column);
  }
  constexpr SourceSite() = default;

  const char* file_name() const { return file_; }
  unsigned line() const { return line_; }
  unsigned column() const { return column_; }

 private:
  constexpr SourceSite(const char* file, unsigned line, unsigned column)
      : file_(file), line_(line), column_(column) {}

  const char* file_ = "";
  unsigned line_ = 0;
  unsigned column_ = 0;
};

}  // namespace bnfemu
