// Declares the LeadFL ops once; the kernels register per dispatch key in csrc/cpu and csrc/cuda.
// The two kernels below give the ops the in-place contract of torch's own in-place ops (like
// torch._foreach_add_), for every device: the Autograd kernel applies autograd's rules to the
// tensors the schema marks as written (`Tensor(a!)[]`), the ADInplaceOrView kernel bumps their
// version counters so that autograd notices a tensor saved for backward has changed.
#include <Python.h>
#include <torch/csrc/autograd/VariableTypeUtils.h>
#include <torch/library.h>

#include <string>
#include <vector>

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
  // identity is the constant c in R = clamp(c - (g~ - g), -q, q): 1 (hessian) or 0 (curvature).
  m.def(
      "fused_step_(Tensor(a!)[] params, Tensor[] grads, Tensor[] lookahead_grads, *, float lr, float alpha, "
      "Tensor? alpha_rows, float q, float identity=1.0) -> ()");
  m.def(
      "paper_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] deltas, *, float lr, float alpha, "
      "Tensor? alpha_rows, float q) -> ()");
}

namespace leadfl {
namespace {

using torch::jit::Stack;

// A tensor argument of the op as it sits on the dispatcher's stack.
struct Argument {
  at::Tensor tensor;
  size_t position;  // in the schema
  int64_t index;    // in its list, or -1 for a single tensor
  bool written;
};

std::vector<Argument> tensor_arguments(const c10::OperatorHandle& op, const Stack& stack) {
  const auto& schema = op.schema();
  const size_t count = schema.arguments().size();
  const size_t start = stack.size() - count;
  std::vector<Argument> out;
  for (size_t i = 0; i < count; ++i) {
    const c10::IValue& value = stack[start + i];
    const bool written = schema.is_mutable({c10::SchemaArgType::input, i});
    if (value.isTensor()) {
      out.push_back({value.toTensor(), i, -1, written});
    } else if (value.isTensorList()) {
      const auto list = value.toListRef();
      for (size_t k = 0; k < list.size(); ++k) out.push_back({list[k].toTensor(), i, static_cast<int64_t>(k), written});
    }
  }
  return out;
}

// "params[3]", "alpha_rows": the argument as a message names it.
std::string argument_name(const c10::OperatorHandle& op, const Argument& a) {
  const std::string& name = op.schema().arguments()[a.position].name();
  return a.index < 0 ? name : name + "[" + std::to_string(a.index) + "]";
}

// What VariableType does for an in-place op without a derivative: refuse what autograd forbids
// (a leaf that requires grad while grad mode is on, a view of one, forward AD), and when an
// input requires grad, give the written tensors a grad_fn that raises on backward instead of a
// silently wrong gradient.
void autograd_kernel(const c10::OperatorHandle& op, c10::DispatchKeySet keys, Stack* stack) {
  namespace ag = torch::autograd;
  const std::string& op_name = op.schema().name();
  const std::vector<Argument> arguments = tensor_arguments(op, *stack);
  std::vector<at::Tensor> requiring_grad, written;
  const bool grad_mode = at::GradMode::is_enabled();
  for (const Argument& a : arguments) {
    if (!a.tensor.defined()) continue;
    TORCH_CHECK_NOT_IMPLEMENTED(!ag::isFwGradDefined(a.tensor), op_name, ": ", argument_name(op, a),
                                " carries a forward-mode gradient, which this op does not support; "
                                "call it outside torch.autograd.forward_ad");
    if (grad_mode && a.tensor.requires_grad()) requiring_grad.push_back(a.tensor);
  }
  const bool any_requires_grad = !requiring_grad.empty();
  for (const Argument& a : arguments) {
    if (!a.written || !a.tensor.defined()) continue;
    switch (ag::can_mutate_inplace(a.tensor, any_requires_grad)) {
      case ag::can_mutate_inplace_result::success:
        break;
      case ag::can_mutate_inplace_result::non_default_backward_view:
        ag::handle_view_on_rebase(ag::impl::get_view_autograd_meta(a.tensor));
        break;
      case ag::can_mutate_inplace_result::view_of_leaf:
      case ag::can_mutate_inplace_result::is_leaf:
        TORCH_CHECK(false, op_name, ": ", argument_name(op, a), " is ",
                    a.tensor.is_leaf() ? "a leaf tensor" : "a view of a leaf tensor",
                    " that requires grad, and grad mode is on; torch forbids updating it in place there "
                    "(the op is an optimizer step): call the op under torch.no_grad()");
    }
    written.push_back(a.tensor);
  }
  c10::intrusive_ptr<ag::NotImplemented> grad_fn;
  if (any_requires_grad) {
    grad_fn = c10::make_intrusive<ag::NotImplemented>(op_name);
    grad_fn->set_next_edges(ag::collect_next_edges(requiring_grad));
  }
  {
    at::AutoDispatchBelowAutograd guard;
    op.redispatchBoxed(keys & c10::after_autograd_keyset, stack);
  }
  if (grad_fn) ag::rebase_history(written, grad_fn);
}

// Bumps the version of every written tensor after the kernel ran (as the generated
// ADInplaceOrView kernels of torch's in-place ops do).
void inplace_or_view_kernel(const c10::OperatorHandle& op, c10::DispatchKeySet keys, Stack* stack) {
  std::vector<at::Tensor> written;
  for (Argument& a : tensor_arguments(op, *stack)) {
    if (a.written && a.tensor.defined()) written.push_back(std::move(a.tensor));
  }
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    op.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
  }
  for (const at::Tensor& t : written) torch::autograd::increment_version(t);
}

}  // namespace
}  // namespace leadfl

TORCH_LIBRARY_IMPL(leadfl, Autograd, m) {
  m.impl("fused_step_", torch::CppFunction::makeFromBoxedFunction<&leadfl::autograd_kernel>());
  m.impl("paper_step_", torch::CppFunction::makeFromBoxedFunction<&leadfl::autograd_kernel>());
}

TORCH_LIBRARY_IMPL(leadfl, ADInplaceOrView, m) {
  m.impl("fused_step_", torch::CppFunction::makeFromBoxedFunction<&leadfl::inplace_or_view_kernel>());
  m.impl("paper_step_", torch::CppFunction::makeFromBoxedFunction<&leadfl::inplace_or_view_kernel>());
}
