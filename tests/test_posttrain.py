"""Post-training mechanics: chat tokens after the vocabulary, the template, records, batches with a
loss mask, the DPO loss, and the poem converter."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import assert_clean_error, cli_in_process
from gptlab.config import ModelConfig
from gptlab.data.corpora import SkipReport
from gptlab.errors import GptlabError
from gptlab.model import build_model
from gptlab.model.loss import lm_loss
from gptlab.posttrain.dpo import DPOObjective, dpo
from gptlab.posttrain.examples import RecordLoader, collate, encode_example, encode_pair, pair_batch
from gptlab.posttrain.grow import load_grown
from gptlab.posttrain.poems import verse_form
from gptlab.posttrain.records import PreferencePair, read_instructions, read_preferences
from gptlab.posttrain.template import CHAT_TOKENS, ChatTemplate, Message, add_chat_tokens
from gptlab.tokenizers import BPETokenizer, CharTokenizer, load_tokenizer

TEXT = "秦川雄帝宅，函谷壯皇居。\nHello, world!"
CONVERSATION = [
    Message("system", "be brief"),
    Message("user", "請寫詩"),
    Message("assistant", "秦川雄帝宅，"),
    Message("user", "Hello"),
    Message("assistant", "world!"),
]


@pytest.fixture(scope="module")
def char() -> CharTokenizer:
    return CharTokenizer(TEXT + "請寫詩be brief")


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer.train([TEXT * 20, "be brief 請寫詩"], vocab_size=300)


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_chat_tokens_come_after_the_vocabulary_and_old_ids_stay(kind, request, tmp_path):
    base = request.getfixturevalue(kind)
    chat = add_chat_tokens(base)
    assert chat.vocab_size == base.vocab_size + len(CHAT_TOKENS)
    assert [chat.token_id(t) for t in CHAT_TOKENS] == list(range(base.vocab_size, chat.vocab_size))
    assert chat.encode(TEXT) == base.encode(TEXT)  # the pretrained ids never change
    if kind == "bpe":  # typed text that spells a marker stays text: only the template inserts markers
        assert chat.token_id("<|end|>") not in chat.encode("<|end|>")
    chat.save(tmp_path / "tokenizer.json")
    again = load_tokenizer(tmp_path / "tokenizer.json")
    assert again.to_dict() == chat.to_dict() and again.encode(TEXT) == base.encode(TEXT)
    assert add_chat_tokens(again) is again  # adding twice adds nothing


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_template_round_trips_and_masks_only_the_assistant(kind, request):
    template = ChatTemplate(add_chat_tokens(request.getfixturevalue(kind)))
    ids, trained = template.encode(CONVERSATION)
    assert template.decode(ids) == CONVERSATION
    tok = template.tokenizer
    answer_ids = [i for i, t in zip(ids, trained) if t]
    # What is trained is exactly the assistant turns' text and their end-of-turn tokens.
    expected = tok.encode("秦川雄帝宅，") + [template.end_id] + tok.encode("world!") + [template.end_id]
    assert answer_ids == expected
    prompt = template.prompt(CONVERSATION[:2])
    assert prompt[-1] == template.role_ids["assistant"] and template.decode(prompt)[-1] == Message("assistant", "")


def test_base_tokenizer_has_no_template(char):
    with pytest.raises(GptlabError, match="no chat template"):
        ChatTemplate(char)


def test_history_keeps_the_latest_turns_within_the_window(char):
    template = ChatTemplate(add_chat_tokens(char))
    full = template.prompt(CONVERSATION)
    ids, dropped = template.prompt_within(CONVERSATION, len(full) - 1)
    assert dropped >= 1 and len(ids) <= len(full) - 1
    assert template.decode(ids)[0] == Message("system", "be brief")  # the system message stays
    with pytest.raises(GptlabError, match="does not fit"):
        template.prompt_within(CONVERSATION, 3)


def test_new_rows_are_the_mean_and_old_rows_are_kept():
    torch.manual_seed(0)
    small = build_model(ModelConfig(vocab_size=10, n_layer=1, n_head=2, n_embd=8, block_size=8, tie_embeddings=False))
    big = build_model(ModelConfig(vocab_size=13, n_layer=1, n_head=2, n_embd=8, block_size=8, tie_embeddings=False))
    load_grown(small, big)
    for name in ("wte.weight", "lm_head.weight"):
        old, new = small.state_dict()[name], big.state_dict()[name]
        assert torch.equal(new[:10], old)
        assert torch.allclose(new[10:], old.mean(0).expand(3, -1))
    x = torch.tensor([[1, 2, 3]])
    assert torch.allclose(small(x)[0], big(x)[0][..., :10])  # the old ids' logits are unchanged


def test_masked_prompt_tokens_contribute_no_gradient(char):
    template = ChatTemplate(add_chat_tokens(char))
    report = SkipReport()
    rows = [encode_example(template, CONVERSATION[1:3], 64, report), encode_example(template, CONVERSATION, 64, report)]
    batch = collate(rows)
    assert batch.loss_mask[0].sum() == len(char.encode("秦川雄帝宅，")) + 1
    logits = torch.randn(*batch.inputs.shape, template.tokenizer.vocab_size, requires_grad=True)
    lm_loss(logits, batch.loss_targets()).backward()
    touched = logits.grad.abs().sum(-1) > 0
    assert torch.equal(touched, batch.loss_mask)  # prompts and padding: exactly zero gradient
    # And so the prompt's tokens can be anything: the loss does not move.
    scrambled = batch.targets.masked_fill(~batch.loss_mask, 0)
    assert lm_loss(logits, scrambled.masked_fill(~batch.loss_mask, -1)).item() == pytest.approx(
        lm_loss(logits, batch.loss_targets()).item()
    )


def test_dpo_loss_is_ln2_when_policy_is_the_reference(char):
    template = ChatTemplate(add_chat_tokens(char))
    report = SkipReport()
    pairs = [
        encode_pair(template, PreferencePair("請寫詩", "秦川雄帝宅，", "Hello"), 64, report),
        encode_pair(template, PreferencePair("Hello", "world!", "函谷壯皇居。"), 64, report),
    ]
    batch = pair_batch(pairs)
    torch.manual_seed(0)
    policy = build_model(
        ModelConfig(vocab_size=template.tokenizer.vocab_size, n_layer=1, n_head=2, n_embd=16, block_size=64)
    )
    reference = build_model(policy.config)
    reference.load_state_dict(policy.state_dict())
    measured = DPOObjective(reference, beta=0.1).measure(policy, batch)
    assert measured.loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert measured.margin.item() == pytest.approx(0, abs=1e-6)
    # Preferring the chosen answers more than the reference does lowers the loss below ln 2.
    better = dpo(torch.tensor([-1.0, -2.0, -9.0, -9.0]), torch.tensor([-5.0, -5.0, -5.0, -5.0]), beta=0.5)
    assert better.loss.item() < math.log(2) and better.accuracy.item() == 1.0


def test_loader_resumes_the_same_order(char):
    template = ChatTemplate(add_chat_tokens(char))
    items = [
        encode_example(template, [Message("user", c), Message("assistant", c * (i % 3 + 1))], 64, SkipReport())
        for i, c in enumerate("秦川雄帝宅函谷壯皇居")
    ]
    a = RecordLoader(items, 3, seed=7)
    for _ in range(4):  # crosses an epoch boundary (10 records, 3 per batch)
        a.next_batch()
    b = RecordLoader(items, 3, seed=7)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    for _ in range(5):
        x, y = a.next_batch(), b.next_batch()
        assert torch.equal(x.inputs, y.inputs) and torch.equal(x.loss_mask, y.loss_mask)


def test_bad_records_are_counted_with_their_reason(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(
        "\n".join(
            [
                json.dumps({"prompt": "a", "response": "b"}),
                json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}),
                json.dumps({"prompt": "a"}),
                json.dumps({"messages": [{"role": "robot", "content": "x"}]}),
                json.dumps({"messages": [{"role": "user", "content": "only a question"}]}),
                "not json",
                "[1, 2]",
                "",
            ]
        ),
        encoding="utf-8",
    )
    report = SkipReport()
    conversations = read_instructions(path, report)
    assert [[m.role for m in c] for c in conversations] == [["user", "assistant"]] * 2
    assert report.total == 5 and any("role other than" in line for line in report.lines())
    with pytest.raises(GptlabError, match="no usable preference records"):
        read_preferences(path, SkipReport())


def test_verse_forms():
    assert verse_form("秦川雄帝宅，函谷壯皇居。\n綺殿千尋起，離宮百雉餘。") == "five"
    assert verse_form("飛雪斷道冰成梁，侯家熾炭雕玉房。") == "seven"
    assert verse_form("秦川雄帝宅，函谷壯皇居居。") == "other"


def test_poem_data_cli(capsys, tmp_path, tang_jsonl):
    poems = tmp_path / "poems.jsonl"
    with open(tang_jsonl, encoding="utf-8") as f:
        lines = [next(f) for _ in range(200)]
    poems.write_text("".join(lines) + '{"title": "", "paragraphs": ["x"]}\n', encoding="utf-8")
    sft, pairs = tmp_path / "sft.jsonl", tmp_path / "pairs.jsonl"
    done = cli_in_process(
        capsys,
        "poem-data",
        poems,
        "--instructions",
        sft,
        "--preferences",
        pairs,
        "--template",
        "題：{title}（{author}）",
    )
    assert done.returncode == 0 and "skipped 1: poem without a 'title' string" in done.stdout
    first = json.loads(sft.read_text(encoding="utf-8").splitlines()[0])
    record = json.loads(lines[0])
    assert first == {
        "prompt": f"題：{record['title']}（{record['author']}）",
        "response": "\n".join(record["paragraphs"]),
    }
    for line in pairs.read_text(encoding="utf-8").splitlines():
        pair = json.loads(line)
        assert verse_form(pair["chosen"]) == "five" and verse_form(pair["rejected"]) == "seven"
    bad = cli_in_process(capsys, "poem-data", poems, "--instructions", sft, "--template", "{nope}")
    assert_clean_error(bad, "template")


def test_post_training_extends_the_public_training_session_through_its_hooks():
    from gptlab.posttrain.session import SESSIONS, PosttrainSession
    from gptlab.train.trainer import TrainingSession

    assert all(issubclass(session, TrainingSession) for session in SESSIONS.values())
    overridden = {name for name in vars(PosttrainSession) if callable(getattr(TrainingSession, name, None))}
    assert overridden and overridden <= set(TrainingSession.HOOKS)  # never the loop, checkpoints or resume


def test_a_session_that_overrides_the_weights_and_objective_hooks_trains_from_and_on_them(char_dataset, tmp_path):
    from gptlab.config import build_config
    from gptlab.train.step import language_model_objective
    from gptlab.train.trainer import TrainingSession, train

    class Halved(TrainingSession):
        """Starts from a head that says every token is equally likely, and minimises half the loss."""

        def start_weights(self) -> int:
            torch.nn.init.zeros_(self.model.lm_head.weight)
            return 0

        def objective(self):
            return lambda model, batch: 0.5 * language_model_objective(model, batch)

    overrides = ["n_layer=1", "tie_embeddings=false", "max_steps=2", "eval_interval=2", "checkpoint_interval=2"]
    overrides += ["eval_batches=1", "batch_size=2", "sample_tokens=0", "log_interval=1", "device=cpu", "compile=off"]
    cfg = build_config("cpu-tiny", None, overrides)
    cfg.data = str(char_dataset)
    assert train(cfg, tmp_path / "run", session=Halved).step == 2
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    uniform = math.log(cfg.model.vocab_size)
    assert records[0]["step"] == 0 and records[0]["val_loss"] == pytest.approx(uniform, abs=1e-5)  # its weights
    first_step = next(r for r in records if r.get("step") == 1 and "train_loss" in r)
    assert first_step["train_loss"] == pytest.approx(0.5 * uniform, abs=1e-5)  # its objective


def test_a_long_history_is_encoded_once_per_kept_turn(char, monkeypatch):
    """Thousands of tiny messages cost the turns that fit, never one encoding of the conversation per
    dropped turn (which was quadratic in the messages)."""
    template = ChatTemplate(add_chat_tokens(char))
    history = [Message("system", "be brief")] + [Message("user", "詩") for _ in range(5000)]
    calls = []
    encode = template.tokenizer.encode
    monkeypatch.setattr(template.tokenizer, "encode", lambda text: calls.append(text) or encode(text))
    ids, dropped = template.prompt_within(history, 40)
    assert len(ids) <= 40 and len(calls) < 20
    assert template.prompt(history[:1] + history[1 + dropped :]) == ids  # the same prompt as encoding the kept turns
