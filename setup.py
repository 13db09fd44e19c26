"""Build bnfused: C++ CPU kernels always, CUDA kernels when a CUDA toolkit is found.

The CUDA build is decided from the toolkit and flags, never from whether a GPU
is present: kernels compile on machines without one.
  BNFUSED_EXT=0             no compiled extension at all (Triton + reference backends only)
  BNFUSED_CUDA=0/1          force the CUDA build off / on (on fails without nvcc)
  BNFUSED_EMULATED=1        also build bnfused._C_emulated, test tooling: the CUDA kernels
                            compiled for the CPU emulator (csrc/emulator, docs/cuda.md;
                            Linux). `make build` sets it; a user's install leaves it out.
  CUDA_HOME                 toolkit location (else /usr/local/cuda, else nvcc on PATH)
  TORCH_CUDA_ARCH_LIST      GPU architectures (default DEFAULT_CUDA_ARCHS, "9.0")
  BNFUSED_PTXAS_VERBOSE=1   print ptxas register/spill reports
"""

import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

# The one default: the Hopper GPUs (H100/H200) bnfused is checked on. Other GPUs fall
# back to the Triton kernels at run time, with the rebuild to do in bnfused.backends():
# TORCH_CUDA_ARCH_LIST="8.0;9.0" adds A100, "+PTX" lets newer GPUs compile the last one.
DEFAULT_CUDA_ARCHS = "9.0"


def find_cuda_home():
    for candidate in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if candidate and os.path.exists(os.path.join(candidate, "bin", "nvcc")):
            return candidate
    nvcc = shutil.which("nvcc")
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc))) if nvcc else None


def want_cuda(cuda_home):
    import torch

    flag = os.environ.get("BNFUSED_CUDA")
    if flag == "0":
        return False, "CUDA kernels not built: disabled by BNFUSED_CUDA=0"
    if torch.version.cuda is None:
        if flag == "1":
            raise RuntimeError("BNFUSED_CUDA=1 but the installed torch is not a CUDA build")
        return False, f"CUDA kernels not built: torch {torch.__version__} is not a CUDA build"
    if cuda_home is None:
        if flag == "1":
            raise RuntimeError("BNFUSED_CUDA=1 but no CUDA toolkit (nvcc) was found")
        return False, (
            "CUDA kernels not built: no CUDA toolkit found at build time (no nvcc "
            "under CUDA_HOME, CUDA_PATH or /usr/local/cuda, none on PATH)"
        )
    return True, f"CUDA kernels built with {cuda_home}/bin/nvcc"


def extensions():
    cuda_home = find_cuda_home()
    if cuda_home:
        # torch.utils.cpp_extension reads CUDA_HOME when it is imported.
        os.environ["CUDA_HOME"] = cuda_home
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    use_cuda, reason = want_cuda(cuda_home)
    here = os.path.dirname(os.path.abspath(__file__))
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    # No -std flag: torch's BuildExtension picks the standard its headers need
    # (C++17 up to torch 2.x, C++20 for torch 2.14's ATen).
    # -fno-math-errno: sqrt stays correctly rounded but no longer sets errno, so
    # loops over channels that take square roots vectorize. -ffp-contract=off: GCC's
    # default for C++ fuses a * b + c into an FMA wherever its vectorizer likes, which
    # differs between instantiations of one formula (dx with or without dresidual).
    cxx = ["-O3", "-fvisibility=hidden", "-Wno-psabi", "-fno-math-errno", "-ffp-contract=off"]
    link = []
    import torch

    if torch._C.has_openmp and sys.platform.startswith("linux"):
        # at::parallel_for is an inline `#pragma omp parallel` in ATen's headers:
        # without -fopenmp the CPU kernels would silently run on one thread.
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    if use_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
        reason += f" for TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}"
    define = [("BNFUSED_BUILD_INFO", '"' + reason.replace('"', "'") + '"')]
    if use_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp"))
        # No --use_fast_math: it flushes denormals and approximates division and
        # sqrt, which the statistics (Welford merges, 1/sqrt(var + eps)) must not.
        # Kernel files include no torch headers, so C++17 serves every toolkit.
        nvcc = ["-O3", "-std=c++17", "-lineinfo", "--expt-relaxed-constexpr"]
        if os.environ.get("BNFUSED_PTXAS_VERBOSE") == "1":
            nvcc.append("-Xptxas=-v")
        ext = CUDAExtension(
            "bnfused._C",
            sources,
            define_macros=define,
            include_dirs=[os.path.join(here, "csrc")],
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
            extra_link_args=link,
        )
    else:
        ext = CppExtension(
            "bnfused._C",
            sources,
            define_macros=define,
            include_dirs=[os.path.join(here, "csrc")],
            extra_compile_args={"cxx": cxx},
            extra_link_args=link,
        )
    print(f"bnfused: CUDA kernels {'ON' if use_cuda else 'OFF'} ({reason})")
    exts = [ext]
    # The emulator's fibers switch stacks with System V x86-64 / ELF code or ucontext.
    if os.environ.get("BNFUSED_EMULATED") == "1" and sys.platform.startswith("linux"):
        exts.append(emulated_extension(CppExtension, here, link))
    return exts, {"build_ext": BuildExtension.with_options(use_ninja=True)}


def emulated_extension(CppExtension, here, link):
    """bnfused._C_emulated: the csrc/cuda kernel sources compiled by the host C++ compiler
    against csrc/emulator, which runs them on the CPU (the `cuda-emulated` backend), with
    the emulator's own test kernels (tests/emulator_fixtures).

    Each .cu file is compiled as C++ through a one-line unit that includes it by
    its path (setuptools would hand a .cu file to nvcc), and so is binding.cpp (its
    object would otherwise share a path with bnfused._C's); no source is rewritten.
    """
    units = os.path.join("build", "emulated_units")
    os.makedirs(units, exist_ok=True)
    sources = []
    for src in sorted(glob.glob("csrc/cuda/*.cu")) + ["csrc/binding.cpp"]:
        name = os.path.basename(src)
        unit = os.path.join(units, name.rsplit(".", 1)[0] + ".cpp")
        text = f'#include "{os.path.relpath(src, units)}"\n'
        if not os.path.exists(unit) or open(unit).read() != text:
            with open(unit, "w") as f:
                f.write(text)
        sources.append(unit)
    sources += sorted(glob.glob("csrc/emulator/*.cpp") + glob.glob("tests/emulator_fixtures/*.cpp"))
    cxx = [
        "-O2",
        "-fvisibility=hidden",
        "-Wno-psabi",
        "-Wno-unknown-pragmas",
        "-Wno-maybe-uninitialized",
    ]
    return CppExtension(
        "bnfused._C_emulated",
        sources,
        include_dirs=[
            os.path.join(here, "csrc", "emulator", "include"),
            os.path.join(here, "csrc", "emulator"),
            os.path.join(here, "csrc", "cuda"),
            os.path.join(here, "csrc"),
            os.path.join(here, "tests", "emulator_fixtures"),
        ],
        extra_compile_args={"cxx": cxx},
        extra_link_args=link,
    )


ext_modules, cmdclass = ([], {}) if os.environ.get("BNFUSED_EXT") == "0" else extensions()
setup(
    packages=find_packages(include=["bnfused", "bnfused.*"]),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
