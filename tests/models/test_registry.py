"""The one family registry: every class DESIGN.md lists is exported, declared where a search finds
it, and dispatched by the Auto class of its task."""

import inspect
import re

import pytest

import lamina
from lamina.models import auto
from lamina.models.registry import AUTO_CLASSES, FAMILIES

DECODER = ("Model", "ForCausalLM", "ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering")
ENCODER = ("Model", "ForPreTraining", "ForMaskedLM", "ForNextSentencePrediction", "ForSequenceClassification",
           "ForMultipleChoice", "ForTokenClassification", "ForQuestionAnswering")

# DESIGN.md's table: model_type → the classes it requires
DESIGN = {
    "mistral": ["Mistral" + s for s in DECODER],
    "ministral": ["Ministral" + s for s in DECODER],
    "mixtral": ["Mixtral" + s for s in DECODER],
    "persimmon": ["Persimmon" + s for s in DECODER[:4]],
    "gpt2": ["GPT2Model", "GPT2LMHeadModel", "GPT2ForSequenceClassification", "GPT2ForTokenClassification",
             "GPT2ForQuestionAnswering", "GPT2DoubleHeadsModel"],
    "megatron-bert": ["MegatronBert" + s for s in (*ENCODER, "ForCausalLM")],
    "mobilebert": ["MobileBert" + s for s in ENCODER],
    "mega": ["Mega" + s for s in ("Model", "ForCausalLM", "ForMaskedLM", "ForSequenceClassification",
                                  "ForMultipleChoice", "ForTokenClassification", "ForQuestionAnswering")],
}
TOKENIZERS = ["AutoTokenizer", "LlamaTokenizer", "LlamaTokenizerFast", "GPT2Tokenizer", "GPT2TokenizerFast",
              "MobileBertTokenizer", "MobileBertTokenizerFast", "PersimmonTokenizer", "MLukeTokenizer"]


def _task(class_name: str, family) -> str | None:
    suffix = class_name.removeprefix(family.prefix)
    return next((task for task, s in family.tasks.items() if s == suffix), None)


@pytest.mark.parametrize("model_type", sorted(DESIGN))
def test_every_design_class_is_exported_declared_and_dispatched(model_type):
    family = FAMILIES[model_type]
    config_class = getattr(lamina, family.config_class)
    assert auto.AutoConfig.for_model(model_type).__class__ is config_class
    dispatched = set()
    for name in DESIGN[model_type]:
        assert name in lamina.__all__
        cls = getattr(lamina, name)
        assert cls.__name__ == name and cls.config_class is config_class
        # a visible `class Name(…)` line in the family's module, not a class made by type()
        assert re.search(rf"^class {name}\(", inspect.getsource(inspect.getmodule(cls)), re.M), name
        task = _task(name, family)
        if task is None:
            assert name in family.extra  # public, outside the Auto tables (GPT2DoubleHeadsModel)
            continue
        auto_class = getattr(lamina, AUTO_CLASSES[task])
        assert auto_class._class_for(config_class(), "test") is cls
        assert auto_class._class_for({"architectures": [name]}, "test") is cls  # by architecture alone
        dispatched.add(task)
    assert dispatched == set(family.tasks)  # nothing registered that DESIGN.md does not list


def test_exports_resolve_and_tokenizers_are_public():
    for name in TOKENIZERS:
        assert name in lamina.__all__
    for name in lamina.__all__:
        assert getattr(lamina, name) is not None
    assert "TFMobileBertForPreTraining" in lamina.__all__  # the TF twins come from the same registry


def test_an_auto_class_without_the_family_task_says_what_it_offers():
    with pytest.raises(lamina.UnsupportedError, match="PersimmonConfig|persimmon"):
        lamina.AutoModelForQuestionAnswering._class_for(lamina.PersimmonConfig(), "test")
