"""rnnlm.evaluate (exact perplexity) and rnnlm.generate (sampling on the device): functions and CLIs."""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rnnlm import errors
from rnnlm.checkpoint import FORMAT_VERSION, save_checkpoint
from rnnlm.data import TokenizerSettings, Vocab, load_corpus, split_corpus
from rnnlm.errors import UsageError
from rnnlm.evaluate import main as evaluate_main
from rnnlm.evaluation import evaluate_tokens
from rnnlm.generate import main as generate_main
from rnnlm.inference import int8_envelope, stepper
from rnnlm.inference.generation import generate_ids
from rnnlm.inference.sampling import MIN_TEMPERATURE, filter_logits, sample_torch
from rnnlm.inference.text import generate
from rnnlm.model import ModelConfig, WordRNN

E, H = 16, 32
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tiny_corpus):
    """(corpus, vocab, settings) for the tiny corpus."""
    settings = TokenizerSettings()
    corpus = load_corpus(tiny_corpus, settings, progress=False)
    return corpus, Vocab.build(corpus, 100), settings


def make_model(vocab_size: int, seed: int = 0, **overrides) -> WordRNN:
    torch.manual_seed(seed)
    return WordRNN(ModelConfig(vocab_size=vocab_size, embed_size=E, hidden_size=H, num_layers=2, **overrides)).eval()


def uniform_model(vocab_size: int) -> WordRNN:
    """A model whose output layer is all zeros: every word equally likely, perplexity = the vocabulary size."""
    model = make_model(vocab_size)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.zero_()
    return model


def write_checkpoint(path, model, vocab, settings, corpus) -> Path:
    save_checkpoint(path, {
        "format_version": FORMAT_VERSION, "model_config": model.config.to_dict(), "model_state": model.state_dict(),
        "optimizer_state": None, "train_config": {}, "vocab": vocab.to_list(), "tokenizer": settings.to_dict(),
        "corpus": {"path": corpus.path, "content_hash": corpus.content_hash}, "step": 0, "epoch": 0,
        "data_state": {}, "hidden": None, "rng_state": {}, "best_valid_ppl": None})
    return Path(path)


@pytest.fixture(scope="module")
def ckpt(setup, tmp_path_factory):
    corpus, vocab, settings = setup
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", make_model(len(vocab)), vocab, settings,
                            corpus)


def call_main(main, prog: str, capsys, *args) -> tuple[int, str, str]:
    """Runs a CLI's main in this process exactly as its __main__ does: (exit code, stdout, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        errors.run_cli(main, prog, [str(a) for a in args])
    out, err = capsys.readouterr()
    return info.value.code, out, err


def run_cli(module: str, *args, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd or REPO, timeout=300)


# -- evaluate --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch_size", [1, 3, 16, 10_000])
def test_uniform_model_has_perplexity_equal_to_the_vocabulary_size(setup, batch_size):
    corpus, vocab, _ = setup
    model = uniform_model(len(vocab))
    tokens = split_corpus(corpus, vocab)["test"]
    result = evaluate_tokens(model, tokens, batch_size=batch_size, window=7)
    assert result.n_targets == tokens.numel() - 1  # every target counted exactly once
    assert result.nll_sum == pytest.approx((tokens.numel() - 1) * math.log(len(vocab)), rel=1e-6)
    assert result.perplexity == pytest.approx(len(vocab), rel=1e-6)


def test_one_stream_equals_a_single_forward_over_the_whole_split(setup):
    corpus, vocab, _ = setup
    model = make_model(len(vocab))
    tokens = split_corpus(corpus, vocab)["train"][:301]
    with torch.no_grad():
        logits, _ = model(tokens[:-1].view(1, -1))
        ref = F.cross_entropy(logits[0].double(), tokens[1:], reduction="sum").item()
    for window in (1, 7, 128, 1000):
        result = evaluate_tokens(model, tokens, batch_size=1, window=window)
        assert result.n_targets == 300
        assert result.nll_sum == pytest.approx(ref, rel=1e-6)
        assert result.perplexity == pytest.approx(math.exp(ref / 300), rel=1e-6)


def test_streams_and_leftover_targets_are_each_read_once_in_order(setup):
    # 3 streams of 33 targets and 1 leftover target continuing the last stream: compare with explicit forwards.
    corpus, vocab, _ = setup
    model = make_model(len(vocab))
    tokens = split_corpus(corpus, vocab)["train"][:101]
    with torch.no_grad():
        total = 0.0
        hidden = None
        for b in range(3):
            seg = tokens[33 * b: 33 * (b + 1) + 1]
            logits, hidden = model(seg[:-1].view(1, -1))
            total += F.cross_entropy(logits[0].double(), seg[1:], reduction="sum").item()
        logits, _ = model(tokens[99:100].view(1, 1), hidden)
        total += F.cross_entropy(logits[0].double(), tokens[100:101], reduction="sum").item()
    result = evaluate_tokens(model, tokens, batch_size=3, window=5)
    assert result.n_targets == 100
    assert result.nll_sum == pytest.approx(total, rel=1e-6)


def test_too_few_tokens_is_a_usage_error(setup):
    model = make_model(len(setup[1]))
    with pytest.raises(UsageError, match="at least 2"):
        evaluate_tokens(model, torch.tensor([3]))


def test_torch_checkpoint_evaluates_the_same_with_triton(setup, ckpt):
    from rnnlm.checkpoint import load_checkpoint, model_from_checkpoint

    corpus, vocab, _ = setup
    tokens = split_corpus(corpus, vocab)["test"]
    payload = load_checkpoint(ckpt)
    model, _, _ = model_from_checkpoint(payload, backend="cudnn")
    ref = evaluate_tokens(model, tokens, batch_size=8)
    model.backend = "triton"  # switched on the loaded model
    got = evaluate_tokens(model, tokens, batch_size=8)
    assert got.perplexity == pytest.approx(ref.perplexity, rel=1e-4)
    model_t, _, _ = model_from_checkpoint(payload, backend="triton")
    assert evaluate_tokens(model_t, tokens, batch_size=8).perplexity == pytest.approx(ref.perplexity, rel=1e-4)


def test_evaluate_cli_end_to_end(setup, tmp_path):
    corpus, vocab, settings = setup
    path = write_checkpoint(tmp_path / "zero.pt", uniform_model(len(vocab)), vocab, settings, corpus)
    proc = run_cli("rnnlm.evaluate", path, "--split", "valid", "--backend", "cudnn")
    assert proc.returncode == 0, proc.stderr
    match = re.search(r"valid perplexity: ([0-9.]+) \((\d+) tokens", proc.stdout)
    assert match, proc.stdout
    assert float(match.group(1)) == pytest.approx(len(vocab), abs=0.005)
    assert int(match.group(2)) == split_corpus(corpus, vocab)["valid"].numel()


def test_triton_evaluate_cli_on_the_kernels_device(setup, ckpt, device, exact_fp32, capsys):
    """`python -m rnnlm.evaluate --backend triton` on the kernel tests' device (CUDA when there is one, without
    TF32): the perplexity the torch backend gives on the CPU."""
    corpus, vocab, _ = setup
    code, out, err = call_main(evaluate_main, "rnnlm.evaluate", capsys, ckpt, "--split", "valid", "--backend",
                               "triton", "--device", device.type)
    assert code == 0, err
    got = float(re.search(r"valid perplexity: ([0-9.]+)", out).group(1))
    want = evaluate_tokens(make_model(len(vocab)), split_corpus(corpus, vocab)["valid"]).perplexity
    assert got == pytest.approx(want, rel=1e-4)


def test_evaluate_main_with_data_and_batch_size(setup, ckpt, tiny_corpus, capsys):
    corpus, vocab, _ = setup
    code, out, _ = call_main(evaluate_main, "rnnlm.evaluate", capsys, ckpt, "--data", tiny_corpus,
                             "--batch-size", "1", "--device", "cpu")
    assert code == 0
    model = make_model(len(vocab))
    expected = evaluate_tokens(model, split_corpus(corpus, vocab)["test"], batch_size=1).perplexity
    assert f"test perplexity: {expected:.4f}" in out


# -- sampling helpers --------------------------------------------------------------------------------------------

def test_sampling_frequencies_follow_softmax_over_temperature():
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -30.0])
    g = torch.Generator().manual_seed(0)
    for temperature in (0.5, 1.0, 2.0):
        draws = sample_torch(logits.expand(60_000, -1), temperature, g)
        freq = torch.bincount(draws, minlength=6).double() / draws.numel()
        expected = torch.softmax(logits.double() / temperature, -1)
        # 60k draws: the standard error of each frequency is below 0.0021
        assert (freq - expected).abs().max() < 0.01
        assert freq[5] == 0 or expected[5] > 1e-9


def test_sampling_never_picks_a_masked_word_and_survives_tiny_temperatures():
    logits = torch.tensor([[0.0, float("-inf"), 3.0, float("-inf")]]).expand(5000, -1)
    draws = sample_torch(logits, 1.0, torch.Generator().manual_seed(1))
    assert set(draws.tolist()) <= {0, 2}
    sharp = sample_torch(torch.tensor([[1.0, 3.0, 2.9]]), 1e-30, torch.Generator().manual_seed(1))
    assert sharp.tolist() == [1]


def test_top_k_and_top_p_filters():
    logits = torch.log(torch.tensor([[0.05, 0.4, 0.1, 0.3, 0.15]]))
    keep = lambda z: torch.isfinite(z[0]).nonzero().view(-1).tolist()  # noqa: E731
    assert keep(filter_logits(logits, 2, None)) == [1, 3]
    assert keep(filter_logits(logits, 1, None)) == [1]
    assert keep(filter_logits(logits, 99, None)) == [0, 1, 2, 3, 4]
    assert keep(filter_logits(logits, None, 0.4)) == [1]  # the top word alone reaches 0.4
    assert keep(filter_logits(logits, None, 0.5)) == [1, 3]
    assert keep(filter_logits(logits, None, 0.71)) == [1, 3, 4]
    assert keep(filter_logits(logits, None, 1.0)) == [0, 1, 2, 3, 4]
    assert keep(filter_logits(logits, 2, 0.3)) == [1]
    draws = sample_torch(filter_logits(logits.expand(3000, -1), None, 0.5), 1.0, torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {1, 3}


# -- generation ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("input_table", [True, False])
@pytest.mark.parametrize("matvec", stepper.MATVEC_LIBRARIES)
def test_stepper_logits_equal_the_models_forward(setup, monkeypatch, input_table, matvec):
    """With layer 0's input looked up in its (V, H) table, and computed each step (a vocabulary too large for it);
    with torch's products and numpy's (the same buffers)."""
    vocab = setup[1]
    if not input_table:
        monkeypatch.setattr(stepper, "INPUT_TABLE_MAX_BYTES", 0)
    for nonlinearity in ("tanh", "relu"):
        model = make_model(len(vocab), nonlinearity=nonlinearity)
        seq = torch.randint(0, len(vocab), (3, 9), generator=torch.Generator().manual_seed(2))
        with torch.inference_mode():
            ref, _ = model(seq)
            logits, hidden = model(seq[:, :4])
            steps = stepper.TorchStepper(model, hidden, matvec=matvec)
            assert (steps.w.input_table is not None) == input_table
            assert (steps.arrays is not None) == (matvec == "numpy")
            for t in range(4, 9):
                torch.testing.assert_close(steps.step(seq[:, t]), ref[:, t], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(steps.state, model(seq)[1], rtol=1e-5, atol=1e-5)  # the state it carries


def test_numpy_and_torch_steppers_agree_at_every_precision(setup):
    """The library changes the products' rounding only: the same logits (fp16, fp32) or the same hidden state
    (int8, whose draw reads it) to fp32 rounding, step after step, for several samples."""
    if "numpy" not in stepper.MATVEC_LIBRARIES:
        pytest.skip("numpy is not installed")
    vocab = setup[1]
    model = make_model(len(vocab), seed=3)
    tokens = torch.randint(0, len(vocab), (6, 4), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        _, hidden = model(tokens[:2].t())
        for precision in ("fp32", "fp16", "int8"):
            a = stepper.TorchStepper(model, hidden, precision, "torch")
            b = stepper.TorchStepper(model, hidden, precision, "numpy")
            for t in range(2, 6):
                if precision == "int8":
                    torch.testing.assert_close(b.hidden_step(tokens[t]), a.hidden_step(tokens[t]),
                                               rtol=1e-5, atol=1e-6)
                else:
                    torch.testing.assert_close(b.step(tokens[t]), a.step(tokens[t]), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="matvec"):
        stepper.TorchStepper(model, hidden, "fp32", "blas")


def test_greedy_is_the_argmax_of_the_models_next_word_logits(setup):
    vocab = setup[1]
    model = make_model(len(vocab), seed=4)
    prompt = [5, 9, 2]
    out = generate_ids(model, prompt, 12, greedy=True)
    seq = torch.tensor(prompt + out[0].tolist()).view(1, -1)
    with torch.no_grad():
        logits, _ = model(seq)
    # position p's logits predict word p + 1: the first generated word follows the prompt's last word, once
    expected = logits[0, len(prompt) - 1: -1].argmax(-1)
    assert out[0].tolist() == expected.tolist()
    assert generate_ids(model, prompt, 12, temperature=0.0).tolist() == out.tolist()  # temperature 0 = greedy


def test_seeded_generation_is_reproducible(setup):
    _, vocab, settings = setup
    model = make_model(len(vocab))
    a = generate(model, vocab, settings, "国家主席", 40, temperature=0.8, seed=7, num_samples=3)
    b = generate(model, vocab, settings, "国家主席", 40, temperature=0.8, seed=7, num_samples=3)
    c = generate(model, vocab, settings, "国家主席", 40, temperature=0.8, seed=8, num_samples=3)
    assert a == b and a != c
    assert len(a) == 3 and len(set(a)) == 3  # the batched samples are independent draws
    assert all(text.startswith("国家主席") and " " not in text for text in a)
    ids = generate_ids(model, [4, 5], 25, seed=3, top_k=5, top_p=0.9)
    assert ids.shape == (1, 25) and ids.dtype == torch.int64
    assert ids.tolist() == generate_ids(model, [4, 5], 25, seed=3, top_k=5, top_p=0.9).tolist()


def test_fp16_output_layer_stays_close_to_fp32(setup, monkeypatch):
    vocab = setup[1]
    model = make_model(len(vocab))
    seq = torch.randint(0, len(vocab), (2, 6), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref, hidden = model(seq[:, :3])
        ref, _ = model(seq[:, 3:], hidden)
        steps = stepper.TorchStepper(model, hidden, "fp16")
        for t in range(3, 6):
            got = steps.step(seq[:, t])
            if steps.w.fc_fp16 is None:
                pytest.skip("fbgemm fp16 is not available on this machine")
            assert (got - ref[:, t - 3]).abs().max() < 2e-3
    a = generate_ids(model, [4, 5], 20, seed=1, output_precision="fp16")
    assert a.tolist() == generate_ids(model, [4, 5], 20, seed=1, output_precision="fp16").tolist()
    # "auto" (the default) on a CPU with nothing timed (the suite runs with RNNLM_TUNING=off): fp16, fp32 for greedy;
    # with timings, auto runs what they pick (tests/test_tuning.py)
    def auto_is(precision, **kwargs):
        return (generate_ids(model, [4, 5], 20, seed=1, **kwargs).tolist()
                == generate_ids(model, [4, 5], 20, seed=1, output_precision=precision, **kwargs).tolist())

    assert auto_is("fp16", temperature=0.8)
    assert auto_is("fp16", temperature=0.3) and auto_is("fp16", top_k=5) and auto_is("fp16", num_samples=3)
    assert not auto_is("int8", temperature=0.8)                               # the two paths do differ
    assert (generate_ids(model, [4, 5], 20, greedy=True).tolist()
            == generate_ids(model, [4, 5], 20, greedy=True, output_precision="fp32").tolist())
    with pytest.raises(UsageError, match="output precision"):
        generate_ids(model, [4, 5], 3, output_precision="int4")


# -- the int8 envelope: exact draws from the fp32 softmax while reading int8 weights ---------------------------

def envelope_for(v: int, h: int, seed: int = 0) -> int8_envelope.Int8Envelope:
    """An envelope over a (v, h) layer whose rows differ in scale (per-row quantization steps differ)."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(v, h, generator=g) * torch.rand(v, 1, generator=g) * 0.3
    bias = torch.randn(v, generator=g) * 0.5
    envelope = int8_envelope.int8_envelope(weight, bias)
    if envelope is None:
        pytest.skip("fbgemm int8 is not available on this machine")
    return envelope


def test_int8_envelope_bounds_the_exact_logits():
    envelope = envelope_for(2000, 128)
    w64, b64 = envelope.weight.double(), envelope.bias.double()
    g = torch.Generator().manual_seed(1)
    xs = [torch.rand(1, 128, generator=g) * 2 - 1, torch.tanh(3 * torch.randn(1, 128, generator=g)),
          torch.rand(1, 128, generator=g), -torch.rand(1, 128, generator=g), torch.zeros(1, 128),
          torch.randn(1, 128, generator=g) * 40, torch.randn(1, 128, generator=g) * 1e-4,
          torch.cat([torch.full((1, 1), 50.0), torch.rand(1, 127, generator=g) * 1e-3], 1)]
    for i, x in enumerate(xs):  # hidden states like the model's, one-signed, zero, huge, tiny, one spike
        up = envelope.upper_logits(x)[0].double()
        exact = x.double() @ w64.t() + b64                                       # float64 reference
        in_fp32 = torch.from_numpy(envelope.exact_logits(x, np.arange(2000))).double()  # what acceptance computes
        in_torch = torch.addmv(envelope.bias, envelope.weight, x[0]).double()  # float32 in another order
        assert bool((up >= exact).all()) and bool((up >= in_fp32).all()) and bool((up >= in_torch).all()), i
        if i < 4:  # not vacuous for hidden states like the model's: within ~20x of the int8 logits' actual error
            zq = torch.ops.quantized.linear_dynamic(x, envelope.packed, True)[0].double()
            assert (up - exact).max() <= 20 * (zq - exact).abs().max(), i


@pytest.mark.parametrize("inflate", [False, True])
def test_int8_envelope_draws_are_exact(inflate):
    """Chi-square of 40,000 draws against softmax(z / T) in float64. With inflate, the bound is loosened unevenly
    (the envelope then differs grossly from the target): the rejection step alone has to make the draws exact."""
    from test_sample_kernel import chi_square_p_value

    envelope = envelope_for(40, 32, seed=2)
    if inflate:
        envelope.bound_rows[3] += torch.rand(40, generator=torch.Generator().manual_seed(3)) * 2.0
    x = torch.tanh(torch.randn(1, 32, generator=torch.Generator().manual_seed(4)) * 2)
    temperature, n = 0.8, 40_000
    probs = torch.softmax((x.double() @ envelope.weight.double().t() + envelope.bias.double())[0] / temperature, -1)
    out = torch.empty(n, 1, dtype=torch.int64)
    envelope.draw(x.expand(n, -1), 1 / temperature, torch.Generator().manual_seed(5), out)
    counts = torch.bincount(out.view(-1), minlength=40)
    assert chi_square_p_value(counts, probs) > 1e-4
    assert envelope.fallbacks == 0
    if inflate:  # the proposals alone follow the envelope, which the test can tell apart from the target
        up = envelope.upper_logits(x)[0].double()
        assert chi_square_p_value(counts, torch.softmax(up / temperature, -1)) < 1e-9


def test_int8_envelope_falls_back_to_fp32_when_its_bound_fails(caplog):
    envelope = envelope_for(300, 32)
    envelope.bound_rows.zero_()            # the int8 logits themselves as the "bound": often below the exact ones
    x = torch.tanh(torch.randn(64, 32, generator=torch.Generator().manual_seed(6)) * 2)
    out = torch.full((64, 1), -1, dtype=torch.int64)
    envelope.draw(x, 1 / 0.8, torch.Generator().manual_seed(7), out)
    assert envelope.bound_exceeded and envelope.fallbacks > 0
    assert bool(((out >= 0) & (out < 300)).all())
    assert "bound was exceeded" in caplog.text


def test_int8_envelope_at_a_very_low_temperature_stays_exact():
    """T = 1e-3: proposals are almost never accepted; after MAX_ROUNDS the word is an exact fp32 draw (here the
    argmax)."""
    envelope = envelope_for(300, 32)
    x = torch.tanh(torch.randn(8, 32, generator=torch.Generator().manual_seed(8)) * 2)
    exact = torch.addmm(envelope.bias, x, envelope.weight.t())
    for temperature in (1e-3, MIN_TEMPERATURE):
        out = torch.empty(8, 1, dtype=torch.int64)
        envelope.draw(x, 1 / temperature, torch.Generator().manual_seed(9), out)
        assert out.view(-1).tolist() == exact.argmax(-1).tolist()
    assert not envelope.bound_exceeded


def test_prepared_weights_follow_parameter_updates(setup):
    vocab = setup[1]
    model = make_model(len(vocab))
    first = stepper.step_weights(model, "fp32")
    assert stepper.step_weights(model, "fp32") is first  # reused while the parameters are unchanged
    before = generate_ids(model, [3, 4], 6, greedy=True)
    with torch.no_grad():
        model.fc.bias[before[0, 0]] -= 100.0  # an in-place update, as an optimizer step makes
    assert stepper.step_weights(model, "fp32") is not first
    after = generate_ids(model, [3, 4], 6, greedy=True)
    assert after[0, 0] != before[0, 0]
    seq = torch.tensor([3, 4] + after[0].tolist()).view(1, -1)
    with torch.no_grad():
        assert model(seq)[0][0, 1:-1].argmax(-1).tolist() == after[0].tolist()


def test_generation_and_evaluation_ignore_an_enclosing_autocast(setup):
    corpus, vocab, _ = setup
    model = make_model(len(vocab))
    tokens = split_corpus(corpus, vocab)["valid"]
    ref_ids = generate_ids(model, [3, 4], 10, seed=2)
    ref_ppl = evaluate_tokens(model, tokens).perplexity
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert generate_ids(model, [3, 4], 10, seed=2).tolist() == ref_ids.tolist()
        assert evaluate_tokens(model, tokens).perplexity == ref_ppl


def test_generation_restores_training_mode_and_leaves_weights_alone(setup):
    model = make_model(len(setup[1]))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    generate_ids(model, [3], 5, seed=0)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_long_prompt_is_read_in_chunks_with_the_same_result(setup, monkeypatch):
    vocab = setup[1]
    model = make_model(len(vocab))
    prompt = torch.randint(2, len(vocab), (700,), generator=torch.Generator().manual_seed(0)).tolist()
    whole = generate_ids(model, prompt, 8, greedy=True)
    monkeypatch.setattr(stepper, "PRIME_CHUNK", 64)
    with torch.no_grad():
        logits_c, hidden_c = stepper.prime(model, prompt, torch.device("cpu"))
        logits, hidden = model(torch.tensor(prompt).view(1, -1))
    torch.testing.assert_close(logits_c, logits[:, -1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hidden_c, hidden, rtol=1e-5, atol=1e-5)
    assert generate_ids(model, prompt, 8, greedy=True).tolist() == whole.tolist()


def test_prompt_of_unknown_words_and_empty_prompt(setup):
    _, vocab, settings = setup
    model = make_model(len(vocab))
    warnings = []
    texts = generate(model, vocab, settings, "魑魅魍魉", 5, seed=0, warn=warnings.append)
    assert texts[0].startswith("魑魅魍魉") and len(warnings) == 1 and "<unk>" in warnings[0]
    for empty in ("", "   \n\t"):
        with pytest.raises(UsageError, match="prompt is empty"):
            generate(model, vocab, settings, empty, 5)


@pytest.mark.parametrize("kwargs,match", [
    ({"temperature": -1.0}, "use greedy"), ({"temperature": float("nan")}, "use greedy"),
    ({"temperature": float("inf")}, "use greedy"), ({"top_k": 0}, "top_k"), ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"), ({"num_samples": 0}, "num_samples"), ({"length": 0}, "length")])
def test_bad_generation_settings(setup, kwargs, match):
    model = make_model(len(setup[1]))
    with pytest.raises(UsageError, match=match):
        generate_ids(model, [3], **{"length": 5, **kwargs})


def test_triton_generation_is_seeded_and_greedy_matches_cudnn(setup):
    vocab = setup[1]
    model = make_model(len(vocab), seed=4)
    greedy_ref = generate_ids(model, [5, 9, 2], 6, greedy=True)
    model.backend = "triton"
    assert generate_ids(model, [5, 9, 2], 6, greedy=True).tolist() == greedy_ref.tolist()
    a = generate_ids(model, [5, 9], 6, seed=11, num_samples=2, top_k=10)
    assert a.tolist() == generate_ids(model, [5, 9], 6, seed=11, num_samples=2, top_k=10).tolist()
    assert ((a >= 0) & (a < len(vocab))).all()


def test_generate_cli_end_to_end(ckpt, capsys):
    args = [ckpt, "--prompt", "国家主席", "--length", "30", "--temperature", "0.8", "--seed", "3",
            "--num-samples", "2", "--top-k", "20", "--top-p", "0.95"]
    proc = run_cli("rnnlm.generate", *args)
    assert proc.returncode == 0, proc.stderr
    samples = [line for line in proc.stdout.splitlines() if not line.startswith("---")]
    assert len(samples) == 2 and all(s.startswith("国家主席") for s in samples)
    code, out, _ = call_main(generate_main, "rnnlm.generate", capsys, *args)
    assert code == 0 and out == proc.stdout  # the same seed gives the same samples in another process
    code, out, _ = call_main(generate_main, "rnnlm.generate", capsys, ckpt, "--prompt", "国家主席",
                             "--length", "10", "--greedy", "--output-precision", "fp16")
    assert code == 0 and out.startswith("国家主席")


def test_triton_generate_cli_on_the_kernels_device(ckpt, device, exact_fp32, capsys):
    """`python -m rnnlm.generate --backend triton` on the kernel tests' device (CUDA when there is one, without
    TF32): seeded samples that start with the prompt, the same in two runs; greedy decoding is the torch
    backend's."""
    args = [ckpt, "--prompt", "国家主席", "--length", "12", "--temperature", "0.8", "--seed", "3", "--num-samples",
            "2", "--top-k", "20", "--backend", "triton", "--device", device.type]
    code, out, err = call_main(generate_main, "rnnlm.generate", capsys, *args)
    assert code == 0, err
    samples = [line for line in out.splitlines() if not line.startswith("---")]
    assert len(samples) == 2 and all(s.startswith("国家主席") for s in samples)
    assert call_main(generate_main, "rnnlm.generate", capsys, *args)[1] == out
    greedy = {}
    for backend, where in (("triton", device.type), ("torch", "cpu")):
        code, greedy[backend], err = call_main(generate_main, "rnnlm.generate", capsys, ckpt, "--prompt", "国家主席",
                                               "--length", "8", "--greedy", "--backend", backend, "--device", where)
        assert code == 0, err
    assert greedy["triton"] == greedy["torch"]


def test_generate_main_prompt_of_unknown_words_warns(ckpt, capsys):
    code, out, err = call_main(generate_main, "rnnlm.generate", capsys, ckpt, "--prompt", "魑魅魍魉",
                               "--length", "5", "--seed", "0")
    assert code == 0
    assert out.startswith("魑魅魍魉") and "warning" in err


def _assert_one_line_error(code, err, *needles):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_generate_cli_bad_temperature_in_a_subprocess(ckpt):
    proc = run_cli("rnnlm.generate", ckpt, "--temperature", "nan")
    _assert_one_line_error(proc.returncode, proc.stderr, "--greedy")


@pytest.mark.parametrize("temperature", ["0", "-0.5", "inf", "-inf"])
def test_generate_main_bad_temperature(ckpt, temperature, capsys):
    code, _, err = call_main(generate_main, "rnnlm.generate", capsys, ckpt, f"--temperature={temperature}")
    _assert_one_line_error(code, err, "--greedy")


@pytest.mark.parametrize("args,needle", [
    (["--length", "0"], "--length"), (["--num-samples", "-1"], "--num-samples"), (["--top-k", "0"], "--top-k"),
    (["--top-p", "1.5"], "--top-p"), (["--prompt", ""], "prompt is empty"), (["--prompt", " \t"], "prompt is empty")])
def test_generate_main_bad_arguments(ckpt, args, needle, capsys):
    code, _, err = call_main(generate_main, "rnnlm.generate", capsys, ckpt, *args)
    _assert_one_line_error(code, err, needle)


def test_clis_refuse_missing_and_corrupt_checkpoints(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint", encoding="utf-8")
    proc = run_cli("rnnlm.evaluate", bad)
    _assert_one_line_error(proc.returncode, proc.stderr, "not an rnnlm checkpoint")
    for main, prog in ((generate_main, "rnnlm.generate"), (evaluate_main, "rnnlm.evaluate")):
        _assert_one_line_error(*call_main(main, prog, capsys, tmp_path / "missing.pt")[::2], "checkpoint not found")
        _assert_one_line_error(*call_main(main, prog, capsys, bad)[::2], "not an rnnlm checkpoint")


def test_evaluate_main_bad_arguments(setup, ckpt, tmp_path, capsys):
    _assert_one_line_error(*call_main(evaluate_main, "rnnlm.evaluate", capsys, ckpt, "--batch-size", "0")[::2],
                           "--batch-size")
    corpus, vocab, settings = setup
    gone = tmp_path / "gone.txt"
    gone.write_text(Path(corpus.path).read_text(encoding="utf-8"), encoding="utf-8")
    moved = load_corpus(gone, settings, progress=False)
    path = write_checkpoint(tmp_path / "m.pt", make_model(len(vocab)), vocab, settings, moved)
    gone.unlink()
    _assert_one_line_error(*call_main(evaluate_main, "rnnlm.evaluate", capsys, path)[::2], "--data")
