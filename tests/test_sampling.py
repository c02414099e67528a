import torch

from gptlab.config import ModelConfig
from gptlab.inference.decoding import SamplingParams
from gptlab.inference.engine import generate_steps
from gptlab.inference.generate import complete
from gptlab.inference.sampling import filter_logits, sample_rows
from gptlab.inference.text import StreamDecoder
from gptlab.model.gpt import GPT
from gptlab.tokenizers import CharTokenizer


def test_temperature_zero_is_argmax():
    logits = torch.tensor([[0.1, 3.0, 2.9], [5.0, -1.0, 4.0]])
    assert sample_rows(logits, [None, None], temperature=0).tolist() == [1, 0]


def test_top_k_never_picks_outside_the_k_best():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 50, generator=g)
    allowed = set(torch.topk(logits, 5).indices[0].tolist())
    picks = {int(sample_rows(logits, [g], 1.5, top_k=5)) for _ in range(500)}
    assert picks <= allowed and len(picks) > 1


def test_top_p_keeps_the_smallest_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(filter_logits(logits, 1.0, top_p=0.7))[0].tolist()
    assert kept == [True, True, False, False]  # 0.5 < 0.7 so 0.3 is needed; 0.8 >= 0.7 stops
    g = torch.Generator().manual_seed(1)
    picks = {int(sample_rows(logits, [g], 1.0, top_p=0.7)) for _ in range(300)}
    assert picks == {0, 1}


def test_top_p_always_keeps_the_top_token():
    logits = torch.tensor([[4.0, 1.0, 0.0]])
    assert torch.isfinite(filter_logits(logits, 1.0, top_p=0.01))[0].tolist() == [True, False, False]


def _model(block_size=16):
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=10, block_size=block_size, n_layer=1, n_head=2, n_embd=16)).eval()


def test_generation_slides_past_block_size():
    model = _model(block_size=16)
    steps = list(generate_steps(model, None, [[0] * 10], SamplingParams(40, temperature=0)))
    assert len(steps) == 40  # 50 tokens in all, far past the 16-token window


def test_same_seed_same_text_different_seed_different_text():
    model = _model()
    tok = CharTokenizer("abcdefghi\n")
    a = "".join(complete(model, tok, "abc", 60, temperature=1.0, seed=5))
    b = "".join(complete(model, tok, "abc", 60, temperature=1.0, seed=5))
    c = "".join(complete(model, tok, "abc", 60, temperature=1.0, seed=6))
    assert a == b and a != c and len(a) == 60


def test_stream_decoder_holds_back_partial_characters():
    class Bytes(CharTokenizer):
        def decode(self, ids):
            return bytes(ids).decode("utf-8", errors="replace")

    dec = Bytes("x")
    stream = StreamDecoder(dec)
    pieces = [stream.push(b) for b in "語a".encode()]
    assert pieces == ["", "", "語", "a"]
