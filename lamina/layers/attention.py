"""Attention maths shared by every family: masks from positions, and the eager / sdpa / flash
backends behind one call.

Masks are composed from predicates over absolute positions: causal (key ≤ query), sliding
(key > query − window), written (key ≥ 0, for ring-buffer slots not yet filled) and padding
(the 2-D attention mask at the key's position). They are additive with `finfo(dtype).min`, so a
row whose keys are all masked (a left-padding query) softmaxes to a uniform row, never NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import kernels


def build_attention_mask(
    query_positions: torch.Tensor,
    key_positions: torch.Tensor,
    padding_mask: torch.Tensor | None,
    window: int | None,
    dtype: torch.dtype,
    causal: bool = True,
) -> torch.Tensor:
    """Additive mask `(batch or 1, 1, queries, keys)`.

    `query_positions (q,)` and `key_positions (k,)` are absolute sequence indices (-1: empty slot),
    shared by every row; or `(batch, q)` and `(batch, k)`, each row's own (rows of a continuous
    batch sit at different positions); `padding_mask (batch, length)` is 1 for real tokens, indexed
    by key position.
    """
    q = query_positions.unsqueeze(-1)
    k = key_positions.unsqueeze(-2)
    allowed = k >= 0
    if causal:
        allowed = allowed & (k <= q)
    if window is not None:
        allowed = allowed & (k > q - window)
    if allowed.dim() == 2:
        allowed = allowed[None]
    if padding_mask is not None:
        index = key_positions.clamp(0, padding_mask.shape[1] - 1).expand(padding_mask.shape[0], -1)
        allowed = allowed & padding_mask.gather(1, index).bool()[:, None, :]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(batch, kv_heads, seq, dim) → (batch, kv_heads * groups, seq, dim)."""
    if groups == 1:
        return x
    batch, heads, seq, dim = x.shape
    return x[:, :, None].expand(batch, heads, groups, seq, dim).reshape(batch, heads * groups, seq, dim)


def attend(
    backend: str,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    dropout: float = 0.0,
    is_causal: bool = False,
    upcast: bool = False,
    need_weights: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scaled dot-product attention over `(batch, heads, seq, dim)` tensors, GQA included.

    Returns the output `(batch, heads, q, dim)` and, for eager or when `need_weights`, the
    probabilities `(batch, heads, q, k)`. `upcast` computes scores and softmax in fp32 (GPT-2's
    `reorder_and_upcast_attn`).
    """
    groups = query.shape[1] // key.shape[1]
    # one query over a cache, one mask for every head (a per-head bias, as MegatronBERT's relative
    # positions, goes to SDPA)
    if query.shape[2] == 1 and mask is not None and mask.dim() == 4 and mask.shape[1] == 1 \
            and not need_weights and not upcast and not dropout and query.device.type == "cpu" \
            and not (torch.is_grad_enabled() and query.requires_grad) \
            and not torch.is_autocast_enabled("cpu"):  # autocast's SDPA picks the dtypes, as transformers'
        out = _single_query_attention(query, key, value, mask, scale)
        if out is not None:
            return out, None
    if backend != "eager" and not need_weights and not upcast:
        if backend == "flash_attention_2" and mask is None:
            from flash_attn import flash_attn_func

            out = flash_attn_func(
                query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                dropout_p=dropout, softmax_scale=scale, causal=is_causal,
            )
            return out.transpose(1, 2), None
        # sdpa, and flash-attention's padded or windowed calls, which PyTorch routes to its own
        # fused CUDA kernels when the mask allows
        out = F.scaled_dot_product_attention(
            query, key, value, attn_mask=mask, dropout_p=dropout, is_causal=is_causal and mask is None,
            scale=scale, enable_gqa=groups > 1,
        )
        return out, None
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    if upcast:
        scores = torch.matmul(query.float(), key.float().transpose(2, 3)) * scale
    else:
        scores = torch.matmul(query, key.transpose(2, 3)) * scale
    if mask is not None:
        scores = scores + mask.to(scores.dtype) if upcast else scores + mask
    elif is_causal:
        q_len, k_len = scores.shape[-2:]
        causal = torch.ones(q_len, k_len, dtype=torch.bool, device=scores.device).tril(k_len - q_len)
        scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    if dropout:
        probs = F.dropout(probs, p=dropout, training=True)
    return torch.matmul(probs, value), probs


def _single_query_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor, scale: float
) -> torch.Tensor | None:
    """One query per row against a cache on the CPU (a decode step), in float32; None where the
    caller's SDPA does better (eager, without lamina's kernel).

    lamina's kernel (`lamina.kernels`' `decode_attention`) reads only the slots the mask lets
    through, the tokens so far rather than the cache's capacity. Without it, under `torch.compile`,
    two float32 matmuls with the softmax fused between them by inductor (on a CPU without AVX-512
    the fused SDPA kernel and bf16 batched matmuls are slower; bench/RESULTS.md).
    `query (batch, heads, 1, dim)`, `key/value (batch, kv_heads, slots, dim)`, `mask (batch or 1, 1, 1, slots)`.
    """
    batch, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    ops = kernels.loaded()
    if ops is not None and key.dtype in (torch.float32, torch.bfloat16) and key.is_contiguous() \
            and value.is_contiguous():
        out = ops.decode_attention(query.reshape(batch, heads, dim).float().contiguous(), key, value,
                                   mask.reshape(mask.shape[0], -1).float().contiguous(), scale)
        return out.reshape(batch, heads, 1, dim).to(value.dtype)
    if not torch.compiler.is_compiling():
        return None
    grouped = query.reshape(batch, kv_heads, heads // kv_heads, dim).float()
    scores = torch.matmul(grouped, key.float().transpose(2, 3)) * scale  # (batch, kv_heads, groups, slots)
    probs = torch.softmax(scores + mask.reshape(mask.shape[0], 1, 1, -1).float(), dim=-1)
    out = torch.matmul(probs, value.float())  # (batch, kv_heads, groups, dim)
    return out.reshape(batch, heads, 1, dim).to(value.dtype)
