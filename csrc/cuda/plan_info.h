// What the CUDA planner picks, for reports (the benchmark suite's `path` column): plan_py.cpp
// exposes it to Python as rnnext._C._cuda_path. Only in the CUDA build.
#pragma once

#include <Python.h>

#include <c10/core/ScalarType.h>

#include <cstdint>

namespace rnnext {

// The recurrence path rnn_forward (backward: rnn_backward) takes on the current device for a
// batch of B (packed: the first batch size) and hidden size H, RNNEXT_CUDA_PATH included:
// "persistent-regs", "persistent-smem", "persistent-cluster<C>", "tiled", "tiled-cluster<C>" or
// "fallback" (rnn_cuda.cpp).
const char* planned_path(at::ScalarType dtype, int64_t B, int64_t H, bool backward);

namespace cuda {
PyMethodDef* plan_methods();
}  // namespace cuda

}  // namespace rnnext
