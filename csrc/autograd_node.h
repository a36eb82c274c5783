// A custom autograd Node, made the way the installed torch holds Nodes (Edge::function):
// c10::intrusive_ptr in the torch this project builds against on CPU (2.13), std::shared_ptr in
// earlier ones (the GPU machine's torch 2.11, where set_history takes a shared_ptr).
#pragma once

#include <torch/csrc/autograd/edge.h>
#include <torch/csrc/autograd/function.h>

#include <memory>
#include <type_traits>

namespace rnnext {

template <class N>
auto make_node() {
  using Ref = decltype(torch::autograd::Edge::function);
  if constexpr (std::is_same_v<Ref, std::shared_ptr<torch::autograd::Node>>) {
    return std::make_shared<N>();
  } else {
    return c10::make_intrusive<N>();
  }
}

// The pointer type make_node<N>() returns.
template <class N>
using NodeRef = decltype(make_node<N>());

}  // namespace rnnext
