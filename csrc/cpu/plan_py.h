// The CPU planner's Python entry (plan_py.cpp), added to rnnext._C by PyInit__C (csrc/ops.cpp).
#pragma once

#include <Python.h>

namespace rnnext {
namespace cpu {
PyMethodDef* plan_methods();
}  // namespace cpu
}  // namespace rnnext
