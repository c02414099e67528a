"""The shell commands the documentation shows: found in the Markdown, and run on tiny budgets.

Which lines are commands. In every ```bash, ```sh, ```shell and ```console block of a page (in
```console blocks, only the lines after a `$ ` prompt), a line (`\\` continuations joined) is cut at
`&&`, `||` and `;` into parts, and at `|` or a redirection the rest of a part is dropped. A part is a
command when it starts with (after any NAME=value assignments, which it runs with):

    gptlab ...                   run for real, in this process, on a tiny budget (below); also
                                 .venv/bin/gptlab ... and python -m gptlab ...
    gptlab serve ...             started on a free port, asked GET /health once, stopped
    make TARGET ...              parsed: `make -n TARGET ...` in the checkout must succeed
    python benchmarks/X.py ...   parsed: X.py must answer --help, listing every option the line uses
    torchrun ... -m gptlab ...   parsed as the gptlab command it launches

Markers. `# docs-test: help-only` on a line of its own inside a block (or `<!-- docs-test:
help-only -->` on the line above the block, which readers do not see) makes every command of the
block parse-only; the same comment at the end of one command line does it for that command. A
parse-only gptlab command must parse with gptlab's own parser (every option, type and choice) and,
for train/info/bench, its preset, --config and KEY=VALUE settings must make a valid config. `gptlab
sweep` (its budgets are the experiment) is always parse-only.

Where they run. Each page (with its Chinese twin: the same commands, run once) gets a fresh working
directory holding what the everyday path leaves behind (FIXTURE, made once with these same rules from
a slice of ../shared/data); built-in corpora (`shakespeare`, `tang-poems`) read that slice through
$GPTLAB_CACHE. A page that writes one of these paths (`--out runs/demo`) replaces it, as a reader
following the page would. Tiny budgets: training and post-training stop after 2 steps with small
batches and evaluations, samples and answers are cut to 16 tokens, `bench train` times 1 step,
`prepare` encodes in one process.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from conftest import stop

SHELLS = {"bash", "sh", "shell", "console", "zsh"}
MARKER = "docs-test: help-only"
ALWAYS_PARSE_ONLY = {"sweep"}

# What the everyday path leaves behind (make demo, demo-zh, poem-data, finetune-zh, align-zh), under
# the names the docs use; built once with the rules below.
FIXTURE = [
    "gptlab prepare shakespeare --tokenizer char --out data/shakespeare-char",
    "gptlab train --data data/shakespeare-char --out runs/demo --preset cpu-modern",
    "gptlab prepare tang-poems --tokenizer char --out data/tang-poems-char",
    "gptlab train --data data/tang-poems-char --out runs/demo-zh --preset cpu-modern sample_prompt=春夜喜雨",
    "gptlab poem-data tang-poems --instructions data/posttrain/tang-sft.jsonl "
    "--preferences data/posttrain/tang-pairs.jsonl",
    "gptlab finetune --from runs/demo-zh --data data/posttrain/tang-sft.jsonl --out runs/demo-zh-sft",
    "gptlab align --from runs/demo-zh-sft --data data/posttrain/tang-pairs.jsonl --out runs/demo-zh-dpo",
]
FIXTURE_PATHS = [
    "data/shakespeare-char",
    "data/tang-poems-char",
    "data/posttrain",
    "runs/demo",
    "runs/demo-zh",
    "runs/demo-zh-sft",
    "runs/demo-zh-dpo",
]

# Appended to the KEY=VALUE settings (the last value wins): a run that trains, evaluates, samples and
# checkpoints, in two steps.
TRAIN_BUDGET = [
    "max_steps=2",
    "batch_size=2",
    "warmup_steps=0",
    "eval_interval=2",
    "eval_batches=1",
    "checkpoint_interval=2",
    "log_interval=1",
    "sample_tokens=8",
]
POSTTRAIN_BUDGET = [*TRAIN_BUDGET, "held_out=4", "sample_prompts=1"]
RL_BUDGET = [*POSTTRAIN_BUDGET, "group_size=2", "rollout_tokens=8"]
MAX_TOKENS = 16


@dataclass
class Command:
    """One command shown in a page: where, what, and how it is checked."""

    page: str  # path relative to the checkout
    line: int  # 1-based line of the page where the command starts
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    help_only: bool = False

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def text(self) -> str:
        return shlex.join(self.argv)


# --- finding the commands ----------------------------------------------------------------------

_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*\{?\s*\.?([\w+-]*)")


def shell_blocks(markdown: str) -> Iterator[tuple[list[tuple[int, str]], str, bool]]:
    """(lines with their 1-based numbers, language, marked help-only) of every shell block."""
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        indent, ticks, lang = fence.group(1), fence.group(2), fence.group(3).lower()
        above = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marked = "<!--" in above and MARKER in above
        body = []
        i += 1
        while i < len(lines) and not re.match(rf"^\s*{re.escape(ticks[0])}{{{len(ticks)},}}\s*$", lines[i]):
            text = lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i].lstrip()
            body.append((i + 1, text))
            i += 1
        i += 1
        if lang in SHELLS:
            marked = marked or any(text.strip() == f"# {MARKER}" for _, text in body)
            yield body, lang, marked


def _logical_lines(body: list[tuple[int, str]], lang: str) -> Iterator[tuple[int, str]]:
    """(number, text) of each command line: prompts stripped in console blocks, `\\` lines joined."""
    pending: tuple[int, str] | None = None
    for number, text in body:
        if pending is None:
            if lang == "console":
                if not text.startswith("$ "):
                    continue
                text = text[2:]
            text = text.strip()
            if not text or text.startswith("#"):
                continue
            pending = (number, "")
        joined = pending[1] + text.strip()
        if joined.endswith("\\"):
            pending = (pending[0], joined[:-1] + " ")
            continue
        yield pending[0], joined
        pending = None
    if pending is not None:
        yield pending[0], pending[1]


_CUT = {"&&", "||", ";", "&"}
_DROP = {"|", ">", ">>", "<", "2>", ">&", "<<", "|&"}


def _parts(text: str) -> list[list[str]]:
    """The words of each part of a shell line (cut at && || ; &, each ending at a pipe or redirection)."""
    text = re.sub(r"(?<=\s)\d+(?=>)", "", text)  # `2>file`: the lexer would keep the 2 as a word
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    parts: list[list[str]] = [[]]
    dropping = False
    for word in lexer:
        if word in _CUT:
            parts.append([])
            dropping = False
        elif word in _DROP or (word and set(word) <= set("|&<>")):
            dropping = True
        elif not dropping:
            parts[-1].append(word)
    return [p for p in parts if p]


def _command(words: list[str]) -> list[str] | None:
    """words as a command this module checks (`.venv/bin/gptlab` and `python -m gptlab` read as
    `gptlab`), or None."""
    if not words:
        return None
    if Path(words[0]).name == "gptlab":
        return ["gptlab", *words[1:]]
    python = Path(words[0]).name in ("python", "python3")
    if python and words[1:3] == ["-m", "gptlab"]:
        return ["gptlab", *words[3:]]
    if python and len(words) > 1 and words[1].startswith("benchmarks/"):
        return ["python", *words[1:]]
    return words if words[0] in ("make", "torchrun") else None


def page_commands(path: Path, root: Path) -> list[Command]:
    """Every command shown in the page at path, in order."""
    found = []
    for body, lang, marked in shell_blocks(path.read_text(encoding="utf-8")):
        for number, text in _logical_lines(body, lang):
            help_only = marked or MARKER in text
            for words in _parts(text):
                env = {}
                while words and re.match(r"^[A-Za-z_]\w*=", words[0]):
                    key, _, value = words.pop(0).partition("=")
                    env[key] = value
                command = _command(words)
                if command:
                    found.append(Command(str(path.relative_to(root)), number, command, env, help_only))
    return found


# --- tiny budgets --------------------------------------------------------------------------------


def _without(argv: list[str], *options: str) -> list[str]:
    """argv less each option and its value (as `--opt V` or `--opt=V`)."""
    out, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word in options:
            skip = True
        elif not any(word.startswith(o + "=") for o in options):
            out.append(word)
    return out


def _value(argv: list[str], option: str) -> str | None:
    for i, word in enumerate(argv):
        if word == option and i + 1 < len(argv):
            return argv[i + 1]
        if word.startswith(option + "="):
            return word.partition("=")[2]
    return None


def _capped(args: list[str], option: str, most: int) -> list[str]:
    """args with option's value at most `most` (set to it when absent)."""
    value = _value(args, option)
    keep = value is not None and value.isdigit() and int(value) <= most
    return args if keep else _options(_without(args, option), option, str(most))


def _options(args: list[str], *options: str) -> list[str]:
    """args with options put right after the command's name(s), where they cannot split a run of
    positional words."""
    head = 2 if args[0] == "bench" else 1
    return [*args[:head], *options, *args[head:]]


_SETTING = re.compile(r"^[A-Za-z_][\w.]*=")


def _settings(args: list[str], settings: list[str]) -> list[str]:
    """args with KEY=VALUE settings after the ones already there (argparse reads one run of them), or
    at the end; being later, they win."""
    last = max((i for i, word in enumerate(args) if _SETTING.match(word)), default=len(args) - 1)
    return [*args[: last + 1], *settings, *args[last + 1 :]]


def budget(args: list[str]) -> list[str]:
    """gptlab's arguments (after `gptlab`) on a tiny budget; see the module docstring."""
    if not args or "-h" in args or "--help" in args:
        return args
    command = args[0]
    if command in ("train", "finetune", "align", "reward", "rl") and "--resume" in args:
        return _options(_without(args, "--max-steps"), "--max-steps", "3")  # the fixtures stop at 2
    if command == "train":
        return _settings(_without(args, "--max-steps"), TRAIN_BUDGET)
    if command in ("finetune", "align", "reward"):
        return _settings(_without(args, "--max-steps", "--epochs"), POSTTRAIN_BUDGET)
    if command == "rl":
        return _settings(_without(args, "--max-steps"), RL_BUDGET)
    if command == "sample":
        return _capped(args, "--max-new-tokens", MAX_TOKENS)
    if command == "chat":
        return _capped(args, "--max-tokens", MAX_TOKENS)
    if command == "prepare":
        return _options(_without(args, "--workers"), "--workers", "1")
    if command == "bench":
        shorter = _options(_without(args, "--steps", "--warmup"), "--steps", "1", "--warmup", "0")
        return _settings(shorter, ["batch_size=2"])
    if command == "serve":
        return _options(_without(args, "--port"), "--port", "0")
    return args


def outputs(args: list[str]) -> list[str]:
    """The paths a gptlab command writes (so a fixture there is replaced first)."""
    return [v for o in ("--out", "--instructions", "--preferences") if (v := _value(args, o)) is not None]


# --- running them --------------------------------------------------------------------------------


@contextlib.contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def gptlab_in_process(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    """Run `gptlab ARGS` in this process (no second torch start-up) in cwd, stdin empty (chat ends at
    once); its exit code and output."""
    import torch

    from gptlab.cli import main

    out = io.StringIO()
    stdin, threads = sys.stdin, torch.get_num_threads()
    try:
        sys.stdin = io.StringIO("")
        torch.set_num_threads(1)  # tiny models; the test machine is shared
        with contextlib.chdir(cwd), _environment(env), contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            main(args)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        sys.stdin = stdin
        torch.set_num_threads(threads)
    return code, out.getvalue()


def _parse_only(args: list[str]) -> str | None:
    """Why gptlab ARGS would not run as written (its parser, its config), or None."""
    from gptlab.cli import build_parser
    from gptlab.config import build_config
    from gptlab.errors import GptlabError

    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            parsed = build_parser().parse_args(args)
    except SystemExit as exit_:
        return None if exit_.code == 0 else out.getvalue().strip()  # 0: it asked for --help
    if getattr(parsed, "command", None) in ("train", "info", "bench") and not getattr(parsed, "resume", None):
        config = getattr(parsed, "config", None)
        if config is None or Path(config).is_file():
            try:
                build_config(getattr(parsed, "preset", None), config, list(getattr(parsed, "overrides", [])))
            except GptlabError as exc:
                return str(exc)
    return None


def _serve(args: list[str], cwd: Path, env: dict[str, str], src: Path) -> str | None:
    """Start `gptlab serve ...` (port 0), GET /health once, stop it; why it failed, or None."""
    full_env = {**os.environ, **env, "PYTHONPATH": str(src), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gptlab", *args],
        cwd=cwd,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 120
        seen = []
        while time.time() < deadline:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                return "exited before serving:\n" + "".join(seen)
            seen.append(line)
            found = re.search(r"on (http://\S+:\d+)", line)
            if found:  # the socket is bound; it answers once uvicorn has started
                return _health(found.group(1).replace("0.0.0.0", "127.0.0.1").replace("[::]", "[::1]"), deadline)
        return "did not start serving within 120 s"
    finally:
        stop(proc)


def _health(url: str, deadline: float) -> str | None:
    """GET url/health until it answers (or the deadline passes): why it failed, or None."""
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=30) as response:
                return None if response.status == 200 else f"GET /health answered {response.status}"
        except OSError as exc:
            if time.time() > deadline:
                return f"GET {url}/health failed: {exc}"
            time.sleep(0.2)


def _benchmark_help(argv: list[str], root: Path) -> str | None:
    """`python benchmarks/X.py ... --help` in this process: why it fails, or None."""
    script = root / argv[1]
    if not script.is_file():
        return f"{argv[1]} does not exist"
    if "ArgumentParser" not in script.read_text(encoding="utf-8"):
        return f"{argv[1]} has no argument parser, so --help would run the benchmark"
    out = io.StringIO()
    saved_argv, saved_path = sys.argv, list(sys.path)
    try:
        sys.argv = [str(script), *argv[2:], "--help"]
        sys.path.insert(0, str(script.parent))  # as `python benchmarks/X.py` does
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            runpy.run_path(str(script), run_name="__main__")
        return f"{argv[1]} --help did not exit"
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            return out.getvalue().strip()
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    shown = out.getvalue()
    unknown = [w.split("=")[0] for w in argv[2:] if w.startswith("--") and w.split("=")[0] not in shown]
    return f"{argv[1]} has no option {', '.join(unknown)}" if unknown else None


def _make(argv: list[str], root: Path) -> str | None:
    proc = subprocess.run(["make", "-n", *argv[1:]], cwd=root, capture_output=True, text=True, timeout=60)
    return None if proc.returncode == 0 else (proc.stderr or proc.stdout).strip()


def check(command: Command, cwd: Path, env: dict[str, str], root: Path) -> str | None:
    """Run or parse one command as its kind asks; why it failed, or None."""
    env = {**env, **command.env}
    head = command.argv[0]
    if head == "make":
        return _make(command.argv, root)
    if head.startswith("python"):
        return _benchmark_help(command.argv, root)
    if head == "torchrun":
        if "gptlab" not in command.argv or command.argv[command.argv.index("gptlab") - 1] != "-m":
            return None  # not ours to check
        return _parse_only(command.argv[command.argv.index("gptlab") + 1 :])
    args = command.argv[1:]
    if command.help_only or (args and args[0] in ALWAYS_PARSE_ONLY):
        return _parse_only(args)
    args = budget(args)
    if args and args[0] == "serve" and "-h" not in args and "--help" not in args:
        return _parse_only(args) or _serve(args, cwd, env, root / "src")
    code, output = gptlab_in_process(args, cwd, env)
    if code != 0:
        return f"exited {code} (run as: gptlab {shlex.join(args)}):\n" + "\n".join(output.splitlines()[-15:])
    return None


class Workspace:
    """The fixture directory (FIXTURE run once) and fresh copies of it for each page."""

    def __init__(self, base: Path, cache: Path):
        self.base, self.cache = base, cache

    @property
    def env(self) -> dict[str, str]:
        return {"GPTLAB_CACHE": str(self.cache)}

    def build(self, root: Path) -> None:
        """Run FIXTURE in base; a failure there names the command."""
        self.base.mkdir(parents=True)
        (self.base / "data" / "posttrain").mkdir(parents=True)
        for text in FIXTURE:
            words = shlex.split(text)
            why = check(Command("FIXTURE", 0, words), self.base, self.env, root)
            assert why is None, f"docs fixture `{text}` failed: {why}"

    def copy_for(self, commands: list[Command], dest: Path, root: Path) -> Path:
        """A working directory for these commands: the fixture paths they name, copied."""
        shown = " ".join(c.text for c in commands)
        dest.mkdir(parents=True, exist_ok=True)
        for name in FIXTURE_PATHS:
            if name in shown:
                shutil.copytree(self.base / name, dest / name, symlinks=True)
        if (root / "configs").is_dir():
            (dest / "configs").symlink_to(root / "configs")  # `--config configs/X.toml` as in the checkout
        return dest


def run_page(commands: list[Command], workspace: Workspace, dest: Path, root: Path) -> list[str]:
    """Check a page's commands in order (a repeated command once); the failures, `page:line: why`."""
    cwd = workspace.copy_for(commands, dest, root)
    replaced: set[str] = set()
    done: set[tuple[str, ...]] = set()
    for command in commands:
        key = (*command.argv, *sorted(f"{k}={v}" for k, v in command.env.items()))
        if key in done:
            continue
        done.add(key)
        if command.argv[0] == "gptlab" and not command.help_only:
            for path in outputs(command.argv[1:]):
                fixture = next((n for n in FIXTURE_PATHS if Path(path) == Path(n)), None)
                if fixture and fixture not in replaced:
                    replaced.add(fixture)
                    shutil.rmtree(cwd / fixture, ignore_errors=True)
        why = check(command, cwd, workspace.env, root)
        if why is not None:
            return [f"{command.where}: `{command.text}` {why}"]
    return []
