"""Issue 13's text: <pad> never drawn, <unk> only when asked for (greedy, top-k, top-p and the int8 envelope too,
renormalised exactly), generation that streams, and the next-word distribution view (WordRNN method, CLI, PNG)."""
from __future__ import annotations

import io
import itertools

import pytest
import torch

from rnnlm.data import PAD, UNK, TokenizerSettings, Vocab, load_corpus
from rnnlm.generate import main as generate_main
from rnnlm.generate import write_samples
from rnnlm.inference.distribution import next_words, parse_temperatures
from rnnlm.inference.generation import generate_ids, stream_ids
from rnnlm.inference.text import generate, prompt_ids
from rnnlm.errors import UsageError

from test_generate_evaluate import call_main, envelope_for, make_model, write_checkpoint
from test_sample_kernel import chi_square_p_value

BANNED = [0, 1]  # <pad>, <unk>

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tiny_corpus):
    settings = TokenizerSettings()
    corpus = load_corpus(tiny_corpus, settings, progress=False)
    return corpus, Vocab.build(corpus, 60), settings


def tempting_model(vocab_size: int, backend: str = "torch"):
    """A model that, left alone, would draw <pad> and <unk> most of the time."""
    model = make_model(vocab_size)
    with torch.no_grad():
        model.fc.bias[:2] += 6.0
    model.backend = backend
    return model


@pytest.mark.parametrize("kwargs", [
    {"temperature": 5.0, "output_precision": "fp32"}, {"temperature": 5.0, "output_precision": "fp16"},
    {"temperature": 5.0, "output_precision": "int8"}, {"greedy": True}, {"temperature": 5.0, "top_k": 3},
    {"temperature": 5.0, "top_p": 0.5}, {"temperature": 2.0, "num_samples": 8}])
def test_pad_and_unk_are_never_drawn(setup, kwargs):
    _, vocab, _ = setup
    model = tempting_model(len(vocab))
    ids = generate_ids(model, [5, 6], 200, seed=0, banned=BANNED, **kwargs)
    assert not bool((ids < 2).any())
    free = generate_ids(model, [5, 6], 200, seed=0, **kwargs)  # without the ban the model does draw them
    assert bool((free < 2).any())


@pytest.mark.parametrize("kwargs", [{"temperature": 5.0}, {"greedy": True}, {"temperature": 5.0, "top_k": 3},
                                    {"temperature": 5.0, "top_p": 0.5}])
def test_pad_and_unk_are_never_drawn_on_triton(setup, kwargs):
    _, vocab, _ = setup
    ids = generate_ids(tempting_model(len(vocab), "triton"), [5, 6], 12, seed=0, num_samples=8, banned=BANNED,
                       **kwargs)
    assert not bool((ids < 2).any())


def test_text_generation_bans_unk_unless_allowed(setup):
    _, vocab, settings = setup
    model = tempting_model(len(vocab))
    text = generate(model, vocab, settings, "我们", 300, temperature=3.0, seed=1)[0]
    assert UNK not in text and PAD not in text
    assert UNK in generate(model, vocab, settings, "我们", 300, temperature=3.0, seed=1, allow_unk=True)[0]


def test_int8_envelope_with_banned_words_draws_exactly_from_the_renormalised_softmax():
    """Chi-square of 10,000 draws against softmax(z / T) with the banned words removed, renormalised, in fp64."""
    envelope = envelope_for(40, 32, seed=2)
    x = torch.tanh(torch.randn(1, 32, generator=torch.Generator().manual_seed(4)) * 2)
    temperature, n = 0.8, 10_000
    z = (x.double() @ envelope.weight.double().t() + envelope.bias.double())[0] / temperature
    banned = torch.tensor([int(z.argmax()), 3])  # the likeliest word among them: the renormalisation matters
    z[banned] = float("-inf")
    probs = torch.softmax(z, -1)
    out = torch.empty(n, 1, dtype=torch.int64)
    envelope.draw(x.expand(n, -1), 1 / temperature, torch.Generator().manual_seed(5), out, banned)
    counts = torch.bincount(out.view(-1), minlength=40)
    assert int(counts[banned].sum()) == 0
    assert chi_square_p_value(counts[probs > 0], probs[probs > 0]) > 1e-4


def test_torch_draw_with_banned_words_follows_the_renormalised_softmax(setup):
    """The fp32 path: 4,000 samples of one step against softmax(z / T) without <pad>, <unk>."""
    _, vocab, _ = setup
    model = tempting_model(len(vocab))
    with torch.no_grad():
        z = model(torch.tensor([[5, 6]]))[0][0, -1].double() / 1.5
    z[:2] = float("-inf")
    probs = torch.softmax(z, -1)
    ids = generate_ids(model, [5, 6], 1, temperature=1.5, num_samples=4000, seed=3, output_precision="fp32",
                       banned=BANNED)
    counts = torch.bincount(ids.view(-1), minlength=len(vocab))
    keep = probs > 0
    assert int(counts[~keep].sum()) == 0 and chi_square_p_value(counts[keep], probs[keep]) > 1e-4


def test_generation_streams(setup):
    """A length of 10^12 allocates nothing up front: the first words come at once and equal a short run's."""
    _, vocab, _ = setup
    model = make_model(len(vocab))
    words = stream_ids(model, [5, 6], 10**12, temperature=0.9, seed=4, banned=BANNED)
    first = torch.stack(list(itertools.islice(words, 300)), dim=1)
    words.close()
    assert first.tolist() == generate_ids(model, [5, 6], 300, temperature=0.9, seed=4, banned=BANNED).tolist()


def test_stream_restores_training_mode_when_closed(setup):
    _, vocab, _ = setup
    model = make_model(len(vocab)).train()
    words = stream_ids(model, [5], 50, seed=0)
    next(words)
    assert not model.training
    words.close()
    assert model.training


class _Out(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty, self.flushes = tty, 0

    def isatty(self) -> bool:
        return self.tty

    def flush(self) -> None:
        self.flushes += 1


@pytest.mark.parametrize("tty", [True, False])
def test_cli_writes_words_as_drawn(tty):
    out = _Out(tty)
    seen = []

    def words():
        for w in ["我们", "的", "祖国"]:
            seen.append(out.getvalue())  # what was written before this word was drawn
            yield [w]

    write_samples(words(), "你好", 1, out)
    assert out.getvalue() == "你好我们的祖国\n"
    assert seen == ["你好", "你好我们", "你好我们的"]
    assert out.flushes == (4 if tty else 1)  # per word on a terminal; a pipe gets the line


def test_cli_several_samples():
    out = _Out(False)
    write_samples(iter([["a", "b"], ["c", "d"]]), "p", 2, out)
    assert out.getvalue() == "--- sample 1\npac\n--- sample 2\npbd\n"


# -- the distribution ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_next_word_distribution_is_softmax_over_temperature(setup, backend, temperature):
    _, vocab, _ = setup
    model = make_model(len(vocab))
    x = torch.tensor([[5, 6, 7], [8, 9, 10]])
    logits, _ = model(x)
    model.backend = backend
    probs, hidden = model.next_word_distribution(x, None, temperature)
    torch.testing.assert_close(probs, torch.softmax(logits[:, -1] / temperature, -1), rtol=1e-5, atol=1e-7)
    assert hidden.shape == (2, 2, 32)
    mask = torch.zeros(len(vocab), dtype=torch.bool)
    mask[:2] = True
    masked, _ = model.next_word_distribution(x, None, temperature, mask)
    want = torch.softmax(logits[:, -1, 2:] / temperature, -1)
    assert bool((masked[:, :2] == 0).all())
    torch.testing.assert_close(masked[:, 2:], want, rtol=1e-5, atol=1e-7)


def test_next_word_distribution_gradient_on_triton_matches_torch(setup):
    _, vocab, _ = setup
    x = torch.tensor([[5, 6, 7]])
    weights = torch.rand(len(vocab), generator=torch.Generator().manual_seed(0))
    grads = {}
    for backend in ("torch", "triton"):
        model = make_model(len(vocab))
        model.backend = backend
        probs, _ = model.next_word_distribution(x, None, 0.7)
        (probs[0] * weights).sum().backward()
        grads[backend] = [p.grad for p in (model.fc.weight, model.fc.bias, model.embedding.weight)]
    for got, want in zip(grads["triton"], grads["torch"]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_next_words_view(setup):
    _, vocab, settings = setup
    model = tempting_model(len(vocab))
    view = next_words(model, vocab, settings, "我们", [0.5, 1.0, 2.0], top=5)
    assert PAD not in view.words and UNK not in view.words and len(view.words) == 5
    ids = torch.tensor([prompt_ids(vocab, settings, "我们")])
    with torch.no_grad():
        z = model(ids)[0][0, -1].double()
    z[:2] = float("-inf")
    for t, probs in zip(view.temperatures, view.probs):
        full = torch.softmax(z / t, -1)
        assert probs == pytest.approx([float(full[vocab.stoi[w]]) for w in view.words], rel=1e-5)
        assert probs == sorted(probs, reverse=True)
    assert view.probs[0][0] > view.probs[1][0] > view.probs[2][0]  # a lower temperature sharpens the top word
    assert "T=0.5" in view.format() and "<pad>, <unk> excluded" in view.format()


def test_generate_cli_top_words_and_plot(setup, tmp_path, capsys):
    corpus, vocab, settings = setup
    ckpt = write_checkpoint(tmp_path / "m.pt", make_model(len(vocab)), vocab, settings, corpus)
    png = tmp_path / "next.png"
    code, out, err = call_main(generate_main, "rnnlm.generate", capsys, ckpt, "--prompt", "我们", "--top-words", 4,
                               "--temperatures", "0.5,1,2", "--plot", png)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("next word after '我们' (top 4") and "T=0.5" in lines[1] and "T=2" in lines[1]
    assert len([line for line in lines if line.strip().endswith("%")]) == 4
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, _, err = call_main(generate_main, "rnnlm.generate", capsys, ckpt, "--plot", png)
    assert code == 2 and "--top-words" in err
    code, _, err = call_main(generate_main, "rnnlm.generate", capsys, ckpt, "--top-words", 3, "--temperatures", "1,x")
    assert code == 2 and "--temperatures" in err


def test_parse_temperatures():
    assert parse_temperatures("0.5, 1,2") == [0.5, 1.0, 2.0]
    for bad in ("", "0", "-1", "a", "inf"):
        with pytest.raises(UsageError):
            parse_temperatures(bad)
