#include "binding.h"

#include <ATen/DeviceGuard.h>

#include <cmath>

namespace bnfused {
namespace {

DType to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return DType::kFloat32;
    case at::kDouble:
      return DType::kFloat64;
    case at::kHalf:
      return DType::kFloat16;
    case at::kBFloat16:
      return DType::kBFloat16;
    default:
      TORCH_CHECK_NOT_IMPLEMENTED(false, "bnfused: batch_norm not implemented for '", t, "'");
  }
}

at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// The layout the kernels see; anything that is neither NCS nor NSC is made contiguous once.
std::pair<at::Tensor, Layout> canonical(const at::Tensor& x) {
  if (x.is_contiguous()) return {x, Layout::kNCS};
  if (x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast)) return {x, Layout::kNSC};
  if (x.dim() == 5 && x.is_contiguous(at::MemoryFormat::ChannelsLast3d)) return {x, Layout::kNSC};
  return {x.contiguous(), Layout::kNCS};
}

at::Tensor in_layout(const at::Tensor& t, const at::Tensor& like, Layout layout) {
  if (layout == Layout::kNCS) return t.contiguous();
  return t.contiguous(like.dim() == 4 ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::ChannelsLast3d);
}

Shape make_shape(const at::Tensor& x, Layout layout) {
  TORCH_CHECK(x.dim() >= 2, "bnfused: expected input with at least 2 dims (N, C, ...), got ", x.dim(),
              "-D input of size ", x.sizes());
  Shape s;
  s.N = x.size(0);
  s.C = x.size(1);
  s.S = 1;
  for (int64_t d = 2; d < x.dim(); ++d) s.S *= x.size(d);
  s.layout = layout;
  return s;
}

void check_channel_vector(const c10::optional<at::Tensor>& t, const char* name, const at::Tensor& x) {
  if (!t.has_value() || !t->defined()) return;
  TORCH_CHECK(t->numel() == x.size(1), name, " should contain ", x.size(1), " elements not ", t->numel());
  TORCH_CHECK(t->device() == x.device(), "bnfused: ", name, " is on ", t->device(), " but input is on ",
              x.device());
  TORCH_CHECK(at::isFloatingType(t->scalar_type()), "bnfused: ", name, " must be a floating tensor, got ",
              t->scalar_type());
}

void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& x) {
  TORCH_CHECK(t.device() == x.device(), "bnfused: ", name, " is on ", t.device(), " but input is on ",
              x.device());
}

// Per-channel vector as a contiguous acc-typed tensor (no copy when it already is one).
at::Tensor acc_vector(const c10::optional<at::Tensor>& t, at::ScalarType acc) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  if (t->dim() == 1 && t->scalar_type() == acc && t->is_contiguous()) return *t;
  return t->to(acc).contiguous().view({-1});
}

const void* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }
void* mut_ptr_or_null(at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

bool uses_mask(int64_t activation, bool has_residual) {
  auto a = static_cast<Activation>(activation);
  return has_residual && (a == Activation::kRelu || a == Activation::kLeakyRelu);
}

at::Tensor workspace(size_t bytes, const at::Tensor& x) {
  if (bytes == 0) return at::Tensor();
  return at::zeros({static_cast<int64_t>(bytes)}, x.options().dtype(at::kByte));
}

// The input as the kernels see it, with everything derived from it.
struct Prepared {
  at::Tensor x;
  Layout layout;
  Shape shape;
  DType dtype;
  at::ScalarType acc;
};

Prepared prepare(const at::Tensor& input, int64_t activation) {
  TORCH_CHECK(activation >= 0 && activation <= 3, "bnfused: unknown activation code ", activation);
  auto [x, layout] = canonical(input);
  const Shape shape = make_shape(x, layout);
  return {x, layout, shape, to_dtype(x.scalar_type()), acc_type(x.scalar_type())};
}

// Every buffer the kernels require was filled in (for_each_buffer lists them all).
template <typename Params>
void assert_buffers_set(Params& p) {
  for_each_buffer(p, [&](const char* name, auto& ptr, Extent extent, Role, bool required) {
    const int64_t n = extent == Extent::kChannel ? p.shape.C : p.shape.numel();
    TORCH_INTERNAL_ASSERT(!required || n == 0 || ptr != nullptr, "bnfused: ", name, " not set");
  });
}

}  // namespace

void (*cuda_path_setter)(CudaPath) = nullptr;

ForwardResult forward_impl(const at::Tensor& input, const c10::optional<at::Tensor>& weight,
                           const c10::optional<at::Tensor>& bias,
                           const c10::optional<at::Tensor>& running_mean,
                           const c10::optional<at::Tensor>& running_var,
                           const c10::optional<at::Tensor>& residual, bool training, double momentum,
                           double eps, int64_t activation, double activation_param,
                           const ForwardLauncher& launcher) {
  const at::OptionalDeviceGuard guard(at::device_of(input));
  const Prepared in = prepare(input, activation);
  const at::Tensor& x = in.x;  // named references, not structured bindings: lambdas capture them
  const Layout layout = in.layout;
  const Shape shape = in.shape;
  const DType dtype = in.dtype;
  const at::ScalarType acc = in.acc;
  check_channel_vector(weight, "weight", x);
  check_channel_vector(bias, "bias", x);
  check_channel_vector(running_mean, "running_mean", x);
  check_channel_vector(running_var, "running_var", x);
  const bool has_running = running_mean.has_value() && running_mean->defined();
  TORCH_CHECK(has_running == (running_var.has_value() && running_var->defined()),
              "bnfused: running_mean and running_var must both be given or both be None");
  TORCH_CHECK(training || has_running, "running_mean must be defined in evaluation mode");

  at::Tensor res;
  if (residual.has_value() && residual->defined()) {
    TORCH_CHECK(residual->sizes() == input.sizes(), "bnfused: residual of size ", residual->sizes(),
                " does not match input of size ", input.sizes());
    TORCH_CHECK(residual->scalar_type() == x.scalar_type(), "bnfused: residual dtype ",
                residual->scalar_type(), " does not match input dtype ", x.scalar_type());
    TORCH_CHECK(residual->device() == x.device(), "bnfused: residual is on ", residual->device(),
                " but input is on ", x.device());
    res = in_layout(*residual, x, layout);
  }

  at::Tensor w = acc_vector(weight, acc), b = acc_vector(bias, acc);
  at::Tensor rm = acc_vector(running_mean, acc), rv = acc_vector(running_var, acc);
  at::Tensor y = at::empty_like(x);
  at::Tensor save_mean = at::empty({shape.C}, x.options().dtype(acc));
  at::Tensor save_invstd = at::empty({shape.C}, x.options().dtype(acc));
  at::Tensor save_mean_lo = at::empty({training ? shape.C : 0}, x.options().dtype(acc));
  at::Tensor mask = at::empty({uses_mask(activation, res.defined()) ? mask_bytes(shape.numel()) : 0},
                              x.options().dtype(at::kByte));
  const bool use_batch = training;

  if (shape.numel() == 0) {
    // Nothing to reduce: running stats stay as they are, as in torch.
    if (use_batch) {
      save_mean.zero_();
      save_mean_lo.zero_();
      save_invstd.fill_(1.0 / std::sqrt(eps));
    } else if (shape.C > 0) {
      save_mean.copy_(rm);
      save_invstd.copy_((rv + eps).rsqrt());
    }
    return {y, save_mean, save_invstd, mask, save_mean_lo};
  }

  ForwardParams p;
  p.shape = shape;
  p.dtype = dtype;
  p.x = x.data_ptr();
  p.residual = ptr_or_null(res);
  p.y = y.data_ptr();
  p.weight = ptr_or_null(w);
  p.bias = ptr_or_null(b);
  p.running_mean = mut_ptr_or_null(rm);
  p.running_var = mut_ptr_or_null(rv);
  p.save_mean = save_mean.data_ptr();
  p.save_invstd = save_invstd.data_ptr();
  p.save_mean_lo = use_batch ? save_mean_lo.data_ptr() : nullptr;
  p.mask = mask.numel() ? mask.data_ptr<uint8_t>() : nullptr;
  p.training = use_batch;
  p.momentum = momentum;
  p.eps = eps;
  p.activation = static_cast<Activation>(activation);
  p.activation_param = activation_param;
  // Only the batch statistics use scratch memory: eval is one elementwise pass.
  const bool needs_workspace = use_batch && launcher.workspace_bytes;
  at::Tensor ws = workspace(needs_workspace ? launcher.workspace_bytes(shape, dtype) : 0, x);
  p.workspace = mut_ptr_or_null(ws);
  assert_buffers_set(p);
  launcher.run(p);

  // Running stats of another dtype (or strided) were updated in an acc copy: write them back.
  if (use_batch && has_running) {
    if (!rm.is_same(*running_mean)) running_mean->copy_(rm.view_as(*running_mean));
    if (!rv.is_same(*running_var)) running_var->copy_(rv.view_as(*running_var));
  }
  return {y, save_mean, save_invstd, mask, save_mean_lo};
}

BackwardResult backward_impl(const at::Tensor& grad_output, const at::Tensor& input,
                             const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
                             const at::Tensor& save_mean, const at::Tensor& save_invstd,
                             const at::Tensor& mask, const c10::optional<at::Tensor>& residual, bool training,
                             double eps, int64_t activation, double activation_param,
                             std::array<bool, 4> output_mask, const c10::optional<at::Tensor>& save_mean_lo,
                             const BackwardLauncher& launcher) {
  const at::OptionalDeviceGuard guard(at::device_of(input));
  const Prepared in = prepare(input, activation);
  const at::Tensor& x = in.x;  // named references, not structured bindings: lambdas capture them
  const Layout layout = in.layout;
  const Shape shape = in.shape;
  const DType dtype = in.dtype;
  const at::ScalarType acc = in.acc;
  TORCH_CHECK(grad_output.sizes() == input.sizes(), "bnfused: grad_output of size ", grad_output.sizes(),
              " does not match input of size ", input.sizes());
  TORCH_CHECK(grad_output.scalar_type() == x.scalar_type(), "bnfused: grad_output dtype ",
              grad_output.scalar_type(), " does not match input dtype ", x.scalar_type());
  check_channel_vector(weight, "weight", x);
  check_channel_vector(bias, "bias", x);
  // The kernels dereference every pointer on input's device: a tensor elsewhere would be
  // read as a foreign address (a crash or an illegal-address fault), never copied.
  check_same_device(grad_output, "grad_output", x);
  check_same_device(save_mean, "save_mean", x);
  check_same_device(save_invstd, "save_invstd", x);
  if (residual.has_value() && residual->defined()) {
    check_same_device(*residual, "residual", x);
    TORCH_CHECK(residual->sizes() == input.sizes(), "bnfused: residual of size ", residual->sizes(),
                " does not match input of size ", input.sizes());
    TORCH_CHECK(residual->scalar_type() == x.scalar_type(), "bnfused: residual dtype ",
                residual->scalar_type(), " does not match input dtype ", x.scalar_type());
  }
  TORCH_CHECK(save_mean.numel() == shape.C && save_invstd.numel() == shape.C,
              "bnfused: saved statistics must have ", shape.C, " elements");
  // An empty save_mean_lo (an eval forward's) or none: save_mean is the mean.
  const bool has_lo =
      training && save_mean_lo.has_value() && save_mean_lo->defined() && save_mean_lo->numel() > 0;
  if (has_lo) {
    check_same_device(*save_mean_lo, "save_mean_lo", x);
    TORCH_CHECK(save_mean_lo->numel() == shape.C, "bnfused: save_mean_lo must have ", shape.C,
                " elements (or none), got ", save_mean_lo->numel());
  }
  const bool has_mask = mask.numel() > 0;
  TORCH_CHECK(!has_mask || mask.numel() == mask_bytes(shape.numel()), "bnfused: mask has ", mask.numel(),
              " bytes, expected ", mask_bytes(shape.numel()));
  if (has_mask) check_same_device(mask, "mask", x);
  TORCH_CHECK(!has_mask || (mask.scalar_type() == at::kByte && mask.is_contiguous()),
              "bnfused: mask must be a contiguous uint8 tensor, got ", mask.scalar_type());
  // Mask bits encode relu/leaky_relu slopes only; a smooth activation needs z itself.
  TORCH_CHECK(!has_mask || activation != static_cast<int64_t>(Activation::kSilu),
              "bnfused: a mask is only valid for relu/leaky_relu, not silu");

  at::Tensor dy = in_layout(grad_output, x, layout);
  at::Tensor res;
  if (!has_mask && residual.has_value() && residual->defined()) res = in_layout(*residual, x, layout);
  at::Tensor w = acc_vector(weight, acc), b = acc_vector(bias, acc);
  at::Tensor mean = save_mean.to(acc).contiguous(), invstd = save_invstd.to(acc).contiguous();
  at::Tensor mean_lo = has_lo ? save_mean_lo->to(acc).contiguous() : at::Tensor();

  auto none = [&]() { return at::empty({0}, x.options()); };
  at::Tensor dx = output_mask[0] ? at::empty_like(x) : none();
  at::Tensor dres = output_mask[3] ? at::empty_like(x) : none();
  at::Tensor dw = output_mask[1] ? at::empty({shape.C}, x.options().dtype(acc)) : none();
  at::Tensor db = output_mask[2] ? at::empty({shape.C}, x.options().dtype(acc)) : none();

  if (shape.numel() == 0) {
    if (output_mask[1]) dw.zero_();
    if (output_mask[2]) db.zero_();
  } else {
    BackwardParams p;
    p.shape = shape;
    p.dtype = dtype;
    p.dy = dy.data_ptr();
    p.x = x.data_ptr();
    p.weight = ptr_or_null(w);
    p.bias = ptr_or_null(b);
    p.residual = ptr_or_null(res);
    p.save_mean = mean.data_ptr();
    p.save_invstd = invstd.data_ptr();
    p.save_mean_lo = ptr_or_null(mean_lo);
    p.mask = has_mask ? mask.data_ptr<uint8_t>() : nullptr;
    p.dx = output_mask[0] ? dx.data_ptr() : nullptr;
    p.dweight = output_mask[1] ? dw.data_ptr() : nullptr;
    p.dbias = output_mask[2] ? db.data_ptr() : nullptr;
    p.dresidual = output_mask[3] ? dres.data_ptr() : nullptr;
    p.training = training;
    p.eps = eps;
    p.activation = static_cast<Activation>(activation);
    p.activation_param = activation_param;
    at::Tensor ws = workspace(launcher.workspace_bytes ? launcher.workspace_bytes(shape, dtype) : 0, x);
    p.workspace = mut_ptr_or_null(ws);
    assert_buffers_set(p);
    launcher.run(p);
  }
  // Parameter grads in the parameter's dtype, as autograd expects.
  if (output_mask[1] && weight.has_value() && weight->defined()) dw = dw.to(weight->scalar_type());
  if (output_mask[2] && bias.has_value() && bias->defined()) db = db.to(bias->scalar_type());
  return {dx, dw, db, dres};
}

}  // namespace bnfused
