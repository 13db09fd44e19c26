// The emulated extension bnfused._C_emulated: the csrc/cuda kernels run on CPU
// tensors by the emulator, as the CPU implementation of the bnfused_emu ops
// (their schema is defined from Python, bnfused/op/contract.py), plus the
// emulator's controls.
#include <Python.h>
#include <torch/library.h>

#include <cstring>
#include <exception>
#include <string>

#include "binding.h"
#include "emulator.h"
#include "half_types.h"
#include "index_probe.h"
#include "launch_emulated.h"
#include "planted_bugs.h"

namespace bnfused {
namespace {

struct EmulatedLaunchers {
  static ForwardLauncher forward() { return {forward_emulated, forward_workspace_bytes_cuda}; }
  static BackwardLauncher backward() { return {backward_emulated, backward_workspace_bytes_cuda}; }
};

const char* const kOrders[] = {"forward", "reversed", "shuffled"};
const char* const kPaths[] = {"auto", "two-pass", "persistent"};  // bnfused::CudaPath

PyObject* settings_dict(const bnfemu::Settings& s) {
  return Py_BuildValue("{s:i,s:s,s:K,s:O,s:i,s:s,s:i}", "sm_count", s.sm_count, "block_order",
                       kOrders[static_cast<int>(s.block_order)], "seed",
                       static_cast<unsigned long long>(s.seed), "count_traffic",
                       s.count_traffic ? Py_True : Py_False, "blocks_per_sm", s.blocks_per_sm, "cuda_path",
                       kPaths[static_cast<int>(cuda_path())], "replays", s.replays);
}

// The index of `value` (a str) in `names`, or -1 with a ValueError set.
int choice(PyObject* value, const char* const* names, int count, const char* what) {
  const char* v = PyUnicode_AsUTF8(value);
  if (v == nullptr) return -1;
  for (int i = 0; i < count; ++i)
    if (std::string(v) == names[i]) return i;
  std::string valid;
  for (int i = 0; i < count; ++i) valid += std::string(i ? ", " : "") + "'" + names[i] + "'";
  PyErr_Format(PyExc_ValueError, "%s must be one of %s, got '%s'", what, valid.c_str(), v);
  return -1;
}

PyObject* configure(PyObject*, PyObject* args, PyObject* kwargs) {
  static const char* names[] = {"sm_count",      "block_order", "seed",    "count_traffic",
                                "blocks_per_sm", "cuda_path",   "replays", nullptr};
  PyObject *sms = Py_None, *order = Py_None, *seed = Py_None, *count = Py_None, *per_sm = Py_None,
           *path = Py_None, *replays = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|$OOOOOOO", const_cast<char**>(names), &sms, &order, &seed,
                                   &count, &per_sm, &path, &replays))
    return nullptr;
  const bnfemu::Settings old = bnfemu::settings();
  bnfemu::Settings s = old;
  if (sms != Py_None) {
    const long v = PyLong_AsLong(sms);
    if (v == -1 && PyErr_Occurred()) return nullptr;
    if (v < 1 || v > 1 << 20) {
      PyErr_Format(PyExc_ValueError, "sm_count must be in [1, 2^20], got %ld", v);
      return nullptr;
    }
    s.sm_count = static_cast<int>(v);
  }
  if (order != Py_None) {
    const int found = choice(order, kOrders, 3, "block_order");
    if (found < 0) return nullptr;
    s.block_order = static_cast<bnfemu::BlockOrder>(found);
  }
  if (per_sm != Py_None) {
    const long v = PyLong_AsLong(per_sm);
    if (v == -1 && PyErr_Occurred()) return nullptr;
    if (v < 1 || v > 32) {
      PyErr_Format(PyExc_ValueError, "blocks_per_sm must be in [1, 32], got %ld", v);
      return nullptr;
    }
    s.blocks_per_sm = static_cast<int>(v);
  }
  int new_path = -1;
  if (path != Py_None && (new_path = choice(path, kPaths, 3, "cuda_path")) < 0) return nullptr;
  if (seed != Py_None) {
    const unsigned long long v = PyLong_AsUnsignedLongLong(seed);
    if (PyErr_Occurred()) return nullptr;
    s.seed = v;
  }
  if (replays != Py_None) {
    const long v = PyLong_AsLong(replays);
    if (v == -1 && PyErr_Occurred()) return nullptr;
    if (v < 0 || v > 100) {
      PyErr_Format(PyExc_ValueError, "replays must be in [0, 100], got %ld", v);
      return nullptr;
    }
    s.replays = static_cast<int>(v);
  }
  if (count != Py_None) {
    const int v = PyObject_IsTrue(count);
    if (v < 0) return nullptr;
    s.count_traffic = v != 0;
  }
  PyObject* previous = settings_dict(old);
  bnfemu::configure(s);
  if (new_path >= 0) set_cuda_path(static_cast<CudaPath>(new_path));
  return previous;
}

PyObject* settings(PyObject*, PyObject*) { return settings_dict(bnfemu::settings()); }

PyObject* counts_dict(const bnfemu::AccessCounts& c) {
  return Py_BuildValue("{s:K,s:K,s:K}", "requests", static_cast<unsigned long long>(c.requests), "bytes",
                       static_cast<unsigned long long>(c.bytes), "sectors",
                       static_cast<unsigned long long>(c.sectors));
}

PyObject* traffic(PyObject*, PyObject*) {
  const auto records = bnfemu::take_traffic();
  PyObject* out = PyList_New(0);
  for (const auto& r : records) {
    PyObject* item = Py_BuildValue("{s:s,s:(III),s:(III),s:i,s:N,s:N,s:N,s:K,s:K}", "kernel", r.label.c_str(),
                                   "grid", r.grid.x, r.grid.y, r.grid.z, "block", r.block.x, r.block.y,
                                   r.block.z, "sm_count", r.sm_count, "load", counts_dict(r.load), "store",
                                   counts_dict(r.store), "l2", counts_dict(r.l2), "block_bytes_max",
                                   static_cast<unsigned long long>(r.block_bytes_max), "blocks",
                                   static_cast<unsigned long long>(r.blocks));
    if (item == nullptr || PyList_Append(out, item) < 0) {
      Py_XDECREF(item);
      Py_DECREF(out);
      return nullptr;
    }
    Py_DECREF(item);
  }
  return out;
}

PyObject* planted_names(PyObject*, PyObject*) {
  PyObject* out = PyList_New(0);
  for (const auto& n : planted::planted_names()) {
    PyObject* s = PyUnicode_FromString(n.c_str());
    PyList_Append(out, s);
    Py_DECREF(s);
  }
  return out;
}

PyObject* run_planted(PyObject*, PyObject* args) {
  const char* name = nullptr;
  int fixed = 0;
  if (!PyArg_ParseTuple(args, "s|p", &name, &fixed)) return nullptr;
  std::vector<double> values;
  try {
    values = planted::run_planted(name, fixed != 0);
  } catch (const std::invalid_argument& e) {
    PyErr_SetString(PyExc_ValueError, e.what());
    return nullptr;
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
  PyObject* out = PyList_New(0);
  for (double v : values) {
    PyObject* f = PyFloat_FromDouble(v);
    PyList_Append(out, f);
    Py_DECREF(f);
  }
  return out;
}

// convert(kind, data): the emulated device conversion `kind` applied to a
// buffer of float32 (to 16 bits) or of uint16 (to float32).
PyObject* convert(PyObject*, PyObject* args) {
  const char* kind = nullptr;
  Py_buffer in;
  if (!PyArg_ParseTuple(args, "sy*", &kind, &in)) return nullptr;
  const std::string k = kind;
  const char* src = static_cast<const char*>(in.buf);
  std::string out;
  if (k == "float2half_rn" || k == "float2bfloat16_rn") {
    const Py_ssize_t n = in.len / 4;
    out.resize(n * 2);
    for (Py_ssize_t i = 0; i < n; ++i) {
      float f;
      std::memcpy(&f, src + 4 * i, 4);
      const uint16_t h = k == "float2half_rn" ? bnfemu::float_to_half_bits(f) : bnfemu::float_to_bf16_bits(f);
      std::memcpy(&out[2 * i], &h, 2);
    }
  } else if (k == "half2float" || k == "bfloat162float") {
    const Py_ssize_t n = in.len / 2;
    out.resize(n * 4);
    for (Py_ssize_t i = 0; i < n; ++i) {
      uint16_t h;
      std::memcpy(&h, src + 2 * i, 2);
      const float f = k == "half2float" ? bnfemu::half_bits_to_float(h) : bnfemu::bf16_bits_to_float(h);
      std::memcpy(&out[4 * i], &f, 4);
    }
  } else {
    PyBuffer_Release(&in);
    PyErr_Format(PyExc_ValueError, "unknown conversion '%s'", kind);
    return nullptr;
  }
  PyBuffer_Release(&in);
  return PyBytes_FromStringAndSize(out.data(), static_cast<Py_ssize_t>(out.size()));
}

// (N, C, S, nsc, vec) of the probes: a Shape and the vector width.
bool parse_shape(PyObject* args, Shape& shape, int& vec, PyObject** points) {
  long long n = 0, c = 0, sp = 0;
  int nsc = 0;
  if (!PyArg_ParseTuple(args, points ? "LLLpiO" : "LLLpi", &n, &c, &sp, &nsc, &vec, points)) return false;
  if (n < 1 || c < 1 || sp < 1) {
    PyErr_SetString(PyExc_ValueError, "N, C and S must be positive");
    return false;
  }
  shape.N = n;
  shape.C = c;
  shape.S = sp;
  shape.layout = nsc ? Layout::kNSC : Layout::kNCS;
  return true;
}

template <typename F>
PyObject* guarded(F f) {
  try {
    return f();
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_ValueError, e.what());
    return nullptr;
  }
}

PyObject* probe_plans(PyObject*, PyObject* args) {
  Shape shape;
  int vec = 1;
  if (!parse_shape(args, shape, vec, nullptr)) return nullptr;
  return guarded([&]() -> PyObject* {
    const probe::PlanProbe p = probe::plans(shape, vec);
    return Py_BuildValue(
        "{s:O,s:i,s:L,s:L,s:L,s:L,s:L,s:i,s:i,s:O,s:L,s:i,s:O,s:O,s:O}", "nsc", p.nsc ? Py_True : Py_False,
        "splits", p.splits, "chunk", (long long)p.chunk, "plane_vecs", (long long)p.plane_vecs,
        "channel_vecs", (long long)p.channel_vecs, "rows", (long long)p.rows, "row_vecs",
        (long long)p.row_vecs, "tiles", p.tiles, "lanes", p.lanes, "plane_div_fast",
        p.plane_div_fast ? Py_True : Py_False, "apply_vecs", (long long)p.apply_vecs, "apply_blocks",
        p.apply_blocks, "apply_nsc_vec", p.apply_nsc_vec ? Py_True : Py_False, "inner_div_fast",
        p.inner_div_fast ? Py_True : Py_False, "channel_div_fast", p.channel_div_fast ? Py_True : Py_False);
  });
}

PyObject* int_list(const std::vector<int64_t>& values) {
  PyObject* out = PyList_New(static_cast<Py_ssize_t>(values.size()));
  for (size_t i = 0; i < values.size(); ++i) PyList_SET_ITEM(out, i, PyLong_FromLongLong(values[i]));
  return out;
}

PyObject* probe_ncs_offsets(PyObject*, PyObject* args) {
  Shape shape;
  int vec = 1;
  PyObject* points = nullptr;
  if (!parse_shape(args, shape, vec, &points)) return nullptr;
  std::vector<std::pair<int64_t, int64_t>> cj;
  PyObject* it = PyObject_GetIter(points);
  if (it == nullptr) return nullptr;
  while (PyObject* item = PyIter_Next(it)) {
    long long c = 0, j = 0;
    const bool ok = PyArg_ParseTuple(item, "LL", &c, &j);
    Py_DECREF(item);
    if (!ok) {
      Py_DECREF(it);
      return nullptr;
    }
    cj.emplace_back(c, j);
  }
  Py_DECREF(it);
  if (PyErr_Occurred()) return nullptr;
  return guarded([&] { return int_list(probe::ncs_offsets(shape, vec, cj)); });
}

PyObject* probe_vector_channels(PyObject*, PyObject* args) {
  Shape shape;
  int vec = 1;
  PyObject* points = nullptr;
  if (!parse_shape(args, shape, vec, &points)) return nullptr;
  std::vector<int64_t> vs;
  PyObject* it = PyObject_GetIter(points);
  if (it == nullptr) return nullptr;
  while (PyObject* item = PyIter_Next(it)) {
    vs.push_back(PyLong_AsLongLong(item));
    Py_DECREF(item);
  }
  Py_DECREF(it);
  if (PyErr_Occurred()) return nullptr;
  return guarded([&] { return int_list(probe::vector_channels(shape, vec, vs)); });
}

PyMethodDef methods[] = {
    {"configure", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(configure)),
     METH_VARARGS | METH_KEYWORDS,
     "configure(*, sm_count=None, block_order=None, seed=None, count_traffic=None, "
     "blocks_per_sm=None, cuda_path=None, replays=None) -> dict\n"
     "Set the emulated device's SM count, the order blocks (and the threads of a block) start "
     "in ('forward', 'reversed', 'shuffled' with `seed`), whether launches record their "
     "memory traffic, the resident blocks per SM its occupancy API reports (the limit of a "
     "cooperative launch), the kernels' training path ('auto', 'two-pass', 'persistent') and "
     "how many times each op's launches replay on the same buffers, as a CUDA graph does; "
     "None keeps a setting. Returns the previous settings."},
    {"settings", settings, METH_NOARGS, "The emulator's current settings."},
    {"traffic", traffic, METH_NOARGS,
     "The launches recorded since the last call (count_traffic=True): per kernel its grid, "
     "block, global load/store requests, bytes and 32-byte sectors (l2: __ldcg loads and "
     "atomics, the reduction partials and counters), the busiest block's bytes."},
    {"planted_names", planted_names, METH_NOARGS, "Names of the planted-bug kernels."},
    {"probe_plans", probe_plans, METH_VARARGS,
     "probe_plans(N, C, S, nsc, vec) -> dict: the reduction and forward elementwise plans of "
     "that shape on the emulated device (splits, chunk, ..., whether each divider takes the "
     "32-bit path). No tensor is allocated."},
    {"probe_ncs_offsets", probe_ncs_offsets, METH_VARARGS,
     "probe_ncs_offsets(N, C, S, nsc, vec, [(c, j), ...]) -> list: the kernels' element offset "
     "of vector j of channel c (NCS reductions)."},
    {"probe_vector_channels", probe_vector_channels, METH_VARARGS,
     "probe_vector_channels(N, C, S, nsc, vec, [v, ...]) -> list: the channel of vector v in "
     "the elementwise passes (the first of its channels for channels_last vectors)."},
    {"run_planted", run_planted, METH_VARARGS,
     "run_planted(name, fixed=False) -> list of floats: run a planted-bug kernel (or its fixed "
     "twin); a fault the emulator detects raises RuntimeError."},
    {"convert", convert, METH_VARARGS,
     "convert(kind, data) -> bytes: float2half_rn, float2bfloat16_rn (float32 in, 16-bit out), "
     "half2float, bfloat162float (16-bit in, float32 out) as the emulated device does them."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

TORCH_LIBRARY_IMPL(bnfused_emu, CPU, m) {
  m.impl("forward", &forward_op<EmulatedLaunchers>);
  m.impl("backward", &backward_op<EmulatedLaunchers>);
}

}  // namespace bnfused

PyMODINIT_FUNC PyInit__C_emulated(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C_emulated", nullptr, -1,
                                          bnfused::methods};
  return PyModule_Create(&module_def);
}
