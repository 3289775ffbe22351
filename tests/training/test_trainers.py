"""`transformers.Trainer` and TRL's `SFTTrainer` take lamina models: a few steps of a tiny Mistral give
the losses transformers' model gives from the same weights, and what they save transformers loads."""

from __future__ import annotations

import pytest
import torch

import lamina
from tests.training.tiny import TINY

transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")


def _rows(count=16, length=10):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, TINY["vocab_size"], (count, length), generator=generator).tolist()
    return datasets.Dataset.from_dict({"input_ids": ids, "labels": ids})


def _arguments(tmp_path, **extra):
    return dict(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=4, learning_rate=1e-2,
                logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0, data_seed=0,
                dataloader_num_workers=0, **extra)


def _losses(trainer):
    trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


@pytest.mark.parametrize("checkpointing, accumulation", [(False, 1), (True, 2)])
def test_trainer_losses_equal_reference(checkpoint, tmp_path, checkpointing, accumulation):
    losses, models = [], []
    for load in (transformers.MistralForCausalLM.from_pretrained, lamina.AutoModelForCausalLM.from_pretrained):
        model = load(checkpoint)
        args = transformers.TrainingArguments(**_arguments(tmp_path / str(len(losses)),
                                                           gradient_checkpointing=checkpointing,
                                                           gradient_accumulation_steps=accumulation))
        losses.append(_losses(transformers.Trainer(model=model, args=args, train_dataset=_rows())))
        models.append(model)
    assert len(losses[1]) == 4
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    assert losses[1][-1] < losses[1][0]
    models[1].save_pretrained(tmp_path / "saved")
    reloaded = transformers.MistralForCausalLM.from_pretrained(tmp_path / "saved")
    ids = torch.tensor(_rows(1)["input_ids"])
    torch.testing.assert_close(reloaded(ids).logits, models[0](ids).logits, rtol=1e-4, atol=1e-4)


def test_accumulated_losses_weigh_tokens_alike(checkpoint, tmp_path):
    """Batches with uneven labelled tokens under gradient accumulation: the loss is the sum over the
    accumulation step's tokens divided by their count (`num_items_in_batch`), as transformers' is."""
    rows = _rows()
    generator = torch.Generator().manual_seed(2)
    labels = torch.tensor(rows["labels"])
    labels[torch.rand(labels.shape, generator=generator) < torch.linspace(0.0, 0.9, len(labels))[:, None]] = -100
    rows = datasets.Dataset.from_dict({"input_ids": rows["input_ids"], "labels": labels.tolist()})
    losses = []
    for load in (transformers.MistralForCausalLM.from_pretrained, lamina.AutoModelForCausalLM.from_pretrained):
        args = transformers.TrainingArguments(**_arguments(tmp_path / str(len(losses)), gradient_accumulation_steps=2))
        losses.append(_losses(transformers.Trainer(model=load(checkpoint), args=args, train_dataset=rows)))
    assert len(losses[1]) == 4
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)


@pytest.mark.parametrize("family", ["GPT2LMHeadModel", "MegatronBertForCausalLM"])
def test_causal_losses_take_num_items_in_batch(tmp_path, family):
    small = dict(vocab_size=97, hidden_size=16, num_attention_heads=2, num_hidden_layers=1, intermediate_size=32)
    config = (transformers.GPT2Config(n_embd=16, n_head=2, n_layer=1, vocab_size=97) if family.startswith("GPT2")
              else transformers.MegatronBertConfig(**small, is_decoder=True))
    torch.manual_seed(0)
    getattr(transformers, family)(config).eval().save_pretrained(tmp_path)
    ids = torch.randint(3, 97, (2, 6), generator=torch.Generator().manual_seed(4))
    labels = ids.masked_fill(torch.tensor([[0, 0, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0]], dtype=torch.bool), -100)
    reference, ours = getattr(transformers, family).from_pretrained(tmp_path), getattr(lamina, family).from_pretrained(tmp_path)
    assert ours.accepts_loss_kwargs
    for count in (None, torch.tensor(13)):
        expected = reference(input_ids=ids, labels=labels, num_items_in_batch=count).loss
        torch.testing.assert_close(ours(input_ids=ids, labels=labels, num_items_in_batch=count).loss, expected)


def test_sft_trainer_with_lora_losses_equal_reference(checkpoint, tmp_path):
    trl = pytest.importorskip("trl")
    peft = pytest.importorskip("peft")
    tokenizers = pytest.importorskip("tokenizers")
    text = datasets.Dataset.from_dict({"input_ids": _rows()["input_ids"]})
    # the rows come tokenized: the tokenizer only names the pad and end tokens
    vocab = {f"t{i}": i for i in range(TINY["vocab_size"])}
    engine = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="t0"))
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=engine, pad_token="t0", eos_token="t2")
    losses = []
    for load in (transformers.MistralForCausalLM.from_pretrained, lamina.AutoModelForCausalLM.from_pretrained):
        torch.manual_seed(0)
        config = trl.SFTConfig(**_arguments(tmp_path / str(len(losses))), max_length=16, packing=False)
        lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "gate_proj", "down_proj"],
                               lora_dropout=0.0)
        trainer = trl.SFTTrainer(model=load(checkpoint), args=config, train_dataset=text, peft_config=lora,
                                  processing_class=tokenizer)
        losses.append(_losses(trainer))
    assert len(losses[1]) == 4
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
