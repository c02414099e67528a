import torch

from gptlab.config import ModelConfig
from gptlab.inference.probs import next_token_probs, top_candidates
from gptlab.model.gpt import GPT
from gptlab.tokenizers import CharTokenizer


def test_distribution_matches_the_model_and_candidates_are_sorted():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=6, block_size=8, n_layer=1, n_head=1, n_embd=8)).eval()
    tok = CharTokenizer("abcde\n")
    ids = tok.encode("abcabcabcab")  # longer than block_size: only the last 8 count
    probs = next_token_probs(model, ids)
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids[-8:]]))
    assert torch.allclose(probs, torch.softmax(logits[0, -1], -1))
    assert abs(probs.sum().item() - 1) < 1e-5
    cands = top_candidates(tok, probs, 3)
    assert [c.prob for c in cands] == sorted((c.prob for c in cands), reverse=True)
    assert cands[0].id == int(probs.argmax()) and cands[0].piece == tok.decode([cands[0].id])
    hot = next_token_probs(model, ids, temperature=0.5)
    assert hot.max() > probs.max()  # lower temperature sharpens the distribution
