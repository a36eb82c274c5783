// The Python entry points of the FMA-peak measurement and the CPU ISA report (peak.cpp), added to
// the rnnext._C module's functions in PyInit__C.
#pragma once

#include <Python.h>

namespace rnnext {
namespace cpu {
PyMethodDef* peak_methods();
}  // namespace cpu
}  // namespace rnnext
