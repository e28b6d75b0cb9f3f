"""megatron-core 0.19.2 on a machine without CUDA: the one place that patches third-party code.

megatron-core assumes CUDA in a handful of places (see ``reference/environment.md``, "megatron-core
on the CPU"). ``apply_cpu_compat()`` fixes them, and does nothing when CUDA is available, so the
GPU path always runs megatron-core unmodified. It is idempotent and is called by
``distributed.setup.init_distributed`` before any megatron model is built.

What it changes (every entry is listed in ``PATCHES`` and recorded in ``applied_patches()``):

1. RNG tracker: ``tensor_parallel.random.CudaRNGStatesTracker`` becomes ``CpuRNGStatesTracker``
   (a subclass whose ``add``/``fork`` keep and swap CPU generator states), and the module's
   ``_get_cuda_rng_state``/``_set_cuda_rng_state`` read/write the CPU generator, so
   ``model_parallel_cuda_manual_seed`` and every ``get_cuda_rng_tracker().fork()`` work.
2. ``torch.cuda`` stand-ins: ``current_device()`` returns ``torch.device('cpu')`` (so every
   ``device=torch.cuda.current_device()`` allocation, including ``GlobalMemoryBuffer.get_tensor``
   and the MoE router, lands on the CPU); ``Stream``/``Event``/``stream()``/``current_stream()``/
   ``synchronize()`` are no-op stand-ins; ``Tensor.record_stream`` is a no-op for CPU tensors.
3. ``moe_utils.maybe_move_tensor_to_cpu``: returns ``.numpy()`` for CPU tensors when numpy is
   asked for (megatron only converts CUDA tensors; with EP>1 ``all_to_all_single`` then gets a
   Tensor of split sizes and raises a TypeError).
4. ``get_default_causal_mask`` (as imported by ``fusions.fused_softmax``): the causal mask the
   local attention builds when ``attention_mask`` is None, created on the CPU.
5. ``clip_grad_by_total_norm_fp32`` (as imported by ``optimizer.optimizer``): the same scaling
   without the ``torch.cuda.FloatTensor`` assertion.
6. The Mamba-2 kernels of ``ssm.mamba_mixer`` (``model.arch=hybrid``): mamba-ssm's Triton SSD scan
   and gated RMSNorm need CUDA, so ``mamba_chunk_scan_combined`` and ``ExtendedRMSNorm`` become the
   torch references of ``pivotrl_nemo.kernels.ssd_reference`` and ``HAVE_MAMBA_SSM`` is set. The
   conv1d needs nothing: megatron falls back to ``F.conv1d`` without ``causal-conv1d``; the
   fused path (``use_mamba_mem_eff_path``) is off unless the kernels can run
   (``models.megatron.hybrid.mamba_kernels_available``).

Literal ``device='cuda'`` in the pipeline schedules, ``FP32Optimizer`` and the grad-norm code is
not patched: wrap those calls in ``with cuda_to_cpu():`` (a ``TorchFunctionMode`` that maps CUDA
devices to the CPU while active; a no-op context when CUDA is available).

``WATCHED`` lists megatron functions that are not patched but are right on the CPU only through
the patches (``GlobalMemoryBuffer.get_tensor``, ``model_parallel_cuda_manual_seed``, ...).

Every patch target is checked before patching: it must exist, have the recorded signature, and
(for megatron-core functions) the recorded source hash. A missing target or changed signature
raises ``CpuCompatError``; a changed source logs a warning, and
``tests/unit/test_megatron_cpu_compat.py`` fails on either, so a megatron-core upgrade forces a
review of this module.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from pivotrl_nemo.distributed.cuda_stand_ins import (
    CpuEvent,
    CpuStream,
    cpu_current_device,
    cpu_current_stream,
    cpu_stream,
    cpu_synchronize,
    make_record_stream,
)
from pivotrl_nemo.kernels.ssd_reference import GatedRMSNorm, ssd_chunk_scan
from pivotrl_nemo.utils.logging import get_logger

logger = get_logger(__name__)

MEGATRON_CORE_VERSION = "0.19.2"
"""The megatron-core version the recorded signatures and source hashes were taken from."""


class CpuCompatError(RuntimeError):
    """A patch target is missing or changed; review this module against the new megatron-core."""


@dataclass(frozen=True)
class PatchSpec:
    """One attribute this module replaces."""

    owner: str
    """Dotted module path, optionally ``:Class`` (``'megatron.core.utils:GlobalMemoryBuffer'``)."""
    name: str
    """Attribute replaced on the owner."""
    signature: str | None
    """Expected ``str(inspect.signature(original))``; None for classes and C functions."""
    source_sha256: str | None
    """Expected sha256 (hex, first 16 chars) of ``inspect.getsource(original)``; None for torch."""
    reason: str
    """Why it is patched."""


@dataclass(frozen=True)
class AppliedPatch:
    """A patch that ``apply_cpu_compat`` installed."""

    owner: str
    name: str
    original: Any
    replacement: Any


_RANDOM = "megatron.core.tensor_parallel.random"
_MIXER = "megatron.core.ssm.mamba_mixer"

PATCHES: tuple[PatchSpec, ...] = (
    PatchSpec(
        _RANDOM,
        "CudaRNGStatesTracker",
        "(use_cudagraphable_rng=False, is_inference_rng_tracker=False)",
        "0194c15fce9418b7",
        "add()/fork() use torch.cuda RNG states; replaced by a subclass keeping CPU states",
    ),
    PatchSpec(
        _RANDOM,
        "_get_cuda_rng_state",
        "(device: 'Union[int, str, torch.device]' = 'cuda', clone: 'bool' = False, "
        "graph_safe: 'bool' = False) -> 'torch.Tensor'",
        "aa26caaa069c5c4f",
        "reads the CUDA generator (activation recompute, convert)",
    ),
    PatchSpec(
        _RANDOM,
        "_set_cuda_rng_state",
        "(new_state: 'torch.Tensor', device: 'int' = -1, graph_safe: 'bool' = False)",
        "b179c9d95438b61c",
        "writes the CUDA generator",
    ),
    PatchSpec(
        "megatron.core.transformer.moe.moe_utils",
        "maybe_move_tensor_to_cpu",
        "(tensor: torch.Tensor, as_numpy: bool = False, record_stream: bool = False) -> torch.Tensor",
        "8fc5847a887d7319",
        "CPU tensors are never converted to numpy (EP>1 alltoall)",
    ),
    PatchSpec(
        "megatron.core.transformer.moe.token_dispatcher",
        "maybe_move_tensor_to_cpu",
        "(tensor: torch.Tensor, as_numpy: bool = False, record_stream: bool = False) -> torch.Tensor",
        "8fc5847a887d7319",
        "the alltoall dispatcher's imported reference",
    ),
    PatchSpec(
        "megatron.core.optimizer.optimizer",
        "clip_grad_by_total_norm_fp32",
        "(parameters: Union[List[torch.Tensor], torch.Tensor], max_norm: Union[int, float], "
        "total_norm: float, use_decoupled_grad: bool = False)",
        "cf07b488fb76a8ae",
        "asserts grads are torch.cuda.FloatTensor",
    ),
    PatchSpec(
        "megatron.core.fusions.fused_softmax",
        "get_default_causal_mask",
        "(sq: int) -> torch.Tensor",
        "4638b2c6665fc284",
        "builds the causal mask with a literal device='cuda' (attention_mask=None)",
    ),
    PatchSpec(
        "torch.cuda",
        "current_device",
        None,
        None,
        "megatron allocates on torch.cuda.current_device() (router, buffers, SP)",
    ),
    PatchSpec("torch.cuda", "Stream", None, None, "alltoall dispatcher creates side streams"),
    PatchSpec("torch.cuda", "Event", None, None, "alltoall dispatcher records events"),
    PatchSpec("torch.cuda", "stream", None, None, "stream context manager"),
    PatchSpec("torch.cuda", "current_stream", None, None, "stream bookkeeping"),
    PatchSpec("torch.cuda", "synchronize", None, None, "async checkpoint writer"),
    PatchSpec("torch:Tensor", "record_stream", None, None, "MoE and dispatchers on CPU tensors"),
    # The Mamba-2 kernels (arch=hybrid). Without mamba-ssm megatron binds these names to False /
    # None / a MagicMock at import (``MAMBA_PLACEHOLDERS``: no signature to record); what they must
    # accept is pinned by the WATCHED call sites below.
    PatchSpec(_MIXER, "HAVE_MAMBA_SSM", None, None, "MambaMixer refuses to build without mamba-ssm"),
    PatchSpec(
        _MIXER,
        "mamba_chunk_scan_combined",
        None,
        None,
        "mamba-ssm's Triton SSD scan needs CUDA: kernels.ssd_reference.ssd_chunk_scan",
    ),
    PatchSpec(
        _MIXER,
        "ExtendedRMSNorm",
        None,
        None,
        "mamba-ssm's Triton gated RMSNorm needs CUDA: kernels.ssd_reference.GatedRMSNorm",
    ),
)

WATCHED: tuple[PatchSpec, ...] = (
    PatchSpec(
        "megatron.core.utils:GlobalMemoryBuffer",
        "get_tensor",
        "(self, tensor_shape, dtype, name, mem_alloc_context: Optional[Callable] = None)",
        "2b843a83eb762098",
        "allocates on torch.cuda.current_device(): CPU through the stand-in",
    ),
    PatchSpec(
        _RANDOM,
        "model_parallel_cuda_manual_seed",
        "(seed: 'int', te_rng_tracker: 'bool' = False, inference_rng_tracker: 'bool' = False, "
        "use_cudagraphable_rng: 'bool' = False, tp_rank: 'Optional[int]' = None, "
        "ep_rank: 'Optional[int]' = None, etp_rank: 'Optional[int]' = None, "
        "force_reset_rng: 'bool' = False)",
        "d3db2ff665789365",
        "works through the tracker class; torch.cuda.manual_seed stays lazy",
    ),
    PatchSpec(
        _RANDOM,
        "initialize_rng_tracker",
        "(use_te_rng_tracker: 'bool' = False, inference_rng_tracker: 'bool' = False, "
        "use_cudagraphable_rng: 'bool' = False, force_reset: 'bool' = False)",
        "4bc461df7c7f7a43",
        "builds the tracker from the module-level class name (ours)",
    ),
    PatchSpec(
        f"{_MIXER}:MambaMixer",
        "_ssm_prefill",
        None,
        "9370bf95c3f0c324",
        "calls mamba_chunk_scan_combined (x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, "
        "return_final_states, initial_states) and the gated norm as norm(y, z)",
    ),
    PatchSpec(
        f"{_MIXER}:MambaMixer",
        "__init__",
        None,
        "bd793fe753f423ad",
        "builds ExtendedRMSNorm(d_inner, eps, group_size, norm_before_gate, device, dtype)",
    ),
)
"""Not patched, but correct on the CPU only because of the patches: checked like ``PATCHES``."""

MAMBA_PLACEHOLDERS = ("HAVE_MAMBA_SSM", "mamba_chunk_scan_combined", "ExtendedRMSNorm")
"""``PATCHES`` entries of ``ssm.mamba_mixer`` checked by what they hold, not by a signature."""


def _placeholder_problem(spec: PatchSpec, orig: Any) -> str | None:
    """Why ``orig`` is not what megatron binds for a Mamba placeholder (None when it is): False /
    None / a MagicMock without mamba-ssm, or mamba-ssm's own objects with it."""
    from unittest.mock import MagicMock

    if orig is None or isinstance(orig, bool | MagicMock):
        return None
    if (getattr(orig, "__module__", "") or "").startswith("mamba_ssm"):
        return None
    return f"{spec.owner}.{spec.name} is {orig!r}, not mamba-ssm's or megatron's placeholder"


_APPLIED: list[AppliedPatch] = []
_IS_APPLIED = False


# --------------------------------------------------------------------------- target checks


def _resolve_owner(owner: str) -> Any:
    module_path, _, cls = owner.partition(":")
    obj = importlib.import_module(module_path)
    if cls:
        obj = getattr(obj, cls)
    return obj


def source_digest(obj: Any) -> str:
    """First 16 hex chars of the sha256 of ``inspect.getsource(obj)``."""
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]


def _original(spec: PatchSpec) -> Any:
    """The attribute as megatron-core / torch defines it (before or after our patch)."""
    for rec in _APPLIED:
        if rec.owner == spec.owner and rec.name == spec.name:
            return rec.original
    owner = _resolve_owner(spec.owner)
    if not hasattr(owner, spec.name):
        raise CpuCompatError(f"{spec.owner}.{spec.name} no longer exists ({spec.reason})")
    return getattr(owner, spec.name)


def check_patch_targets() -> list[str]:
    """Problems with the patch targets of the installed megatron-core/torch ([] when all match).

    Checks, for every entry of ``PATCHES`` and ``WATCHED``: the attribute exists, its signature
    is the recorded one, and (megatron-core only) its source hash is the recorded one. Works with
    or without CUDA.
    """
    problems: list[str] = []
    for spec in PATCHES + WATCHED:
        where = f"{spec.owner}.{spec.name}"
        try:
            orig = _original(spec)
        except (CpuCompatError, ImportError, AttributeError) as e:
            problems.append(f"{where}: missing ({e})")
            continue
        if spec.owner == _MIXER and spec.name in MAMBA_PLACEHOLDERS:
            problem = _placeholder_problem(spec, orig)
            problems += [problem] if problem else []
        if spec.signature is not None:
            got = str(inspect.signature(orig))
            if got != spec.signature:
                problems.append(f"{where}: signature {got!r} != recorded {spec.signature!r}")
        if spec.source_sha256 is not None:
            got = source_digest(orig)
            if got != spec.source_sha256:
                problems.append(f"{where}: source sha256 {got} != recorded {spec.source_sha256}")
    return problems


# --------------------------------------------------------------------------- RNG tracker


def _cpu_get_rng_state(device: Any = "cuda", clone: bool = False, graph_safe: bool = False) -> torch.Tensor:
    """CPU stand-in for ``random._get_cuda_rng_state``: the CPU generator's state."""
    return torch.get_rng_state()


def _cpu_set_rng_state(new_state: torch.Tensor, device: int = -1, graph_safe: bool = False) -> None:
    """CPU stand-in for ``random._set_cuda_rng_state``."""
    torch.set_rng_state(new_state)


def _make_cpu_tracker_class(base: type) -> type:
    """A ``CudaRNGStatesTracker`` subclass whose named states are CPU generator states."""

    class CpuRNGStatesTracker(base):  # type: ignore[misc, valid-type]
        """Named CPU generator states; ``fork(name)`` swaps the global CPU generator to ``name``."""

        _current_state_name: str  # set by the base class's reset(); declared for mypy (base is dynamic)

        def add(self, name: str, seed: int) -> None:
            self._is_initialized = True
            if seed in self.seeds_:
                raise Exception(f"seed {seed} already exists")
            self.seeds_.add(seed)
            if name in self.states_:
                raise Exception(f"rng state {name} already exists")
            orig = torch.get_rng_state()
            torch.manual_seed(seed)
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(orig)

        @contextlib.contextmanager
        def fork(self, name: str = "model-parallel-rng") -> Iterator[None]:
            if name not in self.states_:
                raise Exception(f"rng state {name} is not added")
            orig_state = torch.get_rng_state()
            orig_name = self._current_state_name
            if orig_name != "default-rng":
                self.states_[orig_name] = orig_state
            torch.set_rng_state(self.states_[name])
            self._current_state_name = name
            try:
                yield
            finally:
                if self._current_state_name != name:
                    raise Exception(f"current rng state {self._current_state_name} is not {name}")
                self.states_[name] = torch.get_rng_state()
                if orig_name != "default-rng":
                    orig_state = self.states_[orig_name]
                torch.set_rng_state(orig_state)
                self._current_state_name = orig_name

    return CpuRNGStatesTracker


# --------------------------------------------------------------------------- megatron fixes


def _maybe_move_tensor_to_cpu(tensor: torch.Tensor, as_numpy: bool = False, record_stream: bool = False):
    """``moe_utils.maybe_move_tensor_to_cpu`` that also honours ``as_numpy`` for CPU tensors."""
    if torch.is_tensor(tensor):
        if tensor.is_cuda:
            tensor = tensor.to(torch.device("cpu"))
        if as_numpy:
            return tensor.numpy()
    return tensor


@functools.lru_cache(maxsize=32)
def _cpu_default_causal_mask(sq: int) -> torch.Tensor:
    """``transformer.utils.get_default_causal_mask`` on the CPU: True above the diagonal (masked)."""
    return torch.triu(torch.ones(sq, sq, dtype=torch.bool), diagonal=1)


def _clip_grad_by_total_norm_fp32(parameters, max_norm, total_norm, use_decoupled_grad: bool = False) -> None:
    """``clip_grads.clip_grad_by_total_norm_fp32`` without the ``torch.cuda.FloatTensor`` assert."""
    from megatron.core.utils import to_local_if_dtensor  # lazy: megatron

    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    attr = "decoupled_grad" if use_decoupled_grad else "grad"
    grads = []
    for param in parameters:
        grad = getattr(param, attr, None)
        if grad is not None:
            if grad.dtype not in (torch.float32, torch.bfloat16):
                raise TypeError(f"clip_grad expects fp32/bf16 main grads, got {grad.dtype}")
            grads.append(to_local_if_dtensor(grad).detach())
    clip_coeff = max_norm / (total_norm + 1.0e-6)
    if isinstance(clip_coeff, torch.Tensor):
        clip_coeff = clip_coeff.clamp_max(1.0)
        for g in grads:
            g.mul_(clip_coeff.to(g.device))
    elif clip_coeff < 1.0:
        for g in grads:
            g.mul_(clip_coeff)


class _ExtendedGatedRMSNorm(GatedRMSNorm):
    """megatron's ``ExtendedRMSNorm`` (mamba-ssm's gated norm + a sharded state dict) on the torch
    gated norm: same constructor, ``weight`` sharded along dim 0 over the TP group."""

    tp_group: Any = None

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata: Any = None) -> Any:
        from megatron.core import parallel_state  # lazy: megatron
        from megatron.core.transformer.utils import make_sharded_tensors_for_checkpoint

        group = self.tp_group if self.tp_group is not None else parallel_state.get_tensor_model_parallel_group()
        return make_sharded_tensors_for_checkpoint(
            self.state_dict(prefix="", keep_vars=True),
            prefix,
            {"weight": 0},
            sharded_offsets,
            tp_group=group,
            dp_cp_group=metadata["dp_cp_group"],
        )


# --------------------------------------------------------------------------- apply


def _replacements() -> dict[tuple[str, str], Any]:
    tracker_spec = next(s for s in PATCHES if (s.owner, s.name) == (_RANDOM, "CudaRNGStatesTracker"))
    return {
        (_RANDOM, "CudaRNGStatesTracker"): _make_cpu_tracker_class(_original(tracker_spec)),
        (_RANDOM, "_get_cuda_rng_state"): _cpu_get_rng_state,
        (_RANDOM, "_set_cuda_rng_state"): _cpu_set_rng_state,
        ("megatron.core.transformer.moe.moe_utils", "maybe_move_tensor_to_cpu"): _maybe_move_tensor_to_cpu,
        ("megatron.core.transformer.moe.token_dispatcher", "maybe_move_tensor_to_cpu"): _maybe_move_tensor_to_cpu,
        ("megatron.core.optimizer.optimizer", "clip_grad_by_total_norm_fp32"): _clip_grad_by_total_norm_fp32,
        ("megatron.core.fusions.fused_softmax", "get_default_causal_mask"): _cpu_default_causal_mask,
        ("torch.cuda", "current_device"): cpu_current_device,
        ("torch.cuda", "Stream"): CpuStream,
        ("torch.cuda", "Event"): CpuEvent,
        ("torch.cuda", "stream"): cpu_stream,
        ("torch.cuda", "current_stream"): cpu_current_stream,
        ("torch.cuda", "synchronize"): cpu_synchronize,
        ("torch:Tensor", "record_stream"): make_record_stream(torch.Tensor.record_stream),
        (_MIXER, "HAVE_MAMBA_SSM"): True,
        (_MIXER, "mamba_chunk_scan_combined"): ssd_chunk_scan,
        (_MIXER, "ExtendedRMSNorm"): _ExtendedGatedRMSNorm,
    }


def cpu_compat_needed() -> bool:
    """True when CUDA is absent, i.e. when ``apply_cpu_compat`` patches anything."""
    return not torch.cuda.is_available()


def apply_cpu_compat() -> bool:
    """Install every patch in ``PATCHES`` when CUDA is absent. Idempotent.

    Returns True when the patches are active after the call (False on a CUDA machine).
    Raises ``CpuCompatError`` when a target is missing or its signature changed.
    """
    global _IS_APPLIED
    if _IS_APPLIED:
        return True
    if not cpu_compat_needed():
        return False
    import megatron.core  # lazy: megatron

    if megatron.core.__version__.split("+")[0] != MEGATRON_CORE_VERSION:
        logger.warning(
            "megatron-core %s: cpu_compat was reviewed against %s", megatron.core.__version__, MEGATRON_CORE_VERSION
        )
    for spec in PATCHES:  # check everything before touching anything
        orig = _original(spec)
        problem = _placeholder_problem(spec, orig) if spec.owner == _MIXER else None
        if problem:
            raise CpuCompatError(f"{problem}; review pivotrl_nemo/distributed/cpu_compat.py")
        if spec.signature is not None and str(inspect.signature(orig)) != spec.signature:
            raise CpuCompatError(
                f"{spec.owner}.{spec.name} changed signature: {inspect.signature(orig)} "
                f"(recorded {spec.signature}); review pivotrl_nemo/distributed/cpu_compat.py"
            )
        if spec.source_sha256 is not None and source_digest(orig) != spec.source_sha256:
            logger.warning(
                "%s.%s changed since megatron-core %s; review cpu_compat.py",
                spec.owner,
                spec.name,
                MEGATRON_CORE_VERSION,
            )
    replacements = _replacements()
    for spec in PATCHES:
        owner = _resolve_owner(spec.owner)
        original = getattr(owner, spec.name)
        new = replacements[(spec.owner, spec.name)]
        setattr(owner, spec.name, new)
        _APPLIED.append(AppliedPatch(spec.owner, spec.name, original, new))
    _reset_existing_rng_tracker()
    _IS_APPLIED = True
    logger.debug("cpu_compat: patched %d symbols", len(_APPLIED))
    return True


def _reset_existing_rng_tracker() -> None:
    """A tracker created before the patch holds CUDA semantics; drop it so the next use builds ours."""
    random_mod = importlib.import_module(_RANDOM)
    tracker = random_mod._CUDA_RNG_STATE_TRACKER
    if tracker is not None and not isinstance(tracker, random_mod.CudaRNGStatesTracker):
        random_mod.initialize_rng_tracker(force_reset=True)


def applied_patches() -> list[AppliedPatch]:
    """What ``apply_cpu_compat`` replaced in this process (empty when CUDA is available)."""
    return list(_APPLIED)


# --------------------------------------------------------------------------- cuda -> cpu mode


def _is_cuda_device(dev: Any) -> bool:
    if isinstance(dev, torch.device):
        return dev.type == "cuda"
    if isinstance(dev, str):
        return dev.startswith("cuda")
    return False


class _CudaToCpuMode(TorchFunctionMode):
    """Maps ``device='cuda'`` (and ``.cuda()`` / ``.to('cuda')``) to the CPU while active."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = dict(kwargs or {})
        dev = kwargs.get("device")
        if dev is not None and (_is_cuda_device(dev) or (isinstance(dev, int) and not isinstance(dev, bool))):
            kwargs["device"] = torch.device("cpu")
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.to:
            args = tuple(torch.device("cpu") if _is_cuda_device(a) else a for a in args)
        return func(*args, **kwargs)


@contextlib.contextmanager
def cuda_to_cpu() -> Iterator[None]:
    """While active, tensors megatron asks to create on CUDA are created on the CPU.

    Use around megatron calls with a literal ``device='cuda'`` (optimizer construction and
    ``step``, pipeline schedules). A no-op on a CUDA machine.
    """
    if not cpu_compat_needed():
        yield
        return
    with _CudaToCpuMode():
        yield
