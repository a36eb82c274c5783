// The CPU forward of one layer and direction into outputs the caller allocated: rnnext::rnn's
// bidirectional layers (csrc/stack.cpp), whose two directions run at once on a call that records
// no graph, each writing its half of the layer's [*, 2H] output in place (no output of its own to
// allocate, fault in and copy: benchmarks/NOTES.md section 55). The same code as rnn_forward's
// CPU kernel (rnn_cpu.cpp), which calls it with a fresh contiguous output.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace rnnext {
namespace cpu {

// rnn_forward's arguments (dense CPU float32 / float64), then out: [T, B, H] or, packed, [N, H],
// its last dimension contiguous and its rows (every step's batch entries, in order) at one stride;
// h_n: [B, H] contiguous.
void rnn_forward_into(const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes,
                      const std::optional<at::Tensor>& hx, const at::Tensor& w_ih,
                      const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                      const std::optional<at::Tensor>& b_hh, bool relu, bool reverse,
                      const at::Tensor& out, const at::Tensor& h_n);

// With RNNEXT_CPU_POISON (cpu::poison_memory), t filled with NaN: memory the CPU path allocates
// uninitialised and must write before it reads; nothing otherwise.
void poison(const at::Tensor& t);

}  // namespace cpu
}  // namespace rnnext
