// All kernel bodies of one instruction set, in namespace BNFUSED_ISA.
#include "cpu/kernel_math.h"
#include "cpu/stats_rows_impl.h"
#include "cpu/stats_planes_impl.h"
#include "cpu/stats_impl.h"
#include "cpu/forward_vec_impl.h"
#include "cpu/forward_apply_impl.h"
#include "cpu/grad_piece_impl.h"
#include "cpu/grad_vec_impl.h"
#include "cpu/backward_impl.h"
#include "cpu/kernel_table_impl.h"

namespace bnfused {
namespace cpu {
namespace BNFUSED_ISA {
constexpr KernelTable kTable = {BNFUSED_ISA_NAME, stats_entry, forward_apply_entry, grad_sums_entry,
                                backward_apply_entry};
}  // namespace BNFUSED_ISA
}  // namespace cpu
}  // namespace bnfused
