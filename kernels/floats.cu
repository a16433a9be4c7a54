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

// GGML_TYPE_F32: memcpy of the float32 values
template <class Src>
__device__ void quantize_f32_item(GQ_QUANTIZE_PARAMS) {
    long long begin, end;
    if (!gq_float_item(n_per_row, rows_per_expert, n_expert, begin, end)) return;
    float* y = (float*)dst;
    for (long long i = begin; i < end; ++i) y[i] = Src::load(src, i);
}

// GGML_TYPE_F16: ggml_fp32_to_fp16_row
template <class Src>
__device__ void quantize_f16_item(GQ_QUANTIZE_PARAMS) {
    long long begin, end;
    if (!gq_float_item(n_per_row, rows_per_expert, n_expert, begin, end)) return;
    uint16_t* y = (uint16_t*)dst;
    for (long long i = begin; i < end; ++i) y[i] = gq_fp32_to_fp16_bits(Src::load(src, i));
}

// GGML_TYPE_BF16: ggml_fp32_to_bf16_row_ref
template <class Src>
__device__ void quantize_bf16_item(GQ_QUANTIZE_PARAMS) {
    long long begin, end;
    if (!gq_float_item(n_per_row, rows_per_expert, n_expert, begin, end)) return;
    uint16_t* y = (uint16_t*)dst;
    for (long long i = begin; i < end; ++i) y[i] = gq_fp32_to_bf16(Src::load(src, i));
}

GQ_QUANTIZE_ENTRY_POINTS(f32)
GQ_QUANTIZE_ENTRY_POINTS(f16)
GQ_QUANTIZE_ENTRY_POINTS(bf16)
