"""run.profile_steps' profiler on its own: which steps it captures, that a failing profiler costs the profile,
never the run (a real run's profile is checked in test_train), and the category of the kernels a GPU trace holds."""
from __future__ import annotations

import gzip
import json
import logging
import sys

import numpy as np
import pytest
import torch
from torch.autograd import DeviceType
from torch.autograd.profiler_util import FunctionEvent
from torch.profiler import profile

from trainer.profiling import (IDLE, LABELS, PROFILE_FILES, Capture, StepProfiler, category, covered_us, device_work,
                               summarise)

from .helpers import REPO


def run_steps(profiler: StepProfiler, steps: int) -> None:
    """`steps` optimizer steps of one matrix product each, the profiler told after every one."""
    x = torch.randn(64, 64)
    for step in range(1, steps + 1):
        x = torch.tanh(x @ x.T / 64)
        profiler.step_done(step)


def test_exactly_the_steps_after_the_first_window_are_profiled(tmp_path):
    run_steps(StepProfiler(torch.device("cpu"), after=2, count=2, folder=tmp_path), 6)
    summary = json.loads((tmp_path / "profile.json").read_text())
    assert summary["steps"] == [3, 4]
    products = next(entry for entry in summary["top"] if entry["name"] == "aten::mm")
    assert products["calls"] == 1 and products["category"] == "GEMM"  # one per step, steps 1-2 and 5-6 left out
    trace = json.loads(gzip.decompress((tmp_path / "profile_trace.json.gz").read_bytes()))
    assert sum(event.get("name") == "aten::mm" for event in trace["traceEvents"]) == 2
    assert "Optimizer steps 3-4 under torch.profiler" in (tmp_path / "profile.md").read_text()
    assert not torch.autograd.profiler._is_profiler_enabled


def test_no_rank_but_the_main_one_writes_and_zero_steps_profile_nothing(tmp_path):
    run_steps(StepProfiler(torch.device("cpu"), after=1, count=2, folder=None), 4)  # another rank: profiles, no files
    run_steps(StepProfiler(torch.device("cpu"), after=1, count=0, folder=tmp_path), 4)  # run.profile_steps=0
    assert list(tmp_path.iterdir()) == [] and not torch.autograd.profiler._is_profiler_enabled


@pytest.mark.parametrize("fails", ["start", "stop", "trace export"])
def test_a_failing_profiler_costs_the_profile_not_the_run(tmp_path, monkeypatch, caplog, fails):
    def boom(*args, **kwargs):
        raise RuntimeError("CUPTI_ERROR_NOT_INITIALIZED")

    target = {"start": (Capture, "start"), "stop": (Capture, "stop"),
              "trace export": (profile, "export_chrome_trace")}[fails]
    monkeypatch.setattr(*target, boom)
    profiler = StepProfiler(torch.device("cpu"), after=2, count=2, folder=tmp_path)
    with caplog.at_level(logging.WARNING, logger="trainer.profiling"):
        run_steps(profiler, 6)  # the steps go on
    assert ("run.profile_steps: profiling steps 3-4 failed, so this run has no profile (training goes on): "
            "RuntimeError: CUPTI_ERROR_NOT_INITIALIZED") in caplog.text
    assert not any((tmp_path / name).exists() for name in PROFILE_FILES)  # nothing half-written (the export is last)
    assert profiler.capture is None and not torch.autograd.profiler._is_profiler_enabled


def test_gpu_py_profiles_a_step_and_a_failing_step_leaves_no_profiler_running(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_profile

    x = torch.randn(64, 64)
    summary = gpu_profile.profile_step(lambda: x @ x, torch.device("cpu"), 3, tmp_path / "trace.json.gz")
    assert next(entry for entry in summary["top"] if entry["name"] == "aten::mm")["calls"] == 1  # 3 calls / 3 steps
    assert (tmp_path / "trace.json.gz").stat().st_size > 0

    def failing():
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        gpu_profile.profile_step(failing, torch.device("cpu"), 3, tmp_path / "never.json.gz")
    assert not torch.autograd.profiler._is_profiler_enabled and not (tmp_path / "never.json.gz").exists()


GPU_KERNELS = {  # kernel names as CUDA traces of this step show them (torch 2.11, CUDA 13, Hopper), and the
    # CPU's operator names (aten::, c10d::) -> category
    "GEMM": [
        "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64",
        "aten::addmm",  # the CPU's operators
        "nvjet_tst_192x192_64x4_2x1_v_bz_coopB_TNN",  # cuBLAS's Hopper GEMMs: none of the older words in the name
        "nvjet_tst_64x8_64x16_4x1_v_bz_splitK_TNT",
        "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off_kernel"
        "__5x_cublas",
        "void cublasLt::splitKreduce_kernel<32, 16, int, float, __nv_bfloat16, float, __nv_bfloat16, false, false>",
        "cutlass3x_sm90_tensorop_s64x128x16gemm_bf16_bf16_f32_bf16_bf16_128x128x64_1x1x1_0_tnn_align8_warpspecialized",
        "void gemv2T_kernel_val<int, int, __nv_bfloat16, __nv_bfloat16, float, 128, 16, 4, 4, false, false>",
        "triton_tem_fused_mm_1",  # max-autotune's GEMM templates
        "triton_tem_fused_addmm_gelu_4",
    ],
    "attention": [
        "pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128>>",
        "fmha_cutlassF_bf16_aligned_64x128_rf_sm80",
        "aten::_softmax",
        "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 128, 4, false, false, cutlass::bfloat16_t>>",
        "void pytorch_flash::flash_bwd_convert_dq_kernel<Flash_bwd_kernel_traits<64, 128, 128, 8>>",  # not a conv
        "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x128_4x1x1_kernel0_0",
        "fmha_cutlassB_bf16_aligned_64x64_k64_sm80(PyTorchMemEffAttention::AttentionBackwardKernel)",
    ],
    "STFT + mel": [
        "void regular_fft<256u, 16u, 4u>",
        "aten::_fft_r2c",
        "void regular_fft<128u, 16u, 8u, (padding_t)1, (twiddle_t)0, (loadstore_modifier_t)2, (layout_t)0, unsigned int,"
        " float>(kernel_arguments_t<unsigned int>)",
        "void vector_fft_r2c<256u, 4u, 4u, (padding_t)0, (twiddle_t)0, float>(kernel_arguments_t<unsigned int>)",
        "void spRadix0064B::kernel1Mem<unsigned int, float, (fftDirection_t)-1, 16u, 64u, 4u, (padding_t)1, false, "
        "true>(kernel_parameters_t<fft_mem_radix1_t, unsigned int, float>)",
    ],
    "optimizer": [
        "void at::native::multi_tensor_apply_kernel<FusedAdamMathFunctor>",
        "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous namespace)::"
        "TensorListMetadata<4>, at::native::(anonymous namespace)::FusedAdamMathFunctor<float, 4, "
        "(at::native::ADAM_MODE)0, false>, float*, float, float, float, float, float, bool, float*, float*>",
        "triton_for_fused_0",  # a compiled optimizer's foreach kernel
    ],
    "communication": ["ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevKernelArgsStorage<4096ul>)",
                      "ncclKernel_AllReduce_RING_LL_Sum_float", "c10d::allreduce_"],
    "loader (DALI)": ["void dali::kernels::slice_impl::SliceKernel<float, short, 1>(dali::kernels::slice_impl::"
                      "SliceSampleDesc<1> const*, dali::kernels::BlockDesc<1> const*)",
                      "void dali::kernels::signal::fft::impl::Transpose<float>",  # DALI's, though it names fft
                      "Memcpy HtoD (Pinned -> Device)"],  # the decoded batch's way onto the GPU
    "other": ["void cudnn::engines::winograd"],
    "copies / gathers": [
        "triton_poi_fused_index_select_3",
        "Memcpy DtoD (Device -> Device)",
        "Memcpy DtoH (Device -> Pinned)",
        "Memset (Device)",
        "void at::native::elementwise_kernel<128, 2, at::native::gpu_kernel_impl_nocast<at::native::"
        "direct_copy_kernel_cuda(at::TensorIteratorBase&)::{lambda()#3}::operator()() const::{lambda()#12}>>",
        "void at::native::(anonymous namespace)::CatArrayBatchedCopy<at::native::(anonymous namespace)::OpaqueType<2>, "
        "unsigned int, 3, 128, 1>",
        "void at::native::index_elementwise_kernel<128, 4, at::native::gpu_index_kernel<at::native::index_kernel_impl>>",
        "void cub::DeviceRadixSortOnesweepKernel<cub::DeviceRadixSortPolicy<unsigned long, long, int>::Policy800>",
        "triton_poi_fused__to_copy_t_0",  # a weight's cast and transpose: inductor's names list the ops fused
        "triton_poi_fused__to_copy_convolution_0",  # the cast feeding a GEMM computes no GEMM
        "triton_poi_fused_cat_index_select_2",
        "triton_poi_fused_index_put_new_zeros_0",
    ],
    "norm / GELU / elementwise": [
        "triton_red_fused_add_native_layer_norm_12",
        "void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl>",
        "void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::BFloat16, float>",
        "void at::native::(anonymous namespace)::GammaBetaBackwardCUDAKernelTemplate<c10::BFloat16, float>",
        "void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl(at::TensorIteratorBase&, "
        "at::native::GeluType)::{lambda()#2}::operator()() const::{lambda(c10::BFloat16)#1}>",
        "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::MeanOps<float, float>>>",
        "triton_poi_fused__to_copy_add_mul_relu_18",  # casts fused into arithmetic: an elementwise pass, not a copy
        "triton_red_fused__to_copy_add_native_layer_norm_native_layer_norm_backward_7",
        "triton_poi_fused_addmm_gelu_3",  # the bias and GELU after an extern GEMM
    ],
}


@pytest.mark.parametrize("expected", sorted(GPU_KERNELS))
def test_the_kernels_of_a_gpu_trace_fall_in_their_categories(expected):
    """The categories decide which lever gpu_profile.md calls for, and only a GPU's names can be wrong there: the
    names of the kernels its trace shows for this step's work (no GPU trace has been taken yet)."""
    assert expected in LABELS
    assert {name: category(name) for name in GPU_KERNELS[expected]} == {name: expected for name in GPU_KERNELS[expected]}


def test_idle_is_the_wall_time_no_kernel_covered_when_streams_overlap():
    """On a GPU, DALI's kernels run on their own stream beside the step's: their times summed would count the
    overlap twice and report less idle time than there was.  Two steps of 10 ms, microseconds on the device."""
    rng = np.random.default_rng(0)
    starts = rng.uniform(0, 20_000, 40)
    intervals = [(float(a), float(a + d)) for a, d in zip(starts, rng.uniform(10, 900, 40))]
    timeline = np.zeros(21_000, dtype=bool)  # an independent count: the microseconds any kernel touches
    for a, b in intervals:
        timeline[int(np.ceil(a)):int(np.ceil(b))] = True
    assert covered_us(intervals) == pytest.approx(timeline.sum(), abs=40)
    assert covered_us([(0, 4), (1, 2), (3, 6), (8, 9)]) == 7
    kernels = [("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_TNT", 6000.0, 1),  # the step's stream: 0-6 ms, 10-16 ms
               ("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_TNT", 6000.0, 1),
               ("void dali::kernels::SliceKernel<float, short, 1>", 4000.0, 1),  # DALI's: 2-6 ms, under the GEMM
               ]
    summary = summarise(kernels, wall_ms=10.0, steps=2, busy_us=covered_us([(0, 6000), (10_000, 16_000), (2000, 6000)]))
    assert summary["by_category"] == {"GEMM": 6.0, "loader (DALI)": 2.0, IDLE: 4.0}  # not 10 - 8 = 2 ms
    assert summary["top"][0] == {"name": kernels[0][0], "category": "GEMM", "ms": 6.0, "calls": 1.0}
    assert summarise(kernels, wall_ms=10.0, steps=2, busy_us=None)["by_category"][IDLE] == 2.0  # a CPU: summed


def test_the_gpu_annotations_of_compiled_graphs_and_optimizers_are_not_counted_as_kernels():
    """A CUDA profile also holds, on the device's timeline, each record_function range that launched device work
    (what torch's own tables leave out by is_user_annotation): counted, a compiled graph's whole span would land in
    'other' on top of its kernels, the optimizer's range on top of Adam's kernel, and the gaps inside them as busy."""
    def event(name, start, end, device=DeviceType.CUDA, annotation=False):
        return FunctionEvent(id=0, name=name, thread=0, start_us=start, end_us=end, use_device="cuda",
                             device_type=device, is_user_annotation=annotation)

    events = [event("## Call CompiledFxGraph fz4kq7 ##", 0, 10_000, DeviceType.CPU),  # the host's range
              event("## Call CompiledFxGraph fz4kq7 ##", 100, 9_000, annotation=True),  # its mirror on the device
              event("triton_red_fused_add_native_layer_norm_3", 100, 3_000),
              event("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_TNT", 6_000, 9_000),
              event("Optimizer.step#Adam.step", 9_500, 9_900, annotation=True),
              event("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor<float, 4>>",
                    9_500, 9_800)]
    work = device_work(events)
    assert [e.name for e in work] == [e.name for e in events[2:4]] + [events[5].name]
    summary = summarise([(e.name, e.device_time, 1) for e in work], wall_ms=10.0, steps=1,
                        busy_us=covered_us([(e.time_range.start, e.time_range.end) for e in work]))
    assert summary["by_category"] == pytest.approx({"norm / GELU / elementwise": 2.9, "GEMM": 3.0, "optimizer": 0.3,
                                                    IDLE: 3.8})
