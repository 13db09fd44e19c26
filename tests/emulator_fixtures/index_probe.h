// The CUDA launch plans and the kernels' index functions evaluated on the host, so
// that tests can check them at sizes no CPU test could allocate (past 2^31 elements).
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "bnfused.h"

namespace bnfused {
namespace probe {

struct PlanProbe {
  // make_reduce_plan
  bool nsc = false;
  int splits = 0;
  int64_t chunk = 0, plane_vecs = 0, channel_vecs = 0, rows = 0, row_vecs = 0;
  int tiles = 0, lanes = 0;
  bool plane_div_fast = false;
  // make_apply_plan (forward)
  int64_t apply_vecs = 0;
  int apply_blocks = 0;
  bool apply_nsc_vec = false, inner_div_fast = false, channel_div_fast = false;
};

PlanProbe plans(const Shape& shape, int vec);
// ncs_offset<vec>(reduce plan, c, j): element offset of vector j of channel c (NCS).
std::vector<int64_t> ncs_offsets(const Shape& shape, int vec,
                                 const std::vector<std::pair<int64_t, int64_t>>& cj);
// vector_channel(apply plan, v): the (first) channel of vector v of the elementwise passes.
std::vector<int64_t> vector_channels(const Shape& shape, int vec, const std::vector<int64_t>& vs);

}  // namespace probe
}  // namespace bnfused
