"""Where and how a training run executes: device, precision, DDP ranks, RNG state, FLOPs.

Everything here is stateless helpers for `pi_lnfree.train`; RNG states are converted to
tensors and plain lists so they fit a weights_only checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from pi_lnfree.errors import UserError

# Dense bf16/fp16 tensor-core peaks (FLOP/s) by GPU name, for MFU. Longest match wins.
GPU_PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "H100 PCIe": 756e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
    "A6000": 155e12,
    "4090": 165e12,
    "V100": 125e12,
}


@dataclass
class Runtime:
    """The execution context of one process of a run."""

    device: torch.device
    precision: str  # fp32 | bf16 | fp16
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def autocast(self):
        """Mixed-precision context for forward passes (a no-op in fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)


def setup_runtime(device: str, precision: str, threads: int) -> Runtime:
    """Pick the device and precision; join the process group when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if threads > 0:
        torch.set_num_threads(threads)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError("train.device asks for CUDA but no CUDA GPU is available")
        dev = torch.device("cuda", local_rank) if world > 1 or device == "cuda" else torch.device(device)
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        dev = torch.device("cpu")
    if precision == "auto":
        precision = "fp32" if dev.type == "cpu" else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    if dev.type == "cpu" and precision == "fp16":
        raise UserError("train.precision fp16 needs a CUDA GPU; use fp32 (or bf16) on CPU")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Runtime(dev, precision, rank, world, local_rank)


def shutdown_runtime(rt: Runtime) -> None:
    if rt.distributed and dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# RNG state as checkpoint-safe values


def rng_state() -> dict[str, Any]:
    """torch / CUDA / python / numpy RNG states as tensors and plain lists."""
    py_version, py_state, py_gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `rng_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# FLOPs and MFU


def flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    """Training FLOPs per token: 6 x (weights of every matmul, the LM head counted once even when
    tied) + 12 x layers x context x width for the attention scores and mixing (PaLM appendix B)."""
    cfg = model.config
    matmul_params = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return 6.0 * matmul_params + 12.0 * cfg.n_layer * seq_len * cfg.n_embd


def peak_flops(rt: Runtime, configured: float) -> float | None:
    """Peak FLOP/s to divide by for MFU: the recipe's value, else the GPU table (bf16/fp16)."""
    if configured > 0:
        return configured
    if rt.device.type != "cuda" or rt.precision == "fp32":
        return None
    name = torch.cuda.get_device_name(rt.device)
    matches = [k for k in GPU_PEAK_FLOPS if k in name]
    return GPU_PEAK_FLOPS[max(matches, key=len)] if matches else None


def all_reduce_sum(t: torch.Tensor, rt: Runtime) -> torch.Tensor:
    """Sum over ranks (identity for one process)."""
    if rt.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(rt: Runtime) -> None:
    if rt.distributed:
        dist.barrier()
