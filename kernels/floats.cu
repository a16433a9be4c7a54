// floats.cu: F32/F16/BF16 destinations (ggml_quantize_chunk's F16/BF16/F32 cases).
//
// Float rows have no blocks, so a work item is a run of GQ_FLOAT_ITEM consecutive elements of the
// expert's rows taken as one flat array (the last run may be partial). Values are converted exactly as
// ggml_fp32_to_fp16_row / ggml_fp32_to_bf16_row_ref do (software conversion, round to nearest even) of the
// exact source bits; a NaN in a dequantized scratch row is already x86's default NaN (gq_x86_nan).
#include "common.cuh"

#define GQ_FLOAT_ITEM 32

// Element range [begin, end) of this thread's run, or false when past the end.
__device__ __forceinline__ bool gq_float_item(long long n_per_row, long long rows_per_expert, long long n_expert,
                                              long long& begin, long long& end) {
    const long long per_expert = rows_per_expert * n_per_row;
    const long long item = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long first = item * GQ_FLOAT_ITEM;
    if (first >= per_expert || (long long)blockIdx.z >= n_expert) return false;
    const long long base = (long long)blockIdx.z * per_expert;
    begin = base + first;
    end = base + GQ_MIN(per_expert, first + GQ_FLOAT_ITEM);
    return true;
}

// One run of elements, each converted by `convert` from its exact source value.
template <class Src, class Out, Out (*convert)(float)>
__device__ __forceinline__ void gq_convert_run(GQ_QUANTIZE_PARAMS) {
    long long begin, end;
    if (!gq_float_item(n_per_row, rows_per_expert, n_expert, begin, end)) return;
    Out* y = (Out*)dst;
    for (long long i = begin; i < end; ++i) y[i] = convert(Src::load(src, i));
}

// GGML_TYPE_F32: memcpy of the float32 values
__device__ __forceinline__ float gq_fp32_copy(float f) { return f; }

template <class Src>
__device__ void quantize_f32_item(GQ_QUANTIZE_PARAMS) {
    gq_convert_run<Src, float, gq_fp32_copy>(GQ_QUANTIZE_ARGS);
}

// GGML_TYPE_F16: ggml_fp32_to_fp16_row
template <class Src>
__device__ void quantize_f16_item(GQ_QUANTIZE_PARAMS) {
    gq_convert_run<Src, uint16_t, gq_fp32_to_fp16_bits>(GQ_QUANTIZE_ARGS);
}

// GGML_TYPE_BF16: ggml_fp32_to_bf16_row_ref
template <class Src>
__device__ void quantize_bf16_item(GQ_QUANTIZE_PARAMS) {
    gq_convert_run<Src, uint16_t, gq_fp32_to_bf16>(GQ_QUANTIZE_ARGS);
}

GQ_QUANTIZE_ENTRY_POINTS(f32)
GQ_QUANTIZE_ENTRY_POINTS(f16)
GQ_QUANTIZE_ENTRY_POINTS(bf16)
