"""`gptlab chat RUN`: a conversation with a fine-tuned run in the terminal.

Each answer streams as it is generated and ends at the model's end-of-turn (or max_tokens). The
whole conversation is the prompt of the next answer; when it outgrows the context window, the
oldest turns are dropped (a system message, if given, stays). Ctrl-D (end of input) or Ctrl-C
leaves cleanly; Ctrl-C during an answer also leaves.
"""

from __future__ import annotations

import sys

from gptlab.device import pick_device
from gptlab.inference.decoding import SamplingParams
from gptlab.inference.engine import generate_steps
from gptlab.model.gpt import GPT
from gptlab.posttrain.template import END, ChatTemplate, Message
from gptlab.runs import load_run


def chat(
    run: str,
    device: str = "auto",
    temperature: float = 0.8,
    top_p: float = 1.0,
    max_tokens: int = 0,
    seed: int | None = None,
    system: str = "",
) -> None:
    """Talk with run until Ctrl-D or Ctrl-C (max_tokens 0: up to the context window)."""
    loaded = load_run(run, pick_device(device))
    template = ChatTemplate(loaded.tokenizer)  # refuses a base run with one line
    model = loaded.model
    assert isinstance(model, GPT)  # chat tokens come from finetune, which takes only GPT runs
    block = loaded.config.model.block_size
    SamplingParams(max_tokens or block, temperature, top_p=top_p, seed=seed).validate()
    history = [Message("system", system)] if system else []
    print(f"chatting with {loaded.path} (step {loaded.step}); Ctrl-D or Ctrl-C leaves", flush=True)
    turn = 0
    try:
        while True:
            try:
                text = input("you> ")
            except EOFError:
                print()
                return
            if not text.strip():
                continue
            history.append(Message("user", text))
            ids, dropped = template.prompt_within(history, block - 1)
            if dropped:
                history = history[:1] + history[1 + dropped :] if system else history[dropped:]
                print(f"(the {dropped} oldest message(s) no longer fit in the context and are left out)")
            params = SamplingParams(
                max_tokens or block, temperature, top_p=top_p, stop=[END], seed=None if seed is None else seed + turn
            )
            print("model> ", end="", flush=True)
            answer = ""
            for steps in generate_steps(model, loaded.tokenizer, [ids], params):
                answer += steps[0].text
                print(steps[0].text, end="", flush=True)
            print(flush=True)
            history.append(Message("assistant", answer))
            turn += 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
