// Declares the LeadFL ops once; the kernels register per dispatch key in csrc/cpu and csrc/cuda.
#include <Python.h>
#include <torch/library.h>

// The module only needs to exist so that `import leadfl_ext._C` loads this library and runs the
// registrations below; the ops are reached through torch.ops.leadfl.
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(leadfl, m) {
  // alpha_rows, when given, replaces the scalar alpha: one value per row of dim 0 of every tensor.
  m.def(
      "fused_step_(Tensor(a!)[] params, Tensor[] grads, Tensor[] lookahead_grads, *, float lr, float alpha, "
      "Tensor? alpha_rows, float q) -> ()");
  m.def(
      "paper_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] deltas, *, float lr, float alpha, "
      "Tensor? alpha_rows, float q) -> ()");
}
