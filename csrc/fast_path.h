// The Python entry points of the eager fast path (fast_path.cpp), for the module's method table.
#pragma once

#include <Python.h>

namespace rnnext {
PyMethodDef* fast_path_methods();
}  // namespace rnnext
