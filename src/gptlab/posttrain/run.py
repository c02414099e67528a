"""`gptlab finetune`, `gptlab align`, `gptlab reward` and `gptlab rl`: a new run that starts from a base
run's weights, with its own training settings (a learning-rate schedule for a short post-training),
or the resume of one. The base run is only read."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from gptlab.config import ModelConfig, PosttrainConfig, RunConfig, Stage, TrainConfig, apply_overrides
from gptlab.errors import GptlabError
from gptlab.posttrain.rewards import VERSE
from gptlab.posttrain.rl import RLSession
from gptlab.posttrain.session import SESSIONS as POSTTRAIN_SESSIONS
from gptlab.runs import is_run_dir, read_config
from gptlab.train.trainer import TrainResult, train

# Post-training is short and starts from a model that already knows the language: a small peak
# learning rate, a short warm-up, a cosine decay, no weight decay, frequent evaluation with samples.
_COMMON = {
    "warmup_steps": 10,
    "weight_decay": 0.0,
    "eval_interval": 50,
    "checkpoint_interval": 100,
    "log_interval": 10,
    "sample_tokens": 64,
    "sample_temperature": 0.8,
}
SESSIONS = {**POSTTRAIN_SESSIONS, "rl": RLSession}
STAGE_DEFAULTS = {
    "sft": {**_COMMON, "batch_size": 16, "max_steps": 300, "lr": 3e-4, "min_lr": 3e-5},
    "dpo": {**_COMMON, "batch_size": 8, "max_steps": 200, "lr": 5e-5, "min_lr": 5e-6},
    # A reward model's head starts from nothing: a larger rate than DPO's; no samples to write.
    "rm": {**_COMMON, "batch_size": 8, "max_steps": 200, "lr": 1e-4, "min_lr": 1e-5, "sample_tokens": 0},
    # batch_size is prompts per micro-step, each answered group_size times.
    "rl": {**_COMMON, "batch_size": 4, "max_steps": 100, "lr": 1e-5, "min_lr": 1e-6, "eval_interval": 25},
}


def reward_spec(reward: str | None) -> str:
    """--reward as the config keeps it: "verse", or a reward-model run's absolute path."""
    if not reward:
        raise GptlabError("rl needs --reward verse|RM_RUN (the verse checker or a reward-model run)")
    if reward == VERSE:
        return reward
    if not is_run_dir(reward):
        raise GptlabError(f"--reward {reward}: neither 'verse' nor a gptlab run directory")
    if not read_config(reward).model.reward_head:
        raise GptlabError(f"--reward {reward} is not a reward model (train one with `gptlab reward`)")
    return str(Path(reward).resolve())


def start_config(
    stage: Stage, base: str | Path, data: str | Path, overrides: list[str], reward: str | None = None
) -> RunConfig:
    """The config of a new post-training run: the base run's model, this stage's training defaults,
    then the user's key=value overrides (training and posttrain fields; the model's shape is the
    base's, only dropout may change)."""
    base_cfg = read_config(base)
    if base_cfg.model.arch == "encdec":  # a conversation is one sequence, read by a decoder-only model
        raise GptlabError(
            f"{base} is an encoder–decoder run (arch=encdec); `gptlab {SESSIONS[stage].command}` takes a GPT run"
        )
    data_path = Path(data).expanduser()
    if not data_path.is_file():
        raise GptlabError(f"data file not found: {data}")
    cfg = RunConfig(model=base_cfg.model, preset=base_cfg.preset, data=base_cfg.data)
    cfg.model.reward_head = stage == "rm"  # a reward model is the base's transformer with a scalar head
    cfg.train = TrainConfig(device=base_cfg.train.device, seed=base_cfg.train.seed)
    apply_overrides(cfg, STAGE_DEFAULTS[stage])
    cfg.posttrain = PosttrainConfig(stage=stage, base=str(Path(base).resolve()), data=str(data_path.resolve()))
    if stage == "rl":
        if base_cfg.model.reward_head:
            raise GptlabError(f"{base} is a reward model; `gptlab rl` trains a chat run (from finetune or align)")
        cfg.posttrain.reward = reward_spec(reward)
    shape = {f.name for f in fields(ModelConfig)} - {"dropout"}  # reward_head too: the stage sets it
    for item in overrides:
        key = item.partition("=")[0].strip().lstrip("-").replace("-", "_")
        if key.removeprefix("model.") in shape or key.removeprefix("posttrain.") in ("stage", "base", "reward"):
            raise GptlabError(
                f"'{key}' cannot be set here: the model is the base run's (only dropout may "
                "change), --from names the base and --reward the reward"
            )
    apply_overrides(cfg, overrides)
    cfg.validate()
    return cfg


def posttrain(
    stage: Stage,
    base: str | None,
    data: str | None,
    out: str | None,
    resume: str | None,
    overrides: list[str],
    max_steps: int | None = None,
    reward: str | None = None,
) -> TrainResult:
    """Start (base, data, out) or resume (resume) a fine-tuning (sft), alignment (dpo), reward-model (rm)
    or reinforcement-learning (rl, with its reward) run."""
    command = SESSIONS[stage].command
    if resume:
        if base or data or out or overrides or reward:
            raise GptlabError(
                "--resume RUN takes no --from/--data/--out/--reward/overrides (the run keeps its own); "
                "only --max-steps may extend it"
            )
        stage_of_run = read_config(resume).posttrain.stage
        if stage_of_run != stage:
            what = (
                "a pretraining run (resume it with `gptlab train --resume`)"
                if not stage_of_run
                else f"a `gptlab {SESSIONS[stage_of_run].command}` run"
            )
            raise GptlabError(f"{resume} is {what}, not a `gptlab {command}` run")
        return train(None, resume, resume=True, max_steps=max_steps, session=SESSIONS[stage])
    if not (base and data and out):
        data_flag = "--prompts FILE --reward verse|RM_RUN" if stage == "rl" else "--data FILE"
        raise GptlabError(f"{command} needs --from RUN {data_flag} --out RUN2 (or --resume RUN2)")
    more = [f"max_steps={max_steps}"] if max_steps is not None else []
    cfg = start_config(stage, base, data, overrides + more, reward)
    return train(cfg, out, session=SESSIONS[stage])
