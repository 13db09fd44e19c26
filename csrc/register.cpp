// Schema of the compiled kernel ops. bnfused/ops.py defines the public
// `bnfused::forward` / `bnfused::backward` ops (which exist even without this
// extension) and routes them here when the `cpu` or `cuda` backend is chosen.
// Device implementations register beside their code (cpu/, cuda/).
#include <Python.h>
#include <torch/library.h>

#include "bnfused.h"

namespace {
PyObject* cpu_kernel_isa(PyObject*, PyObject*) {
  return PyUnicode_FromString(bnfused::cpu_kernel_isa());
}
PyMethodDef methods[] = {
    {"cpu_kernel_isa", cpu_kernel_isa, METH_NOARGS,
     "Instruction set of the CPU kernels in use: 'avx512_bf16', 'avx512', 'avx2' or "
     "'baseline'."},
    {nullptr, nullptr, 0, nullptr}};
}  // namespace

// `import bnfused._C` loads this library, which runs the registrations below.
// PyMODINIT_FUNC exports the symbol despite -fvisibility=hidden.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  return PyModule_Create(&module_def);
}

TORCH_LIBRARY(bnfused_C, m) {
  // activation: 0 identity, 1 relu, 2 leaky_relu, 3 silu (bnfused::Activation).
  m.def(
      "forward(Tensor input, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, "
      "Tensor(b!)? running_var, Tensor? residual, bool training, float momentum, float eps, "
      "int activation, float activation_param) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "backward(Tensor grad_output, Tensor input, Tensor? weight, Tensor? bias, "
      "Tensor save_mean, Tensor save_invstd, Tensor mask, Tensor? residual, bool training, "
      "float eps, int activation, float activation_param, bool[4] output_mask) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
}
