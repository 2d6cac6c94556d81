"""The chunk driver of the fused linear ops (log-probs, PPO loss): chunking, buffers and GEMMs.

The fused ops never hold more than one chunk of logits: for each chunk of tokens `ChunkDriver`
computes the fp32 logits with one GEMM (`LMHead.logits`), hands them to the op's row pass (which may
overwrite them with dloss/dlogits), and turns that gradient into hidden / weight / bias gradients
with two more GEMMs (`LMHead.backprop_chunk`). Each op supplies only its row pass; every row pass
(PyTorch, native CPU, Triton, CUDA) shares this GEMM side.
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass

import torch

from . import checks
from .numerics import compute_dtype

# Bytes of fp32 logits per chunk. CPU: small enough to stay ~10% of an eager pass over the same
# tokens and large enough for BLAS to run near peak. GPU: a chunk of ~1-2k rows at 152k vocab.
_DEFAULT_CHUNK_BYTES = {"cpu": 64 << 20, "cuda": 1 << 30}


CHUNK_BYTES_VAR = "IA_KERNELS_CHUNK_BYTES"


def _chunk_bytes(device: torch.device) -> int:
    """IA_KERNELS_CHUNK_BYTES: a positive integer number of bytes (digits only), else the default."""
    raw = os.environ.get(CHUNK_BYTES_VAR)
    if raw is None or raw.strip() == "":
        return _DEFAULT_CHUNK_BYTES.get(device.type, 64 << 20)
    text = raw.strip()
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise ValueError(f"{CHUNK_BYTES_VAR}={raw!r} is not accepted: it must be a positive integer number of "
                         f"bytes of fp32 logits per chunk, written in digits (e.g. 67108864 for 64 MiB)")
    return int(text)


def chunk_setting(device: torch.device, chunk_size) -> tuple[int | None, int | None]:
    """(chunk_size, bytes): what sizes the chunks, validated before any work: the caller's
    chunk_size (an int >= 1) and None, or None and IA_KERNELS_CHUNK_BYTES (or the default)."""
    if chunk_size is not None:
        return _validated_chunk_size(chunk_size), None
    return None, _chunk_bytes(device)


def _validated_chunk_size(chunk_size) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (numbers.Integral, torch.Tensor)):
        raise ValueError(f"chunk_size must be an int (rows of logits per chunk) or None, "
                         f"got {type(chunk_size).__name__}")
    chunk_size = checks.require_index("chunk_size", chunk_size)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return chunk_size


def chunk_rows(n_rows: int, vocab: int, device: torch.device, chunk_size: int | None) -> int:
    """Rows per chunk: the caller's chunk_size (an int >= 1), else IA_KERNELS_CHUNK_BYTES / (4 V)
    (a positive integer number of bytes; at least 16 rows), else the default."""
    if chunk_size is not None:
        return max(1, min(_validated_chunk_size(chunk_size), max(n_rows, 1)))
    budget = _chunk_bytes(device)
    rows = max(16, budget // (4 * max(vocab, 1)))
    return max(1, min(rows, max(n_rows, 1)))


_OUT_DTYPE_MM: list[bool] = []  # the probe's answer, once per process


def _has_out_dtype_mm() -> bool:
    # torch.mm(..., out_dtype=torch.float32) keeps bf16/fp16 GEMMs' fp32 accumulator on CUDA.
    if not _OUT_DTYPE_MM:
        try:
            a = torch.empty(0, 0, dtype=torch.bfloat16, device="meta")
            torch.mm(a, a, out_dtype=torch.float32)
            _OUT_DTYPE_MM.append(True)
        except (TypeError, RuntimeError, NotImplementedError):
            _OUT_DTYPE_MM.append(False)
    return _OUT_DTYPE_MM[0]


@dataclass
class LMHead:
    """The LM head's operands in the dtype the chunk GEMMs use.

    Logits are always fp32. On CUDA a bf16/fp16 GEMM writes its fp32 accumulator directly when torch
    supports `out_dtype`; elsewhere (CPU, older torch) a low-precision weight is upcast once per call:
    O(V x H) extra memory, independent of the number of tokens.
    """

    weight: torch.Tensor  # [V, H], in `gemm_dtype`
    bias: torch.Tensor | None  # [V] fp32
    gemm_dtype: torch.dtype
    out_dtype_mm: bool
    _chunk_buffer: torch.Tensor | None = None  # CPU: the one [rows, V] logits buffer, reused per chunk

    @classmethod
    def prepare(cls, weight: torch.Tensor, bias: torch.Tensor | None) -> "LMHead":
        low_precision = weight.dtype in (torch.bfloat16, torch.float16)
        out_dtype_mm = low_precision and weight.is_cuda and _has_out_dtype_mm()
        if weight.dtype == torch.float64:
            gemm_dtype = torch.float64
        elif out_dtype_mm:
            gemm_dtype = weight.dtype
        else:
            gemm_dtype = torch.float32
        w = weight.detach().to(gemm_dtype)
        b = None if bias is None else bias.detach().to(torch.float32 if gemm_dtype != torch.float64 else gemm_dtype)
        return cls(w, b, gemm_dtype, out_dtype_mm)

    @property
    def logits_dtype(self) -> torch.dtype:
        return compute_dtype(self.gemm_dtype)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """fp32 (or fp64) logits [rows, V] of a chunk of hidden states [rows, H], contiguous.

        On CPU every chunk is written into one buffer owned by this LMHead: the returned tensor is
        valid until the next call. A fresh 64 MiB tensor per chunk would be a fresh mmap, paying
        page faults and the kernel's zeroing on every chunk (~10% of a chunk's time here); CUDA's
        caching allocator already reuses memory.
        """
        h = h.to(self.gemm_dtype)
        if self.out_dtype_mm:
            z = torch.mm(h, self.weight.T, out_dtype=torch.float32)
        elif h.device.type == "cpu":
            rows, vocab = h.shape[0], self.weight.shape[0]
            if self._chunk_buffer is None or self._chunk_buffer.shape[0] < rows:
                self._chunk_buffer = torch.empty((rows, vocab), dtype=self.logits_dtype, device=h.device)
            z = torch.mm(h, self.weight.T, out=self._chunk_buffer[:rows])
        else:
            z = torch.mm(h, self.weight.T)
        if self.bias is not None:
            z += self.bias
        return z

    # Rows of a low-precision weight-gradient accumulator updated per step where the chunk's product
    # is formed in fp32 outside one GEMM (CPU; CUDA without out_dtype): bounds the fp32 temporary.
    _ACC_BLOCK_ROWS = 8192

    # Most chunk steps for which a bf16/fp16 weight-gradient accumulator stays within the design's
    # error rule (at most 2x plain PyTorch's error against float64): one rounding per step, and at
    # unit logits the error grows ~ sqrt(steps): 1.5x at 8 steps, 1.65x at 10, 2.0x at 16
    # (tests/test_weight_grad_accumulator.py).
    MAX_LOW_PRECISION_STEPS = 10

    @classmethod
    def new_weight_grad_accumulator(cls, weight: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """Zeros for the weight gradient accumulated over `steps` chunks.

        A bf16/fp16 weight with steps <= MAX_LOW_PRECISION_STEPS (or steps unknown) accumulates in
        its own dtype: the buffer is the returned gradient itself (V x H x 2 bytes), with no fp32
        accumulator (2.5 GB at V=151936, H=4096) and no cast copy at the end. Each chunk's dZ^T h is
        summed in fp32 (inside the GEMM on CUDA: cuBLAS reads the bf16 buffer into its fp32
        accumulator; per block of rows elsewhere) and rounded once per chunk. More steps, or a
        fp32/fp64 weight: fp32 (fp64 for float64) as before.
        """
        low = weight.dtype in (torch.bfloat16, torch.float16)
        if low and (steps is None or steps <= cls.MAX_LOW_PRECISION_STEPS):
            dtype = weight.dtype
        else:
            dtype = compute_dtype(weight.dtype)
        return torch.zeros(weight.shape, dtype=dtype, device=weight.device)

    @staticmethod
    def finish_weight_grad(acc: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The accumulated weight gradient in the weight's dtype (no copy when it already is)."""
        return acc if acc.dtype == weight.dtype else acc.to(weight.dtype)

    def _add_weight_grad_low_precision(self, grad_weight: torch.Tensor, dz: torch.Tensor, h: torch.Tensor) -> None:
        """grad_weight (bf16/fp16) += dz^T h with the chunk's sum in fp32 and one rounding per element."""
        if self.out_dtype_mm and dz.dtype == grad_weight.dtype:
            # cuBLAS: C = A B + C with fp32 compute; C is read, added in fp32 and rounded once.
            grad_weight.addmm_(dz.T, h.to(dz.dtype))
            return
        hc = h.to(torch.float32 if dz.dtype != torch.float64 else dz.dtype)
        dzc = dz.to(hc.dtype)
        for v0 in range(0, grad_weight.shape[0], self._ACC_BLOCK_ROWS):
            block = grad_weight[v0:v0 + self._ACC_BLOCK_ROWS]
            part = torch.mm(dzc[:, v0:v0 + block.shape[0]].T, hc)
            part += block
            block.copy_(part)

    def backprop_chunk(self, grad_logits: torch.Tensor, h: torch.Tensor, grad_hidden: torch.Tensor | None,
                       grad_weight: torch.Tensor | None, grad_bias: torch.Tensor | None) -> None:
        """Adds a chunk's contribution: grad_hidden = dZ W (written), grad_weight += dZ^T h, grad_bias += sum dZ.

        grad_weight is fp32/fp64, or bf16/fp16 from `new_weight_grad_accumulator` (fp32 sums, one
        rounding per chunk)."""
        dz = grad_logits if not self.out_dtype_mm else grad_logits.to(self.gemm_dtype)
        if grad_hidden is not None:
            if grad_hidden.dtype == dz.dtype:
                torch.mm(dz, self.weight, out=grad_hidden)
            else:
                grad_hidden.copy_(torch.mm(dz, self.weight))
        if grad_weight is not None and grad_weight.dtype in (torch.bfloat16, torch.float16):
            self._add_weight_grad_low_precision(grad_weight, dz, h)
        elif grad_weight is not None:
            hc = h.to(dz.dtype)
            if self.out_dtype_mm:
                try:  # accumulate in place in fp32 where torch has the out= form
                    torch.addmm(grad_weight, dz.T, hc, out_dtype=torch.float32, out=grad_weight)
                except (TypeError, RuntimeError, NotImplementedError):
                    grad_weight += torch.mm(dz.T, hc, out_dtype=torch.float32)
            else:
                grad_weight.addmm_(dz.T, hc)
        if grad_bias is not None:
            grad_bias += grad_logits.sum(0, dtype=grad_bias.dtype)


def _real_or_none(value) -> float | None:
    try:
        return checks.real_number("value", value)
    except ValueError:
        return None


@dataclass(frozen=True)
class LogitTransform:
    """A model's own logit transform, logits = softcap * tanh(scale * z / softcap) (Gemma soft-caps
    its logits, Cohere scales them; without a cap, logits = scale * z), applied by the driver to
    each chunk in place before the row pass, and its derivative to the chunk's gradient after it.
    With a cap and gradients wanted, a chunk's tanh is kept for backward: one more chunk buffer."""

    scale: float = 1.0
    softcap: float | None = None

    @classmethod
    def of(cls, logit_scale, softcap, dtype: torch.dtype = torch.float32) -> "LogitTransform | None":
        """Validated settings (in the float32 range for a float32 compute dtype), or None for the identity."""
        scale = 1.0
        if logit_scale is not None:
            scale = _real_or_none(logit_scale)
            if scale is None or not math.isfinite(scale) or scale == 0:
                raise ValueError(f"logit_scale must be a finite nonzero number, got {logit_scale!r}")
            checks.require_float32_range("logit_scale", scale, dtype)
        if softcap is not None:
            cap = _real_or_none(softcap)
            if cap is None or not math.isfinite(cap) or cap <= 0:
                raise ValueError(f"softcap must be a finite number > 0, got {softcap!r}")
            softcap = checks.require_float32_range("softcap", cap, dtype, reciprocal=True,
                                                   why=" (logits are divided by softcap)")
        return None if scale == 1.0 and softcap is None else cls(scale, softcap)

    def forward(self, z: torch.Tensor, keep: bool) -> torch.Tensor | None:
        """z <- the transformed logits; returns what backward needs (tanh of the chunk) if `keep`."""
        if self.scale != 1.0:
            z.mul_(self.scale)
        if self.softcap is None:
            return None
        z.div_(self.softcap).tanh_()
        saved = z.clone() if keep else None
        z.mul_(self.softcap)
        return saved

    def backward(self, dz: torch.Tensor, saved: torch.Tensor | None) -> None:
        """dz (the gradient of the transformed logits) <- the gradient of the GEMM's logits."""
        if self.softcap is not None:
            dz.mul_(saved.mul_(saved).neg_().add_(1.0))  # d softcap tanh(u / softcap) / du = 1 - tanh^2
        if self.scale != 1.0:
            dz.mul_(self.scale)


class ChunkDriver:
    """Runs an op's row pass over the LM-head logits of `hidden` [N, H], one chunk of rows at a time.

    `needs` says which of (hidden, weight, bias) get gradients. The driver allocates them: hidden's
    in hidden's dtype (each chunk writes its own rows); the bias's accumulated over chunks in fp32
    (fp64 for float64 inputs; deterministic, no atomics); the weight's by
    `LMHead.new_weight_grad_accumulator` once the number of chunks is known: in a bf16/fp16
    weight's own dtype (each chunk summed in fp32, one rounding per chunk) for up to
    LMHead.MAX_LOW_PRECISION_STEPS chunks, so that no fp32 [V, H] buffer exists; else in fp32.
    """

    def __init__(self, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, rows: int,
                 needs: tuple[bool, bool, bool] = (False, False, False), transform: LogitTransform | None = None):
        self.hidden, self.weight, self.bias, self.rows = hidden, weight, bias, rows
        self.transform = transform
        self.head = LMHead.prepare(weight, bias)
        need_h, self._need_w, need_b = needs
        acc = self.head.logits_dtype
        self.grad_hidden = torch.empty_like(hidden) if need_h else None
        self.grad_weight = None  # allocated by run(), which knows the number of chunks
        self.grad_bias = torch.zeros(bias.shape, dtype=acc, device=bias.device) if need_b and bias is not None else None

    @property
    def dtype(self) -> torch.dtype:
        """The logits' dtype: fp32, or fp64 for float64 inputs."""
        return self.head.logits_dtype

    @property
    def wants_grads(self) -> bool:
        return self._need_w or self.grad_hidden is not None or self.grad_bias is not None

    def even_spans(self) -> list[tuple[int, int]]:
        n = self.hidden.shape[0]
        return [(start, min(start + self.rows, n)) for start in range(0, n, self.rows)]

    def run(self, row_pass, spans: list[tuple[int, int]] | None = None, backprop: bool = True) -> None:
        """For each span [start, stop) of rows (default: chunks of `rows`), `row_pass(z, start, stop)`
        gets the chunk's logits z [stop - start, V]; with `backprop` and gradients wanted, z must
        then hold dloss/dlogits, which the driver turns into the chunk's gradients. z is released
        before the next chunk's GEMM: one chunk of logits exists at a time."""
        spans = [(a, b) for a, b in (self.even_spans() if spans is None else spans) if b > a]
        if backprop and self._need_w and self.grad_weight is None:
            self.grad_weight = self.head.new_weight_grad_accumulator(self.weight, steps=len(spans))
        for start, stop in spans:
            if stop == start:
                continue
            h = self.hidden[start:stop]
            z = self.head.logits(h)
            grads_here = backprop and self.wants_grads
            saved = None if self.transform is None else self.transform.forward(z, keep=grads_here)
            row_pass(z, start, stop)
            if grads_here:
                if self.transform is not None:
                    self.transform.backward(z, saved)
                gh = None if self.grad_hidden is None else self.grad_hidden[start:stop]
                self.head.backprop_chunk(z, h, gh, self.grad_weight, self.grad_bias)
            del z, saved

    def grads(self) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """(grad_hidden, grad_weight, grad_bias), the last two cast to the weight's / bias's dtype."""
        if self._need_w and self.grad_weight is None:  # no row to backprop: a zero gradient
            self.grad_weight = self.head.new_weight_grad_accumulator(self.weight, steps=0)
        gw = None if self.grad_weight is None else LMHead.finish_weight_grad(self.grad_weight, self.weight)
        gb = None if self.grad_bias is None else self.grad_bias.to(self.bias.dtype)
        return self.grad_hidden, gw, gb
