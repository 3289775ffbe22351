"""The sparse mixture-of-experts block (Mixtral): softmax router in fp32, top-k, renormalised
weights, and dispatch that groups tokens per expert.

Experts are stored stacked: `gate_up_proj (E, 2I, H)` and `down_proj (E, H, I)`. With few routed
tokens (decoding) the chosen experts' weights are gathered and applied with one `bmm`; with many
(prefill, training) tokens are sorted by expert and each expert runs once on a contiguous slice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .mlp import activation

# below this many (token, expert) pairs, gathering weights per pair is cheaper than grouping
GATHER_LIMIT = 8


def grouped(expert, num_experts: int, x: torch.Tensor, expert_ids: torch.Tensor) -> torch.Tensor:
    """`x (pairs, H)` each through its expert `expert_ids (pairs,)`: pairs sorted by expert, and
    `expert(index, rows)` run once for each expert over its contiguous slice."""
    order = torch.argsort(expert_ids, stable=True)
    counts = torch.bincount(expert_ids, minlength=num_experts).tolist()
    out = torch.empty_like(x)
    sorted_x = x[order]
    results = []
    start = 0
    for index, count in enumerate(counts):
        if count:
            results.append(expert(index, sorted_x[start : start + count]))
        start += count
    out[order] = torch.cat(results)
    return out


def combine(run, x: torch.Tensor, top_index: torch.Tensor, top_weight: torch.Tensor) -> torch.Tensor:
    """`x (tokens, H)` through `run(pairs_x, pair_expert_ids)` for each of its (token, expert) pairs,
    weighted by `top_weight (tokens, k)` and summed per token."""
    tokens, k = top_index.shape
    pair_out = run(x.repeat_interleave(k, dim=0), top_index.reshape(-1)) * top_weight.reshape(-1, 1)
    return pair_out.view(tokens, k, -1).sum(dim=1).to(x.dtype)


class Experts(nn.Module):
    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int, act: str) -> None:
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * intermediate_size, hidden_size))
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden_size, intermediate_size))
        self.act_name = act
        self.act = activation(act)

    def expert(self, index: int, x: torch.Tensor) -> torch.Tensor:
        gate, up = F.linear(x, self.gate_up_proj[index]).chunk(2, dim=-1)
        return F.linear(self.act(gate) * up, self.down_proj[index])

    def gathered(self, x: torch.Tensor, expert_ids: torch.Tensor) -> torch.Tensor:
        """`x (pairs, H)` each through its own expert `expert_ids (pairs,)`, in one bmm each way."""
        gate, up = torch.bmm(self.gate_up_proj[expert_ids], x[:, :, None]).squeeze(-1).chunk(2, dim=-1)
        return torch.bmm(self.down_proj[expert_ids], (self.act(gate) * up)[:, :, None]).squeeze(-1)

    def grouped(self, x: torch.Tensor, expert_ids: torch.Tensor) -> torch.Tensor:
        """Sort pairs by expert and run each expert once over its contiguous slice."""
        return grouped(self.expert, self.gate_up_proj.shape[0], x, expert_ids)

    def forward(self, x: torch.Tensor, top_index: torch.Tensor, top_weight: torch.Tensor) -> torch.Tensor:
        """`x (tokens, H)`, `top_index/top_weight (tokens, k)` → weighted sum of expert outputs."""
        # grouping counts the pairs per expert on the host: not under torch.compile
        few = top_index.numel() <= GATHER_LIMIT or torch.compiler.is_compiling()
        run = self.gathered if few else self.grouped
        return combine(run, x, top_index, top_weight)


class SparseMoE(nn.Module):
    """Router + experts. `forward(x (batch, seq, H))` → `(output, router_logits (batch*seq, E))`."""

    def __init__(
        self, hidden_size: int, intermediate_size: int, num_experts: int, top_k: int, act: str, jitter: float = 0.0
    ) -> None:
        super().__init__()
        self.top_k = top_k
        self.jitter = jitter
        self.gate = nn.Linear(hidden_size, num_experts, bias=False)
        self.experts = Experts(num_experts, hidden_size, intermediate_size, act)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.gate(x)
        probs = torch.softmax(logits.float(), dim=-1)
        top_weight, top_index = torch.topk(probs, self.top_k, dim=-1)
        return logits, top_weight / top_weight.sum(dim=-1, keepdim=True), top_index

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, seq, hidden = x.shape
        if self.training and self.jitter > 0:
            x = x * torch.empty_like(x).uniform_(1.0 - self.jitter, 1.0 + self.jitter)
        flat = x.reshape(-1, hidden)
        logits, top_weight, top_index = self.route(flat)
        return self.experts(flat, top_index, top_weight).view(batch, seq, hidden), logits


def load_balancing_loss(
    router_logits: tuple[torch.Tensor, ...], num_experts: int, top_k: int, attention_mask: torch.Tensor | None
) -> torch.Tensor:
    """Switch-Transformer auxiliary loss over all layers, padding excluded through the mask.

    Per expert: the share of (token, slot) assignments it receives times the mean router
    probability it gets, summed and scaled by the expert count.
    """
    device = router_logits[0].device
    weights = None if attention_mask is None else attention_mask.reshape(-1).to(device, torch.float32)
    assigned = torch.zeros(num_experts, device=device)
    prob_sum = torch.zeros(num_experts, device=device)
    rows = torch.zeros((), device=device)
    for logits in router_logits:
        probs = torch.softmax(logits.float(), dim=-1)
        chosen = torch.topk(probs, top_k, dim=-1).indices.reshape(-1)
        token_weight = torch.ones(probs.shape[0], device=device) if weights is None else weights
        assigned = assigned.scatter_add(0, chosen, token_weight.repeat_interleave(top_k))
        prob_sum = prob_sum + (probs * token_weight[:, None]).sum(dim=0)
        rows = rows + token_weight.sum()
    return torch.sum((assigned / rows) * (prob_sum / rows)) * num_experts
