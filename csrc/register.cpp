// Schema of the compiled kernel ops (tests/test_contract.py checks it against
// bnfused/op/contract.py). bnfused/op/ops.py defines the public
// `bnfused::forward` / `bnfused::backward` ops (which exist even without this
// extension) and routes them here when the `cpu` or `cuda` backend is chosen.
// Device implementations register beside their code (cpu/, cuda/).
#include <Python.h>
#include <torch/library.h>

#include <exception>

#include "binding.h"
#include "bnfused.h"

#ifndef BNFUSED_BUILD_INFO
#define BNFUSED_BUILD_INFO "unknown build"
#endif

namespace {
PyObject* cpu_kernel_isa(PyObject*, PyObject*) { return PyUnicode_FromString(bnfused::cpu_kernel_isa()); }
PyObject* configure_cpu(PyObject*, PyObject* args) {
  bnfused::CpuSettings s;
  long long stream_bytes = -1;
  int huge_pages = 1;
  if (!PyArg_ParseTuple(args, "iLp", &s.isa_cap, &stream_bytes, &huge_pages)) return nullptr;
  s.stream_bytes = stream_bytes;
  s.huge_pages = huge_pages != 0;
  try {
    bnfused::configure_cpu(s);
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_ValueError, e.what());
    return nullptr;
  }
  Py_RETURN_NONE;
}
PyObject* configure_cuda(PyObject*, PyObject* args) {
  int path = 0;
  if (!PyArg_ParseTuple(args, "i", &path)) return nullptr;
  if (bnfused::cuda_path_setter == nullptr) Py_RETURN_FALSE;
  try {
    bnfused::cuda_path_setter(static_cast<bnfused::CudaPath>(path));
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_ValueError, e.what());
    return nullptr;
  }
  Py_RETURN_TRUE;
}
PyObject* build_info(PyObject*, PyObject*) { return PyUnicode_FromString(BNFUSED_BUILD_INFO); }
PyMethodDef methods[] = {
    {"cpu_kernel_isa", cpu_kernel_isa, METH_NOARGS,
     "Instruction set of the CPU kernels in use: 'avx512_bf16', 'avx512', 'avx2' or "
     "'baseline'."},
    {"configure_cpu", configure_cpu, METH_VARARGS,
     "configure_cpu(isa_cap, stream_bytes, huge_pages): the CPU kernels' settings, before "
     "the first op (isa_cap 0 baseline .. 3 avx512_bf16; stream_bytes -1 for the LLC size)."},
    {"configure_cuda", configure_cuda, METH_VARARGS,
     "configure_cuda(path) -> bool: the CUDA kernels' training path (0 auto, 1 two-pass, 2 "
     "persistent); False when the CUDA kernels were not built. May change between ops."},
    {"build_info", build_info, METH_NOARGS,
     "What the build found: which kernels were compiled, and why the CUDA ones were not."},
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
      "int activation, float activation_param) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "backward(Tensor grad_output, Tensor input, Tensor? weight, Tensor? bias, "
      "Tensor save_mean, Tensor save_invstd, Tensor mask, Tensor? residual, bool training, "
      "float eps, int activation, float activation_param, bool[4] output_mask, "
      "Tensor? save_mean_lo=None) -> (Tensor, Tensor, Tensor, Tensor)");
}
