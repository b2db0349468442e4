"""Laplace-LoRA (`bara.harness.methods.laplace`): K-FAC factors, posterior, linearised predictive and
marginal likelihood against closed forms on toys; then a 2-step tiny-BERT LoRA run end to end
(fit after training, predict, safetensors-only save / load)."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from bara.harness.data import Collator, EncodedDataset, EncodedExample
from bara.harness.heads import ChoiceMaskedModel, LabelTokenClassifier, SequenceClassifier
from bara.harness.methods.laplace import (POSTERIOR_FILE, KronPosterior, Laplace, fit_posterior, linearised_logits, mc_probs,
                                  probit_probs)
from bara.predict import predict
from conftest import token_dataset, tiny_bert, tiny_llama

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- toys
class LinearToy(nn.Module):
    """logits = W x + b on feature vectors passed as ``input_ids`` [B, d]."""

    def __init__(self, d: int = 3, k: int = 3, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(d, k).double()

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.fc(input_ids))


class SeqToy(nn.Module):
    """A 2-layer toy with weight sharing over tokens: ``W2 · masked-mean_t tanh(W1 x_t) + b2``."""

    def __init__(self, d: int = 3, h: int = 4, k: int = 3, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.inner = nn.Linear(d, h, bias=False).double()
        self.outer = nn.Linear(h, k).double()

    def pooled(self, x, mask):
        m = mask.to(x.dtype).unsqueeze(-1)
        return (torch.tanh(self.inner(x)) * m).sum(1) / m.sum(1)

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(logits=self.outer(self.pooled(input_ids, attention_mask)))


def seq_batch(n: int = 5, t: int = 4, d: int = 3, k: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, t, d, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, t + 1, (n,), generator=g)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).long()
    x = x * mask.unsqueeze(-1)  # padded positions hold zeros, but any value must be ignored
    x[mask == 0] = 7.0
    return {"input_ids": x, "attention_mask": mask, "labels": torch.randint(0, k, (n,), generator=g)}


def softmax_hessian(logits):
    p = torch.softmax(logits, -1)
    return torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)


def dense(layer):
    """(G, A) of a `KronLayer` rebuilt from its eigendecompositions, float64."""
    q_a, q_g = layer.vec_a.double(), layer.vec_g.double()
    return q_g @ torch.diag(layer.eig_g.double()) @ q_g.T, q_a @ torch.diag(layer.eig_a.double()) @ q_a.T


def close(a, b, tol=1e-5):
    return torch.allclose(a.double(), b.double(), rtol=tol, atol=tol * float(b.abs().max()))


# ----------------------------------------------------------------------------- closed forms
def test_linear_toy_factors_posterior_and_probit_predictive_match_the_closed_form():
    model = LinearToy()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    batches = [{"input_ids": x[:4], "labels": y[:4]}, {"input_ids": x[4:], "labels": y[4:]}]
    delta = 0.7
    post = fit_posterior(model, batches, prior_precision=delta)
    (layer,) = post.layers
    assert layer.name == "fc" and layer.bias and post.n_data == 6 and post.num_params == 3 * 4

    # K-FAC of the GGN: A = mean x̃ x̃ᵀ (x̃ = [x, 1]), G = Σ_n Λ_n
    xt = torch.cat([x, torch.ones(6, 1, dtype=torch.float64)], 1)
    logits = model.fc(x).detach()
    G, A = dense(layer)
    assert close(A, xt.T @ xt / 6) and close(G, softmax_hessian(logits).sum(0))
    assert post.log_likelihood == pytest.approx(float(torch.log_softmax(logits, -1)[torch.arange(6), y].sum()), rel=1e-10)
    theta = torch.cat([model.fc.weight, model.fc.bias[:, None]], 1).detach()
    assert post.sq_norm == pytest.approx(float(theta.pow(2).sum()), rel=1e-12)

    # posterior Σ = (G ⊗ A + δ I)⁻¹; the logits' covariance J Σ Jᵀ with J = I_K ⊗ x̃ᵀ; probit
    sigma = torch.linalg.inv(torch.kron(G, A) + delta * torch.eye(12, dtype=torch.float64))
    x_test = torch.randn(3, 3, generator=g, dtype=torch.float64) * 2
    (mean, cov), = list(linearised_logits(model, post, [{"input_ids": x_test}]))
    assert torch.allclose(mean, model.fc(x_test).detach())
    for i in range(3):
        jac = torch.kron(torch.eye(3, dtype=torch.float64), torch.cat([x_test[i], torch.ones(1, dtype=torch.float64)])[None])
        expected = jac @ sigma @ jac.T
        assert close(cov[i], expected)
        kappa = 1 / torch.sqrt(1 + math.pi / 8 * torch.diagonal(expected))
        assert close(probit_probs(mean[i:i + 1], cov[i:i + 1])[0], torch.softmax(mean[i] * kappa, -1))
    assert all(p.requires_grad for p in model.parameters())  # trainable flags untouched


def test_two_layer_sequence_toy_factors_mask_padding_and_jacobians_are_exact():
    model = SeqToy()
    batch = seq_batch()
    delta = 0.3
    post = fit_posterior(model, [batch], prior_precision=delta)
    inner, outer = post.layers
    assert (inner.name, inner.bias, outer.name, outer.bias) == ("inner", False, "outer", True)
    x, mask = batch["input_ids"], batch["attention_mask"]
    real = mask.bool()
    with torch.no_grad():
        logits = model(x, mask).logits
        lam = softmax_hessian(logits)
        pooled = torch.cat([model.pooled(x, mask), torch.ones(5, 1, dtype=torch.float64)], 1)
        # outer: A = mean p̃ p̃ᵀ, G = Σ Λ_n
        G, A = dense(outer)
        assert close(A, pooled.T @ pooled / 5) and close(G, lam.sum(0))
        # inner (shared over tokens, "expand"): A = mean over real tokens of x xᵀ;
        # G = Σ_n Σ_t J_tᵀ Λ_n J_t with J_t = ∂logits/∂(W1 x_t) = W2 diag(1 − tanh²) m_t / |m|
        xs = x[real]
        G, A = dense(inner)
        assert close(A, xs.T @ xs / len(xs))
        expected = torch.zeros(4, 4, dtype=torch.float64)
        for n in range(5):
            for t in range(4):
                if mask[n, t]:
                    jt = model.outer.weight * (1 - torch.tanh(model.inner(x[n, t])) ** 2) / mask[n].sum()
                    expected += jt.T @ lam[n] @ jt
        assert close(G, expected)

    # the linearised covariance uses exact per-example Jacobians (checked against torch.func)
    test = seq_batch(n=3, seed=5)
    (mean, cov), = list(linearised_logits(model, post, [test]))
    params = {name: p.detach() for name, p in model.named_parameters()}

    def f(p, xi, mi):
        return torch.func.functional_call(model, p, (xi[None], mi[None])).logits[0]

    blocks = {"inner": (inner, ["inner.weight"]), "outer": (outer, ["outer.weight", "outer.bias"])}
    for i in range(3):
        jac = torch.func.jacrev(f)(params, test["input_ids"][i], test["attention_mask"][i])
        expected = torch.zeros(3, 3, dtype=torch.float64)
        for layer, names in blocks.values():
            j = torch.cat([jac[n].reshape(3, jac[n].shape[1], -1) for n in names], -1).reshape(3, -1)
            G, A = dense(layer)
            expected += j @ torch.linalg.inv(torch.kron(G, A) + delta * torch.eye(j.shape[1], dtype=torch.float64)) @ j.T
        assert close(cov[i], expected)
        assert torch.allclose(mean[i], f(params, test["input_ids"][i], test["attention_mask"][i]).detach())


def test_kfac_is_the_exact_ggn_for_one_example_per_layer():
    model = SeqToy(seed=3)
    batch = seq_batch(n=1, t=1, seed=2)
    post = fit_posterior(model, [batch], prior_precision=1.0)
    params = {name: p.detach() for name, p in model.named_parameters()}
    x, mask = batch["input_ids"], batch["attention_mask"]
    jac = torch.func.jacrev(lambda p: torch.func.functional_call(model, p, (x, mask)).logits[0])(params)
    lam = softmax_hessian(model(x, mask).logits.detach())[0]
    for layer, names in ((post.layers[0], ["inner.weight"]), (post.layers[1], ["outer.weight", "outer.bias"])):
        j = torch.cat([jac[n].reshape(3, jac[n].shape[1], -1) for n in names], -1).reshape(3, -1)
        G, A = dense(layer)
        assert close(torch.kron(G, A), j.T @ lam @ j)


def test_padding_does_not_change_the_posterior_or_the_predictive():
    model = SeqToy(seed=4)
    batch = seq_batch(n=4, t=5, seed=7)
    lengths = batch["attention_mask"].sum(1).tolist()
    singles = [{"input_ids": batch["input_ids"][i:i + 1, :n], "attention_mask": batch["attention_mask"][i:i + 1, :n],
                "labels": batch["labels"][i:i + 1]} for i, n in enumerate(lengths)]
    padded, unpadded = fit_posterior(model, [batch]), fit_posterior(model, singles)
    assert padded.prior_precision == pytest.approx(unpadded.prior_precision, rel=1e-5)
    for a, b in zip(padded.layers, unpadded.layers):
        assert all(close(x, y) for x, y in zip(dense(a), dense(b)))
    (mean, cov), = list(linearised_logits(model, padded, [batch]))
    for i, single in enumerate(singles):
        (m1, c1), = list(linearised_logits(model, padded, [single]))
        assert close(mean[i], m1[0]) and close(cov[i], c1[0])


def _trained_linear_toy(steps: int = 300, weight_decay: float = 0.0, scale: float = 1.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(40, 2, generator=g, dtype=torch.float64)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()  # separable: maximum likelihood overfits
    if scale != 1.0:
        x = x * scale
    model = LinearToy(d=2, k=2, seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=0.1, weight_decay=weight_decay)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model.fc(x), y).backward()
        opt.step()
    return model, [{"input_ids": x[i:i + 10], "labels": y[i:i + 10]} for i in range(0, 40, 10)], x


def test_marginal_likelihood_optimum_matches_a_brute_force_grid():
    model, batches, _ = _trained_linear_toy(steps=100, weight_decay=1e-2)
    post = fit_posterior(model, batches)
    (layer,) = post.layers
    G, A = dense(layer)
    H = torch.kron(G, A)
    p = H.shape[0]

    def brute(delta):  # log p(D|θ*) + log N(θ*; 0, δ⁻¹I) + P/2 log 2π − ½ log det(H + δI), all dense
        prior = -0.5 * p * math.log(2 * math.pi) + 0.5 * p * math.log(delta) - 0.5 * delta * post.sq_norm
        return post.log_likelihood + prior + 0.5 * p * math.log(2 * math.pi) \
            - 0.5 * float(torch.linalg.slogdet(H + delta * torch.eye(p, dtype=torch.float64))[1])

    for delta in (1e-3, 0.37, 12.0):
        assert float(post.log_marginal_likelihood(delta)) == pytest.approx(brute(delta), rel=1e-7)
    grid = torch.logspace(-4, 6, 4001, dtype=torch.float64).tolist()
    values = [brute(d) for d in grid]
    best = max(range(len(grid)), key=values.__getitem__)
    assert 0 < best < len(grid) - 1  # an interior optimum
    assert post.prior_precision == pytest.approx(grid[best], rel=0.01)
    assert brute(post.prior_precision) >= values[best] - 1e-9
    # a fixed prior precision is used as given
    assert fit_posterior(model, batches, prior_precision=3.0).prior_precision == 3.0


def test_laplace_is_less_confident_than_map_on_an_overfit_toy():
    model, batches, x = _trained_linear_toy(steps=1000)
    post = fit_posterior(model, batches)
    far = x * 4
    (mean, cov), = list(linearised_logits(model, post, [{"input_ids": x}]))
    (mean_far, cov_far), = list(linearised_logits(model, post, [{"input_ids": far}]))
    map_conf, map_far = torch.softmax(mean, -1).max(-1).values, torch.softmax(mean_far, -1).max(-1).values
    la_conf, la_far = probit_probs(mean, cov).max(-1).values, probit_probs(mean_far, cov_far).max(-1).values
    assert map_conf.mean() > 0.98  # overfit
    assert la_conf.mean() < map_conf.mean() - 0.05
    assert (la_conf <= map_conf + 1e-12).all() and (la_far <= map_far + 1e-12).all()
    # far from the data MAP saturates, while the linearised probit stays bounded away from certainty
    assert map_far.mean() > 0.999 and la_far.mean() < 0.95
    mc = mc_probs(mean, cov, 4000, torch.Generator().manual_seed(0)).max(-1).values
    assert mc.mean() < map_conf.mean() - 0.01


def test_probit_and_mc_predictives_are_distributions_and_mc_matches_sampling():
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(4, 3, generator=g, dtype=torch.float64)
    root = torch.randn(4, 3, 3, generator=g, dtype=torch.float64)
    cov = root @ root.transpose(-1, -2)
    for probs in (probit_probs(mean, cov), mc_probs(mean, cov, 50, g)):
        assert probs.shape == (4, 3) and (probs >= 0).all()
        assert torch.allclose(probs.sum(-1), torch.ones(4, dtype=torch.float64))
    assert torch.allclose(mc_probs(mean, torch.zeros_like(cov), 3, g), torch.softmax(mean, -1))
    draws = torch.distributions.MultivariateNormal(mean, cov).sample((20000,))
    assert torch.allclose(mc_probs(mean, cov, 20000, g), torch.softmax(draws, -1).mean(0), atol=0.02)


def test_posterior_state_round_trips_through_safetensors(tmp_path):
    post = fit_posterior(SeqToy(), [seq_batch()])
    post.save(tmp_path / "p.safetensors")
    again = KronPosterior.load(tmp_path / "p.safetensors")
    assert (again.prior_precision, again.log_likelihood, again.sq_norm, again.n_data) == \
        (post.prior_precision, post.log_likelihood, post.sq_norm, post.n_data)
    for a, b in zip(post.layers, again.layers):
        assert (a.name, a.bias) == (b.name, b.bias)
        assert all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("eig_a", "vec_a", "eig_g", "vec_g"))
    (tmp_path / "bad.safetensors").write_bytes(b"\x80\x04 a pickle")
    with pytest.raises(Exception):
        KronPosterior.load(tmp_path / "bad.safetensors")


def test_options_are_validated():
    assert Laplace.from_options({"r": 4, "link": "mc"}).link == "mc"
    for options, match in (({"link": "logit"}, "link"), ({"prior_precision": 0.0}, "positive"),
                           ({"prior_min": 10.0, "prior_max": 1.0}, "prior_min"), ({"batch_size": 0}, "batch_size"),
                           ({"gamma": 1}, "unknown option")):
        with pytest.raises(ValueError, match=match):
            Laplace.from_options(options)


# ----------------------------------------------------------------------------- end to end on tiny BERT
def _dataset(n: int = 24, seed: int = 0):
    return token_dataset(n, seed)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from transformers import TrainingArguments

    out = tmp_path_factory.mktemp("laplace_run")
    ds, collator = _dataset()
    method = Laplace(r=4, lora_alpha=8.0, batch_size=8)
    torch.manual_seed(5)
    model = method.wrap(SequenceClassifier(tiny_bert(num_labels=2, seed=0)), ["query", "value"], ["classifier"])
    method.before_training(model)
    args = TrainingArguments(output_dir=str(out / "checkpoints"), use_cpu=True, report_to=[], remove_unused_columns=False,
                             disable_tqdm=True, max_steps=2, logging_steps=1, save_strategy="no",
                             per_device_train_batch_size=8, learning_rate=1e-2, seed=11, dataloader_num_workers=0,
                             **method.training_overrides())
    trainer = method.trainer_class()(model=model, args=args, train_dataset=ds, data_collator=collator,
                                     **method.trainer_kwargs())
    trainer.train()
    method.after_training(model, ds, collator)
    return method, model, ds, collator


def test_after_training_fits_a_posterior_over_lora_and_the_head(trained):
    method, model, ds, _ = trained
    post = method.posterior(model)
    names = [layer.name for layer in post.layers]
    assert len(names) == 9 and sum("lora_A" in n for n in names) == 4 and sum("lora_B" in n for n in names) == 4
    (head,) = [layer for layer in post.layers if "classifier" in layer.name]
    assert head.bias and head.eig_a.numel() == 33 and head.eig_g.numel() == 2
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert post.num_params == trainable and post.n_data == len(ds)
    assert method.prior_min < post.prior_precision < method.prior_max


def test_predictions_sum_to_one_and_mean_mode_is_the_map(trained):
    method, model, ds, collator = trained
    probit = method.predict(model, ds, collator)
    mc = method.predict(model, ds, collator, mode="mc", samples=200)
    mean = method.predict(model, ds, collator, mode="mean")
    for preds in (probit, mc, mean):
        assert preds.probs.shape == (len(ds), 2) and (preds.probs >= 0).all()
        assert torch.allclose(preds.probs.sum(-1), torch.ones(len(ds)), atol=1e-5)
        assert torch.equal(preds.labels, ds.labels)
    assert torch.equal(mean.probs, predict(model, ds, collator, mode="mean", samples=1).probs)
    assert torch.equal(probit.probs, method.predict(model, ds, collator, mode="probit").probs)
    assert not torch.allclose(probit.probs, mean.probs, atol=1e-6)  # the posterior widens the predictive
    assert torch.equal(mc.probs, method.predict(model, ds, collator, mode="sample", samples=200).probs)  # seeded
    with pytest.raises(ValueError, match="allowed"):
        method.predict(model, ds, collator, mode="global")


def test_save_load_round_trip_reproduces_predictions_without_pickle(trained, tmp_path):
    method, model, ds, collator = trained
    folder = tmp_path / "adapter"
    method.save(model, folder)
    files = {p.name for p in folder.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", POSTERIOR_FILE} <= files
    for path in folder.iterdir():
        assert path.suffix in (".safetensors", ".json", ".md"), path
        head = path.read_bytes()[:2]
        assert head[:1] != b"\x80" and head != b"PK"  # neither a pickle nor a torch zip archive
    fresh = Laplace(r=4, lora_alpha=8.0, batch_size=8)
    loaded = fresh.load(SequenceClassifier(tiny_bert(num_labels=2, seed=0)), folder, ["query", "value"], ["classifier"])
    before = method.predict(model, ds, collator)
    after = fresh.predict(loaded, ds, collator)
    assert torch.allclose(before.probs, after.probs, atol=1e-6)
    assert torch.allclose(method.predict(model, ds, collator, mode="mean").probs,
                          fresh.predict(loaded, ds, collator, mode="mean").probs, atol=1e-6)
    assert not any(p.requires_grad for p in loaded.parameters())  # tracing restored the frozen flags
    # an adapter without its posterior, and a model without one, are refused
    (folder / POSTERIOR_FILE).unlink()
    with pytest.raises(ValueError, match=POSTERIOR_FILE):
        fresh.load(SequenceClassifier(tiny_bert(num_labels=2, seed=0)), folder, ["query", "value"], ["classifier"])
    plain = Laplace(r=4).wrap(SequenceClassifier(tiny_bert(num_labels=2, seed=0)), ["query", "value"], ["classifier"])
    with pytest.raises(ValueError, match="no Laplace posterior"):
        Laplace().save(plain, tmp_path / "nothing")
    with pytest.raises(ValueError, match="no Laplace posterior"):
        Laplace().predict(plain, ds, collator)


def test_multiple_choice_and_label_token_heads():
    from transformers import BertConfig, BertForMultipleChoice

    torch.manual_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    rng = random.Random(1)
    mc_items = [EncodedExample([[2] + [rng.randrange(3, 64) for _ in range(rng.randrange(2, 6))] for _ in range(c)],
                               i % c, c, None) for i, c in enumerate([3, 2, 3, 2, 3])]
    heads = [(ChoiceMaskedModel(BertForMultipleChoice(config).eval()), ["query", "value"], ["classifier"],
              EncodedDataset(mc_items, "multiple_choice", 3), Collator(0, "multiple_choice", 3)),
             (LabelTokenClassifier(tiny_llama(), [5, 7]), ["q_proj", "v_proj"], [],
              EncodedDataset([EncodedExample([1] + [rng.randrange(3, 128) for _ in range(rng.randrange(2, 7))], i % 2, 2,
                                             None) for i in range(5)], "causal_lm", 2), Collator(0, "causal_lm", 2))]
    for head, targets, save, ds, collator in heads:
        method = Laplace(r=2, lora_alpha=4.0, batch_size=3)
        model = method.wrap(head, targets, save)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)
        method.after_training(model, ds, collator)
        preds = method.predict(model, ds, collator)
        assert torch.allclose(preds.probs.sum(-1), torch.ones(len(ds)), atol=1e-5)
        if ds.head == "multiple_choice":  # examples with two choices put no mass on the third
            assert (preds.probs[torch.tensor([1, 3]), 2] == 0).all()
