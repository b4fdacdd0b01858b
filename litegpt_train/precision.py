"""Mixed precision on the CPU: bf16 autocast only where the processor computes bf16 natively.

On a CPU with native bf16 instructions (x86 `avx512_bf16` or AMX, Arm's BF16 extension) bf16 autocast roughly
halves the time of the LM's matrix products; without them PyTorch emulates bf16 and a step gets slower than in
fp32. `resolve_cpu_mixed_precision` therefore turns a bf16 request into fp32 training on such a CPU, and says so
in the log (the run's `litegpt_training.json` records the precision actually used).
"""

from __future__ import annotations

import dataclasses
import logging
import platform

import torch

logger = logging.getLogger(__name__)


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 matrix products in hardware (x86: AVX512-BF16 or AMX; Arm: BF16)."""
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def trains_on_cpu(training_args) -> bool:
    return bool(training_args.use_cpu) or not (torch.cuda.is_available() or torch.xpu.is_available())


def resolve_cpu_mixed_precision(training_args):
    """`training_args` unchanged, or (CPU training, bf16 asked, no native bf16) a copy with bf16 off, logged."""
    if not (training_args.bf16 and trains_on_cpu(training_args)) or cpu_has_native_bf16():
        return training_args
    logger.warning(
        "bf16 was requested, but this CPU (%s) has no native bf16 instructions (AVX512-BF16/AMX or Arm BF16): "
        "emulated bf16 would be slower than fp32, so this run trains in fp32 (bf16 = false)",
        platform.processor() or platform.machine(),
    )
    return dataclasses.replace(training_args, bf16=False)


__all__ = ["cpu_has_native_bf16", "resolve_cpu_mixed_precision", "trains_on_cpu"]
