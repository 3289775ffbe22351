"""The one registry of model families.

`lamina.__all__` (and the lazy imports behind it) and the Auto* dispatch tables are both derived
from `FAMILIES`: a family added here is exported and dispatched, and nowhere else needs a line.
This module imports nothing heavy, so `import lamina` stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# task → the class-name suffix the decoder families use for it
DECODER_TASKS = {
    "base": "Model",
    "causal_lm": "ForCausalLM",
    "sequence_classification": "ForSequenceClassification",
    "token_classification": "ForTokenClassification",
    "question_answering": "ForQuestionAnswering",
}
ENCODER_TASKS = {
    "base": "Model",
    "masked_lm": "ForMaskedLM",
    "pretraining": "ForPreTraining",
    "next_sentence_prediction": "ForNextSentencePrediction",
    "sequence_classification": "ForSequenceClassification",
    "multiple_choice": "ForMultipleChoice",
    "token_classification": "ForTokenClassification",
    "question_answering": "ForQuestionAnswering",
}

# task → the Auto class that dispatches it (lamina.models.auto defines each)
AUTO_CLASSES = {
    "base": "AutoModel",
    "causal_lm": "AutoModelForCausalLM",
    "sequence_classification": "AutoModelForSequenceClassification",
    "token_classification": "AutoModelForTokenClassification",
    "question_answering": "AutoModelForQuestionAnswering",
    "masked_lm": "AutoModelForMaskedLM",
    "pretraining": "AutoModelForPreTraining",
    "next_sentence_prediction": "AutoModelForNextSentencePrediction",
    "multiple_choice": "AutoModelForMultipleChoice",
}


@dataclass(frozen=True)
class Family:
    """A family's module, the prefix of its class names and the suffix of its class per task.

    `extra`: public classes outside the Auto tables; `tf_module`: where the TensorFlow twins of
    its task classes (named `TF` + the PyTorch name) live, if it has them.
    """

    module: str
    prefix: str
    tasks: dict[str, str] = field(default_factory=lambda: dict(DECODER_TASKS))
    extra: tuple[str, ...] = ()
    tf_module: str | None = None

    @property
    def config_class(self) -> str:
        return self.prefix + "Config"

    def class_name(self, task: str) -> str:
        return self.prefix + self.tasks[task]

    def model_classes(self) -> tuple[str, ...]:
        """The names of its PyTorch model classes: one per task, then the extras."""
        return (*(self.class_name(task) for task in self.tasks), *self.extra)

    def exports(self) -> dict[str, str]:
        """{public name: module that defines it} for the config, the model classes and the TF twins."""
        names = dict.fromkeys((self.config_class, *self.model_classes()), self.module)
        if self.tf_module is not None:
            names.update(("TF" + self.class_name(task), self.tf_module) for task in self.tasks)
        return names


def _without(tasks: dict[str, str], *dropped: str) -> dict[str, str]:
    return {task: suffix for task, suffix in tasks.items() if task not in dropped}


# model_type → family
FAMILIES: dict[str, Family] = {
    "mistral": Family("lamina.models.mistral", "Mistral"),
    "ministral": Family("lamina.models.ministral", "Ministral"),
    "mixtral": Family("lamina.models.mixtral", "Mixtral"),
    "llama": Family("lamina.models.llama", "Llama"),
    "qwen2": Family("lamina.models.llama", "Qwen2"),
    "persimmon": Family("lamina.models.persimmon", "Persimmon", _without(DECODER_TASKS, "question_answering")),
    "gpt2": Family("lamina.models.gpt2", "GPT2", {**DECODER_TASKS, "causal_lm": "LMHeadModel"},
                   extra=("GPT2DoubleHeadsModel",)),
    "mega": Family("lamina.models.mega", "Mega",
                   {**_without(ENCODER_TASKS, "pretraining", "next_sentence_prediction"), "causal_lm": "ForCausalLM"}),
    "megatron-bert": Family("lamina.models.megatron_bert", "MegatronBert",
                            {**ENCODER_TASKS, "causal_lm": "ForCausalLM"}),
    "mobilebert": Family("lamina.models.mobilebert", "MobileBert", ENCODER_TASKS, tf_module="lamina.tf.mobilebert"),
}
