// Small kernels with one planted bug each, and their fixed twins, compiled
// only into the emulated extension: tests/test_emulator.py proves that the
// emulator reports every one of them.
#pragma once

#include <string>
#include <vector>

namespace bnfused {
namespace planted {

// The names run_planted accepts.
std::vector<std::string> planted_names();
// Runs kernel `name` (its fixed twin when `fixed`) and returns what it
// computed; a fault the emulator detects throws std::runtime_error.
std::vector<double> run_planted(const std::string& name, bool fixed);

}  // namespace planted
}  // namespace bnfused
