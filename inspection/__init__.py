"""What the GPU compilers make of the kernels, and the memory traffic they move, without a GPU.

``python -m inspection.codegen``: registers, spills, shared memory and vectorized accesses
of the CUDA cubins and of Triton compiled ahead of time. ``python -m inspection.traffic``:
the CUDA kernels' bytes and sector efficiency counted under the CPU emulator.
"""
