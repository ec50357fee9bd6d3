"""Path C in one place: MaskCLR self-supervised pretraining of a student's encoder and the linear
probe that judges it.

- :mod:`.masking`: the masks (graph-aware body regions, temporal blocks) and the view augmentation;
- :mod:`.maskclr`: :class:`~.maskclr.MaskCLRModule` (a generic phase: masked reconstruction +
  NT-Xent, no classifier metrics), BatchNorm recalibration and the encoder file;
- :mod:`.pretrain`: the ``python -m last_lite.pretrain`` run (fit, recalibrate, save the encoder);
- :mod:`.linear_probe` and :mod:`.probe`: features of a frozen encoder, the linear classifier and
  the ``python -m last_lite.probe`` run.

The encoder file then starts Path A or B: ``init_from=<run>/encoder.safetensors``.
"""
