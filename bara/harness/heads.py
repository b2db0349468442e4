"""Task heads that turn a backbone into "logits over the K answers" with a cross-entropy loss.

* `LabelTokenClassifier` — the Bayesian-LoRA protocol for causal LMs (as in BLoB): the prompt
  lists the choices, and the prediction is the last position's logits restricted to the label
  tokens, computed from the label rows of the LM head only (never the full vocabulary).
* `ChoiceMaskedModel` — a multiple-choice cross-encoder whose padded choices (examples with
  fewer choices than the batch maximum) get zero probability.

Both take ``input_ids``, ``attention_mask``, ``labels`` (and ``choice_mask``) and return
``SequenceClassifierOutput(loss, logits)``, so trainers and wrappers treat every head alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.modeling_outputs import SequenceClassifierOutput

_MASKED = -1e4  # logit of a padded choice: exp(-1e4) underflows to exactly 0 probability


def _masked_loss(logits: Tensor, labels: Tensor | None) -> Tensor | None:
    return None if labels is None else F.cross_entropy(logits.float(), labels)


class LabelTokenClassifier(nn.Module):
    """A causal LM scored on the first token of each answer string (``" A"``, ``" B"``, ...).

    Only the decoder runs; the last non-padded position (inputs are left-padded) is projected
    onto the ``label_token_ids`` rows of the output embedding.

    Example:
        >>> head = LabelTokenClassifier(causal_lm, label_token_ids=[330, 350])   # doctest: +SKIP
        >>> head(input_ids=ids, attention_mask=mask).logits.shape                # doctest: +SKIP
    """

    def __init__(self, causal_lm: nn.Module, label_token_ids: list[int]):
        super().__init__()
        if len(set(label_token_ids)) != len(label_token_ids):
            raise ValueError(f"label tokens must be distinct, got {label_token_ids}")
        self.lm = causal_lm
        self.register_buffer("label_token_ids", torch.tensor(label_token_ids, dtype=torch.long), persistent=False)
        self.softcap = getattr(causal_lm.config, "final_logit_softcapping", None)

    @property
    def config(self):
        return self.lm.config

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, labels: Tensor | None = None,
                choice_mask: Tensor | None = None) -> SequenceClassifierOutput:
        if attention_mask is not None and not bool(attention_mask[:, -1].all()):
            raise ValueError("LabelTokenClassifier needs left-padded inputs (the last position must be a real token)")
        hidden = self.lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        last = hidden[:, -1]  # left padding: the final position is the last prompt token
        head = self.lm.get_output_embeddings()
        weight = head.weight[self.label_token_ids]
        logits = F.linear(last.to(weight.dtype), weight, None if head.bias is None else head.bias[self.label_token_ids])
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        if choice_mask is not None:
            logits = logits.masked_fill(~choice_mask.bool(), _MASKED)
        return SequenceClassifierOutput(loss=_masked_loss(logits, labels), logits=logits)


class ChoiceMaskedModel(nn.Module):
    """An ``AutoModelForMultipleChoice`` whose padded choices are masked out of the softmax."""

    def __init__(self, multiple_choice_model: nn.Module):
        super().__init__()
        self.mc = multiple_choice_model

    @property
    def config(self):
        return self.mc.config

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, labels: Tensor | None = None,
                choice_mask: Tensor | None = None) -> SequenceClassifierOutput:
        logits = self.mc(input_ids=input_ids, attention_mask=attention_mask).logits
        if choice_mask is not None:
            logits = logits.masked_fill(~choice_mask.bool(), _MASKED)
        return SequenceClassifierOutput(loss=_masked_loss(logits, labels), logits=logits)


class SequenceClassifier(nn.Module):
    """An ``AutoModelForSequenceClassification`` with the same call signature as the others."""

    def __init__(self, classification_model: nn.Module):
        super().__init__()
        self.cls = classification_model

    @property
    def config(self):
        return self.cls.config

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, labels: Tensor | None = None,
                choice_mask: Tensor | None = None) -> SequenceClassifierOutput:
        logits = self.cls(input_ids=input_ids, attention_mask=attention_mask).logits
        return SequenceClassifierOutput(loss=_masked_loss(logits, labels), logits=logits)
