// The Python entry points of rnnext._C (bindings.cpp), for the module's method table.
#pragma once

#include <Python.h>

namespace rnnext {
PyMethodDef* binding_methods();
}  // namespace rnnext
