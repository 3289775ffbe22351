"""Runs lamina models split over spawned gloo ranks and compares them with one process.

The test process builds each tiny model, saves it and records the one-process outputs, loss,
gradients and greedy tokens (`prepare`); `spawn` then starts the ranks once for a whole list of
cases, each rank loads every case split over the world (`tp_plan="auto"`), runs the same inputs
and writes what differed to `rank{r}.json`, which the tests read.
"""

from __future__ import annotations

import json
import os
import socket
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import lamina
from lamina.distributed.layout import save_tensor_parallel

VOCAB = 67  # not a multiple of the ranks: the vocabulary shards are padded
DECODER = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, head_dim=8, max_position_embeddings=64, pad_token_id=0, num_labels=3,
               tie_word_embeddings=False)
GPT2 = dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=0.0, pad_token_id=0, num_labels=3)
FAMILY_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "mistral": ("Mistral", {**DECODER, "sliding_window": 5}),
    "ministral": ("Ministral", {**DECODER, "sliding_window": 3, "num_hidden_layers": 3,
                                "layer_types": ["full_attention", "sliding_attention", "sliding_attention"]}),
    "mixtral": ("Mixtral", {**DECODER, "num_local_experts": 4, "num_experts_per_tok": 2, "output_router_logits": True}),
    "persimmon": ("Persimmon", {**DECODER, "num_key_value_heads": None, "qk_layernorm": True,
                                "partial_rotary_factor": 0.5, "hidden_act": "relu2"}),
    "gpt2": ("GPT2", GPT2),
    "llama": ("Llama", {**DECODER, "tie_word_embeddings": True}),
    "qwen2": ("Qwen2", {**DECODER, "num_key_value_heads": 1}),
}
ENCODER = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=24,
               max_position_embeddings=32, type_vocab_size=3, num_labels=3, hidden_dropout_prob=0.0,
               attention_probs_dropout_prob=0.0)
ENCODER_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "megatron_bert": ("MegatronBert", {**ENCODER, "position_embedding_type": "relative_key_query"}),
    "megatron_bert_decoder": ("MegatronBert", {**ENCODER, "is_decoder": True}),
    "mobilebert": ("MobileBert", {**ENCODER, "embedding_size": 16, "intra_bottleneck_size": 16}),
}


def case(family: str, head: str, **overrides: Any) -> dict[str, Any]:
    prefix, settings = {**FAMILY_CONFIGS, **ENCODER_CONFIGS}[family]
    settings = {key: value for key, value in {**settings, **overrides}.items() if value is not None}
    return {"family": family, "class": prefix + head, "config": prefix + "Config", "settings": settings}


def causal(name: str) -> bool:
    return name.endswith(("ForCausalLM", "LMHeadModel"))


def inputs_for(entry: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A left-padded batch of two (of `"prompt_length"` tokens, 7 by default) and the labels the class takes."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB, (2, entry.get("prompt_length", 7)), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, :2], ids[1, :2] = 0, 0
    name = entry["class"]
    if name.endswith("ForMultipleChoice"):
        return dict(input_ids=torch.stack([ids, ids.flip(1)], 1), labels=torch.tensor([1, 0]))
    if name.endswith("ForPreTraining"):
        return dict(input_ids=ids, attention_mask=mask, labels=ids, next_sentence_label=torch.tensor([1, 0]))
    if name.endswith("ForNextSentencePrediction"):
        return dict(input_ids=ids, attention_mask=mask, labels=torch.tensor([1, 0]))
    if name.endswith("ForMaskedLM"):
        return dict(input_ids=ids, attention_mask=mask, labels=ids)
    if name.endswith("DoubleHeadsModel"):
        return dict(input_ids=torch.stack([ids, ids.flip(1)], 1), mc_token_ids=torch.tensor([[6, 6], [6, 6]]),
                    labels=torch.stack([ids, ids.flip(1)], 1), mc_labels=torch.tensor([1, 0]))
    if causal(name):
        return dict(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))
    if name.endswith("ForSequenceClassification"):
        return dict(input_ids=ids, attention_mask=mask, labels=torch.tensor([2, 1]))
    if name.endswith("ForTokenClassification"):
        return dict(input_ids=ids, attention_mask=mask, labels=torch.randint(0, 3, ids.shape, generator=generator))
    if name.endswith("ForQuestionAnswering"):
        return dict(input_ids=ids, attention_mask=mask, start_positions=torch.tensor([1, 3]),
                    end_positions=torch.tensor([4, 5]))
    return dict(input_ids=ids, attention_mask=mask)


OUTPUTS = ("logits", "start_logits", "end_logits", "mc_logits", "prediction_logits", "seq_relationship_logits",
           "last_hidden_state", "loss", "mc_loss", "aux_loss")


def run(model: torch.nn.Module, entry: dict[str, Any]) -> dict[str, Any]:
    """Outputs, the backward of their sum (quantized models, which do not train, aside), and greedy
    and sampled tokens of a causal LM."""
    out = model(**inputs_for(entry))
    found = {name: getattr(out, name) for name in OUTPUTS if getattr(out, name, None) is not None}
    losses = [found[name] for name in ("loss", "mc_loss") if name in found]
    if "quantization" not in entry:
        (sum(losses) if losses else found["last_hidden_state"].square().mean()).backward()
    grads = {name: param.grad.detach().clone() for name, param in model.named_parameters() if param.grad is not None}
    result = {"outputs": {name: value.detach() for name, value in found.items()}, "grads": grads}
    if causal(entry["class"]):
        prompt = inputs_for(entry)
        with torch.no_grad():
            result["tokens"] = model.generate(prompt["input_ids"], attention_mask=prompt["attention_mask"],
                                              max_new_tokens=8, do_sample=False, pad_token_id=0)
            torch.manual_seed(7)  # a tiny random model's flat distributions: the draws vary widely
            result["sampled"] = model.generate(prompt["input_ids"], attention_mask=prompt["attention_mask"],
                                               max_new_tokens=8, do_sample=True, top_k=0, pad_token_id=0)
    return result


def quantizing(entry: dict[str, Any]) -> dict[str, Any]:
    """The `quantization_config` argument that loads a case with `"quantization"` (QuantizationConfig's fields)."""
    return {"quantization_config": lamina.QuantizationConfig(**entry["quantization"])} if "quantization" in entry else {}


def prepare(root: Path, cases: dict[str, dict[str, Any]]) -> None:
    """Save each case's model (seeded random weights) and its one-process results under `root`; a
    case with `"layout": N` is saved in lamina's tensor-parallel layout for N ranks instead, one with
    `"quantization"` is quantized as it loads (or saved quantized, with `"prequantized"`)."""
    for name, entry in cases.items():
        torch.manual_seed(0)
        saved = root / (name + "-hf" if "layout" in entry or entry.get("prequantized") else name)
        if "gguf_sizes" in entry:
            saved.mkdir()
            write_gguf_file(saved / entry["file"], entry["gguf_sizes"])
        else:
            config = getattr(lamina, entry["config"])(**entry["settings"])
            getattr(lamina, entry["class"])(config).save_pretrained(saved)
        model = getattr(lamina, entry["class"]).from_pretrained(saved / entry.get("file", ""), **quantizing(entry)).eval()
        if "layout" in entry:
            save_tensor_parallel(model, root / name, entry["layout"])
        if entry.get("prequantized"):  # the reference: the saved quantized model, loaded on one process
            model.save_pretrained(root / name)
            model = getattr(lamina, entry["class"]).from_pretrained(root / name).eval()
        result = run(model, entry)
        result["weight_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
        torch.save(result, root / name / "reference.pt")


def write_gguf_file(path: Path, sizes: dict[str, int]) -> None:
    """A random Llama of `sizes` as a GGUF file of Q4_1 matrices (tests/checkpoints/test_gguf.py)."""
    import gguf

    from tests.checkpoints.test_gguf import write_gguf

    write_gguf(path, kinds=(gguf.GGMLQuantizationType.Q4_1,), sizes=sizes)


def compare(model: torch.nn.Module, entry: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """The largest differences from the one-process reference (gradients cut to this rank's part)."""
    result = run(model, entry)
    plan = model.parallel_plan
    report: dict[str, Any] = {
        name: (value - reference["outputs"][name]).abs().max().item() for name, value in result["outputs"].items()
    }
    # relative to the gradient's scale: summed over ranks, a large gradient rounds differently
    report["grads"] = max(relative_diff(grad, plan.local(name, reference["grads"][name]))
                          for name, grad in result["grads"].items()) if result["grads"] else 0.0
    report["grads_compared"] = len(result["grads"])
    report["grads_expected"] = len(reference["grads"])
    if "tokens" in result:
        report["tokens_equal"] = torch.equal(result["tokens"], reference["tokens"])
        report["sampled_equal"] = torch.equal(result["sampled"], reference["sampled"])
    report["weight_fraction"] = sum(p.numel() * p.element_size() for p in model.parameters()) / reference["weight_bytes"]
    return report


def relative_diff(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).abs().max() / want.abs().max().clamp(min=1.0)).item()


def load_case(root: Path, name: str, entry: dict[str, Any], ep_size: int | None) -> torch.nn.Module:
    return getattr(lamina, entry["class"]).from_pretrained(root / name / entry.get("file", ""), tp_plan="auto",
                                                           ep_size=ep_size,
                                                           **({} if entry.get("prequantized") or "layout" in entry else quantizing(entry))).eval()


def worker(rank: int, world: int, port: int, root: str, jobs: list[dict[str, Any]]) -> None:
    """One rank: every job loads a case (or, for `"per_rank"`, each rank its own case) and records
    the comparison or the error it raised."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LAMINA_DIST_TIMEOUT="60")
    torch.set_num_threads(1)
    folder = Path(root)
    cases = json.loads((folder / "cases.json").read_text())
    results: dict[str, Any] = {}
    for job in jobs:
        name = job["per_rank"][rank] if "per_rank" in job else job["case"]
        try:
            model = load_case(folder, name, cases[name], job.get("ep_size"))
            results[job["key"]] = compare(model, cases[name], torch.load(folder / name / "reference.pt"))
        except Exception as err:  # noqa: BLE001 - the test inspects what each rank raised
            results[job["key"]] = {"error": type(err).__name__, "message": str(err),
                                   "traceback": traceback.format_exc()[-2000:]}
    (folder / f"rank{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


def resident_kib(address: int) -> int:
    """This process's resident KiB of the mapping that holds `address` (/proc/self/smaps)."""
    inside = False
    for line in open("/proc/self/smaps"):
        first = line.split()[0]
        if "-" in first and ":" not in first:
            low, high = (int(part, 16) for part in first.split("-"))
            inside = low <= address < high
        elif inside and first == "Rss:":
            return int(line.split()[1])
    raise AssertionError("mapping not found")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn(root: Path, world: int, cases: dict[str, dict[str, Any]], jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Prepare `cases`, run `jobs` on `world` spawned ranks, return each rank's report."""
    prepare(root, cases)
    (root / "cases.json").write_text(json.dumps(cases))
    mp.spawn(worker, args=(world, free_port(), str(root), jobs), nprocs=world, join=True)
    return [json.loads((root / f"rank{rank}.json").read_text()) for rank in range(world)]
