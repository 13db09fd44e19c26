"""The cubin/PTX readers behind the code-generation checks, on known text and on kernels
built to fail them: each check of test_codegen_cuda/test_codegen_triton can fail."""

import pytest

from inspection import codegen_inspect as ci

# cuobjdump -res-usage of an sm_90 cubin: the second kernel was built with
# __launch_bounds__(256, 8) and spills to the stack.
RES_USAGE = """
Fatbin elf code:
================
arch = sm_90
code version = [1,8]

Resource usage:
 Common:
  GLOBAL:0
 Function _Z6good_kPf:
  REG:40 STACK:0 SHARED:1136 LOCAL:0 CONSTANT[0]:704 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function _Z7spill_kPf:
  REG:32 STACK:40 SHARED:0 LOCAL:0 CONSTANT[0]:712 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function _Z7local_kPf:
  REG:24 STACK:0 SHARED:0 LOCAL:16 CONSTANT[0]:712 TEXTURE:0 SURFACE:0 SAMPLER:0

Fatbin elf code:
================
arch = sm_80
code version = [1,8]

Resource usage:
 Function _Z6good_kPf:
  REG:48 STACK:0 SHARED:1136 LOCAL:0 CONSTANT[0]:704 TEXTURE:0 SURFACE:0 SAMPLER:0
"""

SASS = """
Fatbin elf code:
================
arch = sm_90

	code for sm_90
		Function : _Z6good_kPf
	.headerflags	@"EF_CUDA_TEXMODE_UNIFIED EF_CUDA_64BIT_ADDRESS EF_CUDA_SM90"
        /*0570*/              @!P0 LDG.E.128 R12, desc[UR6][R32.64] ;             /* 0x00000006200c8981 */
        /*0590*/              @!P0 LDG.E R2, desc[UR6][R20.64] ;                  /* 0x0000000614028981 */
        /*05a0*/                   LDG.E.128.CONSTANT R4, desc[UR6][R2.64] ;      /* 0x000000060204c981 */
        /*05b0*/                   LDG.E.U16 R3, desc[UR6][R20.64] ;              /* 0x0000000614038981 */
        /*05c0*/                   STG.E.128 desc[UR6][R6.64], R8 ;               /* 0x0000000806007986 */
        /*05d0*/                   STG.E.U8 desc[UR6][R6.64], R8 ;                /* 0x0000000806007986 */
		Function : _Z7spill_kPf
        /*0100*/                   STL.64 [R1+0x8], R4 ;                          /* 0x0000080401007387 */
        /*0110*/                   LDL.64 R4, [R1+0x8] ;                          /* 0x0000080001047983 */
        /*0120*/                   LDG.E.64 R6, desc[UR4][R2.64] ;                /* 0x0000000402067981 */
"""

# PTX shape that Triton emits: parameters loaded, offsets added, masked vector and scalar accesses.
PTX = """
.visible .entry k(
	.param .u64 .ptr .global .align 1 k_param_0,
	.param .u64 .ptr .global .align 1 k_param_1,
	.param .u64 .ptr .global .align 1 k_param_2,
	.param .u32 k_param_3
)
{
	ld.param.b64 	%rd10, [k_param_0];
	ld.param.b64 	%rd11, [k_param_1];
	ld.param.b64 	%rd12, [k_param_2];
	ld.param.b32 	%r20, [k_param_3];
	mul.wide.s32 	%rd13, %r21, 4;
	add.s64 	%rd1, %rd10, %rd13;
	add.s64 	%rd2, %rd1, 2048;
	@%p1 ld.global.v4.b32 { %r1, %r2, %r3, %r4 }, [ %rd1 + 0 ];
	@%p2 ld.global.v4.b32 { %r6, %r7, %r8, %r9 }, [ %rd2 + 0 ];
	mul.wide.s32 	%rd14, %r22, 4;
	add.s64 	%rd3, %rd11, %rd14;
	@%p1 ld.global.b32 { %r10 }, [ %rd3 + 0 ];
	add.s64 	%rd4, %rd12, %rd13;
	@%p1 st.global.v2.b32 [ %rd4 + 0 ], { %r11, %r12 };
	ld.global.b16 	%rs1, [%rd3+4];
$L__BB0_1:
	add.s64 	%rd5, %rd10, %rd13;
	@%p3 ld.global.v4.b32 { %r30, %r31, %r32, %r33 }, [ %rd5 + 0 ];
	@%p3 bra 	$L__BB0_1;
	ret;
}
"""


def test_res_usage_per_kernel_and_arch():
    res = ci.parse_res_usage(RES_USAGE, arch=90)
    assert res["_Z6good_kPf"] == ci.Resources(40, 0, 1136, 0)
    assert not res["_Z6good_kPf"].spills
    assert res["_Z7spill_kPf"].spills  # stack
    assert res["_Z7local_kPf"].spills  # local
    assert ci.parse_res_usage(RES_USAGE, arch=80) == {"_Z6good_kPf": ci.Resources(48, 0, 1136, 0)}


def test_sass_widths_and_local_memory():
    sass = ci.parse_sass(SASS)
    good = ci.sass_memory_ops(sass["_Z6good_kPf"])
    assert ci.widths(good, "LDG") == {16: 1, 32: 1, 128: 2}
    assert ci.widths(good, "STG") == {8: 1, 128: 1}
    assert ci.local_memory_ops(good) == 0
    spill = ci.sass_memory_ops(sass["_Z7spill_kPf"])
    assert ci.local_memory_ops(spill) == 2
    assert ci.widths(spill, "LDG") == {64: 1}
    assert ci.parse_sass(SASS, arch=80) == {}


def test_ptx_accesses_traced_to_their_parameter():
    acc = ci.ptx_global_accesses(PTX)
    assert ci.ptx_param_widths(acc, 0, "ld") == {128: 3}
    assert ci.ptx_param_widths(acc, 1, "ld") == {16: 1, 32: 1}
    assert ci.ptx_param_widths(acc, 2, "st") == {64: 1}
    assert ci.ptx_param_widths(acc, 0, "st") == {}


def test_accesses_in_loops():
    acc = ci.ptx_global_accesses(PTX)
    assert [a.in_loop for a in ci.ptx_param_accesses(acc, 0, "ld")] == [False, False, True]
    assert not any(a.in_loop for a in ci.ptx_param_accesses(acc, 1, "ld"))


def _access(bits, vector, in_loop=False):
    return ci.PtxAccess("ld", bits, vector, in_loop, (0,))


def test_hot_vectorized():
    pivot_and_body = [_access(32, False), _access(128, True), _access(128, True)]
    assert ci.hot_vectorized(pivot_and_body)  # a scalar prologue beside a vector body
    assert ci.hot_vectorized([])
    assert not ci.hot_vectorized([_access(32, False)] * 8)
    assert not ci.hot_vectorized([_access(128, True), _access(32, False), _access(32, False)])
    # In a loop only the loop counts: a vector prologue does not hide a scalar loop body.
    assert not ci.hot_vectorized([_access(128, True)] * 4 + [_access(32, False, True)])
    assert ci.hot_vectorized([_access(32, False)] * 4 + [_access(64, True, True)])


@pytest.mark.parametrize(
    "registers,blocks", [(32, 8), (40, 6), (48, 5), (64, 4), (80, 3), (128, 2), (255, 1)]
)
def test_blocks_per_sm_of_256_thread_blocks(registers, blocks):
    # CUDA occupancy calculator, sm_90, 256 threads, no shared memory.
    assert ci.blocks_per_sm(90, 256, registers, 0) == blocks


def test_blocks_per_sm_limited_by_shared_memory():
    assert ci.blocks_per_sm(90, 256, 32, 100 * 1024) == 2
    assert ci.blocks_per_sm(80, 256, 32, 100 * 1024) == 1


def test_tools_found():
    assert ci.find_tool("cuobjdump"), (
        "cuobjdump: neither CUDA_HOME/bin, PATH nor the triton package"
    )


triton = pytest.importorskip("triton")


def _compile_copy_kernel(strided: bool):
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    @triton.jit
    def copy(x_ptr, y_ptr, n, stride, BLOCK: tl.constexpr, STRIDED: tl.constexpr):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        src = i * stride if STRIDED else i
        tl.store(y_ptr + i, tl.load(x_ptr + src, mask=i < n), mask=i < n)

    sig = {
        "x_ptr": "*fp32",
        "y_ptr": "*fp32",
        "n": "i32",
        "stride": "i32",
        "BLOCK": "constexpr",
        "STRIDED": "constexpr",
    }
    attrs = {
        (0,): [["tt.divisibility", 16]],
        (1,): [["tt.divisibility", 16]],
        (2,): [["tt.divisibility", 16]],
        (3,): [["tt.divisibility", 16]],
    }
    src = ASTSource(copy, sig, {"BLOCK": 1024, "STRIDED": strided}, attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32))


def test_a_strided_triton_load_is_reported_scalar(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    for strided in (False, True):
        acc = ci.ptx_global_accesses(_compile_copy_kernel(strided).asm["ptx"])
        loads, stores = ci.ptx_param_accesses(acc, 0, "ld"), ci.ptx_param_accesses(acc, 1, "st")
        assert ci.hot_vectorized(stores) and ci.ptx_param_widths(acc, 1, "st").get(128)
        assert ci.hot_vectorized(loads) == (not strided), ci.ptx_param_widths(acc, 0, "ld")
