"""The decision tree (docs/architecture.md, "The decision tree") as one resumable command:
``python -m last_lite.pipeline data=nw_ucla experiment=nw_ucla hydra.run.dir=outputs/pipeline/nw_ucla``.

- :mod:`last_lite.pipeline.tree`: the rules (teacher gate, Path C, checkpoint choice) and the stages;
- :mod:`last_lite.pipeline.state`: resumable stages (config hash, state file, subprocess runs);
- :mod:`last_lite.pipeline.report`: report.json / report.md from the stages' metrics files;
- :mod:`last_lite.pipeline.plots`: training curves and Pareto charts.
"""
