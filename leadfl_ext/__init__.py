"""LeadFL client update: fused C++/CUDA ops, a plain-PyTorch reference and an optimizer."""
import torch  # noqa: F401  (loads libtorch before the extension)

from . import _C  # noqa: F401  (registers torch.ops.leadfl)
from . import reference
from .ops import fused_step_, paper_step_
from .optim import LeadFL, leadfl_param_groups

__all__ = ["fused_step_", "paper_step_", "reference", "LeadFL", "leadfl_param_groups"]


def cpu_kernel_isa() -> str:
    """The instruction set of the CPU kernel's vector loops on this machine: "avx2" or "default"."""
    return torch.ops.leadfl.cpu_kernel_isa()


def cuda_available() -> bool:
    """True when this build carries the CUDA kernels."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("leadfl::fused_step_", "CUDA")
