"""Issue 13's training recipe and vocabulary: the schedule's values, the time budget's horizon, the plateau rule and
--patience, the initial weights, AdamW's decay on matrices only, the vocabulary from the training split
(--min-freq), the out-of-vocabulary rate, the uniform model's perplexity = V, and checkpoints from before."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from rnnlm import train
from rnnlm.api import load
from rnnlm.checkpoint import load_checkpoint, save_checkpoint
from rnnlm.data import UNK, TokenizerSettings, Vocab, load_corpus, oov_rate, split_bounds, split_corpus, train_vocab
from rnnlm.evaluate import main as evaluate_main
from rnnlm.evaluation import EvalResult
from rnnlm.model import ModelConfig, WordRNN
from rnnlm.training import distributed as distributed_module
from rnnlm.training import trainer as trainer_module
from rnnlm.training.init import init_weights
from rnnlm.training.resume import LEGACY
from rnnlm.training.schedule import LRSchedule, estimate_total
from rnnlm.training.step import make_optimizer

from test_generate_evaluate import call_main
from test_train import TINY, read_metrics, run_train

pytestmark = pytest.mark.usefixtures("one_thread")


# -- schedule ----------------------------------------------------------------------------------------------------

def test_schedule_values():
    lin = LRSchedule(2e-3, "linear", warmup=100)
    assert lin.lr(1, 1000) == pytest.approx(2e-5) and lin.lr(100, 1000) == pytest.approx(2e-3)
    assert lin.lr(101, 1000) == pytest.approx(2e-3)              # s = W: the peak
    assert lin.lr(551, 1000) == pytest.approx(1e-3)              # halfway through the decay
    assert lin.lr(1001, 1000) == 0.0 and lin.lr(5000, 1000) == 0.0
    cos = LRSchedule(1.0, "cosine", warmup=10, floor=0.1)
    assert cos.lr(11, 110) == pytest.approx(1.0) and cos.lr(61, 110) == pytest.approx(0.55)
    assert cos.lr(111, 110) == pytest.approx(0.1)
    assert LRSchedule(1.0, "linear", warmup=10, floor=0.2).lr(60, 110) == pytest.approx(0.2 + 0.8 * (1 - 49 / 100))
    const = LRSchedule(3e-3, "constant", warmup=0)
    assert const.lr(1, 10) == const.lr(999, 10) == 3e-3
    plateau = LRSchedule(1.0, "plateau", warmup=0)
    assert plateau.lr(7, 10, scale=1 / 16) == 1 / 16
    # warmup is at most a tenth of the run
    assert LRSchedule(1.0, "linear", warmup=100).warmup_steps(60) == 6
    assert LRSchedule(1.0, "linear", warmup=100).lr(1, 60) == pytest.approx(1 / 6)


def test_estimate_total():
    assert estimate_total(50, 100.0, None, 10_000) == 10_000        # not timed yet: the planned steps
    assert estimate_total(50, 100.0, 0.5, 10_000) == 250
    assert estimate_total(50, 100.0, 0.5, 120) == 120                # never beyond --max-steps / --epochs
    assert estimate_total(50, 0.0, 0.5, 10_000) == 51


def test_time_budget_run_decays_to_the_floor_by_the_deadline(tiny_corpus, tmp_path, monkeypatch):
    """With a clock that advances 0.05 s per reading, a 0.3-minute budget ends the run after a known number of
    readings: the schedule, re-estimated at every step, reaches the floor as the budget runs out."""
    clock = itertools.count()
    monkeypatch.setattr(trainer_module.time, "perf_counter", lambda: next(clock) * 0.05)
    out = tmp_path / "run"
    run_train(tiny_corpus, out, "--time-budget", "0.3", "--warmup", "2", "--log-every", "1", "--eval-every", "1000",
              "--sample-length", "0")
    rows = [r for r in read_metrics(out) if "lr" in r]
    lrs = [r["lr"] for r in rows]
    assert len(lrs) > 30
    peak = max(lrs)
    assert peak == pytest.approx(2e-3, rel=0.05)
    assert lrs[-1] < 0.1 * peak                                      # decayed by the deadline
    after = lrs[lrs.index(peak) + 25:]
    assert all(a >= b for a, b in zip(after, after[1:]))              # decreasing once the estimate settles


def _fake_validation(monkeypatch, values):
    it = iter(values)

    def fake(model, tokens, batch_size=16, window=128):
        ppl = next(it, 1e9)
        return EvalResult(perplexity=ppl, nll_sum=math.log(ppl) * (len(tokens) - 1), n_targets=len(tokens) - 1)

    monkeypatch.setattr(distributed_module, "evaluate_tokens", fake)  # the trainer evaluates through it


def test_plateau_divides_by_four_and_patience_stops(tiny_corpus, tmp_path, monkeypatch, capsys):
    _fake_validation(monkeypatch, [50.0, 40.0, 45.0, 44.0, 30.0])
    out = tmp_path / "run"
    run_train(tiny_corpus, out, "--lr-schedule", "plateau", "--warmup", "0", "--lr", "0.01", "--eval-every", "2",
              "--log-every", "1", "--patience", "2", "--max-steps", "40", "--sample-length", "0")
    assert "did not improve in 2 evaluations (--patience)" in capsys.readouterr().out
    last = load_checkpoint(out / "last.pt")
    assert last["step"] == 8 and last["lr_scale"] == 1 / 16 and last["bad_evals"] == 2
    lr = {r["step"]: r["lr"] for r in read_metrics(out) if "lr" in r}
    # the validation after step 6 did not improve: from step 7 on, the rate is divided by 4
    assert lr[6] == pytest.approx(0.01) and lr[7] == pytest.approx(0.01 / 4) and lr[8] == pytest.approx(0.01 / 4)


def test_resume_continues_the_plateau_state(tiny_corpus, tmp_path, monkeypatch):
    _fake_validation(monkeypatch, [50.0, 60.0, 70.0])
    out = tmp_path / "run"
    args = ["--lr-schedule", "plateau", "--warmup", "0", "--lr", "0.01", "--eval-every", "2", "--log-every", "1",
            "--sample-length", "0"]
    run_train(tiny_corpus, out, *args, "--max-steps", "4")
    assert load_checkpoint(out / "last.pt")["lr_scale"] == 1 / 4
    assert train.main(["--resume", str(out), "--max-steps", "5", "--no-progress"]) == 0
    assert read_metrics(out)[-1]["lr"] == pytest.approx(0.01 / 4)


# -- init and optimizer ------------------------------------------------------------------------------------------

def test_rnnlm_init():
    torch.manual_seed(0)
    model = WordRNN(ModelConfig(vocab_size=500, embed_size=16, hidden_size=24, num_layers=2))
    w_ih = model.rnn.weight_ih_l0.detach().clone()
    init_weights(model, "rnnlm")
    for w in (model.embedding.weight.detach(), model.fc.weight.detach()):
        assert float(w.abs().max()) <= 0.1 and float(w.abs().max()) > 0.09
    assert bool((model.fc.bias == 0).all())
    for k in range(2):
        assert torch.equal(getattr(model.rnn, f"weight_hh_l{k}"), 0.5 * torch.eye(24))
    assert torch.equal(model.rnn.weight_ih_l0, w_ih)                  # W_ih keeps nn.RNN's initialisation
    out, _ = model(torch.tensor([[1, 2, 3]]))                         # the flat weights still drive the module
    assert out.shape == (1, 3, 500)
    before = model.fc.weight.detach().clone()
    init_weights(model, "torch")
    assert torch.equal(model.fc.weight, before)


def test_weight_decay_on_matrices_only():
    torch.manual_seed(0)
    model = WordRNN(ModelConfig(vocab_size=50, embed_size=8, hidden_size=8))
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    opt = make_optimizer(params, lr=0.1, weight_decay=0.5)
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    for p, b in zip(params, before):   # zero gradients: only the decay moves a weight, by the factor 1 - lr * wd
        torch.testing.assert_close(p.detach(), b * (0.95 if p.dim() >= 2 else 1.0), rtol=0, atol=1e-7)
    assert len(make_optimizer(params, lr=0.1).param_groups) == 1


# -- vocabulary --------------------------------------------------------------------------------------------------

def test_vocab_counts_the_training_split_only(tmp_path):
    lines = ["我们的祖国充满希望。"] * 90 + ["北京欢迎你。"] * 5 + ["上海浦东开发区。"] * 5
    path = tmp_path / "c.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    corpus = load_corpus(path, TokenizerSettings(), progress=False)
    vocab = train_vocab(corpus, 100)
    train_words = {w for i in range(90) for w in corpus.line_words(i)}
    assert set(vocab.itos[2:]) == train_words
    assert "北京" not in vocab and "上海" not in vocab
    splits = split_corpus(corpus, vocab)
    assert int((splits["valid"] != vocab.unk_id).sum()) == 5          # only "。" is known in the 5 valid lines
    assert oov_rate(splits["train"]) == 0.0
    assert oov_rate(splits["test"]) == pytest.approx(float((splits["test"] == 1).sum()) / len(splits["test"]))
    assert split_bounds(corpus)[1] == len(splits["train"])


def test_min_freq(tiny_corpus):
    corpus = load_corpus(tiny_corpus, TokenizerSettings(), progress=False)
    counts = np.bincount(corpus.ids[:split_bounds(corpus)[1]], minlength=len(corpus.lexicon))
    threshold = int(np.median(counts[counts > 0]))
    vocab = train_vocab(corpus, 10_000, min_freq=threshold)
    assert set(vocab.itos[2:]) == {corpus.lexicon[i] for i in np.flatnonzero(counts >= threshold)}
    with pytest.raises(Exception, match="min_freq"):
        Vocab.build({"a": 1}, 10, min_freq=0)


def test_training_prints_oov_and_evaluate_reports_it_with_the_uniform_model(tiny_corpus, tmp_path, capsys):
    out = tmp_path / "run"
    run_train(tiny_corpus, out, "--max-steps", 2, "--eval-every", 2, "--sample-length", 0, "--vocab-size", 30)
    printed = capsys.readouterr().out
    assert "valid ppl" in printed and "(OOV " in printed and "OOV" in printed.split("test perplexity:")[1]
    code, stdout, err = call_main(evaluate_main, "rnnlm.evaluate", capsys, out / "last.pt", "--uniform")
    assert code == 0, err
    vocab_size = len(load_checkpoint(out / "last.pt")["vocab"])
    assert "OOV rate" in stdout
    uniform = float(stdout.split("uniform model: test perplexity ")[1].split()[0])
    assert abs(uniform - vocab_size) < 1e-9 * vocab_size
    result = load(out / "last.pt").evaluate("test", uniform=True)
    assert abs(result.perplexity - vocab_size) < 1e-9 * vocab_size and 0 < result.oov_rate < 1


def test_checkpoint_from_before_the_change_loads_evaluates_and_resumes(tiny_corpus, tmp_path, monkeypatch):
    """A run written before issue 13: vocabulary counted on the whole corpus, no schedule or decay options, Adam.
    It evaluates with the vocabulary it carries and resumes with it, at the constant rate it had."""
    from rnnlm.training import setup as setup_module
    out = tmp_path / "old"
    with monkeypatch.context() as m:
        m.setattr(setup_module, "train_vocab", lambda corpus, size, min_freq: Vocab.build(corpus, size))
        run_train(tiny_corpus, out, "--max-steps", 2, "--eval-every", 2, "--sample-length", 0, "--batching",
                  "windows", "--init", "torch", "--lr", "0.001", "--lr-schedule", "constant", "--warmup", "0",
                  "--weight-decay", "0")
    payload = load_checkpoint(out / "last.pt")
    for key in LEGACY:
        payload["train_config"].pop(key, None)
    for key in ("lr_scale", "bad_evals", "schedule_total"):
        payload.pop(key)
    save_checkpoint(out / "last.pt", payload)
    corpus = load_corpus(tiny_corpus, TokenizerSettings(), progress=False)
    whole = Vocab.build(corpus, 10_000)
    assert payload["vocab"] == whole.to_list() != train_vocab(corpus, 10_000).to_list()
    lm = load(out / "last.pt")
    assert lm.vocab == whole and math.isfinite(lm.evaluate("valid").perplexity)
    assert train.main(["--resume", str(out), "--max-steps", "4", "--no-progress", "--log-every", "1"]) == 0
    resumed = load_checkpoint(out / "last.pt")
    assert resumed["step"] == 4 and resumed["vocab"] == whole.to_list()
    assert resumed["train_config"]["lr_schedule"] == "constant" and resumed["train_config"]["weight_decay"] == 0.0
    assert read_metrics(out)[-1]["lr"] == 0.001
