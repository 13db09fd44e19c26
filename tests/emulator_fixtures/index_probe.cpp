// See index_probe.h: the device functions compile as host code in the emulated build.
#include "index_probe.h"

#include <stdexcept>

#include "apply_common.cuh"
#include "plan.h"
#include "reduce_ncs.cuh"

namespace bnfused {
namespace probe {
namespace {

template <typename F>
auto with_vec(int vec, F f) {
  switch (vec) {
    case 1:
      return f(std::integral_constant<int, 1>{});
    case 2:
      return f(std::integral_constant<int, 2>{});
    case 4:
      return f(std::integral_constant<int, 4>{});
    case 8:
      return f(std::integral_constant<int, 8>{});
  }
  throw std::invalid_argument("vector width must be 1, 2, 4 or 8");
}

}  // namespace

PlanProbe plans(const Shape& shape, int vec) {
  const cudak::ReducePlan r = cudak::make_reduce_plan(shape, vec);
  const cudak::ApplyPlan a = cudak::make_apply_plan(shape, vec, cudak::kForwardApplyBlocksPerSm);
  PlanProbe p;
  p.nsc = r.nsc;
  p.splits = r.splits;
  p.chunk = r.chunk;
  p.plane_vecs = r.plane_vecs;
  p.channel_vecs = r.channel_vecs;
  p.rows = r.rows;
  p.row_vecs = r.row_vecs;
  p.tiles = r.tiles;
  p.lanes = r.lanes;
  p.plane_div_fast = r.plane_div.fast;
  p.apply_vecs = a.vecs;
  p.apply_blocks = a.blocks;
  p.apply_nsc_vec = a.nsc_vec;
  p.inner_div_fast = a.inner_div.fast;
  p.channel_div_fast = a.channel_div.fast;
  return p;
}

std::vector<int64_t> ncs_offsets(const Shape& shape, int vec,
                                 const std::vector<std::pair<int64_t, int64_t>>& cj) {
  const cudak::ReducePlan r = cudak::make_reduce_plan(shape, vec);
  if (r.nsc) throw std::invalid_argument("ncs_offsets: the shape is planned as rows of channels");
  return with_vec(vec, [&](auto v) {
    std::vector<int64_t> out;
    for (const auto& [c, j] : cj) out.push_back(cudak::ncs_offset<decltype(v)::value>(r, c, j));
    return out;
  });
}

std::vector<int64_t> vector_channels(const Shape& shape, int vec, const std::vector<int64_t>& vs) {
  const cudak::ApplyPlan a = cudak::make_apply_plan(shape, vec, cudak::kForwardApplyBlocksPerSm);
  return with_vec(vec, [&](auto v) {
    constexpr int V = decltype(v)::value;
    std::vector<int64_t> out;
    for (int64_t x : vs)
      out.push_back(a.nsc_vec ? cudak::vector_channel<true, V>(a, x) : cudak::vector_channel<false, V>(a, x));
    return out;
  });
}

}  // namespace probe
}  // namespace bnfused
