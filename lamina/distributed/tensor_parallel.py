"""Tensor and expert parallel plans: which layers split how, applied to a model built on the meta
device before its checkpoint is read, so each rank only ever holds its own part.

```
            replicated ──copy_to──► column-parallel ──► local heads / rows ──► row-parallel ──reduce_from──► replicated
 x (b,s,H)              qkv_proj, gate_up_proj,       attention per head,     o_proj, down_proj
                        up_proj (this rank's rows)    activation per row      (this rank's columns)
```

- Attention: each rank takes `heads / N` query heads and their key/value heads from the fused
  q/k/v projection (GQA groups kept together); with more ranks than key/value heads, each is
  replicated on the `N / kv_heads` ranks whose query heads read it (their gradients summed).
- MLP: gate and up rows split alike (the fused halves each cut), down's columns to match.
- Mixtral's experts: every expert's intermediate rows split over `tp`, whole experts over `ep`
  (`layers.ParallelExperts`); the router stays whole on every rank.
- Embedding and LM head: the vocabulary split over `tp` (padded to a multiple of N); a greedy
  `generate` picks its tokens from the ranks' shares of the logits (`vocabulary_shards`).
- Quantized layers (int8 / int4 / nf4; a quantized checkpoint's, or quantized as they load): the
  column and vocabulary splits take whole rows with their scales and minimums, the row splits
  whole groups of inputs (`quantization.linear.input_block`; a split that would cut one is
  refused); int8 rows quantized on split ranks take their scale from the whole row (an all-reduce
  of each row's largest magnitude). Mixtral's experts split in full precision only.
- Encoders (MegatronBERT, MobileBERT): heads split in q/k/v (fused or not), the attention's output
  dense by columns; each feed-forward's intermediate dense by rows, its output dense by columns.
  Their embeddings and heads stay whole (MobileBERT's MLM head joins the tied table to its own).
- Norms, positions, task heads: whole on every rank.

`TensorParallel.merge(name, merge, sources)` builds this rank's part of a parameter from the
checkpoint tensors a name-map rule joins, as the load maps them: a concatenation (fused q/k/v,
gate/up) or a stack of experts is cut in its sources, so only this rank's rows, columns and
experts of the memory-mapped files are read (other rules are cut after they are applied).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from ..checkpoints.io import owned_copy
from ..checkpoints.namemap import Concatenated, Stacked
from ..errors import ConfigError, UnsupportedError
from ..layers.mlp import GatedMLP, PlainMLP
from ..layers.moe import Experts, SparseMoE
from ..quantization.apply import experts_method, layer_method
from ..quantization.config import QuantizationConfig
from ..quantization.linear import QuantizedLinear, input_block, new_layer
from .layers import (COLUMN_FORMS, ROW_FORMS, VOCAB_FORMS, ColumnParallelLinear, ParallelExperts, RowParallelLinear,
                     VocabParallel, VocabParallelEmbedding, VocabParallelHead)
from .runtime import Groups

Ranges = tuple[tuple[int, int], ...]  # (start, length) pairs along one dimension


@dataclass(frozen=True)
class Shard:
    """The part of a full tensor one rank holds: along each `(dim, ranges)` of `cuts` the
    concatenation of those ranges, then zero rows up to `padded` rows (vocabulary shards)."""

    cuts: tuple[tuple[int, Ranges], ...]
    padded: int | None = None

    def take(self, full: torch.Tensor) -> torch.Tensor:
        return self._own(_cut(full, self.cuts))

    def take_merged(self, merge: Callable[[list[torch.Tensor]], torch.Tensor], sources: list[torch.Tensor]) -> torch.Tensor:
        """The same part of `merge(sources)`, cut from the sources before they are joined where the
        merge is a concatenation or a stack of experts: only those rows of the (memory-mapped)
        sources are read."""
        return self._own(_cut_merge(self.cuts, merge, sources))

    def _own(self, part: torch.Tensor) -> torch.Tensor:
        if self.padded is not None and part.shape[0] < self.padded:
            part = torch.cat([part, part.new_zeros(self.padded - part.shape[0], *part.shape[1:])])
        # its own storage, copied a block at a time: the file's pages behind it are released as it goes
        return owned_copy(part)


def _cut(tensor: torch.Tensor, cuts: tuple[tuple[int, Ranges], ...]) -> torch.Tensor:
    for dim, ranges in cuts:
        pieces = [tensor.narrow(dim, start, length) for start, length in ranges]
        tensor = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim)
    return tensor


def _cut_merge(cuts: tuple[tuple[int, Ranges], ...], merge: Callable[[list[torch.Tensor]], torch.Tensor],
               sources: list[torch.Tensor]) -> torch.Tensor:
    if isinstance(merge, Concatenated):
        along = dict(cuts).get(merge.dim)
        rest = tuple((dim, ranges) for dim, ranges in cuts if dim != merge.dim)
        pieces = sources if along is None else _pieces(sources, merge.dim, along)
        return torch.cat([_cut(piece, rest) for piece in pieces], merge.dim)
    if isinstance(merge, Stacked):
        experts = merge.group(sources)
        chosen = dict(cuts).get(0, ((0, len(experts)),))
        inner_cuts = tuple((dim - 1, ranges) for dim, ranges in cuts if dim != 0)
        inner = merge.inner.merge if merge.inner is not None else (lambda parts: parts[0])
        return torch.stack([_cut_merge(inner_cuts, inner, experts[expert])
                            for start, length in chosen for expert in range(start, start + length)])
    return _cut(merge(sources), cuts)


def _pieces(sources: list[torch.Tensor], dim: int, ranges: Ranges) -> list[torch.Tensor]:
    """The pieces of `sources` that `ranges` of their concatenation along `dim` cover, in order."""
    pieces = []
    for start, length in ranges:
        offset = 0
        for source in sources:
            size = source.shape[dim]
            low, high = max(start, offset), min(start + length, offset + size)
            if low < high:
                pieces.append(source.narrow(dim, low - offset, high - low))
            offset += size
    return pieces


def head_split(heads: int, kv_heads: int, ranks: int, rank: int) -> tuple[int, int, int, int]:
    """This rank's `(first query head, query heads, first kv head, kv heads)`."""
    if heads % ranks:
        raise ConfigError(f"tp_size: {ranks} ranks cannot split {heads} attention heads (expected a divisor of {heads})")
    if kv_heads % ranks and ranks % kv_heads:
        raise ConfigError(f"tp_size: {ranks} ranks can neither split nor replicate {kv_heads} key/value heads "
                          f"(expected a divisor or a multiple of {kv_heads})")
    per_rank = heads // ranks
    if kv_heads >= ranks:
        kv_per_rank = kv_heads // ranks
        return rank * per_rank, per_rank, rank * kv_per_rank, kv_per_rank
    return rank * per_rank, per_rank, rank * kv_heads // ranks, 1


def even_split(size: int, ranks: int, rank: int, what: str) -> tuple[int, int]:
    """This rank's `(start, length)` of `size` rows split evenly."""
    if size % ranks:
        raise ConfigError(f"tp_size: {ranks} ranks cannot split the {size} {what} (expected a divisor of {size})")
    length = size // ranks
    return rank * length, length


@dataclass
class GradientSum:
    """A parameter whose gradient each rank sees only in part (`rows`, or all of it for None):
    the parts are summed as the gradient arrives, over the `tp` ranks or, for replicated
    key/value heads (`kv_heads` of them in the model), over the ranks sharing this rank's."""

    name: str
    rows: Ranges | None = None
    kv_heads: int | None = None

    def hook(self, group: dist.ProcessGroup) -> Callable[[torch.Tensor], torch.Tensor]:
        def summed(grad: torch.Tensor) -> torch.Tensor:
            grad = grad.clone()
            for start, length in self.rows or ((0, grad.shape[0]),):
                part = grad[start : start + length].contiguous()
                dist.all_reduce(part, group=group)
                grad[start : start + length] = part
            return grad

        return summed


@dataclass
class TensorParallel:
    """A tensor (and expert) parallel plan over `groups`, applied to a meta-device model."""

    groups: Groups
    # the checkpoint already holds this rank's parts (`layout`): nothing to cut as it loads
    presharded: bool = False
    # how the load quantizes the model's float layers (their splits must keep its groups whole)
    quantization: QuantizationConfig | None = None
    shards: dict[str, Shard] = field(default_factory=dict)
    gradient_sums: list[GradientSum] = field(default_factory=list)
    _kv_groups: dict[int, dist.ProcessGroup] | None = None

    def local(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """This rank's part of a whole `tensor` of parameter `name` (a weight, a gradient)."""
        shard = self.shards.get(name)
        return tensor if shard is None else shard.take(tensor)

    def merge(self, name: str, merge: Callable[[list[torch.Tensor]], torch.Tensor],
              sources: list[torch.Tensor]) -> torch.Tensor:
        """This rank's part of parameter `name`, built by a name-map rule's `merge` from checkpoint `sources`."""
        shard = None if self.presharded else self.shards.get(name)
        return merge(sources) if shard is None else shard.take_merged(merge, sources)

    def apply(self, model: nn.Module) -> None:
        """Swap every splittable layer of `model` (on the meta device) for its parallel form, built
        there too: the load gives them their weights."""
        from ..modeling import skip_init_on_meta

        with torch.device("meta"), skip_init_on_meta():
            self._swap(model)

    def _swap(self, model: nn.Module) -> None:
        from ..models.decoder import DecoderAttention, DecoderForCausalLM, DecoderModel
        from ..models.megatron_bert import MegatronBertAttention, MegatronBertLayer
        from ..models.mobilebert import FFNLayer, MobileBertAttention, MobileBertLayer

        for name, module in list(model.named_modules()):
            prefix = name + "." if name else ""
            if isinstance(module, (MegatronBertAttention, MobileBertAttention)):
                self._encoder_attention(prefix, module)
            elif isinstance(module, (MegatronBertLayer, MobileBertLayer, FFNLayer)):
                self._encoder_feed_forward(prefix, module)
            elif isinstance(module, DecoderAttention):
                self._attention(prefix, module)
            elif isinstance(module, (GatedMLP, PlainMLP)):
                self._mlp(prefix, module)
            elif isinstance(module, SparseMoE):
                self._experts(prefix + "experts.", module)
            if isinstance(module, DecoderModel):
                self._embedding(prefix, module, "embed_tokens")
                self._local_spec(module)
            if isinstance(module, DecoderForCausalLM):
                self._vocab_head(prefix, module, "lm_head")

    def finish(self, model: nn.Module) -> None:
        """After the load: gradient sums hooked on, lamina's native CPU step (which knows nothing of
        ranks) off, the plan kept as `model.parallel_plan`, the model on this rank's device."""
        model.to(self.groups.device)
        for entry in self.gradient_sums:
            group = self.groups.tp if entry.kv_heads is None else self._kv_group(entry.kv_heads)
            parameter = model.get_parameter(entry.name)
            if parameter.requires_grad:  # quantized weights are frozen
                parameter.register_hook(entry.hook(group))
        model.native_decode = False
        model.parallel_plan = self

    @contextmanager
    def vocabulary_shards(self, model: nn.Module) -> Iterator[Callable[[torch.Tensor], torch.Tensor] | None]:
        """Inside, `model`'s output layer hands back this rank's share of the logits `(batch, …,
        rows)`, and the function yielded picks each row's greedy token `(batch,)` from the last
        position's `(batch, rows)` (None where the output layer is whole): a greedy `generate`
        then never gathers the vocabulary's logits."""
        heads = [module for module in model.modules() if isinstance(module, VocabParallel)]
        for head in heads:
            head.gather = False
        try:
            yield heads[-1].greedy if heads else None
        finally:
            for head in heads:
                head.gather = True

    # -- the splits ------------------------------------------------------------------------------

    def column(self, prefix: str, layer: nn.Module, ranges: Ranges) -> nn.Module:
        """This rank's output `ranges` of `layer` (a `Linear`, or a quantized checkpoint's layer: whole
        rows with their scales)."""
        width = sum(length for _, length in ranges)
        if isinstance(layer, QuantizedLinear):
            self._cut_rows(prefix, layer, Shard(((0, ranges),)))
            return _split_quantized(layer, COLUMN_FORMS, layer.in_features, width, group=self.groups.tp)
        self._cut(prefix, layer.bias is not None, Shard(((0, ranges),)), Shard(((0, ranges),)))
        return ColumnParallelLinear(layer.in_features, width, layer.bias is not None, group=self.groups.tp)

    def row(self, prefix: str, layer: nn.Module, ranges: Ranges) -> nn.Module:
        """This rank's input `ranges` of `layer` (a `Linear`, or a quantized checkpoint's layer: its
        codes, scales and minimums of those inputs' groups), cut only at its groups' boundaries."""
        width = sum(length for _, length in ranges)
        self._check_groups(prefix[:-1], layer, ranges)
        if isinstance(layer, QuantizedLinear):
            for name, tensor in layer.named_parameters(recurse=False):
                if tensor.dim() == 2:  # codes (two a byte for 4 bits), a scale or minimum a group
                    per_column = layer.in_features // tensor.shape[1]
                    self.shards[prefix + name] = Shard(((1, tuple((start // per_column, length // per_column)
                                                                  for start, length in ranges)),))
            return _split_quantized(layer, ROW_FORMS, width, layer.out_features, group=self.groups.tp)
        self.shards[prefix + "weight"] = Shard(((1, ranges),))
        return RowParallelLinear(width, layer.out_features, layer.bias is not None, group=self.groups.tp)

    def _check_groups(self, name: str, layer: nn.Module, ranges: Ranges) -> None:
        """Refuse a split of `layer`'s inputs that cuts one of the blocks it is quantized in
        (`quantization.linear.input_block`): that rank's part would compute something else."""
        if isinstance(layer, QuantizedLinear):
            method, group_size = layer.method, getattr(layer, "group_size", 0)
        elif self.quantization is not None:
            method = layer_method(self.quantization, name, layer.in_features)
            group_size = self.quantization.group_size
        else:
            return
        block = 0 if method is None else input_block(method, group_size)
        if not block or layer.in_features % block:
            return
        for start, length in ranges:
            if start % block or length % block:
                raise ConfigError(f"tp_size: {self.groups.tp_size} ranks would cut the groups of {name} ({method}, "
                                  f"{layer.in_features} inputs in groups of {block}): rank {self.groups.tp_rank} "
                                  f"would hold inputs [{start}, {start + length})")

    def _cut_rows(self, prefix: str, layer: QuantizedLinear, shard: Shard) -> None:
        """Every tensor of a quantized `layer` with a row per output (codes, scales, minimums, bias) cut by `shard`."""
        for name, tensor in layer.named_parameters(recurse=False):
            if tensor.shape[0] == layer.out_features:
                self.shards[prefix + name] = shard

    def replicated_inside(self, prefix: str, module: nn.Module) -> None:
        """A module whole on every rank but used inside the split (per-head norms): its gradient sums the ranks'."""
        for name, _ in module.named_parameters():
            self.gradient_sums.append(GradientSum(prefix + name))

    def vocab_rows(self, vocab_size: int) -> tuple[int, int, Shard]:
        """This rank's `(first row, rows)` of a vocabulary padded to a multiple of the ranks, and its shard."""
        ranks, rank = self.groups.tp_size, self.groups.tp_rank
        rows = -(-vocab_size // ranks)
        start = min(rank * rows, vocab_size)
        return start, rows, Shard(((0, ((start, min(rows, vocab_size - start)),)),), padded=rows)

    def _cut(self, prefix: str, has_bias: bool, weight: Shard, bias: Shard) -> None:
        self.shards[prefix + "weight"] = weight
        if has_bias:
            self.shards[prefix + "bias"] = bias

    def _attention(self, prefix: str, attn: nn.Module) -> None:
        heads, kv_heads, dim = attn.num_heads, attn.num_kv_heads, attn.head_dim
        ranks = self.groups.tp_size
        q_start, q_count, kv_start, kv_count = head_split(heads, kv_heads, ranks, self.groups.tp_rank)
        ranges = ((q_start * dim, q_count * dim), ((heads + kv_start) * dim, kv_count * dim),
                  ((heads + kv_heads + kv_start) * dim, kv_count * dim))
        attn.qkv_proj = self.column(prefix + "qkv_proj.", attn.qkv_proj, ranges)
        attn.o_proj = self.row(prefix + "o_proj.", attn.o_proj, ((q_start * dim, q_count * dim),))
        attn.num_heads, attn.num_kv_heads = q_count, kv_count
        for norm in ("q_norm", "k_norm"):
            if getattr(attn, norm, None) is not None:
                self.replicated_inside(prefix + norm + ".", getattr(attn, norm))
        if kv_heads < ranks:  # replicated key/value heads: each sharing rank holds part of their gradient
            kv_rows = ((q_count * dim, 2 * dim),)
            for kind in ("weight", "bias") if attn.qkv_proj.bias is not None else ("weight",):
                self.gradient_sums.append(GradientSum(prefix + "qkv_proj." + kind, kv_rows, kv_heads))

    def _local_spec(self, decoder: nn.Module) -> None:
        """The decoder's spec as this rank runs it, with its share of the heads: what sizes the
        caches made for it (the server's block pool)."""
        spec = decoder.decoder_spec
        _, heads, _, kv_heads = head_split(spec.num_heads, spec.num_kv_heads, self.groups.tp_size, self.groups.tp_rank)
        decoder.decoder_spec = dataclasses.replace(spec, num_heads=heads, num_kv_heads=kv_heads)

    def _encoder_attention(self, prefix: str, block: nn.Module) -> None:
        """BERT-style attention: `self` (q/k/v, one fused projection or three) and `output.dense`."""
        attn = block.self
        start, count = even_split(attn.num_heads, self.groups.tp_size, self.groups.tp_rank, "attention heads")
        dim, width = attn.head_dim, attn.num_heads * attn.head_dim
        own = (start * dim, count * dim)
        inner = prefix + "self."
        if attn.fused:
            attn.qkv = self.column(inner + "qkv.", attn.qkv, tuple((part * width + own[0], own[1]) for part in range(3)))
        else:
            for name in ("query", "key", "value"):
                setattr(attn, name, self.column(f"{inner}{name}.", getattr(attn, name), (own,)))
        attn.num_heads = count
        if getattr(attn, "distance_embedding", None) is not None:
            self.replicated_inside(inner + "distance_embedding.", attn.distance_embedding)
        block.output.dense = self.row(prefix + "output.dense.", block.output.dense, (own,))

    def _encoder_feed_forward(self, prefix: str, block: nn.Module) -> None:
        """`intermediate.dense` by rows, `output.dense` by columns."""
        dense = block.intermediate.dense
        own = even_split(dense.out_features, self.groups.tp_size, self.groups.tp_rank, "intermediate rows")
        block.intermediate.dense = self.column(prefix + "intermediate.dense.", dense, (own,))
        block.output.dense = self.row(prefix + "output.dense.", block.output.dense, (own,))

    def _kv_group(self, kv_heads: int) -> dist.ProcessGroup:
        """The ranks sharing this rank's key/value head (every rank creates every such group)."""
        if self._kv_groups is None:
            mesh, sharing = self.groups.mesh.mesh.reshape(self.groups.ep_size, -1), self.groups.tp_size // kv_heads
            self._kv_groups = {}
            for ep_row in mesh.tolist():
                for head in range(kv_heads):
                    ranks = ep_row[head * sharing : (head + 1) * sharing]
                    group = dist.new_group(ranks)
                    if dist.get_rank() in ranks:
                        self._kv_groups[head] = group
        return self._kv_groups[self.groups.tp_rank * kv_heads // self.groups.tp_size]

    def _mlp(self, prefix: str, mlp: nn.Module) -> None:
        ranks, rank = self.groups.tp_size, self.groups.tp_rank
        if isinstance(mlp, GatedMLP):
            size = mlp.gate_up_proj.out_features // 2
            start, length = even_split(size, ranks, rank, "intermediate rows")
            mlp.gate_up_proj = self.column(prefix + "gate_up_proj.", mlp.gate_up_proj,
                                           ((start, length), (size + start, length)))
        else:
            size = mlp.up_proj.out_features
            start, length = even_split(size, ranks, rank, "intermediate rows")
            mlp.up_proj = self.column(prefix + "up_proj.", mlp.up_proj, ((start, length),))
        mlp.down_proj = self.row(prefix + "down_proj.", mlp.down_proj, ((start, length),))

    def _experts(self, prefix: str, moe: SparseMoE) -> None:
        experts = moe.experts
        if not isinstance(experts, Experts) or (
                self.quantization is not None and experts_method(prefix[:-1], experts, self.quantization) is not None):
            raise UnsupportedError(f"tp_plan: {prefix[:-1]}: quantized experts are not split over ranks; keep them in "
                                   "full precision (quantization_config modules_to_not_convert=['experts'])")
        count, hidden, size = experts.down_proj.shape
        groups = self.groups
        if count % groups.ep_size:
            raise ConfigError(f"ep_size: {groups.ep_size} ranks cannot share {count} experts (expected a divisor of {count})")
        local = count // groups.ep_size
        start, length = even_split(size, groups.tp_size, groups.tp_rank, "intermediate rows of each expert")
        whole = ((0, ((groups.ep_rank * local, local),)),)
        self.shards[prefix + "gate_up_proj"] = Shard((*whole, (1, ((start, length), (size + start, length)))))
        self.shards[prefix + "down_proj"] = Shard((*whole, (2, ((start, length),))))
        moe.experts = ParallelExperts(local, hidden, length, experts.act_name, groups)

    def _embedding(self, prefix: str, owner: nn.Module, attr: str) -> None:
        table: nn.Embedding = getattr(owner, attr)
        start, rows, shard = self.vocab_rows(table.num_embeddings)
        self.shards[f"{prefix}{attr}.weight"] = shard
        setattr(owner, attr, VocabParallelEmbedding(rows, table.embedding_dim, start, table.padding_idx, self.groups.tp))

    def _vocab_head(self, prefix: str, owner: nn.Module, attr: str) -> None:
        head = getattr(owner, attr)
        start, rows, shard = self.vocab_rows(head.out_features)
        split = {"group": self.groups.tp, "vocab_size": head.out_features, "start": start}
        if isinstance(head, QuantizedLinear):
            self._cut_rows(f"{prefix}{attr}.", head, shard)
            setattr(owner, attr, _split_quantized(head, VOCAB_FORMS, head.in_features, rows, **split))
            return
        self._cut(f"{prefix}{attr}.", head.bias is not None, shard, shard)
        setattr(owner, attr, VocabParallelHead(head.in_features, rows, head.bias is not None, **split))


def _split_quantized(layer: QuantizedLinear, forms: dict[str, type[QuantizedLinear]], in_features: int,
                     out_features: int, **split: object) -> QuantizedLinear:
    """An empty `in_features` → `out_features` part of the quantized `layer`, of its method's class in `forms`."""
    return new_layer(layer.method, in_features, out_features, getattr(layer, "group_size", 0), layers=forms,
                     bias=layer.bias is not None, compute_dtype=layer.compute_dtype, **split)
